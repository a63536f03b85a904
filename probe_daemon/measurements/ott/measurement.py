# SPDX-License-Identifier: Apache-2.0
"""The ``ott-download`` capability: one run per tick of the specification."""

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from probe_daemon.measurements.base import (
    REGISTRY_PROBEFORGE,
    CapabilityTemplate,
    Job,
    MeasurementError,
    Options,
    ip_param,
)
from probe_daemon.measurements.ott.settings import OPTIONS, Settings

if TYPE_CHECKING:
    # The player, its HTTP client (http.client, ssl) and the manifest parsers (xml.etree,
    # expat) are imported by the first run: an idle MiniProbe only offers the capability.
    from probe_daemon.measurements.ott.fetch import HttpClient, HttpTally

LABEL = "ott-download"
WHEN = "now ... future / 10s"
RESULTS = ("time", "bandwidth.nominal.kbps", "http.code.max", "http.redirectcount.max",
           "qos.manifest", "qos.content", "qos.aggregate", "qos.level")

ELEMENTS: dict[str, tuple[str, str]] = {
    "http.code.max": ("natural", "Highest HTTP status code received during an OTT run, "
                                 "redirect responses included"),
    "http.redirectcount.max": ("natural", "Longest chain of HTTP redirects followed by one "
                                          "request of an OTT run"),
    "qos.manifest": ("natural", "OTT manifest health score, 0-100 (probeforge "
                                "docs/ott-scoring.md)"),
    "qos.content": ("natural", "OTT segment delivery score from a simulated player, 0-100"),
    "qos.aggregate": ("natural", "Minimum of qos.manifest and qos.content"),
    "qos.level": ("natural", "Nominal bitrate played relative to the highest level offered, "
                             "0-100"),
}

STOP_POLL_S = 0.1


@contextmanager
def _abort_on_stop(stop: threading.Event, client: "HttpClient") -> Iterator[None]:
    """Unblock network waits as soon as stop is set, not only at the next timeout."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(STOP_POLL_S):
            if stop.is_set():
                client.abort()
                return

    watcher = threading.Thread(target=watch, name="ott-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        client.close()


def failure_row(started: datetime, tally: "HttpTally") -> dict[str, Any]:
    return {"time": started, "bandwidth.nominal.kbps": 0, "http.code.max": tally.code_max,
            "http.redirectcount.max": tally.redirects_max, "qos.manifest": 0, "qos.content": 0,
            "qos.aggregate": 0, "qos.level": 0}


class OttMeasurement:
    """The ``ott-download`` capability."""

    name = "ott"

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        read = Options(options, OPTIONS)
        self._source = read.text("source_ip4")
        self._problem: str | None = None
        try:
            self.settings = Settings.from_options(read)
        except ValueError as exc:
            self._problem, self.settings = str(exc), Settings()

    def capabilities(self) -> list[CapabilityTemplate]:
        return [CapabilityTemplate(label=LABEL,
                                   parameters={"content.url": "*", "source.ip4": self._source},
                                   results=RESULTS, when=WHEN, registry=REGISTRY_PROBEFORGE)]

    def unavailable(self) -> str | None:
        return self._problem

    def run(self, job: Job) -> Iterator[dict[str, Any]]:
        from probe_daemon.measurements.ott.fetch import Stopped
        from probe_daemon.measurements.ott.playout import ManifestFailure

        if self._problem:
            raise MeasurementError(self._problem)
        url = job.parameters.get("content.url", "").strip()
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise MeasurementError(f"content.url: {url!r} is not an http or https URL")
        source = ip_param(job.parameters, "source.ip4", 4) \
            if job.parameters.get("source.ip4") else None
        first = True
        for _tick in job.ticks(default_period=timedelta(seconds=10)):
            started = datetime.now(UTC)
            try:
                yield from self._tick(url, source, job.stop)
            except Stopped:
                return
            except ManifestFailure as exc:
                if first:
                    raise  # the specification itself is wrong: tell the client why
                yield failure_row(started, exc.tally)  # an outage: keep measuring
            first = False

    def _tick(self, url: str, source: str | None,
              stop: threading.Event) -> Iterator[dict[str, Any]]:
        from probe_daemon.measurements.ott.fetch import Stopped
        from probe_daemon.measurements.ott.playout import Playout, Session

        session = Session(self.settings, url, source, stop)
        started = datetime.now(UTC)  # the first row's time: when its viewer pressed play
        with _abort_on_stop(stop, session.client):
            presentation = session.open()
            for fixed in self._plans(len(presentation.levels)):
                row = Playout(session, presentation, fixed).play(started)
                started = datetime.now(UTC)
                if stop.is_set():
                    raise Stopped
                yield row

    def _plans(self, count: int) -> list[int | None]:
        policy = self.settings.policy
        if policy == "adaptive":
            return [None]
        if policy == "all":
            return list(range(count))
        if policy == "lowest":
            return [0]
        if policy == "highest":
            return [count - 1]
        # level:N beyond the ladder plays the top level; qos.level shows what was reached.
        return [min(self.settings.fixed_level or 0, count - 1)]
