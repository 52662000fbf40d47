"""A service's own key: from a variable or a mounted Secret's file, read once, bounded, never shown.

The transformer's key to its predictors (``--predictor-api-key-file`` / ``STORECAST_PREDICTOR_API_KEY``),
the retrain service's key for predictor reloads and the CLI's ``--api-key-file`` / ``STORECAST_API_KEY``
all read it here.
"""

from __future__ import annotations

import os
import stat

MAX_KEY_FILE_BYTES = 4096  # a key file is read at most this far
MAX_KEY_CHARS = 512  # the servers' cap on a key (serving.access.admission)


def read_key(value: str | None, path: str | None, variable: str, flag: str) -> str | None:
    """A service key: the text of ``variable`` (``value``) or the file at ``path`` (a mounted Secret: a regular
    file, read once, at most ``MAX_KEY_FILE_BYTES``), stripped; None when neither is given. ``SystemExit`` with
    one line naming the variable or the file, never the key, when it cannot be used (both given, the file
    unreadable, empty or not a regular file, the key not printable ASCII without blanks or too long)."""
    value = value.strip() if value else None
    if value and path:
        raise SystemExit(f"{variable} and {flag} are both set: give the key one way")
    where = f"{flag} {path}" if path else variable
    if path:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO is refused below, never waited on
        except OSError as exc:
            raise SystemExit(f"{where}: cannot read the key file ({exc.strerror or type(exc).__name__})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SystemExit(f"{where}: not a regular file")
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
        if len(data) > MAX_KEY_FILE_BYTES:
            raise SystemExit(f"{where}: larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
        value = data.decode("utf-8", "replace").strip()
        if not value:
            raise SystemExit(f"{where}: the key file is empty")
    if value and (len(value) > MAX_KEY_CHARS or not (value.isascii() and value.isprintable()) or " " in value):
        raise SystemExit(f"{where}: not a usable key (1 to {MAX_KEY_CHARS} printable ASCII characters without "
                         "blanks)")
    return value or None
