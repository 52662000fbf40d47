"""Dead-letter sink: log every CloudEvent it receives as one JSON line on stdout, answer 202.

Knative Eventing sends an event here once its retries to a subscriber are exhausted (the Broker's
and Triggers' ``delivery.deadLetterSink`` in manifests/base). The line keeps the event's attributes
(binary ``ce-*`` headers, including Knative's ``knativeerrordest`` / ``knativeerrorcode`` /
``knativeerrordata`` extensions) and its data, so a failed forecast or retrain request can be read
back from the logs and replayed. Standard library only; ``GET /healthz`` answers 200.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # bytes of data kept in the log line; the rest is counted, not printed


class Handler(BaseHTTPRequestHandler):
    server_version = "storecast-deadletter"

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/healthz" else 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {
            "time": datetime.now(UTC).isoformat(),
            "path": self.path,
            "attributes": {k.lower()[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")},
            "content_type": self.headers.get("content-type"),
            "bytes": len(body),
            "data": body[:MAX_BODY].decode("utf-8", errors="replace"),
        }
        print(json.dumps(record, ensure_ascii=False), flush=True)
        self._answer(202)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # the JSON line above is the log
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deadletter", description="Log dead-lettered CloudEvents as JSON lines.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")),
                        help="HTTP port (default: $PORT, else 8080)")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    # SIGTERM (Kubernetes) stops serving; shutdown() must run outside the serving thread.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"deadletter listening on :{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
