# SPDX-License-Identifier: Apache-2.0
"""The shared base of a board's firmware: a root tree, its squashfs and its kernel, cached.

:func:`build_base` turns the recipe's packages for one board into a root filesystem that
every MiniProbe of that board shares (per-host data comes later, in the image's ``host``
part):

1. resolves the board's packages and their whole Depends/Pre-Depends closure (less what
   busybox replaces) in a package list of the board's architecture kept apart from the host's
   apt (:class:`builds.cross.ForeignArchive`, refreshed at most weekly), and the ABI-numbered
   kernel package the recipe's metapackage depends on;
2. downloads the .debs, verified against the signed lists, into ``<cache>/debs``;
3. builds the probe daemon's .deb with :mod:`pkgformats`, and Tstat with
   :mod:`builds.tstat_cross` when its source is in the artifact cache (else Tstat is left out
   with a warning naming the command that adds it);
4. unpacks everything with ``dpkg-deb -x``, drops documentation and test suites, keeps only
   the recipe's kernel modules and what they need (``modules.dep`` and soft dependencies,
   then ``depmod``), links busybox's applets, copies the board's files
   (``images/openwrt/boards/<board>/rootfs/``, and ``components/<name>/`` beside it for each
   optional component built in), writes ``/etc/board``, the ``/etc/rc.d`` start links and the
   mount points, compiles every Python module to unchecked-hash ``.pyc`` (no mtimes
   involved), checks that the tree's own interpreter imports ssl, json and the daemon (under
   qemu-user) and that no private key is in it, and packs the tree as a squashfs.

The result lives in ``<cache>/base/<key>/`` where ``key`` hashes every input (recipe, board
files, resolved packages, daemon package, Tstat, the tools that shape the output). It is built
in a temporary directory beside it and renamed into place only when complete, so an
interrupted build leaves nothing half-made, and an identical later call returns it at once.
Identical inputs give an identical tree and a bit-identical squashfs.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from builds import BuildError
from builds.cross import ELF_MACHINES, QEMU, ForeignArchive, Package, elf_info, sha256_file
from builds.workdirs import build_lock, clean_stale_builds
from firmware import FirmwareError
from firmware.recipe import Board, Recipe
from firmware.squashfs import make_squashfs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / ".cache" / "firmware"
BOARDS_DIR = REPO / "images" / "openwrt" / "boards"
TSTAT_ROLE = REPO / "roles" / "tstat"
# Bump when the base changes in a way none of the hashed inputs shows.
FORMAT = 1
# Modules whose source shapes the base: a change to them must rebuild it.
_BUILDER_SOURCES = ("firmware/rootfs.py", "firmware/squashfs.py")
# Finished bases kept per board; older ones are removed after a successful build.
KEEP_BASES = 3
DEFAULT_HOSTNAME = "miniprobe"

# Boot order of the services (/etc/rc.d/S<NN><name>); rcK stops them in reverse.
SERVICES = {"network": 10, "dropbear": 50, "probe-daemon": 60, "tstat": 70}

# Below /usr/share: what a device without man, info or locales never reads. Each package's
# copyright file stays, for the licences of what the image redistributes.
_SHARE_PRUNE = ("man", "info", "locale", "lintian", "bug", "initramfs-tools", "bash-completion",
                "zsh", "gdb", "menu", "pixmaps", "applications", "doc-base", "common-licenses")
# Below /usr/lib/python3.X: test suites, GUI and teaching modules, installers.
_PYTHON_PRUNE = ("test", "idlelib", "tkinter", "turtledemo", "turtle.py", "lib2to3",
                 "ensurepip", "pydoc_data", "__phello__", "__hello__.py", "venv")
_PYTHON_PRUNE_DIRS = ("test", "tests", "idle_test")
_DYNLOAD_PRUNE = re.compile(r"^(_test|_ctypes_test|_xxtestfuzz|xxlimited|_xxsubinterpreters)")
# Whole directories of the packages that mean nothing under busybox init.
_TREE_PRUNE = ("boot", "lib/systemd", "usr/lib/systemd", "usr/share/doc-base",
               "etc/systemd", "etc/init", "usr/lib/tmpfiles.d", "usr/lib/sysusers.d")
# glibc's iconv converters (a quarter of the tree): nothing in the image calls iconv, and
# Python's codecs are its own.
_GCONV = "gconv"
# Busybox applets not linked: linuxrc is an initrd entry point that would sit in /.
_APPLETS_SKIPPED = {"linuxrc"}

# A PEM private key: the armour line followed by base64 (programs that read or write keys,
# such as dropbearconvert, carry the armour line alone as a format string).
_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n"
                          rb"(?:[A-Za-z-]+: [^\n]*\n)*\r?\n?[A-Za-z0-9+/=]{40,}")
# Names of key files: SSH host keys (dropbear's binary format has no armour), *.key, id_*.
_KEY_FILE = re.compile(r"(_host_key|\.key|^id_(rsa|dsa|ecdsa|ed25519))$")


@dataclass(frozen=True)
class Base:
    """A finished base of one board; every path is inside ``dir`` (read-only for callers)."""

    key: str  # SHA-256 of the inputs
    board: str
    version: str  # the recipe's firmware version
    dir: Path
    tree: Path  # the root tree
    squashfs: Path  # the tree as squashfs (xz): the image's rootfs part
    kernel: Path  # the kernel ELF from the package's /boot, as qemu -kernel takes it
    kernel_version: str
    epoch: int  # SOURCE_DATE_EPOCH of everything in the base
    packages: list[dict[str, str]]  # name, version, architecture, sha256 of the .deb
    inputs: dict[str, str]  # input name -> SHA-256
    omitted: list[dict[str, str]]  # component, reason, fix
    components: list[str]  # components built in

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "board": self.board, "version": self.version,
                "kernel": self.kernel.name, "kernel_version": self.kernel_version,
                "epoch": self.epoch, "packages": self.packages, "inputs": self.inputs,
                "omitted": self.omitted, "components": self.components}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _run(command: list[str], what: str, *, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd,
                            errors="replace")
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit code {result.returncode}"
        raise FirmwareError(f"{what} failed: {last}")
    return result.stdout


# --- inputs ------------------------------------------------------------------------------


def tree_digest(root: Path) -> str:
    """SHA-256 over every path, type, permission bits and content (or link target) below
    ``root``: what copying the directory into a tree depends on."""
    digest = hashlib.sha256()
    if not root.exists():
        return _sha256(b"")
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        info = path.lstat()
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(info.st_mode):
            entry = f"L {rel} {os.readlink(path)}\n".encode()
        elif stat.S_ISDIR(info.st_mode):
            entry = f"D {rel}\n".encode()
        else:
            entry = f"F {rel} {_file_mode(info.st_mode):o} {sha256_file(path)}\n".encode()
        digest.update(entry)
    return digest.hexdigest()


def _tool_versions(python: str) -> str:
    """What the host tools that write bytes into the base are (a new one may write others)."""
    squashfs = _run(["mksquashfs", "-version"], "mksquashfs -version").splitlines()[0]
    depmod = _run(["depmod", "--version"], "depmod --version").splitlines()[0]
    interpreter = _run([python, "-c", "import sys; print(sys.version)"],
                       "the host Python").strip()
    return f"{squashfs}\n{depmod}\npython {interpreter}\n"


# --- packages ----------------------------------------------------------------------------


def _archive(board: Board, cache: Path) -> ForeignArchive:
    return ForeignArchive(board.arch, cache / "apt" / f"{board.arch}-{board.suite}",
                          mirror=board.mirror, suite=board.suite,
                          components=" ".join(board.areas))


def _lists_digest(archive: ForeignArchive) -> str:
    """The signed release files of the current package list: resolving the same request
    against the same lists gives the same packages."""
    digest = hashlib.sha256()
    for path in sorted(archive.lists.glob("*Release")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _kernel_package(archive: ForeignArchive, metapackage: str) -> Package:
    record = archive.show([metapackage]).get(metapackage)
    if record is None:
        raise FirmwareError(f"no {archive.arch} kernel package {metapackage} in {archive.mirror} "
                            f"{archive.suite}: fix `kernel:` of the board in the recipe")
    depends = record.get("Depends", "") + "," + record.get("Pre-Depends", "")
    images = [name.strip().split()[0] for group in depends.split(",") for name in
              group.split("|")[:1] if name.strip().startswith("linux-image-")]
    if not images:
        raise FirmwareError(f"{metapackage} depends on no linux-image-* package: name the "
                            "kernel metapackage (e.g. linux-image-4kc-malta) in the recipe")
    image = images[0]
    fields = archive.show([image]).get(image)
    if fields is None:
        raise FirmwareError(f"{metapackage} depends on {image}, which {archive.mirror} "
                            f"{archive.suite} lacks: refresh the package list (refresh=True)")
    return Package(image, fields["Version"], fields["Architecture"], fields["Filename"],
                   fields["SHA256"])


def resolve_packages(board: Board, wanted: list[str], archive: ForeignArchive,
                     cache: Path) -> tuple[list[Package], Package]:
    """The packages to install (``wanted`` and their closure) and the kernel package,
    remembered per package list so that a warm build does not ask apt again."""
    request = {"wanted": sorted(wanted), "exclude": sorted(board.exclude),
               "kernel": board.kernel, "lists": _lists_digest(archive)}
    memo = archive.state_dir / "resolved" / f"{_sha256(_canonical(request))}.json"
    if memo.is_file():
        data = json.loads(memo.read_text())
        return ([Package(**p) for p in data["packages"]], Package(**data["kernel"]))
    try:
        packages = archive.closure(wanted, everything=True, exclude=board.exclude)
    except BuildError as exc:
        raise FirmwareError(f"{board.name}: {exc}") from None
    kernel = _kernel_package(archive, board.kernel)
    memo.parent.mkdir(parents=True, exist_ok=True)
    partial = memo.with_name(f".{memo.name}.part")
    partial.write_text(json.dumps({"packages": [p.__dict__ for p in packages],
                                   "kernel": kernel.__dict__}, indent=1))
    partial.replace(memo)
    return packages, kernel


# --- kernel modules ----------------------------------------------------------------------


def _module_name(path: str) -> str:
    name = PurePosixPath(path).name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """What depmod wrote for one kernel: each module's file and hard dependencies, its soft
    dependencies, the aliases and what is built in."""

    paths: dict[str, str]  # name -> path below /lib/modules/<version>
    depends: dict[str, list[str]]  # name -> names, in modules.dep order
    softdeps: dict[str, list[str]]  # name -> names or aliases to load first
    aliases: dict[str, list[str]]  # alias -> names
    builtin: set[str]

    @classmethod
    def read(cls, moddir: Path) -> "ModuleIndex":
        paths: dict[str, str] = {}
        depends: dict[str, list[str]] = {}
        for line in (moddir / "modules.dep").read_text().splitlines():
            if ":" not in line:
                continue
            target, _, deps = line.partition(":")
            name = _module_name(target)
            paths[name] = target
            depends[name] = [_module_name(d) for d in deps.split()]
        softdeps: dict[str, list[str]] = {}
        softdep_file = moddir / "modules.softdep"
        if softdep_file.is_file():
            for line in softdep_file.read_text().splitlines():
                words = line.split()
                if len(words) > 2 and words[0] == "softdep":
                    before = []
                    section = ""
                    for word in words[2:]:
                        if word.endswith(":"):
                            section = word
                        elif section == "pre:":
                            before.append(word)
                    softdeps.setdefault(words[1].replace("-", "_"), []).extend(before)
        aliases: dict[str, list[str]] = {}
        alias_file = moddir / "modules.alias"
        if alias_file.is_file():
            for line in alias_file.read_text().splitlines():
                words = line.split()
                if len(words) == 3 and words[0] == "alias":
                    aliases.setdefault(words[1], []).append(words[2].replace("-", "_"))
        builtin_file = moddir / "modules.builtin"
        builtin = ({_module_name(line) for line in builtin_file.read_text().split()}
                   if builtin_file.is_file() else set())
        return cls(paths, depends, softdeps, aliases, builtin)

    def lookup(self, name: str) -> list[str]:
        """Module names that ``name`` (a module name or an alias) stands for."""
        normal = name.replace("-", "_")
        if normal in self.paths or normal in self.builtin:
            return [normal]
        return [m for m in self.aliases.get(name, []) if m in self.paths or m in self.builtin]

    def load_order(self, names: Iterable[str], kernel_version: str) -> list[str]:
        """The modules to load for ``names``, each after what it needs (hard dependencies and
        soft pre-dependencies); built-in ones are left out. FirmwareError for a name that is
        neither a module nor built in."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order or name in self.builtin or name in visiting:
                return
            visiting.add(name)
            for soft in self.softdeps.get(name, []):
                for target in self.lookup(soft):
                    visit(target)
            # modules.dep lists the dependencies of dependencies too, nearest first.
            for dep in reversed(self.depends.get(name, [])):
                visit(dep)
            order.append(name)

        for name in names:
            found = self.lookup(name)
            if not found:
                raise FirmwareError(f"kernel {kernel_version} has no module {name!r}, built in "
                                    "or loadable: fix the board's `modules:` in the recipe")
            for module in found:
                visit(module)
        return order


