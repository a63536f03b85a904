# SPDX-License-Identifier: Apache-2.0
"""HTTP(S) to the supervisor: mutual TLS, hard timeouts and a cap on what a peer may send."""

import contextlib
import http.client
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
TOO_SLOW = "supervisor too slow: request deadline passed"
# How long an idle kept connection is trusted: well under any supervisor's idle timeout, well
# over the poll interval.
KEEP_ALIVE_S = 30.0


class TransportError(Exception):
    """The supervisor could not be reached or answered in a way we cannot use."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


def tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


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
        self._kept = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _take(self) -> http.client.HTTPConnection:
        """This thread's kept connection if it is young enough, else a new one."""
        kept = getattr(self._kept, "connection", None)
        self._kept.connection = None
        if kept is not None and time.monotonic() - self._kept.since < KEEP_ALIVE_S:
            return kept
        if kept is not None:
            kept.close()
        return self._connection()

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        connection = self._take()
        try:
            return self._exchange(connection, method, path, body)
        except _StaleConnection:
            return self._exchange(self._connection(), method, path, body)

    def _exchange(self, connection: http.client.HTTPConnection, method: str, path: str,
                  body: bytes | None) -> Reply:
        headers = {"Accept": CONTENT_TYPE}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        reused = connection.sock is not None
        # The socket timeout bounds each read, not the request: a peer trickling a byte now
        # and then (in the headers or in a body whose length it announced) would hold a
        # blocking read for ever. At the deadline the watchdog shuts the socket down, which
        # ends any read under way.
        expired = threading.Event()
        # The connection forgets its socket once the response owns it: keep it here.
        sockets: list[socket.socket | None] = []

        def expire() -> None:
            expired.set()
            for sock in sockets or [connection.sock]:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)

        watchdog = threading.Timer(self.timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        keep = False
        answered = False
        try:
            if not reused:
                connection.connect()
            sockets.append(connection.sock)
            connection.request(method, self.base + path, body=body, headers=headers)
            response = connection.getresponse()
            answered = True
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_BODY:
                raise TransportError(f"supervisor sent {length} bytes (limit {MAX_BODY})")
            chunks, size = [], 0
            while True:
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BODY:
                    raise TransportError(f"supervisor sent more than {MAX_BODY} bytes")
                chunks.append(chunk)
            if expired.is_set():
                # A shut-down socket reads as the end of a body without Content-Length.
                raise TransportError(TOO_SLOW)
            keep = not response.will_close
            return Reply(response.status, b"".join(chunks))
        except ssl.SSLError as exc:
            if expired.is_set():
                raise TransportError(TOO_SLOW) from None
            raise TransportError(f"TLS with {self.host}:{self.port} failed: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise TransportError(TOO_SLOW) from None
            if reused and not answered:
                # The supervisor closed the kept connection while it was idle.
                raise _StaleConnection() from None
            raise TransportError(f"{self.host}:{self.port}: {exc or type(exc).__name__}") \
                from None
        finally:
            watchdog.cancel()
            if keep:
                self._kept.connection = connection
                self._kept.since = time.monotonic()
            else:
                connection.close()


class _StaleConnection(Exception):
    """A kept connection the supervisor had closed: send the request again on a new one."""
