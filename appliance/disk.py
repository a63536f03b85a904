# SPDX-License-Identifier: Apache-2.0
"""A raw hybrid-GPT disk from a root tree, bootable by SeaBIOS and OVMF, without mounting.

Layout (the recipe's ``disk``): a BIOS boot partition holding grub's i386-pc core image, an
EFI system partition holding grub's x86_64 EFI image as ``EFI/BOOT/BOOTX64.EFI`` (FAT made by
``mkfs.vfat`` and filled with mtools), and the ext4 root (``mkfs.ext4 -d``). Both grub images
are made by the tree's own ``grub-mkimage`` (run chrooted: the host needs no grub) with an
embedded early configuration that finds the root by its UUID and reads ``/boot/grub/grub.cfg``
there, which this module writes with ``root=UUID=``. The MBR gets grub's ``boot.img`` with the
core image's sector patched in, as ``grub-bios-setup`` would do on a device: this kernel has
no device-mapper and loop devices are not needed. UUIDs derive from the build key, so the
same inputs give the same identifiers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance import ApplianceError
from appliance.recipe import PARTITION_TYPES, Recipe

SECTOR = 512
MIB = 1 << 20
# grub's boot.img fields (grub-core/boot/i386/pc/boot.S, include/grub/i386/pc/boot.h).
_KERNEL_SECTOR = 0x5C
_BOOT_DRIVE = 0x64
_DRIVE_CHECK = 0x66
_MBR_KEEP = (0x1B8, 0x1FE)  # disk signature and partition table: the protective MBR's
# The first blocklist of diskboot.img: start (u64), length (u16), segment (u16).
_BLOCKLIST = SECTOR - 12
_KERNEL_SEGMENT = 0x820
# Embedded in both grub images: what boots without reading any module from disk.
_GRUB_MODULES = ("part_gpt", "part_msdos", "ext2", "fat", "search", "search_fs_uuid",
                 "normal", "configfile", "linux", "echo", "test", "gzio", "serial",
                 "terminal", "loadenv", "sleep", "minicmd")
_PC_MODULES = ("biosdisk",)
_EFI_MODULES = ("efi_gop", "all_video")


def derived_uuid(key: str, purpose: str) -> str:
    """A random-looking (version 4) UUID fixed by ``key`` and ``purpose``."""
    digest = hashlib.sha256(f"{key}/{purpose}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


@dataclass(frozen=True)
class Layout:
    """Partition start and size in sectors, by name, and the disk's size in bytes."""

    starts: dict[str, int]
    sizes: dict[str, int]
    kinds: dict[str, str]
    disk_bytes: int


def layout(recipe: Recipe) -> Layout:
    disk = recipe.disk_size_gib << 30
    start = MIB // SECTOR  # 1 MiB alignment for every partition
    starts, sizes, kinds = {}, {}, {}
    # The backup GPT takes the last 33 sectors; the root ends 1 MiB before the end.
    end = disk // SECTOR - MIB // SECTOR
    for part in recipe.partitions:
        size = (part.size_mib * MIB // SECTOR) if part.size_mib else end - start
        starts[part.name], sizes[part.name], kinds[part.name] = start, size, part.type
        start += size
    return Layout(starts, sizes, kinds, disk)


def _by_kind(lay: Layout, kind: str) -> str:
    return next(name for name, k in lay.kinds.items() if k == kind)


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, errors="replace",
                            env=env)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ApplianceError(f"{what} failed: {lines[-1] if lines else result.returncode}")
    return result.stdout


def kernel_version(tree: Path) -> str:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ApplianceError(f"no /boot/vmlinuz-* in {tree}: keep the kernel package in the "
                             "recipe (distributions.*.kernel)")
    return kernels[-1].name.removeprefix("vmlinuz-")


