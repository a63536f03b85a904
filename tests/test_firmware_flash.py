# SPDX-License-Identifier: Apache-2.0
"""The flash of the emulated MiniProbe and sysupgrade, on the host.

The device's own shell code (``lib/probeforge/flash.sh``, ``sbin/sysupgrade``) runs here
under Debian's busybox with a PATH of busybox applets only, against a flash *file*: the same
bytes the bootloader (rig.flash) and the initramfs read. Killing sysupgrade at each step
before the boot-environment switch must leave the old firmware active and intact.
"""

import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware.image import ImageError, read_header
from rig.flash import (
    ENV_SIZE,
    BootEnv,
    FlashError,
    Pending,
    active_image,
    create_flash,
    install_image,
    parse_bootenv,
    read_bootenv,
    read_bootenv_copies,
    read_layout,
    read_settings,
    verify_slot,
    write_bootenv,
)
from tests.conftest import REPO
from tests.test_firmware_image import CORRUPTIONS, _corrupt, build, make_parts

BOARD = "qemu-malta-mipsel"
BOARD_DIR = REPO / "images" / "openwrt" / "boards" / BOARD
SYSUPGRADE = BOARD_DIR / "rootfs" / "sbin" / "sysupgrade"
FLASH_SH = BOARD_DIR / "rootfs" / "lib" / "probeforge" / "flash.sh"


