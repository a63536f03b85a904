# SPDX-License-Identifier: Apache-2.0
"""What the benchmarks share: the machine they ran on, rewriting one section of
docs/benchmarks.md between a benchmark's own markers without touching the others, running the
tools they time (logged, their progress lines timed, root filesystem builders in a namespace
of their own), and the tables and text of their reports."""

import contextlib
import fcntl
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HEADER = (
    "# Benchmarks\n\n"
    "Each section below is written by the script in `bench/` that it names (`make bench` runs "
    "them all); edit the script and re-run it rather than editing a section by hand.\n"
)


def read_text(path: str) -> str:
    """A file's text, or "" when it cannot be read (e.g. /proc files on another OS)."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def field(text: str, key: str, separator: str = ":") -> str:
    """The value of ``key`` in ``key: value`` (or ``key=value``) lines, unquoted."""
    for line in text.splitlines():
        name, sep, value = line.partition(separator)
        if sep and name.strip() == key:
            return value.strip().strip('"')
    return ""


def filesystem(path: str) -> str:
    """The type of the filesystem that ``path`` is on, from /proc/mounts."""
    real, best, kind = os.path.realpath(path), "", "unknown"
    for line in read_text("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) \
                and len(parts[1]) >= len(best):
            best, kind = parts[1], parts[2]
    return kind


def machine() -> list[tuple[str, str]]:
    """CPU, cores, RAM, kernel and Python of this machine, as (name, description) pairs."""
    cpuinfo = read_text("/proc/cpuinfo")
    cpu = field(cpuinfo, "model name") or platform.processor() or "unknown"
    if "hypervisor" in field(cpuinfo, "flags").split():
        cpu += " (virtual machine)"
    logical = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    cores = f"{logical}" + (f" ({usable} usable by this process)" if usable != logical else "")
    mem_kb = field(read_text("/proc/meminfo"), "MemTotal").split()
    ram = f"{int(mem_kb[0]) / 2**20:.1f} GiB" if mem_kb else "unknown"
    distro = field(read_text("/etc/os-release"), "PRETTY_NAME", "=")
    return [
        ("CPU", f"{cpu}, {platform.machine()}"),
        ("cores", f"{cores} logical"),
        ("RAM", ram),
        ("kernel", f"{platform.system()} {platform.release()}"
                   + (f" ({distro})" if distro else "")),
        ("Python", platform.python_version()),
    ]


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages; other benchmarks or tests may share the machine."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def write_section(path: Path, text: str, start: str, end: str) -> None:
    """Replace the section of ``path`` between ``start`` and ``end`` (``text`` includes both
    markers), or append it; every other section is left alone. The file is replaced
    atomically, so a reader never sees half of it."""
    old = path.read_text() if path.exists() else HEADER
    first, last = old.find(start), old.find(end)
    if (first < 0) != (last < 0) or last < first:
        raise SystemExit(f"{path}: the {start} / {end} markers are unbalanced; fix them by hand")
    if first < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        tail = old[last + len(end):].lstrip("\n")
        new = old[:first] + text + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


# -- running things --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
QEMU_LOCK = Path("/tmp/pf-qemu.lock")


class Failed(RuntimeError):
    """A step of a benchmark failed; the message says which and where its log is."""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _failure(what: str, code: int, log: Path, lines: int = 25) -> Failed:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return Failed(f"{what} failed (exit {code}); {log} ends:\n{tail}")


def run_logged(command: list[str], log: Path, what: str, *, env: dict[str, str] | None = None,
               cwd: Path = REPO, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with its stderr (and its stdout unless ``capture``) appended to
    ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE if capture else out,
                              stderr=out, text=True, env=env, cwd=cwd, check=False)
    if done.returncode != 0:
        raise _failure(what, done.returncode, log)
    return done


def machine_busy() -> float:
    """CPU seconds all of this machine's cores have been busy since boot (/proc/stat: user,
    nice, system, irq, softirq, steal; not idle or waiting for I/O)."""
    words = read_text("/proc/stat").split("\n", 1)[0].split()
    if len(words) < 9 or words[0] != "cpu":
        return 0.0
    user, nice, system, _, _, irq, softirq, steal = (int(w) for w in words[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """User and system CPU seconds of this process's children that have ended and been
    waited for, and of those they waited for in turn."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Usage:
    """What a timed step cost, and what else ran meanwhile: on a shared machine a wall time
    says little without it."""

    wall: float
    own: float  # CPU seconds of the step's processes
    busy: float  # CPU seconds of the whole machine, every core, in the same time

    @property
    def others(self) -> float:
        """CPU seconds of everything else on the machine meanwhile."""
        return max(0.0, self.busy - self.own)

    @property
    def others_cores(self) -> float:
        """How many cores everything else kept busy, on average."""
        return self.others / self.wall if self.wall > 0 else 0.0


