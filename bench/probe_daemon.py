# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the probe daemon against the mPlane RI's ping component, under the RI supervisor.

Measures, in one run on this machine (x86 for now; the emulated MIPS probe comes later):

* resident memory (VmRSS, VmHWM) of ``python -m probe_daemon`` with every measurement
  enabled, after registering and after N ping specifications, and of the RI's ``mpcom`` with
  its ping module under an RI supervisor of identical configuration;
* CPU time both spend while registered and idle, over the same window;
* start-up time, spawn to registered (median of several starts);
* specification-to-result latency of ``ping-average-ip4`` through the RI supervisor, with the
  daemon polling every 5 s (its default) and every 1 s, against the RI component.

Usage::

    .venv/bin/python bench/probe_daemon.py                              # print the results
    .venv/bin/python bench/probe_daemon.py --write docs/benchmarks.md   # and rewrite its section
    .venv/bin/python bench/probe_daemon.py --quick                      # a short run of everything
"""

import argparse
import contextlib
import json
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: sys.path[0] is bench/, where this very file would shadow the
    # probe_daemon package, and the repository's tests/ would not be importable.
    sys.path[0] = str(REPO)

from bench import report  # noqa: E402
from probe_daemon.registry import MEASUREMENT_MODULES  # noqa: E402
from probe_daemon.settings import SETTINGS  # noqa: E402
from rig.mplane_ri import (  # noqa: E402
    CORE_REGISTRY,
    RI_PING_LABELS,
    RI_REQUIREMENTS,
    RIComponent,
    RIError,
    RISupervisor,
    default_cache_dir,
    free_port,
    list_capabilities,
    ri_python,
    ri_venv,
)
from tests.support.probe_daemon_proc import ProbeDaemon, registry_file  # noqa: E402

START = "<!-- bench:probe_daemon:start -->"
END = "<!-- bench:probe_daemon:end -->"

# DESIGN.md, "Performance budgets": probe daemon on MIPS <= 16 MB RSS, ~0 % CPU idle.
# /proc reports kB meaning KiB; 16 MB is read as 16 MiB.
BUDGET_RSS_KB = 16 * 1024
# "~0 %" has no number in DESIGN.md; this is what the verdict column calls near zero.
IDLE_NEAR_ZERO_PERCENT = 0.1

LABEL = "ping-average-ip4"
PARAMS = {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"}
# One echo: the shortest scope with a period that both the daemon and the RI accept.
WHEN = "now + 1s / 1s"
REDEEM_INTERVAL = 0.1  # how often the client asks the supervisor for the result
WATCH_INTERVAL = 0.01  # how often log files are read for new lines

DEFAULT_POLL = float(next(s.default for s in SETTINGS if s.name == "poll_interval") or 5)
FAST_POLL = 1.0
RI_POLL = 5.0  # fixed in mplane/component.py, InitiatorHttpComponent.check_for_specs

OURS_REGISTERED = re.compile(r"registered (\d+) capabilities")
# Printed by mpcom right after the supervisor answered its registration POST.
RI_REGISTERED = re.compile(r"Checking for Specifications")
SUP_PULLED = re.compile(r"Specification \S+ successfully pulled by")
# The daemon logs this as the result is queued for sending; mpcom after its POST is answered.
OURS_DONE = re.compile(rf"job \S+ \({LABEL}[^)]*\)(: \d+ result rows| failed)")
RI_DONE = re.compile(r"(Result|Exception) for \S+ successfully returned")

# Runs in the RI venv: the RI's own client posts the specification and redeems it, and
# reports time.monotonic() (CLOCK_MONOTONIC, shared with this process) around each step.
_DRIVER = """\
import json
import sys
import time

request = json.load(sys.stdin)
answer = sys.stdout
sys.stdout = sys.stderr  # the RI prints progress

import mplane.client
import mplane.model
import mplane.tls

mplane.model.preload_registry(request["registry_preload"])
mplane.model.initialize_registry(request["registry"])
config = {"client": {}}
client = mplane.client.HttpInitiatorClient(config, mplane.tls.TlsState(config))
base_url = request["url"].rstrip("/")
client.set_default_url(base_url + "/")
client.retrieve_capabilities(base_url + "/capability")
runs = []
for pause in request["pauses"]:
    time.sleep(pause)
    post = time.monotonic()
    spec = client.invoke_capability(request["label"], mplane.model.When(request["when"]),
                                    request["params"])
    posted = time.monotonic()
    while True:
        if spec.get_token() in client.result_tokens():
            msg = client.result_for(spec.get_token())
        else:
            msg = client.result_for(spec.get_label())
        if not isinstance(msg, mplane.model.Receipt):
            break
        if time.monotonic() > posted + request["timeout"]:
            raise TimeoutError("no result for " + spec.get_label())
        time.sleep(request["redeem_interval"])
    runs.append({"post": post, "posted": posted, "result": time.monotonic(),
                 "reply": json.loads(mplane.model.unparse_json(msg))})
