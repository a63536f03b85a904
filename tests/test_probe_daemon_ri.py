# SPDX-License-Identifier: Apache-2.0
"""The probe daemon against the real mPlane reference supervisor and client (mplane-sdk 0.9.0).

Over plain HTTP and over mutual TLS with the PKI's bundles and DN-based authorization: the
daemon registers, the RI client lists its capabilities, runs them and gets results.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki import Deployment, PKIState, sync
from rig.dns import running_dnsmasq
from rig.mplane_ri import (
    RISupervisor,
    TLSFiles,
    capabilities_by_token,
    default_cache_dir,
    free_port,
    list_capabilities,
    ri_venv,
    run_specification,
)
from tests.support.probe_daemon_proc import REPO, ProbeDaemon, registry_file
from tests.support.streaming import StreamingServer

pytestmark = [pytest.mark.slow, pytest.mark.mplane_ri]

PING = ("ping-average-ip4", "ping-detail-ip4", "ping-average-ip6", "ping-detail-ip6")
# Measurements whose modules are not part of this test's scope are switched off.
ONLY_PING = {name: {"enabled": "no"} for name in ("traceroute", "http", "dns", "ott", "tstat")}


def wait_listed(venv, url, labels, *, tls=None, registry=None, timeout=30.0) -> list[str]:
    """The supervisor adds registered capabilities asynchronously: poll until all are listed."""
    deadline = time.monotonic() + timeout
    while True:
        listed = list_capabilities(venv, url, tls=tls, registry_preload=registry)
        if set(labels) <= set(listed) or time.monotonic() > deadline:
            return listed
        time.sleep(0.5)


@pytest.fixture(scope="module")
def venv() -> Path:
    return ri_venv(default_cache_dir())


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    return registry_file(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def http_stack(venv, registry, tmp_path_factory) -> Iterator[tuple[RISupervisor, ProbeDaemon]]:
    work = tmp_path_factory.mktemp("daemon-http")
    with RISupervisor(venv, work, component_port=free_port(), client_port=free_port(),
                      registry_preload=registry) as supervisor, \
            ProbeDaemon(work, supervisor.component_url, sections=ONLY_PING) as daemon:
        daemon.wait_log("registered 4 capabilities")
        yield supervisor, daemon


def test_http_registration_and_listing(venv, registry, http_stack):
    supervisor, daemon = http_stack
    labels = wait_listed(venv, supervisor.client_url, PING, registry=registry)
    assert set(PING) <= set(labels)
    assert "TLS is off" in daemon.log()


def test_http_ping_average_and_detail(venv, registry, http_stack):
    supervisor, _ = http_stack
    reply = run_specification(venv, supervisor.client_url, "ping-average-ip4",
                              {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"},
                              when="now + 3s / 1s", registry_preload=registry)
    assert reply.get("result") == "measure", reply
    values = dict(zip(reply["results"], reply["resultvalues"][0], strict=True))
    assert values["delay.twoway.icmp.count"] == "3"
    assert 0 < int(values["delay.twoway.icmp.us.min"]) <= int(values["delay.twoway.icmp.us.max"])
    detail = run_specification(venv, supervisor.client_url, "ping-detail-ip6",
                               {"destination.ip6": "::1", "source.ip6": "::1"},
                               when="now + 2s / 1s", registry_preload=registry)
    assert detail.get("result") == "measure", detail
    assert len(detail["resultvalues"]) == 2


def test_http_measurement_that_cannot_run_returns_an_exception(venv, registry, http_stack):
    supervisor, daemon = http_stack
    reply = run_specification(venv, supervisor.client_url, "ping-average-ip4",
                              {"destination.ip4": "127.0.0.1", "source.ip4": "192.0.2.77"},
                              when="now + 2s / 1s", registry_preload=registry)
    assert "exception" in reply, reply
    assert "192.0.2.77 is not an address of this host" in reply["message"]
    assert daemon.process is not None and daemon.process.poll() is None


# -- mutual TLS ------------------------------------------------------------------------------

PASSPHRASE = b"probe-daemon-tls-test"


def pki_request() -> dict:
    hosts = [("supervisor", "supervisors"), ("probe-01", "probes"), ("operator", "clients"),
             ("guest", "guests")]
    return {
        "deployment": "daemon-test", "domains": ["daemon-test.internal"],
        "networks": ["127.0.0.0/8", "::1/128"],
        "group_profiles": {"supervisors": "supervisor", "probes": "probe", "clients": "client",
                           "guests": "client"},
        "mplane_roles": {"operators": ["clients"]},
        "authorizations": {"ping-": ["operators"]},
        "hosts": [{"name": n, "groups": [g], "address": "127.0.0.1"} for n, g in hosts],
    }


@pytest.fixture(scope="module")
def tls_stack(venv, registry, tmp_path_factory):
    work = tmp_path_factory.mktemp("daemon-tls")
    state = PKIState(work / "pki")
    sync(state, Deployment.from_request(pki_request()), PASSPHRASE)
    bundle = state.hosts_dir / "probe-01"
    with RISupervisor(venv, work, component_port=free_port(), client_port=free_port(),
                      tls=TLSFiles.from_pki_bundle(state.hosts_dir / "supervisor"),
                      authz_ini=state.authz_path.read_text(),
                      registry_preload=registry) as supervisor, \
            ProbeDaemon(work, supervisor.component_url, ca_file=bundle / "chain.pem",
                        cert_file=bundle / "cert.pem", key_file=bundle / "key.pem",
                        sections=ONLY_PING) as daemon:
        daemon.wait_log("registered 4 capabilities")
        yield state, supervisor, daemon


def test_tls_authorized_operator_runs_ping(venv, registry, tls_stack):
    state, supervisor, daemon = tls_stack
    operator = TLSFiles.from_pki_bundle(state.hosts_dir / "operator")
    labels = wait_listed(venv, supervisor.client_url, PING, tls=operator, registry=registry)
    assert sorted(labels) == sorted(PING)
    reply = run_specification(venv, supervisor.client_url, "ping-average-ip4",
                              {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"},
                              tls=operator, when="now + 2s / 1s", registry_preload=registry)
    assert reply.get("result") == "measure", reply
    assert "TLS is off" not in daemon.log()


def test_tls_unauthorized_guest_is_refused(venv, registry, tls_stack):
    state, supervisor, _ = tls_stack
    guest = TLSFiles.from_pki_bundle(state.hosts_dir / "guest")
    assert list_capabilities(venv, supervisor.client_url, tls=guest,
                             registry_preload=registry) == []


def test_registry_lists_every_declared_element(registry):
    data = json.loads(registry.read_text())
    assert data["registry-format"] == "mplane-0"
    assert data["includes"] == ["http://ict-mplane.eu/registry/core"]


# -- every capability, through the RI ---------------------------------------------------------

RECORDS = ["--host-record=probe.rig.test,127.0.0.1", "--local=/rig.test/",
           "--ptr-record=1.0.0.127.in-addr.arpa,localhost.rig.test"]


@pytest.fixture(scope="module")
def full_stack(venv, registry, tmp_path_factory):
    """The daemon with every measurement on, and something real for each to measure."""
    work = tmp_path_factory.mktemp("daemon-full")
    # Tstat itself comes with the tstat role (a later issue): a stand-in executable lets the
    # daemon offer Tstat control; everything it does is real edits of a real runtime.conf.
    fake_tstat = work / "bin" / "tstat"
    fake_tstat.parent.mkdir()
    fake_tstat.write_text("#!/bin/sh\nexit 0\n")
    fake_tstat.chmod(0o755)
    runtime_conf = work / "runtime.conf"
    shutil.copy(REPO / "tests" / "fixtures" / "tstat" / "runtime.conf", runtime_conf)
    (work / "tstat-logs").mkdir()
    with StreamingServer() as media, \
            running_dnsmasq(lambda port: RECORDS, "probe.rig.test") as dns_server, \
            RISupervisor(venv, work, component_port=free_port(), client_port=free_port(),
                         registry_preload=registry) as supervisor, \
            ProbeDaemon(work, supervisor.component_url, sections={
                "dns": {"server": f"127.0.0.1#{dns_server.port}"},
                "ott": {"playout_s": "6", "time_scale": "4"},
                "tstat": {"binary": str(fake_tstat), "runtime_conf": str(runtime_conf),
                          "log_dir": str(work / "tstat-logs"),
                          "state_file": str(work / "tstat-state.json")},
            }) as daemon:
        daemon.wait_log(r"registered \d+ capabilities")
        yield media, supervisor, runtime_conf


FULL = {
    "traceroute-icmp-ip4": ({"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"}, "now"),
    "traceroute-udp-ip4": ({"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"}, "now"),
    "dns-lookup": ({"dns.name": "probe.rig.test", "dns.type": "A", "dns.server": "default"},
                   "now"),
    "dns-reverse-ip4": ({"destination.ip4": "127.0.0.1"}, "now"),
    "http-download": ({"destination.url": "MEDIA/hls/v400000/seg0.ts"}, "now + 10s / 10s"),
    "ott-download": ({"content.url": "MEDIA/hls/master.m3u8", "source.ip4": "127.0.0.1"},
                     "now + 10s / 10s"),
    "tstat-log_tcp_complete-core": ({"observer.interface": "eth0"}, "now + 2s"),
}


def test_every_capability_runs_through_the_supervisor(venv, registry, full_stack):
    media, supervisor, runtime_conf = full_stack
    original = runtime_conf.read_text()
    listed = wait_listed(venv, supervisor.client_url, [*PING, *FULL], registry=registry)
    assert set(FULL) | set(PING) <= set(listed)
    rows = {}
    for label, (params, when) in FULL.items():
        params = {k: v.replace("MEDIA", media.url("")) for k, v in params.items()}
        reply = run_specification(venv, supervisor.client_url, label, params, when=when,
                                  timeout=60, registry_preload=registry)
        assert reply.get("result") == "measure", (label, reply)
        rows[label] = [dict(zip(reply["results"], row, strict=True))
                       for row in reply["resultvalues"]]
    assert rows["traceroute-icmp-ip4"][0]["intermediate.ip4"] == "127.0.0.1"
    assert rows["traceroute-udp-ip4"][0]["intermediate.ip4"] == "127.0.0.1"
    assert rows["dns-lookup"][0]["dns.record-value"] == "127.0.0.1"
    assert rows["dns-reverse-ip4"][0]["dns.record-value"] == "localhost.rig.test"
    assert rows["http-download"][0]["http.code"] == "200"
    assert int(rows["http-download"][0]["octets.layer7"]) > 0
    ott = rows["ott-download"][0]
    assert ott["http.code.max"] == "200" and int(ott["qos.aggregate"]) > 50
    assert rows["tstat-log_tcp_complete-core"][0]["tstat.log.class"] == "log_tcp_complete"
    # The window is over: Tstat's configuration is back as it was.
    assert runtime_conf.read_text() == original


# -- two probes with the same measurements ----------------------------------------------------


def test_two_probes_each_run_their_own_specifications(venv, registry, tmp_path):
    """Each probe names itself in source.device, which keeps its capabilities apart at the
    RI supervisor (one per token) and, with the shim's routing fix, sends each specification
    to the probe whose capability it was made from (RI 0.9.0 matched by schema alone)."""
    request = pki_request()
    request["hosts"].append({"name": "probe-02", "groups": ["probes"], "address": "127.0.0.1"})
    state = PKIState(tmp_path / "pki")
    sync(state, Deployment.from_request(request), PASSPHRASE)
    operator = TLSFiles.from_pki_bundle(state.hosts_dir / "operator")

    def probe(name: str) -> ProbeDaemon:
        bundle = state.hosts_dir / name
        return ProbeDaemon(tmp_path, supervisor.component_url, name=name, sections=ONLY_PING,
                           ca_file=bundle / "chain.pem", cert_file=bundle / "cert.pem",
                           key_file=bundle / "key.pem", settings={"device": name})

    with RISupervisor(venv, tmp_path, component_port=free_port(), client_port=free_port(),
                      tls=TLSFiles.from_pki_bundle(state.hosts_dir / "supervisor"),
                      authz_ini=state.authz_path.read_text(),
                      registry_preload=registry) as supervisor, \
            probe("probe-01") as first, probe("probe-02") as second:
        first.wait_log(r"registered \d+ capabilities")
        second.wait_log(r"registered \d+ capabilities")
        deadline = time.monotonic() + 30
        while True:
            by_token = capabilities_by_token(venv, supervisor.client_url, tls=operator,
                                             registry_preload=registry)
            ping = {cap["metadata"]["source.device"]: token for token, cap in by_token.items()
                    if cap["label"] == "ping-average-ip4"}
            if len(ping) == 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert set(ping) == {"probe-01", "probe-02"}
        # Before the fix, whichever registered first got both specifications.
        for device, daemon in (("probe-02", second), ("probe-01", first)):
            reply = run_specification(venv, supervisor.client_url, ping[device],
                                      {"destination.ip4": "127.0.0.1",
                                       "source.ip4": "127.0.0.1"},
                                      tls=operator, when="now + 1s / 1s", timeout=60,
                                      registry_preload=registry)
            assert reply.get("result") == "measure", reply
            assert "accepted ping-average-ip4" in daemon.log()
        assert first.log().count("accepted ping-average-ip4") == 1
        assert second.log().count("accepted ping-average-ip4") == 1
