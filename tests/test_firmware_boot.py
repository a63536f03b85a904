# SPDX-License-Identifier: Apache-2.0
"""The emulated MiniProbe boots its firmware from flash, keeps its overlay and upgrades.

One board for the module, booted by the rig's launcher (rig/board.py) from a flash file
programmed with rig.flash.install_image: the real shared base (firmware.rootfs.build_base,
cached in ``.cache/firmware-test``), the initramfs of firmware/initramfs.py and a small host
layer carrying a test SSH key. The tests run in order on the same board: first boot, a
reboot that keeps a file, a refused image, and a real sysupgrade inside the guest to a second
image that the bootloader then boots. The power-cut test powers its own boards on a flash of
its own: QEMU killed (EmulatedBoard.power_cut) in the middle of an in-guest sysupgrade, then
powered on again. QEMU is always stopped by its PID.
"""

import contextlib
import gzip
import hashlib
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware.image import ImageError, read_header, write_image
from firmware.initramfs import BOOT_MODULES, build_initramfs
from firmware.recipe import load_recipe
from firmware.rootfs import Base, build_base
from firmware.squashfs import make_squashfs
from rig import RigError
from rig.board import EmulatedBoard
from rig.flash import (
    Pending,
    create_flash,
    install_image,
    read_bootenv,
    read_layout,
    read_settings,
    verify_slot,
    write_bootenv,
)

pytestmark = [pytest.mark.slow, pytest.mark.mips]

REPO = Path(__file__).resolve().parents[1]
BOARD = "qemu-malta-mipsel"
TEST_CACHE = REPO / ".cache" / "firmware-test"
TIMINGS: dict[str, float] = {}

