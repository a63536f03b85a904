# SPDX-License-Identifier: Apache-2.0
"""builds.workdirs, shared by the firmware and the appliance builders: a killed build's
leftovers go, a live build's stay, and the cache lock keeps a second build out until the
first is done."""

from __future__ import annotations

import os
import subprocess
import sys

from builds.workdirs import build_lock, clean_stale_builds


def test_leftovers_of_dead_builds_and_of_the_owner_go_live_ones_stay(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        names = {"live": f".build-abc-{sleeper.pid}", "dead": f".build-abc-{dead.pid}",
                 "own": f".build-def-{os.getpid()}", "odd": ".build-no-pid-x"}
        for name in names.values():
            (tmp_path / name / "tree").mkdir(parents=True)
        (tmp_path / "finished").mkdir()
        clean_stale_builds(tmp_path, os.getpid())
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["finished", names["live"]])
    finally:
        sleeper.kill()
        sleeper.wait()
    clean_stale_builds(tmp_path / "missing", os.getpid())  # nothing there: nothing to do


def test_the_lock_keeps_a_second_build_out(tmp_path):
    lock = tmp_path / "cache" / ".lock"
    probe = [sys.executable, "-c",
             "import fcntl, sys; f = open(sys.argv[1], 'a'); "
             "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(lock)]
    with build_lock(lock):
        assert subprocess.run(probe, capture_output=True).returncode != 0
    assert subprocess.run(probe, capture_output=True).returncode == 0
