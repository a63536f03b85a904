# SPDX-License-Identifier: Apache-2.0
"""The flash of an emulated MiniProbe (docs/firmware.md, ``probeforge-flash 1``), host side.

A raw disk file with an MBR: partition 1 holds two 512-byte boot-environment copies and the
settings archive at 64 KiB, partitions 2 and 3 are the image slots ``a`` and ``b``, partition
4 is the ext4 overlay. The device side is ``lib/probeforge/flash.sh``; both read the same
bytes, so the rules here (valid copy with the higher ``seq`` wins, a writer overwrites the
other copy) are the rules there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from firmware.image import ImageError, ImageHeader, verify_image
from rig import RigError

SECTOR = 512
MIB = 1 << 20
SLOTS = ("a", "b")
FIRST_PARTITION = 1 * MIB  # the usual 1 MiB alignment of partitioning tools
BOOTENV_PARTITION = 8 * MIB
SLOT_SIZE = 160 * MIB
MIN_OVERLAY = 16 * MIB
SETTINGS_OFFSET = 64 * 1024
ENV_SIZE = 512
ENV_MAGIC = "probeforge-bootenv 1"
# Partition types: "non-FS data" for the raw areas, Linux for the ext4 overlay.
_TYPES = (0xDA, 0xDA, 0xDA, 0x83)
_DISK_SIGNATURE = b"PFL1"


class FlashError(RigError):
    """The flash file is missing, not a probeforge flash, or holds no bootable image."""


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Layout:
    bootenv: Partition
    slot_a: Partition
    slot_b: Partition
    overlay: Partition

    def slot(self, name: str) -> Partition:
        if name not in SLOTS:
            raise FlashError(f"no slot {name!r}: slots are a and b")
        return self.slot_a if name == "a" else self.slot_b

    @property
    def settings_offset(self) -> int:
        return self.bootenv.start + SETTINGS_OFFSET

    @property
    def settings_room(self) -> int:
        return self.bootenv.size - SETTINGS_OFFSET


@dataclass(frozen=True)
class Pending:
    """A sysupgrade to finish at the next boot: wipe the overlay and, when ``sha256`` is
    set, restore the ``size``-byte settings archive."""

    size: int = 0
    sha256: str | None = None

    def line(self) -> str:
        return f"pending {self.size} {self.sha256}" if self.sha256 else "pending 0 -"


@dataclass(frozen=True)
class BootEnv:
    seq: int
    active: str
    pending: Pending | None = None
    copy: int | None = None  # where it was read from

    def body(self) -> bytes:
        pending = self.pending.line() if self.pending else "pending none"
        return f"{ENV_MAGIC}\nseq {self.seq}\nactive {self.active}\n{pending}\n".encode()

    def to_bytes(self) -> bytes:
        body = self.body()
        return (body + f"end {hashlib.sha256(body).hexdigest()}\n".encode()).ljust(
            ENV_SIZE, b"\0")


def other_slot(slot: str) -> str:
    return "b" if slot == "a" else "a"


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and (text == "0" or not text.startswith("0")) else None


def parse_bootenv(raw: bytes, copy: int | None = None) -> BootEnv | None:
    """The environment in a 512-byte copy, or None when the copy is not valid."""
    text, _, padding = raw.partition(b"\0")
    if len(raw) != ENV_SIZE or padding.strip(b"\0") or not text.endswith(b"\n"):
        return None
    try:
        lines = text.decode("ascii").split("\n")[:-1]
    except UnicodeDecodeError:
        return None
    if len(lines) != 5 or lines[0] != ENV_MAGIC:
        return None
    body = "".join(f"{line}\n" for line in lines[:4]).encode()
    if lines[4] != f"end {hashlib.sha256(body).hexdigest()}":
        return None
    seq = _number(lines[1].removeprefix("seq ")) if lines[1].startswith("seq ") else None
    active = lines[2].removeprefix("active ")
    if seq is None or not lines[2].startswith("active ") or active not in SLOTS:
        return None
    words = lines[3].split(" ")
    if words[0] != "pending":
        return None
    pending: Pending | None
    if words[1:] == ["none"]:
        pending = None
    elif words[1:] == ["0", "-"]:
        pending = Pending()
    elif (len(words) == 3 and _number(words[1]) is not None and len(words[2]) == 64
          and all(c in "0123456789abcdef" for c in words[2])):
        pending = Pending(int(words[1]), words[2])
    else:
        return None
    return BootEnv(seq, active, pending, copy)


def _open(flash: Path, mode: str = "rb") -> BinaryIO:
    try:
        return flash.open(mode)
    except FileNotFoundError:
        raise FlashError(f"{flash}: no such flash file: create it with "
                         f"rig.flash.create_flash") from None


def read_layout(flash: Path) -> Layout:
    """The four partitions from the flash's MBR."""
    with _open(flash) as disk:
        mbr = disk.read(SECTOR)
    if len(mbr) != SECTOR or mbr[510:512] != b"\x55\xaa":
        raise FlashError(f"{flash} has no MBR: it is not a probeforge flash (create one with "
                         f"rig.flash.create_flash)")
    parts = []
    for number in range(1, 5):
        entry = mbr[446 + 16 * (number - 1):446 + 16 * number]
        start = int.from_bytes(entry[8:12], "little") * SECTOR
        size = int.from_bytes(entry[12:16], "little") * SECTOR
        if not start or not size:
            raise FlashError(f"{flash} has no partition {number}: it is not a probeforge "
                             f"flash (create one with rig.flash.create_flash)")
        parts.append(Partition(number, start, size))
    return Layout(*parts)


