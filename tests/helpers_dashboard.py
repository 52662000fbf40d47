"""Helpers of the dashboard tests: the dashboard server as a real process, a scriptable fake upstream."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pipelines.stack import Service, free_port, wait_ready
from tests.helpers_http import LoopbackServer, QuietHandler

ROOT = Path(__file__).resolve().parents[1]
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHROMIUM = "/usr/bin/chromium"


def start_dashboard(*args: str, log: Path, env: dict[str, str] | None = None) -> Service:
    """``python -m dashboard`` on a free loopback port (run from the source tree), ready at /healthz."""
    port = free_port()
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dashboard", "--port", str(port), *args], cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    service = Service("dashboard", proc, port, log=log)
    try:
        wait_ready(f"{service.url}/healthz", service, 60)
    except BaseException:
        stop_service(service)
        raise
    return service


def stop_service(service: Service) -> None:
    if service.proc.poll() is None:
        service.proc.terminate()
        try:
            service.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(timeout=10)


Answer = tuple[int, object, dict[str, str]]


class FakeUpstream(LoopbackServer):
    """A real HTTP server on loopback answering ``respond(method, path, headers, body) -> (status, json, headers)``.

    For what the real stack cannot produce on demand (a 429 from a rate limiter); records every request.
    """

    def __init__(self, respond: Callable[[str, str, dict[str, str], bytes], Answer]) -> None:
        self.requests: list[dict] = []
        fake = self

        class Handler(QuietHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append({"method": self.command, "path": self.path, "headers": headers, "body": body})
                status, answer, extra = respond(self.command, self.path, headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.serve(Handler)
