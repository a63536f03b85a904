# SPDX-License-Identifier: Apache-2.0
"""OTT video delivery measured the way a player experiences it: HLS, MPEG-DASH, Smooth Streaming.

Takes the place of the proprietary ``probe-ott`` of the mPlane testbeds, offering the same
capability (``ott-download``) with the same parameters and result columns, so existing clients
keep working. Each tick of the specification is one run: fetch the manifest, then download
segments as a simple player would, in step with presentation time (never further ahead than
``max_buffer_s``), with a simulated playout buffer that tells when a viewer would have seen the
picture freeze. Nothing is decoded: segment bytes are counted and dropped, which keeps the
daemon within a MiniProbe's memory.

The scores and the player model are specified in docs/ott-scoring.md; the constants below carry
the names used there, and a test keeps the two in agreement.
"""

import bisect
import http.client
import math
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from probe_daemon import __version__
from probe_daemon.measurements.base import (
    REGISTRY_PROBEFORGE,
    CapabilityTemplate,
    Job,
    MeasurementError,
    ip_param,
)

LABEL = "ott-download"
WHEN = "now ... future / 10s"
RESULTS = ("time", "bandwidth.nominal.kbps", "http.code.max", "http.redirectcount.max",
           "qos.manifest", "qos.content", "qos.aggregate", "qos.level")
POLICIES = ("adaptive", "lowest", "highest", "all")

OPTIONS: dict[str, tuple[str, str]] = {
    "source_ip4": ("*", "constraint offered for the source.ip4 parameter (\"*\" or addresses)"),
    "variant_policy": ("adaptive", "adaptive (throughput-based, like a player), lowest, "
                                   "highest, level:N (N from 0 = lowest bitrate) or all "
                                   "(one row per level)"),
    "playout_s": ("30", "seconds of presentation played per run"),
    "startup_buffer_s": ("4", "seconds of media buffered before playback starts"),
    "max_buffer_s": ("12", "the player fetches no further ahead of playback than this"),
    "timeout_s": ("10", "a request, its redirects included, is abandoned after this"),
    "time_scale": ("1", "for tests only: the presentation clock runs this many times faster "
                        "than the wall clock, so bandwidths must be this many times higher"),
}

ELEMENTS: dict[str, tuple[str, str]] = {
    "http.code.max": ("natural", "Highest HTTP status code received during an OTT run, "
                                 "redirect responses included"),
    "http.redirectcount.max": ("natural", "Longest chain of HTTP redirects followed by one "
                                          "request of an OTT run"),
    "qos.manifest": ("natural", "OTT manifest health score, 0-100 (probeforge "
                                "docs/ott-scoring.md)"),
    "qos.content": ("natural", "OTT segment delivery score from a simulated player, 0-100"),
    "qos.aggregate": ("natural", "Minimum of qos.manifest and qos.content"),
    "qos.level": ("natural", "Nominal bitrate played relative to the highest level offered, "
                             "0-100"),
}

# --- Scoring constants: docs/ott-scoring.md explains each one. ---
MANIFEST_ERROR_PENALTY = 15
MANIFEST_ERROR_CAP = 60
REDIRECT_PENALTY = 5
REDIRECT_CAP = 20
MANIFEST_SLOW_S = 1.0
MANIFEST_SLOW_PENALTY_PER_S = 10
MANIFEST_SLOW_CAP = 30
MALFORMED_PENALTY = 5
MALFORMED_CAP = 40
STARTUP_GRACE_S = 2.0
STARTUP_PENALTY_PER_S = 5
STARTUP_CAP = 20
STALL_PENALTY = 10
REBUFFER_PENALTY_PER_PCT = 2
STALL_CAP = 70
LATE_WEIGHT = 20
FAILED_PENALTY = 10
FAILED_RATIO_WEIGHT = 50
FAILED_CAP = 50
# --- Player constants. ---
ABR_SAFETY = 0.8
ABR_SAMPLES = 3
ABR_LOW_BUFFER = 0.5  # of startup_buffer_s: below it, no up-switch
LIVE_EDGE_TARGETS = 3
RUN_LIMIT_PLAYOUTS = 2
ATTEMPTS = 2

CHUNK = 64 * 1024
MANIFEST_LIMIT = 4 * 1024 * 1024
MAX_REDIRECTS = 10
MAX_SEGMENTS = 100_000
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
STOP_POLL_S = 0.1
EPS = 1e-6
USER_AGENT = f"probeforge-ott/{__version__}"


class ManifestError(ValueError):
    """A manifest that cannot be used as it is; the text says what is wrong."""


class _Stopped(Exception):
    """job.stop was set: the run is abandoned without a result."""


class _ManifestFailure(MeasurementError):
    """No usable manifest; keeps what HTTP said for the failure row of later ticks."""

    def __init__(self, message: str, tally: "HttpTally") -> None:
        super().__init__(message)
        self.tally = tally


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    policy: str = "adaptive"
    fixed_level: int | None = None
    playout: float = 30.0
    startup_buffer: float = 4.0
    max_buffer: float = 12.0
    timeout: float = 10.0
    time_scale: float = 1.0

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> "Settings":
        def number(key: str, minimum: float = 0.0) -> float:
            text = options.get(key, OPTIONS[key][0])
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"[ott] {key} = {text!r} is not a number") from None
            if not math.isfinite(value) or value <= minimum:
                raise ValueError(f"[ott] {key} = {text!r} must be greater than {minimum:g}")
            return value

        policy, fixed = _parse_policy(options.get("variant_policy", OPTIONS["variant_policy"][0]))
        settings = cls(policy=policy, fixed_level=fixed, playout=number("playout_s"),
                       startup_buffer=number("startup_buffer_s", -EPS),
                       max_buffer=number("max_buffer_s"), timeout=number("timeout_s"),
                       time_scale=number("time_scale"))
        if settings.max_buffer < settings.startup_buffer:
            raise ValueError("[ott] max_buffer_s must not be below startup_buffer_s: the player "
                             "would never start")
        return settings


