# SPDX-License-Identifier: Apache-2.0
"""The native traceroute: real probes over loopback and through routers in network namespaces.

The namespaces form a chain  probe -- r1 -- r2 -- target  with forwarding in r1 and r2, so a
trace from the probe namespace has three hops.
"""

import subprocess
import threading
from dataclasses import dataclass

import pytest

from probe_daemon.measurements.traceroute import TracerouteMeasurement
from tests.support.jobs import make_job
from tests.support.netns import in_ns, ip, namespaces, netns_required, run_job

DELAYS = ["delay.twoway.icmp.us.min", "delay.twoway.icmp.us.mean",
          "delay.twoway.icmp.us.max", "delay.twoway.icmp.count"]
TARGET = "probe_daemon.measurements.traceroute:TracerouteMeasurement"

RAW_UNAVAILABLE = TracerouteMeasurement().unavailable()
needs_raw = pytest.mark.skipif(RAW_UNAVAILABLE is not None, reason=str(RAW_UNAVAILABLE))
needs_netns = netns_required()


def answered(row, address):
    """A hop row from ``address`` with all three probes answered and sane delays."""
    low, mean, high = (int(row[c]) for c in DELAYS[:3])
    intermediate = row.get("intermediate.ip4", row.get("intermediate.ip6"))
    return (intermediate == address and str(row["delay.twoway.icmp.count"]) == "3"
            and 0 <= low <= mean <= high)


def silent(row, family):
    return (row[f"intermediate.{family}"] == "*" and row["delay.twoway.icmp.count"] == "0"
            and all(row[c] == "*" for c in DELAYS[:3]))


# --- without namespaces ---------------------------------------------------------------------

def test_capabilities():
    caps = {c.label: c for c in TracerouteMeasurement({"source_ip4": "10.0.0.1"}).capabilities()}
    assert {"traceroute-udp-ip4", "traceroute-icmp-ip4"} <= set(caps)
    assert set(caps) <= {"traceroute-udp-ip4", "traceroute-icmp-ip4",
                         "traceroute-udp-ip6", "traceroute-icmp-ip6"}
    for label, cap in caps.items():
        family = label[-3:]
        source = "10.0.0.1" if family == "ip4" else "*"
        assert dict(cap.parameters) == {f"destination.{family}": "*", f"source.{family}": source}
        assert list(cap.results) == ["hops.ip", f"intermediate.{family}", *DELAYS]
        assert cap.when == "now"


@pytest.mark.parametrize("options", [{"max_hops": "256"}, {"probes_per_hop": "0"},
                                     {"timeout_ms": "-1"}])