if shutil.which("qemu-system-mipsel") is None:
    pytest.skip("qemu-system-mipsel not installed (apt-get install qemu-system-mips)",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Firmware:
    images: dict[str, Path]
    key: Path


def host_layer(tree: Path, version: str, public_key: str) -> None:
    """What the per-host layer of the lead's build carries, reduced to what the test needs."""
    dropbear = tree / "etc" / "dropbear"
    dropbear.mkdir(parents=True)
    dropbear.chmod(0o700)
    (dropbear / "authorized_keys").write_text(public_key)
    (dropbear / "authorized_keys").chmod(0o600)
    (tree / "etc" / "probeforge-release").write_text(
        f"version={version}\nboard={BOARD}\nhost=probe-test\n")


@pytest.fixture(scope="module")
def base() -> Base:
    return build_base(load_recipe(), BOARD, cache=TEST_CACHE, progress=lambda _: None)


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, contents, device numbers) of a newc cpio archive."""
    members = {}
    at = 0
    while True:
        assert data[at:at + 6] == b"070701", f"bad cpio header at {at}"
        fields = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[at + 110:at + 110 + namesize - 1].decode()
        at = (at + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return members
        members[name] = (mode, data[at:at + size], (fields[9], fields[10]))
        at = (at + size + 3) & ~3


def test_initramfs_contents_and_determinism(base, tmp_path):
    first, second = tmp_path / "one.cpio.gz", tmp_path / "two" / "one.cpio.gz"
    build_initramfs(base.tree, base.kernel_version, first, epoch=base.epoch)
    second.parent.mkdir()
    build_initramfs(base.tree, base.kernel_version, second, epoch=base.epoch)
    assert first.read_bytes() == second.read_bytes()
    members = read_newc(gzip.decompress(first.read_bytes()))
    assert members["init"][0] == stat.S_IFREG | 0o755
    assert members["bin/sh"] == (stat.S_IFLNK | 0o777, b"busybox", (0, 0))
    assert members["dev/console"][0] == stat.S_IFCHR | 0o600
    assert members["dev/console"][2] == (5, 1)
    assert members["bin/busybox"][1] == (base.tree / "bin" / "busybox").read_bytes()
    moddir = f"lib/modules/{base.kernel_version}"
    order = members["lib/probeforge/modules"][1].decode().split()
    names = [Path(rel).name.removesuffix(".ko") for rel in order]
    for needed in BOOT_MODULES:
        assert needed in names
    # Dependencies first: ext4 after what it needs (crc32c for its checksums, jbd2).
    assert names.index("crc32c_generic") < names.index("ext4")
    assert names.index("jbd2") < names.index("ext4")
    assert names.index("virtio") < names.index("virtio_pci") < names.index("virtio_blk")
    for rel in order:
        assert f"{moddir}/{rel}" in members
    dep = members[f"{moddir}/modules.dep"][1].decode()
    assert "kernel/fs/ext4/ext4.ko:" in dep
    assert f"{moddir}/modules.alias" in members
    assert not [n for n in members if n.endswith(".ko") and "virtio_net" in n]


@pytest.fixture(scope="module")
def firmware(base, tmp_path_factory) -> Firmware:
    work = tmp_path_factory.mktemp("firmware")
    initramfs = work / "initramfs.cpio.gz"
    build_initramfs(base.tree, base.kernel_version, initramfs, epoch=base.epoch)
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "boot-test", "-f",
                    str(key)], check=True)
    images = {}
    for name, version, board in (("v1", "2026.11.0", BOARD), ("v2", "2026.11.1", BOARD),
                                 ("wrong", "2026.11.1", "tplink-archer-c7")):
        tree = work / f"host-{name}"
        host_layer(tree, version, (work / "id_ed25519.pub").read_text())
        layer = make_squashfs(tree, work / f"host-{name}.squashfs", epoch=base.epoch)
        images[name] = work / f"probeforge-{version}-{board}-probe-test-sysupgrade.bin"
        write_image(images[name], board=board, version=version,
                    build=hashlib.sha256(name.encode()).hexdigest()[:16], host="probe-test",
                    parts=[("kernel", base.kernel), ("initramfs", initramfs),
                           ("rootfs", base.squashfs), ("host", layer)])
    return Firmware(images, key)


@pytest.fixture(scope="module")
def board(firmware, tmp_path_factory):
    work = tmp_path_factory.mktemp("board")
    flash = work / "flash.img"
    create_flash(flash)
    assert install_image(flash, firmware.images["v1"], board=BOARD)[0] == "a"
    device = EmulatedBoard(flash, work / "rig", ssh_port=free_port(),
                           console_log=work / "console.log", ssh_key=firmware.key,
                           guest_address="10.0.2.21")
    started = time.monotonic()
    device.start()
    try:
        device.wait_ssh(timeout=120)
        TIMINGS["boot to SSH"] = time.monotonic() - started
        yield device
    finally:
        device.stop()
        assert device.pid is None
        with pytest.raises(RigError, match="stopped: the board is off"):
            device.wait_ssh(timeout=1)  # at once, not after the timeout
        print(f"\nconsole log: {device.console_log}; timings: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


def test_first_boot(board):
    assert board.ssh("cat /etc/board").stdout == f"{BOARD}\n"
    assert "version=2026.11.0\n" in board.ssh("cat /etc/probeforge-release").stdout
    mounts = board.ssh("cat /proc/mounts").stdout
    assert "overlay / overlay " in mounts
    assert "lowerdir=/rom-host:/rom,upperdir=/overlay/upper,workdir=/overlay/work" in mounts
    for point, kind in (("/rom", "squashfs"), ("/rom-host", "squashfs"),
                        ("/overlay", "ext4")):
        assert f" {point} {kind} " in mounts, mounts
    cmdline = board.ssh("cat /proc/cmdline").stdout
    assert "pf.slot=a " in cmdline
    # The malta RTC gives the guest the host's time (TLS needs it).
    guest = int(board.ssh("date +%s").stdout)
    assert abs(guest - time.time()) < 120
    assert board.ssh("ip -4 addr show eth0").stdout.count("10.0.2.21/") == 1
    boot = board.boots[0]
    assert (boot.slot, boot.header.version, boot.fallback) == ("a", "2026.11.0", False)


def test_flash_and_nic_have_an_interrupt_line_each(board):
    """Sharing malta's edge-triggered i8259 line, the disk and the NIC lost an interrupt under
    load and the guest stopped answering (rig/board.py, qemu_command)."""
    lines = [line.split() for line in board.ssh("cat /proc/interrupts").stdout.splitlines()]
    virtio = {row[0]: row[4:] for row in lines if any(w.startswith("virtio") for w in row)}
    assert len(virtio) == 2, virtio
    assert all(len(devices) == 1 for devices in virtio.values()), virtio


def test_overlay_persists_across_a_reboot(board):
    board.ssh("echo kept > /root/persist && sync")
    board.ssh("reboot", check=False)
    board.wait_boot(2, timeout=60)
    board.wait_ssh(timeout=120)
    assert board.boots[0].reason == "guest-reset"
    assert board.ssh("cat /root/persist").stdout == "kept\n"
    assert board.boots[1].slot == "a"


def test_sysupgrade_checks_refuse_another_board(board, firmware):
    board.put(firmware.images["wrong"], "/tmp/wrong.bin")
    done = board.ssh("sysupgrade -T /tmp/wrong.bin", check=False)
    assert done.returncode == 1
    assert done.stderr == (f"sysupgrade: image is for board tplink-archer-c7, this is {BOARD}: "
                           f"build it for {BOARD} (board {BOARD} in "
                           "images/openwrt/recipe.yml)\n")
    board.ssh("rm /tmp/wrong.bin")


def test_sysupgrade_in_the_guest(board, firmware):
    env = read_bootenv(board.flash)
    host_key = board.ssh("sha256sum /etc/dropbear/dropbear_ed25519_host_key").stdout
    board.ssh("mkdir -p /etc/mplane && echo 'changed on the device' > /etc/mplane/probe.conf"
              " && echo lost > /etc/not-kept && sync")
    started = time.monotonic()
    board.put(firmware.images["v2"], "/tmp/v2.bin")
    TIMINGS["image copy over SSH"] = time.monotonic() - started
    mark = time.monotonic()
    assert board.ssh("sysupgrade -T /tmp/v2.bin").returncode == 0
    TIMINGS["sysupgrade -T"] = time.monotonic() - mark
    boots = board.boot_count
    mark = time.monotonic()
    # The connection ends when the device reboots.
    done = board.ssh("sysupgrade -v /tmp/v2.bin", check=False, timeout=300)
    assert "sysupgrade: slot b holds version 2026.11.1" in done.stdout, done.stderr
    TIMINGS["sysupgrade until reboot"] = time.monotonic() - mark
    board.wait_boot(boots + 1, timeout=120)
    board.wait_ssh(timeout=120)
    TIMINGS["sysupgrade round trip"] = time.monotonic() - started
    assert "version=2026.11.1\n" in board.ssh("cat /etc/probeforge-release").stdout
    assert "pf.slot=b " in board.ssh("cat /proc/cmdline").stdout
    assert board.ssh("cat /etc/mplane/probe.conf").stdout == "changed on the device\n"
    assert board.ssh("test -e /etc/not-kept", check=False).returncode == 1
    assert board.ssh("test -e /root/persist", check=False).returncode == 1
    # The SSH host key is the device's own: kept, so known_hosts entries stay valid.
    assert board.ssh("sha256sum /etc/dropbear/dropbear_ed25519_host_key").stdout == host_key
    after = read_bootenv(board.flash)
    assert (after.active, after.pending, after.seq) == ("b", None, env.seq + 2)
    layout = read_layout(board.flash)
    with board.flash.open("rb") as disk:
        header = read_header(disk, offset=layout.slot_a.start)
    assert header.version == "2026.11.0", "the old image stays in slot a as the fallback"


def test_bootloader_falls_back_and_leaves_the_overlay(board):
    """A damaged active slot: the bootloader boots the other one, and the initramfs does not
    finish a sysupgrade meant for the damaged slot (the old overlay stays)."""
    layout = read_layout(board.flash)
    with board.flash.open("r+b") as disk:
        disk.seek(layout.slot_b.start + 8192)
        disk.write(b"\xff" * 4096)  # inside the kernel part of slot b
    write_bootenv(board.flash, active="b", pending=Pending())
    boots = board.boot_count
    board.ssh("reboot", check=False)
    boot = board.wait_boot(boots + 1, timeout=60)
    board.wait_ssh(timeout=120)
    assert (boot.slot, boot.fallback, boot.header.version) == ("a", True, "2026.11.0")
    assert "pf.slot=a " in board.ssh("cat /proc/cmdline").stdout
    assert board.ssh("cat /etc/mplane/probe.conf").stdout == "changed on the device\n"
    assert read_bootenv(board.flash).pending == Pending(), "left for the slot it names"


# A sysupgrade step hook (docs/firmware.md, "sysupgrade") for the power-cut test: before the
# step named in /tmp/pf-cut-at it says where it is and blocks, holding the upgrade at that
# exact point until the test cuts QEMU's power. /tmp is a RAM disk, so after the cut the hook
# (kept on the overlay) no longer stops anything.
CUT_HOOK = """\
PF_UPGRADE_HOOKS="$PF_UPGRADE_HOOKS pf_test_cut"
pf_test_cut() {
	[ "$1" = "$(cat /tmp/pf-cut-at 2>/dev/null)" ] || return 0
	echo "$1" >/tmp/pf-cut-here
	sleep 600
}
"""


def wait_until_cut_point(device: EmulatedBoard, step: str, timeout: float = 180) -> None:
    """Wait until the in-guest sysupgrade sits in CUT_HOOK before ``step``."""
    deadline = time.monotonic() + timeout
    while True:
        # One SSH round trip a poll: each costs a key exchange on the emulated CPU.
        here, _, log = device.ssh("cat /tmp/pf-cut-here; echo ---; cat /tmp/sysupgrade.log",
                                  check=False).stdout.partition("---\n")
        if here == f"{step}\n":
            return
        # An upgrade that ended (refused the image, failed) will not reach the hook.
        assert "\nexit " not in f"\n{log}", f"sysupgrade ended before step {step}: {log}"
        assert time.monotonic() < deadline, (
            f"sysupgrade did not reach step {step} within {timeout:.0f} s: {log}")
        time.sleep(0.5)


def test_power_cut_during_sysupgrade_keeps_the_old_firmware(firmware, tmp_path):
    """Killing QEMU in the middle of an in-guest sysupgrade leaves a device that boots the
    old firmware with its overlay, and the upgrade then goes through. The power is cut twice,
    on the same flash: halfway through writing the new slot (step write-rest), and when the
    new image is in the slot, read back, and the settings archive is stored, just before the
    one write that switches the boot environment (step switch)."""
    flash = tmp_path / "flash.img"
    create_flash(flash)
    install_image(flash, firmware.images["v1"], board=BOARD)
    old, new = (read_header(firmware.images[name]) for name in ("v1", "v2"))
    assert old.build != new.build
    image = firmware.images["v2"].read_bytes()
    # Where sysupgrade splits its write (the write-rest step), computed as the script does.
    half = len(image) // 2 // 65536 * 65536
    layout = read_layout(flash)
    log = tmp_path / "console.log"
    timings: dict[str, float] = {}
    started = time.monotonic()

    with contextlib.ExitStack() as stack:

        def power_on(number: int) -> tuple[EmulatedBoard, str]:
            """A new board on the flash; it must boot the old firmware. Returns it and the
            guest's command line, release file and /root/persist (if any)."""
            device = EmulatedBoard(flash, tmp_path / f"rig-{number}", ssh_port=free_port(),
                                   console_log=log, ssh_key=firmware.key)
            stack.callback(device.stop)  # QEMU is stopped by its PID whatever happens
            mark = time.monotonic()
            device.start(timeout=180)
            device.wait_ssh(timeout=180)
            timings[f"power-on {number} to SSH"] = time.monotonic() - mark
            boot = device.boots[0]
            assert (boot.slot, boot.fallback, boot.header.build) == ("a", False, old.build), \
                "the bootloader must boot the old firmware"
            state = device.ssh("cat /proc/cmdline /etc/probeforge-release; "
                               "cat /root/persist 2>/dev/null || true").stdout
            assert "pf.slot=a " in state and f"version={old.version}\n" in state, state
            return device, state

        device, _ = power_on(1)
        # A file of the device's own (must survive the cuts), a changed kept file (must come
        # through the final upgrade), the hook; the image on the overlay, so that one copy
        # over SSH serves every attempt. All synced: a power cut loses what is not.
        device.ssh("cat > /lib/upgrade/zz-test-cut.sh && echo kept > /root/persist && "
                   "mkdir -p /etc/mplane && echo 'changed on the device' > "
                   "/etc/mplane/probe.conf", stdin=CUT_HOOK.encode())
        mark = time.monotonic()
        device.put(firmware.images["v2"], "/root/v2.bin")
        device.ssh("sync")
        timings["image copy over SSH"] = time.monotonic() - mark
        env = read_bootenv(flash)
        assert (env.active, env.pending) == ("a", None)

        for number, step in enumerate(("write-rest", "switch"), start=2):
            mark = time.monotonic()
            # In the background, out of the SSH session, which must return at once.
            device.ssh(f"echo {step} > /tmp/pf-cut-at && setsid sh -c 'sysupgrade -v "
                       "/root/v2.bin; echo \"exit $?\"' </dev/null >/tmp/sysupgrade.log 2>&1 &")
            wait_until_cut_point(device, step)
            timings[f"sysupgrade to {step}"] = time.monotonic() - mark
            pid, boots = device.pid, device.boot_count
            assert pid is not None
            assert device.power_cut() == pid
            assert not device.running and device.pid is None and device.error is None
            assert device.boot_count == boots, "a power cut is not a reboot"
            assert device.boots[-1].returncode == -signal.SIGKILL

            # What the cut left on the flash: the new slot as far as sysupgrade got, and the
            # boot environment untouched (the old firmware stays active, nothing pending).
            assert read_bootenv(flash) == env
            with flash.open("rb") as disk:
                disk.seek(layout.slot_b.start)
                slot_b = disk.read(len(image))
            if step == "write-rest":
                assert slot_b[:half] == image[:half], "the first half was written and flushed"
                assert slot_b[half:] == bytes(len(image) - half), "the rest was not started"
                with pytest.raises(ImageError):
                    verify_slot(flash, "b")
            else:
                assert slot_b == image
                assert verify_slot(flash, "b", board=BOARD).build == new.build
                assert read_settings(flash) is None, "stored, but no environment names it"

            device, state = power_on(number)
            assert state.endswith("\nkept\n"), f"the overlay must be intact: {state}"

        # The same upgrade, not cut short, lands: the device comes back on the new firmware.
        mark = time.monotonic()
        done = device.ssh("rm /lib/upgrade/zz-test-cut.sh && sysupgrade -v /root/v2.bin",
                          check=False, timeout=300)
        assert f"sysupgrade: slot b holds version {new.version}" in done.stdout, done.stderr
        boot = device.wait_boot(2, timeout=180)
        device.wait_ssh(timeout=180)
        timings["full sysupgrade round trip"] = time.monotonic() - mark
        assert (boot.slot, boot.fallback, boot.header.build) == ("b", False, new.build)
        state = device.ssh("cat /proc/cmdline /etc/probeforge-release /etc/mplane/probe.conf; "
                           "ls /root").stdout
        assert "pf.slot=b " in state and f"version={new.version}\n" in state, state
        assert "changed on the device\n" in state, "kept settings come through"
        assert "persist" not in state, "the overlay starts afresh after an upgrade"
        after = read_bootenv(flash)
        assert (after.active, after.pending, after.seq) == ("b", None, env.seq + 2)
    timings["power-cut test"] = time.monotonic() - started
    TIMINGS.update({f"power cut: {k}": v for k, v in timings.items()})
    print(f"\npower-cut test, console log {log}: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def test_initramfs_failure_is_one_line_and_a_shell(firmware, tmp_path):
    """A command line that does not match the image: the initramfs says so on the console
    and opens a shell there (no silent hang); the board stays up for someone to look."""
    flash = tmp_path / "flash.img"
    create_flash(flash)
    install_image(flash, firmware.images["v1"])
    log = tmp_path / "console.log"
    # The last word wins: pf.rootfs now points at the kernel part, not at a squashfs.
    with EmulatedBoard(flash, tmp_path / "rig", ssh_port=free_port(), console_log=log,
                       extra_cmdline=["pf.rootfs=4096:4096"]) as device:
        deadline = time.monotonic() + 60
        while "opening a shell on the console" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.5)
        lines = [line for line in log.read_text().splitlines() if line.startswith("initramfs:")]
        assert lines[0] == ("initramfs: no squashfs at pf.rootfs=4096:4096 in slot a: the "
                            "command line does not match the image")
        assert device.pid is not None and device.error is None
    assert device.pid is None
