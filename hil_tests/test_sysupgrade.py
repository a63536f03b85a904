# SPDX-License-Identifier: Apache-2.0
"""sysupgrade on the device: an image for another board is refused and changes nothing; an
upgrade through playbooks/flash.yml keeps the device's identity and what the keep lists name,
drops the rest of its changes, and runs the first-boot scripts of the new firmware once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.image import write_image

pytestmark = [pytest.mark.slow, pytest.mark.mips, pytest.mark.feature("sysupgrade")]
REPO = Path(__file__).resolve().parents[1]


def _boot_id(target) -> str:
    return target.ssh.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()


def test_image_for_another_board_is_refused(target, tmp_path):
    parts = []
    for name in ("kernel", "initramfs", "rootfs", "host"):
        part = tmp_path / name
        part.write_bytes(os.urandom(8192))
        parts.append((name, part))
    image = tmp_path / "other.bin"
    write_image(image, board="other-board", version="1.0", build="0123456789abcdef",
                host=target.name, parts=parts)
    target.ssh.put(image, "/tmp/other-board.bin")
    before = _boot_id(target)
    checked = target.ssh.run("sysupgrade -T /tmp/other-board.bin", check=False)
    assert checked.returncode != 0
    assert "other-board" in checked.stderr + checked.stdout
    flashed = target.ssh.run("sysupgrade /tmp/other-board.bin", check=False)
    assert flashed.returncode != 0
    assert _boot_id(target) == before  # refused before anything was written or rebooted
    target.ssh.run("rm -f /tmp/other-board.bin")


def _identity(target) -> str:
    return target.ssh.run("sha256sum /etc/mplane/certs/probe.key /etc/mplane/certs/probe.crt "
                          "/etc/dropbear/*_host_key").stdout


def test_flash_playbook_upgrades_and_keeps_identity(target, hil_env):
    identity = _identity(target)
    slot = target.ssh.run("cat /proc/cmdline").stdout.split("pf.slot=")[1].split()[0]
    # A setting listed in /etc/sysupgrade.conf survives; an unlisted change does not.
    target.ssh.run("echo kept > /etc/hil-kept && echo /etc/hil-kept >> /etc/sysupgrade.conf && "
                   "echo dropped > /root/hil-dropped && sync")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(hil_env.inventory),
         str(REPO / "playbooks" / "flash.yml"), "--limit", target.name,
         "-e", "flash_force=true"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "identity kept" in done.stdout
    assert _identity(target) == identity
    assert target.ssh.run("cat /etc/hil-kept").stdout.strip() == "kept"
    assert target.ssh.run("test -e /root/hil-dropped", check=False).returncode != 0
    now = target.ssh.run("cat /proc/cmdline").stdout.split("pf.slot=")[1].split()[0]
    assert now != slot  # the other slot holds the new firmware
    marks = target.ssh.run("cat /etc/probeforge-firstboot").stdout.split()
    assert len(marks) == 1  # the new firmware's first boot, once
    # Flashing what already runs is a no-op.
    again = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(hil_env.inventory),
         str(REPO / "playbooks" / "flash.yml"), "--limit", target.name],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
    # And the probe is registered again.
    assert "ping-average-ip4" in hil_env.wait_capabilities(target, {"ping-average-ip4"})
