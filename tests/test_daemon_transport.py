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

from probe_daemon.transport import Supervisor, TransportError


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


class _Scripted:
    """A raw TCP peer that answers each request on a connection with the next canned
    answer: what BaseHTTPRequestHandler does not send (chunked bodies, bodies ended by
    closing, interim 100 answers)."""

    def __init__(self, answers: list[bytes], close_after: bool = False) -> None:
        self.answers = answers
        self.close_after = close_after
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    conn.sendall(self.answers.pop(0))
                    if self.close_after:
                        break

    def close(self) -> None:
        self.listener.close()


def test_chunked_and_interim_answers_are_read_and_the_connection_kept():
    peer = _Scripted([
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    ])
    try:
        supervisor = Supervisor(f"http://127.0.0.1:{peer.port}/", None, timeout=5)
        first = supervisor.request("GET", "/show/specification")
        assert (first.status, first.body) == (200, b"hello world")
        second = supervisor.request("POST", "/register/result", b"{}")
        assert (second.status, second.body) == (201, b"ok")
        assert peer.connections == 1
    finally:
        peer.close()


def test_a_body_without_length_ends_with_the_connection_and_is_not_reused():
    peer = _Scripted([b"HTTP/1.0 200 OK\r\n\r\n{\"a\": 1}", b"HTTP/1.0 200 OK\r\n\r\n[]"],
                     close_after=True)
    try:
        supervisor = Supervisor(f"http://127.0.0.1:{peer.port}/", None, timeout=5)
        assert supervisor.request("GET", "/show/specification").body == b'{"a": 1}'
        assert supervisor.request("GET", "/show/specification").body == b"[]"
        assert peer.connections == 2
    finally:
        peer.close()


def test_garbage_instead_of_an_answer_is_a_transport_error():
    peer = _Scripted([b"SSH-2.0-dropbear\r\n\r\n"])
    try:
        supervisor = Supervisor(f"http://127.0.0.1:{peer.port}/", None, timeout=5)
        with pytest.raises(TransportError, match="not an HTTP answer"):
            supervisor.request("GET", "/show/specification")
    finally:
        peer.close()
