# SPDX-License-Identifier: Apache-2.0
"""Exponential backoff with jitter, so a fleet of probes does not reconnect in lockstep."""

import random


class Backoff:
    def __init__(self, first: float, limit: float, rng: random.Random | None = None) -> None:
        self.first = first
        self.limit = limit
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.limit, self.first * 2 ** min(self.failures, 30))
        self.failures += 1
        # "Equal jitter": never less than half the ceiling, so the wait still grows.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0
