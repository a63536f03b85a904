# SPDX-License-Identifier: Apache-2.0
"""The ``[ott]`` options of probe.conf and the settings a run uses."""

import re
from dataclasses import dataclass

from probe_daemon.measurements.base import Options

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
    def from_options(cls, read: Options) -> "Settings":
        """The settings of the ``[ott]`` section; ValueError naming an option that will not do."""
        policy, fixed = _parse_policy(read)
        settings = cls(policy=policy, fixed_level=fixed,
                       playout=read.number("playout_s", above=0.0),
                       startup_buffer=read.number("startup_buffer_s", minimum=0.0),
                       max_buffer=read.number("max_buffer_s", above=0.0),
                       timeout=read.number("timeout_s", above=0.0),
                       time_scale=read.number("time_scale", above=0.0))
        if settings.max_buffer < settings.startup_buffer:
            raise read.error("max_buffer_s", read.text("max_buffer_s"),
                             f"as large as startup_buffer_s ({settings.startup_buffer:g}); "
                             "below it the player would never start")
        return settings


def _parse_policy(read: Options) -> tuple[str, int | None]:
    text = read.text("variant_policy")
    if text in POLICIES:
        return text, None
    match = re.fullmatch(r"level:(\d+)", text)
    if match:
        return "level", int(match.group(1))
    raise read.error("variant_policy", text, "adaptive, lowest, highest, level:N or all")
