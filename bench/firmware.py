# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the emulated MiniProbe's firmware, from an empty cache to a registered probe.

Measures, in one run on this machine, on a throw-away copy of ``inventory/virtual-rig`` (its
own PKI, free ports, its own build directory and firmware cache under /tmp):

* cold build (empty firmware cache: package list and .debs from the Debian mirror) and warm
  build (package list and .debs cached, base rebuilt) of the shared base plus one host image,
  with ``python -m firmware base`` and ``python -m firmware image`` as the firmware role runs
  them; the reuse of an unchanged base;
* the time per extra host: the builder alone, host after host, and ``playbooks/firmware.yml``
  on one host against all of them, with the builder's share told apart from Ansible's own;
* the image's size and that of each part;
* power-on → SSH and power-on → registered (the probe's capabilities visible to the operator
  through the RI supervisor), on a fresh flash each time;
* the probe daemon's resident memory inside the guest after registration and after N ping
  specifications through the supervisor, and its CPU time while idle;
* with ``--compare-mmdebstrap``: ``mmdebstrap --arch=mipsel`` with qemu-user for the same
  packages, cold, which is what one would do without probeforge.

Usage::

    .venv/bin/python bench/firmware.py                               # print the results
    .venv/bin/python bench/firmware.py --write docs/benchmarks.md --compare-mmdebstrap
    .venv/bin/python bench/firmware.py --quick                       # a short run of everything
