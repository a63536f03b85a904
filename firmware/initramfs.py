# SPDX-License-Identifier: Apache-2.0
"""The initramfs of a board: busybox, the boot's kernel modules, ``init`` and ``flash.sh``.

The kernel of the emulated MiniProbe has its disk, loop, squashfs, overlay and ext4 drivers
as modules only, so the early userspace loads them before it can find the root
(``images/openwrt/boards/<board>/initramfs/init``). The modules come from the base tree with
their ``modules.dep`` closure and soft dependencies (ext4 wants crc32c); ``depmod -b`` indexes
the copy, so ``modprobe`` works there too, and ``/lib/probeforge/modules`` lists the files in
load order for ``insmod``, which needs no index at all.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from firmware import FirmwareError
from firmware.cpio import (
    CpioEntry,
    char_device,
    directory,
    file,
    symlink,
    tree_entries,
    write_newc_gz,
)
from firmware.rootfs import ModuleIndex

REPO = Path(__file__).resolve().parents[1]
BOARDS = REPO / "images" / "openwrt" / "boards"
DEFAULT_BOARD = "qemu-malta-mipsel"
# What init needs before switch_root: the flash, the parts inside a slot, the overlay.
BOOT_MODULES = ("virtio_pci", "virtio_blk", "loop", "squashfs", "overlay", "ext4")
# Mount points init uses; the rest of the tree comes with busybox --install at boot.
_DIRECTORIES = ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "rom", "rom-host",
                "overlay", "newroot")
_PT_INTERP = 3


def is_static_elf(path: Path) -> bool:
    """True for an ELF without a program interpreter (it runs with no libraries)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return False
    bits64 = data[4] == 2
    order = "little" if data[5] == 1 else "big"

    def field(offset: int, size: int) -> int:
        return int.from_bytes(data[offset:offset + size], order)

    phoff = field(0x20, 8) if bits64 else field(0x1C, 4)
    phentsize = field(0x36, 2) if bits64 else field(0x2A, 2)
    phnum = field(0x38, 2) if bits64 else field(0x2C, 2)
    return all(field(phoff + i * phentsize, 4) != _PT_INTERP for i in range(phnum))


def _stage_modules(base_tree: Path, kernel_version: str, names: Sequence[str],
                   staging: Path) -> list[str]:
    """Copy ``names`` and what they need from the base tree into ``staging`` and index them;
    return their paths below /lib/modules/<version>, in load order."""
    source = base_tree / "lib" / "modules" / kernel_version
    if not (source / "modules.dep").is_file():
        raise FirmwareError(f"{source} has no modules.dep: the base tree was not built by "
                            f"firmware.rootfs.build_base for kernel {kernel_version}")
    index = ModuleIndex.read(source)
    order = [index.paths[name] for name in index.load_order(names, kernel_version)]
    target = staging / "lib" / "modules" / kernel_version
    target.mkdir(parents=True)
    for rel in order:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, dest)
    kept = set(order)
    if (source / "modules.order").is_file():
        lines = [line for line in (source / "modules.order").read_text().splitlines()
                 if line in kept]
        (target / "modules.order").write_text("".join(f"{line}\n" for line in lines))
    for name in ("modules.builtin", "modules.builtin.modinfo"):
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    result = subprocess.run(["depmod", "-b", str(staging), kernel_version],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise FirmwareError(f"depmod of the initramfs modules failed: "
                            f"{(result.stderr or result.stdout).strip()[-300:]} "
                            f"(apt-get install kmod)")
    # Modes as the build wants them, not as the host's umask made them.
    for path in staging.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return order


def build_initramfs(base_tree: Path, kernel_version: str, out: Path, *, epoch: int,
                    board: str = DEFAULT_BOARD,
                    modules: Sequence[str] = BOOT_MODULES) -> None:
    """Write the gzip'd newc initramfs of ``board`` to ``out`` (atomically, bit-identical for
    identical inputs)."""
    busybox = base_tree / "bin" / "busybox"
    if not busybox.is_file() or busybox.is_symlink():
        raise FirmwareError(f"{busybox} is missing: the base needs busybox-static")
    if not is_static_elf(busybox):
        raise FirmwareError(f"{busybox} is linked dynamically: the initramfs has no "
                            f"libraries; use busybox-static in the recipe")
    board_dir = BOARDS / board
    init = board_dir / "initramfs" / "init"
    flash = board_dir / "rootfs" / "lib" / "probeforge" / "flash.sh"
    for needed in (init, flash):
        if not needed.is_file():
            raise FirmwareError(f"{needed} is missing: board {board} has no early userspace")
    with tempfile.TemporaryDirectory(prefix=".initramfs-", dir=out.parent if
                                     out.parent.is_dir() else None) as work:
        staging = Path(work) / "modules"
        order = _stage_modules(base_tree, kernel_version, modules, staging)
        entries: list[CpioEntry] = [
            *tree_entries(staging),
            *(directory(name) for name in _DIRECTORIES),
            directory("tmp", 0o1777),
            char_device("dev/console", 5, 1),
            char_device("dev/null", 1, 3, 0o666),
            file("bin/busybox", busybox.read_bytes(), 0o755),
            # The kernel runs /init through its #! line; init links the other applets.
            symlink("bin/sh", "busybox"),
            file("init", init.read_bytes(), 0o755),
            file("lib/probeforge/flash.sh", flash.read_bytes(), 0o644),
            file("lib/probeforge/modules", "".join(f"{rel}\n" for rel in order).encode()),
        ]
        write_newc_gz(entries, out, epoch=epoch)
