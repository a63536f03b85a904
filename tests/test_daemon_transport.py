# SPDX-License-Identifier: Apache-2.0
"""The daemon's transport keeps a connection per thread between requests (a MiniProbe pays a
mutual-TLS handshake per new one) and recovers, without an error, when the supervisor has
closed a kept connection while it was idle. A plain HTTP/1.1 server on loopback stands in
for the supervisor here: what is tested is connection reuse, which the RI does not expose."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from probe_daemon.transport import Supervisor


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.open: list[socket.socket] = []


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a side says otherwise
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1
        self.server.open.append(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"envelope": "message", "version": 1, "contents": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[_Server]:
    running = _Server()
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


def test_requests_of_a_thread_share_one_connection(server):
    supervisor = Supervisor(f"http://127.0.0.1:{server.server_port}/", None, timeout=5)
    for _ in range(5):
        assert supervisor.request("GET", "/show/specification").status == 200
    assert server.connections == 1


def test_a_connection_closed_by_the_supervisor_is_replaced_silently(server):
    supervisor = Supervisor(f"http://127.0.0.1:{server.server_port}/", None, timeout=5)
    assert supervisor.request("GET", "/show/specification").status == 200
    # The supervisor drops the idle connection (a restart, an idle timeout).
    for sock in server.open:
        sock.shutdown(socket.SHUT_RDWR)
    assert supervisor.request("GET", "/show/specification").status == 200
    assert server.connections == 2


def test_each_thread_has_its_own_connection(server):
    supervisor = Supervisor(f"http://127.0.0.1:{server.server_port}/", None, timeout=5)
    statuses: list[int] = []

    def poll() -> None:
        statuses.extend(supervisor.request("GET", "/show/specification").status
                        for _ in range(3))

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert statuses == [200] * 6
    assert server.connections == 2
