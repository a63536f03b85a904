# SPDX-License-Identifier: Apache-2.0
"""The image format ``probeforge-firmware 1``: round trip, determinism, and every kind of
damage refused with a message that names it and the fix. The host's overlay as the builder
writes it from its description (``probeforge-overlay 1``), and the cached base a host's image
is built on by key."""

import hashlib
import io
import json
import os
import random
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from firmware import FirmwareError
from firmware.build import cached_base_images
from firmware.image import (
    ALIGN,
    HEADER_SIZE,
    PARTS,
    ImageError,
    extract_part,
    read_header,
    verify_image,
    write_image,
)
from firmware.overlay import SPEC_FORMAT, overlay_digest, write_overlay

BOARD = "qemu-malta-mipsel"
SIZES = {"kernel": 70_001, "initramfs": 12_288, "rootfs": 33_333, "host": 5}


def make_parts(directory: Path, seed: int = 1) -> list[tuple[str, Path]]:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    parts = []
    for name in PARTS:
        path = directory / f"{name}.bin"
        path.write_bytes(rng.randbytes(SIZES[name]))
        parts.append((name, path))
    return parts


def build(out: Path, parts: list[tuple[str, Path]], **fields: str) -> Path:
    values = {"board": BOARD, "version": "2026.11.0", "build": "3f2a0123456789ab",
              "host": "probe-01", **fields}
    write_image(out, parts=parts, **values)
    return out


@pytest.fixture
def parts(tmp_path):
    return make_parts(tmp_path / "parts")


@pytest.fixture
def image(tmp_path, parts):
    return build(tmp_path / "probeforge-2026.11.0-qemu-malta-mipsel-probe-01-sysupgrade.bin",
                 parts)


