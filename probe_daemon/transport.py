# SPDX-License-Identifier: Apache-2.0
"""HTTP(S) to the supervisor: mutual TLS, hard timeouts and a cap on what a peer may send."""

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from probe_daemon.model import CONTENT_TYPE

# A specification envelope is a few kB; anything near this is hostile or broken.
MAX_BODY = 4 * 1024 * 1024
TOO_SLOW = "supervisor too slow: request deadline passed"


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
    """One supervisor endpoint; a fresh connection per request keeps failure handling simple."""

    def __init__(self, url: str, context: ssl.SSLContext | None, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.context = context
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        headers = {"Accept": CONTENT_TYPE}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        connection = self._connection()
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
        try:
            connection.connect()
            sockets.append(connection.sock)
            connection.request(method, self.base + path, body=body, headers=headers)
            response = connection.getresponse()
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
            return Reply(response.status, b"".join(chunks))
        except ssl.SSLError as exc:
            if expired.is_set():
                raise TransportError(TOO_SLOW) from None
            raise TransportError(f"TLS with {self.host}:{self.port} failed: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise TransportError(TOO_SLOW) from None
            raise TransportError(f"{self.host}:{self.port}: {exc or type(exc).__name__}") \
                from None
        finally:
            watchdog.cancel()
            connection.close()
