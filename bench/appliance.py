# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the virtual appliance, from an empty cache to a supervisor answering.

Measures, in one run on this machine, with a cache and output directories of its own under
/tmp (the repository's ``.cache/appliance`` and ``build/`` are not touched):

* cold build: ``python -m appliance image`` on an empty cache (package lists and .debs from
  the Debian mirror, mmdebstrap, the roles through the chroot connection, generalising, the
  disk, the qcow2/VMDK/OVA exports), as ``playbooks/appliance.yml`` runs it;
* warm build: the same with the .debs cached and the base rebuilt (what any change to the
  recipe, the roles or the probe daemon costs), several times; the builder's own progress
  lines split each into the base (root filesystem + provisioning) and the images; the reuse
  of an unchanged build;
* a host's seed disk (``python -m appliance seed``) for a test deployment;
* the sizes: qcow2, VMDK, OVA, the provisioned tree, the seed disk;
* power-on → SSH, → the supervisor answering the operator over mutual TLS, → the appliance's
  own probe daemon registered, booting the qcow2 with the seed (first boot every time:
  ``snapshot=on``), several times;
* in the same run, ``debootstrap`` for the same suite, mirror and packages, cold, which is
  what one would start from without probeforge.

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
import tempfile
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
from bench.firmware import (  # noqa: E402
    Failed,
    Row,
    _first_line,
    _med,
    _mib,
    _progress,
    _run_logged,
    _tree_bytes,
    reflow,
    render_table,
)

START = "<!-- bench:appliance:start -->"
END = "<!-- bench:appliance:end -->"
HOST = "appliance-01"
# DESIGN.md's budgets.
WARM_BUDGET_S = 300.0
ANSWER_BUDGET_S = 20.0
# The builder's own timings, from its progress lines (appliance/build.py).
_BASE_READY = re.compile(r"^base [0-9a-f]{16} ready in (\d+) s$")
_IMAGES_DONE = re.compile(r"^images of base [0-9a-f]{16} in .* \((\d+) s\)$")
_PROVISIONED = re.compile(r"^provision: done in (\d+) s, \d+ changed$")


@dataclass
class Build:
    seconds: float
    base: float | None  # the builder's own figure: root filesystem + roles + generalising
    images: float | None  # disk + exports
    provision: float | None  # the roles through the chroot connection


@dataclass
class Boot:
    ssh: float
    answering: float
    registered: float | None
    accel: str


@dataclass
class Results:
    args: argparse.Namespace
    cold: Build | None = None
    warm: list[Build] = field(default_factory=list)
    reuse: float | None = None
    seed: float | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    packages: int = 0
    kernel: str = ""
    name: str = ""
    omitted: list[str] = field(default_factory=list)
    boots: list[Boot] = field(default_factory=list)
    debootstrap: float | None = None
    debootstrap_packages: int = 0
    debootstrap_bytes: int = 0
    debootstrap_command: list[str] = field(default_factory=list)
    debootstrap_error: str | None = None
    loads: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    code: str = ""
    versions: list[tuple[str, str]] = field(default_factory=list)


# -- small pure helpers ----------------------------------------------------------------------

def parse_build_output(text: str) -> tuple[float | None, float | None, float | None]:
    """(base, images, provisioning) seconds as the builder reported them; None for a step it
    did not run (a cached base)."""
    base = images = provision = None
    for line in text.splitlines():
        line = line.strip()
        if match := _BASE_READY.match(line):
            base = float(match.group(1))
        elif match := _IMAGES_DONE.match(line):
            images = float(match.group(1))
        elif match := _PROVISIONED.match(line):
            provision = float(match.group(1))
    return base, images, provision


def debootstrap_command(packages: Sequence[str], suite: str, target: Path,
                        mirror: str) -> list[str]:
    # minbase, as the appliance's mmdebstrap; debootstrap resolves the included packages'
    # Depends itself and, like our build, leaves Recommends out.
    return ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite,
            str(target), mirror]


