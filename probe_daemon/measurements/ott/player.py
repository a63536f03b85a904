# SPDX-License-Identifier: Apache-2.0
"""The viewer's side: a playout buffer in presentation seconds, fed by segment arrivals, and
the rate selection that decides which level to fetch next."""

from collections.abc import Sequence
from dataclasses import dataclass

from probe_daemon.measurements.ott.constants import ABR_SAFETY, EPS


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
