# SPDX-License-Identifier: Apache-2.0
"""The virtual appliance as a HIL target: the emulated rig's supervisor (booted by the rig from
the images playbooks/appliance.yml built, with its seed disk) or a test plant's appliance.

Its services run with the host's identity; its supervisor answers the operator over mutual TLS
and refuses a client without a certificate; its own probe daemon is registered and measures
through it; the GLIMPSE console is registered when the image has it. Tstat inside the
appliance is proven by tests/test_appliance_tstat.py where its source is in the cache.
"""

from __future__ import annotations

import ssl
import time

import pytest

from rig.mplane_ri import capabilities_by_token, result_row, run_specification
from rig.testbed import device_of
from tests.support.appliance import https_get

pytestmark = [pytest.mark.slow, pytest.mark.appliance]

UNITS = ("probeforge-seed.service", "mplane-supervisor.service", "probe-daemon.service",
         "ssh.service", "systemd-timesyncd.service", "cockpit.socket")


def _get(appliance, hil_env, *, with_certificate: bool) -> tuple[int, str]:
    """``GET /capability`` on the appliance's client port: as the operator, or with no
    client certificate at all."""
    bundle = hil_env.operator.key.parent  # the bundle's plain PEM forms beside the RI's
    return https_get(appliance.client_address, appliance.client_port, "/capability",
                     ca=hil_env.operator.ca_chain,
                     cert=(bundle / "cert.pem", bundle / "key.pem") if with_certificate
                     else None)


def _appliance_capabilities(hil_env, appliance) -> dict[str, dict]:
    url = f"https://{appliance.client_address}:{appliance.client_port}"
    every = capabilities_by_token(hil_env.venv, url, tls=hil_env.operator,
                                  registry_preload=hil_env.registry)
    return {token: cap for token, cap in every.items() if device_of(cap) == appliance.name}


def test_services_run_with_the_hosts_identity(appliance):
    deadline = time.monotonic() + 240
    while True:
        states = appliance.ssh.run("systemctl is-active " + " ".join(UNITS),
                                   check=False).stdout.split()
        if states == ["active"] * len(UNITS):
            break
        assert time.monotonic() < deadline, (
            f"{dict(zip(UNITS, states, strict=False))}\n"
            + appliance.ssh.run("journalctl -b --no-pager -n 60", check=False).stdout)
        time.sleep(3)
    assert appliance.ssh.run("hostname").stdout.strip() == appliance.name
    # Generalised image, identity from the seed: a machine-id and host keys of its own.
    assert appliance.ssh.run("test -s /etc/machine-id && test -s /etc/ssh/ssh_host_ed25519_key"
                             " && cat /var/lib/probeforge/seed.done").stdout.startswith("host ")
    modes = appliance.ssh.run("stat -c '%a %U' /etc/mplane/certs/probe.key "
                              "/etc/mplane/certs/supervisor.key").stdout.split("\n")
    assert modes[:2] == ["600 root", "600 root"], modes


def test_supervisor_answers_the_operator_over_mutual_tls_only(hil_env, appliance):
    status, body = _get(appliance, hil_env, with_certificate=True)
    assert status == 200, body[:500]
    # No client certificate: the handshake is refused, no capability leaks.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(appliance, hil_env, with_certificate=False)


def test_own_probe_daemon_registered_and_measures(hil_env, appliance):
    deadline = time.monotonic() + 180
    while True:
        labels = {cap["label"]: token
                  for token, cap in _appliance_capabilities(hil_env, appliance).items()}
        if "ping-average-ip4" in labels or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert "ping-average-ip4" in labels, (
        f"{appliance.name}'s probe daemon did not register: {sorted(labels)}\n"
        + appliance.ssh.run("journalctl -b --no-pager -n 40 -u probe-daemon",
                            check=False).stdout)
    # The daemon pings its own host's loopback: from the operator, through the appliance's
    # supervisor, back as a result.
    source = appliance.ssh.run("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/"
                               "\\1/p'", check=False).stdout.strip() or "127.0.0.1"
    url = f"https://{appliance.client_address}:{appliance.client_port}"
    reply = run_specification(hil_env.venv, url, labels["ping-average-ip4"],
                              {"destination.ip4": "127.0.0.1", "source.ip4": source},
                              tls=hil_env.operator, when="now + 2s / 1s",
                              registry_preload=hil_env.registry, timeout=120)
    row = result_row(reply)
    assert int(row["delay.twoway.icmp.count"]) > 0, row


@pytest.mark.feature("glimpse_console")
def test_glimpse_console_registered(hil_env, appliance):
    deadline = time.monotonic() + 180
    while True:
        every = capabilities_by_token(
            hil_env.venv, f"https://{appliance.client_address}:{appliance.client_port}",
            tls=hil_env.operator, registry_preload=hil_env.registry)
        labels = {cap["label"] for cap in every.values()}
        if "glimpse-ping" in labels or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert "glimpse-ping" in labels, (
        sorted(labels), appliance.ssh.run("journalctl -b --no-pager -n 40 -u "
                                          "glimpse-console", check=False).stdout)
