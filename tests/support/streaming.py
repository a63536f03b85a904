# SPDX-License-Identifier: Apache-2.0
"""Streaming content made up for tests, served on 127.0.0.1 with switchable impairments.

The content is a 3-level ladder (400k, 1200k, 3000k) of 2 s segments whose sizes match their
nominal bitrates, described as HLS (master + media playlists, byte ranges, a live stream),
MPEG-DASH (SegmentTemplate with $Number$, with SegmentTimeline and $Time$, SegmentList) and
Smooth Streaming. Nothing in it decodes: the measurement never looks inside segments.

Impairments (``Behaviour``) are keyed by regular expressions on the request path: a token-bucket
rate limit for everything, delays, error statuses, failures before or after some requests,
redirect chains and replaced bodies. A redirect chain of n for path P answers ``/r{n-1}P`` …
``/r0P``; ``/r0P`` serves P, so whatever a client resolves relative to the final URL shows up
under ``/r0``.
"""

import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

LEVELS = (400_000, 1_200_000, 3_000_000)
SEGMENT_S = 2
SEGMENTS = 5
LIVE_HISTORY_S = 12  # seconds of live stream already published when a test starts
LIVE_WINDOW = 6  # segments listed in a live playlist
WRITE_CHUNK = 16 * 1024
MPD_NS = "urn:mpeg:dash:schema:mpd:2011"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def segment_bytes(bandwidth: int, seconds: float = SEGMENT_S) -> int:
    return int(bandwidth * seconds / 8)


def _payloads(levels: tuple[int, ...]) -> dict[int, bytes]:
    # One shared buffer per level keeps ~1 MB per level in memory however many files use it.
    return {bw: b"\x47" * segment_bytes(bw) for bw in levels}


# --- HLS ---


def hls_master(levels: tuple[int, ...], prefix: str = "v") -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3"]
    for bw in levels:
        height = {400_000: 360, 1_200_000: 540, 3_000_000: 1080}.get(bw, 720)
        lines += [f'#EXT-X-STREAM-INF:BANDWIDTH={bw},RESOLUTION={height * 16 // 9}x{height},'
                  f'CODECS="avc1.64001f,mp4a.40.2"', f"{prefix}{bw}/index.m3u8"]
    return "\n".join(lines) + "\n"


def hls_media(segments: int = SEGMENTS, *, first: int = 0, ended: bool = True,
              name: str = "seg{n}.ts") -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{SEGMENT_S}",
             f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    for n in range(first, first + segments):
        lines += [f"#EXTINF:{SEGMENT_S:.3f},", name.format(n=n)]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def hls_byterange_media(bandwidth: int, segments: int = SEGMENTS) -> str:
    size = segment_bytes(bandwidth)
    lines = ["#EXTM3U", "#EXT-X-VERSION:4", f"#EXT-X-TARGETDURATION:{SEGMENT_S}"]
    for n in range(segments):
        # The first range names its offset, the others follow on, as the RFC allows.
        lines += [f"#EXTINF:{SEGMENT_S:.3f},",
                  f"#EXT-X-BYTERANGE:{size}@0" if n == 0 else f"#EXT-X-BYTERANGE:{size}",
                  "all.ts"]
    return "\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n"


def hls_malformed_master(levels: tuple[int, ...]) -> str:
    # A variant without BANDWIDTH (required): players cannot rank it.
    return hls_master(levels) + "#EXT-X-STREAM-INF:RESOLUTION=320x180\nnobw/index.m3u8\n"


def hls_malformed_media() -> str:
    text = hls_media()
    # An unparsable duration, and a URI with no #EXTINF in front of it.
    return text.replace(f"#EXTINF:{SEGMENT_S:.3f},\nseg1.ts", "#EXTINF:two,\nseg1.ts") \
        .replace("#EXT-X-ENDLIST", "stray.ts\n#EXT-X-ENDLIST")


# --- MPEG-DASH ---


def _representations(levels: tuple[int, ...], inner: str = "") -> str:
    return "".join(f'<Representation id="v{bw}" bandwidth="{bw}" width="1280" height="720">'
                   f"{inner.format(bw=bw)}</Representation>" for bw in levels)