json.dump(runs, answer)
"""


# -- /proc ---------------------------------------------------------------------------------

@dataclass
class Memory:
    rss_kb: int
    hwm_kb: int
    threads: int


@dataclass
class Idle:
    seconds: float
    cpu_seconds: float
    switches: int

    @property
    def percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds

    @property
    def wakeups(self) -> float:
        return self.switches / self.seconds


def memory(pid: int) -> Memory:
    status = report.read_text(f"/proc/{pid}/status")
    values = {key: report.field(status, key).split() for key in ("VmRSS", "VmHWM", "Threads")}
    if not all(values.values()):
        raise RuntimeError(f"process {pid} has gone (no memory figures in /proc)")
    return Memory(int(values["VmRSS"][0]), int(values["VmHWM"][0]),
                  int(values["Threads"][0]))


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (not its children)."""
    # The command name in field 2 may hold spaces and parentheses; fields after it are fixed.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = report.read_text(str(task / "status"))
        for key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            total += int(report.field(status, key) or 0)
    return total


def measure_idle(pids: dict[str, int], seconds: float) -> dict[str, Idle]:
    """CPU time and wake-ups of each process over one common window of ``seconds``."""
    before = {name: (cpu_seconds(pid), context_switches(pid)) for name, pid in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    after = {name: (cpu_seconds(pid), context_switches(pid)) for name, pid in pids.items()}
    elapsed = time.monotonic() - start
    return {name: Idle(elapsed, after[name][0] - before[name][0], after[name][1] - before[name][1])
            for name in pids}


# What a fresh interpreter holds after importing more and more of what the daemon imports.
IMPORT_STAGES: tuple[tuple[str, str], ...] = (
    ("the bare interpreter", ""),
    ("plus `import ssl`", "import ssl"),
    ("plus `import probe_daemon.cli` (the daemon without its measurements)",
     "import ssl, probe_daemon.cli"),
    (f"plus the {len(MEASUREMENT_MODULES)} measurement modules",
     "import ssl, probe_daemon.cli, importlib; from probe_daemon.registry import "
     "MEASUREMENT_MODULES as M; [importlib.import_module(t.split(':')[0]) for t in M.values()]"),
)


def import_memory(code: str) -> Memory:
    """VmRSS of the same Python as the daemon's after running ``code``, and nothing else."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-c", f"{code}\nimport time\n"
                           "print('ready', flush=True)\ntime.sleep(60)"],
                          stdout=subprocess.PIPE, text=True, env=env,
                          cwd=tempfile.gettempdir()) as proc:
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"python -c {code!r} failed")
            return memory(proc.pid)
        finally:
            proc.kill()


# -- log files -----------------------------------------------------------------------------

class LogWatcher:
    """Reads the files it watches every WATCH_INTERVAL and notes when each line appeared
    (time.monotonic()), so a log without timestamps still says when something happened."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[int, bytes]] = {}
        self.lines: dict[Path, list[tuple[float, str]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="log-watcher", daemon=True)

    def __enter__(self) -> "LogWatcher":
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, path: Path) -> None:
        with self._lock:
            self._files.setdefault(path, (0, b""))
            self.lines.setdefault(path, [])

    def _loop(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            self.scan()

    def scan(self) -> None:
        with self._lock:
            for path, (offset, partial) in list(self._files.items()):
                try:
                    with open(path, "rb") as handle:
                        handle.seek(offset)
                        data = handle.read()
                except FileNotFoundError:
                    continue
                if not data:
                    continue
                now = time.monotonic()
                *complete, rest = (partial + data).split(b"\n")
                self._files[path] = (offset + len(data), rest)
                self.lines[path] += [(now, line.decode(errors="replace")) for line in complete]

    def find(self, path: Path, pattern: re.Pattern[str], after: float,
             before: float = float("inf")) -> tuple[float, re.Match[str]] | None:
        """The first line matching ``pattern`` that appeared in [after, before)."""
        with self._lock:
            for seen, line in self.lines.get(path, []):
                match = pattern.search(line)
                if after <= seen < before and match:
                    return seen, match
        return None

    def wait(self, path: Path, pattern: re.Pattern[str], after: float, timeout: float,
             alive: Callable[[], bool] = lambda: True) -> tuple[float, re.Match[str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(path, pattern, after)
            if found is not None:
                return found
            if time.monotonic() > deadline or not alive():
                tail = "\n".join(line for _, line in self.lines.get(path, [])[-20:])
                raise RuntimeError(f"no {pattern.pattern!r} in {path} "
                                   f"({'timed out' if alive() else 'process exited'}):\n{tail}")
            time.sleep(WATCH_INTERVAL)


# -- the two components --------------------------------------------------------------------

def daemon_config(daemon: ProbeDaemon, supervisor_url: str, poll_interval: float) -> str:
    """probe.conf as a probe would have it, but plain HTTP and every measurement switched on;
    what is not set here keeps its default (timeout, back-off, re-registration ...)."""
    lines = ["[mplane]", f"supervisor_url = {supervisor_url}", "tls = no",
             f"poll_interval = {poll_interval:g}",
             "[daemon]", f"spool_dir = {daemon.spool_dir}", "log_level = info"]
    for name in MEASUREMENT_MODULES:
        lines += [f"[{name}]", "enabled = yes"]
    return "\n".join(lines) + "\n"


def start_daemon(work: Path, supervisor: RISupervisor, name: str, poll_interval: float,
                 watcher: LogWatcher) -> tuple[ProbeDaemon, float, int]:
    """A running daemon, seconds from spawn to registered, and how many capabilities."""
    daemon = ProbeDaemon(work, supervisor.component_url, name=name)
    daemon.config_path.write_text(daemon_config(daemon, supervisor.component_url,
                                                poll_interval))
    watcher.watch(daemon.log_path)
    start = time.monotonic()
    daemon.start()
    try:
        seen, match = watcher.wait(
            daemon.log_path, OURS_REGISTERED, start, 60,
            alive=lambda: daemon.process is not None and daemon.process.poll() is None)
    except BaseException:
        daemon.stop()
        raise
    return daemon, seen - start, int(match.group(1))


def start_ri_component(venv: Path, work: Path, supervisor: RISupervisor,
                       watcher: LogWatcher) -> tuple[RIComponent, float]:
    component = RIComponent(venv, work, supervisor_url=supervisor.component_url)
    watcher.watch(component.log_path)
    start = time.monotonic()
    component.__enter__()  # returns once mpcom has registered
    try:
        seen, _ = watcher.wait(component.log_path, RI_REGISTERED, start, 10)
    except BaseException:
        component.stop()
        raise
    return component, seen - start


def wait_listed(venv: Path, supervisor: RISupervisor, registry: Path, count: int,
                timeout: float = 60.0) -> list[str]:
    """The supervisor relays registered capabilities one per loop tick: wait for all."""
    deadline = time.monotonic() + timeout
    while True:
        listed = list_capabilities(venv, supervisor.client_url, registry_preload=registry)
        if len(listed) >= count:
            return listed
        if time.monotonic() > deadline:
            raise RuntimeError(f"{supervisor.client_url} lists {listed}, not {count} "
                               "capabilities")
        time.sleep(0.2)


# -- specifications ------------------------------------------------------------------------

@dataclass
class SpecRun:
    post: float  # the client starts posting the specification
    posted: float  # the supervisor answered the POST (a receipt)
    result: float  # the client has the result
    pulled: float | None  # the supervisor logged that the component pulled it
    done: float | None  # the component logged its result (see OURS_DONE, RI_DONE)
    rtt_us: int

    @property
    def total(self) -> float:
        return self.result - self.post


def run_specs(venv: Path, supervisor: RISupervisor, registry: Path, runs: int,
              pauses: Sequence[float], watcher: LogWatcher, component_log: Path,
              done: re.Pattern[str]) -> list[SpecRun]:
    request = {"url": supervisor.client_url, "registry": CORE_REGISTRY,
               "registry_preload": str(registry.resolve()), "label": LABEL, "params": PARAMS,
               "when": WHEN, "pauses": list(pauses[:runs]), "timeout": 60.0,
               "redeem_interval": REDEEM_INTERVAL}
    # As the harness runs RI programs: nothing from this environment on their import path.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done_run = subprocess.run([str(ri_python(venv)), "-c", _DRIVER], input=json.dumps(request),
                              capture_output=True, text=True, env=env, check=False,
                              timeout=runs * 90 + 60)
    if done_run.returncode != 0:
        raise RIError(f"RI client failed: {done_run.stderr[-3000:]}")
    time.sleep(3 * WATCH_INTERVAL)  # the last log lines
    answers = json.loads(done_run.stdout)
    results: list[SpecRun] = []
    for i, answer in enumerate(answers):
        reply = answer["reply"]
        if reply.get("result") != "measure":
            raise RuntimeError(f"run {i + 1}: not a result: {reply}")
        row = dict(zip(reply["results"], reply["resultvalues"][0], strict=True))
        if row.get("delay.twoway.icmp.count") != "1":
            raise RuntimeError(f"run {i + 1}: expected one echo: {reply}")
        start = answer["post"]
        end = answers[i + 1]["post"] if i + 1 < len(answers) else float("inf")
        pulled = watcher.find(supervisor.log_path, SUP_PULLED, start, end)
        finished = watcher.find(component_log, done, start, end)
        results.append(SpecRun(start, answer["posted"], answer["result"],
                               None if pulled is None else pulled[0],
                               None if finished is None else finished[0],
                               int(row["delay.twoway.icmp.us.mean"])))
    return results


# -- the run -------------------------------------------------------------------------------

@dataclass
class Side:
    starts: list[float]
    capabilities: int
    registered: Memory
    idle: Idle
    runs: list[SpecRun]
    after_runs: Memory


@dataclass
class Results:
    ours: Side
    ri: Side
    fast_runs: list[SpecRun]
    fast_memory: Memory
    imports: list[tuple[str, Memory]]
    labels: list[str]
    loads: dict[str, tuple[float, float, float]]
    idle_seconds: float
    max_pause: float
    code: str  # the daemon's code as the run began, and whether it changed during the run


def run(args: argparse.Namespace) -> Results:
    loads = {"start": report.load_average()}
    code, code_key = _code_version()
    venv = ri_venv(default_cache_dir())
    rng = random.Random(args.seed)
    pauses = [rng.uniform(0, args.max_pause) for _ in range(max(args.specs, args.fast_specs))]
    with tempfile.TemporaryDirectory(prefix="probe-daemon-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        watcher = stack.enter_context(LogWatcher())
        registry = registry_file(work)
        imports = [(what, import_memory(code)) for what, code in IMPORT_STAGES]
        # Two supervisors of identical configuration: under one, the daemon's and the RI's
        # ping capabilities collide (see the report).
        sup_ours, sup_ri = (
            stack.enter_context(RISupervisor(venv, work / f"supervisor-{who}",
                                             component_port=free_port(),
                                             client_port=free_port(),
                                             registry_preload=registry))
            for who in ("daemon", "ri"))
        watcher.watch(sup_ours.log_path)
        watcher.watch(sup_ri.log_path)

        ours_starts: list[float] = []
        ri_starts: list[float] = []
        for i in range(args.starts):  # alternating, so both see the same machine
            daemon, seconds, capabilities = start_daemon(work, sup_ours, f"daemon-{i}",
                                                         DEFAULT_POLL, watcher)
            stack.callback(daemon.stop)
            ours_starts.append(seconds)
            component, seconds = start_ri_component(venv, work / f"ri-{i}", sup_ri, watcher)
            stack.callback(component.stop)
            ri_starts.append(seconds)
            _progress(f"start {i + 1}/{args.starts}: daemon {ours_starts[-1]:.3f} s, "
                      f"RI component {ri_starts[-1]:.3f} s")
            if i < args.starts - 1:
                daemon.stop()
                component.stop()
        labels = wait_listed(venv, sup_ours, registry, capabilities)
        wait_listed(venv, sup_ri, registry, len(RI_PING_LABELS))
        assert daemon.process is not None and component.pid is not None
        ours_registered, ri_registered = memory(daemon.process.pid), memory(component.pid)

        loads["idle"] = report.load_average()
        _progress(f"idle for {args.idle:g} s")
        idle = measure_idle({"ours": daemon.process.pid, "ri": component.pid}, args.idle)

        _progress(f"{args.specs} specifications to the daemon (poll every {DEFAULT_POLL:g} s)")
        ours_runs = run_specs(venv, sup_ours, registry, args.specs, pauses, watcher,
                              daemon.log_path, OURS_DONE)
        ours_after = memory(daemon.process.pid)
        daemon.stop()
        _progress(f"{args.specs} specifications to the RI component")
        ri_runs = run_specs(venv, sup_ri, registry, args.specs, pauses, watcher,
                            component.log_path, RI_DONE)
        ri_after = memory(component.pid)
        component.stop()

        _progress(f"{args.fast_specs} specifications to the daemon (poll every {FAST_POLL:g} s)")
        fast, _, _ = start_daemon(work, sup_ours, "daemon-fast-poll", FAST_POLL, watcher)
        stack.callback(fast.stop)
        assert fast.process is not None
        fast_runs = run_specs(venv, sup_ours, registry, args.fast_specs, pauses, watcher,
                              fast.log_path, OURS_DONE)
        fast_memory = memory(fast.process.pid)
        fast.stop()
    loads["end"] = report.load_average()
    end_code, end_key = _code_version()
    if end_key != code_key:
        # Others work on the same tree: say so rather than credit one version with the figures.
        code += f"; **`probe_daemon/` changed during the run**, to {end_code} at its end"
    return Results(
        ours=Side(ours_starts, capabilities, ours_registered, idle["ours"], ours_runs,
                  ours_after),
        ri=Side(ri_starts, len(RI_PING_LABELS), ri_registered, idle["ri"], ri_runs, ri_after),
        fast_runs=fast_runs, fast_memory=fast_memory, imports=imports, labels=labels,
        loads=loads, idle_seconds=args.idle, max_pause=args.max_pause, code=code)


# -- the report ----------------------------------------------------------------------------

def _mib(kb: int) -> str:
    return f"{kb / 1024:.1f} MiB"


def _med(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _s(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < WATCH_INTERVAL:
        return f"under {WATCH_INTERVAL * 1000:g} ms (the same read of the logs)"
    return f"{seconds * 1000:.0f} ms"


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in load)


def _rss_verdict(kb: int) -> str:
    return "within (x86-64 figure)" if kb <= BUDGET_RSS_KB else "**over** (x86-64 figure)"


def _idle_verdict(idle: Idle) -> str:
    # Whole clock ticks, so compare in ticks rather than in rounded percentages.
    if idle.percent < IDLE_NEAR_ZERO_PERCENT - 1e-9:
        return f"≈ 0 (< {IDLE_NEAR_ZERO_PERCENT:g} % of a core, x86-64 figure)"
    return f"**not ≈ 0** (≥ {IDLE_NEAR_ZERO_PERCENT:g} % of a core, x86-64 figure)"


def _totals(runs: Sequence[SpecRun]) -> list[float]:
    return [x.total for x in runs]


def table(r: Results) -> str:
    n, ours, ri = len(r.ours.runs), r.ours, r.ri
    budget = "≤ 16 MB RSS"
    rows = [
        ("resident memory after start and registration (VmRSS)", _mib(ours.registered.rss_kb),
         _mib(ri.registered.rss_kb), "1 each", budget, _rss_verdict(ours.registered.rss_kb)),
        ("peak resident memory after start and registration (VmHWM)",
         _mib(ours.registered.hwm_kb), _mib(ri.registered.hwm_kb), "1 each", budget,
         _rss_verdict(ours.registered.hwm_kb)),
        (f"resident memory after {_n(n, 'ping specification')} (VmRSS)",
         _mib(ours.after_runs.rss_kb), _mib(ri.after_runs.rss_kb), "1 each", budget,
         _rss_verdict(ours.after_runs.rss_kb)),
        (f"peak resident memory after {_n(n, 'ping specification')} (VmHWM)",
         _mib(ours.after_runs.hwm_kb), _mib(ri.after_runs.hwm_kb), "1 each", budget,
         _rss_verdict(ours.after_runs.hwm_kb)),
        (f"idle CPU over {r.idle_seconds:g} s, registered (% of one core)",
         f"{ours.idle.percent:.3f} %", f"{ri.idle.percent:.3f} %", "1 window, the same",
         "≈ 0 % CPU idle", _idle_verdict(ours.idle)),
        ("idle wake-ups (context switches per second, all threads)", f"{ours.idle.wakeups:.1f}",
         f"{ri.idle.wakeups:.1f}", "1 window, the same", "—", "—"),
        ("start-up, spawn → registered (s, median)", _s(_med(ours.starts), 3),
         _s(_med(ri.starts), 3), f"{len(ours.starts)} each", "—", "—"),
        (f"`{LABEL}` POST → result at the supervisor, component polls every "
         f"{DEFAULT_POLL:g} s (s, median)", _s(_med(_totals(ours.runs))),
         _s(_med(_totals(ri.runs))), f"{n} each", "—", "—"),
        (f"`{LABEL}` POST → result at the supervisor, daemon polls every {FAST_POLL:g} s "
         "(s, median)", _s(_med(_totals(r.fast_runs))),
         f"— (polls every {RI_POLL:g} s, fixed)", f"{len(r.fast_runs)}", "—", "—"),
    ]
    lines = ["| what | probe daemon | RI ping component | runs | budget (DESIGN.md, MIPS) | "
             "daemon against the budget |",
             "|---|---:|---:|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def latency_table(r: Results) -> str:
    series = [(f"probe daemon, polls every {DEFAULT_POLL:g} s (default)", r.ours.runs),
              (f"RI ping component, polls every {RI_POLL:g} s (fixed)", r.ri.runs),
              (f"probe daemon, polls every {FAST_POLL:g} s", r.fast_runs)]
    lines = ["| series | runs | POST → result (median, min-max) | POST answered "
             "(supervisor stall) | POST → spec pulled by the component | pulled → component "
             "logs its result | component's result → client has it |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for name, runs in series:
        totals = _totals(runs)
        blocked = _med([x.posted - x.post for x in runs])
        pulled = _med([None if x.pulled is None else x.pulled - x.post for x in runs])
        work = _med([None if x.pulled is None or x.done is None else x.done - x.pulled
                     for x in runs])
        relay = _med([None if x.done is None else x.result - x.done for x in runs])
        lines.append(f"| {name} | {len(runs)} | {_s(_med(totals))} ({_spread(totals)}) | "
                     f"{_s(blocked)} | {_s(pulled)} | {_s(work, 3)} | {_s(relay)} |")
    return "\n".join(lines)


def comparison(r: Results) -> str:
    ours, ri = r.ours, r.ri
    rss, ri_rss = ours.after_runs.rss_kb, ri.after_runs.rss_kb
    start, ri_start = _med(ours.starts) or 0.0, _med(ri.starts) or 0.0
    lat, ri_lat = _med(_totals(ours.runs)) or 0.0, _med(_totals(ri.runs)) or 0.0
    cpu = (f"{ours.idle.percent / ri.idle.percent:.1f}x" if ri.idle.percent > 0
           else "the RI component's below one clock tick")
    wake = (f"{ours.idle.wakeups / ri.idle.wakeups:.0f}x" if ri.idle.wakeups > 0 else "—")
    return (f"**Against the RI ping component** (daemon / RI): resident memory after "
            f"{_n(len(ours.runs), 'specification')} {_mib(rss)} / {_mib(ri_rss)} "
            f"({rss / ri_rss:.2f}x), the daemon offering {ours.capabilities} capabilities and "
            f"the RI {ri.capabilities}; idle CPU {ours.idle.percent:.3f} % / "
            f"{ri.idle.percent:.3f} % of one core ({cpu}) with {ours.idle.wakeups:.1f} / "
            f"{ri.idle.wakeups:.1f} wake-ups per second ({wake}); start-up {start:.3f} s / "
            f"{ri_start:.3f} s ({start / ri_start:.2f}x); ping POST → result {lat:.2f} s / "
            f"{ri_lat:.2f} s, both polling every 5 s.")


def notes(r: Results) -> str:
    ours, every = r.ours, r.ours.runs + r.ri.runs + r.fast_runs
    blocked = _med([x.posted - x.post for x in every]) or 0.0
    pulled = _med([x.pulled - x.post for x in every if x.pulled is not None]) or 0.0
    relay = _med([x.result - x.done for x in every if x.done is not None]) or 0.0
    work = _med([x.done - x.pulled for x in ours.runs + r.fast_runs
                 if x.done is not None and x.pulled is not None])
    ri_work = _med([x.done - x.pulled for x in r.ri.runs
                    if x.done is not None and x.pulled is not None])
    late = sum(1 for x in ours.runs if x.pulled is not None and x.pulled - x.posted > 0.5)
    stages = "; ".join(f"{what} {_mib(m.rss_kb)}" for what, m in r.imports)
    return f"""\
**Memory.** What a fresh interpreter (the same Python) holds as it imports what the daemon
imports: {stages}; the running daemon, registered, {_mib(ours.registered.rss_kb)}. `ssl` is
imported whether or not `tls` is on, and a probe needs TLS anyway. The daemon had
{ours.after_runs.threads} threads after the specifications, the RI component
{r.ri.after_runs.threads}; the RI's figure leaves out the `ping` process it starts for each
measurement, while the daemon pings from its own ICMP socket. After
{_n(len(r.fast_runs), 'specification')} the daemon polling every {FAST_POLL:g} s was at
{_mib(r.fast_memory.rss_kb)} (peak {_mib(r.fast_memory.hwm_kb)}). The budget is for the MIPS
probe: CPython's objects are smaller on 32-bit MIPS than on x86-64 and OpenWrt builds its
Python differently, so the verdicts above are an indication, not the MIPS measurement.

**What the latency measures.** Almost all of it is the RI supervisor, not the component:

- the supervisor answers a specification POST only after {blocked:.2f} s (median, all runs):
  its client-facing handler waits up to 5000 ms (`immediate_ms`) for an immediate result with
  `time.sleep`, inside the one Tornado IO loop that also serves the components, so meanwhile
  no component can pull anything either;
- a specification poll that reaches the supervisor during that stall is answered right after
  it, with the new specification, so the specification is pulled {pulled:.2f} s after the
  POST (median, all runs), and the poll interval hardly shows: a component that polls every
  5 s has a poll at the supervisor during any stall of 5 s or more ({late} of the daemon's
  {_n(len(ours.runs), 'run')} polling every 5 s waited for a later poll);
- the supervisor's relay looks for the component's result once a second (`RelayService.run`,
  `sleep(1)`), which puts the result in the client's hands {relay:.2f} s (median) after the
  component has it, about 6 s after the POST whichever component measured;
- the components' own part, from the supervisor logging that the specification was pulled to
  the component logging its result, is {_ms(work)} for the daemon and {_ms(ri_work)} for the
  RI component (one echo to 127.0.0.1; the RI starts `ping` for it). Both are read from log
  files every {WATCH_INTERVAL * 1000:g} ms, so they are good to 10-20 ms.

**Idle.** The daemon's wake-ups come from its main loop (checks for signals every 0.5 s), its
sender (waits for results in 1 s slices) and its poller (every {DEFAULT_POLL:g} s); the RI
component's from its poll every {RI_POLL:g} s. CPU time is counted in clock ticks of 10 ms,
so over {r.idle_seconds:g} s one tick is {1 / r.idle_seconds:.3f} % of a core.
"""


def section(r: Results, command: str) -> str:
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in [
        *report.machine(),
        ("mPlane RI", f"{RI_REQUIREMENTS[0]} in its own venv on the same interpreter "
                      "(`rig/mplane_ri.py`)"),
        ("probe daemon code", r.code),
        ("load average (1 / 5 / 15 min)", f"{_load(r.loads['start'])} at the start, "
         f"{_load(r.loads['idle'])} before the idle window, {_load(r.loads['end'])} at the "
         "end; other benchmarks and tests may share the machine"),
    ])
    labels = ", ".join(f"`{label}`" for label in r.labels)
    n = len(r.ours.runs)
    pause = (f"A random pause of 0-{r.max_pause:g} s precedes each run, so runs meet the "
             "component's poll cycle at different points." if r.max_pause > 0 else
             "The runs follow one another without a pause.")
    body = f"""\
## Probe daemon against the mPlane RI ping component (`bench/probe_daemon.py`)

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.

**x86 only for now.** The budget in DESIGN.md (probe daemon on MIPS: ≤ 16 MB RSS, ≈ 0 % CPU
idle) is for the MiniProbe; the emulated MIPS probe comes with a later issue and will add its
figures here. Until then the budget column holds x86-64 figures against it, for orientation.
16 MB is read as 16 MiB; "≈ 0 %" as below {IDLE_NEAR_ZERO_PERCENT:g} % of one core.

Machine:

{machine_lines}

Method. One run, as root; the phases follow one another in the order below, except that the
daemon and the RI component sit idle in the same window.

- *Supervisors*: two RI supervisors (`mpsup`) of identical configuration (plain HTTP,
  component-initiated towards the components, the daemon's registry preloaded), one for the
  daemon and one for the RI component. Under one supervisor the two collide: without TLS
  every component has the identity `Identity.Unauthenticated.Default`, the supervisor keeps
  one relay per (label, identity), ignores the second registration of `{LABEL}`, and queues a
  specification for the identity, so whichever component polls first gets it (a trial with
  both registered: the daemon, polling every 1 s, got all 4 specifications). With TLS the
  identities differ, but the relay looks the capability up by label, which gives every
  specification to whichever registered last (read in `mplane/supervisor.py` and
  `mplane/client.py`, not tried). So each has its own supervisor, and their specification
  runs come one after the other.
- *Probe daemon*: `python -m probe_daemon --config FILE` (`tests/support/probe_daemon_proc.py`)
  with `tls = no`, every measurement `enabled = yes`, `log_level = info` and everything else
  at its default (polls every {DEFAULT_POLL:g} s). It registered {r.ours.capabilities}
  capabilities: {labels}. Tstat is not installed here, so it is not offered.
- *RI ping component*: `mpcom` with `mplane.components.ping` on 127.0.0.1, as the harness's
  `RIComponent` runs it: {len(RI_PING_LABELS)} ping capabilities and a callback capability. It
  polls for specifications every {RI_POLL:g} s; the RI has no setting for that.
- *Memory*: VmRSS and VmHWM from `/proc/PID/status` of the component's process (all threads,
  no children) once its supervisor lists all it registered, and again after
  {_n(n, 'specification')} (the latency runs below).
- *Idle CPU*: utime + stime from `/proc/PID/stat` of both, registered and given nothing to do,
  over one {r.idle_seconds:g} s window, as a share of one core; wake-ups are the voluntary and
  involuntary context switches of all their threads in the window.
- *Start-up*: from just before the process is spawned until the line saying it registered
  appears in its log (read every {WATCH_INTERVAL * 1000:g} ms): the daemon's
  `registered N capabilities`, mpcom's `Checking for Specifications...`, which it prints once
  the supervisor has answered its registration. The daemon and the RI component start in
  turn, {_n(len(r.ours.starts), 'time')} each, registering again each time; the last start of each
  is the process measured above.
- *Latency*: the RI's own client (`mplane.client.HttpInitiatorClient`, as `mpcli` uses it)
  posts `{LABEL}` (destination and source 127.0.0.1) with `when = {WHEN}`, one echo and the
  shortest scope with a period that both components accept, then redeems it every
  {REDEEM_INTERVAL:g} s; the time runs from the start of the POST to the client holding the
  result, which is when the supervisor has it plus at most {REDEEM_INTERVAL:g} s. {pause}
  The steps in between come from the supervisor's log (specification pulled)
  and the component's: the daemon logs `job … result rows` as it queues the result for
  sending, mpcom `Result for … successfully returned!` once its result POST was answered.

{table(r)}

Latency, step by step (medians, seconds):

{latency_table(r)}

{comparison(r)}

{notes(r)}"""
    return f"{START}\n{report.reflow(body).rstrip()}\n{END}\n"


def _code_version() -> tuple[str, str]:
    """Which probe_daemon/ runs: the commit, the tree of probe_daemon/ in it (which changes only
    with the daemon's code) and whether the work tree differs from it; and a key that changes
    when the daemon's code does."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), *argv],
                              capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (no git)", ""
    tree = git("rev-parse", "--short", "HEAD:probe_daemon")
    dirty = git("status", "--porcelain", "--", "probe_daemon")
    # Uncommitted edits change the key too: their diff, not just the list of changed files.
    key = tree + (git("diff", "HEAD", "--", "probe_daemon") if dirty else "")
    return (f"commit {commit} (`probe_daemon/` tree {tree})"
            + (" plus uncommitted changes under `probe_daemon/`" if dirty else "")), key


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of ``path``, leaving every other section alone."""
    report.write_section(path, text, START, END)


# -- driver --------------------------------------------------------------------------------

def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/probe_daemon.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="starts of each (default 5)")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="seconds of the idle window (default 60)")
    parser.add_argument("--specs", type=int, default=20,
                        help="ping specifications to each, daemon polling every 5 s (default 20)")
    parser.add_argument("--fast-specs", type=int, default=10,
                        help="ping specifications to the daemon polling every 1 s (default 10)")
    parser.add_argument("--max-pause", type=float, default=1.0,
                        help="longest random pause between specifications, s (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the pauses")
    parser.add_argument("--quick", action="store_true",
                        help="one start, 10 s idle, one specification each: checks the script")
    parser.add_argument("--write", type=Path, metavar="MD",
                        help="rewrite this benchmark's section of MD (created if missing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.starts, args.idle, args.specs, args.fast_specs, args.max_pause = 1, 10.0, 1, 1, 0.0
    if min(args.starts, args.specs, args.fast_specs) < 1 or args.idle <= 0 \
            or args.max_pause < 0:
        raise SystemExit("--starts and the specification counts must be at least 1, "
                         "--idle positive")
    results = run(args)
    shown = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "bench/probe_daemon.py", *shown])
    if args.write:
        write_section(args.write, section(results, command))
        _progress(f"wrote the probe_daemon section of {args.write}")
    print(table(results))
    print()
    print(latency_table(results))
    print()
    print(comparison(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
