# SPDX-License-Identifier: Apache-2.0
"""The native ping measurement: real echo requests over loopback and in network namespaces."""

import array
import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from probe_daemon.measurements.base import MeasurementError
from probe_daemon.measurements.ping import (
    IP4,
    IP6,
    PingMeasurement,
    echo_request,
    internet_checksum,
)
from tests.support.jobs import make_job
from tests.support.netns import in_ns, namespaces, netns_required, run_job

AVERAGE = ["delay.twoway.icmp.us.min", "delay.twoway.icmp.us.mean",
           "delay.twoway.icmp.us.max", "delay.twoway.icmp.count"]
TARGET = "probe_daemon.measurements.ping:PingMeasurement"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

ICMP_UNAVAILABLE = PingMeasurement().unavailable()
needs_icmp = pytest.mark.skipif(ICMP_UNAVAILABLE is not None, reason=str(ICMP_UNAVAILABLE))
needs_netns = netns_required("setpriv")


def rtt_columns_consistent(row):
    low, mean, high = (row[c] for c in AVERAGE[:3])
    return all(isinstance(v, int) and v >= 0 for v in (low, mean, high)) and low <= mean <= high


# --- checksum -------------------------------------------------------------------------------

def reference_checksum(data: bytes) -> int:
    """An independent implementation: native 16-bit words, swapped on little-endian hosts."""
    words = array.array("H", data + b"\0" * (len(data) % 2))
    if sys.byteorder == "little":
        words.byteswap()
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize(("hex_data", "expected"), [
    ("0001f203f4f5f6f7", 0x220D),  # RFC 1071, section 3
    ("450000730000400040110000c0a80001c0a800c7", 0xB861),  # IPv4 header (Wikipedia)
    ("080000001234000161626364", 0x2104),  # echo request id 0x1234 seq 1 "abcd", by hand
    ("", 0xFFFF),
    ("01", 0xFEFF),  # odd length: padded with a zero byte at the end, not the start
    ("ffffffff", 0x0000),  # carries folded back in
    ("ffff0001", 0xFFFE),
])
def test_checksum_known_vectors(hex_data, expected):
    assert internet_checksum(bytes.fromhex(hex_data)) == expected


def test_checksum_matches_a_byte_order_independent_reference():
    rng = random.Random(1071)
    for length in range(0, 300, 7):
        data = rng.randbytes(length)
        assert internet_checksum(data) == reference_checksum(data), length


def test_echo_request_bytes_and_self_check():
    packet = echo_request(IP4, 0x1234, 1, b"abcd")
    assert packet == bytes.fromhex("08002104123400016162" "6364")
    assert internet_checksum(packet) == 0  # a packet with its checksum sums to zero
    # ICMPv6 checksums cover the addresses: the kernel fills them in.
    assert echo_request(IP6, 0x1234, 1, b"abcd") == bytes.fromhex("80000000123400016162" "6364")


# --- capabilities ---------------------------------------------------------------------------

def test_capabilities_are_the_ri_ping_components():
    caps = {c.label: c for c in PingMeasurement({"source_ip4": "127.0.0.1"}).capabilities()}
    assert set(caps) <= {"ping-average-ip4", "ping-detail-ip4",
                         "ping-average-ip6", "ping-detail-ip6"}
    # As in the RI's registration (mplane-wire capture 01): same labels, elements, order, when.
    average, detail = caps["ping-average-ip4"], caps["ping-detail-ip4"]
    assert dict(average.parameters) == {"destination.ip4": "*", "source.ip4": "127.0.0.1"}
    assert list(average.results) == AVERAGE
    assert list(detail.results) == ["time", "delay.twoway.icmp.us"]
    assert average.when == detail.when == "now ... future / 1s"
    assert average.registry == "http://ict-mplane.eu/registry/core"
    if "ping-average-ip6" in caps:
        assert dict(caps["ping-detail-ip6"].parameters) == {"destination.ip6": "*",
                                                            "source.ip6": "*"}
        assert list(caps["ping-average-ip6"].results) == AVERAGE


def test_bad_options_and_parameters():
    with pytest.raises(ValueError, match="timeout_ms"):
        PingMeasurement({"timeout_ms": "soon"})
    ping = PingMeasurement()
    with pytest.raises(MeasurementError, match=r"destination.ip4: '::1' is not an IPv4"):
        list(ping.run(make_job("ping-average-ip4", "now", destination_ip4="::1")))
    with pytest.raises(MeasurementError, match="no capability"):
        list(ping.run(make_job("ping-sideways-ip4", "now", destination_ip4="127.0.0.1")))


# --- real echoes over loopback --------------------------------------------------------------

@needs_icmp
def test_average_ip4_one_echo_per_tick():
    rows = list(PingMeasurement().run(make_job(
        "ping-average-ip4", "now + 3s / 1s", destination_ip4="127.0.0.1",
        source_ip4="127.0.0.1")))
    assert len(rows) == 1
    assert rows[0]["delay.twoway.icmp.count"] == 3
    assert rtt_columns_consistent(rows[0])


@needs_icmp
def test_detail_ip6_rows_per_reply_with_their_time():
    began = datetime.now(UTC)
    rows = list(PingMeasurement().run(make_job("ping-detail-ip6", "now + 2s / 1s",
                                               destination_ip6="::1")))
    assert len(rows) == 2
    times = [row["time"] for row in rows]
    assert began <= times[0] < times[1] <= datetime.now(UTC)
    assert timedelta(seconds=0.5) < times[1] - times[0] < timedelta(seconds=1.5)
    assert all(isinstance(r["delay.twoway.icmp.us"], int) and r["delay.twoway.icmp.us"] >= 0
               for r in rows)


