# SPDX-License-Identifier: Apache-2.0
"""Reproducible gzip'd ``newc`` cpio archives (the Linux initramfs format), written in Python.

An archive is built from a list of :class:`CpioEntry` — files, directories, symlinks and
device nodes — so that ``/dev/console`` and friends need no ``mknod`` (and no root) on the
build host. Names are sorted, parents are added where missing, inode numbers count up from
1, owners are root, every mtime is the build's epoch and the gzip header carries no name and
mtime 0: the same entries give the same bytes.

    entries = [directory("dev"), char_device("dev/console", 5, 1),
               file("init", script, 0o755), symlink("bin/sh", "busybox"),
               *tree_entries(Path("initramfs-files"))]
    write_newc_gz(entries, out, epoch=1793491200)
"""

import gzip
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from firmware import FirmwareError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
KINDS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
         "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}


@dataclass(frozen=True)
class CpioEntry:
    """One member: ``path`` inside the archive (relative, ``/``-separated), its kind, its
    permission bits, and the contents (file bytes, or the symlink target) or device numbers."""

    path: str
    kind: str
    mode: int
    data: bytes = b""
    major: int = 0
    minor: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FirmwareError(f"cpio entry {self.path!r}: unknown kind {self.kind!r}: use "
                                f"one of {', '.join(KINDS)}")
        if self.mode & ~0o7777:
            raise FirmwareError(f"cpio entry {self.path!r}: mode {self.mode:#o} has more than "
                                "permission bits: pass only 0o7777 bits, the kind sets the type")
        name = normalise(self.path)
        if name != self.path:
            object.__setattr__(self, "path", name)
        if self.kind in ("dir", "chardev", "blockdev") and self.data:
            raise FirmwareError(f"cpio entry {self.path!r}: a {self.kind} has no contents")


def normalise(path: str) -> str:
    """``path`` relative and clean: no leading ``/`` or ``./``, no ``..``, not empty."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        raise FirmwareError(f"cpio entry path {path!r} must name something below the archive "
                            "root, without '..'")
    return "/".join(parts)


def file(path: str, data: bytes, mode: int = 0o644) -> CpioEntry:
    return CpioEntry(path, "file", mode, data)


def directory(path: str, mode: int = 0o755) -> CpioEntry:
    return CpioEntry(path, "dir", mode)


def symlink(path: str, target: str) -> CpioEntry:
    return CpioEntry(path, "symlink", 0o777, target.encode())


def char_device(path: str, major: int, minor: int, mode: int = 0o600) -> CpioEntry:
    return CpioEntry(path, "chardev", mode, major=major, minor=minor)


def block_device(path: str, major: int, minor: int, mode: int = 0o600) -> CpioEntry:
    return CpioEntry(path, "blockdev", mode, major=major, minor=minor)


def tree_entries(root: Path, prefix: str = "") -> list[CpioEntry]:
    """Everything below the host directory ``root`` as entries under ``prefix`` in the
    archive: files (hard links as copies), directories, symlinks and device nodes, with their
    permission bits; owners and times are the archive's, never the host's."""
    if not root.is_dir():
        raise FirmwareError(f"{root} is not a directory: pass the directory to pack")
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            inside = path.relative_to(root).as_posix()
            where = f"{prefix.strip('/')}/{inside}" if prefix.strip("/") else inside
            info = path.lstat()
            bits = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                entries.append(symlink(where, os.readlink(path)))
            elif stat.S_ISDIR(info.st_mode):
                entries.append(directory(where, bits))
            elif stat.S_ISREG(info.st_mode):
                entries.append(file(where, path.read_bytes(), bits))
            elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                kind = "chardev" if stat.S_ISCHR(info.st_mode) else "blockdev"
                entries.append(CpioEntry(where, kind, bits, major=os.major(info.st_rdev),
                                         minor=os.minor(info.st_rdev)))
            else:
                raise FirmwareError(f"{path} is a fifo or socket: an initramfs cannot carry "
                                    "it; create it at boot instead")
    return entries


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int],
            name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = MAGIC + b"".join(b"%08X" % value for value in fields) + name + b"\0"
    return head + b"\0" * (-len(head) % 4)


def newc_bytes(entries: Iterable[CpioEntry], *, epoch: int) -> bytes:
    """The uncompressed archive: sorted, parents added, the trailer at the end."""
    if epoch < 0 or epoch >= 1 << 32:
        raise FirmwareError(f"epoch {epoch} does not fit a cpio mtime: use a Unix time "
                            "between 0 and 2^32-1")
    members: dict[str, CpioEntry] = {}
    for entry in entries:
        if entry.path in members:
            raise FirmwareError(f"cpio entry {entry.path!r} given twice: keep one")
        members[entry.path] = entry
    for path in list(members):
        parent = PurePosixPath(path).parent
        while str(parent) != ".":
            existing = members.get(str(parent))
            if existing is None:
                members[str(parent)] = directory(str(parent))
            elif existing.kind != "dir":
                raise FirmwareError(f"cpio entry {path!r} lies below {str(parent)!r}, which is "
                                    f"a {existing.kind}: make that a directory")
            parent = parent.parent
    out = bytearray()
    # Byte order of the UTF-8 names: a parent always sorts before what it contains.
    for ino, path in enumerate(sorted(members, key=lambda p: p.encode()), start=1):
        entry = members[path]
        kind = KINDS[entry.kind]
        nlink = 2 if entry.kind == "dir" else 1
        rdev = (entry.major, entry.minor)
        out += _header(ino, kind | entry.mode, nlink, epoch, len(entry.data), rdev,
                       path.encode())
        out += entry.data + b"\0" * (-len(entry.data) % 4)
    out += _header(0, 0, 1, 0, 0, (0, 0), TRAILER.encode())
    return bytes(out)


def write_newc_gz(entries: Iterable[CpioEntry] | Path, out: Path, *, epoch: int) -> Path:
    """Write ``entries`` (or everything below a host directory) to ``out`` as a gzip'd newc
    cpio, atomically; return ``out``."""
    if isinstance(entries, Path):
        entries = tree_entries(entries)
    raw = newc_bytes(entries, epoch=epoch)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.part")
    with partial.open("wb") as sink, gzip.GzipFile(fileobj=sink, mode="wb", mtime=0,
                                                   filename="", compresslevel=9) as gz:
        gz.write(raw)
    partial.replace(out)
    return out
