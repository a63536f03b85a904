# SPDX-License-Identifier: Apache-2.0
"""HLS (RFC 8216): master and media playlists."""

import math
import re
from collections.abc import Callable
from urllib.parse import urljoin

from probe_daemon.measurements.ott.media import (
    HlsTrack,
    Level,
    ManifestError,
    Presentation,
    Segment,
)
from probe_daemon.measurements.ott.parsing import to_float, to_int

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
    bandwidth = to_int(attributes.get("BANDWIDTH"))
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
        target = to_int(value)
        if target is None or target <= 0:
            self.malformed += 1
        else:
            self.target = float(target)

    def _media_sequence(self, value: str) -> None:
        seq = to_int(value)
        if seq is None or seq < 0:
            self.malformed += 1
        else:
            self.seq = seq

    def _extinf(self, value: str) -> None:
        duration = to_float(value.partition(",")[0])
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
    length, offset = to_int(length_text), to_int(offset_text) if offset_text else -1
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
