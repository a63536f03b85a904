# SPDX-License-Identifier: Apache-2.0
"""Cross builds on the controller: foreign .debs, a sysroot of their libraries, autotools.

* :class:`ForeignArchive` keeps a package list of another Debian architecture in a directory
  of its own (``apt-get -oAPT::Architecture=… -oDir::State::Lists=… -oDir::State::Status=
  /dev/null``): the host's dpkg never learns about the architecture. It resolves the runtime
  library closure of the packages a build needs (or, for a root filesystem, their whole
  Depends/Pre-Depends closure less what the caller excludes) and downloads them, verified,
  into a cache.
* :func:`make_sysroot` unpacks them with ``dpkg-deb -x``. Only the requested development
  packages (headers, ``.so`` links) and runtime libraries go in, never ``libc6-dev``: the
  cross toolchain brings its own C library development files, and a second set would clash.
  The runtime ``libc6`` is there for ``-rpath-link`` and for ``qemu-<arch>-static -L``.
* :func:`autotools_build` runs ``autogen.sh``/``configure --host``/``make``/``make install
  DESTDIR=`` and refuses a configure that fell back to a host compiler (autoconf does that
  silently for C++ when ``<triplet>-g++`` is missing).
* :func:`pack_tree` writes a staged tree as a reproducible ``.tar.gz``.
"""

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builds import BuildError

# Debian architecture -> GNU triplet of Debian's cross toolchain, and the qemu-user binary.
TRIPLETS = {"mipsel": "mipsel-linux-gnu", "mips64el": "mips64el-linux-gnuabi64",
            "armhf": "arm-linux-gnueabihf", "arm64": "aarch64-linux-gnu",
            "amd64": "x86_64-linux-gnu"}
QEMU = {"mipsel": "qemu-mipsel-static", "mips64el": "qemu-mips64el-static",
        "armhf": "qemu-arm-static", "arm64": "qemu-aarch64-static",
        "amd64": "qemu-x86_64-static"}
