# SPDX-License-Identifier: Apache-2.0
"""What the benchmarks' reports share: the machine they ran on, and rewriting one section of
docs/benchmarks.md between a benchmark's own markers without touching the others."""

import os
import platform
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
