# SPDX-License-Identifier: Apache-2.0
"""The component-initiated mPlane workflow, kept alive whatever the supervisor does.

Two threads talk to the supervisor: the poller (register capabilities, poll specifications)
and the sender (deliver the spool, oldest first). Any failure marks the link down; both back
off with jitter, and the first success after an outage re-registers, because a restarted
supervisor has forgotten us. Measurements keep running meanwhile and their results wait in
the spool.
"""

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from probe_daemon.backoff import Backoff
from probe_daemon.catalog import Catalog, SpecificationError, load_measurements
from probe_daemon.jobs import JobRunner, RunningJob
from probe_daemon.model import (
    Message,
    MessageError,
    MPlaneException,
    Statement,
    dumps,
    envelope,
    parse_statement,
)
from probe_daemon.settings import Config
from probe_daemon.spool import Spool
from probe_daemon.transport import Supervisor, TransportError, tls_context
from probe_daemon.when import When, WhenError

log = logging.getLogger(__name__)

MAX_SERVER_ERRORS = 5
# Longest sleep of the sender between checks; it is woken early by new messages and by stop.
IDLE_WAIT = 30.0


def _connect(config: Config) -> Supervisor:
    if config.tls:
        context = tls_context(config.ca_file, config.cert_file, config.key_file)
    else:
        context = None
        log.warning("TLS is off: talking plain HTTP to %s, unauthenticated and readable by "
                    "anyone on the path", config.supervisor_url)
    return Supervisor(config.supervisor_url, context, config.timeout)


