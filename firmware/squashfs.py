# SPDX-License-Identifier: Apache-2.0
"""Reproducible squashfs (xz) images of a directory tree, with mksquashfs.

Owners are root, every timestamp (files and the superblock) is the build's epoch, host
extended attributes stay out; mksquashfs sorts directory entries itself and packs files in
that order, so the same tree gives the same bytes whatever the host's clock, umask or
directory order.
"""

import os
import shutil
import subprocess
from pathlib import Path

from firmware import FirmwareError


def make_squashfs(tree: Path, out: Path, *, epoch: int, block_size: int = 131072) -> Path:
    """Write ``tree`` as an xz squashfs to ``out`` (atomically) and return ``out``."""
    mksquashfs = shutil.which("mksquashfs")
    if mksquashfs is None:
        raise FirmwareError("mksquashfs not found: apt-get install squashfs-tools")
    if not tree.is_dir():
        raise FirmwareError(f"{tree} is not a directory: pass the root tree to pack")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.part")
    partial.unlink(missing_ok=True)
    # mksquashfs refuses -all-time/-mkfs-time when SOURCE_DATE_EPOCH is also set.
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    command = [mksquashfs, str(tree), str(partial), "-noappend", "-comp", "xz",
               "-b", str(block_size), "-all-root", "-no-xattrs", "-mkfs-time", str(epoch),
               "-all-time", str(epoch), "-no-progress", "-quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        output = (result.stderr or result.stdout).strip().splitlines()
        raise FirmwareError(f"mksquashfs of {tree} failed: {output[-1] if output else '?'} "
                            f"(check the tree and the free space beside {out})")
    partial.replace(out)
    return out
