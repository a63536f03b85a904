# SPDX-License-Identifier: Apache-2.0
"""Byte-for-byte reproducible tar, ar, gzip and xz: the containers both package formats use.

Every archive is built in memory from a list of entries, never from the disk, so neither the
build host's clock, umask, file owners nor directory order can leak into a package.
"""

import io
import lzma
import os
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pkgformats.errors import BuildError


@dataclass(frozen=True)
class Entry:
    """One file or directory as installed: absolute target path, permission bits, contents."""

    path: str
    mode: int
    data: bytes | None = None  # None: a directory

    @property
    def is_dir(self) -> bool:
        return self.data is None


def source_date_epoch(source_root: Path) -> int:
    """SOURCE_DATE_EPOCH, else the time of the last commit, else a one-line BuildError."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if text:
        if not text.isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH={text!r} is not a Unix time: set it to "
                             "whole seconds, e.g. $(git log -1 --format=%ct)")
        return int(text)
    try:
        result = subprocess.run(["git", "-C", str(source_root), "log", "-1", "--format=%ct"],
                                capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        result = None
    if result is not None and result.returncode == 0 and result.stdout.strip().isdigit():
        return int(result.stdout.strip())
    raise BuildError("no SOURCE_DATE_EPOCH and no git history to take it from: "
                     "export SOURCE_DATE_EPOCH=<Unix time of the sources>")


def _components(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part)


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """The entries plus every missing parent directory (0755), in `tar --sort=name` order.

    Sorting by path components puts each directory right before its contents, which is the
    order GNU tar's --sort=name walk produces and what dpkg-deb and ipkg-build write.
    """
    by_path: dict[tuple[str, ...], Entry] = {}
    for entry in entries:
        key = _components(entry.path)
        if key in by_path:
            raise BuildError(f"{entry.path} is listed twice in the package tree: "
                             "remove one of them in pkgformats/tree.py")
        by_path[key] = entry
    for key in list(by_path):
        for depth in range(len(key)):
            parent = key[:depth]
            if parent not in by_path:
                by_path[parent] = Entry("/" + "/".join(parent), 0o755)
            elif not by_path[parent].is_dir:
                raise BuildError(f"{by_path[parent].path} is a file but also a parent "
                                 "directory in the package tree: fix pkgformats/tree.py")
    return [by_path[key] for key in sorted(by_path)]


def tar_bytes(entries: Iterable[Entry], mtime: int, owner_name: str = "", *,
              as_listed: bool = False) -> bytes:
    """An uncompressed GNU tar of the entries with ./ names, owned by uid/gid 0.

    owner_name "" is what `tar --numeric-owner` writes (ipkg-build); dpkg-deb writes "root".
    as_listed writes exactly the entries given, in that order, as `tar -cf - a b c` does;
    otherwise parents are added and everything sorted, as `tar --sort=name -cf - .` does.
    """
    members = list(entries) if as_listed else with_parents(entries)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in members:
            parts = _components(entry.path)
            info = tarfile.TarInfo("./" + "/".join(parts) if parts else ".")
            info.mode = entry.mode
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = owner_name
            if entry.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip -9n: no name, mtime 0, OS byte 3 (Unix), as `gzip -n` writes on Linux.

    Python's gzip module would write OS 255; the header is written by hand so the output
    matches the gzip(1) header field for field.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x02\x03"
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer


def xz_bytes(data: bytes) -> bytes:
    """xz -6 with a CRC64 check, single-threaded, so the same input gives the same bytes."""
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)


def ar_bytes(members: Iterable[tuple[str, bytes]], mtime: int) -> bytes:
    """A System V ar archive as dpkg-deb writes it: short names without the GNU '/' suffix."""
    out = [b"!<arch>\n"]
    for name, data in members:
        if len(name) > 15 or "/" in name:
            raise BuildError(f"ar member name {name!r} is not a short plain name: "
                             "rename it to 15 characters or fewer")
        header = (f"{name:<16}{mtime:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n")
        out.append(header.encode("ascii"))
        out.append(data)
        if len(data) % 2:
            out.append(b"\n")
    return b"".join(out)


def write_atomically(path: Path, data: bytes) -> Path:
    """Write to a temporary name and rename, so a half-written package is never left behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.read_bytes() == data:
            # Builds are reproducible: leaving an identical package alone keeps its mtime, so
            # deployment tools see no change.
            return path
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
    except OSError as exc:
        raise BuildError(f"cannot write {path} ({exc.strerror}): choose a writable --out "
                         "directory") from None
    return path
