# SPDX-License-Identifier: Apache-2.0
"""What a manifest describes: levels (variants, representations, quality levels), each a track
of segments. HLS tracks are addressed by media sequence number, DASH and Smooth Streaming
ones by presentation time, which is how players keep variants aligned when they switch."""

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from probe_daemon.measurements.ott.constants import EPS, LIVE_EDGE_TARGETS


class ManifestError(ValueError):
    """A manifest that cannot be used as it is; the text says what is wrong."""


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