def module_load_order(tree: Path, kernel_version: str, names: Iterable[str]) -> list[str]:
    """The module files (paths below ``/lib/modules/<kernel_version>``) to insert, in order,
    so that ``names`` are loaded in a root ``tree`` built by :func:`build_base`: what an
    initramfs without a working modprobe needs."""
    index = ModuleIndex.read(tree / "lib" / "modules" / kernel_version)
    return [index.paths[name] for name in index.load_order(names, kernel_version)]


def _install_modules(kernel_root: Path, tree: Path, kernel_version: str,
                     wanted: Iterable[str]) -> list[str]:
    """Copy the wanted modules and their closure from the unpacked kernel package into the
    tree, with depmod's index; return the names kept."""
    source = kernel_root / "lib" / "modules" / kernel_version
    if not source.is_dir():
        raise FirmwareError(f"the kernel package has no lib/modules/{kernel_version}: its name "
                            "and its modules disagree; refresh the package list")
    # The package ships no modules.dep; index the whole set to find dependencies.
    _run(["depmod", "-b", str(kernel_root), kernel_version], f"depmod of {kernel_version}")
    index = ModuleIndex.read(source)
    keep = index.load_order(wanted, kernel_version)
    target = tree / "lib" / "modules" / kernel_version
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in keep:
        dest = target / index.paths[name]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / index.paths[name], dest)
    kept_paths = {index.paths[name] for name in keep}
    order = source / "modules.order"
    if order.is_file():
        lines = [line for line in order.read_text().splitlines() if line in kept_paths]
        (target / "modules.order").write_text("".join(f"{line}\n" for line in lines))
    for name in ("modules.builtin", "modules.builtin.modinfo"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    _run(["depmod", "-b", str(tree), kernel_version], f"depmod of the kept {kernel_version} "
                                                      "modules")
    return keep


# --- tree assembly -----------------------------------------------------------------------


def _extract(deb: Path, tree: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(tree)], f"dpkg-deb -x {deb.name}")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _prune(tree: Path, python_version: str) -> None:
    for rel in _TREE_PRUNE:
        _remove(tree / rel)
    share = tree / "usr" / "share"
    for name in _SHARE_PRUNE:
        _remove(share / name)
    doc = share / "doc"
    if doc.is_dir():
        for package in sorted(doc.iterdir()):
            if package.is_dir() and not package.is_symlink():
                for item in sorted(package.iterdir()):
                    if item.name != "copyright":
                        _remove(item)
            else:
                _remove(package)
    for triplet in _triplets(tree):
        _remove(tree / "usr" / "lib" / triplet / _GCONV)
    stdlib = tree / "usr" / "lib" / f"python{python_version}"
    if stdlib.is_dir():
        for name in _PYTHON_PRUNE:
            _remove(stdlib / name)
        for path in sorted(stdlib.rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink() and path.name in _PYTHON_PRUNE_DIRS:
                _remove(path)
        dynload = stdlib / "lib-dynload"
        if dynload.is_dir():
            for path in sorted(dynload.iterdir()):
                if _DYNLOAD_PRUNE.match(path.name):
                    _remove(path)


def _file_mode(mode: int) -> int:
    """The mode a file from the repository gets: git keeps only the executable bit, so the
    rest must not depend on the checkout's umask."""
    return 0o755 if mode & stat.S_IXUSR else 0o644


# Files of the board whose mode git cannot carry.
_SPECIAL_MODES = {"etc/shadow": 0o600}


def _copy_into(source: Path, tree: Path) -> None:
    """Copy the directory ``source`` over ``tree`` (files replace what packages put there):
    symlinks as they are, directories 0755, files 0755 or 0644 by their executable bit."""
    for path in sorted(source.rglob("*"), key=lambda p: p.relative_to(source).as_posix()):
        rel = path.relative_to(source)
        dest = tree / rel
        if path.is_symlink():
            _remove(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(os.readlink(path))
        elif path.is_dir():
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                _remove(dest)
            if not dest.is_dir():
                dest.mkdir(parents=True)
                dest.chmod(0o755)
        else:
            _remove(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            dest.chmod(_SPECIAL_MODES.get(rel.as_posix(), _file_mode(path.stat().st_mode)))


def _link_applets(tree: Path, arch: str) -> int:
    """A symlink to busybox for each of its applets that no package installed for real."""
    busybox = tree / "bin" / "busybox"
    if not busybox.is_file():
        raise FirmwareError("the tree has no /bin/busybox: keep busybox-static in the "
                            "board's packages")
    qemu = shutil.which(QEMU[arch])
    if qemu is None:
        raise FirmwareError(f"{QEMU[arch]} not found (it lists busybox's applets): apt-get "
                            "install qemu-user-static")
    listing = _run([qemu, str(busybox), "--list-full"], "busybox --list-full")
    count = 0
    for applet in sorted(set(listing.split())):
        if applet in _APPLETS_SKIPPED or applet.startswith("/") or ".." in applet:
            continue
        link = tree / applet
        if os.path.lexists(link):
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(busybox, link.parent))
        count += 1
    if not (tree / "bin" / "sh").exists():
        raise FirmwareError("busybox offers no sh applet and no package installed /bin/sh: "
                            "use a busybox with ash")
    return count


def _inside(tree: Path, path: Path) -> Path:
    """``path`` (in the tree) with its symlinks resolved as the device would: absolute link
    targets are taken relative to the tree, never to the build host."""
    parts = list(path.relative_to(tree).parts)
    resolved = tree
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = resolved / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise FirmwareError(f"symlink loop at {candidate}: fix the link in the tree")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                resolved = tree
                parts = list(target.parts[1:]) + parts
            else:
                parts = list(target.parts) + parts
        elif part == "..":
            resolved = resolved.parent if resolved != tree else tree
        elif part != ".":
            resolved = candidate
    return resolved


_COMPILER = """
import py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
failed = []
for line in sys.stdin.read().splitlines():
    source, cfile, dfile = line.split("\\0")
    try:
        py_compile.compile(source, cfile=cfile, dfile=dfile, doraise=True,
                           invalidation_mode=mode)
    except py_compile.PyCompileError as exc:
        failed.append(f"{dfile}: {exc.msg.strip().splitlines()[-1]}")
if failed:
    sys.exit("; ".join(failed[:5]))
"""


def host_python(version: str) -> str:
    """A host interpreter of the guest's Python ``version`` (same bytecode magic)."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        raise FirmwareError(f"no Python {version} on the build host to compile the image's "
                            f"bytecode with: install python{version} (its .pyc must match "
                            "the image's interpreter)")
    return found


def _compile_bytecode(tree: Path, roots: Iterable[str], python: str, jobs: int) -> int:
    """Compile every .py below ``roots`` (guest paths) to __pycache__/*.cpython-XY.pyc with
    unchecked hashes, in ``jobs`` processes with a fixed share of the files each (the same
    files in the same order per process, so the output bytes do not depend on scheduling)."""
    tag = _run([python, "-c", "import sys; print(sys.implementation.cache_tag)"],
               "the host Python").strip()
    lines = []
    for root in roots:
        base = tree / root.lstrip("/")
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py"), key=lambda p: p.as_posix()):
            if "__pycache__" in path.parts:
                continue
            source = _inside(tree, path)
            if not source.is_file():
                continue
            guest = "/" + path.relative_to(tree).as_posix()
            cfile = path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
            lines.append(f"{source}\0{cfile}\0{guest}")
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("SOURCE_DATE_EPOCH", None)  # would switch py_compile to checked hashes
    workers = [subprocess.Popen([python, "-I", "-c", _COMPILER], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env)
               for _ in range(jobs)]
    errors = []
    for index, worker in enumerate(workers):
        assert worker.stdin is not None
        worker.stdin.write("\n".join(lines[index::jobs]))
        worker.stdin.close()
    for worker in workers:
        assert worker.stderr is not None
        error = worker.stderr.read().strip()
        if worker.wait() != 0:
            errors.append(error.splitlines()[-1] if error else "failed")
    if errors:
        raise FirmwareError(f"compiling the image's Python modules failed: {errors[0]} "
                            "(a module the host Python cannot compile: fix or drop it)")
    return len(lines)


def _set_times(tree: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))


def _find_private_keys(tree: Path) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as data:
                if _KEY_FILE.search(name) or _PRIVATE_KEY.search(data.read()):
                    found.append("/" + path.relative_to(tree).as_posix())
    return found


def _smoke_test(tree: Path, arch: str, python_version: str) -> None:
    """The tree's own interpreter (under qemu-user) imports what the daemon needs, from the
    precompiled bytecode; a missing library or module fails the build here, not on a device."""
    qemu = shutil.which(QEMU[arch])
    assert qemu is not None  # checked when the applets were listed
    # The daemon's directory as a host path: qemu-user's -L does not map every system call
    # (stat goes to the host), while the interpreter finds its stdlib from its own location.
    code = (f"import sys; sys.path.insert(0, {str(tree / 'usr/lib/probe-daemon')!r}); "
            "import ssl, json, http.client, logging.handlers, sqlite3, xml.etree.ElementTree; "
            "import probe_daemon.cli, probe_daemon.registry; "
            "print(ssl.OPENSSL_VERSION)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C"}
    interpreter = tree / "usr" / "bin" / f"python{python_version}"
    result = subprocess.run([qemu, "-L", str(tree), str(interpreter),
                             "-I", "-B", "-c", code], capture_output=True, text=True, env=env,
                            timeout=300)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise FirmwareError(f"the image's python{python_version} cannot import what the probe "
                            f"daemon needs: {lines[-1] if lines else '?'} (add the package that "
                            "provides it to the board's packages)")


# --- components --------------------------------------------------------------------------


def _probe_daemon_deb(cache: Path, epoch: int) -> Path:
    from pkgformats import BuildError as PackageError
    from pkgformats import deb
    from pkgformats.__main__ import daemon_version
    from pkgformats.tree import build_tree

    try:
        version = daemon_version(REPO)
        package = build_tree("debian", REPO, version, epoch)
        return deb.build(package, cache / "probe-daemon", epoch)
    except PackageError as exc:
        raise FirmwareError(f"probe-daemon package: {exc}") from None


def _tstat_config(tree: Path) -> None:
    """/etc/tstat as the tstat role writes it with its defaults (templates reused as they are):
    every runtime setting present and 0, every address internal, the analysis options."""
    import jinja2

    sections = yaml.safe_load((TSTAT_ROLE / "vars" / "main.yml").read_text())[
        "__tstat_runtime_sections"]
    args = ["-s", "/var/log/tstat", "-T", "/etc/tstat/runtime.conf",
            "-N", "/etc/tstat/net.conf"]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TSTAT_ROLE / "templates"),
                             trim_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    values = {"ansible_managed": "Written by the probeforge firmware build (firmware/rootfs.py) "
                                 "from roles/tstat/templates",
              "__tstat_runtime_sections": sections, "tstat_runtime": {},
              "__tstat_networks": [], "__tstat_networks_what": "internal networks (-N)",
              "__tstat_args": args, "tstat_interface": "eth0"}
    config = tree / "etc" / "tstat"
    config.mkdir(parents=True, exist_ok=True)
    for name in ("runtime.conf", "net.conf", "tstat.conf"):
        text = env.get_template(f"etc/tstat/{name}.j2").render(values)
        (config / name).write_text(text)
        (config / name).chmod(0o644)


def _install_tstat(built: dict[str, Any], tree: Path, board: Board) -> None:
    with tarfile.open(built["tarball"]) as tar:
        tar.extractall(tree, filter="data")
    component = BOARDS_DIR / board.name / "components" / "tstat"
    if component.is_dir():
        _copy_into(component, tree)
    _tstat_config(tree)
    (tree / "var" / "log" / "tstat").mkdir(parents=True, exist_ok=True)
    libdirs = [tree / "lib" / t for t in _triplets(tree)] + \
              [tree / "usr" / "lib" / t for t in _triplets(tree)]
    missing = [lib for lib in built["elf"].get("needed", [])
               if not any(os.path.lexists(d / lib) for d in libdirs)]
    if missing:
        raise FirmwareError(f"tstat needs {', '.join(missing)}, which no package of the image "
                            f"provides: add its package to component_packages.tstat of board "
                            f"{board.name} in the recipe")


def _triplets(tree: Path) -> list[str]:
    lib = tree / "usr" / "lib"
    return sorted(p.name for p in lib.iterdir() if p.is_dir() and "-linux-" in p.name) \
        if lib.is_dir() else []


def _omitted(component: str, artifact: str, exc: Exception) -> dict[str, str]:
    return {"component": component, "reason": str(exc),
            "fix": f"probeforge-artifacts fetch {artifact} (or make the file as the manifest "
                   "says and run probeforge-artifacts add FILE; docs/artifacts.md), then build "
                   "again"}


# --- the build ---------------------------------------------------------------------------


def load_base(directory: Path) -> Base | None:
    record_path = directory / "base.json"
    if not record_path.is_file():
        return None
    data = json.loads(record_path.read_text())
    base = Base(key=data["key"], board=data["board"], version=data["version"], dir=directory,
                tree=directory / "tree", squashfs=directory / "rootfs.squashfs",
                kernel=directory / data["kernel"], kernel_version=data["kernel_version"],
                epoch=data["epoch"], packages=data["packages"], inputs=data["inputs"],
                omitted=data["omitted"], components=data["components"])
    if not (base.tree.is_dir() and base.squashfs.is_file() and base.kernel.is_file()):
        return None
    return base


def _drop_old(bases: Path, board: str, keep: int) -> None:
    finished = []
    for directory in bases.iterdir():
        record = directory / "base.json"
        if directory.name.startswith(".") or not record.is_file():
            continue
        with contextlib.suppress(ValueError, KeyError):
            if json.loads(record.read_text())["board"] == board:
                finished.append((record.stat().st_mtime, directory))
    for _, directory in sorted(finished, reverse=True)[keep:]:
        shutil.rmtree(directory, ignore_errors=True)


def build_base(recipe: Recipe, board_name: str, *, cache: Path = DEFAULT_CACHE,
               progress: Callable[[str], None] = print, epoch: int | None = None,
               refresh: bool = False, artifact_cache: str | None = None,
               artifact_manifest: str | None = None, keep: int = KEEP_BASES) -> Base:
    """The base of ``board_name``, built unless an identical one is in ``cache``.

    ``epoch`` overrides the recipe's source_date_epoch; ``refresh`` fetches the package list
    even when it is less than a week old; ``artifact_cache``/``artifact_manifest`` override
    where Tstat's source is looked for (else $PROBEFORGE_ARTIFACT_CACHE and the defaults)."""
    from artifacts import ArtifactError, verified_path
    from builds import tstat_cross

    started = time.monotonic()
    board = recipe.board(board_name)
    board_files = BOARDS_DIR / board.name / "rootfs"
    if not (board_files / "etc" / "inittab").is_file():
        raise FirmwareError(f"no board files in {board_files} (etc/inittab at least): add the "
                            "board's root filesystem files there")
    epoch = recipe.source_date_epoch if epoch is None else epoch
    cache = cache.resolve()
    archive = _archive(board, cache)
    try:
        if archive.update(force=refresh):
            progress(f"fetched the {board.arch} package list of {board.mirror} {board.suite}")
    except BuildError as exc:
        raise FirmwareError(str(exc).splitlines()[0] + " (check the mirror in the recipe and "
                            "the network)") from None

    components = ["probe-daemon"]
    omitted: list[dict[str, str]] = []
    tstat_source: Path | None = None
    spec = recipe.components.get("tstat")
    if spec is not None and spec.artifact is not None:
        try:
            tstat_source = Path(verified_path(spec.artifact, artifact_cache, artifact_manifest))
            components.append("tstat")
        except ArtifactError as exc:
            if spec.required:
                raise FirmwareError(f"tstat is required by the recipe but: {exc}") from None
            omitted.append(_omitted("tstat", spec.artifact, exc))
            progress(f"warning: Tstat left out of the {board.name} image: its source "
                     f"({spec.artifact}) is not in the artifact cache. To add it: "
                     f"probeforge-artifacts fetch {spec.artifact} (or probeforge-artifacts add "
                     "FILE, see docs/artifacts.md), then build again")

    wanted = list(board.packages)
    for component in components:
        wanted += [p for p in board.component_packages.get(component, ()) if p not in wanted]
    progress(f"resolving {len(wanted)} packages for {board.name} ({board.suite} {board.arch})")
    packages, kernel_package = resolve_packages(board, wanted, archive, cache)
    everything = [*packages, kernel_package]
    debs_dir = cache / "debs"
    absent = [p for p in everything if not (debs_dir / p.deb_name).is_file()]
    if absent:
        progress(f"downloading {len(absent)} of {len(everything)} packages")
    try:
        debs = archive.download(everything, debs_dir)
    except BuildError:
        # A package list older than the mirror names versions it no longer has.
        progress("the mirror has moved on: fetching the package list again")
        archive.update(force=True)
        packages, kernel_package = resolve_packages(board, wanted, archive, cache)
        everything = [*packages, kernel_package]
        try:
            debs = archive.download(everything, debs_dir)
        except BuildError as exc:
            raise FirmwareError(str(exc).splitlines()[0]) from None
    deb_of = {p.name: d for p, d in zip(everything, debs, strict=True)}

    daemon_deb = _probe_daemon_deb(cache, epoch)
    tstat_built: dict[str, Any] | None = None
    if tstat_source is not None:
        progress(f"cross-building Tstat for {board.arch} (reused when unchanged)")
        try:
            tstat_built = tstat_cross.build(tstat_source, cache / "tstat" / board.arch,
                                            arch=board.arch, cache=cache / "cross",
                                            mirror=board.mirror, suite=board.suite)
        except BuildError as exc:
            raise FirmwareError(f"Tstat cross build: {str(exc).splitlines()[0]}") from None

    python_version = _guest_python(packages)
    python = host_python(python_version)
    resolution = [{"name": p.name, "version": p.version, "architecture": p.arch,
                   "sha256": p.sha256} for p in sorted(everything, key=lambda p: p.name)]
    inputs = {
        "format": _sha256(str(FORMAT).encode()),
        "recipe": _sha256(_canonical({"version": recipe.version, "epoch": epoch,
                                      "board": board.as_data(), "components": components})),
        "board-files": tree_digest(BOARDS_DIR / board.name / "rootfs"),
        "packages": _sha256(_canonical(resolution)),
        "probe-daemon": sha256_file(daemon_deb),
        "builder": _sha256(b"".join((REPO / s).read_bytes() for s in _BUILDER_SOURCES)),
        "tools": _sha256(_tool_versions(python).encode()),
    }
    if tstat_built is not None and tstat_source is not None:
        inputs["tstat-source"] = sha256_file(tstat_source)
        inputs["tstat-build"] = tstat_built["sha256"]
        inputs["tstat-files"] = tree_digest(BOARDS_DIR / board.name / "components" / "tstat")
        inputs["tstat-role"] = _sha256(
            tree_digest(TSTAT_ROLE / "templates" / "etc" / "tstat").encode()
            + (TSTAT_ROLE / "vars" / "main.yml").read_bytes())
    key = _sha256(_canonical(inputs))

    bases = cache / "base"
    final = bases / key
    with build_lock(bases / ".lock"):
        existing = load_base(final)
        if existing is not None:
            # Recently used: the last bases to be dropped when the cache is trimmed.
            os.utime(final / "base.json")
            progress(f"base {key[:16]} of {board.name} is cached ({final})")
            return existing
        clean_stale_builds(bases, os.getpid())
        if final.exists():
            shutil.rmtree(final)
        work = bases / f".build-{key[:16]}-{os.getpid()}"
        try:
            base = _assemble(work, final, key=key, recipe=recipe, board=board, epoch=epoch,
                             packages=resolution, deb_of=deb_of, kernel_package=kernel_package,
                             daemon_deb=daemon_deb, tstat_built=tstat_built, inputs=inputs,
                             omitted=omitted, components=components, python=python,
                             python_version=python_version, progress=progress)
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        _drop_old(bases, board.name, keep)
    base = load_base(final)
    assert base is not None
    progress(f"base {key[:16]} of {board.name} ready in {time.monotonic() - started:.0f} s "
             f"({final})")
    return base


def _guest_python(packages: list[Package]) -> str:
    for package in packages:
        match = re.fullmatch(r"python(3\.\d+)-minimal", package.name)
        if match:
            return match.group(1)
    raise FirmwareError("no python3.X-minimal among the packages: keep python3-minimal in "
                        "the board's packages (the probe daemon runs on it)")


def _assemble(work: Path, final: Path, *, key: str, recipe: Recipe, board: Board, epoch: int,
              packages: list[dict[str, str]], deb_of: dict[str, Path],
              kernel_package: Package, daemon_deb: Path, tstat_built: dict[str, Any] | None,
              inputs: dict[str, str], omitted: list[dict[str, str]], components: list[str],
              python: str, python_version: str, progress: Callable[[str], None]) -> Base:
    tree = work / "tree"
    tree.mkdir(parents=True)
    # The root of a filesystem: 0755, whatever the umask of this process.
    tree.chmod(0o755)
    names = sorted(n for n in deb_of if n != kernel_package.name)
    progress(f"extracting {len(names)} packages")
    for name in names:
        _extract(deb_of[name], tree)
    _extract(daemon_deb, tree)

    kernel_version = kernel_package.name.removeprefix("linux-image-")
    progress(f"kernel {kernel_version}: keeping {', '.join(board.modules)} and what they need")
    kernel_root = work / "kernel-package"
    kernel_root.mkdir()
    _extract(deb_of[kernel_package.name], kernel_root)
    images = sorted((kernel_root / "boot").glob(f"vmlinu*-{kernel_version}"))
    if not images:
        raise FirmwareError(f"{kernel_package.name} has no /boot/vmlinu*-{kernel_version}: "
                            "name a kernel metapackage whose kernel is an ELF in the recipe")
    kernel = work / images[0].name
    shutil.copyfile(images[0], kernel)
    try:
        elf = elf_info(kernel)
    except BuildError as exc:
        raise FirmwareError(f"{images[0].name} {exc}: this board boots the ELF with qemu "
                            "-kernel; pick a kernel package that ships one") from None
    machine, _, byteorder = ELF_MACHINES[board.arch]
    if (elf["machine"], elf["byteorder"]) != (machine, byteorder):
        raise FirmwareError(f"{images[0].name} is no {board.arch} kernel (ELF machine "
                            f"{elf['machine']}, {elf['byteorder']}-endian): fix `kernel:` of "
                            "the board in the recipe")
    kept = _install_modules(kernel_root, tree, kernel_version, board.modules)
    shutil.rmtree(kernel_root)
    progress(f"kernel modules: {len(kept)} kept")

    if tstat_built is not None:
        _install_tstat(tstat_built, tree, board)
    _prune(tree, python_version)
    count = _link_applets(tree, board.arch)
    progress(f"busybox: {count} applet links")
    _copy_into(BOARDS_DIR / board.name / "rootfs", tree)
    _system_files(tree, recipe, board, components)

    progress("compiling Python bytecode")
    compiled = _compile_bytecode(tree, ["/usr/lib/python3", f"/usr/lib/python{python_version}",
                                        "/usr/lib/probe-daemon"],
                                 python, max(1, min(4, os.cpu_count() or 1)))
    progress(f"compiled {compiled} modules; checking the image's Python under qemu-user")
    _smoke_test(tree, board.arch, python_version)
    secrets = _find_private_keys(tree)
    if secrets:
        raise FirmwareError(f"the shared base holds private key material in {secrets[0]}: "
                            "per-device secrets belong in the host part; remove the file")
    _set_times(tree, epoch)
    progress("packing the root tree as squashfs (xz)")
    make_squashfs(tree, work / "rootfs.squashfs", epoch=epoch)
    base = Base(key=key, board=board.name, version=recipe.version, dir=final,
                tree=final / "tree", squashfs=final / "rootfs.squashfs",
                kernel=final / kernel.name, kernel_version=kernel_version, epoch=epoch,
                packages=packages, inputs=inputs, omitted=omitted, components=components)
    (work / "base.json").write_text(json.dumps(base.record(), indent=1, sort_keys=True) + "\n")
    return base


def _system_files(tree: Path, recipe: Recipe, board: Board, components: list[str]) -> None:
    """What the build writes itself: identity of the board, services, mount points, links."""
    etc = tree / "etc"

    def write(rel: str, text: str, mode: int = 0o644) -> None:
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    def link(rel: str, target: str) -> None:
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(path)
        path.symlink_to(target)

    def directory(rel: str, mode: int = 0o755) -> None:
        path = tree / rel
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)

    # sysupgrade refuses an image whose header names another board than this file.
    write("etc/board", f"{board.name}\n")
    if not (etc / "hostname").is_file():
        write("etc/hostname", f"{DEFAULT_HOSTNAME}\n")
    for rel, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777),
                      ("mnt", 0o755), ("root", 0o700), ("overlay", 0o755), ("rom", 0o755),
                      ("rom-host", 0o755), ("var/run", 0o755), ("var/log", 0o755),
                      ("var/lib", 0o755), ("var/lib/probe-daemon", 0o700),
                      ("etc/dropbear", 0o700), ("etc/uci-defaults", 0o755),
                      ("etc/rc.d", 0o755), ("root/.ssh", 0o700)):
        directory(rel, mode)
    link("run", "var/run")
    link("var/tmp", "../tmp")
    link("etc/mtab", "../proc/mounts")
    # /etc lives on flash; the DHCP client writes the resolvers into RAM.
    link("etc/resolv.conf", "../tmp/resolv.conf")
    # Debian's dropbear reads ~/.ssh/authorized_keys; OpenWrt's contract keeps the keys in
    # /etc/dropbear, which sysupgrade keeps.
    link("root/.ssh/authorized_keys", "../../etc/dropbear/authorized_keys")
    rc = etc / "rc.d"
    for old in rc.iterdir():
        _remove(old)
    for service, number in SERVICES.items():
        if service not in ("network", "dropbear") and service not in components:
            continue
        if not (etc / "init.d" / service).is_file():
            raise FirmwareError(f"no /etc/init.d/{service} in the tree: add it to the board "
                                f"files of {board.name}")
        link(f"etc/rc.d/S{number:02d}{service}", f"../init.d/{service}")