class Meter:
    """Measures the :class:`Usage` of what runs inside ``with``: the step's processes must be
    this process's children, ended and waited for by the end of the block."""

    def __enter__(self) -> "Meter":
        self.usage: Usage | None = None
        self._start = (time.monotonic(), children_cpu(), machine_busy())
        return self

    def __exit__(self, *_: object) -> None:
        wall, own, busy = self._start
        self.usage = Usage(time.monotonic() - wall, children_cpu() - own,
                           machine_busy() - busy)


@dataclass(frozen=True)
class Timed:
    """A process run by :func:`run_timed`: its wall time, what it printed on stdout, each line
    of its progress with when it came (seconds after the start), and its CPU time against
    the rest of the machine's."""

    seconds: float
    stdout: str
    lines: list[tuple[float, str]]
    usage: Usage | None = None


def run_timed(command: list[str], log: Path, what: str, *, env: dict[str, str] | None = None,
              cwd: Path = REPO, merge: bool = False,
              started: Callable[[subprocess.Popen[str]], None] | None = None) -> Timed:
    """Run ``command``, noting when each line of its stderr (with ``merge``, of stdout and
    stderr) arrives: a tool's own progress lines tell its steps apart without it timing them.
    The lines go to ``log`` with their times. ``started`` is given the process (its stdin a
    pipe) before anything is read."""
    log.parent.mkdir(parents=True, exist_ok=True)
    lines: list[tuple[float, str]] = []
    stdout: list[str] = []
    with log.open("a") as out, Meter() as meter:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        start = time.monotonic()
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE if started else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE,
            text=True, errors="replace", env=env, cwd=cwd)
        try:
            if started is not None:
                started(process)
            progress_pipe = process.stdout if merge else process.stderr
            assert progress_pipe is not None and process.stdout is not None
            reader = None
            if not merge:
                # Both pipes are read at once: a full stdout would stall the tool.
                pipe = process.stdout
                reader = threading.Thread(target=lambda: stdout.append(pipe.read()),
                                          daemon=True)
                reader.start()
            for line in progress_pipe:
                when = time.monotonic() - start
                lines.append((when, line.rstrip("\n")))
                out.write(f"[{when:8.2f}] {line}")
            process.wait()
            if reader is not None:
                reader.join()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        seconds = time.monotonic() - start
    if process.returncode != 0:
        raise _failure(what, process.returncode, log)
    return Timed(seconds, "".join(stdout), lines, meter.usage)


def step_times(lines: Sequence[tuple[float, str]], end: float,
               steps: Sequence[tuple[str, str]], first: str) -> dict[str, float]:
    """Seconds of each step of a tool's run from its progress ``lines`` (as
    :func:`run_timed` notes them): a step starts with the first line that begins with its
    marker and lasts until the next step found, or ``end``; ``first`` is what comes before the
    first marker. Steps whose marker never came are left out."""
    starts = [(0.0, first)]
    for name, marker in steps:
        when = next((t for t, line in lines if line.startswith(marker)), None)
        if when is not None:
            starts.append((when, name))
    starts.sort(key=lambda item: item[0])
    return {name: (starts[i + 1][0] if i + 1 < len(starts) else end) - when
            for i, (when, name) in enumerate(starts)}


# Runs as "root" in a user namespace of its own (identity-mapped, so files keep their real
# owners) with a private binfmt_misc instance (Linux >= 6.7): qemu-user runs a foreign
# architecture's maintainer scripts there, and the host's binfmt_misc registrations stay
# untouched.
_BINFMT_SCRIPT = """\
read -r go
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || exit 90
printf '%s' "$PF_BINFMT" > /proc/sys/fs/binfmt_misc/register || exit 91
exec "$@"
"""


def _map_identity(process: subprocess.Popen[str]) -> None:
    """Once ``process`` is in its new user namespace, map every ID to itself and let it go."""
    mine = os.readlink("/proc/self/ns/user")
    while os.readlink(f"/proc/{process.pid}/ns/user") == mine:
        if process.poll() is not None:
            return
        time.sleep(0.005)
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{process.pid}/{name}", "w") as mapping:
            mapping.write("0 0 4294967295\n")
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.close()


def run_in_namespace(command: list[str], log: Path, what: str, *,
                     binfmt: str | None = None) -> Timed:
    """``command`` (a root filesystem builder: debootstrap, mmdebstrap) in a mount namespace of
    its own, so that what it mounts in its target goes with it even when it fails; its
    output's lines timed as :func:`run_timed` does. With ``binfmt`` (a binfmt_misc
    registration line) also in a user namespace of its own with that registration in a
    private binfmt_misc."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if binfmt is None:
        return run_timed([*unshare, "--", *command], log, what, merge=True)
    return run_timed([*unshare[:1], "--user", *unshare[1:], "--", "sh", "-c", _BINFMT_SCRIPT,
                      "sh", *command], log, what, merge=True,
                     env={**os.environ, "PF_BINFMT": binfmt}, started=_map_identity)


@contextlib.contextmanager
def qemu_lock(path: Path = QEMU_LOCK) -> Iterator[None]:
    """Boots are timed one at a time: other benchmarks' and tests' VMs that take the same
    lock wait, and so does this one for theirs."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def work_dir(prefix: str, tmpdir: str | None, keep: bool) -> Iterator[Path]:
    """A throw-away directory for one run, removed at the end unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))
    try:
        yield work
    finally:
        if keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def tree_bytes(root: Path) -> int:
    """Apparent size of the regular files below ``root``."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(directory, name))
                if not os.path.islink(os.path.join(directory, name)):
                    total += info.st_size
    return total


