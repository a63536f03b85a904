# SPDX-License-Identifier: Apache-2.0
"""Scores (docs/ott-scoring.md)."""

import math
from dataclasses import dataclass, replace

from probe_daemon.measurements.ott.constants import (
    FAILED_CAP,
    FAILED_PENALTY,
    FAILED_RATIO_WEIGHT,
    LATE_WEIGHT,
    MALFORMED_CAP,
    MALFORMED_PENALTY,
    MANIFEST_ERROR_CAP,
    MANIFEST_ERROR_PENALTY,
    MANIFEST_SLOW_CAP,
    MANIFEST_SLOW_PENALTY_PER_S,
    MANIFEST_SLOW_S,
    REBUFFER_PENALTY_PER_PCT,
    REDIRECT_CAP,
    REDIRECT_PENALTY,
    STALL_CAP,
    STALL_PENALTY,
    STARTUP_CAP,
    STARTUP_GRACE_S,
    STARTUP_PENALTY_PER_S,
)
from probe_daemon.measurements.ott.player import PlaybackStats


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