# ELF e_machine and class/byte order expected of each architecture's binaries.
ELF_MACHINES = {"mipsel": (8, 32, "little"), "mips64el": (8, 64, "little"),
                "armhf": (40, 32, "little"), "arm64": (183, 64, "little"),
                "amd64": (62, 64, "little")}
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def run(command: Sequence[str | os.PathLike[str]], *, log: Path | None = None,
        cwd: Path | None = None, env: Mapping[str, str] | None = None,
        what: str = "") -> str:
    """Run ``command``; on failure raise BuildError with the end of its output."""
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                            text=True, errors="replace")
    output = result.stdout + result.stderr
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(str(c) for c in command)}\n{output}\n")
    if result.returncode != 0:
        where = f" (full log: {log})" if log else ""
        raise BuildError(f"{what or command[0]} failed with exit code {result.returncode}"
                         f"{where}:\n{output[-3000:]}")
    return result.stdout


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    filename: str  # path in the archive, e.g. pool/main/libp/libpcap/libpcap0.8_…_mipsel.deb
    sha256: str

    @property
    def deb_name(self) -> str:
        """The file name apt-get download writes (an epoch's ':' escaped as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _alternatives(field: str) -> list[list[str]]:
    """Package names of a Depends/Pre-Depends field: one list of alternatives per group,
    without version constraints or architecture qualifiers."""
    groups = []
    for group in field.split(","):
        names = [re.split(r"[\s(:\[]", alternative.strip(), maxsplit=1)[0]
                 for alternative in group.split("|")]
        names = [name for name in names if name]
        if names:
            groups.append(names)
    return groups


def _first_alternatives(field: str) -> list[str]:
    """Package names of a Depends/Pre-Depends field, first alternative of each group."""
    return [group[0] for group in _alternatives(field)]


def is_runtime_library(name: str) -> bool:
    """A shared-library package (Debian policy names them lib*), not a -dev or -bin one."""
    return name.startswith("lib") and not name.endswith(("-dev", "-bin", "-doc"))


class ForeignArchive:
    """A package list of Debian architecture ``arch`` kept in ``state_dir``, apart from the
    host's apt and dpkg."""

    def __init__(self, arch: str, state_dir: Path, *, mirror: str = DEFAULT_MIRROR,
                 suite: str = "bookworm", components: str = "main") -> None:
        self.arch = arch
        self.state_dir = state_dir
        self.mirror = mirror
        self.suite = suite
        self.components = components
        self.lists = state_dir / "lists"
        self.sources = state_dir / "sources.list"

    def options(self) -> list[str]:
        return [f"-oAPT::Architecture={self.arch}", f"-oAPT::Architectures={self.arch}",
                f"-oDir::State::Lists={self.lists}", "-oDir::State::Status=/dev/null",
                f"-oDir::Etc::SourceList={self.sources}", "-oDir::Etc::SourceParts=/dev/null",
                f"-oDir::Cache={self.state_dir / 'cache'}",
                # Keep apt's binary cache of the lists (images often switch it off): each
                # apt-cache call then starts in milliseconds instead of parsing the lists.
                "-oDir::Cache::pkgcache=pkgcache.bin", "-oDir::Cache::srcpkgcache=srcpkgcache.bin",
                # Our own directories: no lock on the host's apt, no drop to the _apt user.
                "-oDebug::NoLocking=true", "-oAPT::Sandbox::User=root"]

    def update(self, max_age_s: float = 7 * 86400, force: bool = False) -> bool:
        """Fetch the package list unless one younger than ``max_age_s`` is there."""
        line = f"deb [arch={self.arch}] {self.mirror} {self.suite} {self.components}\n"
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        stamp = self.state_dir / "updated"
        fresh = (stamp.is_file() and stamp.read_text() == line
                 and time.time() - stamp.stat().st_mtime < max_age_s)
        if fresh and not force:
            return False
        self.sources.write_text(line)
        run(["apt-get", *self.options(), "-q", "update"],
            what=f"apt-get update of the {self.arch} package list from {self.mirror}")
        stamp.write_text(line)
        return True

    def show(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """Control fields of the candidate version of each name (virtual names are absent)."""
        names = sorted(set(names))
        if not names:
            return {}
        result = subprocess.run(["apt-cache", *self.options(), "show", "--no-all-versions",
                                 *names], capture_output=True, text=True)
        records: dict[str, dict[str, str]] = {}
        for block in result.stdout.split("\n\n"):
            fields: dict[str, str] = {}
            key = ""
            for line in block.splitlines():
                if line[:1] in (" ", "\t") and key:
                    fields[key] += "\n" + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            if "Package" in fields:
                records.setdefault(fields["Package"], fields)
        return records

    def closure(self, wanted: Iterable[str], *, everything: bool = False,
                exclude: Iterable[str] = ()) -> list[Package]:
        """``wanted`` and the runtime libraries they depend on, transitively.

        With ``everything`` (a root filesystem rather than a sysroot), every Depends and
        Pre-Depends is followed instead, except the names in ``exclude`` (what busybox or the
        image replaces): a group is met by an alternative already chosen or excluded, else by
        its first alternative that is a real package; a group only virtual packages could meet
        is an error naming it, as is an excluded name in ``wanted``."""
        wanted = list(dict.fromkeys(wanted))
        excluded = set(exclude)
        clash = [name for name in wanted if name in excluded]
        if clash:
            raise BuildError(f"{', '.join(clash)} both wanted and excluded: drop one of them")
        found: dict[str, dict[str, str]] = {}
        known: dict[str, dict[str, str] | None] = {}  # None: no such real package
        # (groups of alternatives, the package that needs them)
        pending: list[tuple[list[str], str]] = [([name], "") for name in wanted]
        while pending:
            unknown = {n for group, _ in pending for n in group if n not in known}
            records = self.show(unknown)
            for name in unknown:
                known[name] = records.get(name)
            missing = [n for n in wanted if known.get(n) is None]
            if missing:
                raise BuildError(f"no {self.arch} package {', '.join(missing)} in {self.mirror} "
                                 f"{self.suite}")
            queue, pending = pending, []
            for group, needed_by in queue:
                if any(n in found or n in excluded for n in group):
                    continue
                choice = next((n for n in group if known[n] is not None), None)
                if choice is None:
                    if not everything:
                        continue  # a virtual library: the sysroot does without it
                    raise BuildError(
                        f"{needed_by} depends on {' | '.join(group)}, which no real {self.arch} "
                        f"package in {self.suite} is: add a package that provides it to the "
                        "list, or exclude the name if the image provides it otherwise")
                fields = known[choice]
                assert fields is not None
                found[choice] = fields
                deps = fields.get("Pre-Depends", "") + "," + fields.get("Depends", "")
                for alternatives in _alternatives(deps):
                    if not everything:
                        if not is_runtime_library(alternatives[0]):
                            continue
                        alternatives = alternatives[:1]
                    pending.append((alternatives, choice))
        return [Package(name, f["Version"], f["Architecture"], f["Filename"], f["SHA256"])
                for name, f in sorted(found.items())]

    def download(self, packages: Sequence[Package], dest: Path) -> list[Path]:
        """The packages' .debs in ``dest``, fetched (and verified) where not there yet."""
        dest.mkdir(parents=True, exist_ok=True)
        wanted = [p for p in packages
                  if not ((dest / p.deb_name).is_file()
                          and sha256_file(dest / p.deb_name) == p.sha256)]
        if wanted:
            # apt-get download checks each file against the signed package list.
            run(["apt-get", *self.options(), "-q", "download",
                 *(f"{p.name}:{p.arch}={p.version}" for p in wanted)], cwd=dest,
                what=f"apt-get download of {self.arch} packages")
        paths = [dest / p.deb_name for p in packages]
        for package, path in zip(packages, paths, strict=True):
            if not path.is_file() or sha256_file(path) != package.sha256:
                raise BuildError(f"{path} is missing or does not match the package list")
        return paths


def make_sysroot(debs: Sequence[Path], sysroot: Path) -> bool:
    """Unpack ``debs`` into ``sysroot`` unless exactly these are already unpacked there."""
    record = sysroot / ".probeforge-debs"
    want = "".join(sorted(f"{p.name}\n" for p in debs))
    if record.is_file() and record.read_text() == want:
        return False
    if sysroot.exists():
        shutil.rmtree(sysroot)
    sysroot.mkdir(parents=True)
    for deb in debs:
        run(["dpkg-deb", "-x", deb, sysroot], what=f"dpkg-deb -x {deb.name}")
    record.write_text(want)
    return True


def library_dirs(sysroot: Path, triplet: str) -> list[Path]:
    return [sysroot / "usr" / "lib" / triplet, sysroot / "lib" / triplet]


def check_toolchain(triplet: str, arch: str) -> dict[str, str]:
    """Paths of the cross compilers, or BuildError naming the Debian packages to install."""
    tools = {}
    for tool, package in (("gcc", f"gcc-{triplet}"), ("g++", f"g++-{triplet}"),
                          ("strip", f"binutils-{triplet}")):
        path = shutil.which(f"{triplet}-{tool}")
        if path is None:
            raise BuildError(f"{triplet}-{tool} not found: apt-get install {package} (a "
                             f"{arch} build needs both gcc-{triplet} and g++-{triplet})")
        tools[tool] = path
    for tool in ("autoreconf", "libtoolize", "make"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found: apt-get install autoconf automake libtool make")
    return tools


def _makefile_value(makefile: Path, name: str) -> str:
    match = re.search(rf"^{name} = (.*)$", makefile.read_text(), re.MULTILINE)
    return match.group(1).strip() if match else ""


def autotools_build(source: Path, *, triplet: str | None, sysroot: Path | None,
                    stage: Path, log: Path, prefix: str = "/usr/local",
                    configure_args: Sequence[str] = (), cflags: str = "",
                    jobs: int | None = None) -> None:
    """Configure, build and install the source tree ``source`` into ``stage`` (DESTDIR).

    With ``triplet`` this is a cross build against the libraries in ``sysroot``; without,
    a native one."""
    env = {**os.environ, "LC_ALL": "C"}
    if (source / "autogen.sh").is_file() and not (source / "configure").is_file():
        run(["sh", "./autogen.sh"], cwd=source, env=env, log=log, what="autogen.sh")
    args = [f"--prefix={prefix}", *configure_args]
    if triplet:
        assert sysroot is not None
        libs = library_dirs(sysroot, triplet)
        env["CPPFLAGS"] = f"-I{sysroot / 'usr' / 'include'}"
        env["LDFLAGS"] = " ".join([*(f"-L{d}" for d in libs),
                                   *(f"-Wl,-rpath-link,{d}" for d in libs)])
        # configure must not try to run what it builds.
        args.insert(0, f"--host={triplet}")
    if cflags:
        env["CFLAGS"] = cflags
    run(["./configure", *args], cwd=source, env=env, log=log, what="configure")
    if triplet:
        makefile = source / "Makefile"
        for var in ("CC", "CXX"):
            value = _makefile_value(makefile, var)
            if value and not value.startswith(f"{triplet}-"):
                raise BuildError(f"configure chose {var} = {value!r}, a host compiler, for a "
                                 f"{triplet} build: install gcc-{triplet} and g++-{triplet}")
    run(["make", f"-j{jobs or os.cpu_count() or 1}"], cwd=source, env=env, log=log, what="make")
    if stage.exists():
        shutil.rmtree(stage)
    run(["make", "install", f"DESTDIR={stage}"], cwd=source, env=env, log=log,
        what="make install")


def elf_info(path: Path) -> dict[str, object]:
    """Machine, class and byte order from an ELF header (what ``file`` reads)."""
    header = path.read_bytes()[:64]
    if header[:4] != b"\x7fELF":
        raise BuildError(f"{path} is not an ELF file")
    order = "little" if header[5] == 1 else "big"
    return {"class": 32 if header[4] == 1 else 64, "byteorder": order,
            "machine": int.from_bytes(header[18:20], order)}


def check_elf(path: Path, arch: str) -> dict[str, object]:
    info = elf_info(path)
    machine, bits, order = ELF_MACHINES[arch]
    if (info["machine"], info["class"], info["byteorder"]) != (machine, bits, order):
        raise BuildError(f"{path} is not a {arch} binary: {info}")
    if shutil.which("file"):
        info["file"] = run(["file", "-b", path]).strip()
    return info


def needed_libraries(binary: Path, triplet: str) -> list[str]:
    """The DT_NEEDED entries of ``binary`` (the shared libraries it loads)."""
    readelf = shutil.which(f"{triplet}-readelf") or shutil.which("readelf")
    if readelf is None:
        raise BuildError(f"readelf not found: apt-get install binutils-{triplet}")
    dynamic = run([readelf, "-d", binary], what="readelf")
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)


def check_needed(binary: Path, triplet: str, sysroot: Path) -> list[str]:
    """NEEDED libraries of ``binary``, each of which the sysroot must provide (the target
    needs the same packages at run time)."""
    needed = needed_libraries(binary, triplet)
    dirs = library_dirs(sysroot, triplet)
    missing = [lib for lib in needed if not any((d / lib).exists() for d in dirs)]
    if missing:
        raise BuildError(f"{binary.name} needs {', '.join(missing)}, which no package in the "
                         f"sysroot {sysroot} provides: add its package to the build")
    return needed


def pack_tree(tree: Path, tarball: Path, *, mtime: int = 0) -> None:
    """``tree`` as a .tar.gz with sorted names, owner root and a fixed mtime (reproducible)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(tree.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=f"./{path.relative_to(tree)}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            if info.isfile():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f".{tarball.name}.part")
    with partial.open("wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0,
                                                  filename="") as gz:
        gz.write(raw.getvalue())
    partial.replace(tarball)


def qemu_command(arch: str, sysroot: Path, binary: Path, *args: str) -> list[str]:
    """The command that runs a foreign ``binary`` under qemu-user with ``sysroot``'s libraries,
    or BuildError if qemu-user-static is not installed."""
    qemu = shutil.which(QEMU[arch])
    if qemu is None:
        raise BuildError(f"{QEMU[arch]} not found: apt-get install qemu-user-static")
    return [qemu, "-L", str(sysroot), str(binary), *args]


def write_json(path: Path, data: Mapping[str, object]) -> None:
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    partial.replace(path)
