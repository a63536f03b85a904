# SPDX-License-Identifier: Apache-2.0
"""firmware.squashfs: mksquashfs (xz) with root owners and fixed times, bit-identical."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware import FirmwareError
from firmware.squashfs import make_squashfs

EPOCH = 1793491200

pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None,
                                reason="squashfs-tools not installed")


def make_tree(root: Path) -> Path:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    (root / "usr" / "bin" / "tool").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "board").write_text("qemu-malta-mipsel\n")
    (root / "etc" / "shadow").write_text("root:*:1:0:99999:7:::\n")
    (root / "etc" / "shadow").chmod(0o600)
    (root / "bin").mkdir()
    (root / "bin" / "sh").symlink_to("../usr/bin/tool")
    return root


def listing(image: Path) -> list[str]:
    return subprocess.run(["unsquashfs", "-lls", str(image)], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_same_tree_gives_the_same_bytes_whatever_its_times_and_owners(tmp_path):
    first_tree = make_tree(tmp_path / "one")
    second_tree = make_tree(tmp_path / "two")
    os.utime(second_tree / "etc" / "board", (12345, 12345))
    if os.geteuid() == 0:
        os.chown(second_tree / "etc" / "board", 1000, 1000)
    first = make_squashfs(first_tree, tmp_path / "one.sqfs", epoch=EPOCH)
    second = make_squashfs(second_tree, tmp_path / "two.sqfs", epoch=EPOCH)
    assert first.read_bytes() == second.read_bytes()
    other = make_squashfs(first_tree, tmp_path / "other.sqfs", epoch=EPOCH + 60)
    assert other.read_bytes() != first.read_bytes()


def test_owners_are_root_times_the_epoch_and_modes_kept(tmp_path):
    image = make_squashfs(make_tree(tmp_path / "tree"), tmp_path / "a.sqfs", epoch=EPOCH)
    lines = listing(image)
    entries = {line.split()[-1] if "->" not in line else line.split()[-3]: line
               for line in lines if "squashfs-root" in line}
    assert set(entries) == {"squashfs-root", "squashfs-root/bin", "squashfs-root/bin/sh",
                            "squashfs-root/etc", "squashfs-root/etc/board",
                            "squashfs-root/etc/shadow", "squashfs-root/usr",
                            "squashfs-root/usr/bin", "squashfs-root/usr/bin/tool"}
    for line in entries.values():
        assert " root/root " in line and " 2026-11-01 00:00 " in line, line
    assert entries["squashfs-root/etc/shadow"].startswith("-rw------- ")
    assert entries["squashfs-root/usr/bin/tool"].startswith("-rwxr-xr-x ")
    assert entries["squashfs-root/bin/sh"].endswith("-> ../usr/bin/tool")
    superblock = subprocess.run(["unsquashfs", "-s", str(image)], capture_output=True,
                                text=True, check=True).stdout
    assert "Compression xz" in superblock
    assert "Sun Nov  1 00:00:00 2026" in superblock


def test_source_date_epoch_in_the_environment_does_not_break_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")
    image = make_squashfs(make_tree(tmp_path / "tree"), tmp_path / "a.sqfs", epoch=EPOCH)
    assert any(" 2026-11-01 00:00 " in line for line in listing(image))


def test_a_missing_tree_is_one_line_naming_it(tmp_path):
    with pytest.raises(FirmwareError, match="is not a directory") as caught:
        make_squashfs(tmp_path / "nothing", tmp_path / "a.sqfs", epoch=EPOCH)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "a.sqfs").exists()