class Component:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.spool = Spool(config.spool_dir, config.spool_max_messages, config.spool_max_bytes)
        self.jobs = JobRunner(Path(config.spool_dir).parent / "jobs", config.max_jobs, self.emit)
        self.catalog = Catalog(load_measurements(config), config.device)
        self.supervisor = _connect(config)
        self.poll_interval = config.poll_interval
        self._need_registration = threading.Event()
        self._need_registration.set()
        # The complement, for the sender to sleep on (a router should not wake for nothing).
        self._known = threading.Event()
        self._last_registration = 0.0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # A measurement that changes the device (Tstat's runtime.conf) undoes what a killed
        # predecessor left switched on.
        for measurement in {id(o.measurement): o.measurement
                            for o in self.catalog.offers.values()}.values():
            recover = getattr(measurement, "recover", None)
            if recover is not None:
                recover()
        self.jobs.recover()

    # -- outgoing --------------------------------------------------------------------------

    def emit(self, message: Message) -> None:
        self.spool.put(dumps(message.to_json()))

    def _link_down(self, why: str) -> None:
        if not self._need_registration.is_set():
            log.warning("supervisor unreachable (%s); measuring on, results kept in the spool",
                        why)
        self._known.clear()
        self._need_registration.set()

    def _send_loop(self) -> None:
        backoff = Backoff(1.0, self.config.backoff_max)
        server_errors: dict[int, int] = {}
        while not self.stopping.is_set():
            if not self._known.is_set():
                # Deliver only once the (possibly restarted) supervisor knows us again.
                self._known.wait(IDLE_WAIT)
                continue
            item = self.spool.peek(timeout=IDLE_WAIT)
            if item is None:
                continue
            seq, body = item
            try:
                reply = self.supervisor.request("POST", self.config.result_path, body)
            except TransportError as exc:
                self._link_down(str(exc))
                self.stopping.wait(backoff.next_delay())
                continue
            if reply.status == 200:
                backoff.reset()
                self.spool.done(seq)
                log.info("delivered message %d", seq)
            elif 400 <= reply.status < 500 and reply.status != 428:
                # Resending what the supervisor rejects as malformed would block the spool.
                log.error("supervisor refused message %d (HTTP %d: %s); dropped", seq,
                          reply.status, reply.body[:200].decode(errors="replace"))
                self.spool.done(seq)
            else:
                # A supervisor that answers but keeps failing on one message (the RI returns
                # 500 when it cannot parse it) must not block everything queued behind it.
                server_errors[seq] = server_errors.get(seq, 0) + 1
                if server_errors[seq] >= MAX_SERVER_ERRORS:
                    log.error("supervisor failed %d times on message %d (HTTP %d); dropped",
                              MAX_SERVER_ERRORS, seq, reply.status)
                    self.spool.done(seq)
                    continue
                self._link_down(f"HTTP {reply.status} for a result")
                self.stopping.wait(backoff.next_delay())

    # -- incoming --------------------------------------------------------------------------

    def _register(self) -> None:
        with self._lock:
            capabilities = self.catalog.capabilities()
        reply = self.supervisor.request(
            "POST", self.config.registration_path, dumps(envelope(list(capabilities))))
        if reply.status != 200:
            raise TransportError(f"registration refused: HTTP {reply.status} "
                                 f"{reply.body[:200].decode(errors='replace')}")
        refused = []
        try:
            for label, outcome in json.loads(reply.body or b"{}").items():
                if isinstance(outcome, dict) and outcome.get("registered") != "ok":
                    refused.append(f"{label} ({outcome.get('reason', 'no reason')})")
        except ValueError:
            log.warning("registration answer is not JSON: %r", reply.body[:200])
        if refused:
            log.warning("supervisor refused capabilities: %s", ", ".join(refused))
        log.info("registered %d capabilities with %s", len(capabilities),
                 self.config.supervisor_url)
        self._last_registration = time.monotonic()
        self._need_registration.clear()
        self._known.set()
        self.spool.wake()

    def _poll_loop(self) -> None:
        backoff = Backoff(1.0, self.config.backoff_max)
        while not self.stopping.is_set():
            try:
                if (self._need_registration.is_set() or time.monotonic()
                        - self._last_registration > self.config.reregister_interval):
                    self._register()
                reply = self.supervisor.request("GET", self.config.specification_path)
                if reply.status == 428:
                    self._known.clear()
                    self._need_registration.set()
                    continue
                if reply.status != 200:
                    raise TransportError(f"HTTP {reply.status} polling specifications")
                backoff.reset()
                self._handle_envelope(reply.body)
                self.stopping.wait(self.poll_interval)
            except TransportError as exc:
                self._link_down(str(exc))
                self.stopping.wait(backoff.next_delay())

    def _handle_envelope(self, body: bytes) -> None:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            log.warning("specification poll answered with non-JSON (%d bytes); ignored",
                        len(body))
            return
        items = data.get("contents") if isinstance(data, dict) and "envelope" in data \
            else [data]
        if not isinstance(items, list):
            log.warning("specification envelope without a contents list; ignored")
            return
        for item in items:
            # One bad message must not stop the others (the RI's poller dies on it).
            token = item.get("token") if isinstance(item, dict) else None
            try:
                self.handle(parse_statement(item))
            except MessageError as exc:
                log.warning("malformed message from the supervisor: %s", exc)
                if isinstance(token, str) and token:
                    self.emit(MPlaneException(token, f"malformed message: {exc}"))
            except Exception as exc:
                # A bug in handling one message must not kill the poller (the daemon would
                # stay up but deaf).
                log.exception("cannot handle a message from the supervisor")
                if isinstance(token, str) and token:
                    with contextlib.suppress(OSError):  # the spool may be what failed
                        self.emit(MPlaneException(token, f"internal error: {exc}"))

    def handle(self, message: Message) -> None:
        if isinstance(message, MPlaneException):
            log.info("supervisor sent exception for %s: %s", message.token, message.message)
            return
        if message.kind == "interrupt":
            if not self.jobs.interrupt(message.token):
                self.emit(MPlaneException(message.token, "Unknown job"))
            return
        if message.kind != "specification":
            log.info("ignoring %s %s from the supervisor", message.kind, message.label)
            return
        if message.label == "callback":
            self._callback(message)
            return
        if not message.token:
            log.warning("specification %s without a token; ignored", message.label)
            return
        try:
            with self._lock:
                offer, when = self.catalog.match(message)
        except SpecificationError as exc:
            log.info("refused specification %s: %s", message.label, exc)
            self.emit(MPlaneException(message.token, str(exc)))
            return
        job = RunningJob(spec=message, capability_label=offer.template.label,
                         results=list(offer.template.results), measurement=offer.measurement,
                         when=when)
        refusal = self.jobs.start(job, receipt=message.derive(
            "receipt", results=list(offer.template.results), link=None))
        if refusal:
            self.emit(MPlaneException(message.token, refusal))
            return
        log.info("accepted %s (token %s, when %s)", message.label, message.token, message.when)

    def _callback(self, spec: Statement) -> None:
        try:
            when = When.parse(spec.when)
        except WhenError:
            return
        if when.duration is not None and when.duration.total_seconds() > 0:
            self.poll_interval = when.duration.total_seconds()

    # -- lifecycle -------------------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Apply a new configuration: re-offer capabilities, reconnect if needed."""
        # Everything that can fail comes first: a refused reload changes nothing.
        catalog = Catalog(load_measurements(config), config.device)
        supervisor = _connect(config)
        with self._lock:
            removed = [s for s in self.catalog.capabilities()
                       if s.label not in catalog.offers]
            self.catalog = catalog
            self.config = config
            self.supervisor = supervisor
            self.poll_interval = config.poll_interval
        for statement in removed:
            self.emit(statement.derive("withdrawal"))
        self._known.clear()
        self._need_registration.set()
        log.info("configuration reloaded: %d capabilities offered, %d withdrawn",
                 len(catalog.offers), len(removed))

    def _forever(self, loop: Callable[[], None]) -> None:
        """Run a loop until stopped; a bug in it is logged and the loop restarted, because a
        daemon whose poller died would stay up but deaf."""
        while not self.stopping.is_set():
            try:
                loop()
            except Exception:
                log.exception("%s failed; restarting it", threading.current_thread().name)
                self.stopping.wait(5.0)

    def start(self) -> None:
        for name, loop in (("poller", self._poll_loop), ("sender", self._send_loop)):
            thread = threading.Thread(target=self._forever, args=(loop,), name=name,
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, grace: float = 10.0) -> None:
        """Interrupt measurements so their results are spooled, then stop talking.

        ``grace`` bounds the whole stop, so an init system's stop timeout is respected; what
        is not delivered by then stays in the spool.
        """
        deadline = time.monotonic() + grace
        self.jobs.stop_all(grace / 2)
        while len(self.spool) and not self._need_registration.is_set() \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        self.stopping.set()
        self.spool.wake()
        self._known.set()  # wakes the sender, which then sees it must stop
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
