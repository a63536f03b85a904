# SPDX-License-Identifier: Apache-2.0
"""HTTP(S) to the supervisor: mutual TLS, hard timeouts and a cap on what a peer may send."""

import http.client
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from probe_daemon.model import CONTENT_TYPE

# A specification envelope is a few kB; anything near this is hostile or broken.
MAX_BODY = 4 * 1024 * 1024


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
        deadline = time.monotonic() + self.timeout
        connection = self._connection()
        try:
            connection.request(method, self.base + path, body=body, headers=headers)
            response = connection.getresponse()
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_BODY:
                raise TransportError(f"supervisor sent {length} bytes (limit {MAX_BODY})")
            chunks, size = [], 0
            while True:
                # A peer trickling bytes must not hold us beyond the request's deadline.
                if time.monotonic() > deadline:
                    raise TransportError("supervisor too slow: request deadline passed")
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BODY:
                    raise TransportError(f"supervisor sent more than {MAX_BODY} bytes")
                chunks.append(chunk)
            return Reply(response.status, b"".join(chunks))
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {self.host}:{self.port} failed: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{self.host}:{self.port}: {exc or type(exc).__name__}") \
                from None
        finally:
            connection.close()