def _mbr(partitions: list[Partition]) -> bytes:
    mbr = bytearray(SECTOR)
    mbr[440:444] = _DISK_SIGNATURE
    for index, (part, kind) in enumerate(zip(partitions, _TYPES, strict=True)):
        entry = bytearray(16)
        # CHS fields say "use LBA" (the maximum), as tools do for disks past 8 GiB.
        entry[1:4] = entry[5:8] = b"\xfe\xff\xff"
        entry[4] = kind
        entry[8:12] = (part.start // SECTOR).to_bytes(4, "little")
        entry[12:16] = (part.size // SECTOR).to_bytes(4, "little")
        mbr[446 + 16 * index:462 + 16 * index] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def create_flash(path: Path, *, size_mib: int = 512) -> Layout:
    """A new, empty flash file: sparse, partitioned, the overlay formatted (ext4 with empty
    ``upper/`` and ``work/``), no boot environment and no image yet (see install_image)."""
    size = size_mib * MIB
    starts = [FIRST_PARTITION, FIRST_PARTITION + BOOTENV_PARTITION]
    starts.append(starts[1] + SLOT_SIZE)
    starts.append(starts[2] + SLOT_SIZE)
    if size - starts[3] < MIN_OVERLAY:
        raise FlashError(f"a flash of {size_mib} MiB leaves no room for the overlay: give at "
                         f"least {(starts[3] + MIN_OVERLAY) // MIB} MiB")
    layout = Layout(Partition(1, starts[0], BOOTENV_PARTITION),
                    Partition(2, starts[1], SLOT_SIZE), Partition(3, starts[2], SLOT_SIZE),
                    Partition(4, starts[3], size - starts[3]))
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    if not Path(mkfs).exists():
        raise FlashError("mkfs.ext4 not found: apt-get install e2fsprogs")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.unlink(missing_ok=True)
    try:
        with partial.open("wb") as disk:
            disk.truncate(size)
            disk.write(_mbr([layout.bootenv, layout.slot_a, layout.slot_b, layout.overlay]))
        with tempfile.TemporaryDirectory(prefix="pf-overlay-") as stage:
            for name in ("upper", "work"):
                Path(stage, name).mkdir()
            result = subprocess.run(
                [mkfs, "-q", "-F", "-b", "4096", "-L", "overlay", "-d", stage,
                 "-E", f"offset={layout.overlay.start},root_owner=0:0",
                 str(partial), f"{layout.overlay.size // 1024}k"],
                capture_output=True, text=True)
        if result.returncode != 0:
            raise FlashError(f"mkfs.ext4 of the overlay in {path} failed: "
                             f"{(result.stderr or result.stdout).strip()[-300:]}")
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return layout


def read_bootenv_copies(flash: Path) -> tuple[BootEnv | None, BootEnv | None]:
    layout = read_layout(flash)
    with _open(flash) as disk:
        disk.seek(layout.bootenv.start)
        raw = disk.read(2 * ENV_SIZE)
    return parse_bootenv(raw[:ENV_SIZE], 0), parse_bootenv(raw[ENV_SIZE:], 1)


def read_bootenv(flash: Path) -> BootEnv:
    """The environment in force: the valid copy with the higher ``seq``."""
    copies = [env for env in read_bootenv_copies(flash) if env is not None]
    if not copies:
        raise FlashError(f"{flash} has no valid boot environment: program an image with "
                         f"rig.flash.install_image")
    return max(copies, key=lambda env: (env.seq, -(env.copy or 0)))


def write_bootenv(flash: Path, *, active: str, pending: Pending | None = None) -> BootEnv:
    """A new environment (seq + 1) into the copy not in force, in one 512-byte write."""
    if active not in SLOTS:
        raise FlashError(f"no slot {active!r}: slots are a and b")
    layout = read_layout(flash)
    try:
        current: BootEnv | None = read_bootenv(flash)
    except FlashError:
        current = None
    copy = 0 if current is None else 1 - (current.copy or 0)
    env = BootEnv((current.seq + 1) if current else 1, active, pending, copy)
    with _open(flash, "r+b") as disk:
        disk.seek(layout.bootenv.start + copy * ENV_SIZE)
        disk.write(env.to_bytes())
        disk.flush()
        os.fsync(disk.fileno())
    return env


def write_settings(flash: Path, archive: bytes) -> Pending:
    """Put a settings archive into partition 1; returns the ``pending`` that names it."""
    layout = read_layout(flash)
    if len(archive) > layout.settings_room:
        raise FlashError(f"settings archive of {len(archive)} bytes does not fit the "
                         f"{layout.settings_room} bytes of partition 1: keep fewer files")
    with _open(flash, "r+b") as disk:
        disk.seek(layout.settings_offset)
        disk.write(archive)
        disk.flush()
        os.fsync(disk.fileno())
    return Pending(len(archive), hashlib.sha256(archive).hexdigest())


def read_settings(flash: Path, pending: Pending | None = None) -> bytes | None:
    """The settings archive ``pending`` (default: the environment's) names, or None when it
    names none; FlashError when the bytes do not match."""
    if pending is None:
        pending = read_bootenv(flash).pending
    if pending is None or pending.sha256 is None:
        return None
    layout = read_layout(flash)
    with _open(flash) as disk:
        disk.seek(layout.settings_offset)
        data = disk.read(pending.size)
    if hashlib.sha256(data).hexdigest() != pending.sha256:
        raise FlashError(f"{flash}: the settings archive does not match its boot environment")
    return data


def verify_slot(flash: Path, slot: str, *, board: str | None = None) -> ImageHeader:
    """The header of the image in ``slot`` after checking all of it (ImageError otherwise)."""
    part = read_layout(flash).slot(slot)
    with _open(flash) as disk:
        return verify_image(disk, board=board, offset=part.start, max_size=part.size)


def install_image(flash: Path, image: Path, slot: str | None = None, *,
                  board: str | None = None, wipe_overlay: bool = False
                  ) -> tuple[str, ImageHeader]:
    """The factory programmer: write ``image`` into ``slot`` (default: the slot not in use,
    so the current image stays as the fallback), read it back, and make it active.
    ``wipe_overlay`` sets ``pending 0 -``: the next boot starts from an empty overlay."""
    layout = read_layout(flash)
    if slot is None:
        try:
            slot = other_slot(read_bootenv(flash).active)
        except FlashError:
            slot = "a"
    part = layout.slot(slot)
    header = verify_image(image, board=board, max_size=part.size)
    with image.open("rb") as source, _open(flash, "r+b") as disk:
        disk.seek(part.start)
        shutil.copyfileobj(source, disk, 1 << 20)
        disk.flush()
        os.fsync(disk.fileno())
    try:
        verify_slot(flash, slot)
    except ImageError as exc:
        raise FlashError(f"slot {slot} of {flash} does not read back after writing: {exc}"
                         ) from None
    write_bootenv(flash, active=slot, pending=Pending() if wipe_overlay else None)
    return slot, header


def active_image(flash: Path, *, board: str | None = None) -> tuple[str, ImageHeader]:
    """What a dual-image bootloader boots: the active slot's image when it is valid, the
    other slot's otherwise; FlashError when neither holds a valid image."""
    try:
        first = read_bootenv(flash).active
    except FlashError:
        first = "a"  # no environment: try the slots in order
    problems = []
    for slot in (first, other_slot(first)):
        try:
            return slot, verify_slot(flash, slot, board=board)
        except ImageError as exc:
            problems.append(f"slot {slot}: {exc}")
    raise FlashError(f"{flash} holds no bootable image ({'; '.join(problems)}): program one "
                     f"with rig.flash.install_image")