def ratio(theirs: float | None, ours: float | None) -> str:
    if not theirs or not ours:
        return "—"
    return f"{theirs / ours:.2f}x"


# -- the phases ------------------------------------------------------------------------------

def _appliance(args: list[str], log: Path) -> tuple[float, dict[str, Any], str]:
    """``python -m appliance ARGS --json``: seconds, the summary and the progress lines."""
    os.sync()
    mark = log.stat().st_size if log.exists() else 0
    started = time.monotonic()
    done = _run_logged([sys.executable, "-m", "appliance", *args, "--json"], log,
                       f"python -m appliance {args[0]}")
    seconds = time.monotonic() - started
    with log.open("rb") as handle:
        handle.seek(mark)
        output = handle.read().decode(errors="replace")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1]), output


def _timed_image(cache: Path, out: Path, log: Path) -> tuple[Build, dict[str, Any]]:
    shutil.rmtree(out, ignore_errors=True)
    seconds, summary, output = _appliance(["image", "--cache", str(cache), "--out", str(out)],
                                          log)
    return Build(seconds, *parse_build_output(output)), summary


def build_phase(args: argparse.Namespace, work: Path, results: Results) -> Path:
    cache, out, log = work / "cache", work / "out", work / "logs" / "builds.log"
    _progress("appliance: cold build (empty cache: .debs from the mirror)")
    results.cold, _ = _timed_image(cache, out, log)
    _progress(f"appliance: cold {results.cold.seconds:.0f} s")
    for run in range(args.runs):
        shutil.rmtree(cache / "base")
        results.warm.append(_timed_image(cache, out, log)[0])
        _progress(f"appliance: warm {run + 1}/{args.runs}: {results.warm[-1].seconds:.0f} s")
    results.reuse, summary, _ = _appliance(
        ["image", "--cache", str(cache), "--out", str(out)], log)
    if summary["changed"]:
        raise Failed("an unchanged build made its images again: see " + str(log))
    manifest = json.loads((out / "manifest.json").read_text())
    results.name = manifest["name"]
    results.kernel = manifest["kernel"]
    results.packages = len(manifest["packages"])
    results.omitted = [o["component"] for o in manifest["omitted"]]
    results.sizes = {i["file"].rsplit(".", 1)[1]: int(i["size"]) for i in manifest["images"]}
    ova = out / f"{manifest['name']}.ova"
    results.sizes["ova"] = ova.stat().st_size
    results.sizes["tree"] = _tree_bytes(cache / "base" / manifest["base"] / "tree")
    return out


def seed_phase(work: Path, generic: Path, results: Results) -> tuple[Path, Path, Path]:
    """A test deployment with one appliance; its seed. (key, inventory, seed)"""
    from tests.support.appliance import write_inventory

    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    inventory = write_inventory(work / "inventory", key.with_suffix(".pub"))
    _run_logged([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                 str(REPO / "playbooks" / "pki.yml")], work / "logs" / "pki.log", "pki.yml")
    out = work / "seed"
    results.seed, summary, _ = _appliance(
        ["seed", "--cache", str(work / "cache"), "--inventory", str(inventory), "--host", HOST,
         "--out", str(out), "--generic", str(generic)], work / "logs" / "seed.log")
    seed = Path(summary["seed"])
    results.sizes["seed"] = seed.stat().st_size
    return key, inventory, seed


def _listing(port: int, pki: Path, *, follow: bool) -> list[str] | None:
    """The supervisor's capability listing for the operator over mutual TLS (with
    ``follow``, each capability's JSON); None while it does not answer."""
    from tests.support.appliance import operator_get

    try:
        status, body = operator_get(port, "/capability", pki)
        if status != 200:
            return None
        if not follow:
            return [body]
        return [operator_get(port, link, pki)[1]
                for link in re.findall(r"href='(/capability/[0-9a-f]+)'", body)]
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return None


def _registered(details: list[str] | None) -> bool:
    """Whether the appliance's own probe daemon's ping capability is among ``details`` (each
    capability's JSON names its probe)."""
    return any(HOST in d and "ping-average-ip4" in d for d in details or [])