def test_bad_options(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        TracerouteMeasurement(options)


@needs_raw
@pytest.mark.parametrize(("label", "destination"), [
    ("traceroute-udp-ip4", "127.0.0.1"), ("traceroute-icmp-ip4", "127.0.0.1"),
    ("traceroute-udp-ip6", "::1"), ("traceroute-icmp-ip6", "::1")])
def test_loopback_is_one_hop(label, destination):
    family = label[-3:]
    rows = list(TracerouteMeasurement().run(
        make_job(label, "now + 30s", **{f"destination_{family}": destination})))
    assert len(rows) == 1  # a duration is accepted, and the trace still runs once
    assert rows[0]["hops.ip"] == 1
    assert rows[0][f"intermediate.{family}"] == destination
    assert rows[0]["delay.twoway.icmp.count"] == 3


@needs_raw
def test_stopped_before_it_starts():
    stop = threading.Event()
    stop.set()
    job = make_job("traceroute-icmp-ip4", stop=stop, destination_ip4="127.0.0.1")
    assert list(TracerouteMeasurement().run(job)) == []


# --- through routers in network namespaces --------------------------------------------------

@pytest.fixture
def netns():
    """Make namespaces with unique names; delete exactly those afterwards."""
    # Tentative link-local addresses keep routers from resolving neighbours for ~2 s.
    with namespaces("pft-trace", "net.ipv6.conf.default.accept_dad=0") as make:
        yield make


@dataclass
class Chain:
    probe: str
    r1: str
    r2: str
    target: str


# Link n (1: probe-r1, 2: r1-r2, 3: r2-target) is 10.201.n.0/24 and fd00:201:n::/64; the left
# end is .1 / ::1 except on the first link, where r1 is .1 and the probe .2.
ADDRESSES = {
    "ip4": {"r1": "10.201.1.1", "r2": "10.201.2.2", "target": "10.201.3.2",
            "unused": "10.201.3.77"},
    "ip6": {"r1": "fd00:201:1::1", "r2": "fd00:201:2::2", "target": "fd00:201:3::2",
            "unused": "fd00:201:3::77"},
}


def connect(left, right, left_if, right_if, n, left_host, right_host):
    subprocess.run(["ip", "link", "add", left_if, "netns", left, "type", "veth", "peer", "name",
                    right_if, "netns", right], check=True)
    for name, ifname, host in ((left, left_if, left_host), (right, right_if, right_host)):
        ip(name, "link", "set", ifname, "up")
        ip(name, "addr", "add", f"10.201.{n}.{host}/24", "dev", ifname)
        ip(name, "-6", "addr", "add", f"fd00:201:{n}::{host}/64", "dev", ifname, "nodad")


def route(name, n, host):
    ip(name, "route", "add", "default", "via", f"10.201.{n}.{host}")
    ip(name, "-6", "route", "add", "default", "via", f"fd00:201:{n}::{host}")


@pytest.fixture
def chain(netns):
    forwarding = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    c = Chain(probe=netns(), r1=netns(*forwarding), r2=netns(*forwarding), target=netns())
    connect(c.probe, c.r1, "p0", "r0", 1, 2, 1)
    connect(c.r1, c.r2, "r1", "s0", 2, 1, 2)
    connect(c.r2, c.target, "s1", "t0", 3, 1, 2)
    route(c.probe, 1, 1)
    route(c.r1, 2, 2)  # r2 routes link 1 back via r1, r1 everything else via r2
    route(c.r2, 2, 1)
    route(c.target, 3, 1)
    return c


def trace(name, label, destination, **extra):
    return run_job(name, TARGET, label, destination, **extra)


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
@pytest.mark.parametrize("family", ["ip4", "ip6"])
@pytest.mark.parametrize("mode", ["udp", "icmp"])
def test_routers_and_destination_appear(chain, mode, family):
    at = ADDRESSES[family]
    out = trace(chain.probe, f"traceroute-{mode}-{family}", at["target"])
    assert out["unavailable"] is None
    rows = out["rows"]
    assert [row["hops.ip"] for row in rows] == ["1", "2", "3"], out  # stops at the destination
    assert answered(rows[0], at["r1"]), rows[0]
    assert answered(rows[1], at["r2"]), rows[1]
    assert answered(rows[2], at["target"]), rows[2]


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_silent_hops_and_max_hops(chain):
    # r2 is still asking who has the address (3 s) when each probe's 200 ms are up.
    out = trace(chain.probe, "traceroute-icmp-ip4", ADDRESSES["ip4"]["unused"],
                options={"max_hops": "4", "probes_per_hop": "1", "timeout_ms": "200"})
    rows = out["rows"]
    assert [row["hops.ip"] for row in rows] == ["1", "2", "3", "4"], out
    assert rows[1]["intermediate.ip4"] == ADDRESSES["ip4"]["r2"]
    assert rows[1]["delay.twoway.icmp.count"] == "1"
    assert silent(rows[2], "ip4") and silent(rows[3], "ip4"), rows


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_unreachable_reported_by_a_router_ends_the_trace(chain, family):
    neighbours = "ipv4" if family == "ip4" else "ipv6"
    in_ns(chain.r2, "sysctl", "-qw", f"net.{neighbours}.neigh.s1.mcast_solicit=1",
          f"net.{neighbours}.neigh.s1.retrans_time_ms=100")
    out = trace(chain.probe, f"traceroute-udp-{family}", ADDRESSES[family]["unused"])
    rows = out["rows"]
    assert [row["hops.ip"] for row in rows] == ["1", "2", "3"], out
    assert answered(rows[2], ADDRESSES[family]["r2"]), rows[2]


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_stop_interrupts_a_waiting_trace(chain):
    out = trace(chain.probe, "traceroute-udp-ip4", ADDRESSES["ip4"]["unused"],
                options={"timeout_ms": "1000"}, stop_after=1.5)
    assert out["seconds"] < 2
    # Hops 1 and 2 answered at once; hop 3 was cut short and has no row.
    assert [row["hops.ip"] for row in out["rows"]] == ["1", "2"], out


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_no_route_is_an_error(netns):
    out = trace(netns(), "traceroute-udp-ip4", "192.168.201.1")
    assert out["error"] == "cannot trace 192.168.201.1: Network is unreachable"
