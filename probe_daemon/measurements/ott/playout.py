# SPDX-License-Identifier: Apache-2.0
"""Runs: one tick's session (client and manifest) and the playouts that make its rows."""

import threading
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from probe_daemon.measurements.base import MeasurementError
from probe_daemon.measurements.ott.constants import (
    ABR_LOW_BUFFER,
    ABR_SAMPLES,
    ATTEMPTS,
    EPS,
    RUN_LIMIT_PLAYOUTS,
)
from probe_daemon.measurements.ott.fetch import Fetched, HttpClient, HttpTally, Stopped
from probe_daemon.measurements.ott.hls import parse_hls_media
from probe_daemon.measurements.ott.manifests import parse_manifest
from probe_daemon.measurements.ott.media import (
    Cursor,
    HlsTrack,
    Level,
    ManifestError,
    Presentation,
    Segment,
    Track,
)
from probe_daemon.measurements.ott.player import (
    PlaybackModel,
    PlaybackStats,
    choose_level,
    harmonic_mean,
)
from probe_daemon.measurements.ott.scoring import (
    ManifestHealth,
    content_score,
    level_score,
    manifest_score,
)
from probe_daemon.measurements.ott.settings import Settings


class ManifestFailure(MeasurementError):
    """No usable manifest; keeps what HTTP said for the failure row of later ticks."""

    def __init__(self, message: str, tally: HttpTally) -> None:
        super().__init__(message)
        self.tally = tally


