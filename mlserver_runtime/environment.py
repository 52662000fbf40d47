"""MLServer's own environment: a venv of ``requirements.txt`` (every package pinned), made once, then reused.

MLServer pins an older FastAPI than KServe, so it cannot share the KServe environment. The venv holds only
the pinned packages; storecast's code reaches it through ``PYTHONPATH`` (``launch.code_path``), so the venv
never needs re-making when the code changes, only when the pins do (its folder name carries their digest).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
ENV_VARIABLE = "STORECAST_MLSERVER_ENV"
MARKER = "storecast-requirements.sha256"


def digest() -> str:
    """The digest of the pinned requirements (part of the default folder's name)."""
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def default_env() -> Path:
    """``$STORECAST_MLSERVER_ENV``, else a folder of the user's cache named after MLServer and the pins."""
    if os.environ.get(ENV_VARIABLE):
        return Path(os.environ[ENV_VARIABLE]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "storecast" / f"mlserver-{digest()[:12]}"


def mlserver_bin(env: Path) -> Path:
    return env / "bin" / "mlserver"


def is_ready(env: Path) -> bool:
    """Whether ``env`` holds exactly the pinned packages (made by :func:`ensure` from these pins)."""
    marker = env / MARKER
    return mlserver_bin(env).exists() and marker.exists() and marker.read_text().strip() == digest()


def ensure(env: Path, say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Make MLServer's environment in ``env`` unless it is there already; returns its ``mlserver`` command."""
    if is_ready(env):
        return mlserver_bin(env)
    t0 = time.monotonic()
    pins = sum(1 for line in REQUIREMENTS.read_text().splitlines() if line and not line.startswith("#"))
    say(f"making MLServer's environment in {env} (once; about 30 s)")
    say("  1/3 creating the venv")
    _run([sys.executable, "-m", "venv", "--clear", str(env)])
    say(f"  2/3 installing {pins} pinned packages (mlserver_runtime/requirements.txt)")
    pip = [str(env / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", "--no-deps", "-r", str(REQUIREMENTS)])
    say("  3/3 checking them (pip check)")
    _run([*pip, "check"])
    (env / MARKER).write_text(digest() + "\n")
    say(f"MLServer's environment is ready ({time.monotonic() - t0:.0f} s)")
    return mlserver_bin(env)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(command[:4])} ... failed: {' / '.join(tail) or done.returncode}")
