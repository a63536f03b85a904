# SPDX-License-Identifier: Apache-2.0
"""MPEG-DASH (ISO/IEC 23009-1), static presentations."""

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from urllib.parse import urljoin

from probe_daemon.measurements.ott.constants import EPS
from probe_daemon.measurements.ott.media import Level, ManifestError, Presentation, TimedTrack
from probe_daemon.measurements.ott.parsing import children_named, first_child, required_int, to_int

MAX_SEGMENTS = 100_000  # per track: what a manifest may make the probe hold in memory

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
    periods = children_named(root, "Period")
    if not periods:
        raise ManifestError("the MPD has no Period")
    period = periods[0]  # later periods (ad breaks ...) are not played
    length = _period_length(root, period)
    base = _base_url(_base_url(url, root), period)
    adaptation = _main_adaptation_set(period)
    base = _base_url(base, adaptation)
    levels: list[Level] = []
    malformed, reason = 0, "no Representation"
    for representation in children_named(adaptation, "Representation"):
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
    sets = children_named(period, "AdaptationSet")
    if not sets:
        raise ManifestError("the Period has no AdaptationSet")

    def is_video(element: ET.Element) -> bool:
        kinds = [element.get("contentType", ""), element.get("mimeType", "")]
        kinds += [child.get("mimeType", "")
                  for child in children_named(element, "Representation")]
        kinds += [child.get("contentType", "")
                  for child in children_named(element, "ContentComponent")]
        return any(kind.startswith("video") for kind in kinds)

    # Video is what the viewer judges and what dominates the bitrate; audio is not fetched.
    return next((element for element in sets if is_video(element)), sets[0])


def _dash_level(chain: list[ET.Element], base: str, length: float | None) -> Level:
    representation = chain[-1]
    rep_id = representation.get("id", "")
    bandwidth = to_int(representation.get("bandwidth"))
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
        for child in children_named(element, name)[:1]:
            attributes = {**(attributes or {}), **child.attrib}
            own = first_child(child, "SegmentTimeline")
            timeline = own if own is not None else timeline
    return attributes, timeline


def _template_track(attributes: dict[str, str], timeline: ET.Element | None,
                    values: dict[str, int | str], base: str, length: float | None) -> TimedTrack:
    timescale = required_int(attributes, "timescale", 1)
    offset = required_int(attributes, "presentationTimeOffset", 0)
    first = required_int(attributes, "startNumber", 1)
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
                   for child in children_named(element, "SegmentList")[:1])
    urls = [(urljoin(base, item.get("media", "")), _dash_range(item.get("mediaRange")))
            for item in children_named(nearest, "SegmentURL")]
    timescale = required_int(attributes, "timescale", 1)
    offset = required_int(attributes, "presentationTimeOffset", 0)
    starts, end = _segment_times(attributes, timeline, timescale, offset, length, len(urls))
    if len(starts) > len(urls):
        starts = starts[:len(urls)]  # times beyond the listed URLs have nothing to fetch
    initialization = first_child(nearest, "Initialization")
    init = None
    if initialization is not None:
        init = (urljoin(base, initialization.get("sourceURL", "")),
                _dash_range(initialization.get("range")))
    return TimedTrack(starts, end, timescale, offset, lambda index, raw: urls[index], init,
                      required_int(attributes, "startNumber", 1))


def _segment_times(attributes: dict[str, str], timeline: ET.Element | None, timescale: int,
                   offset: int, length: float | None, count: int | None
                   ) -> tuple[Sequence[int], int]:
    """Segment start times and the end of the last one, in timescale units."""
    period_end = None if length is None else offset + round(length * timescale)
    if timeline is not None:
        return _timeline(timeline, period_end)
    duration = to_int(attributes.get("duration"))
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
    entries = children_named(timeline, "S")
    starts: list[int] = []
    now = 0
    for index, entry in enumerate(entries):
        now = required_int(entry.attrib, "t", now)
        duration = to_int(entry.get("d"))
        if duration is None or duration <= 0:
            raise ManifestError("SegmentTimeline S without a positive @d")
        repeat = required_int(entry.attrib, "r", 0)
        if repeat < 0:  # until the next S@t, or the end of the period
            following = to_int(entries[index + 1].get("t")) if index + 1 < len(entries) \
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
    start, stop = to_int(first), to_int(last)
    if start is None or stop is None or stop < start:
        raise ManifestError(f"byte range {text!r} is not first-last")
    return (start, stop)


def _base_url(parent: str, element: ET.Element) -> str:
    base = first_child(element, "BaseURL")
    if base is None or not (base.text or "").strip():
        return parent
    return urljoin(parent, base.text.strip())  # the first one; others are CDN alternatives