@needs_icmp
def test_stop_ends_open_ended_jobs_and_concurrent_jobs_keep_their_replies():
    stop = threading.Event()
    results: dict[str, list] = {}

    def run(label):
        results[label] = list(PingMeasurement().run(make_job(
            label, "now ... future / 1s", stop=stop, destination_ip4="127.0.0.1")))

    threads = [threading.Thread(target=run, args=(label,))
               for label in ("ping-detail-ip4", "ping-average-ip4")]
    for thread in threads:
        thread.start()
    time.sleep(1.3)
    stop.set()
    stopped = time.monotonic()
    for thread in threads:
        thread.join(timeout=2)
    assert time.monotonic() - stopped < 0.5
    # Both raw sockets saw all four replies; each counted only its own two.
    assert len(results["ping-detail-ip4"]) == 2
    assert [r["delay.twoway.icmp.count"] for r in results["ping-average-ip4"]] == [2]


@needs_icmp
def test_source_address_not_of_this_host():
    job = make_job("ping-average-ip4", "now", destination_ip4="127.0.0.1",
                   source_ip4="192.0.2.1")  # bind fails: nothing is sent
    with pytest.raises(MeasurementError, match=r"192\.0\.2\.1 is not an address of this host"):
        list(PingMeasurement().run(job))


# --- network namespaces ---------------------------------------------------------------------

@pytest.fixture
def netns():
    """Make namespaces with unique names; delete exactly those afterwards."""
    with namespaces("pft-ping") as make:
        yield make


def lab(netns, *sysctls):
    """A namespace whose link 10.231.0.0/24 has nobody else on it; neighbours fail fast."""
    name = netns(*sysctls)
    in_ns(name, "ip", "link", "add", "pf0", "type", "veth", "peer", "name", "pf1")
    for command in (["ip", "link", "set", "pf0", "up"], ["ip", "link", "set", "pf1", "up"],
                    ["ip", "addr", "add", "10.231.0.1/24", "dev", "pf0"],
                    ["ip", "-6", "addr", "add", "fd00:231::1/64", "dev", "pf0", "nodad"],
                    ["sysctl", "-qw", "net.ipv4.neigh.pf0.mcast_solicit=1",
                     "net.ipv4.neigh.pf0.retrans_time_ms=100",
                     "net.ipv6.neigh.pf0.mcast_solicit=1",
                     "net.ipv6.neigh.pf0.retrans_time_ms=100"]):
        in_ns(name, *command)
    return name


def run_in(name, label, destination, when="now", user=None, **extra):
    return run_job(name, TARGET, label, destination, when, user, **extra)


ALLOW_PING_SOCKETS = "net.ipv4.ping_group_range=0 2147483647"

@pytest.mark.netns
@pytest.mark.slow
@needs_netns
@pytest.mark.parametrize("user", [None, NOBODY], ids=["raw-socket", "ping-socket"])
@pytest.mark.parametrize(("label", "destination", "reasons"), [
    ("ping-average-ip4", "10.231.0.99", ("host unreachable", "No route to host")),
    ("ping-detail-ip6", "fd00:231::99", ("address unreachable", "No route to host")),
    ("ping-average-ip4", "192.168.231.1", ("Network is unreachable",)),
    ("ping-detail-ip6", "fd00:231:99::1", ("Network is unreachable",)),
], ids=["ip4-no-neighbour", "ip6-no-neighbour", "ip4-no-route", "ip6-no-route"])
def test_unreachable_is_an_error_with_the_reason(netns, user, label, destination, reasons):
    name = lab(netns, ALLOW_PING_SOCKETS)
    out = run_in(name, label, destination, "now + 3s / 1s", user=user)
    assert out["error"].startswith(f"cannot ping {destination}: "), out
    assert any(reason in out["error"] for reason in reasons), out
    assert out["seconds"] < 1.5  # the first error ends it, no waiting for the scope's end


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_unprivileged_ping_sockets(netns):
    allowed = netns(ALLOW_PING_SOCKETS)
    out = run_in(allowed, "ping-average-ip4", "127.0.0.1", user=NOBODY)
    assert out["unavailable"] is None
    assert out["rows"][0]["delay.twoway.icmp.count"] == "1", out
    out = run_in(allowed, "ping-detail-ip6", "::1", user=NOBODY)
    assert len(out["rows"]) == 1, out

    refused = netns("net.ipv4.ping_group_range=1 0")
    out = run_in(refused, "ping-average-ip4", "127.0.0.1", user=NOBODY)
    assert "ping_group_range" in out["unavailable"] and "CAP_NET_RAW" in out["unavailable"]
    assert "ping_group_range" in out["error"]


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_silence_is_no_reply_and_stop_cuts_the_wait(netns):
    name = netns("net.ipv4.icmp_echo_ignore_all=1")
    out = run_in(name, "ping-average-ip4", "127.0.0.1", options={"timeout_ms": "300"})
    assert out["error"] == "no reply from 127.0.0.1"
    assert 0.25 < out["seconds"] < 1
    # Waiting up to 5 s for a reply that never comes; the interrupt ends it at once.
    out = run_in(name, "ping-detail-ip4", "127.0.0.1", "now ... future / 1s",
                 options={"timeout_ms": "5000"}, stop_after=0.5)
    assert out["error"] == "no reply from 127.0.0.1"
    assert out["seconds"] < 1
