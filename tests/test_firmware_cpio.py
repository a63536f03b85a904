# SPDX-License-Identifier: Apache-2.0
"""firmware.cpio: gzip'd newc archives (the initramfs format), parsed back byte by byte."""

import gzip
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from firmware import FirmwareError
from firmware.cpio import (
    CpioEntry,
    char_device,
    directory,
    file,
    newc_bytes,
    symlink,
    tree_entries,
    write_newc_gz,
)

EPOCH = 1793491200
FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
          "rdevmajor", "rdevminor", "namesize", "check")


def parse_newc(raw: bytes) -> list[dict]:
    """The members of an uncompressed newc archive, as the kernel's unpacker reads them."""
    members = []
    offset = 0
    while True:
        assert raw[offset:offset + 6] == b"070701", f"bad magic at {offset}"
        values = [int(raw[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        header = dict(zip(FIELDS, values, strict=True))
        name_start = offset + 110
        name = raw[name_start:name_start + header["namesize"] - 1].decode()
        assert raw[name_start + header["namesize"] - 1] == 0
        data_start = name_start + header["namesize"]
        data_start += -data_start % 4
        data = raw[data_start:data_start + header["filesize"]]
        offset = data_start + header["filesize"]
        offset += -offset % 4
        if name == "TRAILER!!!":
            assert offset == len(raw), "bytes after the trailer"
            return members
        members.append({**header, "name": name, "data": data})


def read_archive(path: Path) -> list[dict]:
    return parse_newc(gzip.decompress(path.read_bytes()))


def test_archive_holds_files_links_directories_and_device_nodes(tmp_path):
    out = write_newc_gz([
        file("init", b"#!/bin/sh\necho hi\n", 0o755),
        char_device("dev/console", 5, 1),
        symlink("bin/sh", "busybox"),
        file("bin/busybox", b"\x7fELF" + b"x" * 5, 0o755),
        directory("proc", 0o555),
    ], tmp_path / "initramfs.cpio.gz", epoch=EPOCH)
    members = {m["name"]: m for m in read_archive(out)}
    # Parents are added, and every parent comes before what it holds.
    names = [m["name"] for m in read_archive(out)]
    assert names == sorted(names) == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console",
                                      "init", "proc"]
    console = members["dev/console"]
    assert stat.S_ISCHR(console["mode"]) and stat.S_IMODE(console["mode"]) == 0o600
    assert (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    assert console["filesize"] == 0
    link = members["bin/sh"]
    assert stat.S_ISLNK(link["mode"]) and link["data"] == b"busybox"
    init = members["init"]
    assert stat.S_ISREG(init["mode"]) and stat.S_IMODE(init["mode"]) == 0o755
    assert init["data"] == b"#!/bin/sh\necho hi\n"
    assert members["bin/busybox"]["data"] == b"\x7fELFxxxxx"  # 9 bytes: padding is right
    assert stat.S_ISDIR(members["dev"]["mode"]) and stat.S_IMODE(members["dev"]["mode"]) == 0o755
    assert stat.S_IMODE(members["proc"]["mode"]) == 0o555
    for member in members.values():
        assert member["uid"] == member["gid"] == 0
        assert member["mtime"] == EPOCH
    assert len({m["ino"] for m in members.values()}) == len(members)


def test_gzip_header_has_no_name_and_no_time(tmp_path):
    out = write_newc_gz([file("a", b"a")], tmp_path / "a.cpio.gz", epoch=EPOCH)
    head = out.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08"
    assert head[3] & 0x08 == 0, "a file name in the gzip header"
    assert head[4:8] == b"\0\0\0\0", "a timestamp in the gzip header"


def test_same_entries_in_any_order_give_the_same_bytes(tmp_path):
    entries = [file("etc/a", b"1"), symlink("lib/x", "../etc/a"), char_device("dev/null", 1, 3),
               directory("tmp", 0o1777)]
    first = write_newc_gz(entries, tmp_path / "1.gz", epoch=EPOCH)
    second = write_newc_gz(list(reversed(entries)), tmp_path / "2.gz", epoch=EPOCH)
    assert first.read_bytes() == second.read_bytes()
    third = write_newc_gz(entries, tmp_path / "3.gz", epoch=EPOCH + 1)
    assert third.read_bytes() != first.read_bytes()


def test_a_host_directory_packs_the_same_whatever_its_times_and_owners(tmp_path):
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "tool").write_bytes(b"tool")
    (tree / "bin" / "tool").chmod(0o750)
    (tree / "etc").mkdir()
    (tree / "etc" / "conf").write_text("x=1\n")
    (tree / "bin" / "alias").symlink_to("tool")
    first = write_newc_gz(tree, tmp_path / "1.gz", epoch=EPOCH)
    os.utime(tree / "etc" / "conf", (1, 1))
    if os.geteuid() == 0:
        os.chown(tree / "etc" / "conf", 1000, 1000)
    second = write_newc_gz(tree, tmp_path / "2.gz", epoch=EPOCH)
    assert first.read_bytes() == second.read_bytes()
    members = {m["name"]: m for m in read_archive(first)}
    assert stat.S_IMODE(members["bin/tool"]["mode"]) == 0o750
    assert members["bin/alias"]["data"] == b"tool"
    assert members["etc/conf"]["uid"] == 0
    prefixed = {e.path for e in tree_entries(tree, prefix="/lib/extra")}
    assert "lib/extra/bin/tool" in prefixed


def test_busybox_cpio_lists_the_archive(tmp_path):
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("no busybox on the host to cross-check the format")
    out = write_newc_gz([file("init", b"x", 0o755), char_device("dev/console", 5, 1),
                         symlink("bin/sh", "busybox")], tmp_path / "a.gz", epoch=EPOCH)
    listing = subprocess.run([busybox, "cpio", "-t"], input=gzip.decompress(out.read_bytes()),
                             capture_output=True, check=True).stdout.decode().split()
    assert listing == ["bin", "bin/sh", "dev", "dev/console", "init"]


@pytest.mark.parametrize(("entries", "message"), [
    (lambda: [file("a", b"1"), file("a", b"2")], "given twice"),
    (lambda: [file("a", b"1"), file("a/b", b"2")], "make that a directory"),
    (lambda: [file("../etc/passwd", b"")], "without '..'"),
    (lambda: [file("/", b"")], "below the archive root"),
    (lambda: [file("a", b"")], "epoch -1 does not fit"),
])
def test_bad_entries_are_refused_with_one_line(entries, message):
    with pytest.raises(FirmwareError, match=message) as caught:
        newc_bytes(entries(), epoch=-1 if "epoch" in message else EPOCH)
    assert "\n" not in str(caught.value)


def test_bad_entry_kinds_and_modes_are_refused():
    with pytest.raises(FirmwareError, match="unknown kind"):
        CpioEntry("a", "fifo", 0o644)
    with pytest.raises(FirmwareError, match="permission bits"):
        CpioEntry("a", "file", 0o100644)
    with pytest.raises(FirmwareError, match="no contents"):
        CpioEntry("d", "dir", 0o755, b"x")


def test_leading_slashes_and_dots_are_dropped_from_names():
    raw = newc_bytes([file("/init", b""), file("./etc/x", b"")], epoch=EPOCH)
    assert [m["name"] for m in parse_newc(raw)] == ["etc", "etc/x", "init"]
