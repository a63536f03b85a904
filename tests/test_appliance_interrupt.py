# SPDX-License-Identifier: Apache-2.0
"""An appliance build killed while its chroot and overlay are mounted leaves no mount (in any
mount namespace of the machine), no loop device, no process and no output behind, and the
next build removes its work directory and succeeds.

Kills the seed build of a test host with SIGKILL (the build cannot clean up after itself) once
its Ansible play runs in the mounted overlay; needs the generic tree in the cache (built here
when absent: several minutes cold).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.appliance import HOST, write_inventory
from tests.support.targets import run_playbook

pytestmark = [pytest.mark.slow, pytest.mark.appliance, pytest.mark.ansible,
              pytest.mark.skipif(os.geteuid() != 0, reason="the build needs root")]


def _all_mount_points() -> set[str]:
    """Mount points seen by every process of the machine (each mount namespace)."""
    points: set[str] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/mountinfo") as table:
                    points.update(line.split()[4] for line in table)
            except OSError:
                continue
    return points


def _processes_in(path: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for link in ("root", "cwd"):
            try:
                if os.readlink(f"/proc/{entry}/{link}").startswith(str(path)):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_killed_seed_build_leaves_nothing_behind(tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inventory = write_inventory(tmp_path / "inventory", key.with_suffix(".pub"))
    pki = run_playbook(REPO / "playbooks" / "pki.yml", inventory)
    assert pki.returncode == 0, pki.report()
    out = tmp_path / "build" / HOST
    command = [sys.executable, "-m", "appliance", "seed", "--inventory", str(inventory),
               "--host", HOST, "--out", str(out)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 1800
    try:
        for line in proc.stdout:
            seen.append(line)
            # The seed play runs: the overlay, /proc, /sys, /dev and /run are mounted.
            if re.search(rf"seed {HOST}:\s+supervisor : ", line):
                break
            assert time.monotonic() < deadline, "".join(seen[-20:])
        else:
            pytest.fail("the build ended before its seed play ran:\n" + "".join(seen[-20:]))
        work = next(tmp_path.glob("build/.build-*"))
        assert any(p.startswith(str(work)) for p in _all_mount_points()), \
            "nothing mounted under the work directory while the play runs"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_processes_in(tmp_path)
                                           or any(p.startswith(str(tmp_path))
                                                  for p in _all_mount_points())):
        time.sleep(0.5)
    assert not [p for p in _all_mount_points() if p.startswith(str(tmp_path))]
    assert _processes_in(tmp_path) == []
    loops = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                           capture_output=True, text=True).stdout
    assert str(tmp_path) not in loops and str(REPO / ".cache") not in loops
    assert not out.exists(), "an interrupted build must not leave outputs"
    assert list(tmp_path.glob("build/.build-*")), "the killed build's work directory is kept"

    # The next build removes the leftover and finishes.
    done = subprocess.run([*command, "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "manifest.json").is_file()
    assert not list(tmp_path.glob("build/.build-*"))
