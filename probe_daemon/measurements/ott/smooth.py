# SPDX-License-Identifier: Apache-2.0
"""Smooth Streaming (MS-SSTR), on demand."""

import xml.etree.ElementTree as ET
from collections.abc import Callable
from urllib.parse import urljoin

from probe_daemon.measurements.ott.media import Level, ManifestError, Presentation, TimedTrack
from probe_daemon.measurements.ott.parsing import children_named, required_int, to_int


def parse_smooth(root: ET.Element, url: str) -> Presentation:
    if root.get("IsLive", "").upper() == "TRUE":
        raise ManifestError("live Smooth Streaming is not supported")
    streams = [s for s in children_named(root, "StreamIndex") if s.get("Type", "") == "video"]
    if not streams:
        raise ManifestError("the Smooth Streaming manifest has no video StreamIndex")
    stream = streams[0]
    timescale = required_int(stream.attrib, "TimeScale",
                             required_int(root.attrib, "TimeScale", 10_000_000))
    pattern = stream.get("Url")
    if not pattern:
        raise ManifestError("StreamIndex without Url")
    starts, end = _smooth_chunks(stream, required_int(root.attrib, "Duration", 0))
    levels, malformed = [], 0
    for quality in children_named(stream, "QualityLevel"):
        bitrate = to_int(quality.get("Bitrate"))
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
    chunks = children_named(stream, "c")
    starts: list[int] = []
    now = 0
    for index, chunk in enumerate(chunks):
        now = required_int(chunk.attrib, "t", now)
        duration = to_int(chunk.get("d"))
        if duration is None:
            following = to_int(chunks[index + 1].get("t")) if index + 1 < len(chunks) else total
            duration = (following or 0) - now
        if duration <= 0:
            raise ManifestError("a Smooth Streaming chunk has no duration")
        count = required_int(chunk.attrib, "r", 1)
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