@pytest.fixture(scope="session")
def applets(tmp_path_factory) -> Path:
    """A directory of busybox applet links: the only commands the device's shell gets."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not installed (apt-get install busybox)")
    directory = tmp_path_factory.mktemp("busybox-applets")
    subprocess.run([busybox, "--install", "-s", str(directory)], check=True)
    return directory


def busybox_sh(applets: Path, script: str | Path, *args: str, env: dict[str, str],
               cwd: Path | None = None, hooks_group: bool = False
               ) -> subprocess.CompletedProcess[str]:
    command = [shutil.which("busybox") or "busybox", "sh"]
    command += [str(script)] if isinstance(script, Path) else ["-c", script, "sh"]
    return subprocess.run([*command, *args], env={"PATH": str(applets), **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          start_new_session=hooks_group)


@dataclass
class Device:
    """A flash file with image v1 active, and the root a running v1 would show."""

    flash: Path
    root: Path
    upper: Path
    images: dict[str, Path]
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PF_FLASH": str(self.flash), "PF_ROOT": str(self.root),
                "PF_UPPER": str(self.upper), "PF_NO_REBOOT": "1", "TMPDIR": str(self.tmp),
                **extra}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("images")
    return {
        "v1": build(where / "v1.bin", make_parts(where / "p1", seed=1), version="1.0"),
        "v2": build(where / "v2.bin", make_parts(where / "p2", seed=2), version="2.0"),
        "other-board": build(where / "other.bin", make_parts(where / "p3", seed=3),
                             board="tplink-archer-c7"),
    }


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


# Files of the running v1: where each came from (the image, or a change on the device),
# and whether sysupgrade keeps it.
ROOT_FILES = {
    "etc/mplane/probe.conf": ("local", True),
    "etc/mplane/certs/probe.key": ("image", True),
    "etc/dropbear/authorized_keys": ("image", True),
    "etc/dropbear/dropbear_ed25519_host_key": ("local", True),
    "etc/sysupgrade.conf": ("image", True),
    "etc/extra.conf": ("local", True),
    "etc/tstat/tstat.conf": ("image", True),
    "etc/other": ("local", False),
}


@pytest.fixture
def device(tmp_path, images) -> Device:
    flash = tmp_path / "flash.img"
    create_flash(flash)
    install_image(flash, images["v1"])
    root, upper = tmp_path / "root", tmp_path / "upper"
    _write(root / "etc" / "board", f"{BOARD}\n")
    for rel, (origin, _) in ROOT_FILES.items():
        mode = 0o600 if rel.endswith(("key", "host_key")) else 0o644
        _write(root / rel, f"{rel} of v1 ({origin})\n", mode)
        if origin == "local":
            _write(upper / rel, f"{rel} of v1 ({origin})\n", mode)
    (root / "etc" / "sysupgrade.conf").write_text("# kept besides the defaults\n"
                                                  "  /etc/extra.conf   # the operator's\n\n"
                                                  "/etc/not-there\n")
    # Trailing slashes and a path listed twice, as keep.d files of packages have them.
    _write(root / "lib" / "upgrade" / "keep.d" / "tstat", "/etc/tstat/\n/etc/mplane/\n")
    (tmp_path / "tmp").mkdir()
    return Device(flash, root, upper, images, tmp_path / "tmp")


def sysupgrade(applets: Path, device: Device, *args: str, **env: str
               ) -> subprocess.CompletedProcess[str]:
    return busybox_sh(applets, SYSUPGRADE, *args, env=device.env(**env), hooks_group=True)


def region_digest(flash: Path, start: int, size: int) -> str:
    digest = hashlib.sha256()
    with flash.open("rb") as disk:
        disk.seek(start)
        left = size
        while left:
            block = disk.read(min(left, 1 << 20))
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def snapshot(flash: Path) -> dict[str, object]:
    """What must not change when an upgrade is cut short."""
    layout = read_layout(flash)
    env = read_bootenv(flash)
    slot, header = active_image(flash)
    return {"env": (env.seq, env.active, env.pending), "active": (slot, header),
            "slot a": region_digest(flash, layout.slot_a.start, header.size),
            "overlay": region_digest(flash, layout.overlay.start, layout.overlay.size)}


# --- the flash file and its boot environment -------------------------------------------


def test_create_flash_layout_and_overlay(tmp_path):
    flash = tmp_path / "flash.img"
    layout = create_flash(flash)
    assert flash.stat().st_size == 512 << 20
    assert flash.stat().st_blocks * 512 < 32 << 20, "the flash file is sparse"
    dump = subprocess.run(["sfdisk", "-d", str(flash)], capture_output=True, text=True,
                          check=True).stdout
    mib = 2048
    assert f"start=        {mib}, size=       {8 * mib}, type=da" in dump
    assert f"start=       {9 * mib}, size=      {160 * mib}, type=da" in dump
    assert f"start=      {169 * mib}, size=      {160 * mib}, type=da" in dump
    assert f"start=      {329 * mib}, size=      {183 * mib}, type=83" in dump
    assert read_layout(flash) == layout
    overlay = tmp_path / "overlay.ext4"
    with flash.open("rb") as disk, overlay.open("wb") as out:
        disk.seek(layout.overlay.start)
        out.write(disk.read(layout.overlay.size))
    subprocess.run(["e2fsck", "-fn", str(overlay)], check=True, capture_output=True)
    listing = subprocess.run(["debugfs", "-R", "ls -l /", str(overlay)], capture_output=True,
                             text=True, check=True).stdout
    assert " upper" in listing and " work" in listing
    with pytest.raises(FlashError, match="no valid boot environment"):
        read_bootenv(flash)
    with pytest.raises(FlashError, match="no bootable image"):
        active_image(flash)


def test_bootenv_higher_seq_wins_and_writes_alternate(tmp_path):
    flash = tmp_path / "flash.img"
    create_flash(flash)
    first = write_bootenv(flash, active="a")
    assert (first.seq, first.copy) == (1, 0)
    second = write_bootenv(flash, active="b", pending=Pending())
    assert (second.seq, second.copy) == (2, 1)
    third = write_bootenv(flash, active="b")
    assert (third.seq, third.copy) == (3, 0)
    assert read_bootenv(flash) == third
    copies = read_bootenv_copies(flash)
    assert [c.seq for c in copies if c] == [3, 2]


def test_torn_bootenv_write_keeps_the_previous_environment(tmp_path, applets):
    flash = tmp_path / "flash.img"
    layout = create_flash(flash)
    write_bootenv(flash, active="a")
    previous = write_bootenv(flash, active="a")  # seq 2 in copy 1
    torn = BootEnv(3, "b", Pending()).to_bytes()
    for cut in (1, 20, 60, 100, len(BootEnv(3, "b", Pending()).body()) + 10):
        with flash.open("r+b") as disk:
            disk.seek(layout.bootenv.start)  # copy 0, the one a writer overwrites
            disk.write(torn[:cut])
        assert read_bootenv(flash) == previous
        shell = busybox_sh(applets, f'. {FLASH_SH}; pf_layout && pf_env_load && '
                           'echo "$PF_ENV_SEQ $PF_ENV_ACTIVE $PF_ENV_COPY $PF_ENV_PENDING"',
                           env={"PF_FLASH": str(flash)})
        assert shell.stdout == "2 a 1 none\n", shell.stderr


BOOTENV_VARIANTS = {
    "none": b"probeforge-bootenv 1\nseq 7\nactive b\npending none\n",
    "pending-empty": b"probeforge-bootenv 1\nseq 7\nactive a\npending 0 -\n",
    "pending-archive": b"probeforge-bootenv 1\nseq 12\nactive b\npending 10240 "
                       + b"ab" * 32 + b"\n",
    "leading-zero": b"probeforge-bootenv 1\nseq 07\nactive b\npending none\n",
    "slot-c": b"probeforge-bootenv 1\nseq 7\nactive c\npending none\n",
    "other-magic": b"probeforge-bootenv 2\nseq 7\nactive b\npending none\n",
    "extra-line": b"probeforge-bootenv 1\nseq 7\nactive b\npending none\nmore 1\n",
    "short-sha": b"probeforge-bootenv 1\nseq 7\nactive b\npending 10 abc\n",
    "crlf": b"probeforge-bootenv 1\r\nseq 7\nactive b\npending none\n",
}


def _env_copy(body: bytes, *, after: bytes = b"", inside: bool = False) -> bytes:
    text = body + b"end " + hashlib.sha256(body).hexdigest().encode() + b"\n"
    if inside:
        text = text[:30] + b"\0" + text[30:]
    return (text + after).ljust(ENV_SIZE, b"\0")


@pytest.mark.parametrize("variant", [*sorted(BOOTENV_VARIANTS), "garbage-after",
                                     "nul-inside", "no-end"])
def test_python_and_shell_agree_on_bootenv_copies(tmp_path, applets, variant):
    if variant == "garbage-after":
        raw = _env_copy(BOOTENV_VARIANTS["none"], after=b"\0\0x")
    elif variant == "nul-inside":
        raw = _env_copy(BOOTENV_VARIANTS["none"], inside=True)
    elif variant == "no-end":
        raw = BOOTENV_VARIANTS["none"].ljust(ENV_SIZE, b"\0")
    else:
        raw = _env_copy(BOOTENV_VARIANTS[variant])
    flash = tmp_path / "flash.img"
    layout = create_flash(flash)
    with flash.open("r+b") as disk:
        disk.seek(layout.bootenv.start)
        disk.write(raw)
    env = parse_bootenv(raw, 0)
    valid = variant in ("none", "pending-empty", "pending-archive")
    assert (env is not None) == valid
    shell = busybox_sh(applets, f'. {FLASH_SH}; pf_layout && pf_env_load && '
                       'echo "$PF_ENV_SEQ $PF_ENV_ACTIVE $PF_ENV_PENDING"',
                       env={"PF_FLASH": str(flash)})
    if env is None:
        assert shell.returncode != 0 and "no valid boot environment" in shell.stderr
        return
    pending = ("none" if env.pending is None else
               env.pending.line().removeprefix("pending "))
    assert shell.stdout == f"{env.seq} {env.active} {pending}\n"


def test_shell_writes_what_python_reads(tmp_path, applets):
    flash = tmp_path / "flash.img"
    create_flash(flash)
    write_bootenv(flash, active="a")
    shell = busybox_sh(applets, f'. {FLASH_SH}; pf_layout && pf_env_load && '
                       f'pf_env_write b "10 {"cd" * 32}"', env={"PF_FLASH": str(flash)})
    assert shell.returncode == 0, shell.stderr
    assert read_bootenv(flash) == BootEnv(2, "b", Pending(10, "cd" * 32), 1)


def test_install_image_and_fallback(tmp_path, images):
    flash = tmp_path / "flash.img"
    layout = create_flash(flash)
    assert install_image(flash, images["v1"])[0] == "a"
    assert install_image(flash, images["v2"])[0] == "b"  # the current one stays as fallback
    slot, header = active_image(flash)
    assert (slot, header.version) == ("b", "2.0")
    with pytest.raises(FlashError, match="holds no bootable image"):
        active_image(flash, board="tplink-archer-c7")
    # A damaged active slot: the bootloader boots the other one.
    rootfs = read_header(images["v2"]).part("rootfs")
    with flash.open("r+b") as disk:
        disk.seek(layout.slot_b.start + rootfs.offset + 10)
        disk.write(b"\xff\xfe")
    slot, header = active_image(flash)
    assert (slot, header.version) == ("a", "1.0")
    assert read_bootenv(flash).active == "b"
    install_image(flash, images["v1"], "b", wipe_overlay=True)
    assert read_bootenv(flash).pending == Pending()
    assert verify_slot(flash, "b").version == "1.0"


# --- sysupgrade on a flash file ------------------------------------------------------------


def test_sysupgrade_test_mode_accepts_a_good_image(applets, device):
    before = snapshot(device.flash)
    done = sysupgrade(applets, device, "-T", str(device.images["v2"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"sysupgrade: {device.images['v2']}: ok: board {BOARD}, version "
                           "2.0, build 3f2a0123456789ab, host probe-01\n")
    assert snapshot(device.flash) == before


def test_sysupgrade_refuses_another_board(applets, device):
    done = sysupgrade(applets, device, "-T", str(device.images["other-board"]))
    assert done.returncode == 1
    assert done.stderr == (f"sysupgrade: image is for board tplink-archer-c7, this is {BOARD}: "
                           f"build it for {BOARD} (board {BOARD} in "
                           "images/openwrt/recipe.yml)\n")
    full = sysupgrade(applets, device, str(device.images["other-board"]))
    assert full.returncode == 1 and read_bootenv(device.flash).seq == 1


# The shell reports a damaged padding as a header hash mismatch: it cannot tell the two.
SHELL_MESSAGES = {**CORRUPTIONS, "header-padding": "header hash mismatch",
                  "other-format": "has format 'probeforge-firmware 2'; this device reads"}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_sysupgrade_refuses_a_damaged_image(applets, device, kind):
    bad = device.tmp / f"{kind}.bin"
    bad.write_bytes(_corrupt(kind, device.images["v2"].read_bytes()))
    before = snapshot(device.flash)
    for args in (("-T",), ()):
        done = sysupgrade(applets, device, *args, str(bad))
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sysupgrade: "), done.stderr
        assert re.search(SHELL_MESSAGES[kind], lines[0]), lines[0]
    assert snapshot(device.flash) == before


def test_sysupgrade_usage_and_missing_file(applets, device):
    assert sysupgrade(applets, device).returncode == 2
    assert sysupgrade(applets, device, "-x", "a").returncode == 2
    missing = sysupgrade(applets, device, str(device.tmp / "none.bin"))
    assert missing.returncode == 1 and "no such file" in missing.stderr


def _settings(flash: Path) -> dict[str, dict[str, tuple[bytes, int]]]:
    archive = read_settings(flash)
    assert archive is not None
    found: dict[str, dict[str, tuple[bytes, int]]] = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as outer:
        names = sorted(m.name.removeprefix("./") for m in outer.getmembers())
        assert names[-1] == "settings"
        marker = outer.extractfile("./settings")
        assert marker is not None and marker.read() == b"probeforge-settings 1\n"
        for kind in ("local", "image"):
            member = outer.extractfile(f"./{kind}.tar")
            assert member is not None
            with tarfile.open(fileobj=member) as inner:
                found[kind] = {}
                names = inner.getnames()
                assert len(names) == len(set(names)), names
                for info in inner.getmembers():
                    data = inner.extractfile(info)
                    assert data is not None
                    found[kind][info.name] = (data.read(), info.mode)
    return found


def test_sysupgrade_switches_slot_and_writes_the_settings(applets, device):
    layout = read_layout(device.flash)
    slot_a = region_digest(device.flash, layout.slot_a.start, layout.slot_a.size)
    done = sysupgrade(applets, device, "-v", str(device.images["v2"]))
    assert done.returncode == 0, done.stderr
    assert "sysupgrade: slot b holds version 2.0 (build 3f2a0123456789ab); it boots next" \
        in done.stdout
    env = read_bootenv(device.flash)
    assert (env.seq, env.active, env.copy) == (2, "b", 1)
    assert env.pending is not None and env.pending.sha256 is not None
    assert active_image(device.flash)[1] == read_header(device.images["v2"])
    assert region_digest(device.flash, layout.slot_a.start, layout.slot_a.size) == slot_a
    kept = _settings(device.flash)
    for rel, (origin, keep) in ROOT_FILES.items():
        if keep:
            data, mode = kept[origin][rel]
            assert data == (device.root / rel).read_bytes()
            assert mode == (device.root / rel).stat().st_mode & 0o7777
        else:
            assert rel not in kept["local"] and rel not in kept["image"]
    assert "/etc/not-there" not in done.stdout + done.stderr


def test_sysupgrade_without_settings(applets, device):
    layout = read_layout(device.flash)
    area = region_digest(device.flash, layout.settings_offset, layout.settings_room)
    done = sysupgrade(applets, device, "-n", str(device.images["v2"]))
    assert done.returncode == 0, done.stderr
    env = read_bootenv(device.flash)
    assert (env.active, env.pending) == ("b", Pending())
    assert region_digest(device.flash, layout.settings_offset, layout.settings_room) == area
    assert read_settings(device.flash) is None


KILL_HOOK = """\
PF_UPGRADE_HOOKS="$PF_UPGRADE_HOOKS test_kill"
test_kill() {{
	[ "$1" != {step} ] || kill -KILL 0
}}
"""


@pytest.mark.parametrize("step", ["check", "pack", "write", "write-rest", "verify", "settings",
                                  "switch"])
def test_killed_sysupgrade_leaves_the_old_firmware_active(applets, device, step):
    before = snapshot(device.flash)
    hook = device.root / "lib" / "upgrade" / "test-kill.sh"
    hook.write_text(KILL_HOOK.format(step=step))
    done = sysupgrade(applets, device, str(device.images["v2"]))
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert snapshot(device.flash) == before
    # The same upgrade, not cut short, then goes through.
    hook.unlink()
    done = sysupgrade(applets, device, str(device.images["v2"]))
    assert done.returncode == 0, done.stderr
    assert active_image(device.flash)[0] == "b"


def test_killed_while_writing_the_slot(applets, device):
    """Half an image in the inactive slot (a power cut in the middle of dd)."""
    before = snapshot(device.flash)
    hook = device.root / "lib" / "upgrade" / "test-kill.sh"
    hook.write_text(KILL_HOOK.format(step="verify"))
    assert sysupgrade(applets, device, str(device.images["v2"])).returncode == -signal.SIGKILL
    layout = read_layout(device.flash)
    with device.flash.open("r+b") as disk:
        disk.seek(layout.slot_b.start + 40_000)
        disk.write(b"\0" * 100_000)
    assert snapshot(device.flash) == before
    with pytest.raises(ImageError, match="hash mismatch"):
        verify_slot(device.flash, "b")


HOLD_HOOK = """\
PF_UPGRADE_HOOKS="$PF_UPGRADE_HOOKS test_hold"
test_hold() {
	[ "$1" = write ] || return 0
	: >"$TMPDIR/held"
	while [ ! -e "$TMPDIR/release" ]; do sleep 0.1; done
}
"""


def test_a_second_sysupgrade_waits_for_none_and_changes_nothing(applets, device):
    """Two upgrades at once: the second is refused before it touches the flash, naming the
    first; the first then finishes, and the lock goes with it."""
    (device.root / "lib" / "upgrade" / "test-hold.sh").write_text(HOLD_HOOK)
    command = [shutil.which("busybox") or "busybox", "sh", str(SYSUPGRADE),
               str(device.images["v2"])]
    first = subprocess.Popen(command, env={"PATH": str(applets), **device.env()},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (device.tmp / "held").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first upgrade never reached step write"
            time.sleep(0.1)
        before = snapshot(device.flash)
        second = sysupgrade(applets, device, str(device.images["v2"]))
        assert second.returncode == 3, second.stdout + second.stderr
        assert f"another sysupgrade is running (pid {first.pid})" in second.stderr
        assert snapshot(device.flash) == before
        (device.tmp / "release").touch()
        _, errors = first.communicate(timeout=120)
        assert first.returncode == 0, errors
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert active_image(device.flash)[0] == "b"
    assert not (device.tmp / "sysupgrade.lock").exists()


def test_upgrade_hook_can_refuse(applets, device):
    before = snapshot(device.flash)
    (device.root / "lib" / "upgrade" / "refuse.sh").write_text(
        'PF_UPGRADE_HOOKS="$PF_UPGRADE_HOOKS refuse"\nrefuse() { [ "$1" != switch ]; }\n')
    done = sysupgrade(applets, device, str(device.images["v2"]))
    assert done.returncode == 3
    assert "hook refuse stopped the upgrade before step switch" in done.stderr
    assert snapshot(device.flash) == before


FINISH = """\
. {flash_sh}
pf_layout && pf_env_load || exit 1
case $PF_ENV_PENDING in none) exit 2 ;; esac
pf_settings_read ${{PF_ENV_PENDING%% *}} ${{PF_ENV_PENDING#* }} "$TMPDIR/settings.tgz" || exit 3
pf_settings_restore "$TMPDIR/settings.tgz" "$NEWROOT" || exit 4
pf_env_write "$PF_ENV_ACTIVE" none
"""


def test_settings_restore_after_the_upgrade(applets, device, tmp_path):
    """What the initramfs does at the next boot: the device's own changes win, files that
    came with the old image only fill gaps the new image leaves (renewed credentials in the
    new image are not masked by the old ones)."""
    assert sysupgrade(applets, device, str(device.images["v2"])).returncode == 0
    newroot = tmp_path / "newroot"  # the merged root of the new image, before restoring
    _write(newroot / "etc/mplane/probe.conf", "probe.conf of v2\n")
    _write(newroot / "etc/mplane/certs/probe.key", "renewed key of v2\n", 0o600)
    _write(newroot / "etc/dropbear/authorized_keys", "rotated keys of v2\n")
    _write(newroot / "etc/sysupgrade.conf", "/etc/extra.conf\n")
    done = busybox_sh(applets, FINISH.format(flash_sh=FLASH_SH),
                      env={"PF_FLASH": str(device.flash), "TMPDIR": str(device.tmp),
                           "NEWROOT": str(newroot)})
    assert done.returncode == 0, done.stderr
    old = {rel: (device.root / rel).read_text() for rel in ROOT_FILES}
    assert (newroot / "etc/mplane/probe.conf").read_text() == old["etc/mplane/probe.conf"]
    assert (newroot / "etc/extra.conf").read_text() == old["etc/extra.conf"]
    host_key = newroot / "etc/dropbear/dropbear_ed25519_host_key"
    assert host_key.read_text() == old["etc/dropbear/dropbear_ed25519_host_key"]
    assert host_key.stat().st_mode & 0o777 == 0o600
    assert (newroot / "etc/mplane/certs/probe.key").read_text() == "renewed key of v2\n"
    assert (newroot / "etc/dropbear/authorized_keys").read_text() == "rotated keys of v2\n"
    assert (newroot / "etc/tstat/tstat.conf").read_text() == old["etc/tstat/tstat.conf"]
    assert not (newroot / "etc/other").exists()
    env = read_bootenv(device.flash)
    assert (env.seq, env.active, env.pending) == (3, "b", None)


def test_keep_lists_are_read_like_openwrt(applets, device):
    """Comments, blanks and relative paths in the keep lists."""
    (device.root / "lib" / "upgrade" / "keep.d" / "odd").write_text(
        "relative/path\n   \n# only a comment\n/etc/other   # now kept\n")
    done = sysupgrade(applets, device, "-v", str(device.images["v2"]))
    assert done.returncode == 0, done.stderr
    assert "ignoring 'relative/path' in the keep lists: not an absolute path" in done.stderr
    assert "etc/other" in _settings(device.flash)["local"]


def test_sysupgrade_names_a_flash_that_is_not_one(applets, device, tmp_path):
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * 4096)
    done = sysupgrade(applets, device, str(device.images["v2"]), PF_FLASH=str(blank))
    assert done.returncode == 3
    assert "has no partition 1: it is not a probeforge flash" in done.stderr


def test_flash_shell_library_is_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    scripts = [FLASH_SH, SYSUPGRADE, BOARD_DIR / "initramfs" / "init",
               *sorted((BOARD_DIR / "rootfs" / "lib" / "upgrade").glob("*.sh"))]
    done = subprocess.run(["shellcheck", "-s", "sh", *map(str, scripts)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    for script in (SYSUPGRADE, BOARD_DIR / "initramfs" / "init"):
        assert os.access(script, os.X_OK), f"{script} is not executable"
