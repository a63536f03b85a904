# SPDX-License-Identifier: Apache-2.0
"""HTTP(S) download: how long a page takes and how fast its body arrives.

Capability ``http-download`` (registry ``REGISTRY_PROBEFORGE``):

- parameter ``destination.url`` (``*``): an ``http://`` or ``https://`` URL; IPv6 literals in
  brackets (``http://[2001:db8::1]:8080/x``) work;
- results, one row per download: ``time`` (when the download started), ``http.code`` (status
  of the final response), ``http.redirectcount`` (redirects followed),
  ``delay.firstbyte.ms`` (from the start of the download, name resolution, connections and
  redirects included, to the first byte of the final response's body; for an empty body, to
  the end of its headers), ``duration.ms`` (start to last body byte), ``octets.layer7`` (body
  bytes of the final response) and ``bandwidth.imputed.kbps`` (kilobits, 1000 bits, a second
  over the body transfer, see below);
- when ``now ... future / 10s``: every tick of the scope is one download; a scope without a
  period repeats every 10 s, a singleton scope downloads once. Ticks are never skipped: a
  download slower than the period makes the next one start at once.

Decisions a client must know:

- Redirects (301, 302, 303, 307, 308 with a Location) are followed with GET, each on a new
  connection, up to ``max_redirects``. When the limit is reached the redirect that was not
  followed is reported as the final response: its 3xx code, ``http.redirectcount`` equal to
  the limit, its own body counted. A 3xx code in a row therefore always means "not followed".
- Throughput counts the body bytes after the first read over the time from that read to the
  last one, which removes the first segment's unknown arrival time. When the whole body came
  in one read (small bodies), it is all the body over the time since the response headers, so
  a tiny body gives a large, meaningless figure: throughput is only meaningful for bodies much
  larger than a TCP window.
- ``max_bytes`` stops reading the body; the row is reported as usual with
  ``octets.layer7 == max_bytes``, which is how a client tells the cap was hit.
- ``timeout_s`` bounds every single wait (connecting, TLS handshake, sending, each read), not
  the whole download: a large file on a slow link may legitimately take minutes. Name
  resolution uses the system resolver, whose own timeouts apply.
- Failures (name resolution, connection refused, timeout, TLS verification, broken or
  truncated response): a singleton scope raises ``MeasurementError`` with the reason. A
  repeated scope keeps going, because one failed iteration of a long series is data, not the
  end of the series: the iteration still produces its row, with ``http.code`` 0,
  ``delay.firstbyte.ms`` and ``bandwidth.imputed.kbps`` as ``*`` (mPlane's "no value"),
  ``duration.ms`` the time until the failure and ``octets.layer7`` the body bytes received
  before it, so a client never sees a silent gap. The reason goes to the daemon's log.
- An interrupted (stopped) download produces no row: the client asked for nothing more.
- Invalid parameters (not a URL, another scheme, https on a Python without ssl) raise
  ``MeasurementError`` before the first download, whatever the scope.
"""

import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from probe_daemon.measurements.base import (
    REGISTRY_PROBEFORGE,
    CapabilityTemplate,
    Job,
    MeasurementError,
    Options,
)

if TYPE_CHECKING:
    # Imported where a download runs: with the email package it pulls in, http.client is
    # 1.4 MB of a MiniProbe's memory that an idle daemon does not need.
    import http.client

try:
    import ssl
except ImportError:  # OpenWrt's python3-light ships without it: plain http still works
    ssl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

OPTIONS: dict[str, tuple[str, str]] = {
    "max_redirects": ("5", "redirects followed before the last 3xx is reported as final"),
    "timeout_s": ("30", "seconds any single connect, handshake, send or read may wait"),
    "max_bytes": ("104857600", "body bytes read at most; the download stops there"),
    "ca_file": ("", "PEM CA certificates to verify https servers with; "
                    "empty: the system CA store"),
}