def dash_number_mpd(levels: tuple[int, ...]) -> str:
    total = SEGMENT_S * SEGMENTS
    # An audio set first: the player must pick the video one, whatever the order.
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<MPD xmlns="{MPD_NS}" type="static" '
            f'mediaPresentationDuration="PT{total}S" minBufferTime="PT2S">'
            '<Period id="p0">'
            '<AdaptationSet contentType="audio" mimeType="audio/mp4">'
            '<SegmentTemplate timescale="1000" duration="2000" media="audio/a-$Number$.m4s"/>'
            '<Representation id="a" bandwidth="128000"/></AdaptationSet>'
            '<AdaptationSet contentType="video" mimeType="video/mp4">'
            '<SegmentTemplate timescale="1000" duration="2000" startNumber="1" '
            'initialization="$RepresentationID$/init.mp4" '
            'media="$RepresentationID$/seg-$Number%03d$.m4s"/>'
            f"{_representations(levels)}</AdaptationSet></Period></MPD>\n")


def dash_timeline_mpd(levels: tuple[int, ...]) -> str:
    tick = 90_000 * SEGMENT_S
    # BaseURLs at MPD and Representation level, one S with @r and one relying on the
    # running time (no @t): resolution and timeline rules both matter here.
    inner = ('<BaseURL>v{bw}/</BaseURL>'
             '<SegmentTemplate timescale="90000" initialization="init.mp4" media="t$Time$.m4s">'
             f'<SegmentTimeline><S t="0" d="{tick}" r="{SEGMENTS - 2}"/><S d="{tick}"/>'
             '</SegmentTimeline></SegmentTemplate>')
    return (f'<?xml version="1.0"?>\n<MPD xmlns="{MPD_NS}" type="static" '
            f'mediaPresentationDuration="PT{SEGMENT_S * SEGMENTS}S"><BaseURL>content/</BaseURL>'
            f'<Period duration="PT{SEGMENT_S * SEGMENTS}S"><AdaptationSet mimeType="video/mp4">'
            f"{_representations(levels, inner)}</AdaptationSet></Period></MPD>\n")


def dash_list_mpd(levels: tuple[int, ...]) -> str:
    urls = "".join(f'<SegmentURL media="s{n}.m4s"/>' for n in range(SEGMENTS))
    inner = ('<BaseURL>list/v{bw}/</BaseURL>'
             f'<SegmentList timescale="1" duration="{SEGMENT_S}">'
             f'<Initialization sourceURL="init.mp4"/>{urls}</SegmentList>')
    return (f'<MPD xmlns="{MPD_NS}" mediaPresentationDuration="PT{SEGMENT_S * SEGMENTS}S">'
            f'<Period><AdaptationSet mimeType="video/mp4">{_representations(levels, inner)}'
            "</AdaptationSet></Period></MPD>\n")


# --- Smooth Streaming ---


def smooth_manifest(levels: tuple[int, ...]) -> str:
    tick = 10_000_000 * SEGMENT_S
    qualities = "".join(f'<QualityLevel Index="{i}" Bitrate="{bw}" FourCC="H264" '
                        f'MaxWidth="1280" MaxHeight="720"/>' for i, bw in enumerate(levels))
    return ('<?xml version="1.0" encoding="utf-8"?>\n<SmoothStreamingMedia MajorVersion="2" '
            f'MinorVersion="0" Duration="{tick * SEGMENTS}">'
            f'<StreamIndex Type="video" Chunks="{SEGMENTS}" QualityLevels="{len(levels)}" '
            'Url="QualityLevels({bitrate})/Fragments(video={start time})">'
            f'{qualities}<c t="0" d="{tick}" r="{SEGMENTS}"/></StreamIndex>'
            "</SmoothStreamingMedia>\n")


