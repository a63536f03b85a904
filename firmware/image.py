# SPDX-License-Identifier: Apache-2.0
"""The firmware image format ``probeforge-firmware 1`` (docs/firmware.md).

A 4096-byte header of ASCII lines, NUL padded, then the parts ``kernel``, ``initramfs``,
``rootfs`` and ``host`` in that order, each at a multiple of 4096, the gaps NUL bytes. The
header ends with ``end <sha256 of every header byte before this line>``. Busybox ``ash`` on
the device reads the same format (``lib/probeforge/flash.sh``), so the syntax stays strict
and line-oriented.

The functions take an ``offset``: an image also lives inside a flash slot, written raw from
the slot's first byte, and the bootloader checks it there.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from firmware import FirmwareError

MAGIC = "probeforge-firmware 1"
HEADER_SIZE = 4096
ALIGN = 4096
PARTS = ("kernel", "initramfs", "rootfs", "host")
_CHUNK = 1 << 20

# Field syntax: no blanks (the header is space-separated) and nothing a shell would expand.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]*")
_BUILD = re.compile(r"[0-9a-f]{16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NUMBER = re.compile(r"0|[1-9][0-9]*")


class ImageError(FirmwareError):
    """An image is unreadable, damaged or for another board; the message says what to do."""


@dataclass(frozen=True)
class Part:
    name: str
    offset: int
    size: int
    sha256: str

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class ImageHeader:
    board: str
    version: str
    build: str
    host: str
    parts: tuple[Part, ...]

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    @property
    def size(self) -> int:
        """Length of the image: the end of its last part."""
        return self.parts[-1].end

    def lines(self) -> list[str]:
        return [MAGIC, f"board {self.board}", f"version {self.version}", f"build {self.build}",
                f"host {self.host}",
                *(f"part {p.name} {p.offset} {p.size} {p.sha256}" for p in self.parts)]

    def to_bytes(self) -> bytes:
        body = "".join(f"{line}\n" for line in self.lines()).encode("ascii")
        text = body + f"end {hashlib.sha256(body).hexdigest()}\n".encode("ascii")
        if len(text) > HEADER_SIZE:
            raise ImageError(f"image header is {len(text)} bytes, the format allows "
                             f"{HEADER_SIZE}: shorten the version or host name")
        return text.ljust(HEADER_SIZE, b"\0")


def align(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


def _check_field(what: str, value: str, pattern: re.Pattern[str]) -> None:
    if not pattern.fullmatch(value):
        raise ImageError(f"{what} {value!r} is not allowed in an image header: use letters, "
                         f"digits and . _ - only ({pattern.pattern})")


def write_image(out: Path, *, board: str, version: str, build: str, host: str,
                parts: Sequence[tuple[str, Path]]) -> None:
    """Write the image of ``parts`` (name, file) to ``out``: atomically (temp file, then
    rename) and bit-identical for identical inputs."""
    names = tuple(name for name, _ in parts)
    if names != PARTS:
        raise ImageError(f"an image holds the parts {', '.join(PARTS)} in this order, "
                         f"not {', '.join(names) or 'none'}")
    for what, value, pattern in (("board", board, _NAME), ("version", version, _VERSION),
                                 ("build", build, _BUILD), ("host", host, _NAME)):
        _check_field(what, value, pattern)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as image:
            placed: list[Part] = []
            offset = HEADER_SIZE
            for name, path in parts:
                image.seek(offset)
                digest = hashlib.sha256()
                size = 0
                with path.open("rb") as source:
                    for block in iter(lambda source=source: source.read(_CHUNK), b""):
                        digest.update(block)
                        image.write(block)
                        size += len(block)
                placed.append(Part(name, offset, size, digest.hexdigest()))
                offset = align(offset + size)
            header = ImageHeader(board, version, build, host, tuple(placed))
            image.seek(0)
            image.write(header.to_bytes())
            # A last part of size 0 would leave the file short of its recorded end.
            image.truncate(header.size)
            image.flush()
            os.fsync(image.fileno())
        temp.chmod(0o644)
        temp.replace(out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class _Source:
    """A binary file (opened here or handed in) in which an image starts at ``offset``."""

    def __init__(self, source: Path | str | BinaryIO, offset: int) -> None:
        self.offset = offset
        if isinstance(source, (str, os.PathLike)):
            self.name = str(source)
            try:
                self.file: BinaryIO = open(source, "rb")  # noqa: SIM115 (closed in close())
            except FileNotFoundError:
                raise ImageError(f"{source}: no such file: give the path of a "
                                 f"probeforge-*-sysupgrade.bin image") from None
            self.owned = True
        else:
            self.name = getattr(source, "name", "<image>")
            self.file = source
            self.owned = False

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.file.close()

    def where(self) -> str:
        return f"{self.name} at byte {self.offset}" if self.offset else str(self.name)

    def size(self) -> int:
        self.file.seek(0, os.SEEK_END)
        return self.file.tell() - self.offset

    def read(self, start: int, length: int) -> bytes:
        self.file.seek(self.offset + start)
        return self.file.read(length)

    def blocks(self, start: int, length: int) -> Iterator[bytes]:
        self.file.seek(self.offset + start)
        left = length
        while left > 0:
            block = self.file.read(min(_CHUNK, left))
            if not block:
                return
            left -= len(block)
            yield block


def _parse(raw: bytes, where: str) -> ImageHeader:
    again = "copy or download the image again"
    text, _, padding = raw.partition(b"\0")
    first = text.split(b"\n", 1)[0]
    if first != MAGIC.encode() and not MAGIC.encode().startswith(raw):
        if first.startswith(b"probeforge-firmware "):
            raise ImageError(f"{where} has format {first.decode('ascii', 'replace')!r}; this "
                             f"tool reads {MAGIC!r}: use a tool of the same release")
        raise ImageError(f"{where} is not a probeforge image (bad magic, it does not start "
                         f"with {MAGIC!r}): give a probeforge-*-sysupgrade.bin file")
    if len(raw) < HEADER_SIZE:
        raise ImageError(f"{where} is truncated: {len(raw)} bytes, shorter than the "
                         f"{HEADER_SIZE}-byte header of a probeforge image: {again}")
    if padding.strip(b"\0") or not text.endswith(b"\n"):
        raise ImageError(f"{where}: header damaged (text after its end or not NUL padded): "
                         f"{again}")
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise ImageError(f"{where}: header damaged (not ASCII): {again}") from None
    end_at = text.rfind(b"\nend ") + 1
    if not end_at or not lines[-1].startswith("end "):
        raise ImageError(f"{where}: header damaged (no end line): {again}")
    if lines[-1] != f"end {hashlib.sha256(text[:end_at]).hexdigest()}":
        raise ImageError(f"{where}: header hash mismatch (the header was altered or "
                         f"damaged): {again}")
    # The hash held: a malformed header from here on was built wrong, not damaged.
    fields: dict[str, str] = {}
    parts: list[Part] = []
    expected = [MAGIC, "board", "version", "build", "host"]
    for index, line in enumerate(lines[1:-1], start=1):
        key, _, value = line.partition(" ")
        if index < len(expected):
            if key != expected[index]:
                raise ImageError(f"{where}: header line {index + 1} is {line!r}, expected "
                                 f"{expected[index]!r}: rebuild the image")
            fields[key] = value
            continue
        words = line.split(" ")
        if (key != "part" or len(words) != 5 or not _NUMBER.fullmatch(words[2])
                or not _NUMBER.fullmatch(words[3]) or not _SHA256.fullmatch(words[4])):
            raise ImageError(f"{where}: header line {index + 1} {line!r} is not "
                             f"'part NAME OFFSET SIZE SHA256': rebuild the image")
        parts.append(Part(words[1], int(words[2]), int(words[3]), words[4]))
    if len(fields) < len(expected) - 1:
        raise ImageError(f"{where}: header lacks {expected[len(fields) + 1]!r}: "
                         f"rebuild the image")
    for what, pattern in (("board", _NAME), ("version", _VERSION), ("build", _BUILD),
                          ("host", _NAME)):
        _check_field(what, fields[what], pattern)
    if tuple(p.name for p in parts) != PARTS:
        raise ImageError(f"{where}: parts {', '.join(p.name for p in parts) or 'none'}, "
                         f"expected {', '.join(PARTS)}: rebuild the image")
    previous_end = HEADER_SIZE
    for part in parts:
        if part.offset % ALIGN or part.offset < previous_end:
            raise ImageError(f"{where}: part {part.name} at {part.offset} is not 4096-aligned "
                             f"after the previous one: rebuild the image")
        previous_end = part.end
    return ImageHeader(fields["board"], fields["version"], fields["build"], fields["host"],
                       tuple(parts))


def read_header(source: Path | str | BinaryIO, *, offset: int = 0) -> ImageHeader:
    """The parsed header of the image in ``source`` (a path or a binary file object) starting
    at byte ``offset``. Checks the syntax and the ``end`` hash, not the parts."""
    with _Source(source, offset) as src:
        return _parse(src.read(0, HEADER_SIZE), src.where())


def verify_image(source: Path | str | BinaryIO, *, board: str | None = None,
                 offset: int = 0, max_size: int | None = None) -> ImageHeader:
    """Check everything docs/firmware.md requires of a valid image (header, end hash, parts
    inside the file, every part's SHA-256) and, given ``board``, that it is for that board.
    ``max_size`` is the room the image must fit (a flash slot)."""
    with _Source(source, offset) as src:
        where = src.where()
        header = _parse(src.read(0, HEADER_SIZE), where)
        if board is not None and header.board != board:
            raise ImageError(f"image is for board {header.board}, this is {board}: build it "
                             f"for {board} (board {board} in images/openwrt/recipe.yml)")
        if max_size is not None and header.size > max_size:
            raise ImageError(f"{where}: image is {header.size} bytes, more than the "
                             f"{max_size} bytes of a slot: make the image smaller")
        have = src.size()
        if have < header.size:
            raise ImageError(f"{where} is truncated: {have} bytes, its header says "
                             f"{header.size}: copy or download the image again")
        for part in header.parts:
            digest = hashlib.sha256()
            for block in src.blocks(part.offset, part.size):
                digest.update(block)
            if digest.hexdigest() != part.sha256:
                raise ImageError(f"{where}: part {part.name} hash mismatch (SHA-256 differs "
                                 f"from the header, the image is damaged): copy or download "
                                 f"the image again")
        return header


def extract_part(source: Path | str | BinaryIO, name: str, out: Path, *,
                 offset: int = 0) -> Part:
    """Copy part ``name`` to ``out`` (atomically), checking its SHA-256 on the way."""
    with _Source(source, offset) as src:
        header = _parse(src.read(0, HEADER_SIZE), src.where())
        try:
            part = header.part(name)
        except KeyError:
            raise ImageError(f"{src.where()} has no part {name!r}: parts are "
                             f"{', '.join(PARTS)}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = out.with_name(f".{out.name}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with temp.open("wb") as copy:
                for block in src.blocks(part.offset, part.size):
                    digest.update(block)
                    copy.write(block)
                    size += len(block)
            if size != part.size:
                raise ImageError(f"{src.where()} is truncated inside part {name}: copy or "
                                 f"download the image again")
            if digest.hexdigest() != part.sha256:
                raise ImageError(f"{src.where()}: part {name} hash mismatch (SHA-256 differs "
                                 f"from the header, the image is damaged): copy or download "
                                 f"the image again")
            temp.replace(out)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return part
