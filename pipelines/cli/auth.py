"""``storecast auth``: make API keys and check auth files.

``storecast auth add-key --name NAME --tier TIER [--file PATH]`` makes a key (``secrets.token_urlsafe``),
prints it once on stdout, and appends the identity with the key's SHA-256 to the auth file (a new file
starts with the tiers of ``config/auth.example.yaml``: no ``anonymous`` tier, so callers without a key
are refused until someone adds one on purpose; mode 0600). The file is replaced atomically (written next
to it, then renamed), so a server watching it never reads half a file. ``storecast auth check --file PATH``
prints what a file means, or what is wrong with it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

KEY_PREFIX = "sc_"  # makes keys easy to spot for secret scanners

NEW_FILE = """\
# storecast auth file (--auth-file / STORECAST_AUTH_FILE); documented example: config/auth.example.yaml.
# Keys are never stored here, only their SHA-256. `storecast auth add-key` appends identities below.
# Callers without a key are refused (no `anonymous` tier); the example file says how to let them in.
version: 1
tiers:
  planner:
    requests_per_second: 20
    burst: 40
    concurrent: 8
    permissions: [forecast, refresh]
  service:
    requests_per_second: 200
    burst: 400
    concurrent: 32
    permissions: [forecast, refresh, retrain]
  admin:
    requests_per_second: 50
    burst: 100
    concurrent: 8
    permissions: [forecast, refresh, retrain, rollout, admin]
identities:
"""


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def add_key(path: str | Path, name: str, tier: str, description: str | None = None) -> str:
    """Append an identity with a new key to the auth file (created if missing); return the key."""
    from serving.access.auth_file import NAME, AuthFileError, hash_key, parse

    path = Path(path)
    if not NAME.fullmatch(name):
        raise AuthFileError(f"--name: letters, digits and ._:@- (at most 128), got {name!r}")
    text = path.read_text() if path.exists() else NEW_FILE
    before = parse(text, str(path))  # a broken file is reported, never appended to
    if tier not in before.tiers:
        raise AuthFileError(f"{path}: no tier {tier!r}; tiers: {', '.join(before.tiers)}")
    if any(e.name == name for e in before.identities):
        raise AuthFileError(f"{path}: an identity named {name!r} exists already")
    key = new_key()
    entry = f"  - name: {name}\n    tier: {tier}\n    key_sha256: \"{hash_key(key)}\"\n"
    if description:
        entry += f"    description: {_quote(description)}\n"
    updated = _append(text, entry)
    after = parse(updated, str(path))
    if len(after.identities) != len(before.identities) + 1 or after.identities[-1].name != name:
        raise AuthFileError(f"{path}: cannot append to this file's layout: put `identities:` last, as a block list")
    _write_atomic(path, updated)
    return key


def _append(text: str, entry: str) -> str:
    """The file's text with ``entry`` at the end of its ``identities:`` list (which must come last)."""
    if not text.endswith("\n"):
        text += "\n"
    lines = text.splitlines()
    if not any(line.startswith("identities:") for line in lines):
        return text + "identities:\n" + entry
    if any(line.rstrip() in ("identities: []", "identities: null") for line in lines):
        text = "\n".join("identities:" if line.rstrip() in ("identities: []", "identities: null") else line
                         for line in lines) + "\n"
    return text + entry


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe(config: Any) -> str:
    """What an ``AuthConfig`` means, one line per identity (never a key)."""
    lines = [config.summary()]
    for e in config.identities:
        how = (["key"] * bool(e.key_sha256)) + [f"oidc {s}" for s in e.oidc_subjects]
        lines.append(f"  {e.name}: {e.tier} ({', '.join(how)})")
    return "\n".join(lines)


def local_auth_file(folder: str | Path) -> tuple[Path, str]:
    """A fresh auth file in ``folder`` with one planner identity (``local-planner``); (path, its key).

    For ``storecast serve`` / ``make demo``: the stack then runs with real identities on loopback.
    """
    path = Path(folder) / "auth.yaml"
    path.unlink(missing_ok=True)
    return path, add_key(path, "local-planner", "planner", "made by storecast serve")


def cmd_add_key(args: argparse.Namespace) -> int:
    if not args.file:
        print("give --file PATH (or set STORECAST_AUTH_FILE)", file=sys.stderr)
        return 2
    from serving.access.auth_file import AuthFileError

    try:
        key = add_key(args.file, args.name, args.tier, args.description)
    except (AuthFileError, OSError) as exc:
        print(f"add-key failed: {exc}", file=sys.stderr)
        return 1
    print(key)
    print(f"added {args.name!r} (tier {args.tier}) to {args.file}; the key above is shown once and stored nowhere: "
          "keep it now", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    if not args.file:
        print("give --file PATH (or set STORECAST_AUTH_FILE)", file=sys.stderr)
        return 2
    from serving.access.auth_file import AuthFileError, load

    try:
        print(describe(load(args.file)))
    except AuthFileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``storecast auth add-key`` / ``storecast auth check``."""
    auth = sub.add_parser("auth", help="API keys and auth files").add_subparsers(dest="auth_command", required=True)
    default = os.environ.get("STORECAST_AUTH_FILE") or None
    a = auth.add_parser("add-key", help="make a key, print it once, append its identity to the auth file")
    a.add_argument("--name", required=True, help="the identity's name (audit log, metrics)")
    a.add_argument("--tier", required=True, help="its tier (anonymous excepted), e.g. planner, service, admin")
    a.add_argument("--file", default=default, help="the auth file (default $STORECAST_AUTH_FILE; created if missing)")
    a.add_argument("--description", help="a note kept with the entry")
    a.set_defaults(func=cmd_add_key)
    c = auth.add_parser("check", help="print what an auth file means, or what is wrong with it")
    c.add_argument("--file", default=default, help="the auth file (default $STORECAST_AUTH_FILE)")
    c.set_defaults(func=cmd_check)