def boot_phase(args: argparse.Namespace, work: Path, generic: Path, results: Results) -> None:
    from rig.appliance import ApplianceVM, boot_files
    from rig.mplane_ri import free_port
    from tests.support.appliance import CLIENT_PORT

    key, inventory, seed = seed_phase(work, generic, results)
    pki = inventory / ".state" / "pki"
    for run in range(args.boots):
        port = free_port()
        vm = ApplianceVM(generic / f"{results.name}.qcow2", work / "boot", key=key, seed=seed,
                         kernel=boot_files(generic, work / "cache"), name=f"bench-{run}",
                         forwards={CLIENT_PORT: port})
        with vm:
            while _listing(port, pki, follow=False) is None:
                if time.monotonic() - vm.started > 600:
                    raise Failed(f"the supervisor did not answer within 600 s "
                                 f"(console {vm.console_log})")
                time.sleep(0.5)
            answering = time.monotonic() - vm.started
            registered = None
            while registered is None and time.monotonic() - vm.started < 600:
                if _registered(_listing(port, pki, follow=True)):
                    registered = time.monotonic() - vm.started
                else:
                    time.sleep(1)
            results.boots.append(Boot(vm.seconds_to_ssh, answering, registered, vm.accel))
        _progress(f"appliance: boot {run + 1}/{args.boots} ({vm.accel}): SSH "
                  f"{vm.seconds_to_ssh:.0f} s, supervisor answering {answering:.0f} s, "
                  f"probe registered {registered or float('nan'):.0f} s")


def debootstrap_phase(work: Path, results: Results) -> None:
    from appliance.recipe import load_recipe

    recipe = load_recipe()
    target = work / "debootstrap" / "root"
    target.parent.mkdir(parents=True)
    results.debootstrap_command = debootstrap_command(recipe.packages, recipe.suite, target,
                                                      recipe.mirror)
    log = work / "logs" / "debootstrap.log"
    try:
        os.sync()
        started = time.monotonic()
        # Its own mount namespace: debootstrap mounts /proc and /sys in the target, and a
        # failed run would leave them mounted on the host.
        _run_logged(["unshare", "--mount", "--propagation", "private", "--",
                     *results.debootstrap_command], log, "debootstrap", capture=False)
        results.debootstrap = time.monotonic() - started
        status = (target / "var" / "lib" / "dpkg" / "status").read_text()
        results.debootstrap_packages = status.count("Status: install ok installed")
        results.debootstrap_bytes = _tree_bytes(target)
    except (Failed, OSError) as exc:
        # The comparison is someone else's tool: its failure is reported, the rest kept.
        results.debootstrap_error = str(exc).splitlines()[0]
        _progress(f"debootstrap: {exc}")
    finally:
        shutil.rmtree(target.parent, ignore_errors=True)
    results.debootstrap_command = [w if not w.startswith(str(work)) else "DIR"
                                   for w in results.debootstrap_command]


def _code_version() -> str:
    done = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "rev-parse",
                           "--short", "HEAD"], capture_output=True, text=True, check=False)
    commit = done.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "status",
                            "--porcelain", "--", "appliance", "images", "roles", "rig",
                            "probe_daemon"], capture_output=True, text=True,
                           check=False).stdout.strip()
    return f"commit {commit}" + (" plus uncommitted changes" if dirty else "")


def run(args: argparse.Namespace) -> Results:
    results = Results(args)
    results.code = _code_version()
    results.versions = [
        ("mmdebstrap", _first_line(["mmdebstrap", "--version"])),
        ("debootstrap", _first_line(["dpkg-query", "-W", "-f=${Version}", "debootstrap"])),
        ("QEMU", _first_line(["qemu-system-x86_64", "--version"])),
        ("qemu-img", _first_line(["qemu-img", "--version"])),
    ]
    results.loads["start"] = report.load_average()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pf-appliance-bench-", dir=args.tmpdir))
    try:
        generic = build_phase(args, work, results)
        results.phases["builds"] = time.monotonic() - started
        results.loads["builds"] = report.load_average()
        mark = time.monotonic()
        boot_phase(args, work, generic, results)
        results.phases["seed and boots"] = time.monotonic() - mark
        results.loads["boots"] = report.load_average()
        mark = time.monotonic()
        debootstrap_phase(work, results)
        results.phases["debootstrap"] = time.monotonic() - mark
    finally:
        if args.keep:
            _progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results.loads["end"] = report.load_average()
    results.phases["total"] = time.monotonic() - started
    return results


