# SPDX-License-Identifier: Apache-2.0
"""Through the supervisor, with the RI client and the operator's identity: the probe is
registered, its capabilities are visible, and every one of them returns a result.

What the measurements measure is the rig's own: the supervisor host (ping, traceroute), a
streaming server the suite starts (HTTP download, OTT), the rig's DNS server (its names).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil_tests.targets import FEATURE_FIXES
from rig.testbed import HOST_FROM_GUEST
from tests.support.streaming import StreamingServer

pytestmark = [pytest.mark.slow, pytest.mark.mips, pytest.mark.mplane_ri]

# What each capability is run with: parameters, temporal scope. MEDIA is the streaming
# server's base URL as the probe reaches it, HOST the supervisor host, SELF the probe.
RECIPES: dict[str, tuple[dict[str, str], str]] = {
    "ping-average-ip4": ({"destination.ip4": "HOST", "source.ip4": "SELF"}, "now + 3s / 1s"),
    "ping-detail-ip4": ({"destination.ip4": "HOST", "source.ip4": "SELF"}, "now + 3s / 1s"),
    "traceroute-icmp-ip4": ({"destination.ip4": "HOST", "source.ip4": "SELF"}, "now"),
    "traceroute-udp-ip4": ({"destination.ip4": "HOST", "source.ip4": "SELF"}, "now"),
    "dns-lookup": ({"dns.name": "NAME", "dns.type": "A", "dns.server": "default"}, "now"),
    "dns-reverse-ip4": ({"destination.ip4": "HOST"}, "now"),
    "http-download": ({"destination.url": "MEDIA/hls/v400000/seg0.ts"}, "now + 10s / 10s"),
    "ott-download": ({"content.url": "MEDIA/hls/master.m3u8", "source.ip4": "SELF"},
                     "now + 10s / 10s"),
    "tstat-log_tcp_complete-core": ({"observer.interface": "eth0"}, "now + 2s"),
}
# Offered only where the probe has IPv6 towards something the suite controls (QEMU's user
# network gives the emulated board none) or Tstat in its firmware.
CONDITIONAL = {"ping-average-ip6", "ping-detail-ip6", "traceroute-icmp-ip6",
               "traceroute-udp-ip6", "dns-reverse-ip6"}


@pytest.fixture(scope="module")
def media() -> Iterator[StreamingServer]:
    with StreamingServer() as server:
        yield server


def _params(label: str, target, hil_env, media: StreamingServer) -> dict[str, str]:
    params, _ = RECIPES[label]
    host = target.supervisor_ip4 or HOST_FROM_GUEST
    plan_domain = hil_env.testbed.plan.dns_domain if hil_env.testbed else None
    supervisor = hil_env.testbed.plan.supervisor if hil_env.testbed else None
    values = {"HOST": host, "SELF": target.source_ip4,
              "MEDIA": f"http://{host}:{media.port}",
              "NAME": f"{supervisor}.{plan_domain}"}
    out = {}
    for name, value in params.items():
        for placeholder, replacement in values.items():
            value = value.replace(placeholder, replacement)
        out[name] = value
    return out


def test_registered_with_its_capabilities_visible(target, hil_env):
    labels = set(hil_env.wait_capabilities(target, {"ping-average-ip4"}))
    expected = set(RECIPES) - ({"tstat-log_tcp_complete-core"} if "tstat" not in
                               target.features else set())
    assert expected <= labels, sorted(expected - labels)
    unknown = labels - set(RECIPES) - CONDITIONAL - {lbl for lbl in labels
                                                      if lbl.startswith("tstat-")}
    assert not unknown, f"capabilities without a HIL recipe: {sorted(unknown)}"


@pytest.mark.parametrize("label", sorted(RECIPES))
def test_capability_returns_a_result(target, hil_env, media, label):
    if label.startswith("tstat-") and "tstat" not in target.features:
        pytest.skip(f"{target.name} lacks tstat: {FEATURE_FIXES['tstat']}")
    if hil_env.testbed is None and label.startswith(("dns-", "http-", "ott-")):
        pytest.skip("needs the rig's DNS and streaming servers (run without --hil-inventory)")
    tokens = hil_env.wait_capabilities(target, {label}, timeout=60)
    assert label in tokens, f"{target.name} does not offer {label}"
    _, when = RECIPES[label]
    reply = hil_env.run(tokens[label], _params(label, target, hil_env, media), when)
    assert reply.get("result") == "measure", reply
    rows = [dict(zip(reply["results"], row, strict=True)) for row in reply["resultvalues"]]
    assert rows, reply
    first = rows[0]
    if label == "ping-average-ip4":
        assert int(first["delay.twoway.icmp.count"]) >= 1
    elif label.startswith("traceroute-"):
        assert first["intermediate.ip4"] == (target.supervisor_ip4 or HOST_FROM_GUEST)
    elif label == "dns-lookup":
        assert first["dns.record-value"] == (target.supervisor_ip4 or HOST_FROM_GUEST)
    elif label == "dns-reverse-ip4":
        assert first["dns.record-value"].startswith(hil_env.testbed.plan.supervisor + ".")
    elif label == "http-download":
        assert first["http.code"] == "200" and int(first["octets.layer7"]) > 0
    elif label == "ott-download":
        assert first["http.code.max"] == "200" and int(first["qos.aggregate"]) > 0
    elif label == "tstat-log_tcp_complete-core":
        # Switched on in Tstat's runtime.conf for the window, output where Tstat writes it.
        assert first["tstat.log.class"] == "log_tcp_complete", first
        assert first["tstat.log.path"] == "/var/log/tstat", first
