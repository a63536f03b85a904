# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the virtual appliance, from an empty cache to a supervisor answering.

Measures, in one run on this machine, with a cache and output directories of its own under
/tmp (the repository's ``.cache/appliance`` and ``build/`` are not touched):

* cold build: ``python -m appliance image`` on an empty cache (package lists and .debs from
  the Debian mirror, mmdebstrap, the roles through the chroot connection, generalising, the
  disk, the qcow2/VMDK/OVA exports), as ``playbooks/appliance.yml`` runs it;
* warm build: the same with the .debs cached and the base and images made again (what any
  change to the recipe, the roles or the probe daemon costs), several times; the reuse of an
  unchanged build. The builder's own progress lines, timed as they come, split each build
  into its steps;
* a host's seed disk (``python -m appliance seed``) for a test deployment;
* the sizes: qcow2, VMDK, OVA, the provisioned tree, the seed disk, the .debs downloaded;
* power-on → SSH, → the supervisor answering the operator over mutual TLS, → the appliance's
  own probe daemon registered, booting the qcow2 with the seed (first boot every time:
  ``snapshot=on``), several times, one VM at a time (the lock /tmp/pf-qemu.lock);
* in the same run, ``debootstrap --variant=minbase`` for the same suite, mirror and packages,
  cold, which is what one would start from without probeforge.

Usage (as root)::

    .venv/bin/python bench/appliance.py                              # print the results
    .venv/bin/python bench/appliance.py --write docs/benchmarks.md
    .venv/bin/python bench/appliance.py --quick                      # one of everything
"""

import argparse
import http.client
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: sys.path[0] is bench/, where this very file would shadow the
    # appliance package.
    sys.path[0] = str(REPO)

from bench import report  # noqa: E402
from bench.report import Failed, Row, Timed, Usage  # noqa: E402
from tests.support.appliance import CLIENT_PORT, HOST, operator_get, write_inventory  # noqa: E402

START = "<!-- bench:appliance:start -->"
END = "<!-- bench:appliance:end -->"

# DESIGN.md, "Performance budgets".
BUDGET_WARM_BUILD_S = 300.0  # appliance image, warm cache: ≤ 5 min
BUDGET_ANSWERING_S = 20.0  # power-on → supervisor answering, with KVM
BOOT_TIMEOUT_S = 600.0  # under TCG on a shared machine; ApplianceVM's SSH wait is its own
POLL_S = 0.5  # pause between two asks of the supervisor during a boot
# The code whose figures these are: uncommitted changes there are named in the report.
CODE = ("appliance", "images", "roles", "probe_daemon", "packaging", "pkgformats", "pki",
        "builds", "rig", "playbooks")

# The builder's steps, each from the first progress line that begins with its marker
# (appliance/rootfs.py, provision.py, build.py, disk.py, export.py), until the next.
BUILD_FIRST = "start-up: sandbox, hashing the inputs"
BUILD_STEPS: tuple[tuple[str, str], ...] = (
    ("root filesystem: mmdebstrap", "rootfs: mmdebstrap "),
    ("roles through the chroot connection", "provision: ansible-playbook "),
    ("generalising, the base's record", "provision: done "),
    ("disk: grub, ESP, ext4 root, GPT", "disk: "),
    ("compressed qcow2", "export: compressed qcow2"),
    ("streamOptimized VMDK", "export: streamOptimized VMDK"),
    ("OVA, checksums, manifest", "export: OVF descriptor"),
)
MMDEBSTRAP_STEP = BUILD_STEPS[0][0]
DEBOOTSTRAP_FIRST = "start-up"
DEBOOTSTRAP_STEPS: tuple[tuple[str, str], ...] = (
    ("index, resolving, downloads", "I: Retrieving InRelease"),
    ("unpacking and configuring", "I: Extracting "),
)
# debootstrap's resolver follows neither virtual packages nor alternatives that name one:
# dconf-service (of cockpit-ws) wants `default-dbus-session-bus | dbus-session-bus`, and
# python3-cryptography `python3-cffi-backend-api-min`, so with the recipe's list alone dpkg
# leaves them and what needs them unconfigured. apt (in mmdebstrap) picks these providers;
# a user would add them to --include after reading the error, and so does the benchmark
# when the list alone fails.
DEBOOTSTRAP_EXTRA = ("dbus-user-session", "python3-cffi-backend")


# -- the results -----------------------------------------------------------------------------

@dataclass
class Build:
    seconds: float
    steps: dict[str, float]
    changed: bool
    usage: Usage | None = None


@dataclass
class Boot:
    accel: str
    ssh: float
    answering: float | None
    registered: float | None
    window: float  # how long before `answering` the last ask that missed it began
    usage: Usage | None = None  # KVM check, power-on to power cut; own: QEMU's


@dataclass
class Debootstrap:
    version: str
    command: list[str] = field(default_factory=list)  # the timed runs' (DIR for the target)
    seconds: list[float] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    packages: int = 0  # installed in the tree
    tree_bytes: int = 0
    cache_bytes: int = 0  # of which the .debs it leaves in the tree's apt cache
    extra: list[str] = field(default_factory=list)  # added to the recipe's packages
    # The recipe's list alone: None when it worked (then the timed runs are that list),
    # else the packages dpkg left unconfigured, and the seconds until it gave up.
    as_is_failed: list[str] | None = None
    as_is_seconds: float | None = None
    error: str | None = None  # why the comparison has no figure


@dataclass
class Results:
    args: argparse.Namespace
    cold: Build | None = None
    warm: list[Build] = field(default_factory=list)
    reuse: list[float] = field(default_factory=list)
    seed: float | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # bytes
    debs: int = 0  # .debs in the cache after the cold build
    packages: int = 0
    asked: int = 0  # packages the recipe names
    kernel: str = ""
    name: str = ""
    disk_bytes: int = 0  # the disk's virtual size
    omitted: list[str] = field(default_factory=list)
    boots: list[Boot] = field(default_factory=list)
    debootstrap: Debootstrap | None = None
    loads: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    code: str = ""
    versions: list[tuple[str, str]] = field(default_factory=list)


# -- small pure helpers ----------------------------------------------------------------------

def summary_of(stdout: str) -> dict[str, Any]:
    """The JSON object ``python -m appliance ... --json`` prints last."""
    lines = stdout.strip().splitlines()
    if not lines:
        raise Failed("python -m appliance printed no summary")
    data = json.loads(lines[-1])
    if not isinstance(data, dict):
        raise Failed(f"python -m appliance printed {lines[-1]!r}, not its summary")
    return data


def build_steps(timed: Timed) -> dict[str, float]:
    return report.step_times(timed.lines, timed.seconds, BUILD_STEPS, BUILD_FIRST)


def debootstrap_command(packages: Sequence[str], suite: str, target: Path, mirror: str, *,
                        components: Sequence[str] = ("main",),
                        keyring: Path | None = None) -> list[str]:
    # minbase, as the appliance's mmdebstrap; debootstrap resolves the included packages'
    # Depends itself and, like our build, leaves Recommends out.
    return ["debootstrap", "--variant=minbase", f"--components={','.join(components)}",
            *([f"--keyring={keyring}"] if keyring else []),
            f"--include={','.join(packages)}", suite, str(target), mirror]


def unconfigured(log: str) -> list[str]:
    """The packages dpkg names after the last "Errors were encountered while processing:"
    in debootstrap's own log (``<target>/debootstrap/debootstrap.log``)."""
    _, found, tail = log.rpartition("Errors were encountered while processing:\n")
    names = []
    for line in tail.splitlines() if found else []:
        if not line.startswith(" "):
            break
        names.append(line.strip().split(":")[0])
    return names


def ratio(theirs: float | None, ours: float | None) -> str:
    if not theirs or not ours:
        return "—"
    return f"{theirs / ours:.2f}x"


# -- the phases ------------------------------------------------------------------------------

def _appliance(args: list[str], log: Path) -> tuple[Timed, dict[str, Any]]:
    """``python -m appliance ARGS --json``, as playbooks/appliance.yml runs it."""
    # Earlier deletions and writes are flushed first, so no build pays for another's.
    os.sync()
    timed = report.run_timed([sys.executable, "-m", "appliance", *args, "--json"], log,
                      f"python -m appliance {args[0]}")
    return timed, summary_of(timed.stdout)


def _image(cache: Path, out: Path, log: Path) -> Build:
    timed, summary = _appliance(["image", "--cache", str(cache), "--out", str(out)], log)
    return Build(timed.seconds, build_steps(timed), bool(summary["changed"]), timed.usage)


def build_phase(args: argparse.Namespace, work: Path, results: Results) -> Path:
    """Cold, warm and reuse builds; the generic images' directory."""
    cache, out, log = work / "cache", work / "out", work / "logs" / "builds.log"
    report.progress("cold build: empty cache, the .debs from the mirror")
    results.cold = _image(cache, out, log)
    if not results.cold.changed:
        raise Failed("the cold build found its images already made")
    debs = list((cache / "debs").glob("*.deb"))
    results.debs = len(debs)
    results.sizes["debs"] = sum(p.stat().st_size for p in debs)
    report.progress(f"cold build: {results.cold.seconds:.0f} s")
    for run in range(args.runs):
        # The base and the images go, the .debs stay: a recipe change rebuilds both, and
        # with the same inputs the builder would find the images of this base up to date.
        shutil.rmtree(cache / "base")
        shutil.rmtree(out)
        build = _image(cache, out, log)
        if not build.changed:
            raise Failed("a warm build found its images already made")
        results.warm.append(build)
        report.progress(f"warm build {run + 1}/{args.runs}: {build.seconds:.0f} s")
    for _ in range(args.runs):
        build = _image(cache, out, log)
        if build.changed:
            raise Failed(f"an unchanged build made its images again: see {log}")
        results.reuse.append(build.seconds)
    report.progress(f"reuse: {report.med(results.reuse):.2f} s")
    manifest = json.loads((out / "manifest.json").read_text())
    results.name = manifest["name"]
    results.kernel = manifest["kernel"]
    results.packages = len(manifest["packages"])
    results.omitted = [o["component"] for o in manifest["omitted"]]
    results.disk_bytes = int(manifest["disk"]["size"])
    results.sizes.update({i["file"].rsplit(".", 1)[1]: int(i["size"])
                          for i in manifest["images"]})
    results.sizes["tree"] = report.tree_bytes(cache / "base" / manifest["base"] / "tree")
    return out


def seed_phase(work: Path, generic: Path, results: Results) -> tuple[Path, Path, Path]:
    """A test deployment with one appliance, its PKI, and the host's seed disk: (SSH key,
    inventory, seed)."""
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    inventory = write_inventory(work / "inventory", key.with_suffix(".pub"))
    report.run_logged([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                str(REPO / "playbooks" / "pki.yml")], work / "logs" / "pki.log", "pki.yml")
    timed, summary = _appliance(
        ["seed", "--cache", str(work / "cache"), "--inventory", str(inventory), "--host", HOST,
         "--out", str(work / "seed"), "--generic", str(generic)], work / "logs" / "seed.log")
    results.seed = timed.seconds
    seed = Path(summary["seed"])
    results.sizes["seed"] = seed.stat().st_size
    report.progress(f"seed: {timed.seconds:.0f} s")
    return key, inventory, seed


def _ask(port: int, pki: Path) -> tuple[bool, bool]:
    """Whether the supervisor answers the operator over mutual TLS (HTTP 200 for its
    capability listing), and whether the appliance's own probe daemon's ping capability is
    among those it lists (each capability's JSON names its probe)."""
    try:
        status, body = operator_get(port, "/capability", pki)
        if status != 200:
            return False, False
        for link in re.findall(r"href='(/capability/[0-9a-f]+)'", body):
            status, detail = operator_get(port, link, pki)
            if status == 200 and HOST in detail and "ping-average-ip4" in detail:
                return True, True
        return True, False
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False, False


class SupervisorWatch:
    """Asks the supervisor from power-on, every POLL_S, until it answers and the probe daemon
    is listed; notes when (time.monotonic())."""

    def __init__(self, port: int, pki: Path) -> None:
        self.port, self.pki = port, pki
        self.answering: float | None = None
        self.registered: float | None = None
        self.missed = time.monotonic()  # when the last ask that got no answer began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor-watch",
                                        daemon=True)

    def start(self) -> None:
        self.missed = time.monotonic()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            answered, registered = _ask(self.port, self.pki)
            seen = time.monotonic()
            if answered and self.answering is None:
                self.answering = seen
            elif not answered:
                self.missed = asked
            if registered:
                self.registered = seen
                return
            self._stop.wait(POLL_S)

    def wait(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def boot_once(vm: Any, pki: Path) -> Boot:
    """Power ``vm`` on, wait for SSH, the supervisor answering and the probe registered."""
    from rig import RigError

    watch = SupervisorWatch(vm.port(CLIENT_PORT), pki)
    watch.start()
    with report.Meter() as meter:
        try:
            try:
                vm.start()
            except RigError as exc:
                raise Failed(f"{vm.name}: {str(exc).splitlines()[0]}") from None
            watch.wait(vm.started + BOOT_TIMEOUT_S)
        finally:
            watch.stop()
            vm.close()
    if watch.answering is None:
        raise Failed(f"the supervisor did not answer within {BOOT_TIMEOUT_S:.0f} s of power-on "
                     f"(console {vm.console_log})")
    return Boot(vm.accel, vm.seconds_to_ssh, watch.answering - vm.started,
                None if watch.registered is None else watch.registered - vm.started,
                watch.answering - watch.missed, meter.usage)


def boot_phase(args: argparse.Namespace, work: Path, generic: Path, results: Results) -> None:
    from rig.appliance import ApplianceVM, boot_files
    from rig.mplane_ri import free_port

    key, inventory, seed = seed_phase(work, generic, results)
    pki = inventory / ".state" / "pki"
    kernel = boot_files(generic, work / "cache")
    results.loads["boots"] = report.load_average()
    for run in range(args.boots):
        vm = ApplianceVM(generic / f"{results.name}.qcow2", work / "boot", key=key, seed=seed,
                         kernel=kernel, name=f"bench-{run}",
                         forwards={CLIENT_PORT: free_port()})
        with report.qemu_lock():
            boot = boot_once(vm, pki)
        results.boots.append(boot)
        report.progress(f"boot {run + 1}/{args.boots} ({boot.accel}): SSH {boot.ssh:.1f} s, "
                 f"supervisor answering {boot.answering:.1f} s, probe registered "
                 f"{boot.registered or float('nan'):.1f} s")


@dataclass
class Attempt:
    """One cold debootstrap run."""

    command: list[str]
    seconds: float
    timed: Timed | None  # None: it failed
    packages: int = 0  # installed in the tree
    tree_bytes: int = 0
    cache_bytes: int = 0  # of which the .debs it leaves in the tree's apt cache
    unconfigured: list[str] = field(default_factory=list)
    error: str = ""


def _debootstrap(packages: Sequence[str], work: Path, attempt: int) -> Attempt:
    """debootstrap into a directory of its own, removed afterwards."""
    from appliance.recipe import load_recipe

    recipe = load_recipe()
    target = work / f"debootstrap-{attempt}" / "root"
    target.parent.mkdir(parents=True)
    command = debootstrap_command(packages, recipe.suite, target, recipe.mirror,
                                  components=recipe.components, keyring=recipe.keyring)
    # The package list is said apart, in words: on one line it would be unreadable.
    shown = ["DIR" if w.startswith(str(work)) else
             "--include=PACKAGES" if w.startswith("--include=") else w for w in command]
    log = work / "logs" / "debootstrap.log"
    os.sync()
    started = time.monotonic()
    try:
        timed = report.run_in_namespace(command, log, "debootstrap")
        status = (target / "var" / "lib" / "dpkg" / "status").read_text()
        return Attempt(shown, timed.seconds, timed,
                       status.count("Status: install ok installed"), report.tree_bytes(target),
                       report.tree_bytes(target / "var" / "cache" / "apt" / "archives"))
    except Failed as exc:
        seconds = time.monotonic() - started
        # Its own log says which packages dpkg left unconfigured; the tree goes, so its end
        # is kept in ours.
        own = target / "debootstrap" / "debootstrap.log"
        text = own.read_text(errors="replace") if own.is_file() else ""
        with log.open("a") as out:
            out.write(f"--- the end of {own}:\n" + "\n".join(text.splitlines()[-60:]) + "\n")
        return Attempt(shown, seconds, None, unconfigured=unconfigured(text),
                       error=str(exc).splitlines()[0])
    finally:
        shutil.rmtree(target.parent, ignore_errors=True)


def debootstrap_phase(args: argparse.Namespace, work: Path) -> Debootstrap:
    from appliance.recipe import load_recipe

    packages = list(load_recipe().packages)
    result = Debootstrap(report.first_line(["dpkg-query", "-W", "-f=${Version}", "debootstrap"]))
    attempts = 0
    while len(result.seconds) < args.debootstrap_runs:
        attempts += 1
        attempt = _debootstrap(packages, work, attempts)
        if attempt.timed is not None:
            result.command = attempt.command
            result.seconds.append(attempt.seconds)
            if attempt.timed.usage is not None:
                result.usages.append(attempt.timed.usage)
            result.steps.append(report.step_times(attempt.timed.lines, attempt.seconds,
                                           DEBOOTSTRAP_STEPS, DEBOOTSTRAP_FIRST))
            result.packages, result.tree_bytes = attempt.packages, attempt.tree_bytes
            result.cache_bytes = attempt.cache_bytes
            report.progress(f"debootstrap: {attempt.seconds:.0f} s, {attempt.packages} packages")
        elif attempts == 1 and attempt.unconfigured:
            result.as_is_failed, result.as_is_seconds = attempt.unconfigured, attempt.seconds
            report.progress(f"debootstrap with the recipe's packages alone failed after "
                     f"{attempt.seconds:.0f} s, unconfigured: {', '.join(attempt.unconfigured)};"
                     f" again with {', '.join(DEBOOTSTRAP_EXTRA)}")
            packages += DEBOOTSTRAP_EXTRA
            result.extra = list(DEBOOTSTRAP_EXTRA)
        else:
            # The comparison is someone else's tool: its failure is reported, the figures
            # measured before it are kept.
            result.command = result.command or attempt.command
            result.error = (f"unconfigured: {', '.join(attempt.unconfigured)}"
                            if attempt.unconfigured else attempt.error)
            report.progress(f"debootstrap failed: {result.error}")
            break
    return result


def versions() -> list[tuple[str, str]]:
    return [
        ("mmdebstrap", report.first_line(["mmdebstrap", "--version"])),
        ("debootstrap", report.first_line(["dpkg-query", "-W", "-f=${Version}", "debootstrap"])),
        ("QEMU", report.first_line(["qemu-system-x86_64", "--version"])),
        ("Ansible", report.first_line([str(Path(sys.executable).parent / "ansible-playbook"),
                                "--version"])),
    ]


def run(args: argparse.Namespace) -> Results:
    from appliance.recipe import load_recipe

    results = Results(args)
    results.code = report.code_version(CODE)
    results.versions = versions()
    results.asked = len(load_recipe().packages)
    results.loads["start"] = report.load_average()
    started = time.monotonic()
    with report.work_dir("pf-appliance-bench-", args.tmpdir, args.keep) as work:
        generic = build_phase(args, work, results)
        results.phases["builds"] = time.monotonic() - started
        mark = time.monotonic()
        boot_phase(args, work, generic, results)
        results.phases["boots"] = time.monotonic() - mark
        if not args.no_debootstrap:
            mark = time.monotonic()
            results.loads["debootstrap"] = report.load_average()
            results.debootstrap = debootstrap_phase(args, work)
            results.phases["debootstrap"] = time.monotonic() - mark
    results.loads["end"] = report.load_average()
    results.phases["total"] = time.monotonic() - started
    return results


# -- the report ------------------------------------------------------------------------------

def build_rows(r: Results) -> list[Row]:
    d = r.debootstrap
    return [
        Row("cold: empty cache → qcow2, VMDK, OVA", [r.cold.seconds] if r.cold else []),
        Row("… of which the root filesystem (mmdebstrap, .debs downloaded)",
            [r.cold.steps[MMDEBSTRAP_STEP]] if r.cold and MMDEBSTRAP_STEP in r.cold.steps
            else []),
        Row("warm: .debs cached, base and images made again", [b.seconds for b in r.warm],
            budget=BUDGET_WARM_BUILD_S, budget_text="≤ 5 min"),
        Row("reuse: nothing changed, nothing made", r.reuse),
        Row("a host's seed disk (`python -m appliance seed`)",
            [r.seed] if r.seed is not None else []),
        Row("debootstrap, cold: the root filesystem alone", d.seconds if d else []),
    ]


def step_table(r: Results) -> str:
    """Each step of the cold build and of the warm builds (median, min-max)."""
    lines = ["| step | cold (s) | warm, median (s) | warm, min-max (s) |",
             "|---|---:|---:|---:|"]
    for name in [BUILD_FIRST, *(name for name, _ in BUILD_STEPS)]:
        cold = r.cold.steps.get(name) if r.cold else None
        warm = [b.steps[name] for b in r.warm if name in b.steps]
        if cold is None and not warm:
            continue
        lines.append(f"| {name} | {'—' if cold is None else f'{cold:.1f}'} | "
                     f"{'—' if not warm else f'{report.med(warm):.1f}'} | "
                     + (f"{min(warm):.1f}-{max(warm):.1f}" if len(warm) > 1 else "—") + " |")
    cold_total = f"{r.cold.seconds:.1f}" if r.cold else "—"
    warm_total = report.med([b.seconds for b in r.warm])
    lines.append(f"| **whole build** | {cold_total} | "
                 f"{'—' if warm_total is None else f'{warm_total:.1f}'} | — |")
    return "\n".join(lines)


def sharing_table(r: Results) -> str:
    """Each timed run's CPU time against the rest of the machine's in the same time."""
    runs: list[tuple[str, Usage]] = []
    if r.cold is not None and r.cold.usage is not None:
        runs.append(("cold build", r.cold.usage))
    runs += [(f"warm build {i}", b.usage) for i, b in enumerate(r.warm, 1) if b.usage]
    runs += [(f"boot {i} (QEMU, until the probe registered)", b.usage)
             for i, b in enumerate(r.boots, 1) if b.usage]
    if r.debootstrap is not None:
        runs += [(f"debootstrap {i}", u) for i, u in enumerate(r.debootstrap.usages, 1)]
    cores = os.cpu_count() or 1
    lines = ["| run | wall (s) | its own CPU (s) | everything else's CPU (s) | "
             f"everything else, cores busy on average (of {cores}) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {u.wall:.0f} | {u.own:.0f} | {u.others:.0f} | "
              f"{u.others_cores:.2f} |" for name, u in runs]
    return "\n".join(lines)


def boot_rows(r: Results) -> list[Row]:
    kvm = bool(r.boots) and all(b.accel == "kvm" for b in r.boots)
    return [
        Row("power-on → SSH runs a command", [b.ssh for b in r.boots]),
        Row("power-on → supervisor answers the operator (HTTP 200, mutual TLS)",
            [b.answering for b in r.boots if b.answering is not None],
            budget=BUDGET_ANSWERING_S if kvm else None,
            budget_text="≤ 20 s with KVM" + ("" if kvm else " (this run: TCG)")),
        Row("power-on → its own probe daemon registered (listed to the operator)",
            [b.registered for b in r.boots if b.registered is not None]),
    ]


def size_table(r: Results) -> str:
    names = [("qcow2", "qcow2 (compressed)"), ("vmdk", "VMDK (streamOptimized)"),
             ("ova", "OVA (descriptor, manifest, VMDK)"),
             ("tree", "the provisioned tree (files)"), ("seed", "a host's seed disk"),
             ("debs", f".debs downloaded by the cold build ({r.debs})")]
    lines = ["| what | size |", "|---|---:|"]
    lines += [f"| {text} | {report.mib(r.sizes[key])} |" for key, text in names if key in r.sizes]
    if r.disk_bytes:
        lines.append(f"| the disk's virtual size | {r.disk_bytes / 2**30:.0f} GiB |")
    return "\n".join(lines)


def comparison(r: Results) -> str:
    d = r.debootstrap
    if d is None:
        return "No debootstrap comparison in this run (`--no-debootstrap`)."
    if not d.seconds:
        return f"**Against debootstrap**: no figure, {d.error or 'it did not run'}."
    theirs = report.med(d.seconds)
    mmdebstrap = r.cold.steps.get(MMDEBSTRAP_STEP) if r.cold else None
    cold = r.cold.seconds if r.cold else None
    warm = report.med([b.seconds for b in r.warm])
    spread = (f", {min(d.seconds):.0f}-{max(d.seconds):.0f} s" if len(d.seconds) > 1 else "")
    steps = "; ".join(f"{name} {report.med([s.get(name, 0.0) for s in d.steps]):.0f} s"
                      for name in [DEBOOTSTRAP_FIRST, *(n for n, _ in DEBOOTSTRAP_STEPS)])
    text = (f"**Against debootstrap** (cold, same suite, mirror and packages): `debootstrap` "
            f"took {theirs:.0f} s ({report.plural(len(d.seconds), 'run')}{spread}; {steps}) and "
            f"installed {d.packages} packages ({report.mib(d.tree_bytes)} of files, of which "
            f"{report.mib(d.cache_bytes)} the .debs it leaves in /var/cache/apt/archives). "
            f"That is **{ratio(theirs, mmdebstrap)}** the time of the same step of "
            f"probeforge's cold build, its root filesystem with mmdebstrap "
            f"({'—' if mmdebstrap is None else f'{mmdebstrap:.0f} s'}); "
            f"{ratio(theirs, cold)} the whole cold build "
            f"({'—' if cold is None else f'{cold:.0f} s'}) and {ratio(theirs, warm)} the warm "
            f"build ({'—' if warm is None else f'{warm:.0f} s'}).")
    if d.as_is_failed is not None:
        text += (f" With the recipe's list alone debootstrap failed after "
                 f"{d.as_is_seconds or 0:.0f} s, dpkg leaving {', '.join(d.as_is_failed)} "
                 f"unconfigured: its resolver follows neither virtual packages nor "
                 f"alternatives that name one (dconf-service wants "
                 f"`default-dbus-session-bus | dbus-session-bus`, python3-cryptography "
                 f"`python3-cffi-backend-api-min`); the timed runs add the providers apt picks "
                 f"in probeforge's build, {', '.join(f'`{p}`' for p in DEBOOTSTRAP_EXTRA)}, as "
                 f"a user would after reading the error.")
    if d.error:
        text += f" A later run failed: {d.error}."
    return text


def budgets(r: Results) -> str:
    """The figures against DESIGN.md's budgets, with what else ran meanwhile."""
    parts = []
    warm = report.med([b.seconds for b in r.warm])
    if warm is not None:
        others = [b.usage.others_cores for b in r.warm if b.usage is not None]
        parts.append(
            f"The warm build took {warm:.0f} s (median), "
            + ("within" if warm <= BUDGET_WARM_BUILD_S else "**over**")
            + f" the {BUDGET_WARM_BUILD_S / 60:g} min budget"
            + (f", while everything else on the machine kept {report.med(others):.1f} of its "
               f"{os.cpu_count()} cores busy on average (the table above)" if others else "")
            + ".")
    answering = report.med([b.answering for b in r.boots if b.answering is not None])
    if answering is not None and all(b.accel == "kvm" for b in r.boots):
        parts.append(f"Power-on → supervisor answering took {answering:.0f} s with KVM, "
                     + ("within" if answering <= BUDGET_ANSWERING_S else "**over**")
                     + f" the {BUDGET_ANSWERING_S:g} s budget.")
    elif answering is not None:
        parts.append(f"The {BUDGET_ANSWERING_S:g} s from power-on to the supervisor answering "
                     f"is a budget for KVM, which does not work here: under TCG the figure "
                     f"({answering:.0f} s) says what emulating the CPU costs, not what a "
                     f"hypervisor will show, and is not judged against it.")
    return "**Budgets.** " + " ".join(parts) if parts else ""


def notes(r: Results) -> str:
    paragraphs = [budgets(r)]
    cold = r.cold.steps.get(MMDEBSTRAP_STEP) if r.cold else None
    warm = report.med([b.steps[MMDEBSTRAP_STEP] for b in r.warm if MMDEBSTRAP_STEP in b.steps])
    if cold is not None and warm is not None and warm >= cold:
        paragraphs.append(
            f"**The .deb cache.** It did not shorten the root filesystem step in this run: "
            f"{warm:.0f} s warm (median) against {cold:.0f} s cold, which downloaded its "
            f"{r.debs} .debs ({report.mib(r.sizes.get('debs', 0))}) from the mirror. Every "
            f"build copies the cache into the tree and back out (`sync-in`, `sync-out`, "
            f"appliance/rootfs.py), and the package lists are fetched either way.")
    if r.debootstrap is not None and r.debootstrap.seconds:
        paragraphs.append(
            "**What is and is not comparable.** The like-for-like figure is debootstrap "
            "against the root-filesystem step of probeforge's cold build: both resolve the "
            "same packages from the same mirror, download them and install them into an "
            "empty directory (mmdebstrap also copies the .debs into the cache). debootstrap "
            "downloads one package after another and unpacks and configures in several "
            "rounds; mmdebstrap downloads with apt and installs in a few dpkg calls "
            "(`--dpkgopt=force-unsafe-io`, appliance/rootfs.py). The rest of probeforge's "
            "build has no counterpart in debootstrap, which stops at a directory: the "
            "supervisor, the probe daemon and the web console provisioned by the roles, "
            "generalising (no host keys, an empty machine-id), a bootable disk (BIOS and "
            "UEFI) and three exports would be the user's own work after it; the ratios "
            "against the whole builds only say how much more probeforge does in what "
            "time. Both downloads come from the same mirror, the later one maybe from warmer "
            "caches on its side.")
    if r.boots:
        window = report.med([b.window for b in r.boots]) or 0.0
        accel = r.boots[0].accel
        paragraphs.append(
            f"**Boot.** \"Power-on\" is when QEMU is started (`ApplianceVM.start`, after its "
            f"KVM check); QEMU ran with {accel.upper()}"
            + ("" if accel == "kvm" else " (no usable KVM here: the CPU is emulated)")
            + f". SSH is tried every 2 s or so by `ApplianceVM`, each try up to 20 s. The "
            f"supervisor is asked from power-on, every {POLL_S:g} s, by a thread of the "
            f"benchmark: the moment it first answered is known to within {window:.1f} s "
            f"(median: from the start of the last ask that missed it). Each boot is a first "
            f"boot: `snapshot=on` discards what the guest writes, so the seed is applied, "
            f"the machine-id and the SSH host keys are made, and the services start for the "
            f"first time. QEMU's CPU time (the table above) can exceed the wall time: TCG "
            f"runs each vCPU on a thread of its own. Boots take the lock /tmp/pf-qemu.lock, "
            f"so no other VM that takes it runs beside them.")
    if r.omitted:
        paragraphs.append(f"Left out of this image: {', '.join(r.omitted)} (not in the "
                          f"artifact cache here); with them the roles step and the tree grow "
                          f"by their builds.")
    return "\n\n".join(p for p in paragraphs if p)


LOAD_LABELS = {"start": "at the start", "boots": "before the boots",
               "debootstrap": "before debootstrap", "end": "at the end"}
PHASE_LABELS = {"builds": "builds", "boots": "PKI, seed and boots",
                "debootstrap": "debootstrap"}


def section(r: Results, command: str) -> str:
    machine = report.machine_lines(
        r.versions, tmpdir=r.args.tmpdir, code=r.code, loads=r.loads, load_labels=LOAD_LABELS,
        phases=r.phases, phase_labels=PHASE_LABELS,
        sharing="other work (builds, tests, VMs) may share the machine")
    boots = report.plural(len(r.boots), "boot")
    extra = f" and {', '.join(r.debootstrap.extra)}" if r.debootstrap and r.debootstrap.extra \
        else ""
    d = r.debootstrap
    debootstrap = "" if d is None else f"""
- *debootstrap* ({d.version}): `{shlex.join(d.command)}` where PACKAGES are the
  recipe's {r.asked} (the kernel among them){extra}, cold, into an empty directory, as
  root in a mount namespace of its own (what it mounts in the target goes with it), its
  progress lines timed as they come; {report.plural(len(d.seconds), 'run')}."""
    body = f"""\
## Virtual appliance: builds, images and boot (`bench/appliance.py`)

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.

Machine:

{machine}

Method. One run, as root, with a cache and output directories of its own in a temporary
directory (the repository's `.cache/appliance` and `build/` untouched). Recipe
`images/ubuntu-appliance/recipe.yml`, Debian 12 (bookworm): {r.asked} packages asked,
{r.packages} installed with their dependencies and the roles', kernel `{r.kernel}`, image
`{r.name}`. Each timed step starts after `sync`.

- *Cold build*: `python -m appliance image --cache C --out O --json` on an empty cache, as
  `playbooks/appliance.yml` runs it: package lists and .debs from the Debian mirror
  (mmdebstrap), the roles, generalising, the disk and the exports.
- *Warm build*: the same with the .debs kept and the base and the images removed: what any
  change to the recipe, the roles or the probe daemon costs; {report.plural(len(r.warm), 'run')}.
- *Steps*: the builder's own progress lines, timed as they come, split each build into its
  steps (a step lasts from its first line until the next step's).
- *Reuse*: the same command again, nothing changed; {report.plural(len(r.reuse), 'run')}.
- *Seed*: a deployment with one appliance and an operator (`tests/support/appliance.py`), its
  PKI made by `playbooks/pki.yml`, then `python -m appliance seed` for `{HOST}`.
- *Boot*: the compressed qcow2 on virtio (`rig.appliance.ApplianceVM`: q35, BIOS, 2 vCPUs,
  2 GiB, `snapshot=on`) with the seed disk; "answers" is the first HTTP 200 for
  `GET /capability` with the operator's certificate over mutual TLS, "registered" the first
  listing holding the appliance's own `ping-average-ip4`; {boots}.{debootstrap}

Build times (seconds):

{report.render_table(build_rows(r), 's')}

Steps of the builds (seconds):

{step_table(r)}

Sizes:

{size_table(r)}

Boot (seconds from power-on):

{report.render_table(boot_rows(r), 's')}

Sharing the machine: each run's CPU time (its processes', user and system) against what
everything else on the machine used in the same time (all cores busy, from /proc/stat, less
the run's own):

{sharing_table(r)}

{comparison(r)}

{notes(r)}"""
    return f"{START}\n{report.reflow(body).rstrip()}\n{END}\n"


# -- driver ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/appliance.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="warm builds and reuse runs (default 3)")
    parser.add_argument("--boots", type=int, default=3, help="boots (default 3)")
    parser.add_argument("--debootstrap-runs", type=int, default=1,
                        help="timed debootstrap runs (default 1)")
    parser.add_argument("--no-debootstrap", action="store_true",
                        help="leave the debootstrap comparison out")
    parser.add_argument("--quick", action="store_true",
                        help="1 warm build, 1 reuse, 1 boot: checks the script")
    parser.add_argument("--tmpdir", help="where the work directory goes (default: $TMPDIR, /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--write", type=Path, metavar="MD",
                        help="rewrite this benchmark's section of MD (created if missing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.runs = args.boots = 1
    if args.runs < 1 or args.boots < 1 or args.debootstrap_runs < 1:
        raise SystemExit("--runs, --boots and --debootstrap-runs must be at least 1")
    if os.geteuid() != 0:
        raise SystemExit("bench/appliance.py: the appliance build needs root: run it as root")
    if not args.no_debootstrap and shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap not found: apt-get install debootstrap "
                         "(setup/debian-packages.txt)")
    try:
        results = run(args)
    except Failed as exc:
        print(f"bench/appliance.py: error: {exc}", file=sys.stderr)
        return 1
    shown = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "bench/appliance.py", *shown])
    if args.write:
        report.write_section(args.write, section(results, command), START, END)
        report.progress(f"wrote the appliance section of {args.write}")
    print(report.render_table(build_rows(results), "s"))
    print()
    print(step_table(results))
    print()
    print(size_table(results))
    print()
    print(report.render_table(boot_rows(results), "s"))
    print()
    print(sharing_table(results))
    print()
    print(comparison(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