def grub_cfg(root_uuid: str, version: str, cmdline: str, name: str) -> str:
    return (
        "# Written by the probeforge appliance build (appliance/disk.py).\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input console serial\n"
        "terminal_output console serial\n"
        "set timeout=1\n"
        "set default=0\n"
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        f"menuentry '{name}' {{\n"
        f"    linux /boot/vmlinuz-{version} root=UUID={root_uuid} ro {cmdline}\n"
        f"    initrd /boot/initrd.img-{version}\n"
        "}\n")


def prepare_tree(tree: Path, recipe: Recipe, key: str) -> str:
    """Write fstab and grub.cfg for the root's UUID into ``tree``; the kernel version."""
    root_uuid = derived_uuid(key, "root-fs")
    version = kernel_version(tree)
    (tree / "etc/fstab").write_text(f"# The appliance's root (probeforge appliance build)\n"
                                    f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    grub_dir = tree / "boot/grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    (grub_dir / "grub.cfg").write_text(grub_cfg(root_uuid, version, recipe.kernel_cmdline,
                                                recipe.name))
    # Modules beside grub.cfg for anything `insmod` asks later (as grub-install copies them).
    for platform in ("i386-pc", "x86_64-efi"):
        source = tree / "usr/lib/grub" / platform
        if source.is_dir() and not (grub_dir / platform).exists():
            shutil.copytree(source, grub_dir / platform,
                            ignore=shutil.ignore_patterns("*.image", "*.exec", "*.module"))
    return version


def _grub_image(tree: Path, platform: str, out: Path, root_uuid: str) -> None:
    early = "/tmp/probeforge-grub-early.cfg"
    (tree / early.lstrip("/")).write_text(
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        "set prefix=($root)/boot/grub\n")
    target = f"/tmp/probeforge-{platform}.img"
    modules = list(_GRUB_MODULES) + list(_PC_MODULES if platform == "i386-pc"
                                         else _EFI_MODULES)
    if not (tree / "usr/lib/grub" / platform).is_dir():
        raise ApplianceError(f"no /usr/lib/grub/{platform} in the tree: keep "
                             f"{'grub-pc-bin' if platform == 'i386-pc' else 'grub-efi-amd64-bin'}"
                             " in the recipe's packages")
    _run(["chroot", str(tree), "grub-mkimage", "-O", platform, "-o", target,
          "-p", "/boot/grub", "-c", early, *modules], f"grub-mkimage -O {platform}")
    shutil.move(tree / target.lstrip("/"), out)
    (tree / early.lstrip("/")).unlink()


def _copy_into(disk: Path, image: Path, offset: int) -> None:
    """Write ``image`` into ``disk`` at ``offset``, leaving zero blocks as holes."""
    block = MIB
    with image.open("rb") as source, disk.open("r+b") as target:
        position = offset
        while chunk := source.read(block):
            if chunk.count(0) != len(chunk):
                target.seek(position)
                target.write(chunk)
            position += len(chunk)


def _sfdisk_script(lay: Layout, key: str) -> str:
    lines = ["label: gpt", f"label-id: {derived_uuid(key, 'disk').upper()}", "unit: sectors",
             "first-lba: 2048"]
    for name, start in lay.starts.items():
        lines.append(f"start={start}, size={lay.sizes[name]}, "
                     f"type={PARTITION_TYPES[lay.kinds[name]]}, "
                     f"uuid={derived_uuid(key, 'part-' + name).upper()}, name=\"{name}\"")
    return "\n".join(lines) + "\n"


