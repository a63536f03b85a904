# SPDX-License-Identifier: Apache-2.0
"""HTTP: our own small client, because a player-like measurement needs what urllib hides
(every status and redirect, a source address, keep-alive, byte counts, prompt aborts)."""

import http.client
import socket
import ssl
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from probe_daemon import __version__

CHUNK = 64 * 1024
MANIFEST_LIMIT = 4 * 1024 * 1024
MAX_REDIRECTS = 10
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = f"probeforge-ott/{__version__}"


class Stopped(Exception):
    """job.stop was set: the run is abandoned without a result."""


@dataclass
class Fetched:
    url: str  # the last URL asked, after redirects
    status: int = 0  # the last status, 0 when no response came
    codes: list[int] = field(default_factory=list)
    redirects: int = 0
    size: int = 0
    elapsed: float = 0.0  # wall seconds, redirects included
    body: bytes = b""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class HttpClient:
    """GET with redirects, keep-alive per origin, an overall deadline and abort on stop."""

    def __init__(self, timeout: float, source_ip: str | None, stop: threading.Event) -> None:
        self._timeout = timeout
        self._source = (source_ip, 0) if source_ip else None
        self._stop = stop
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self._active: socket.socket | None = None
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def get(self, url: str, *, keep_body: bool = False,
            byterange: tuple[int, int] | None = None) -> Fetched:
        result = Fetched(url=url)
        started = time.monotonic()
        try:
            self._follow(result, keep_body, byterange, started + self._timeout)
        except Stopped:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._check_stop()  # an abort looks like a network error: report it as a stop
            result.error = _describe(exc, self._timeout)
        result.elapsed = time.monotonic() - started
        if not result.error and not 200 <= result.status < 300:
            result.error = f"HTTP {result.status}"
        return result

    def abort(self) -> None:
        """Unblock a request waiting on the network (called from another thread)."""
        with self._lock:
            sock = self._active
        if sock is not None:
            with suppress(OSError):  # already closed: nothing to unblock
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _follow(self, result: Fetched, keep_body: bool, byterange: tuple[int, int] | None,
                deadline: float) -> None:
        while True:
            location = self._exchange(result, keep_body, byterange, deadline)
            if location is None:
                return
            if result.redirects >= MAX_REDIRECTS:
                result.error = f"more than {MAX_REDIRECTS} redirects"
                return
            result.redirects += 1
            result.url = urljoin(result.url, location)

    def _exchange(self, result: Fetched, keep_body: bool, byterange: tuple[int, int] | None,
                  deadline: float) -> str | None:
        """One request; returns where a redirect points, None when done."""
        parts = urlsplit(result.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported URL {result.url!r} (http and https only)")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        if byterange:
            headers["Range"] = f"bytes={byterange[0]}-{byterange[1]}"
        key = (parts.scheme, parts.netloc)
        response = self._send(key, target, headers, deadline)
        try:
            result.status = response.status
            result.codes.append(response.status)
            location = response.getheader("Location")
            if response.status in REDIRECT_CODES and location:
                self._drain(key, response, deadline, None, CHUNK)
                return location
            if not 200 <= response.status < 300:
                self._drain(key, response, deadline, None, CHUNK)
                return None
            limit = byterange[1] - byterange[0] + 1 if byterange and response.status == 200 \
                else None  # a server that ignores Range: take the bytes a player would use
            result.body = self._drain(key, response, deadline, result, limit,
                                      keep_body=keep_body)
            return None
        except BaseException:
            self._drop(key)
            raise

    def _send(self, key: tuple[str, str], target: str, headers: dict[str, str],
              deadline: float) -> http.client.HTTPResponse:
        for attempt in range(2):
            conn = self._conns.get(key) or self._connect(key)
            reused = conn.sock is not None
            try:
                self._set_timeout(conn, deadline)
                conn.request("GET", target, headers=headers)
                with self._lock:
                    self._active = conn.sock
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server closed meanwhile: one fresh try, as
                # browsers do; a new connection failing is a real failure.
                self._drop(key)
                self._check_stop()
                if not reused or attempt:
                    raise
            except BaseException:
                self._drop(key)
                raise
        raise AssertionError("unreachable")

    def _connect(self, key: tuple[str, str]) -> http.client.HTTPConnection:
        scheme, netloc = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._tls is None:
                self._tls = tls_context()
            conn = http.client.HTTPSConnection(netloc, timeout=self._timeout,
                                               source_address=self._source, context=self._tls)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=self._timeout,
                                              source_address=self._source)
        self._conns[key] = conn
        return conn

    def _drain(self, key: tuple[str, str], response: http.client.HTTPResponse, deadline: float,
               result: Fetched | None, limit: int | None, keep_body: bool = False) -> bytes:
        """Read a body to its end (or ``limit`` bytes), counting it and keeping it if asked."""
        parts: list[bytes] = []
        size = 0
        while limit is None or size < limit:
            self._check_stop()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            with self._lock:
                sock = self._active
            if sock is not None:
                sock.settimeout(remaining)
            chunk = response.read1(CHUNK if limit is None else min(CHUNK, limit - size))
            if not chunk:
                break
            size += len(chunk)
            if keep_body:
                parts.append(chunk)
                if size > MANIFEST_LIMIT:
                    raise ValueError(f"manifest larger than {MANIFEST_LIMIT // 1024 // 1024} MiB")
        if result is not None:
            result.size = size
        if not response.isclosed():
            self._drop(key)  # body left unread: the connection cannot carry another request
        return b"".join(parts)

    def _set_timeout(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        conn.timeout = remaining
        if conn.sock is not None:
            conn.sock.settimeout(remaining)

    def _drop(self, key: tuple[str, str]) -> None:
        conn = self._conns.pop(key, None)
        if conn is not None:
            conn.close()
        with self._lock:
            self._active = None

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Stopped


def tls_context() -> ssl.SSLContext:
    """The system's trust store, as a player on this device would use (tests replace it)."""
    return ssl.create_default_context()


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


@dataclass
class HttpTally:
    """What the result columns http.code.max and http.redirectcount.max report."""

    code_max: int = 0
    redirects_max: int = 0

    def add(self, fetched: Fetched) -> None:
        self.code_max = max([self.code_max, *fetched.codes])
        self.redirects_max = max(self.redirects_max, fetched.redirects)
