# SPDX-License-Identifier: Apache-2.0
"""HTTP(S) to the supervisor: mutual TLS, hard timeouts and a cap on what a peer may send.

A small HTTP/1.1 client of its own rather than http.client: on a MiniProbe every poll runs
it, and http.client parses each answer's headers with the email package (hundreds of Python
calls on an emulated MIPS core, and 1.4 MB of modules kept in memory there), while what the
supervisor sends needs a status line, three headers and a body.
"""

import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from probe_daemon.model import CONTENT_TYPE

# A specification envelope is a few kB; anything near this is hostile or broken.
MAX_BODY = 4 * 1024 * 1024
# Status line and headers; the RI sends a few hundred bytes.
MAX_HEAD = 64 * 1024
TOO_SLOW = "supervisor too slow: request deadline passed"
# How long an idle kept connection is trusted: well under any supervisor's idle timeout, well
# over the poll interval.
KEEP_ALIVE_S = 30.0
_READ = 65536


class TransportError(Exception):
    """The supervisor could not be reached or answered in a way we cannot use."""


class _StaleConnection(Exception):
    """A kept connection the supervisor had closed: send the request again on a new one."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


def tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Connection:
    """One socket to the supervisor and what was read ahead from it. Every blocking call
    gets the time left until the request's deadline as its timeout, so a peer trickling a
    byte now and then cannot stretch a request past it (no watchdog thread per request)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.since = time.monotonic()

    def close(self) -> None:
        self.sock.close()

    def _timeout(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._timeout(deadline)
            view = view[self.sock.send(view):]

    def recv(self, deadline: float) -> bytes:
        self._timeout(deadline)
        return self.sock.recv(_READ)

    def head(self, deadline: float) -> tuple[int, bytes]:
        """Status and lower-cased header block of the next answer (1xx skipped)."""
        while True:
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise TransportError(f"supervisor sent more than {MAX_HEAD} bytes of "
                                         "headers")
                chunk = self.recv(deadline)
                if not chunk:
                    raise ConnectionResetError("connection closed before an answer")
                self.buffer += chunk
            # Searched, not parsed into a dict: three headers matter, and on an emulated
            # MIPS core every Python step of a poll shows in the idle CPU.
            head = self.buffer[:end + 2].lower()
            self.buffer = self.buffer[end + 4:]
            status_line = head[:head.find(b"\r\n")]
            words = status_line.split(None, 2)
            if len(words) < 2 or not words[0].startswith(b"http/") or not words[1].isdigit():
                raise TransportError(f"not an HTTP answer: {status_line[:80]!r}")
            status = int(words[1])
            if not 100 <= status < 200:
                return status, head

    def exactly(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            chunk = self.recv(deadline)
            if not chunk:
                raise TransportError("supervisor closed the connection in the middle of an "
                                     "answer")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def line(self, deadline: float) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise TransportError("chunk header too long")
            chunk = self.recv(deadline)
            if not chunk:
                raise TransportError("supervisor closed the connection in the middle of an "
                                     "answer")
            self.buffer += chunk
        data, self.buffer = self.buffer[:end], self.buffer[end + 2:]
        return data

    def chunked(self, deadline: float) -> bytes:
        parts, size = [], 0
        while True:
            header = self.line(deadline).split(b";", 1)[0].strip()
            try:
                length = int(header, 16)
            except ValueError:
                raise TransportError(f"bad chunk size {header[:20]!r}") from None
            if length == 0:
                while self.line(deadline):  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            size += length
            if size > MAX_BODY:
                raise TransportError(f"supervisor sent more than {MAX_BODY} bytes")
            parts.append(self.exactly(length, deadline))
            self.exactly(2, deadline)

    def until_closed(self, deadline: float) -> bytes:
        parts, size = [self.buffer], len(self.buffer)
        self.buffer = b""
        while chunk := self.recv(deadline):
            size += len(chunk)
            if size > MAX_BODY:
                raise TransportError(f"supervisor sent more than {MAX_BODY} bytes")
            parts.append(chunk)
        return b"".join(parts)


def _header(head: bytes, name: bytes) -> bytes | None:
    """A header's value in a lower-cased header block from :meth:`_Connection.head`."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    return head[start:head.find(b"\r\n", start)].strip()


class Supervisor:
    """One supervisor endpoint. Each thread keeps its connection open between requests: on a
    MiniProbe a mutual-TLS handshake per specification poll was most of the daemon's idle CPU.
    A kept connection is used only while young, and a request that finds it closed by the
    supervisor before any answer is sent once more on a fresh one."""

    def __init__(self, url: str, context: ssl.SSLContext | None, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.context = context
        self.timeout = timeout
        name = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = f"Host: {name}:{self.port}\r\n"
        self._kept = threading.local()
        # The poll's request, the same bytes every 5 s: built once.
        self._bodyless: dict[tuple[str, str], bytes] = {}

    def _connect(self, deadline: float) -> _Connection:
        left = deadline - time.monotonic()
        sock = socket.create_connection((self.host, self.port), timeout=max(left, 0.001))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                context = self.context or ssl.create_default_context()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                # The handshake as a whole is bounded by the socket's timeout.
                sock.settimeout(left)
                sock = context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _take(self) -> _Connection | None:
        """This thread's kept connection if it is young enough."""
        kept: _Connection | None = getattr(self._kept, "connection", None)
        self._kept.connection = None
        if kept is not None and time.monotonic() - kept.since < KEEP_ALIVE_S:
            return kept
        if kept is not None:
            kept.close()
        return None

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        deadline = time.monotonic() + self.timeout
        kept = self._take()
        if kept is not None:
            try:
                return self._exchange(kept, True, method, path, body, deadline)
            except _StaleConnection:
                pass
        return self._exchange(None, False, method, path, body, deadline)

    def _exchange(self, connection: _Connection | None, reused: bool, method: str, path: str,
                  body: bytes | None, deadline: float) -> Reply:
        request = self._bodyless.get((method, path)) if body is None else None
        if request is None:
            head = (f"{method} {self.base}{path} HTTP/1.1\r\n{self._host_header}"
                    f"Accept: {CONTENT_TYPE}\r\nAccept-Encoding: identity\r\n")
            if body is not None:
                head += f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
            request = (head + "\r\n").encode("latin-1") + (body or b"")
            if body is None:
                self._bodyless[(method, path)] = request
        keep = False
        answered = False
        try:
            if connection is None:
                connection = self._connect(deadline)
            connection.send(request, deadline)
            status, head = connection.head(deadline)
            answered = True
            connection_header = _header(head, b"connection") or b""
            close = b"close" in connection_header or (
                head.startswith(b"http/1.0") and b"keep-alive" not in connection_header)
            length = _header(head, b"content-length")
            if b"chunked" in (_header(head, b"transfer-encoding") or b""):
                data = connection.chunked(deadline)
            elif length is not None:
                if not length.isdigit():
                    raise TransportError(f"bad Content-Length {length[:20]!r}")
                if int(length) > MAX_BODY:
                    raise TransportError(f"supervisor sent {int(length)} bytes (limit "
                                         f"{MAX_BODY})")
                data = connection.exactly(int(length), deadline)
            elif status in (204, 304):
                data = b""
            else:
                data, close = connection.until_closed(deadline), True
            keep = not close
            return Reply(status, data)
        except TimeoutError:
            raise TransportError(TOO_SLOW) from None
        except ssl.SSLError as exc:
            if reused and not answered:
                raise _StaleConnection() from None
            raise TransportError(f"TLS with {self.host}:{self.port} failed: {exc}") from None
        except OSError as exc:
            if reused and not answered:
                # The supervisor closed the kept connection while it was idle.
                raise _StaleConnection() from None
            raise TransportError(f"{self.host}:{self.port}: {exc or type(exc).__name__}") \
                from None
        finally:
            if connection is not None:
                if keep:
                    connection.since = time.monotonic()
                    self._kept.connection = connection
                else:
                    connection.close()