# -- the report ------------------------------------------------------------------------------

def build_rows(r: Results) -> list[Row]:
    warm = [b.seconds for b in r.warm]
    return [
        Row("cold: empty cache → qcow2, VMDK, OVA", [r.cold.seconds] if r.cold else []),
        Row("warm: .debs cached, base rebuilt → images", warm, budget=WARM_BUDGET_S,
            budget_text="≤ 5 min"),
        Row("  of which the base (mmdebstrap, roles, generalising)",
            [b.base for b in r.warm if b.base is not None]),
        Row("  of which the roles through the chroot connection",
            [b.provision for b in r.warm if b.provision is not None]),
        Row("  of which the disk and the exports",
            [b.images for b in r.warm if b.images is not None]),
        Row("reuse: nothing changed", [r.reuse] if r.reuse is not None else []),
        Row("a host's seed disk (`python -m appliance seed`)",
            [r.seed] if r.seed is not None else []),
        Row("debootstrap, cold: root filesystem only",
            [r.debootstrap] if r.debootstrap is not None else []),
    ]


def boot_rows(r: Results) -> list[Row]:
    kvm = all(b.accel == "kvm" for b in r.boots) and bool(r.boots)
    return [
        Row("power-on → SSH", [b.ssh for b in r.boots]),
        Row("power-on → supervisor answering (mutual TLS)", [b.answering for b in r.boots],
            budget=ANSWER_BUDGET_S if kvm else None,
            budget_text="≤ 20 s with KVM" + ("" if kvm else " (this run: TCG)")),
        Row("power-on → its own probe daemon registered",
            [b.registered for b in r.boots if b.registered is not None]),
    ]


def size_table(r: Results) -> str:
    names = [("qcow2", "qcow2 (compressed)"), ("vmdk", "VMDK (streamOptimized)"),
             ("ova", "OVA"), ("tree", "provisioned tree"), ("seed", "seed disk")]
    lines = ["| what | size |", "|---|---:|"]
    lines += [f"| {text} | {_mib(r.sizes[key])} |" for key, text in names if key in r.sizes]
    return "\n".join(lines)


def _loads(r: Results) -> str:
    return "; ".join(f"{k} {' / '.join(f'{v:.2f}' for v in load)}"
                     for k, load in r.loads.items())


