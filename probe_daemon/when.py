# SPDX-License-Identifier: Apache-2.0
"""mPlane temporal scopes ("when"), as the reference implementation writes them.

Supported: ``now``, ``now + 30s``, absolute times (``2026-11-21 23:36:58.708490``),
``A ... B`` ranges, ``now ... future`` (open-ended, ends on interrupt) and a ``/ period``
suffix. Durations are ``1d2h3m4s`` style. Times are UTC.
"""

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

RANGE_SEP = " ... "
DURATION_SEP = " + "
PERIOD_SEP = " / "
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}(?: \d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?$")
# Capabilities are open-ended by nature; a measurement itself is bounded unless interrupted.
MAX_FUTURE = timedelta(days=366)


class WhenError(ValueError):
    """A temporal scope that cannot be parsed or is outside what a capability allows."""


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not text.strip() or not match:
        raise WhenError(f"{text!r} is not an mPlane duration (e.g. 30s, 5m, 1h30m)")
    d, h, m, s = (int(g) if g else 0 for g in match.groups())
    try:
        return timedelta(days=d, hours=h, minutes=m, seconds=s)
    except OverflowError:
        raise WhenError(f"{text!r} is longer than any date can express") from None


def parse_time(text: str) -> datetime:
    text = text.strip()
    if not _TIME.match(text):
        raise WhenError(f"{text!r} is not an mPlane time (YYYY-MM-DD HH:MM:SS[.ffffff])")
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise WhenError(f"{text!r} is not a valid date")


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass(frozen=True)
class When:
    """A parsed scope. ``start``/``end`` None mean "now"/"future"; duration is from start."""

    start: datetime | None = None
    end: datetime | None = None
    duration: timedelta | None = None
    period: timedelta | None = None
    open_ended: bool = False
    text: str = "now"

    @classmethod
    def parse(cls, text: str) -> "When":
        if not isinstance(text, str) or not text.strip():
            raise WhenError("empty temporal scope")
        body, period = text.strip(), None
        if PERIOD_SEP in body:
            body, period_text = body.split(PERIOD_SEP, 1)
            period = parse_duration(period_text)
            if period <= timedelta(0):
                raise WhenError(f"period in {text!r} must be positive")
        start = end = duration = None
        open_ended = False
        if RANGE_SEP in body:
            first, last = (part.strip() for part in body.split(RANGE_SEP, 1))
            start = None if first == "now" else parse_time(first)
            if last == "future":
                open_ended = True
            else:
                end = parse_time(last)
        elif DURATION_SEP in body:
            first, dur = (part.strip() for part in body.split(DURATION_SEP, 1))
            start = None if first == "now" else parse_time(first)
            duration = parse_duration(dur)
        elif body != "now":
            start = parse_time(body)
        when = cls(start=start, end=end, duration=duration, period=period,
                   open_ended=open_ended, text=text.strip())
        if start is not None and end is not None and end < start:
            raise WhenError(f"{text!r} ends before it starts")
        return when

    def bounds(self, now: datetime) -> tuple[datetime, datetime | None]:
        """Absolute start and end for a specification received at ``now``."""
        start = max(self.start or now, now)
        if self.open_ended:
            return start, None
        if self.end is not None:
            return start, self.end
        if self.duration is not None:
            # The duration counts from the stated start, even if that is already past.
            return start, max(start, (self.start or start) + self.duration)
        return start, start

    def ended(self, now: datetime) -> bool:
        """Whether the scope's stated end (an end time, or start time + duration) is past."""
        end = self.end
        if end is None and self.start is not None and self.duration is not None:
            if self.duration > datetime.max.replace(tzinfo=UTC) - self.start:
                return False  # ends after any date
            end = self.start + self.duration
        return end is not None and end < now

    def ticks(self, now: datetime, stop: threading.Event,
              default_period: timedelta = timedelta(seconds=1)) -> Iterator[datetime]:
        """Yield at start and every period until the end, or until ``stop`` is set.

        A singleton scope (no duration, no period) yields once.
        """
        start, end = self.bounds(now)
        period = self.period or default_period
        if end == start and self.period is None:
            if not _sleep_until(start, stop):
                yield start
            return
        tick = start
        while end is None or tick < end or (tick == start):
            if _sleep_until(tick, stop):
                return
            yield tick
            tick += period
            if end is not None and tick >= end:
                return


def _sleep_until(when: datetime, stop: threading.Event) -> bool:
    """Wait until ``when``; True if stopped first."""
    delay = (when - datetime.now(UTC)).total_seconds()
    if delay > 0:
        return stop.wait(delay)
    return stop.is_set()


def within(capability: When, spec: When) -> bool:
    """Whether a specification's scope is one the capability offers (period not shorter)."""
    if spec.period is not None and capability.period is not None \
            and spec.period < capability.period:
        return False
    return not (spec.open_ended and not capability.open_ended)
