# SPDX-License-Identifier: Apache-2.0
"""A supervisor outage: a result made while the supervisor is away is kept on the probe and
delivered, once, when a supervisor is back. Only where the suite may stop the supervisor."""

from __future__ import annotations

import contextlib
import re
import threading
import time

import pytest

from rig.mplane_ri import RIError
from rig.testbed import HOST_FROM_GUEST

pytestmark = [pytest.mark.slow, pytest.mark.mips, pytest.mark.mplane_ri,
              pytest.mark.feature("supervisor-control")]


def _log(target) -> str:
    return target.ssh.run("logread 2>/dev/null | grep probe-daemon || true").stdout


def _wait(predicate, timeout: float, what: str, target) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, \
            f"{what} within {timeout:.0f} s:\n{_log(target)[-3000:]}"
        time.sleep(2)


def test_result_made_during_an_outage_is_delivered_once(target, hil_env):
    testbed = hil_env.testbed
    token = hil_env.wait_capabilities(target, {"ping-detail-ip4"})["ping-detail-ip4"]
    delivered_before = _log(target).count("delivered message")
    params = {"destination.ip4": target.supervisor_ip4 or HOST_FROM_GUEST,
              "source.ip4": target.source_ip4}

    def submit() -> None:
        # The client's wait for the result dies with the supervisor: that is the point.
        with contextlib.suppress(RIError):
            hil_env.run(token, params, "now + 20s / 1s", timeout=60)

    accepted = re.compile(r"accepted ping-detail-ip4-\d+ \(token (\w+)")
    seen = set(accepted.findall(_log(target)))
    client = threading.Thread(target=submit, daemon=True)
    client.start()
    new: list[str] = []

    def taken() -> bool:
        new[:] = [t for t in accepted.findall(_log(target)) if t not in seen]
        return bool(new)

    _wait(taken, 60, "the probe took no specification", target)
    testbed.stop_supervisor()
    try:
        _wait(lambda: f"job {new[0]} (" in _log(target), 90, "the measurement did not end",
              target)
        spooled = target.ssh.run("ls /var/lib/probe-daemon/spool").stdout.split()
        assert spooled, "the result should wait in the spool while the supervisor is away"
    finally:
        testbed.start_supervisor()
    _wait(lambda: not target.ssh.run("ls /var/lib/probe-daemon/spool").stdout.split(), 120,
          "the spool did not empty after the supervisor came back", target)
    log = _log(target)
    delivered = [line.split("delivered message ")[1] for line in log.split("\n")
                 if "delivered message " in line]
    assert len(delivered) > delivered_before
    assert len(delivered) == len(set(delivered)), "a message was delivered twice"
    # The probe is back in business: registered with the new supervisor.
    assert "ping-detail-ip4" in hil_env.wait_capabilities(target, {"ping-detail-ip4"})