def build_library(levels: tuple[int, ...] = LEVELS) -> dict[str, Asset]:
    """Every static file the tests serve, by path."""
    m3u8, mpd, ts, mp4 = ("application/vnd.apple.mpegurl", "application/dash+xml",
                          "video/mp2t", "video/mp4")
    payload = _payloads(levels)
    library: dict[str, Asset] = {
        "/hls/master.m3u8": Asset(hls_master(levels).encode(), m3u8),
        "/bad/master.m3u8": Asset(hls_malformed_master(levels).encode(), m3u8),
        "/bad/page.html": Asset(b"Sorry, this video is not available.\n", "text/html"),
        "/bad/other.xml": Asset(b"<html><body>gone</body></html>", "text/xml"),
        "/br/master.m3u8": Asset(hls_master(levels).encode(), m3u8),
        "/live/master.m3u8": Asset(hls_master(levels).encode(), m3u8),
        "/dash/number.mpd": Asset(dash_number_mpd(levels).encode(), mpd),
        "/dash/timeline.mpd": Asset(dash_timeline_mpd(levels).encode(), mpd),
        "/dash/list.mpd": Asset(dash_list_mpd(levels).encode(), mpd),
        "/ss/video.ism/Manifest": Asset(smooth_manifest(levels).encode(), "text/xml"),
    }
    for n in range(1, SEGMENTS + 1):
        library[f"/dash/audio/a-{n}.m4s"] = Asset(b"\0" * 32_000, mp4)
    for bw in levels:
        body = payload[bw]
        library[f"/hls/v{bw}/index.m3u8"] = Asset(hls_media().encode(), m3u8)
        library[f"/bad/v{bw}/index.m3u8"] = Asset(hls_malformed_media().encode(), m3u8)
        library[f"/br/v{bw}/index.m3u8"] = Asset(hls_byterange_media(bw).encode(), m3u8)
        library[f"/br/v{bw}/all.ts"] = Asset(body * SEGMENTS, ts)
        for base in ("/dash", "/dash/content", "/dash/list"):
            library[f"{base}/v{bw}/init.mp4"] = Asset(b"\0" * 800, mp4)
        for n in range(SEGMENTS):
            library[f"/hls/v{bw}/seg{n}.ts"] = Asset(body, ts)
            library[f"/bad/v{bw}/seg{n}.ts"] = Asset(body, ts)
            library[f"/dash/v{bw}/seg-{n + 1:03d}.m4s"] = Asset(body, mp4)
            library[f"/dash/content/v{bw}/t{n * 90_000 * SEGMENT_S}.m4s"] = Asset(body, mp4)
            library[f"/dash/list/v{bw}/s{n}.m4s"] = Asset(body, mp4)
            start = n * 10_000_000 * SEGMENT_S
            library[f"/ss/video.ism/QualityLevels({bw})/Fragments(video={start})"] = \
                Asset(body, mp4)
    return library


# --- Serving ---


@dataclass
class Behaviour:
    rate_bps: float | None = None  # token bucket for every response body, in wall bit/s
    delay: dict[str, float] = field(default_factory=dict)  # seconds before answering
    status: dict[str, int] = field(default_factory=dict)  # answered instead of the content
    fail_first: dict[str, int] = field(default_factory=dict)  # 500s before a path works
    fail_after: dict[str, int] = field(default_factory=dict)  # answers before a path 503s
    redirects: dict[str, int] = field(default_factory=dict)  # redirect chain length
    body: dict[str, bytes] = field(default_factory=dict)  # replaced content


class TokenBucket:
    """A shared link rate: every writer waits for its bytes' turn (small bursts allowed)."""

    def __init__(self, rate_bps: float, burst: int = WRITE_CHUNK) -> None:
        self.rate = rate_bps / 8
        self.burst = burst / self.rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now - self.burst) + size / self.rate
            wait = self._next - now
        if wait > 0:
            time.sleep(wait)


@dataclass(frozen=True)
class Request:
    path: str
    status: int


def _rule(rules: Mapping[str, Any], path: str) -> Any:
    for pattern, value in rules.items():
        if re.search(pattern, path):
            return value
    return None