def first_line(command: list[str]) -> str:
    """The first line a command prints (a tool's version), or why there is none."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "not found"
    return ((done.stdout or done.stderr).strip().splitlines() or ["unknown"])[0]


def code_version(paths: Sequence[str]) -> str:
    """The commit the benchmark ran, and whether the work tree differs from it below
    ``paths`` (the code whose figures it gives)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), *argv],
                              capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (no git)"
    if not git("status", "--porcelain", "--", *paths):
        return f"commit {commit}"
    names = [f"{p}/" for p in paths]
    return (f"commit {commit} plus uncommitted changes under "
            + (f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]))


# -- statistics and formatting ---------------------------------------------------------------

def med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def load_text(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in load)


def loads_text(loads: dict[str, tuple[float, float, float]], labels: dict[str, str]) -> str:
    """The load averages taken during a run, in ``labels``' order, each with its label."""
    return "; ".join(f"{load_text(loads[key])} {label}" for key, label in labels.items()
                     if key in loads)


def phases_text(phases: dict[str, float], labels: dict[str, str]) -> str:
    """The run's duration (``phases['total']``) and each phase's, in minutes."""
    parts = [f"{label} {phases[key] / 60:.1f} min" for key, label in labels.items()
             if key in phases]
    return f"{phases.get('total', 0) / 60:.1f} min in all ({', '.join(parts)})"


def machine_lines(versions: Iterable[tuple[str, str]], *, tmpdir: str | None, code: str,
                  loads: dict[str, tuple[float, float, float]], load_labels: dict[str, str],
                  phases: dict[str, float], phase_labels: dict[str, str], sharing: str) -> str:
    """Where and how a run ran, as a Markdown list: the machine, the tools' ``versions``, the
    temporary directories' filesystem, the code (:func:`code_version`), the load averages
    taken during the run and what ``sharing`` the machine there may be, the durations."""
    temp = tmpdir or tempfile.gettempdir()
    return "\n".join(f"- {k}: {v}" for k, v in [
        *machine(), *versions,
        ("temp dirs", f"{temp} ({filesystem(temp)})"),
        ("probeforge", code),
        ("load average (1 / 5 / 15 min)", f"{loads_text(loads, load_labels)}; {sharing}"),
        ("duration", phases_text(phases, phase_labels)),
    ])


@dataclass
class Row:
    what: str
    samples: list[float]
    unit: str = "s"  # s, MiB (samples in KiB), %
    budget: float | None = None  # in the samples' unit; None for reference rows
    budget_text: str = "—"
    note: str = ""  # after the verdict: a reason the figure is what it is

    def _fmt(self, value: float) -> str:
        if self.unit == "MiB":
            return f"{value / 1024:.1f}"
        if self.unit == "%":
            return f"{value:.3f}"
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"

    @property
    def median(self) -> float | None:
        return med(self.samples)

    @property
    def verdict(self) -> str:
        median = self.median
        if median is None:
            return "not measured"
        if self.budget is None:
            return "reference (no budget)"
        if self.unit == "%":
            return "≈ 0" if median < self.budget - 1e-9 else "**not ≈ 0**"
        return "within budget" if median <= self.budget else "**over budget**"

    def cells(self) -> list[str]:
        median = self.median
        if median is None:
            return [self.what, "—", "—", "0", self.budget_text, self.verdict]
        spread = (f"{self._fmt(min(self.samples))}-{self._fmt(max(self.samples))}"
                  if len(self.samples) > 1 else "—")
        verdict = self.verdict + (f" ({self.note})" if self.note else "")
        return [self.what, self._fmt(median), spread, str(len(self.samples)), self.budget_text,
                verdict]


def render_table(rows: Sequence[Row], unit_header: str) -> str:
    lines = [f"| what | median ({unit_header}) | min-max | samples | budget | verdict |",
             "|---|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def reflow(markdown: str, width: int = 95) -> str:
    """Re-wrap paragraphs and list items (figures make hand-wrapped lines ragged); headings,
    tables and HTML comments stay as they are."""
    blocks = []
    for block in markdown.split("\n\n"):
        if block.startswith(("#", "|", "<!--", "```")):
            blocks.append(block)
            continue
        items: list[list[str]] = []
        for line in block.splitlines():
            if line.startswith("- ") or not items:
                items.append([line])
            else:
                items[-1].append(line)
        filled = []
        for item in items:
            text = " ".join(part.strip() for part in item)
            bullet = item[0].startswith("- ")
            filled.append(textwrap.fill(
                text.removeprefix("- ") if bullet else text, width,
                initial_indent="- " if bullet else "", subsequent_indent="  " if bullet else "",
                break_long_words=False, break_on_hyphens=False))
        blocks.append("\n".join(filled))
    return "\n\n".join(blocks) + "\n"