"""

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: sys.path[0] is bench/, where this very file would shadow the
    # firmware package.
    sys.path[0] = str(REPO)

from bench import report  # noqa: E402
from bench.report import (  # noqa: E402
    Failed,
    Row,
    first_line,
    med,
    mib,
    plural,
    progress,
    reflow,
    render_table,
    run_logged,
    tree_bytes,
)

START = "<!-- bench:firmware:start -->"
END = "<!-- bench:firmware:end -->"

BOARD = "qemu-malta-mipsel"
# The code whose figures these are: uncommitted changes there are named in the report.
CODE = ("firmware", "rig", "images", "probe_daemon", "roles", "playbooks")
FIRST_HOST = "probe-01"

# DESIGN.md, "Performance budgets".
BUDGET_WARM_BUILD_S = 60.0  # emulated MiniProbe firmware, warm cache, per build
BUDGET_EXTRA_HOST_S = 2.0  # per extra device personalised from the same base
BUDGET_REGISTERED_S = 60.0  # power-on → registered with the supervisor
# Probe daemon on MIPS: <= 16 MB RSS; /proc reports kB meaning KiB, so 16 MB is read as 16 MiB
# (as bench/probe_daemon.py reads it).
BUDGET_RSS_KB = 16 * 1024
# "≈ 0 % CPU idle" has no number in DESIGN.md; the same reading as bench/probe_daemon.py.
IDLE_NEAR_ZERO_PERCENT = 0.1

# USER_HZ, the unit of utime and stime in /proc/PID/stat, is 100 on every Linux architecture
# but alpha and ia64; the guest has no getconf, and a python3 there costs seconds of CPU.
GUEST_CLK_TCK = 100
REGISTRATION_POLL_S = 1.0  # pause between two capability listings during a boot
CONSOLE_POLL_S = 0.1  # how often the console log is read for the boot's milestones
BOOT_TIMEOUT_S = 300.0

# What the serial console says on the way up, in boot order (the first line of each kind
# counts). The kernel prints its buffered log once the serial console is registered, so the
# first line is when the console came up, not when the kernel started.
MILESTONES: tuple[tuple[str, str], ...] = (
    ("kernel console up", "Linux version"),
    ("initramfs runs /init", "Run /init as init process"),
    ("DHCP lease", "udhcpc: lease of"),
    ("dropbear listening", "dropbear: listening on port 22"),
    ("probe daemon started", "probe-daemon: started"),
)


# -- small pure helpers ----------------------------------------------------------------------

def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: the time during which at least one
    builder process ran, however many ran at once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


@dataclass(frozen=True)
class Call:
    """One builder process the firmware role started (from the wrapper's log)."""

    start: float
    end: float
    argv: tuple[str, ...]

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def command(self) -> str:
        """``base`` or ``image`` (the word after ``-m firmware``)."""
        words = list(self.argv)
        for i, word in enumerate(words[:-2]):
            if word == "-m" and words[i + 1] == "firmware":
                return words[i + 2]
        return ""

    @property
    def host(self) -> str | None:
        words = list(self.argv)
        return words[words.index("--host") + 1] if "--host" in words[:-1] else None


def parse_calls(text: str) -> list[Call]:
    """The wrapper's log: ``START END ARGV...`` per line (seconds since the epoch)."""
    calls = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2:
            calls.append(Call(float(words[0]), float(words[1]), tuple(words[2:])))
    return calls


@dataclass(frozen=True)
class GuestSample:
    """One look at the daemon's /proc files, and the guest's uptime, over SSH."""

    rss_kb: int
    hwm_kb: int
    threads: int
    cpu_ticks: int  # utime + stime, in GUEST_CLK_TCK units
    start_ticks: int  # starttime: a restarted daemon has another
    uptime: float  # seconds, the guest's clock
    # VmRSS split: the process's own pages (objects, malloc) and mapped file pages (the
    # interpreter, libcrypto ...), shared and clean; 0 when the kernel does not say.
    anon_kb: int = 0
    file_kb: int = 0


def find_daemon(listing: str) -> int:
    """The probe daemon's PID from ``PID<TAB>command line`` lines: a Python interpreter
    running a ``probe-daemon`` script (by command line: its name is python's)."""
    found = []
    for line in listing.splitlines():
        pid, _, command = line.partition("\t")
        words = command.split()
        if pid.strip().isdigit() and words and "python" in Path(words[0]).name \
                and any(Path(word).name == "probe-daemon" for word in words[1:]):
            found.append(int(pid))
    if len(found) != 1:
        raise RuntimeError(f"expected one probe daemon in the guest, found {found}:\n{listing}")
    return found[0]


SAMPLE_MARK = "@@"


def sample_command(pid: int) -> str:
    return (f"cat /proc/{pid}/status && echo {SAMPLE_MARK}stat && cat /proc/{pid}/stat && "
            f"echo {SAMPLE_MARK}uptime && cat /proc/uptime")


def parse_sample(text: str) -> GuestSample:
    """What :func:`sample_command` printed."""
    status, _, rest = text.partition(f"{SAMPLE_MARK}stat\n")
    stat, _, uptime = rest.partition(f"{SAMPLE_MARK}uptime\n")
    values = {key: report.field(status, key).split() for key in ("VmRSS", "VmHWM", "Threads")}
    if not all(values.values()) or not stat.strip() or not uptime.strip():
        raise RuntimeError(f"no memory or CPU figures in what the guest printed:\n{text}")
    # The command name in field 2 may hold spaces and parentheses; the fields after it are
    # fixed: state is field 3, utime 14, stime 15, starttime 22.
    fields = stat.rsplit(")", 1)[1].split()
    split = [int((report.field(status, key).split() or ["0"])[0]) for key in ("RssAnon",
                                                                              "RssFile")]
    return GuestSample(int(values["VmRSS"][0]), int(values["VmHWM"][0]),
                       int(values["Threads"][0]), int(fields[11]) + int(fields[12]),
                       int(fields[19]), float(uptime.split()[0]), *split)


def idle_percent(before: GuestSample, after: GuestSample) -> float:
    """The daemon's CPU time between two samples as a share of one core, on the guest's clock."""
    if before.start_ticks != after.start_ticks:
        raise RuntimeError("the probe daemon restarted between two samples")
    return 100 * (after.cpu_ticks - before.cpu_ticks) / GUEST_CLK_TCK / (after.uptime
                                                                          - before.uptime)


def first_seen(lines: Sequence[tuple[float, str]],
               milestones: Sequence[tuple[str, str]] = MILESTONES) -> dict[str, float]:
    """When the first line holding each milestone's text appeared."""
    seen: dict[str, float] = {}
    for when, line in lines:
        for name, text in milestones:
            if name not in seen and text in line:
                seen[name] = when
    return seen


# -- the results -----------------------------------------------------------------------------

@dataclass
class Build:
    """One timed build: ``python -m firmware base`` then ``python -m firmware image``."""

    base: float
    image: float
    base_changed: bool
    image_changed: bool

    @property
    def total(self) -> float:
        return self.base + self.image


@dataclass
class PlaybookRun:
    hosts: int
    wall: float
    builder: float  # the union of the builder processes' intervals
    calls: list[Call]
    tasks: dict[str, float] = field(default_factory=dict)  # task -> seconds (profile_tasks)

    @property
    def image_calls(self) -> list[float]:
        return [c.seconds for c in self.calls if c.command == "image"]


@dataclass
class BootRun:
    ssh: float | None
    registered: float
    window: float  # how long before `registered` the last listing that missed it began
    milestones: dict[str, float]
    error: str | None = None


@dataclass
class Memory:
    registered: GuestSample
    idle: tuple[GuestSample, GuestSample]  # the idle window right after registration
    after_specs: GuestSample
    idle_later: tuple[GuestSample, GuestSample]  # the same window after the specifications
    spec_seconds: list[float]
    pid: int
    started: float  # when the daemon started, seconds of the guest's uptime

    @property
    def idle_percent(self) -> float:
        return idle_percent(*self.idle)

    @property
    def idle_later_percent(self) -> float:
        return idle_percent(*self.idle_later)

    @property
    def idle_seconds(self) -> float:
        return self.idle[1].uptime - self.idle[0].uptime

    @property
    def startup_cpu(self) -> float:
        """CPU seconds the daemon had used when first looked at after registering."""
        return self.registered.cpu_ticks / GUEST_CLK_TCK

    @property
    def age(self) -> float:
        """Seconds since the daemon started, at that first look."""
        return self.registered.uptime - self.started


@dataclass
class Mmdebstrap:
    seconds: list[float]
    command: list[str]
    packages: int  # installed in the tree
    tree_bytes: int
    version: str
    error: str | None = None  # why a run failed; the other figures stand


@dataclass
class Results:
    args: argparse.Namespace
    hosts: list[str] = field(default_factory=list)
    setup_seconds: float | None = None  # the first rig.yml run on the copy
    cold: list[Build] = field(default_factory=list)
    warm: list[Build] = field(default_factory=list)
    reuse: list[Build] = field(default_factory=list)
    sequential: list[float] = field(default_factory=list)  # builder per host, one at a time
    one: list[PlaybookRun] = field(default_factory=list)
    every: list[PlaybookRun] = field(default_factory=list)
    parts: list[tuple[str, int]] = field(default_factory=list)  # name, size in bytes
    image_bytes: int = 0
    image_name: str = ""
    base_tree_bytes: int = 0
    packages: int = 0
    kernel: str = ""
    omitted: list[str] = field(default_factory=list)
    poll_interval: float = 5.0  # the daemon's, from the rendered probe.conf
    boots: list[BootRun] = field(default_factory=list)
    memory: Memory | None = None
    mmdebstrap: Mmdebstrap | None = None
    loads: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds of each phase
    versions: list[tuple[str, str]] = field(default_factory=list)
    code: str = ""

    @property
    def per_extra_host(self) -> list[float]:
        """(wall with every host - wall with one) / extra hosts, run by run."""
        return [(b.wall - a.wall) / (b.hosts - a.hosts)
                for a, b in zip(self.one, self.every, strict=False) if b.hosts > a.hosts]

    @property
    def builder_per_extra_host(self) -> list[float]:
        return [(b.builder - a.builder) / (b.hosts - a.hosts)
                for a, b in zip(self.one, self.every, strict=False) if b.hosts > a.hosts]


# -- running things --------------------------------------------------------------------------

def _firmware(args: list[str], log: Path) -> tuple[float, dict[str, Any]]:
    """``python -m firmware ARGS --json`` as the firmware role runs it: seconds and summary."""
    # Earlier deletions and writes are flushed first, so no build pays for another's.
    os.sync()
    start = time.monotonic()
    done = run_logged([sys.executable, "-m", "firmware", *args, "--json"], log,
                       f"python -m firmware {args[0]}")
    return time.monotonic() - start, json.loads(done.stdout)


def _image_args(cache: Path, host: str, overlay: Path, out: Path,
                base: str | None = None) -> list[str]:
    """``base``: the key of a built base, as the firmware role passes it (the play looks the
    base up once, not once per host)."""
    return ["image", "--board", BOARD, "--cache", str(cache), "--host", host,
            "--overlay", str(overlay), "--out", str(out), *(["--base", base] if base else [])]


def timed_build(cache: Path, overlay: Path, out: Path, log: Path) -> Build:
    base, summary = _firmware(["base", "--board", BOARD, "--cache", str(cache)], log)
    image, built = _firmware(_image_args(cache, FIRST_HOST, overlay, out), log)
    return Build(base, image, bool(summary["changed"]), bool(built["changed"]))


def _ansible(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


# -- the inventory copy ----------------------------------------------------------------------

WRAPPER = """\
#!/bin/sh
# bench/firmware.py: times each builder process the firmware role starts, then gets out of
# the way (same arguments, same exit code).
start=$(date +%s.%N)
{python} "$@"
rc=$?
end=$(date +%s.%N)
printf '%s %s %s\\n' "$start" "$end" "$*" >> {log}
exit $rc
"""


def make_inventory(work: Path, hosts: int, cache: Path, wrapper: Path) -> tuple[Path, list[str]]:
    """inventory/virtual-rig copied as the HIL suite copies it (own PKI, free ports, own build
    directory), with MiniProbes added up to ``hosts``, the bench's firmware cache, and the
    builder started through ``wrapper``."""
    import yaml

    from hil_tests.conftest import rig_inventory_copy
    from rig.mplane_ri import free_port

    inventory = rig_inventory_copy(work)
    hosts_file = inventory / "hosts.yml"
    data = yaml.safe_load(hosts_file.read_text())
    miniprobes = data["all"]["children"]["probes"]["children"]["miniprobes"]["hosts"]
    host_vars = inventory / "host_vars"
    common = yaml.safe_load((host_vars / f"{FIRST_HOST}.yml").read_text())
    for key in ("ansible_port", "rig_console_port"):
        common.pop(key, None)
    number = len(miniprobes)
    while len(miniprobes) < hosts:
        number += 1
        name = f"probe-{number:02d}"
        miniprobes[name] = {"ansible_host": "127.0.0.1", "ansible_port": 0,
                            "rig_console_port": 0, "rig_guest_address": f"10.0.2.{20 + number}"}
        (host_vars / f"{name}.yml").write_text(yaml.safe_dump(
            {**common, "ansible_port": free_port(), "rig_console_port": free_port()}))
    names = list(miniprobes)[:hosts]
    for name in list(miniprobes)[hosts:]:
        del miniprobes[name]
        (host_vars / f"{name}.yml").unlink(missing_ok=True)
    hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
    for name in names:
        path = host_vars / f"{name}.yml"
        variables = yaml.safe_load(path.read_text())
        variables.update({"firmware_cache_dir": str(cache), "firmware_python": str(wrapper)})
        path.write_text(yaml.safe_dump(variables))
    return inventory, names


# The recap of ansible.posix.profile_tasks: "role : task name ---- 4.78s", slowest first.
_TASK_TIME = re.compile(r"^(?P<task>\S.*?) -{2,} (?P<seconds>\d+(?:\.\d+)?)s\s*$")


def parse_task_profile(text: str) -> dict[str, float]:
    """Seconds of each task, from the profile_tasks recap at the end of a playbook's output
    (a task's wall time, over all the hosts it ran on)."""
    _, found, recap = text.rpartition("TASKS RECAP")
    tasks: dict[str, float] = {}
    for line in recap.splitlines() if found else []:
        match = _TASK_TIME.match(line.strip())
        if match:
            tasks[match["task"]] = tasks.get(match["task"], 0.0) + float(match["seconds"])
    return tasks


def run_playbook(inventory: Path, playbook: str, log: Path, calls_log: Path,
                 limit: str | None = None) -> PlaybookRun:
    calls_log.write_text("")
    log.unlink(missing_ok=True)
    command = [_ansible("ansible-playbook"), "-i", str(inventory),
               str(REPO / "playbooks" / playbook)] + (["--limit", limit] if limit else [])
    # ansible.posix (in the pinned ansible package) times each task; its recap says where
    # Ansible's own time goes.
    env = {**os.environ, "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"}
    os.sync()
    start = time.time()
    run_logged(command, log, f"ansible-playbook {playbook}", env=env, capture=False)
    wall = time.time() - start
    calls = parse_calls(calls_log.read_text())
    hosts = len({c.host for c in calls if c.command == "image"})
    return PlaybookRun(hosts, wall, union_seconds((c.start, c.end) for c in calls), calls,
                       parse_task_profile(log.read_text(errors="replace")))


# -- the builds ------------------------------------------------------------------------------

def build_phases(args: argparse.Namespace, work: Path, results: Results) -> Path:
    """Everything before the boots; returns the inventory copy."""
    logs = work / "logs"
    cache = work / "cache"  # the warm cache every later step shares
    build_dir = work / "build"
    wrapper = work / "firmware-python.sh"
    calls_log = work / "builder-calls.log"
    wrapper.write_text(WRAPPER.format(python=shlex.quote(sys.executable),
                                      log=shlex.quote(str(calls_log))))
    wrapper.chmod(0o755)
    inventory, names = make_inventory(work, args.hosts, cache, wrapper)
    results.hosts = names
    overlay = build_dir / ".overlay" / FIRST_HOST

    progress(f"setup: ansible-playbook playbooks/rig.yml on a copy of the rig with "
              f"{len(names)} MiniProbes, empty firmware cache")
    setup = run_playbook(inventory, "rig.yml", logs / "setup.log", calls_log)
    results.setup_seconds = setup.wall
    progress(f"setup: {setup.wall:.0f} s")

    if "cold" not in args.skip:
        for run in range(args.runs):
            cold = work / f"cold-{run}"
            try:
                build = timed_build(cold / "cache", overlay, cold / "out" / FIRST_HOST,
                                    logs / f"cold-{run}.log")
            finally:
                shutil.rmtree(cold, ignore_errors=True)
            if not (build.base_changed and build.image_changed):
                raise Failed("a cold build found something already built")
            results.cold.append(build)
            progress(f"cold build {run + 1}/{args.runs}: base {build.base:.1f} s, "
                      f"image {build.image:.1f} s")

    if "warm" not in args.skip:
        for run in range(args.runs):
            warm = work / f"warm-{run}"
            # The package list and the .debs of a warm cache, nothing built: copy2 keeps the
            # list's time stamp, so it is not fetched again.
            for name in ("apt", "debs"):
                shutil.copytree(cache / name, warm / "cache" / name, symlinks=True)
            try:
                build = timed_build(warm / "cache", overlay, warm / "out" / FIRST_HOST,
                                    logs / f"warm-{run}.log")
            finally:
                shutil.rmtree(warm, ignore_errors=True)
            if not (build.base_changed and build.image_changed):
                raise Failed("a warm build found its base already built")
            results.warm.append(build)
            progress(f"warm build {run + 1}/{args.runs}: base {build.base:.1f} s, "
                      f"image {build.image:.1f} s")

    for _ in range(args.runs):
        build = timed_build(cache, overlay, build_dir / FIRST_HOST, logs / "reuse.log")
        if build.base_changed or build.image_changed:
            raise Failed("rebuilding from an unchanged cache changed something")
        results.reuse.append(build)
    progress(f"reuse of the unchanged base: {med([b.base for b in results.reuse]):.2f} s")

    image = next((build_dir / FIRST_HOST).glob("*-sysupgrade.bin"))
    _image_facts(image, cache, results)

    if "hosts" not in args.skip:
        scratch = work / "scratch"
        _, found = _firmware(["base", "--board", BOARD, "--cache", str(cache)], logs / "hosts.log")
        for _ in range(args.runs):
            for name in names:
                seconds, built = _firmware(_image_args(cache, name, build_dir / ".overlay" / name,
                                                       scratch / name, found["key"]),
                                           logs / "hosts.log")
                if not built["changed"]:
                    raise Failed(f"{name}: the builder found its fresh output already there")
                results.sequential.append(seconds)
            shutil.rmtree(scratch, ignore_errors=True)
        progress(f"builder per host, one after another: {med(results.sequential):.2f} s")
        for run in range(args.runs):
            # Outputs gone, so that every host's image is really built and put in place.
            for name in names:
                shutil.rmtree(build_dir / name, ignore_errors=True)
            one = run_playbook(inventory, "firmware.yml", logs / f"playbook-{run}-one.log",
                               calls_log, limit=FIRST_HOST)
            for name in names:
                shutil.rmtree(build_dir / name, ignore_errors=True)
            every = run_playbook(inventory, "firmware.yml", logs / f"playbook-{run}-all.log",
                                 calls_log)
            if (one.hosts, every.hosts) != (1, len(names)):
                raise Failed(f"the playbook built {one.hosts} and {every.hosts} images, "
                             f"not 1 and {len(names)}")
            results.one.append(one)
            results.every.append(every)
            progress(f"playbook {run + 1}/{args.runs}: 1 host {one.wall:.1f} s, "
                      f"{every.hosts} hosts {every.wall:.1f} s")
    return inventory


def _image_facts(image: Path, cache: Path, results: Results) -> None:
    from firmware.image import read_header

    header = read_header(image)
    results.image_name = image.name
    results.image_bytes = image.stat().st_size
    results.parts = [(part.name, part.size) for part in header.parts]
    manifest = json.loads((image.parent / "manifest.json").read_text())
    results.packages = len(manifest["packages"])
    results.kernel = manifest["kernel"]
    results.omitted = [o["component"] for o in manifest["omitted"]]
    conf = image.parent.parent / ".overlay" / FIRST_HOST / "etc" / "mplane" / "probe.conf"
    with contextlib.suppress(OSError, ValueError):
        results.poll_interval = float(report.field(conf.read_text(), "poll_interval", "="))
    tree = cache / "base" / manifest["base"] / "tree"
    results.base_tree_bytes = tree_bytes(tree)


# -- the boots -------------------------------------------------------------------------------

class ConsoleWatcher:
    """Notes when each line of a console log appeared (time.monotonic())."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="console-watcher", daemon=True)

    def __enter__(self) -> "ConsoleWatcher":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()

    def _loop(self) -> None:
        while not self._stop.wait(CONSOLE_POLL_S):
            self.scan()

    def scan(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        if not data:
            return
        now = time.monotonic()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        self.lines += [(now, line.decode(errors="replace")) for line in complete]


def boot_phase(args: argparse.Namespace, inventory: Path, work: Path, results: Results) -> None:
    from rig import RigError
    from rig.board import EmulatedBoard
    from rig.inventory import load_plan
    from rig.mplane_ri import RIError
    from rig.testbed import MEASUREMENT, Registration, Testbed, device_of

    plan = load_plan(inventory, _ansible("ansible-inventory"))
    # One board: the boots are timed one at a time, with the machine otherwise quiet. The
    # supervisor runs on the host (a fresh one per boot, not the appliance: bench/appliance.py
    # times that), so what is timed is the board alone.
    plan = dataclasses.replace(plan, probes=plan.probes[:1], appliance=None)
    probe = plan.probes[0]
    testbed = Testbed(plan, repo=REPO, build_dir=work / "build", progress=lambda _: None)
    testbed.state.mkdir(parents=True, exist_ok=True)
    board_dir = testbed.state / probe.name
    try:
        testbed.start_dns()
        for run in range(args.runs):
            last = run == args.runs - 1
            # A fresh supervisor: the registration of the previous boot must not count.
            testbed.start_supervisor()
            # A fresh flash: every boot is the device's first power-on.
            shutil.rmtree(board_dir, ignore_errors=True)
            flash = testbed.flash(probe)
            board = EmulatedBoard(
                flash, board_dir, ssh_port=probe.ssh_port, console_log=board_dir / "console.log",
                console_port=probe.console_port, guest_address=probe.guest_address,
                ssh_key=testbed.ssh_key)
            outcome: dict[str, Any] = {}
            with ConsoleWatcher(board.console_log) as console:
                start = time.monotonic()
                testbed.boards[probe.name] = board
                board.start()

                def wait_ssh(board: EmulatedBoard = board, start: float = start,
                             outcome: dict[str, Any] = outcome) -> None:
                    try:
                        board.wait_ssh(BOOT_TIMEOUT_S)
                        outcome["ssh"] = time.monotonic() - start
                    except RigError as exc:
                        outcome["error"] = str(exc).splitlines()[0]

                ssh_thread = threading.Thread(target=wait_ssh, name="wait-ssh", daemon=True)
                ssh_thread.start()
                token, previous = None, start
                while token is None:
                    if board.error:
                        raise Failed(f"{probe.name}: {board.error}")
                    asked = time.monotonic()
                    with contextlib.suppress(RIError):
                        token = next((t for t, c in testbed.capabilities().items()
                                      if c.get("label") == MEASUREMENT
                                      and device_of(c) == probe.name), None)
                    seen = time.monotonic()
                    if token is None:
                        previous = asked
                        if seen - start > BOOT_TIMEOUT_S:
                            raise Failed(f"{probe.name} not registered within "
                                         f"{BOOT_TIMEOUT_S:.0f} s; console {board.console_log}")
                        time.sleep(max(0.0, REGISTRATION_POLL_S - (seen - asked)))
                ssh_thread.join(BOOT_TIMEOUT_S)
            marks = {name: when - start for name, when in first_seen(console.lines).items()}
            boot = BootRun(outcome.get("ssh"), seen - start, seen - previous, marks,
                           outcome.get("error"))
            results.boots.append(boot)
            progress(f"boot {run + 1}/{args.runs}: SSH {boot.ssh or float('nan'):.1f} s, "
                      f"registered {boot.registered:.1f} s")
            if last:
                results.loads["memory"] = report.load_average()
                results.memory = guest_memory(args, board, testbed,
                                              Registration(probe.name, token, boot.registered))
            board.stop()
            del testbed.boards[probe.name]
            testbed.stop_supervisor()
    finally:
        testbed.stop()


def guest_memory(args: argparse.Namespace, board: Any, testbed: Any,
                 registration: Any) -> Memory:
    listing = board.ssh("for p in /proc/[0-9]*; do printf '%s\\t' \"${p#/proc/}\"; "
                        "tr '\\0' ' ' < \"$p/cmdline\" 2>/dev/null; echo; done").stdout
    pid = find_daemon(listing)

    def sample() -> GuestSample:
        return parse_sample(board.ssh(sample_command(pid)).stdout)

    def idle() -> tuple[GuestSample, GuestSample]:
        before = sample()
        time.sleep(args.idle)
        return before, sample()

    registered = sample()
    progress(f"probe daemon pid {pid}: VmRSS {mib(registered.rss_kb * 1024)}; "
              f"idle for {args.idle:g} s")
    first_idle = idle()
    specs = []
    for i in range(args.specs):
        start = time.monotonic()
        testbed.measure(registration)
        specs.append(time.monotonic() - start)
        progress(f"specification {i + 1}/{args.specs}: {specs[-1]:.1f} s")
    after = sample()
    progress(f"VmRSS {mib(after.rss_kb * 1024)}; idle again for {args.idle:g} s")
    later_idle = idle()
    if later_idle[1].start_ticks != registered.start_ticks:
        raise Failed("the probe daemon restarted during the measurements")
    return Memory(registered, first_idle, after, later_idle, specs, pid,
                  registered.start_ticks / GUEST_CLK_TCK)


# -- mmdebstrap ------------------------------------------------------------------------------

BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-mipsel.conf")


def mmdebstrap_command(packages: Sequence[str], suite: str, target: Path,
                       mirror: str) -> list[str]:
    # The custom variant installs nothing but --include, with one `dpkg --install` for all of
    # them, and libc6's preinst then finds no shell; essential is the smallest variant that
    # works without hand-written hooks (smaller than minbase).
    return ["mmdebstrap", "--mode=unshare", "--arch=mipsel", "--variant=essential",
            # check/qemu wants arch-test and the host's binfmt_misc; ours is private.
            "--skip=check/qemu", f"--include={','.join(packages)}", suite, str(target), mirror]


def mmdebstrap_phase(args: argparse.Namespace, work: Path) -> Mmdebstrap:
    from firmware.recipe import load_recipe

    board = load_recipe().board(BOARD)
    packages = [*board.packages, board.kernel]
    version = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    seconds, command, installed, size, error = [], [], 0, 0, None
    for run in range(args.mmdebstrap_runs):
        target = work / f"mmdebstrap-{run}" / "root"
        target.parent.mkdir(parents=True)
        command = mmdebstrap_command(packages, board.suite, target, board.mirror)
        try:
            os.sync()
            seconds.append(report.run_in_namespace(
                command, work / "logs" / "mmdebstrap.log", "mmdebstrap",
                binfmt=BINFMT_CONF.read_text().strip()).seconds)
            status = (target / "var" / "lib" / "dpkg" / "status").read_text()
            installed = status.count("Status: install ok installed")
            size = tree_bytes(target)
        except (Failed, OSError) as exc:
            # The comparison is someone else's tool: its failure is reported, and the
            # figures measured before it are kept.
            error = str(exc).splitlines()[0]
            progress(f"mmdebstrap {run + 1}/{args.mmdebstrap_runs}: {exc}")
            break
        finally:
            shutil.rmtree(target.parent, ignore_errors=True)
        progress(f"mmdebstrap {run + 1}/{args.mmdebstrap_runs}: {seconds[-1]:.0f} s, "
                  f"{installed} packages")
    shown = [word if not word.startswith(str(work)) else "DIR" for word in command]
    return Mmdebstrap(seconds, shown, installed, size, version, error)


# -- the machine -----------------------------------------------------------------------------

def _forks() -> str:
    return os.environ.get("ANSIBLE_FORKS", "5")


def versions() -> list[tuple[str, str]]:
    return [
        ("QEMU", first_line(["qemu-system-mipsel", "--version"])
         + " (TCG: no KVM for MIPS), 1 vCPU, 256 MiB"),
        ("Ansible", first_line([_ansible("ansible-playbook"), "--version"])
         + f", forks {_forks()}"),
        ("mksquashfs", first_line(["mksquashfs", "-version"])),
    ]


# -- the run ---------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> Results:
    results = Results(args)
    results.loads["start"] = report.load_average()
    results.code = report.code_version(CODE)
    results.versions = versions()
    started = time.monotonic()
    with report.work_dir("pf-firmware-bench-", args.tmpdir, args.keep) as work:
        inventory = build_phases(args, work, results)
        results.phases["builds"] = time.monotonic() - started
        if "boot" not in args.skip:
            mark = time.monotonic()
            results.loads["boot"] = report.load_average()
            boot_phase(args, inventory, work, results)
            results.phases["boots"] = time.monotonic() - mark
        if args.compare_mmdebstrap:
            mark = time.monotonic()
            results.loads["mmdebstrap"] = report.load_average()
            results.mmdebstrap = mmdebstrap_phase(args, work)
            results.phases["mmdebstrap"] = time.monotonic() - mark
    results.loads["end"] = report.load_average()
    results.phases["total"] = time.monotonic() - started
    return results


# -- the report ------------------------------------------------------------------------------

def build_rows(r: Results) -> list[Row]:
    warm_budget = f"≤ {BUDGET_WARM_BUILD_S:g} s"
    host_budget = f"≤ {BUDGET_EXTRA_HOST_S:g} s"
    n = len(r.hosts)
    calls = [s for run in r.every for s in run.image_calls]
    rows = [
        Row("cold build: empty cache → base + one host image", [b.total for b in r.cold]),
        Row("… of which `firmware base` (packages downloaded)", [b.base for b in r.cold]),
        Row("warm build: package list and .debs cached, base rebuilt → base + one host "
            "image", [b.total for b in r.warm], budget=BUDGET_WARM_BUILD_S,
            budget_text=warm_budget),
        Row("… of which `firmware base`", [b.base for b in r.warm]),
        Row("… of which `firmware image`", [b.image for b in r.warm]),
        Row("unchanged base reused (`firmware base`, nothing to do)", [b.base for b in r.reuse]),
        Row("unchanged host image (`firmware image`, identical output left in place)",
            [b.image for b in r.reuse]),
        Row(f"extra host, builder alone: `firmware image` per host, one after another, "
            f"{n} hosts", r.sequential, budget=BUDGET_EXTRA_HOST_S, budget_text=host_budget),
        Row(f"extra host, whole `playbooks/firmware.yml`: (wall with {n} hosts - wall with 1) "
            f"/ {n - 1}", r.per_extra_host, budget=BUDGET_EXTRA_HOST_S,
            budget_text=host_budget),
        Row("… of which the builder (time any builder process ran, same difference)",
            r.builder_per_extra_host),
        Row(f"`firmware image` per host inside that playbook ({n} hosts, run concurrently)",
            calls),
        Row("`playbooks/firmware.yml`, 1 host (`--limit`), wall", [x.wall for x in r.one]),
        Row(f"`playbooks/firmware.yml`, {n} hosts, wall", [x.wall for x in r.every]),
        Row(f"… of which Ansible itself ({n} hosts: wall - time any builder process ran)",
            [x.wall - x.builder for x in r.every]),
    ]
    if r.setup_seconds is not None:
        rows.append(Row(f"first `playbooks/rig.yml` on the copy: SSH key, PKI, base from an "
                        f"empty cache, {n} images", [r.setup_seconds]))
    return rows


def size_table(r: Results) -> str:
    lines = ["| part | bytes | MiB | share of the file |", "|---|---:|---:|---:|"]
    for name, size in r.parts:
        lines.append(f"| {name} | {size:,} | {size / 2**20:.2f} | "
                     f"{100 * size / r.image_bytes:.1f} % |")
    lines.append(f"| whole file (header, parts, 4 KiB alignment) | {r.image_bytes:,} | "
                 f"{r.image_bytes / 2**20:.2f} | 100 % |")
    return "\n".join(lines)


def boot_rows(r: Results) -> list[Row]:
    rows = [
        Row("power-on → SSH runs a command", [b.ssh for b in r.boots if b.ssh is not None]),
        Row("power-on → registered: probe's `ping-average-ip4` listed to the operator through "
            "the supervisor", [b.registered for b in r.boots], budget=BUDGET_REGISTERED_S,
            budget_text=f"≤ {BUDGET_REGISTERED_S:g} s"),
    ]
    for name, _ in MILESTONES:
        rows.append(Row(f"… console: {name}", [b.milestones[name] for b in r.boots
                                                if name in b.milestones]))
    return rows


def memory_rows(r: Results) -> list[Row]:
    m = r.memory
    if m is None:
        return []
    budget = "≤ 16 MB RSS"
    specs = plural(len(m.spec_seconds), "ping specification")
    return [
        Row("VmRSS after registration", [m.registered.rss_kb], "MiB", BUDGET_RSS_KB, budget),
        Row("VmHWM (peak) after registration", [m.registered.hwm_kb], "MiB", BUDGET_RSS_KB,
            budget),
        *([Row("… of which the daemon's own pages after registration (RssAnon: objects, "
               "malloc, stacks)", [m.registered.anon_kb], "MiB"),
           Row("… of which mapped file pages after registration (RssFile: python3.11, "
               "libcrypto, libc …; shared, clean)", [m.registered.file_kb], "MiB")]
          if m.registered.anon_kb else []),
        Row(f"VmRSS after {specs}", [m.after_specs.rss_kb], "MiB", BUDGET_RSS_KB, budget),
        Row(f"VmHWM (peak) after {specs}", [m.after_specs.hwm_kb], "MiB", BUDGET_RSS_KB,
            budget),
        Row(f"idle CPU over {m.idle_seconds:.0f} s right after registration (% of one "
            "emulated core)", [m.idle_percent], "%", IDLE_NEAR_ZERO_PERCENT, "≈ 0 % CPU idle",
            note=f"≈ 0 read as below {IDLE_NEAR_ZERO_PERCENT:g} % of a core"),
        Row(f"idle CPU over {m.idle_seconds:.0f} s after the {specs} (% of one emulated core)",
            [m.idle_later_percent], "%", IDLE_NEAR_ZERO_PERCENT, "≈ 0 % CPU idle",
            note=f"≈ 0 read as below {IDLE_NEAR_ZERO_PERCENT:g} % of a core"),
    ]


def comparison(r: Results) -> str:
    m = r.mmdebstrap
    if m is not None and m.error:
        return f"**Against mmdebstrap**: no figure, mmdebstrap failed: {m.error}"
    if m is None or not m.seconds:
        return ("No mmdebstrap comparison in this run (it takes minutes: "
                "`--compare-mmdebstrap` adds it).")
    theirs = statistics.median(m.seconds)
    cold_base = med([b.base for b in r.cold])
    cold = med([b.total for b in r.cold])
    warm = med([b.total for b in r.warm])
    text = (f"**Against mmdebstrap** (cold, same packages): `mmdebstrap` took "
            f"{theirs:.0f} s ({plural(len(m.seconds), 'run')}"
            + (f", {min(m.seconds):.0f}-{max(m.seconds):.0f} s" if len(m.seconds) > 1 else "")
            + ")")
    if cold_base is not None and cold is not None:
        text += (f", probeforge's cold `firmware base` {cold_base:.1f} s: "
                 f"**{theirs / cold_base:.1f}x**"
                 f"; against the cold base plus one host image ({cold:.1f} s) "
                 f"{theirs / cold:.1f}x")
    if warm is not None:
        text += f", against the warm build ({warm:.1f} s) {theirs / warm:.1f}x"
    return text + "."


LOAD_LABELS = {"start": "at the start", "boot": "before the boots",
               "memory": "before the guest's memory and idle CPU",
               "mmdebstrap": "before mmdebstrap", "end": "at the end"}
PHASE_LABELS = {"builds": "builds and playbooks", "boots": "boots and the guest's figures",
                "mmdebstrap": "mmdebstrap"}


def task_growth(one: Sequence[PlaybookRun], every: Sequence[PlaybookRun]
                ) -> list[tuple[str, float, float]]:
    """(task, median seconds with every host, median growth per extra host), the tasks that
    grow most first."""
    if not one or not every or every[0].hosts <= one[0].hosts:
        return []
    extra = every[0].hosts - one[0].hosts
    names = {name for run in every for name in run.tasks}
    rows = []
    for name in names:
        total = statistics.median(run.tasks.get(name, 0.0) for run in every)
        alone = statistics.median(run.tasks.get(name, 0.0) for run in one)
        rows.append((name, total, (total - alone) / extra))
    return sorted(rows, key=lambda row: (-row[2], row[0]))


def notes(r: Results) -> str:
    paragraphs = []
    if r.sequential and r.every:
        calls = med([s for run in r.every for s in run.image_calls]) or 0.0
        growth = task_growth(r.one, r.every)
        tasks = "; ".join(f"`{name}` {total:.1f} s (+{per:.2f} s a host)"
                          for name, total, per in growth[:5])
        paragraphs.append(
            f"**Per extra host.** The builder alone costs {med(r.sequential):.2f} s a host "
            f"(median): `python -m firmware image` starts Python, stages the host's overlay, "
            f"packs it as a squashfs, copies the kernel, initramfs and root squashfs into the "
            f"{mib(r.image_bytes)} image and hashes it (header, manifest, SHA256SUMS). In the "
            f"playbook Ansible runs up to {_forks()} hosts' builders at once on this machine's "
            f"{os.cpu_count()} cores, so each takes {calls:.2f} s there. The rest of the "
            f"playbook's time is Ansible's: with {len(r.hosts)} hosts the tasks that grow most "
            f"with the hosts were (ansible.posix.profile_tasks, wall time of the task over all "
            f"hosts, medians): {tasks or 'not recorded'}.")
    if r.boots:
        window = med([b.window for b in r.boots]) or 0.0
        paragraphs.append(
            f"**Boot.** QEMU emulates the MIPS CPU in software (TCG). \"Power-on\" is the "
            f"launcher's start (`EmulatedBoard.start`: it reads the flash, checks the image and "
            f"extracts kernel and initramfs, then starts QEMU). \"Registered\" is when the RI "
            f"client, with the operator's certificate, first listed the probe's "
            f"`ping-average-ip4` (its `source.device` naming the probe); listings run back to "
            f"back, {REGISTRATION_POLL_S:g} s apart, and each starts the RI client anew, so the "
            f"moment is known to within {window:.1f} s (median: from the start of the last "
            f"listing that missed it). SSH is tried every second (`EmulatedBoard.wait_ssh`). "
            f"The console milestones are when the line appeared in the console log (read every "
            f"{CONSOLE_POLL_S:g} s). Every boot is a first boot: the flash is new, so the "
            f"first-boot scripts run and dropbear makes its host keys.")
    if r.memory is not None:
        m = r.memory
        poll = r.poll_interval
        polls = m.idle_seconds / poll if poll else 0.0
        idle_cpu = m.idle_later_percent / 100 * m.idle_seconds
        per_poll = (f", {idle_cpu / polls:.2f} s of CPU per poll"
                    if polls and idle_cpu > 0 else "")
        paragraphs.append(
            f"**The daemon in the guest.** Found by its command line (a python3 running "
            f"`/usr/bin/probe-daemon`, pid {m.pid}, {m.after_specs.threads} threads at the end), "
            f"its figures read over SSH from `/proc/{m.pid}/status` and `/proc/{m.pid}/stat`; "
            f"the idle windows are timed with the guest's `/proc/uptime` and CPU time counts "
            f"in ticks of {1000 // GUEST_CLK_TCK} ms, so one tick over a window is "
            f"{100 / GUEST_CLK_TCK / m.idle_seconds:.3f} % of a core. When first looked at "
            f"after registering, the daemon had run for {m.age:.0f} s and used "
            f"{m.startup_cpu:.1f} s of CPU: starting the interpreter, importing (`ssl` among "
            f"others) and registering take most of the time from the daemon's start to "
            f"registration on the emulated CPU. It polls the supervisor every "
            f"{poll:g} s over mutual TLS on a connection it keeps open "
            f"(`probe_daemon/transport.py`, `Supervisor`): the idle figures are what those "
            f"polls cost ({polls:.0f} polls in a window{per_poll}). The "
            f"{plural(len(m.spec_seconds), 'specification')} (`ping-average-ip4` from the probe "
            f"to the host, `Testbed.measure`: `when = now + 5s / 1s`) took "
            f"{med(m.spec_seconds) or 0:.1f} s each from POST to result (median), most of it "
            f"the supervisor's 5 s stall on every POST and its 1 s relay cycle "
            f"(see the probe daemon's section).")
    if r.omitted:
        paragraphs.append(f"Left out of this image: {', '.join(r.omitted)} (its source is not "
                          "in the artifact cache here), so the base has no Tstat and no "
                          "libpcap; with Tstat the base and a cold build grow by its cross "
                          "build.")
    return "\n\n".join(paragraphs)


def section(r: Results, command: str) -> str:
    machine_lines = report.machine_lines(
        r.versions, tmpdir=r.args.tmpdir, code=r.code, loads=r.loads, load_labels=LOAD_LABELS,
        phases=r.phases, phase_labels=PHASE_LABELS,
        sharing="other tests (QEMU boards) may share the machine")
    n = len(r.hosts)
    m = r.mmdebstrap
    mmdebstrap = "" if m is None else f"""
- *mmdebstrap* ({m.version}), cold, in a throw-away directory, as root in a user namespace
  of its own with qemu-mipsel registered in a private binfmt_misc (the host's is left
  alone, and its dpkg is never used): `{shlex.join(m.command)}`. It resolves and
  downloads with apt, unpacks with dpkg and runs every maintainer script under qemu-user
  (the kernel package's pull in initramfs-tools and run `update-initramfs`). It installed
  {m.packages} packages ({mib(m.tree_bytes)} of files, against {r.packages} packages and
  {mib(r.base_tree_bytes)} in probeforge's base tree) and stops at a directory: no
  squashfs, no initramfs of one's own, no image, no per-host layer. The custom variant
  (only the listed packages) fails as is: dpkg installs everything in one call and
  libc6's preinst finds no shell; essential is the smallest variant that works without
  hand-written hooks."""
    body = f"""\
## MiniProbe firmware: builds, image, boot and the daemon in the guest (`bench/firmware.py`)

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.

Machine:

{machine_lines}

Method. One run, as root, on a copy of `inventory/virtual-rig` in a temporary directory made
as the HIL suite makes it (`rig_inventory_copy`: its own PKI, free loopback ports, its own
build directory) with {n} MiniProbes (`{r.hosts[0] if r.hosts else '?'}` …
`{r.hosts[-1] if r.hosts else '?'}`) and its own firmware cache; nothing under the
repository's `.cache/` or `build/` is touched. Board `{BOARD}`: {r.packages} Debian packages
and kernel `{r.kernel}`. Each timed step starts after `sync`.

- *Setup*: `ansible-playbook playbooks/rig.yml` on the copy (SSH key, PKI, the base from an
  empty cache, every host's overlay and image); its cache is the warm cache below.
- *Cold build*: `python -m firmware base` then `python -m firmware image` for
  `{FIRST_HOST}` (its overlay as the firmware role rendered it), as the role runs them,
  on an empty cache: the mipsel package list and the .debs come from the Debian mirror.
- *Warm build*: the same on a cache holding only the package list (`apt/`) and the .debs
  (`debs/`) of a warm cache: the probe daemon's package, the base tree, its squashfs and
  the initramfs are built again.
- *Reuse*: both commands again on the warm cache; nothing changes.
- *Extra host, builder*: `python -m firmware image` for each of the {n} hosts from their
  rendered overlays, one after another, each into an empty output directory.
- *Extra host, playbook*: `ansible-playbook playbooks/firmware.yml` (PKI check, overlays,
  images) with `--limit {FIRST_HOST}` and then on all {n} hosts, outputs removed before
  each; the role starts the builder through a wrapper that logs each process's start and
  end, which tells the builder's time from Ansible's own.
- *Boot*: the RI supervisor as `rig/testbed.py` starts it (TLS, the copy's PKI), a fresh
  flash holding `{FIRST_HOST}`'s image (`create_flash`, `install_image`), and one
  `EmulatedBoard`; a fresh supervisor for every boot. {plural(len(r.boots), 'boot')}.
- *Daemon in the guest*: after the last boot registered, over SSH: VmRSS and VmHWM (and
  VmRSS's split into RssAnon and RssFile), then the daemon's CPU time over
  {r.args.idle:g} s of idling, then {plural(r.args.specs, 'ping specification')} through the
  supervisor with the RI client (`Testbed.measure`), then VmRSS, VmHWM and the idle CPU
  time again.{mmdebstrap}

Build times (seconds):

{render_table(build_rows(r), 's')}

Image `{r.image_name}`:

{size_table(r)}

Boot of `{FIRST_HOST}` (seconds from power-on):

{render_table(boot_rows(r), 's')}

Probe daemon inside the guest (MiB, or % of one core):

{render_table(memory_rows(r), 'MiB / %')}

{comparison(r)}

{notes(r)}"""
    return f"{START}\n{reflow(body).rstrip()}\n{END}\n"


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of ``path``, leaving every other section alone."""
    report.write_section(path, text, START, END)


# -- driver ----------------------------------------------------------------------------------

PHASES = ("cold", "warm", "hosts", "boot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/firmware.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="cold, warm and reuse builds, playbook pairs and boots (default 3)")
    parser.add_argument("--hosts", type=int, default=8,
                        help="MiniProbes in the inventory copy (default 8, at least 2)")
    parser.add_argument("--specs", type=int, default=10,
                        help="ping specifications before the second memory figure (default 10)")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of the guest's idle CPU window (default 30)")
    parser.add_argument("--compare-mmdebstrap", action="store_true",
                        help="also time mmdebstrap --arch=mipsel for the same packages (minutes)")
    parser.add_argument("--mmdebstrap-runs", type=int, default=1,
                        help="mmdebstrap runs with --compare-mmdebstrap (default 1)")
    parser.add_argument("--skip", action="append", choices=PHASES, default=[],
                        help="leave a phase out (repeatable); the setup build always runs")
    parser.add_argument("--quick", action="store_true",
                        help="1 run, 2 hosts, 1 specification, 10 s idle: checks the script")
    parser.add_argument("--tmpdir", help="where the work directory goes (default: $TMPDIR, /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--write", type=Path, metavar="MD",
                        help="rewrite this benchmark's section of MD (created if missing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.runs, args.hosts, args.specs, args.idle = 1, 2, 1, 10.0
    if args.runs < 1 or args.hosts < 2 or args.specs < 1 or args.idle <= 0 \
            or args.mmdebstrap_runs < 1:
        raise SystemExit("--runs, --specs and --mmdebstrap-runs must be at least 1, --hosts at "
                         "least 2, --idle positive")
    if args.compare_mmdebstrap and shutil.which("mmdebstrap") is None:
        raise SystemExit("mmdebstrap not found: apt-get install mmdebstrap qemu-user-static")
    results = run(args)
    shown = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "bench/firmware.py", *shown])
    if args.write:
        write_section(args.write, section(results, command))
        progress(f"wrote the firmware section of {args.write}")
    print(render_table(build_rows(results), "s"))
    print()
    print(size_table(results))
    print()
    print(render_table(boot_rows(results), "s"))
    print()
    print(render_table(memory_rows(results), "MiB / %"))
    print()
    print(comparison(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