class StreamingServer:
    """Threaded HTTP/1.1 (keep-alive) server on 127.0.0.1; ``with`` starts and stops it."""

    def __init__(self, library: Mapping[str, Asset] | None = None, live_scale: float = 1.0,
                 levels: tuple[int, ...] = LEVELS, tls: ssl.SSLContext | None = None) -> None:
        self.library = dict(library if library is not None else build_library(levels))
        self.levels = levels
        self.live_scale = live_scale
        self.behaviour = Behaviour()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._bucket: TokenBucket | None = None
        self._live_origin = time.monotonic()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.scheme = "https" if tls else "http"
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StreamingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def set(self, behaviour: Behaviour | None = None) -> None:
        """New impairments; forgets earlier requests and restarts the live stream's clock."""
        with self._lock:
            self.behaviour = behaviour or Behaviour()
            self.requests = []
            self._failures = {}
            rate = self.behaviour.rate_bps
            self._bucket = TokenBucket(rate) if rate else None
            self._live_origin = time.monotonic()

    def paths(self, pattern: str = "") -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if re.search(pattern, r.path)]

    def statuses(self, pattern: str = "") -> list[int]:
        with self._lock:
            return [r.status for r in self.requests if re.search(pattern, r.path)]

    # --- request handling ---

    def handle(self, handler: "_Handler") -> None:
        raw = urlsplit(handler.path).path
        behaviour = self.behaviour
        hop = re.match(r"^/r(\d+)(/.*)$", raw)
        path = raw
        if hop:
            if int(hop[1]) > 0:
                self._send(handler, raw, 302, b"", "text/plain",
                           {"Location": f"/r{int(hop[1]) - 1}{hop[2]}"})  # relative hop
                return
            path = hop[2]
        elif (chain := _rule(behaviour.redirects, path)) is not None:
            self._send(handler, raw, 302, b"", "text/plain",
                       {"Location": self.url(f"/r{chain - 1}{path}")})  # absolute first hop
            return
        delay = _rule(behaviour.delay, path)
        if delay:
            time.sleep(delay)
        status = _rule(behaviour.status, path) or self._transient(path)
        if status:
            self._send(handler, raw, status, f"error {status}\n".encode(), "text/plain")
            return
        self._serve(handler, raw, path)

    def _transient(self, path: str) -> int | None:
        first = _rule(self.behaviour.fail_first, path)
        after = _rule(self.behaviour.fail_after, path)
        if first is None and after is None:
            return None
        with self._lock:
            count = self._failures.get(path, 0)
            self._failures[path] = count + 1
        if first is not None and count < first:
            return 500
        return 503 if after is not None and count >= after else None

    def _serve(self, handler: "_Handler", raw: str, path: str) -> None:
        replaced = _rule(self.behaviour.body, path)
        asset = Asset(replaced, "text/plain") if replaced is not None \
            else self.library.get(path) or self._live(path)
        if asset is None:
            self._send(handler, raw, 404, b"not found\n", "text/plain")
            return
        body, status, headers = asset.body, 200, {}
        wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", handler.headers.get("Range", ""))
        if wanted:
            first, last = int(wanted[1]), min(int(wanted[2]), len(body) - 1)
            body, status = body[first:last + 1], 206
            headers["Content-Range"] = f"bytes {first}-{last}/{len(asset.body)}"
        self._send(handler, raw, status, body, asset.content_type, headers)

    def _live(self, path: str) -> Asset | None:
        published = int(((time.monotonic() - self._live_origin) * self.live_scale
                         + LIVE_HISTORY_S) // SEGMENT_S)
        playlist = re.fullmatch(r"/live/v(\d+)/index\.m3u8", path)
        if playlist and int(playlist[1]) in self.levels:
            first = max(0, published - LIVE_WINDOW)
            text = hls_media(published - first, first=first, ended=False)
            return Asset(text.encode(), "application/vnd.apple.mpegurl")
        segment = re.fullmatch(r"/live/v(\d+)/seg(\d+)\.ts", path)
        if segment and int(segment[1]) in self.levels and int(segment[2]) < published:
            return Asset(b"\x47" * segment_bytes(int(segment[1])), "video/mp2t")
        return None

    def _send(self, handler: "_Handler", raw: str, status: int, body: bytes, content_type: str,
              headers: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self.requests.append(Request(raw, status))
            bucket = self._bucket
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            view = memoryview(body)
            for offset in range(0, len(body), WRITE_CHUNK):
                chunk = view[offset:offset + WRITE_CHUNK]
                if bucket is not None:
                    bucket.take(len(chunk))
                handler.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client gave up: nothing more to say


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as CDNs and players use it

    def do_GET(self) -> None:
        self.server.owner.handle(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read StreamingServer.requests instead
