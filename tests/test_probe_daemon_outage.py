# SPDX-License-Identifier: Apache-2.0
"""The real RI supervisor goes away mid-measurement and comes back: every result arrives once.

A recording relay sits between the daemon and the supervisor only to count deliveries; the
supervisor, the client and the daemon are the real programs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter

import pytest

from rig.mplane_ri import (
    RIError,
    RISupervisor,
    default_cache_dir,
    free_port,
    list_capabilities,
    ri_venv,
    run_specification,
)
from tests.support.probe_daemon_proc import ProbeDaemon, registry_file
from tests.support.wiretap import Wiretap

pytestmark = [pytest.mark.slow, pytest.mark.mplane_ri]
ONLY_PING = {name: {"enabled": "no"} for name in ("traceroute", "http", "dns", "ott", "tstat")}
TARGET = {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"}


def submit_in_background(venv, url, label, when, registry) -> threading.Thread:
    """Post a specification; the client's wait for the result dies with the supervisor."""

    def run() -> None:
        with contextlib.suppress(RIError):
            run_specification(venv, url, label, TARGET, when=when, timeout=60,
                              registry_preload=registry)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_supervisor_restart_mid_run_delivers_every_result_once(tmp_path):
    venv = ri_venv(default_cache_dir())
    registry = registry_file(tmp_path)
    component_port, client_port = free_port(), free_port()
    ports = {"component_port": component_port, "client_port": client_port,
             "registry_preload": registry}
    first = RISupervisor(venv, tmp_path / "first", **ports)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with Wiretap(component_port) as tap, \
            ProbeDaemon(tmp_path, tap.url, sections=ONLY_PING) as daemon:
        with first:
            daemon.wait_log("registered 4 capabilities")
            wait_for(lambda: "ping-detail-ip4" in list_capabilities(
                venv, first.client_url, registry_preload=registry), 30, "capabilities")
            submit_in_background(venv, first.client_url, "ping-detail-ip4", "now + 10s / 1s",
                                 registry)
            submit_in_background(venv, first.client_url, "ping-average-ip4", "now + 8s / 1s",
                                 registry)
            daemon.wait_log(r"accepted ping-\w+-ip4", count=2, timeout=60)
        # The supervisor is gone while both measurements are still running.
        daemon.wait_log(r"supervisor unreachable", timeout=30)
        daemon.wait_log(r"job \w+ \(ping-\w+-ip4-\d+\): \d+ result rows", count=2, timeout=30)
        assert len(list(daemon.spool_dir.glob("*.msg"))) >= 2
        assert not tap.posted("/register/result", 200) or all(
            "result" not in e.json() for e in tap.posted("/register/result", 200))
        time.sleep(2)  # a few failed delivery attempts while it is down
        with RISupervisor(venv, tmp_path / "second", **ports):
            wait_for(lambda: len([e for e in tap.posted("/register/result", 200)
                                  if "result" in e.json()]) >= 2, 60, "delivery")
            time.sleep(3)  # room for any duplicate to show up
            delivered = Counter(e.json()["token"] for e in tap.posted("/register/result", 200)
                                if "result" in e.json())
            assert len(delivered) == 2 and set(delivered.values()) == {1}, delivered
            rows = {e.json()["label"].rsplit("-", 1)[0]: e.json()["resultvalues"]
                    for e in tap.posted("/register/result", 200) if "result" in e.json()}
            assert len(rows["ping-detail-ip4"]) == 10
            assert rows["ping-average-ip4"][0][3] == "8"
            # The restarted supervisor knows the probe again: a new measurement works.
            reply = run_specification(venv, f"http://127.0.0.1:{client_port}",
                                      "ping-average-ip4", TARGET, when="now + 2s / 1s",
                                      registry_preload=registry)
            assert reply.get("result") == "measure", reply
        assert not list(daemon.spool_dir.glob("*.msg"))
        # While it was down the daemon kept trying to register again (results wait for that),
        # and it did register with the new supervisor before delivering.
        attempts = tap.posted("/register/capability")
        assert [e for e in attempts if e.status != 200], "no reconnection attempt while down"
        assert len([e for e in attempts if e.status == 200]) >= 2