class Session:
    """One tick: one client, the manifest, and what fetching it cost."""

    def __init__(self, settings: Settings, url: str, source: str | None,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.scale = settings.time_scale
        self.client = HttpClient(settings.timeout / self.scale, source, stop)
        self.stop = stop
        self.url = url
        self.health = ManifestHealth()
        self.tally = HttpTally()
        self.manifest_time = 0.0  # presentation seconds

    def fetch_manifest(self, url: str, health: ManifestHealth, tally: HttpTally) -> Fetched:
        """Players retry a failed manifest request once before giving up."""
        fetched = Fetched(url=url)
        for _ in range(ATTEMPTS):
            fetched = self.client.get(url, keep_body=True)
            tally.add(fetched)
            health.longest_redirects = max(health.longest_redirects, fetched.redirects)
            health.slowest = max(health.slowest, fetched.elapsed * self.scale)
            if fetched.ok:
                break
            health.failed_requests += 1
        return fetched

    def open(self) -> Presentation:
        started = time.monotonic()
        fetched = self.fetch_manifest(self.url, self.health, self.tally)
        if not fetched.ok:
            raise ManifestFailure(f"manifest {self.url}: {fetched.error}", self.tally)
        try:
            presentation = parse_manifest(fetched.body, fetched.url)
        except ManifestError as exc:
            raise ManifestFailure(f"manifest {fetched.url}: {exc}", self.tally) from None
        self.health.malformed += presentation.malformed
        self.manifest_time = (time.monotonic() - started) * self.scale
        return presentation


class Playout:
    """Plays one row: a fixed level, or adaptive when ``fixed`` is None."""

    def __init__(self, session: Session, presentation: Presentation, fixed: int | None) -> None:
        self.session = session
        self.settings = session.settings
        self.presentation = presentation
        self.fixed = fixed
        self.health = session.health.copy()
        self.tally = replace(session.tally)
        self.model = PlaybackModel(min(self.settings.startup_buffer, self.settings.playout))
        self.samples: list[float] = []
        self.current: Level | None = None
        self.init_loaded: tuple[str, tuple[int, int] | None] | None = None
        self._t0 = time.monotonic()
        self._offset = session.manifest_time  # a viewer waits for the manifest too
        self.limit = RUN_LIMIT_PLAYOUTS * self.settings.playout + self.settings.timeout

    def now(self) -> float:
        return self._offset + (time.monotonic() - self._t0) * self.session.scale

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and self.session.stop.wait(seconds / self.session.scale):
            raise Stopped

    def play(self, started: datetime) -> dict[str, Any]:
        cursor: Cursor | None = None
        covered, last_duration = 0.0, 0.0
        while covered < self.settings.playout - EPS and self.now() < self.limit:
            self._wait_for_room(last_duration)
            level = self._choose()
            if level is None:
                break
            segment = self._next_segment(level, cursor)
            if segment is None:
                if level.unusable:
                    continue  # its playlist failed: choose again among the others
                break
            self._fetch_segment(level, segment)
            cursor, last_duration = segment.after(), segment.duration
            covered += segment.duration
        return self._row(started, self.model.finish(self.now()))

    def _wait_for_room(self, duration: float) -> None:
        # Fetching in step with presentation time: no further ahead than max_buffer_s.
        excess = self.model.buffer_at(self.now()) + duration - self.settings.max_buffer
        if excess > 0 and self.model.playing:
            self.sleep(excess)

    def _choose(self) -> Level | None:
        levels = self.presentation.levels
        if self.fixed is not None:
            level = levels[self.fixed]
            return None if level.unusable else level
        usable = [level for level in levels if not level.unusable]
        if not usable:
            return None
        current = usable.index(self.current) if self.current in usable else None
        estimate = harmonic_mean(self.samples[-ABR_SAMPLES:])
        buffer = self.model.buffer_at(self.now())
        index = choose_level([level.bandwidth for level in usable], current, estimate, buffer,
                             ABR_LOW_BUFFER * self.settings.startup_buffer)
        return usable[index]

    def _next_segment(self, level: Level, cursor: Cursor | None) -> Segment | None:
        while True:
            track = self._track(level)
            if track is None:
                return None
            segment = track.find(cursor or track.start())
            if segment is not None or not track.live:
                return segment
            # A live playlist without the next segment yet: reload it when due (RFC 8216 6.3.4).
            self.sleep(level.reload_at - self.now())
            if self.now() >= self.limit:
                return None
            self._load_playlist(level, reload=True)

    def _track(self, level: Level) -> Track | None:
        if level.track is None and not level.unusable:
            self._load_playlist(level, reload=False)
        return None if level.unusable else level.track

    def _load_playlist(self, level: Level, reload: bool) -> None:
        fetched = self.session.fetch_manifest(level.playlist_url, self.health, self.tally)
        track, error = None, fetched.error
        if fetched.ok:
            try:
                track = parse_hls_media(fetched.body.decode("utf-8", "replace"), fetched.url)
            except ManifestError as exc:
                self.health.malformed += 1
                error = str(exc)
        known = level.track if isinstance(level.track, HlsTrack) else None
        if track is None:
            if known is None:
                level.unusable = error
            else:  # a live reload failed: try again later, never in a busy loop
                level.reload_at = self.now() + known.target / 2
            return
        grew = True
        if reload and known is not None:
            grew = known.merge(track)
        else:
            level.track = track
            self.health.malformed += track.malformed  # counted once, not at every reload
        level.reload_at = self.now() + track.target * (1.0 if grew else 0.5)

    def _fetch_segment(self, level: Level, segment: Segment) -> None:
        self.current = level
        ok = True
        if segment.init is not None and segment.init != self.init_loaded:
            ok = self._get(*segment.init) is not None  # a level switch needs its init segment
            self.init_loaded = segment.init if ok else None
        fetched = self._get(segment.url, segment.byterange) if ok else None
        now = self.now()
        if fetched is None:
            self.model.skip(now)
            return
        seconds = fetched.elapsed * self.session.scale
        if seconds > 0:
            self.samples.append(fetched.size * 8 / seconds)
        bandwidth = level.bandwidth or (fetched.size * 8 / segment.duration
                                        if segment.duration > 0 else 0.0)
        self.model.arrive(now, segment.duration, bandwidth)

    def _get(self, url: str, byterange: tuple[int, int] | None) -> Fetched | None:
        """A segment with one retry, as players do; None when both attempts failed."""
        for _ in range(ATTEMPTS):
            fetched = self.session.client.get(url, byterange=byterange)
            self.tally.add(fetched)
            if fetched.ok:
                return fetched
        return None

    def _row(self, started: datetime, stats: PlaybackStats) -> dict[str, Any]:
        manifest = manifest_score(self.health)
        content = content_score(stats)
        nominal = stats.nominal_bps()
        highest = max(level.bandwidth for level in self.presentation.levels) or nominal
        return {
            "time": started,
            "bandwidth.nominal.kbps": round(nominal / 1000),
            "http.code.max": self.tally.code_max,
            "http.redirectcount.max": self.tally.redirects_max,
            "qos.manifest": manifest,
            "qos.content": content,
            "qos.aggregate": min(manifest, content),
            "qos.level": level_score(nominal, highest),
        }
