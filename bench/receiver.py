"""A webhook receiver on loopback for tests and benchmarks: records every request, checks its
signature as a channel would (with the Standard Webhooks reference library, given the secret in
its `whsec_` form), and can be told to fail a path's next requests or to be down for it."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature matched the secret
    answered: int  # the status the receiver answered with
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """`fail_next[path] = n`: answer the next n requests to `path` with 500 (after reading the
    body: the events were seen, which is how duplicates happen); `down[path] = True`: 503."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook("whsec_" + base64.b64encode(secret.encode()).decode())
        self.received: list[Received] = []
        self.fail_next: dict[str, int] = {}
        self.down: dict[str, bool] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(receiver.answer(self.path, dict(self.headers), body))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        signed = self.verify(headers, body)
        with self.lock:
            if self.down.get(path):
                status = 503
            elif self.fail_next.get(path, 0) > 0:
                self.fail_next[path] -= 1
                status = 500
            else:
                status = 200 if signed else 401
            self.received.append(Received(path, headers, body, signed, status, time.time()))
        return status

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        try:
            self.webhook.verify(body, headers, json_parse=False)
        except WebhookVerificationError:
            return False
        return True

    def at(self, path: str, status: int | None = None) -> list[Received]:
        with self.lock:
            return [
                r
                for r in self.received
                if r.path == path and (status is None or r.answered == status)
            ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