def _parse_policy(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if text in POLICIES:
        return text, None
    match = re.fullmatch(r"level:(\d+)", text)
    if match:
        return "level", int(match.group(1))
    raise ValueError(f"[ott] variant_policy = {text!r}: expected adaptive, lowest, highest, "
                     "level:N or all")


# ---------------------------------------------------------------------------------------------
# HTTP: our own small client, because a player-like measurement needs what urllib hides
# (every status and redirect, a source address, keep-alive, byte counts, prompt aborts).


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
        except _Stopped:
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
            raise _Stopped


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


# ---------------------------------------------------------------------------------------------
# What a manifest describes: levels (variants, representations, quality levels), each a track
# of segments. HLS tracks are addressed by media sequence number, DASH and Smooth Streaming
# ones by presentation time, which is how players keep variants aligned when they switch.


@dataclass(frozen=True, slots=True)
class Cursor:
    seq: int
    time: float


@dataclass(frozen=True, slots=True)  # long VOD playlists hold thousands of these
class Segment:
    url: str
    start: float  # presentation seconds
    duration: float
    seq: int
    byterange: tuple[int, int] | None = None  # first and last byte, inclusive
    init: tuple[str, tuple[int, int] | None] | None = None  # initialisation segment

    def after(self) -> Cursor:
        return Cursor(self.seq + 1, self.start + self.duration)


class Track(Protocol):
    live: bool

    def start(self) -> Cursor: ...

    def find(self, cursor: Cursor) -> Segment | None: ...


@dataclass
class HlsTrack:
    segments: list[Segment]
    target: float
    live: bool
    malformed: int = 0

    def start(self) -> Cursor:
        if not self.segments:
            return Cursor(0, 0.0)
        if not self.live:
            return Cursor(self.segments[0].seq, self.segments[0].start)
        # RFC 8216 6.3.3: start no closer than three target durations to the live edge.
        edge = self.segments[-1].start + self.segments[-1].duration
        chosen = self.segments[0]
        for segment in self.segments:
            if segment.start <= edge - LIVE_EDGE_TARGETS * self.target + EPS:
                chosen = segment
        return Cursor(chosen.seq, chosen.start)

    def find(self, cursor: Cursor) -> Segment | None:
        if not self.segments:
            return None
        index = max(0, cursor.seq - self.segments[0].seq)  # fell out of a live window: resume
        return self.segments[index] if index < len(self.segments) else None

    def merge(self, newer: "HlsTrack") -> bool:
        """Take a reloaded live playlist, keeping our start times; True if it grew."""
        known = {segment.seq: segment for segment in self.segments}
        last = self.segments[-1].seq if self.segments else -1
        end = self.segments[-1].start + self.segments[-1].duration if self.segments else 0.0
        merged = []
        for segment in newer.segments:
            if segment.seq in known:
                merged.append(known[segment.seq])
            else:
                merged.append(replace(segment, start=end))
            end = merged[-1].start + merged[-1].duration
        self.segments, self.target, self.live = merged, newer.target, newer.live
        return bool(merged) and merged[-1].seq > last


class TimedTrack:
    """Segments at known start times (timescale units), URLs built on demand to save memory."""

    live = False

    def __init__(self, starts: Sequence[int], end: int, timescale: int, offset: int,
                 url_for: Callable[[int, int], tuple[str, tuple[int, int] | None]],
                 init: tuple[str, tuple[int, int] | None] | None, first_number: int) -> None:
        if not starts:
            raise ManifestError("no segments")
        if timescale <= 0:
            raise ManifestError(f"timescale {timescale} is not positive")
        self._starts, self._end, self._scale, self._offset = starts, end, timescale, offset
        self._url_for, self._init, self._first = url_for, init, first_number

    def start(self) -> Cursor:
        return Cursor(self._first, (self._starts[0] - self._offset) / self._scale)

    def find(self, cursor: Cursor) -> Segment | None:
        raw = round(cursor.time * self._scale) + self._offset
        index = max(0, bisect.bisect_right(self._starts, raw) - 1)
        if index < len(self._starts) and self._starts[index] + self._duration(index) <= raw:
            index += 1
        return self._segment(index) if index < len(self._starts) else None

    def _duration(self, index: int) -> int:
        following = self._starts[index + 1] if index + 1 < len(self._starts) else self._end
        return following - self._starts[index]

    def _segment(self, index: int) -> Segment:
        raw = self._starts[index]
        url, byterange = self._url_for(index, raw)
        return Segment(url=url, start=(raw - self._offset) / self._scale,
                       duration=self._duration(index) / self._scale, seq=self._first + index,
                       byterange=byterange, init=self._init)


@dataclass
class Level:
    bandwidth: int  # nominal bit/s; 0 when the manifest does not say (plain HLS media playlist)
    label: str
    playlist_url: str = ""  # an HLS variant playlist not loaded yet
    track: Track | None = None
    unusable: str = ""
    reload_at: float = 0.0  # presentation time of the next live playlist reload


@dataclass
class Presentation:
    kind: str  # hls, dash, smooth
    url: str
    levels: list[Level]  # ascending nominal bitrate
    malformed: int = 0


def parse_manifest(body: bytes, url: str) -> Presentation:
    """Any of the three formats, recognised by content rather than by name or content type."""
    head = body[:512].decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if head.startswith("#EXTM3U"):
        return parse_hls(body.decode("utf-8", "replace"), url)
    if head.startswith("<"):
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise ManifestError(f"XML manifest does not parse: {exc}") from None
        tag = _local(root.tag)
        if tag == "MPD":
            return parse_dash(root, url)
        if tag == "SmoothStreamingMedia":
            return parse_smooth(root, url)
        raise ManifestError(f"<{tag}> is neither an MPEG-DASH MPD nor a Smooth Streaming "
                            "manifest")
    raise ManifestError("not a manifest: neither #EXTM3U (HLS) nor XML (DASH, Smooth Streaming)")


# --- HLS (RFC 8216) ---

_HLS_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^",]*)')


def hls_attributes(text: str) -> dict[str, str]:
    return {key: value.strip('"') for key, value in _HLS_ATTRIBUTE.findall(text)}


def parse_hls(text: str, url: str) -> Presentation:
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    if any(line.startswith("#EXT-X-STREAM-INF:") for line in lines):
        return _hls_master(lines, url)
    track = parse_hls_media(text, url)
    level = Level(0, "media playlist", playlist_url=url, track=track)
    return Presentation("hls", url, [level], track.malformed)


def _hls_master(lines: list[str], url: str) -> Presentation:
    levels: list[Level] = []
    malformed = 0
    pending: dict[str, str] | None = None
    for line in lines:
        if line.startswith("#EXT-X-STREAM-INF:"):
            malformed += pending is not None  # the previous one had no URI
            pending = hls_attributes(line.partition(":")[2])
        elif line.startswith("#EXTINF"):
            malformed += 1  # media segments in a master playlist
        elif not line or line.startswith("#"):
            continue
        elif pending is None:
            malformed += 1  # a URI that no #EXT-X-STREAM-INF describes
        else:
            level = _hls_variant(pending, urljoin(url, line))
            if level is None:
                malformed += 1
            else:
                levels.append(level)
            pending = None
    malformed += pending is not None
    if not levels:
        raise ManifestError("the master playlist lists no variant with a BANDWIDTH")
    levels.sort(key=lambda level: level.bandwidth)
    return Presentation("hls", url, levels, malformed)


def _hls_variant(attributes: dict[str, str], playlist_url: str) -> Level | None:
    bandwidth = _int(attributes.get("BANDWIDTH"))
    if bandwidth is None or bandwidth <= 0:
        return None  # BANDWIDTH is required: a player cannot rank this variant
    label = attributes.get("RESOLUTION") or playlist_url.rsplit("/", 1)[-1]
    return Level(bandwidth, label, playlist_url=playlist_url)


class _HlsMediaParser:
    """One pass over a media playlist; tolerant like players, counting what it had to forgive."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.target: float | None = None
        self.seq = 0
        self.ended = False
        self.malformed = 0
        self.entries: list[tuple[str, float, tuple[int, int] | None,
                                 tuple[str, tuple[int, int] | None] | None]] = []
        self._duration: float | None = None
        self._range: tuple[int, int] | None = None
        self._range_pending = False
        self._init: tuple[str, tuple[int, int] | None] | None = None
        self._range_end: dict[str, int] = {}

    def feed(self, line: str) -> None:
        if not line:
            return
        if not line.startswith("#"):
            self._uri(line)
            return
        name, _, value = line.partition(":")
        handler = self._HANDLERS.get(name)
        if handler is not None:
            handler(self, value)

    def _target_duration(self, value: str) -> None:
        target = _int(value)
        if target is None or target <= 0:
            self.malformed += 1
        else:
            self.target = float(target)

    def _media_sequence(self, value: str) -> None:
        seq = _int(value)
        if seq is None or seq < 0:
            self.malformed += 1
        else:
            self.seq = seq

    def _extinf(self, value: str) -> None:
        duration = _float(value.partition(",")[0])
        if duration is None or duration < 0:
            self.malformed += 1
            duration = math.nan  # replaced by the target duration: keep the timeline going
        self._duration = duration

    def _byterange(self, value: str) -> None:
        self._range, self._range_pending = _hls_byterange(value), True

    def _map(self, value: str) -> None:
        attributes = hls_attributes(value)
        if "URI" not in attributes:
            self.malformed += 1
            return
        byterange = _hls_byterange(attributes["BYTERANGE"]) if "BYTERANGE" in attributes \
            else None
        self._init = (urljoin(self.url, attributes["URI"]), byterange)

    def _endlist(self, value: str) -> None:
        self.ended = True

    _HANDLERS: dict[str, Callable[["_HlsMediaParser", str], None]] = {
        "#EXT-X-TARGETDURATION": _target_duration,
        "#EXT-X-MEDIA-SEQUENCE": _media_sequence,
        "#EXTINF": _extinf,
        "#EXT-X-BYTERANGE": _byterange,
        "#EXT-X-MAP": _map,
        "#EXT-X-ENDLIST": _endlist,
    }

    def _uri(self, line: str) -> None:
        if self._duration is None:
            self.malformed += 1  # no #EXTINF: a player cannot place it on the timeline
            return
        url = urljoin(self.url, line)
        byterange = self._resolve_range(url) if self._range_pending else None
        self.entries.append((url, self._duration, byterange, self._init))
        self._duration, self._range, self._range_pending = None, None, False

    def _resolve_range(self, url: str) -> tuple[int, int] | None:
        if self._range is None:
            self.malformed += 1
            return None
        length, offset = self._range
        if offset < 0:  # no @offset: it follows the previous sub-range of the same resource
            if url not in self._range_end:
                self.malformed += 1
                return None
            offset = self._range_end[url]
        self._range_end[url] = offset + length
        return (offset, offset + length - 1)

    def finish(self) -> HlsTrack:
        durations = [entry[1] for entry in self.entries if not math.isnan(entry[1])]
        if self.target is None:
            self.malformed += bool(self.entries)  # EXT-X-TARGETDURATION is required
            self.target = float(math.ceil(max(durations, default=0.0))) or 6.0
        # RFC 8216 4.3.3.1: no EXTINF duration, rounded, may exceed the target duration.
        self.malformed += any(round(d) > self.target for d in durations)
        segments, start = [], 0.0
        for index, (url, duration, byterange, init) in enumerate(self.entries):
            duration = self.target if math.isnan(duration) else duration
            segments.append(Segment(url, start, duration, self.seq + index, byterange, init))
            start += duration
        return HlsTrack(segments, self.target, live=not self.ended, malformed=self.malformed)


def _hls_byterange(value: str) -> tuple[int, int] | None:
    """``length[@offset]`` as (length, offset), offset -1 when absent; None if invalid."""
    length_text, _, offset_text = value.strip().strip('"').partition("@")
    length, offset = _int(length_text), _int(offset_text) if offset_text else -1
    if length is None or length <= 0 or offset is None:
        return None
    return (length, offset)


def parse_hls_media(text: str, url: str) -> HlsTrack:
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    if not lines or not lines[0].startswith("#EXTM3U"):
        raise ManifestError("the media playlist does not start with #EXTM3U")
    parser = _HlsMediaParser(url)
    for line in lines[1:]:
        parser.feed(line)
    track = parser.finish()
    if not track.segments and not track.live:
        raise ManifestError("the media playlist lists no segment")
    return track


# --- MPEG-DASH (ISO/IEC 23009-1), static presentations ---

_TEMPLATE = re.compile(r"\$(RepresentationID|Number|Bandwidth|Time|SubNumber)?(?:%0(\d+)d)?\$")
_ISO_DURATION = re.compile(
    r"^P(?:(?P<Y>[\d.]+)Y)?(?:(?P<MO>[\d.]+)M)?(?:(?P<W>[\d.]+)W)?(?:(?P<D>[\d.]+)D)?"
    r"(?:T(?:(?P<H>[\d.]+)H)?(?:(?P<MI>[\d.]+)M)?(?:(?P<S>[\d.]+)S)?)?$")
_ISO_UNITS = {"Y": 365 * 86400, "MO": 30 * 86400, "W": 7 * 86400, "D": 86400, "H": 3600,
              "MI": 60, "S": 1}


def expand_template(template: str, values: Mapping[str, int | str]) -> str:
    """DASH URL template identifiers ($Number$, $Time%05d$ ...); $$ is a literal dollar."""

    def substitute(match: re.Match[str]) -> str:
        name, width = match.group(1), match.group(2)
        if name is None:
            return "$" if width is None else match.group(0)
        if name not in values:
            raise ManifestError(f"${name}$ has no value here")
        value = values[name]
        return str(value).zfill(int(width)) if width else str(value)

    return _TEMPLATE.sub(substitute, template)


def iso_duration(text: str | None) -> float | None:
    """xs:duration in seconds (years and months approximated, as players do)."""
    if text is None:
        return None
    match = _ISO_DURATION.match(text.strip())
    if not match or text.strip() in ("P", "PT"):
        raise ManifestError(f"{text!r} is not an ISO 8601 duration")
    try:
        return sum(float(value) * _ISO_UNITS[unit]
                   for unit, value in match.groupdict().items() if value)
    except ValueError:
        raise ManifestError(f"{text!r} is not an ISO 8601 duration") from None


def parse_dash(root: ET.Element, url: str) -> Presentation:
    if root.get("type", "static") != "static":
        raise ManifestError("live MPEG-DASH (MPD@type=dynamic) is not supported")
    periods = _children(root, "Period")
    if not periods:
        raise ManifestError("the MPD has no Period")
    period = periods[0]  # later periods (ad breaks ...) are not played
    length = _period_length(root, period)
    base = _base_url(_base_url(url, root), period)
    adaptation = _main_adaptation_set(period)
    base = _base_url(base, adaptation)
    levels: list[Level] = []
    malformed, reason = 0, "no Representation"
    for representation in _children(adaptation, "Representation"):
        try:
            levels.append(_dash_level([period, adaptation, representation], base, length))
        except ManifestError as exc:
            malformed, reason = malformed + 1, str(exc)
    if not levels:
        raise ManifestError(f"no playable Representation: {reason}")
    levels.sort(key=lambda level: level.bandwidth)
    return Presentation("dash", url, levels, malformed)


def _period_length(root: ET.Element, period: ET.Element) -> float | None:
    own = iso_duration(period.get("duration"))
    if own is not None:
        return own
    total = iso_duration(root.get("mediaPresentationDuration"))
    return None if total is None else total - (iso_duration(period.get("start")) or 0.0)


def _main_adaptation_set(period: ET.Element) -> ET.Element:
    sets = _children(period, "AdaptationSet")
    if not sets:
        raise ManifestError("the Period has no AdaptationSet")

    def is_video(element: ET.Element) -> bool:
        kinds = [element.get("contentType", ""), element.get("mimeType", "")]
        kinds += [child.get("mimeType", "") for child in _children(element, "Representation")]
        kinds += [child.get("contentType", "") for child in _children(element, "ContentComponent")]
        return any(kind.startswith("video") for kind in kinds)

    # Video is what the viewer judges and what dominates the bitrate; audio is not fetched.
    return next((element for element in sets if is_video(element)), sets[0])


def _dash_level(chain: list[ET.Element], base: str, length: float | None) -> Level:
    representation = chain[-1]
    rep_id = representation.get("id", "")
    bandwidth = _int(representation.get("bandwidth"))
    if bandwidth is None or bandwidth <= 0:
        raise ManifestError(f"Representation {rep_id!r} has no bandwidth")
    base = _base_url(base, representation)
    values = {"RepresentationID": rep_id, "Bandwidth": bandwidth}
    template, template_timeline = _inherited(chain, "SegmentTemplate")
    segment_list, list_timeline = _inherited(chain, "SegmentList")
    if template is not None:
        track = _template_track(template, template_timeline, values, base, length)
    elif segment_list is not None:
        track = _list_track(segment_list, list_timeline, chain, base, length)
    else:
        raise ManifestError(f"Representation {rep_id!r}: only SegmentTemplate and SegmentList "
                            "are supported (not single-file SegmentBase)")
    width, height = representation.get("width"), representation.get("height")
    label = f"{width}x{height}" if width and height else rep_id
    return Level(bandwidth, label, track=track)


def _inherited(chain: list[ET.Element], name: str
               ) -> tuple[dict[str, str] | None, ET.Element | None]:
    """A segment description merged down Period -> AdaptationSet -> Representation."""
    attributes: dict[str, str] | None = None
    timeline = None
    for element in chain:
        for child in _children(element, name)[:1]:
            attributes = {**(attributes or {}), **child.attrib}
            own = _child(child, "SegmentTimeline")
            timeline = own if own is not None else timeline
    return attributes, timeline


def _template_track(attributes: dict[str, str], timeline: ET.Element | None,
                    values: dict[str, int | str], base: str, length: float | None) -> TimedTrack:
    timescale = _required_int(attributes, "timescale", 1)
    offset = _required_int(attributes, "presentationTimeOffset", 0)
    first = _required_int(attributes, "startNumber", 1)
    media = attributes.get("media")
    if not media:
        raise ManifestError("SegmentTemplate without @media")
    starts, end = _segment_times(attributes, timeline, timescale, offset, length, None)

    def url_for(index: int, raw: int) -> tuple[str, None]:
        fields = {**values, "Number": first + index, "Time": raw}
        return urljoin(base, expand_template(media, fields)), None

    init = attributes.get("initialization")
    init_ref = (urljoin(base, expand_template(init, values)), None) if init else None
    return TimedTrack(starts, end, timescale, offset, url_for, init_ref, first)


def _list_track(attributes: dict[str, str], timeline: ET.Element | None,
                chain: list[ET.Element], base: str, length: float | None) -> TimedTrack:
    # SegmentURLs are not inherited: the nearest SegmentList lists them.
    nearest = next(child for element in reversed(chain)
                   for child in _children(element, "SegmentList")[:1])
    urls = [(urljoin(base, item.get("media", "")), _dash_range(item.get("mediaRange")))
            for item in _children(nearest, "SegmentURL")]
    timescale = _required_int(attributes, "timescale", 1)
    offset = _required_int(attributes, "presentationTimeOffset", 0)
    starts, end = _segment_times(attributes, timeline, timescale, offset, length, len(urls))
    if len(starts) > len(urls):
        starts = starts[:len(urls)]  # times beyond the listed URLs have nothing to fetch
    initialization = _child(nearest, "Initialization")
    init = None
    if initialization is not None:
        init = (urljoin(base, initialization.get("sourceURL", "")),
                _dash_range(initialization.get("range")))
    return TimedTrack(starts, end, timescale, offset, lambda index, raw: urls[index], init,
                      _required_int(attributes, "startNumber", 1))


def _segment_times(attributes: dict[str, str], timeline: ET.Element | None, timescale: int,
                   offset: int, length: float | None, count: int | None
                   ) -> tuple[Sequence[int], int]:
    """Segment start times and the end of the last one, in timescale units."""
    period_end = None if length is None else offset + round(length * timescale)
    if timeline is not None:
        return _timeline(timeline, period_end)
    duration = _int(attributes.get("duration"))
    if duration is None or duration <= 0:
        raise ManifestError("segments have neither @duration nor a SegmentTimeline")
    if count is None:
        if period_end is None:
            raise ManifestError("@duration segments need the Period's duration")
        count = math.ceil((period_end - offset) / duration - EPS)
    if count > MAX_SEGMENTS:
        raise ManifestError(f"more than {MAX_SEGMENTS} segments")
    end = offset + count * duration
    if period_end is not None and count:
        end = min(end, max(period_end, offset + (count - 1) * duration + 1))
    return range(offset, offset + count * duration, duration), end


def _timeline(timeline: ET.Element, period_end: int | None) -> tuple[list[int], int]:
    entries = _children(timeline, "S")
    starts: list[int] = []
    now = 0
    for index, entry in enumerate(entries):
        now = _required_int(entry.attrib, "t", now)
        duration = _int(entry.get("d"))
        if duration is None or duration <= 0:
            raise ManifestError("SegmentTimeline S without a positive @d")
        repeat = _required_int(entry.attrib, "r", 0)
        if repeat < 0:  # until the next S@t, or the end of the period
            following = _int(entries[index + 1].get("t")) if index + 1 < len(entries) \
                else period_end
            if following is None:
                raise ManifestError("S@r=-1 with no end to repeat to")
            repeat = math.ceil((following - now) / duration - EPS) - 1
        if len(starts) + repeat + 1 > MAX_SEGMENTS:
            raise ManifestError(f"more than {MAX_SEGMENTS} segments")
        starts.extend(range(now, now + (repeat + 1) * duration, duration))
        now += (repeat + 1) * duration
    return starts, now


def _dash_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    first, _, last = text.partition("-")
    start, stop = _int(first), _int(last)
    if start is None or stop is None or stop < start:
        raise ManifestError(f"byte range {text!r} is not first-last")
    return (start, stop)


def _base_url(parent: str, element: ET.Element) -> str:
    base = _child(element, "BaseURL")
    if base is None or not (base.text or "").strip():
        return parent
    return urljoin(parent, base.text.strip())  # the first one; others are CDN alternatives


# --- Smooth Streaming (MS-SSTR), on demand ---


def parse_smooth(root: ET.Element, url: str) -> Presentation:
    if root.get("IsLive", "").upper() == "TRUE":
        raise ManifestError("live Smooth Streaming is not supported")
    streams = [s for s in _children(root, "StreamIndex") if s.get("Type", "") == "video"]
    if not streams:
        raise ManifestError("the Smooth Streaming manifest has no video StreamIndex")
    stream = streams[0]
    timescale = _required_int(stream.attrib, "TimeScale",
                              _required_int(root.attrib, "TimeScale", 10_000_000))
    pattern = stream.get("Url")
    if not pattern:
        raise ManifestError("StreamIndex without Url")
    starts, end = _smooth_chunks(stream, _required_int(root.attrib, "Duration", 0))
    levels, malformed = [], 0
    for quality in _children(stream, "QualityLevel"):
        bitrate = _int(quality.get("Bitrate"))
        if bitrate is None or bitrate <= 0:
            malformed += 1
            continue
        track = TimedTrack(starts, end, timescale, 0, _smooth_url(url, pattern, bitrate),
                           None, 0)
        label = f"{quality.get('MaxWidth')}x{quality.get('MaxHeight')}" \
            if quality.get("MaxWidth") else str(bitrate)
        levels.append(Level(bitrate, label, track=track))
    if not levels:
        raise ManifestError("no QualityLevel with a Bitrate")
    levels.sort(key=lambda level: level.bandwidth)
    return Presentation("smooth", url, levels, malformed)


def _smooth_chunks(stream: ET.Element, total: int) -> tuple[list[int], int]:
    """Chunk start times; unlike DASH, c@r counts the chunk itself (default 1)."""
    chunks = _children(stream, "c")
    starts: list[int] = []
    now = 0
    for index, chunk in enumerate(chunks):
        now = _required_int(chunk.attrib, "t", now)
        duration = _int(chunk.get("d"))
        if duration is None:
            following = _int(chunks[index + 1].get("t")) if index + 1 < len(chunks) else total
            duration = (following or 0) - now
        if duration <= 0:
            raise ManifestError("a Smooth Streaming chunk has no duration")
        count = _required_int(chunk.attrib, "r", 1)
        starts.extend(range(now, now + count * duration, duration))
        now += count * duration
    return starts, now


def _smooth_url(url: str, pattern: str, bitrate: int
                ) -> Callable[[int, int], tuple[str, None]]:
    def url_for(index: int, raw: int) -> tuple[str, None]:
        path = pattern
        for key, value in (("{bitrate}", bitrate), ("{Bitrate}", bitrate),
                           ("{start time}", raw), ("{start_time}", raw)):
            path = path.replace(key, str(value))
        return urljoin(url, path), None  # relative to the manifest: …/x.ism/Manifest

    return url_for


# --- XML and number helpers ---


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _required_int(attributes: Mapping[str, str], name: str, default: int) -> int:
    if name not in attributes:
        return default
    value = _int(attributes[name])
    if value is None:
        raise ManifestError(f"@{name}={attributes[name]!r} is not an integer")
    return value


# ---------------------------------------------------------------------------------------------
# The viewer's side: a playout buffer in presentation seconds, fed by segment arrivals.


@dataclass
class PlaybackStats:
    startup_delay: float | None = None  # None: playback never started
    stalls: int = 0
    stall_time: float = 0.0
    played: float = 0.0  # media seconds delivered
    delivered: int = 0
    late: int = 0
    failed: int = 0
    bitrate_seconds: float = 0.0  # sum of nominal bit/s x seconds delivered

    @property
    def attempted(self) -> int:
        return self.delivered + self.failed

    def nominal_bps(self) -> float:
        return self.bitrate_seconds / self.played if self.played > 0 else 0.0


class PlaybackModel:
    """A player's buffer, driven by arrival times; the caller supplies the clock.

    Playback starts once ``startup`` seconds are buffered. An empty buffer while more is
    expected is a stall, which ends with the next arrival (the player plays what it has rather
    than rebuffering to a threshold). A segment is late when it arrives after the moment the
    stall-free schedule fixed at startup would have shown it: for a live viewer every late
    segment is a freeze or added delay. Failed segments are skipped, as players jump gaps.
    """

    def __init__(self, startup: float) -> None:
        self._startup = startup
        self._buffer = 0.0
        self._last = 0.0
        self._play_start: float | None = None
        self._stall_since: float | None = None
        self.stats = PlaybackStats()

    @property
    def playing(self) -> bool:
        return self._play_start is not None and self._stall_since is None

    def buffer_at(self, now: float) -> float:
        self._advance(now)
        return self._buffer

    def arrive(self, now: float, duration: float, bandwidth: float) -> None:
        self._advance(now)
        stats = self.stats
        if self._play_start is not None and now > self._play_start + stats.played + EPS:
            stats.late += 1
        if self._stall_since is not None:
            stats.stall_time += now - self._stall_since
            self._stall_since = None
        self._buffer += duration
        stats.played += duration
        stats.delivered += 1
        stats.bitrate_seconds += bandwidth * duration
        if self._play_start is None and self._buffer >= self._startup - EPS:
            self._start(now)

    def skip(self, now: float) -> None:
        self._advance(now)
        self.stats.failed += 1

    def finish(self, now: float) -> PlaybackStats:
        self._advance(now)
        if self._stall_since is not None:  # abandoned while the picture was frozen
            self.stats.stall_time += now - self._stall_since
            self._stall_since = None
        if self._play_start is None and self._buffer > 0:
            self._start(now)  # less content than the startup buffer: it plays anyway
        return self.stats

    def _start(self, now: float) -> None:
        self._play_start = now
        self.stats.startup_delay = now

    def _advance(self, now: float) -> None:
        if self.playing:
            elapsed = now - self._last
            if elapsed > self._buffer + EPS:
                self._stall_since = self._last + self._buffer
                self.stats.stalls += 1
                self._buffer = 0.0
            else:
                self._buffer = max(0.0, self._buffer - elapsed)
        self._last = max(self._last, now)


# ---------------------------------------------------------------------------------------------
# Rate selection: throughput-based with a buffer guard, the core of most players' defaults.


def choose_level(bandwidths: Sequence[int], current: int | None, estimate: float | None,
                 buffer: float, low_mark: float) -> int:
    """Index of the level to fetch next (bandwidths ascending)."""
    if estimate is None or current is None:
        return 0  # nothing measured yet: the lowest level starts fastest and safest
    best = 0
    for index, bandwidth in enumerate(bandwidths):
        if bandwidth <= ABR_SAFETY * estimate:
            best = index
    if buffer < low_mark and best > current:
        best = current  # a thin buffer is no time to fetch bigger segments
    return best


def harmonic_mean(samples: Sequence[float]) -> float | None:
    """Dominated by the slow samples, so one lucky fast segment does not cause an up-switch."""
    positive = [sample for sample in samples if sample > 0]
    return len(positive) / sum(1 / sample for sample in positive) if positive else None


# ---------------------------------------------------------------------------------------------
# Scores (docs/ott-scoring.md).


@dataclass
class ManifestHealth:
    failed_requests: int = 0
    longest_redirects: int = 0
    slowest: float = 0.0  # presentation seconds of the slowest manifest request
    malformed: int = 0

    def copy(self) -> "ManifestHealth":
        return replace(self)


def manifest_score(health: ManifestHealth) -> int:
    penalty = (
        min(MANIFEST_ERROR_CAP, MANIFEST_ERROR_PENALTY * health.failed_requests)
        + min(REDIRECT_CAP, REDIRECT_PENALTY * health.longest_redirects)
        + min(MANIFEST_SLOW_CAP,
              MANIFEST_SLOW_PENALTY_PER_S * max(0.0, health.slowest - MANIFEST_SLOW_S))
        + min(MALFORMED_CAP, MALFORMED_PENALTY * health.malformed)
    )
    return _clamp(100 - penalty)


def content_score(stats: PlaybackStats) -> int:
    if stats.delivered == 0 or stats.startup_delay is None:
        return 0  # the viewer saw nothing
    startup = min(STARTUP_CAP,
                  STARTUP_PENALTY_PER_S * max(0.0, stats.startup_delay - STARTUP_GRACE_S))
    watched = stats.played + stats.stall_time
    rebuffer_pct = 100 * stats.stall_time / watched if watched > 0 else 0.0
    stalls = min(STALL_CAP, STALL_PENALTY * stats.stalls + REBUFFER_PENALTY_PER_PCT * rebuffer_pct)
    late = LATE_WEIGHT * stats.late / stats.delivered
    failed = min(FAILED_CAP, FAILED_PENALTY * stats.failed
                 + FAILED_RATIO_WEIGHT * stats.failed / stats.attempted)
    return _clamp(100 - startup - stalls - late - failed)


def level_score(nominal_bps: float, highest_bps: float) -> int:
    if nominal_bps <= 0 or highest_bps <= 0:
        return 0
    return _clamp(100 * nominal_bps / highest_bps)


def _clamp(value: float) -> int:
    return int(min(100, max(0, math.floor(value + 0.5))))


# ---------------------------------------------------------------------------------------------
# Runs.


class _Session:
    """One tick: one client, the manifest, and what fetching it cost."""

    def __init__(self, settings: Settings, url: str, source: str | None,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.scale = settings.time_scale
        self.client = HttpClient(settings.timeout / self.scale, source, stop)
        self.stop = stop
        self.url = url
        self.health = ManifestHealth()
        self.tally = HttpTally()
        self.manifest_time = 0.0  # presentation seconds

    def fetch_manifest(self, url: str, health: ManifestHealth, tally: HttpTally) -> Fetched:
        """Players retry a failed manifest request once before giving up."""
        fetched = Fetched(url=url)
        for _ in range(ATTEMPTS):
            fetched = self.client.get(url, keep_body=True)
            tally.add(fetched)
            health.longest_redirects = max(health.longest_redirects, fetched.redirects)
            health.slowest = max(health.slowest, fetched.elapsed * self.scale)
            if fetched.ok:
                break
            health.failed_requests += 1
        return fetched

    def open(self) -> Presentation:
        started = time.monotonic()
        fetched = self.fetch_manifest(self.url, self.health, self.tally)
        if not fetched.ok:
            raise _ManifestFailure(f"manifest {self.url}: {fetched.error}", self.tally)
        try:
            presentation = parse_manifest(fetched.body, fetched.url)
        except ManifestError as exc:
            raise _ManifestFailure(f"manifest {fetched.url}: {exc}", self.tally) from None
        self.health.malformed += presentation.malformed
        self.manifest_time = (time.monotonic() - started) * self.scale
        return presentation


class _Playout:
    """Plays one row: a fixed level, or adaptive when ``fixed`` is None."""

    def __init__(self, session: _Session, presentation: Presentation, fixed: int | None) -> None:
        self.session = session
        self.settings = session.settings
        self.presentation = presentation
        self.fixed = fixed
        self.health = session.health.copy()
        self.tally = replace(session.tally)
        self.model = PlaybackModel(min(self.settings.startup_buffer, self.settings.playout))
        self.samples: list[float] = []
        self.current: Level | None = None
        self.init_loaded: tuple[str, tuple[int, int] | None] | None = None
        self._t0 = time.monotonic()
        self._offset = session.manifest_time  # a viewer waits for the manifest too
        self.limit = RUN_LIMIT_PLAYOUTS * self.settings.playout + self.settings.timeout

    def now(self) -> float:
        return self._offset + (time.monotonic() - self._t0) * self.session.scale

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and self.session.stop.wait(seconds / self.session.scale):
            raise _Stopped

    def play(self, started: datetime) -> dict[str, Any]:
        cursor: Cursor | None = None
        covered, last_duration = 0.0, 0.0
        while covered < self.settings.playout - EPS and self.now() < self.limit:
            self._wait_for_room(last_duration)
            level = self._choose()
            if level is None:
                break
            segment = self._next_segment(level, cursor)
            if segment is None:
                if level.unusable:
                    continue  # its playlist failed: choose again among the others
                break
            self._fetch_segment(level, segment)
            cursor, last_duration = segment.after(), segment.duration
            covered += segment.duration
        return self._row(started, self.model.finish(self.now()))

    def _wait_for_room(self, duration: float) -> None:
        # Fetching in step with presentation time: no further ahead than max_buffer_s.
        excess = self.model.buffer_at(self.now()) + duration - self.settings.max_buffer
        if excess > 0 and self.model.playing:
            self.sleep(excess)

    def _choose(self) -> Level | None:
        levels = self.presentation.levels
        if self.fixed is not None:
            level = levels[self.fixed]
            return None if level.unusable else level
        usable = [level for level in levels if not level.unusable]
        if not usable:
            return None
        current = usable.index(self.current) if self.current in usable else None
        estimate = harmonic_mean(self.samples[-ABR_SAMPLES:])
        buffer = self.model.buffer_at(self.now())
        index = choose_level([level.bandwidth for level in usable], current, estimate, buffer,
                             ABR_LOW_BUFFER * self.settings.startup_buffer)
        return usable[index]

    def _next_segment(self, level: Level, cursor: Cursor | None) -> Segment | None:
        while True:
            track = self._track(level)
            if track is None:
                return None
            segment = track.find(cursor or track.start())
            if segment is not None or not track.live:
                return segment
            # A live playlist without the next segment yet: reload it when due (RFC 8216 6.3.4).
            self.sleep(level.reload_at - self.now())
            if self.now() >= self.limit:
                return None
            self._load_playlist(level, reload=True)

    def _track(self, level: Level) -> Track | None:
        if level.track is None and not level.unusable:
            self._load_playlist(level, reload=False)
        return None if level.unusable else level.track

    def _load_playlist(self, level: Level, reload: bool) -> None:
        fetched = self.session.fetch_manifest(level.playlist_url, self.health, self.tally)
        track, error = None, fetched.error
        if fetched.ok:
            try:
                track = parse_hls_media(fetched.body.decode("utf-8", "replace"), fetched.url)
            except ManifestError as exc:
                self.health.malformed += 1
                error = str(exc)
        known = level.track if isinstance(level.track, HlsTrack) else None
        if track is None:
            if known is None:
                level.unusable = error
            else:  # a live reload failed: try again later, never in a busy loop
                level.reload_at = self.now() + known.target / 2
            return
        grew = True
        if reload and known is not None:
            grew = known.merge(track)
        else:
            level.track = track
            self.health.malformed += track.malformed  # counted once, not at every reload
        level.reload_at = self.now() + track.target * (1.0 if grew else 0.5)

    def _fetch_segment(self, level: Level, segment: Segment) -> None:
        self.current = level
        ok = True
        if segment.init is not None and segment.init != self.init_loaded:
            ok = self._get(*segment.init) is not None  # a level switch needs its init segment
            self.init_loaded = segment.init if ok else None
        fetched = self._get(segment.url, segment.byterange) if ok else None
        now = self.now()
        if fetched is None:
            self.model.skip(now)
            return
        seconds = fetched.elapsed * self.session.scale
        if seconds > 0:
            self.samples.append(fetched.size * 8 / seconds)
        bandwidth = level.bandwidth or (fetched.size * 8 / segment.duration
                                        if segment.duration > 0 else 0.0)
        self.model.arrive(now, segment.duration, bandwidth)

    def _get(self, url: str, byterange: tuple[int, int] | None) -> Fetched | None:
        """A segment with one retry, as players do; None when both attempts failed."""
        for _ in range(ATTEMPTS):
            fetched = self.session.client.get(url, byterange=byterange)
            self.tally.add(fetched)
            if fetched.ok:
                return fetched
        return None

    def _row(self, started: datetime, stats: PlaybackStats) -> dict[str, Any]:
        manifest = manifest_score(self.health)
        content = content_score(stats)
        nominal = stats.nominal_bps()
        highest = max(level.bandwidth for level in self.presentation.levels) or nominal
        return {
            "time": started,
            "bandwidth.nominal.kbps": round(nominal / 1000),
            "http.code.max": self.tally.code_max,
            "http.redirectcount.max": self.tally.redirects_max,
            "qos.manifest": manifest,
            "qos.content": content,
            "qos.aggregate": min(manifest, content),
            "qos.level": level_score(nominal, highest),
        }


@contextmanager
def _abort_on_stop(stop: threading.Event, client: HttpClient) -> Iterator[None]:
    """Unblock network waits as soon as stop is set, not only at the next timeout."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(STOP_POLL_S):
            if stop.is_set():
                client.abort()
                return

    watcher = threading.Thread(target=watch, name="ott-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        client.close()


def failure_row(started: datetime, tally: HttpTally) -> dict[str, Any]:
    return {"time": started, "bandwidth.nominal.kbps": 0, "http.code.max": tally.code_max,
            "http.redirectcount.max": tally.redirects_max, "qos.manifest": 0, "qos.content": 0,
            "qos.aggregate": 0, "qos.level": 0}


class OttMeasurement:
    """The ``ott-download`` capability."""

    name = "ott"

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self._options = dict(options or {})
        self._problem: str | None = None
        try:
            self.settings = Settings.from_options(self._options)
        except ValueError as exc:
            self._problem, self.settings = str(exc), Settings()

    def capabilities(self) -> list[CapabilityTemplate]:
        source = self._options.get("source_ip4", OPTIONS["source_ip4"][0])
        return [CapabilityTemplate(label=LABEL,
                                   parameters={"content.url": "*", "source.ip4": source},
                                   results=RESULTS, when=WHEN, registry=REGISTRY_PROBEFORGE)]

    def unavailable(self) -> str | None:
        return self._problem

    def run(self, job: Job) -> Iterator[dict[str, Any]]:
        if self._problem:
            raise MeasurementError(self._problem)
        url = job.parameters.get("content.url", "").strip()
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise MeasurementError(f"content.url: {url!r} is not an http or https URL")
        source = ip_param(job.parameters, "source.ip4", 4) \
            if job.parameters.get("source.ip4") else None
        first = True
        for _tick in job.ticks(default_period=timedelta(seconds=10)):
            started = datetime.now(UTC)
            try:
                yield from self._tick(url, source, job.stop)
            except _Stopped:
                return
            except _ManifestFailure as exc:
                if first:
                    raise  # the specification itself is wrong: tell the client why
                yield failure_row(started, exc.tally)  # an outage: keep measuring
            first = False

    def _tick(self, url: str, source: str | None,
              stop: threading.Event) -> Iterator[dict[str, Any]]:
        session = _Session(self.settings, url, source, stop)
        started = datetime.now(UTC)  # the first row's time: when its viewer pressed play
        with _abort_on_stop(stop, session.client):
            presentation = session.open()
            for fixed in self._plans(len(presentation.levels)):
                row = _Playout(session, presentation, fixed).play(started)
                started = datetime.now(UTC)
                if stop.is_set():
                    raise _Stopped
                yield row

    def _plans(self, count: int) -> list[int | None]:
        policy = self.settings.policy
        if policy == "adaptive":
            return [None]
        if policy == "all":
            return list(range(count))
        if policy == "lowest":
            return [0]
        if policy == "highest":
            return [count - 1]
        # level:N beyond the ladder plays the top level; qos.level shows what was reached.
        return [min(self.settings.fixed_level or 0, count - 1)]