def section(r: Results, command: str) -> str:
    machine = "\n".join(f"- {k}: {v}" for k, v in [
        *report.machine(), *r.versions, ("probeforge", r.code),
        ("load average (1 / 5 / 15 min)", _loads(r)),
        ("duration", f"{r.phases.get('total', 0) / 60:.1f} min in all ("
                     + ", ".join(f"{k} {v / 60:.1f} min" for k, v in r.phases.items()
                                 if k != "total") + ")"),
    ])
    warm = _med([b.seconds for b in r.warm])
    cold = r.cold.seconds if r.cold else None
    accel = r.boots[0].accel if r.boots else "not booted"
    if r.debootstrap_error:
        comparison = f"debootstrap failed: {r.debootstrap_error}."
    else:
        comparison = (
            f"`{shlex.join(r.debootstrap_command)}` took {r.debootstrap or 0:.0f} s and "
            f"installed {r.debootstrap_packages} packages ({_mib(r.debootstrap_bytes)} of "
            f"files); that is {ratio(r.debootstrap, warm)} the time of probeforge's warm build "
            f"and {ratio(r.debootstrap, cold)} its cold build, which both go on to provision "
            f"the roles, generalise, make the disk and three exports. debootstrap stops at a "
            f"root directory: no supervisor, probe daemon, web console or first-boot seed, no "
            f"bootloader, no disk, no qcow2/VMDK/OVA. Its downloads are sequential and it "
            f"unpacks package by package; mmdebstrap downloads with apt and installs in a few "
            f"dpkg calls, which is most of the difference at the root-filesystem step.")
    omitted = (f" Left out of this image: {', '.join(r.omitted)} (their sources are not in "
               "the artifact cache here)." if r.omitted else "")
    body = f"""\
## Virtual appliance: builds, images and boot (`bench/appliance.py`)

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.

Machine:

{machine}

Method. One run, as root, with a cache and output directories of its own in a temporary
directory (the repository's `.cache/appliance` and `build/` untouched). Recipe
`images/ubuntu-appliance/recipe.yml`, Debian 12: {r.packages} packages, kernel
`{r.kernel}`.{omitted} Each timed step starts after `sync`.

- *Cold build*: `python -m appliance image --cache C --out O` on an empty cache: package
  lists and .debs from the Debian mirror, mmdebstrap, the roles, generalising, the disk and
  the exports (as `playbooks/appliance.yml` runs it).
- *Warm build*: the same with the base removed from the cache and the .debs kept: what any
  change to the recipe, the roles or the probe daemon costs; {len(r.warm)} runs. The
  builder's own progress lines split it into base, roles and images.
- *Reuse*: the same command once more, nothing changed.
- *Seed*: a deployment with one appliance and an operator (`tests/support/appliance.py`),
  its PKI made by `playbooks/pki.yml`, then `python -m appliance seed` for the host.
- *Boot*: the compressed qcow2 on virtio (`rig.appliance.ApplianceVM`, BIOS, 2 vCPUs,
  2 GiB, QEMU {accel}, `snapshot=on`, so every boot is a first boot: the seed is applied
  and the SSH host keys made) with the seed disk; "answering" is the first HTTP 200 for
  `GET /capability` with the operator's certificate over mutual TLS (tried every 0.5 s),
  "registered" the first listing holding the appliance's own `ping-average-ip4`;
  {len(r.boots)} boots.
- *debootstrap*: `debootstrap --variant=minbase` with the recipe's packages (kernel
  included) from the same mirror, cold, in its own mount namespace.

Build times (seconds):

{render_table(build_rows(r), 's')}

Sizes:

{size_table(r)}

Boot (seconds from power-on):

{render_table(boot_rows(r), 's')}

**Compared with debootstrap.** {comparison}

**Budgets.** The warm build's budget (≤ 5 min) is for the base plus the images; the machine
here has 2 cores and was {('shared' if max(v[0] for v in r.loads.values()) > 1.5 else 'quiet')}
(load above). The 20 s from power-on to the supervisor answering is a KVM budget; KVM does not
run here, so under TCG the figure is {('over it' if r.boots else 'not measured')} and says
what emulation costs, not what a partner's hypervisor will show.
"""
    return f"{START}\n{reflow(body)}{END}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="rewrite this section of the file "
                        "(docs/benchmarks.md) instead of printing it")
    parser.add_argument("--runs", type=int, default=3, help="warm builds (default 3)")
    parser.add_argument("--boots", type=int, default=3, help="boots (default 3)")
    parser.add_argument("--quick", action="store_true", help="one warm build, one boot")
    parser.add_argument("--tmpdir", help="where the work directory goes (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.runs = args.boots = 1
    if os.geteuid() != 0:
        print("bench/appliance.py: error: the appliance build needs root: run it as root",
              file=sys.stderr)
        return 1
    command = "python bench/appliance.py " + " ".join(argv if argv is not None
                                                      else sys.argv[1:])
    try:
        results = run(args)
    except Failed as exc:
        print(f"bench/appliance.py: error: {exc}", file=sys.stderr)
        return 1
    text = section(results, command.strip())
    if args.write:
        report.write_section(args.write, text, START, END)
        _progress(f"wrote the appliance section of {args.write}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
