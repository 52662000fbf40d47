"""The first load's MLflow work in a forked child, while the server process imports KServe.

Importing MLflow and opening its store take one to two seconds of CPU; in a thread they compete with
KServe's own import for the GIL and add up. ``Prefetch.start(source)`` forks right at start-up (before
numpy, KServe or any thread exists), the child resolves the URI and downloads ``params.npz`` into a
temporary folder, writes one JSON line to a pipe and exits; the loader thread reads it and loads the
table. If anything goes wrong the loader says so and falls back to loading in-process.

The child never outlives the server: it asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``, Linux), and the server kills it when it exits (a SIGTERM while the first version
is still being fetched included), so stopping the predictor leaves no process behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time

from predictor.source import ModelSource

TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1  # prctl(2)


class PrefetchError(RuntimeError):
    """The child could not fetch the version (the message is the child's error)."""


class Prefetch:
    """A running child process fetching the first version of a registry source."""

    def __init__(self, pid: int, fd: int, folder: str) -> None:
        self.pid, self.fd, self.folder = pid, fd, folder
        self.reaped = False

    @classmethod
    def start(cls, source: ModelSource) -> Prefetch | None:
        """Fork the child (registry sources on POSIX only; None otherwise)."""
        if source.kind == "folder" or not hasattr(os, "fork"):
            return None
        folder = tempfile.mkdtemp(prefix="storecast-")
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the server's code
            os.close(read_fd)
            _die_with(parent)
            _child(source, folder, write_fd)
        os.close(write_fd)
        prefetch = cls(pid, read_fd, folder)
        atexit.register(prefetch.stop)  # the server exits (SIGTERM, an error at start-up): the child too
        return prefetch

    def stop(self) -> None:
        """Kill the child if it is still fetching, and reap it."""
        if self.reaped:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        with contextlib.suppress(ChildProcessError):  # reaped already (the loader thread and exit may race)
            os.waitpid(self.pid, 0)
        self.reaped = True

    def result(self, timeout: float = TIMEOUT) -> tuple[str, str]:
        """(version, path of params.npz); raises PrefetchError or TimeoutError."""
        chunks, deadline = [], time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    os.kill(self.pid, signal.SIGKILL)
                    raise TimeoutError(f"fetching the first version took over {timeout:.0f} s")
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.fd)
            self._reap()
        try:
            out = json.loads(b"".join(chunks))
        except ValueError:
            raise PrefetchError("the prefetch process ended without an answer") from None
        if "error" in out:
            raise PrefetchError(out["error"])
        return out["version"], out["path"]

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _die_with(parent: int) -> None:
    """Ask for SIGKILL when the parent dies (Linux); exit now if it is gone already."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _child(source: ModelSource, folder: str, fd: int) -> None:
    code = 0
    try:
        version = source.resolve()
        out = {"version": version, "path": str(source.download(version, folder))}
    except BaseException as exc:
        out, code = {"error": f"{type(exc).__name__}: {exc}"[:4000]}, 1
    try:
        data = json.dumps(out).encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os._exit(code)
