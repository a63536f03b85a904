# SPDX-License-Identifier: Apache-2.0
"""A recording HTTP relay between a component and a real supervisor.

It forwards every request unchanged and records what went through and what the supervisor
answered, so a test can count deliveries. When the supervisor is down it answers 502, as a
reverse proxy would.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from dataclasses import dataclass
from types import TracebackType


@dataclass
class Exchange:
    method: str
    path: str
    body: bytes
    status: int

    def json(self) -> dict:
        return json.loads(self.body)


class Wiretap:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        tap = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                try:
                    upstream = http.client.HTTPConnection(*tap.upstream, timeout=30)
                    upstream.request(self.command, self.path, body=body or None,
                                     headers=headers)
                    response = upstream.getresponse()
                    status, payload = response.status, response.read()
                    content_type = response.getheader("Content-Type", "text/plain")
                    upstream.close()
                except OSError:
                    status, payload, content_type = 502, b"supervisor down", "text/plain"
                with tap._lock:
                    tap.exchanges.append(Exchange(self.command, self.path, body, status))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _relay

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Wiretap:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posted(self, path: str, status: int | None = None) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.method == "POST" and e.path == path
                    and (status is None or e.status == status)]