def install_bios_boot(disk: Path, boot_img: bytes, core_img: bytes, core_sector: int,
                      max_sectors: int) -> None:
    """grub's boot.img into the MBR (keeping the protective partition table) pointing at
    ``core_img`` written from ``core_sector``: what grub-bios-setup does on a device."""
    if len(boot_img) != SECTOR:
        raise ApplianceError("grub's boot.img is not one sector: the grub-pc-bin package is "
                             "broken")
    sectors = (len(core_img) + SECTOR - 1) // SECTOR
    if sectors > max_sectors:
        raise ApplianceError(f"grub's core image ({sectors} sectors) does not fit the BIOS "
                             f"boot partition ({max_sectors}): make it bigger in the recipe")
    core = bytearray(core_img.ljust(sectors * SECTOR, b"\0"))
    struct.pack_into("<QHH", core, _BLOCKLIST, core_sector + 1, sectors - 1, _KERNEL_SEGMENT)
    with disk.open("r+b") as target:
        mbr = bytearray(target.read(SECTOR))
        new = bytearray(boot_img)
        new[_MBR_KEEP[0]:_MBR_KEEP[1]] = mbr[_MBR_KEEP[0]:_MBR_KEEP[1]]
        struct.pack_into("<Q", new, _KERNEL_SECTOR, core_sector)
        new[_BOOT_DRIVE] = 0xFF  # the drive the BIOS booted from
        new[_DRIVE_CHECK:_DRIVE_CHECK + 2] = b"\x90\x90"  # hard disk: trust no BIOS drive
        target.seek(0)
        target.write(new)
        target.seek(core_sector * SECTOR)
        target.write(core)


def make_disk(tree: Path, recipe: Recipe, key: str, out: Path, work: Path, *, epoch: int,
              progress: Callable[[str], None]) -> dict[str, str]:
    """The raw disk ``out`` from ``tree`` (already prepared with :func:`prepare_tree`); the
    identifiers it was given."""
    lay = layout(recipe)
    root_uuid = derived_uuid(key, "root-fs")
    work.mkdir(parents=True, exist_ok=True)
    core, efi = work / "core.img", work / "BOOTX64.EFI"
    progress("disk: grub images for BIOS and UEFI")
    _grub_image(tree, "i386-pc", core, root_uuid)
    _grub_image(tree, "x86_64-efi", efi, root_uuid)
    for path in (core, efi):
        os.utime(path, (epoch, epoch))

    esp_name = _by_kind(lay, "esp")
    esp = work / "esp.img"
    volume_id = derived_uuid(key, "esp").replace("-", "")[:8].upper()
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1",
           "E2FSPROGS_FAKE_TIME": str(epoch)}
    _run(["mkfs.vfat", "-C", "-F", "32", "-s", "1", "-n", "ESP", "-i", volume_id, str(esp),
          str(lay.sizes[esp_name] * SECTOR // 1024)], "mkfs.vfat of the ESP", env)
    _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], "mmd on the ESP", env)
    _run(["mcopy", "-m", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"],
         "mcopy to the ESP", env)

    root_name = _by_kind(lay, "linux-root-x86-64")
    root = work / "root.img"
    progress(f"disk: ext4 root from the tree ({lay.sizes[root_name] * SECTOR >> 20} MiB, "
             "mkfs.ext4 -d)")
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-E",
          f"root_owner=0:0,hash_seed={derived_uuid(key, 'root-hash')}", "-d", str(tree),
          str(root), f"{lay.sizes[root_name] * SECTOR // 1024}k"], "mkfs.ext4 -d", env)

    progress("disk: hybrid GPT (BIOS boot + ESP + root)")
    out.unlink(missing_ok=True)
    with out.open("wb") as disk:
        disk.truncate(lay.disk_bytes)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(out)],
                   input=_sfdisk_script(lay, key), text=True, capture_output=True, check=False)
    check = _run(["sfdisk", "--dump", str(out)], "sfdisk --dump")
    if check.count("start=") != len(lay.starts):
        raise ApplianceError(f"sfdisk did not write the partition table of {out}: "
                             "check util-linux's fdisk package")
    _copy_into(out, esp, lay.starts[esp_name] * SECTOR)
    _copy_into(out, root, lay.starts[root_name] * SECTOR)
    bios_name = _by_kind(lay, "bios-boot")
    install_bios_boot(out, (tree / "usr/lib/grub/i386-pc/boot.img").read_bytes(),
                      core.read_bytes(), lay.starts[bios_name], lay.sizes[bios_name])
    for path in (esp, root, core, efi):
        path.unlink()
    return {"root_uuid": root_uuid, "disk_guid": derived_uuid(key, "disk")}