def test_round_trip(image, parts, tmp_path):
    header = verify_image(image, board=BOARD)
    assert (header.board, header.version, header.build, header.host) == (
        BOARD, "2026.11.0", "3f2a0123456789ab", "probe-01")
    assert [p.name for p in header.parts] == list(PARTS)
    data = image.read_bytes()
    assert len(data) == header.size == header.parts[-1].end
    previous_end = HEADER_SIZE
    for part, (name, source) in zip(header.parts, parts, strict=True):
        assert part.offset % ALIGN == 0 and part.offset >= previous_end
        # Parts follow each other at the next 4096 boundary; the gap is NUL bytes.
        assert part.offset == -(-previous_end // ALIGN) * ALIGN
        assert not data[previous_end:part.offset].strip(b"\0")
        assert data[part.offset:part.end] == source.read_bytes()
        assert part.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
        out = tmp_path / "out" / name
        assert extract_part(image, name, out) == part
        assert out.read_bytes() == source.read_bytes()
        previous_end = part.end
    # The header is the ASCII text of docs/firmware.md, NUL padded, readable by the shell.
    text = data[:HEADER_SIZE].rstrip(b"\0").decode("ascii")
    assert text.splitlines()[0] == "probeforge-firmware 1"
    assert text.splitlines()[5].startswith("part kernel 4096 70001 ")
    assert text.endswith("\n") and text.splitlines()[-1].startswith("end ")
    body = text[:text.rindex("end ")].encode()
    assert text.splitlines()[-1] == f"end {hashlib.sha256(body).hexdigest()}"
    assert read_header(io.BytesIO(data)) == header
    assert read_header(str(image)) == header


def test_identical_inputs_give_identical_bytes(tmp_path, parts):
    first = build(tmp_path / "one.bin", parts)
    for _, path in parts:
        os.utime(path, (1, 1))
    umask = os.umask(0o077)
    try:
        second = build(tmp_path / "two" / "one.bin", parts)
    finally:
        os.umask(umask)
    assert first.read_bytes() == second.read_bytes()
    changed = build(tmp_path / "three.bin", parts, version="2026.11.1")
    assert changed.read_bytes() != first.read_bytes()


def test_write_is_atomic(tmp_path, parts, image):
    before = image.read_bytes()
    broken = [*parts[:3], ("host", tmp_path / "missing")]
    with pytest.raises(FileNotFoundError):
        write_image(image, board=BOARD, version="9", build="3f2a0123456789ab", host="probe-01",
                    parts=broken)
    assert image.read_bytes() == before
    assert sorted(p.name for p in image.parent.iterdir()) == sorted([image.name, "parts"])


def test_image_inside_a_bigger_file(image, tmp_path):
    flash = tmp_path / "flash"
    flash.write_bytes(b"\xff" * 3 * 1048576 + image.read_bytes() + b"\xff" * 4096)
    header = verify_image(flash, offset=3 * 1048576, board=BOARD)
    assert header == read_header(image)
    with flash.open("rb") as disk:
        extract_part(disk, "rootfs", tmp_path / "rootfs", offset=3 * 1048576)
    assert (tmp_path / "rootfs").read_bytes() == (tmp_path / "parts" / "rootfs.bin").read_bytes()
    with pytest.raises(ImageError, match="more than the 100 bytes of a slot"):
        verify_image(flash, offset=3 * 1048576, max_size=100)


def _flip(data: bytearray, offset: int) -> None:
    data[offset] ^= 0x01


def _corrupt(kind: str, data: bytes) -> bytes:
    header = read_header(io.BytesIO(data))
    raw = bytearray(data)
    if kind == "empty":
        return b""
    if kind == "truncated-header":
        return data[:1000]
    if kind == "truncated-part":
        return data[:-1]
    if kind == "bad-magic":
        return b"\x7fELF" + data[4:]
    if kind == "other-format":
        return data.replace(b"probeforge-firmware 1\n", b"probeforge-firmware 2\n", 1)
    if kind == "header-hash":
        _flip(raw, data.index(b"\nversion ") + len(b"\nversion "))  # still ASCII
        return bytes(raw)
    if kind == "header-padding":
        raw[HEADER_SIZE - 1] = ord("x")
        return bytes(raw)
    if kind == "end-line":
        _flip(raw, data.index(b"\nend ") + 10)
        return bytes(raw)
    if kind in PARTS:
        part = header.part(kind)
        _flip(raw, part.offset + part.size // 2)
        return bytes(raw)
    raise AssertionError(kind)


CORRUPTIONS = {
    "empty": "is truncated",
    "truncated-header": "is truncated: 1000 bytes, shorter than the 4096-byte header",
    "truncated-part": "is truncated: .* its header says",
    "bad-magic": r"not a probeforge image \(bad magic",
    "other-format": "has format 'probeforge-firmware 2'; this tool reads",
    "header-hash": "header hash mismatch",
    "header-padding": "header damaged",
    "end-line": "header hash mismatch",
    **{name: f"part {name} hash mismatch" for name in PARTS},
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_every_corruption_is_refused_with_its_message(kind, image, tmp_path):
    bad = tmp_path / f"{kind}.bin"
    bad.write_bytes(_corrupt(kind, image.read_bytes()))
    with pytest.raises(ImageError, match=CORRUPTIONS[kind]) as caught:
        verify_image(bad)
    message = str(caught.value)
    assert "\n" not in message
    # Each message says what to do.
    assert any(fix in message for fix in ("again", "give a", "use a tool", "rebuild"))
    assert isinstance(caught.value, FirmwareError)


def test_wrong_board_is_refused(image):
    with pytest.raises(ImageError) as caught:
        verify_image(image, board="tplink-archer-c7")
    assert str(caught.value) == (
        "image is for board qemu-malta-mipsel, this is tplink-archer-c7: build it for "
        "tplink-archer-c7 (board tplink-archer-c7 in images/openwrt/recipe.yml)")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        verify_image(tmp_path / "nothing.bin")


@pytest.mark.parametrize(("field", "value"), [("version", "1.0 beta"), ("host", "probe 01"),
                                              ("build", "XYZ"), ("board", "")])
def test_writer_refuses_fields_the_header_cannot_carry(tmp_path, parts, field, value):
    with pytest.raises(ImageError, match=f"{field} .* is not allowed"):
        build(tmp_path / "x.bin", parts, **{field: value})
    assert not list(tmp_path.glob("*.bin"))


def test_writer_wants_the_four_parts_in_order(tmp_path, parts):
    with pytest.raises(ImageError, match="kernel, initramfs, rootfs, host in this order"):
        build(tmp_path / "x.bin", list(reversed(parts)))


def test_header_with_wrong_layout_is_refused(image, tmp_path):
    """A header whose hash holds but whose parts overlap was built wrong: refused too."""
    data = image.read_bytes()
    text = data[:HEADER_SIZE].rstrip(b"\0").decode()
    lines = text.splitlines()[:-1]
    kernel = lines[5].split()
    lines[6] = " ".join(["part", "initramfs", kernel[2], *lines[6].split()[3:]])
    body = "".join(f"{line}\n" for line in lines).encode()
    new = (body + f"end {hashlib.sha256(body).hexdigest()}\n".encode()).ljust(HEADER_SIZE,
                                                                               b"\0")
    bad = tmp_path / "overlap.bin"
    bad.write_bytes(new + data[HEADER_SIZE:])
    with pytest.raises(ImageError, match="part initramfs at 4096 is not 4096-aligned after"):
        read_header(bad)


# -- the host's overlay, from its description ------------------------------------------------

@pytest.fixture
def bundle(tmp_path):
    directory = tmp_path / "pki" / "probe-01"
    directory.mkdir(parents=True)
    for name, text in (("key.pem", "KEY of probe-01\n"), ("cert.pem", "CERT\n"),
                       ("chain.pem", "CHAIN\n")):
        (directory / name).write_text(text)
    return directory


def describe(bundle: Path, **content: str) -> dict:
    return {"format": SPEC_FORMAT,
            "content": {"etc/mplane/probe.conf": "[mplane]\n",
                        "etc/uci-defaults/90-probeforge-hostname": "#!/bin/sh\n",
                        "etc/dropbear/authorized_keys": "ssh-ed25519 AAAA rig\n", **content},
            "source": {"etc/mplane/certs/probe.key": str(bundle / "key.pem"),
                       "etc/mplane/certs/probe.crt": str(bundle / "cert.pem"),
                       "etc/mplane/certs/ca.pem": str(bundle / "chain.pem")}}


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")]}


def test_overlay_written_from_its_description(tmp_path, bundle):
    overlay = tmp_path / "build" / ".overlay" / "probe-01"
    assert write_overlay(describe(bundle), overlay) is True
    assert (overlay / "etc/mplane/certs/probe.key").read_text() == "KEY of probe-01\n"
    assert (overlay / "etc/mplane/probe.conf").read_text() == "[mplane]\n"
    modes = _modes(overlay)
    # The device contract's modes, whatever the controller's umask.
    assert modes["."] == 0o700 and modes["etc/mplane/certs"] == 0o700
    assert modes["etc/mplane/certs/probe.key"] == 0o600
    assert modes["etc/dropbear"] == 0o700
    assert modes["etc/uci-defaults/90-probeforge-hostname"] == 0o755
    assert modes["etc/mplane/probe.conf"] == modes["etc/mplane/certs/ca.pem"] == 0o644
    # No staging directory is left beside it.
    assert sorted(p.name for p in overlay.parent.iterdir()) == ["probe-01"]


def test_identical_description_rewrites_nothing(tmp_path, bundle):
    overlay = tmp_path / "probe-01"
    write_overlay(describe(bundle), overlay)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in overlay.rglob("*")}
    assert write_overlay(describe(bundle), overlay) is False
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in overlay.rglob("*")} == before


def test_changed_description_replaces_the_whole_overlay(tmp_path, bundle):
    overlay = tmp_path / "probe-01"
    write_overlay(describe(bundle, **{"etc/sysupgrade.conf": "/etc/old\n"}), overlay)
    digest = overlay_digest(overlay)
    (bundle / "key.pem").write_text("a rotated KEY\n")
    assert write_overlay(describe(bundle), overlay) is True
    # A file the description no longer names is gone; the new key is in.
    assert not (overlay / "etc/sysupgrade.conf").exists()
    assert (overlay / "etc/mplane/certs/probe.key").read_text() == "a rotated KEY\n"
    assert overlay_digest(overlay) != digest


@pytest.mark.parametrize("change, message", [
    ({"format": "probeforge-overlay 2"}, "not 'probeforge-overlay 1'"),
    ({"content": {"../etc/passwd": "x"}}, "not a relative path inside the overlay"),
    ({"content": {"/etc/passwd": "x"}}, "not a relative path inside the overlay"),
    ({"content": {"etc/mplane/probe.conf": 5}}, "is not text"),
    ({"source": {"etc/mplane/certs/probe.key": "/nonexistent/key.pem"}},
     "cannot read /nonexistent/key.pem"),
    ({"content": {"etc/mplane/certs/probe.key": "x"}}, "both rendered and copied"),
    ({"content": {"etc/mplane/probe.conf/x": "x"}}, "cannot write etc/mplane/probe.conf/x"),
])
def test_bad_description_is_refused_and_the_overlay_kept(tmp_path, bundle, change, message):
    overlay = tmp_path / "build" / "probe-01"
    write_overlay(describe(bundle), overlay)
    before = overlay_digest(overlay)
    spec = describe(bundle)
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    with pytest.raises(FirmwareError, match=re.escape(message)):
        write_overlay(spec, overlay)
    assert overlay_digest(overlay) == before
    assert sorted(p.name for p in overlay.parent.iterdir()) == ["probe-01"]


def test_overlay_without_the_key_is_refused(tmp_path, bundle):
    spec = describe(bundle)
    del spec["source"]["etc/mplane/certs/probe.key"]
    with pytest.raises(FirmwareError, match=re.escape("lacks etc/mplane/certs/probe.key")):
        write_overlay(spec, tmp_path / "build" / "probe-01")
    assert list((tmp_path / "build").iterdir()) == []  # nothing, not even a staging directory


def test_image_command_refuses_a_bad_description_on_stdin(tmp_path):
    done = subprocess.run([sys.executable, "-m", "firmware", "image", "--board", BOARD,
                           "--host", "probe-01", "--overlay", str(tmp_path / "o"),
                           "--overlay-spec", "-", "--out", str(tmp_path / "out"), "--json"],
                          input="{not json", capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1
    assert "overlay description -: not JSON" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cached_base_is_found_by_key_only(tmp_path):
    key = "ab" * 32
    with pytest.raises(FirmwareError, match=r"not in .*: build it with python -m firmware base"):
        cached_base_images(BOARD, tmp_path, key)
    with pytest.raises(FirmwareError, match="not a base key"):
        cached_base_images(BOARD, tmp_path, "../" + key[3:])
    base = tmp_path / "base" / key
    (base / "tree").mkdir(parents=True)
    (base / "rootfs.squashfs").write_bytes(b"rootfs")
    (base / "vmlinux").write_bytes(b"kernel")
    (base / "base.json").write_text(json.dumps({
        "key": key, "board": "other-board", "version": "1", "kernel": "vmlinux",
        "kernel_version": "6.1", "epoch": 0, "packages": [], "inputs": {}, "omitted": [],
        "components": []}))
    with pytest.raises(FirmwareError, match="not in"):  # no initramfs yet
        cached_base_images(BOARD, tmp_path, key)
    (tmp_path / "images" / key).mkdir(parents=True)
    (tmp_path / "images" / key / "initramfs.cpio.gz").write_bytes(b"initramfs")
    with pytest.raises(FirmwareError, match="is for board other-board"):
        cached_base_images(BOARD, tmp_path, key)
    assert cached_base_images("other-board", tmp_path, key).rootfs == base / "rootfs.squashfs"
