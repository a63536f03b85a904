# SPDX-License-Identifier: Apache-2.0
"""Running specifications: one thread per job, results or exceptions into the spool.

Accepted jobs are recorded on disk until they end, so a daemon killed mid-measurement tells
the client at its next start instead of leaving it waiting forever.
"""

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

try:
    from _sha256 import sha256  # not hashlib: see probe_daemon.model
except ImportError:
    from hashlib import sha256

from probe_daemon.measurements.base import Job, Measurement, MeasurementError, format_value
from probe_daemon.model import Message, MPlaneException, Statement
from probe_daemon.when import When, format_time

log = logging.getLogger(__name__)

# A runaway measurement must not exhaust a 64 MB router's memory.
MAX_ROWS = 100_000


@dataclass
class RunningJob:
    spec: Statement
    capability_label: str
    results: list[str]
    measurement: Measurement
    when: When
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class JobRunner:
    def __init__(self, state_dir: Path, max_jobs: int, emit: Callable[[Message], None]) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_jobs = max_jobs
        self.emit = emit
        self._jobs: dict[str, RunningJob] = {}
        self._lock = threading.Lock()

    def recover(self) -> None:
        """Tell the client about jobs a previous run accepted but never finished."""
        for record in sorted(self.state_dir.glob("*.json")):
            try:
                data = json.loads(record.read_text())
                token = str(data["token"])
            except (ValueError, KeyError, OSError):
                log.warning("ignoring unreadable job record %s", record)
            else:
                log.warning("job %s (%s) was cut short by a restart of the daemon", token,
                            data.get("label"))
                self.emit(MPlaneException(token, "the probe daemon restarted during this "
                                          "measurement; no result: run it again"))
            record.unlink(missing_ok=True)

    def start(self, job: RunningJob, receipt: Message | None = None) -> str | None:
        """Start the job; return a reason when it cannot be accepted.

        ``receipt`` is emitted once the job is accepted and before it runs, so that no
        result or exception of a quick job can overtake it.
        """
        with self._lock:
            if job.spec.token in self._jobs:
                return "a job with this token is already running"
            if len(self._jobs) >= self.max_jobs:
                return f"probe busy: {self.max_jobs} measurements already running"
            self._record(job)
            self._jobs[job.spec.token] = job
        if receipt is not None:
            try:
                self.emit(receipt)
            except BaseException:
                with self._lock:
                    self._jobs.pop(job.spec.token, None)
                self._record_path(job.spec.token).unlink(missing_ok=True)
                raise
        job.thread = threading.Thread(target=self._run, args=(job,),
                                      name=f"job-{job.spec.label}", daemon=True)
        job.thread.start()
        return None

    def interrupt(self, token: str) -> bool:
        with self._lock:
            job = self._jobs.get(token)
        if job is None:
            return False
        job.stop.set()
        return True

    def stop_all(self, timeout: float) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop.set()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout)

    def _record_path(self, token: str) -> Path:
        # Tokens come from the supervisor: never let one name a path ("../x", "a/b").
        digest = sha256(token.encode(errors="surrogatepass")).hexdigest()
        return self.state_dir / f"{digest[:32]}.json"

    def _record(self, job: RunningJob) -> None:
        path = self._record_path(job.spec.token)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"token": job.spec.token, "label": job.spec.label}))
        os.replace(tmp, path)

    def _run(self, job: RunningJob) -> None:
        received = datetime.now(UTC)
        started = ended = received
        rows: list[list[str]] = []
        message: Message
        try:
            context = Job(label=job.capability_label, parameters=dict(job.spec.parameters),
                          when=job.when, received=received, stop=job.stop)
            started = max(job.when.bounds(received)[0], received)
            for row in job.measurement.run(context):
                if len(rows) >= MAX_ROWS:
                    raise MeasurementError(f"more than {MAX_ROWS} result rows; shorten the "
                                           "measurement")
                rows.append([format_value(row.get(col, "")) for col in job.results])
            ended = datetime.now(UTC)
            message = job.spec.derive(
                "result", when=f"{format_time(started)} ... {format_time(ended)}",
                results=list(job.results), resultvalues=rows, link=None)
            log.info("job %s (%s): %d result rows", job.spec.token, job.spec.label, len(rows))
        except MeasurementError as exc:
            log.info("job %s (%s) failed: %s", job.spec.token, job.spec.label, exc)
            message = MPlaneException(job.spec.token, str(exc))
        except Exception as exc:  # a bug in one measurement must not take the daemon down
            log.exception("job %s (%s) crashed", job.spec.token, job.spec.label)
            message = MPlaneException(job.spec.token,
                                      f"internal error in {job.measurement.name}: {exc}")
        self.emit(message)
        with self._lock:
            self._jobs.pop(job.spec.token, None)
        self._record_path(job.spec.token).unlink(missing_ok=True)