ELEMENTS: dict[str, tuple[str, str]] = {
    "http.code": ("natural", "HTTP status code of the final response; 0 when the download "
                             "failed before a complete response"),
    "http.redirectcount": ("natural", "number of HTTP redirects followed"),
}

RESULTS = ("time", "http.code", "http.redirectcount", "delay.firstbyte.ms", "duration.ms",
           "octets.layer7", "bandwidth.imputed.kbps")
PERIOD = timedelta(seconds=10)
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# What the RI writes for a value that was not measured.
NO_VALUE = "*"
READ_SIZE = 65536
USER_AGENT = "probeforge-probe"


class DownloadFailed(Exception):
    """One download failed; carries what was measured up to the failure."""

    def __init__(self, reason: str, redirects: int, octets: int) -> None:
        super().__init__(reason)
        self.redirects = redirects
        self.octets = octets


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(url: str, https_ok: bool) -> Target:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise MeasurementError(f"destination.url: {url!r} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise MeasurementError(f"destination.url: {url!r} is not an http or https URL")
    if scheme == "https" and not https_ok:
        raise MeasurementError("https is not available: this Python has no ssl module")
    if not parts.hostname:
        raise MeasurementError(f"destination.url: {url!r} has no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)


@dataclass
class Download:
    code: int
    redirects: int
    firstbyte_s: float
    duration_s: float
    octets: int
    kbps: int


class HttpDownloadMeasurement:
    name = "http"

    def __init__(self, options: Mapping[str, str]) -> None:
        self._problem: str | None = None
        self.max_redirects, self.timeout_s, self.max_bytes = 5, 30.0, 100 * 1024 * 1024
        read = Options(options, OPTIONS)
        self.ca_file = read.text("ca_file")
        try:
            self.max_redirects = read.integer("max_redirects", minimum=0)
            self.timeout_s = float(read.integer("timeout_s", minimum=1))
            self.max_bytes = read.integer("max_bytes", minimum=1)
        except ValueError as exc:
            self._problem = str(exc)
        self._context: Any = None

    def capabilities(self) -> list[CapabilityTemplate]:
        return [CapabilityTemplate(
            label="http-download",
            parameters={"destination.url": "*"},
            results=RESULTS,
            when=f"now ... future / {int(PERIOD.total_seconds())}s",
            registry=REGISTRY_PROBEFORGE,
        )]

    def unavailable(self) -> str | None:
        if self._problem:
            return self._problem
        if self.ca_file and not os.access(self.ca_file, os.R_OK):
            return f"option ca_file: {self.ca_file} is not readable"
        return None

    def run(self, job: Job) -> Iterator[Mapping[str, Any]]:
        problem = self.unavailable()
        if problem:
            raise MeasurementError(problem)
        url = job.parameters.get("destination.url", "")
        parse_url(url, https_ok=ssl is not None)  # bad parameters fail before any tick
        start, end = job.when.bounds(job.received)
        single = job.when.period is None and end == start
        for _tick in job.ticks(default_period=PERIOD):
            started = datetime.now(UTC)
            t0 = time.perf_counter()
            try:
                result = self.download(url, job)
            except DownloadFailed as failure:
                if job.stop.is_set():
                    return
                if single:
                    raise MeasurementError(str(failure)) from None
                log.warning("http-download %s: %s", url, failure)
                yield {"time": started, "http.code": 0,
                       "http.redirectcount": failure.redirects,
                       "delay.firstbyte.ms": NO_VALUE,
                       "duration.ms": round((time.perf_counter() - t0) * 1000),
                       "octets.layer7": failure.octets, "bandwidth.imputed.kbps": NO_VALUE}
                continue
            if result is None:  # stopped mid-download
                return
            yield {"time": started, "http.code": result.code,
                   "http.redirectcount": result.redirects,
                   "delay.firstbyte.ms": round(result.firstbyte_s * 1000),
                   "duration.ms": round(result.duration_s * 1000),
                   "octets.layer7": result.octets,
                   "bandwidth.imputed.kbps": result.kbps}

    def _ssl_context(self) -> Any:
        if self._context is None:
            # The system store on the probe is the ca-certificates bundle OpenSSL was built for.
            self._context = ssl.create_default_context(cafile=self.ca_file or None)
        return self._context

    def _connection(self, target: Target) -> "http.client.HTTPConnection":
        import http.client

        if target.scheme == "https":
            return http.client.HTTPSConnection(target.host, target.port,
                                               timeout=self.timeout_s,
                                               context=self._ssl_context())
        return http.client.HTTPConnection(target.host, target.port, timeout=self.timeout_s)

    def download(self, url: str, job: Job) -> Download | None:
        """One download, following redirects; None when stopped on the way."""
        import http.client

        t0 = time.perf_counter()
        redirects = 0
        while True:
            target = parse_url(url, https_ok=ssl is not None)
            conn = self._connection(target)
            try:
                phase = f"connecting to {target.where}"
                try:
                    conn.connect()
                    phase = "sending the request"
                    conn.request("GET", target.path, headers={
                        "User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"})
                    phase = "waiting for the response"
                    response = conn.getresponse()
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadFailed(_reason(exc, phase, target, self.timeout_s),
                                         redirects, 0) from None
                t_headers = time.perf_counter()
                location = response.getheader("Location")
                if response.status in REDIRECT_CODES and location \
                        and redirects < self.max_redirects:
                    redirects += 1
                    url = urljoin(url, location.strip())
                    try:
                        parse_url(url, https_ok=ssl is not None)
                    except MeasurementError as exc:
                        raise DownloadFailed(f"redirect {redirects} to {location!r}: {exc}",
                                             redirects, 0) from None
                    if job.stop.is_set():
                        return None
                    continue
                return self._read_body(response, t0, t_headers, redirects, target, job)
            finally:
                conn.close()

    def _read_body(self, response: "http.client.HTTPResponse", t0: float, t_headers: float,
                   redirects: int, target: Target, job: Job) -> Download | None:
        import http.client

        octets = first_len = reads = 0
        t_first = t_last = t_headers
        try:
            while octets < self.max_bytes:
                chunk = response.read1(min(READ_SIZE, self.max_bytes - octets))
                if not chunk:
                    # http.client reports a Content-Length body cut short as a normal end.
                    if response.length:
                        raise http.client.IncompleteRead(b"", response.length)
                    break
                now = time.perf_counter()
                if not reads:
                    t_first, first_len = now, len(chunk)
                t_last = now
                reads += 1
                octets += len(chunk)
                if job.stop.is_set():
                    return None
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadFailed(_reason(exc, f"reading the body after {octets} bytes",
                                         target, self.timeout_s), redirects, octets) from None
        if reads > 1 and t_last > t_first:
            bits, seconds = (octets - first_len) * 8, t_last - t_first
        else:
            bits, seconds = octets * 8, t_last - t_headers
        kbps = round(bits / seconds / 1000) if octets and seconds > 0 else 0
        return Download(code=response.status, redirects=redirects,
                        firstbyte_s=(t_first if reads else t_headers) - t0,
                        duration_s=(t_last if reads else t_headers) - t0,
                        octets=octets, kbps=kbps)


def _reason(exc: BaseException, phase: str, target: Target, timeout_s: float) -> str:
    """The client-facing sentence for a failed download."""
    import http.client

    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {target.host}: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {target.where} refused"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s {phase}"
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {target.where} not trusted: {exc.verify_message}"
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return f"TLS error with {target.where}: {exc.reason or exc}"
    if isinstance(exc, http.client.IncompleteRead):
        missing = f", {exc.expected} bytes missing" if exc.expected else ""
        return f"connection closed {phase}{missing}"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response {phase}: {type(exc).__name__} {exc}".rstrip()
    if isinstance(exc, OSError):
        return f"{phase}: {exc.strerror or exc}"
    return f"{phase}: {exc}"
