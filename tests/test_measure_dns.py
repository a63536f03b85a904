# SPDX-License-Identifier: Apache-2.0
"""DNS measurements against a real dnsmasq on loopback, and the wire client on crafted packets."""

import ipaddress
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe_daemon.measurements import dns
from probe_daemon.measurements.base import MeasurementError
from probe_daemon.measurements.dns import (
    ELEMENTS,
    DnsMeasurement,
    DnsWireError,
    Server,
    answers_query,
    build_query,
    encode_name,
    labels_of,
    name_text,
    parse_response,
    query,
    read_name,
)
from probe_daemon.model import REGISTRY_CORE
from rig.dns import DNSMASQ, running_dnsmasq
from tests.support.imports import imported_roots
from tests.support.jobs import make_job

needs_dnsmasq = pytest.mark.skipif(
    DNSMASQ is None, reason="no dnsmasq binary (Debian: dnsmasq-base)")

BIG_TXT = ["a" * 200, "b" * 200, "c" * 200, "d" * 200]  # > 512 bytes, < 1232 bytes


def rr_hex(*parts: bytes) -> str:
    return b"".join(parts).hex()


def dnsmasq_records(port: int) -> list[str]:
    soa = rr_hex(encode_name("ns1.zone.test"), encode_name("hostmaster.zone.test"),
                 struct.pack("!IIIII", 2024010101, 3600, 600, 86400, 300))
    return [
        "--local-ttl=300",
        "--host-record=host.test,192.0.2.10,2001:db8::10",
        "--host-record=short.test,192.0.2.20,42",
        "--address=/wild.test/192.0.2.30",
        "--cname=alias.test,host.test",
        "--mx-host=mx.test,mail.test,10", "--mx-host=mx.test,backup.test,20",
        "--txt-record=txt.test,hello world,second",  # no shell: no quotes
        *(f"--txt-record=big.test,{text}" for text in BIG_TXT),
        "--ptr-record=5.2.0.192.in-addr.arpa,five.test",
        f"--dns-rr=zone.test,2,{rr_hex(encode_name('ns1.zone.test'))}",
        f"--dns-rr=zone.test,6,{soa}",
        # Unknown names under these are NXDOMAIN; anything else is REFUSED (no upstream).
        "--local=/test/", "--local=/2.0.192.in-addr.arpa/",
    ]


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[Server]:
    if DNSMASQ is None:
        pytest.skip("no dnsmasq binary (Debian: dnsmasq-base)")
    with running_dnsmasq(dnsmasq_records, "host.test") as server:
        yield server


def run(server: Server, label: str = "dns-lookup", options: dict[str, str] | None = None,
        **parameters: str) -> list[dict]:
    measurement = DnsMeasurement({"server": str(server), **(options or {})})
    return [dict(row) for row in measurement.run(make_job(label, **parameters))]


def lookup(server: Server, name: str, rtype: str, **options: str) -> list[dict]:
    return run(server, options=options, **{"dns.name": name, "dns.type": rtype,
                                           "dns.server": str(server)})


def values(rows: list[dict]) -> list[tuple]:
    return [(r["dns.record-name"], r["dns.record-type"], r["dns.record-value"], r["ttl"])
            for r in rows]


# --- capabilities and options ---------------------------------------------------------------


def test_capabilities_and_elements():
    caps = {c.label: c for c in DnsMeasurement({}).capabilities()}
    assert set(caps) == {"dns-lookup", "dns-reverse-ip4", "dns-reverse-ip6"}
    assert dict(caps["dns-lookup"].parameters) == {
        "dns.name": "*", "dns.type": "A,AAAA,CNAME,MX,NS,TXT,SOA,PTR", "dns.server": "*"}
    assert caps["dns-lookup"].results == ("dns.record-name", "dns.record-type",
                                          "dns.record-value", "ttl", "delay.resolution.ms")
    assert dict(caps["dns-reverse-ip4"].parameters) == {"destination.ip4": "*"}
    assert dict(caps["dns-reverse-ip6"].parameters) == {"destination.ip6": "*"}
    for label in ("dns-reverse-ip4", "dns-reverse-ip6"):
        assert caps[label].results == ("dns.record-name", "dns.record-value", "ttl",
                                       "delay.resolution.ms")
    for cap in caps.values():
        assert cap.when == "now"
        assert cap.registry != REGISTRY_CORE
    assert set(ELEMENTS) == {"dns.name", "dns.type", "dns.server", "dns.record-name",
                             "dns.record-type", "dns.record-value", "ttl"}


def test_bad_options_are_reported(tmp_path: Path):
    assert "timeout_ms" in DnsMeasurement({"timeout_ms": "soon"}).unavailable()
    assert "option server" in DnsMeasurement({"server": "dns.example"}).unavailable()
    missing = str(tmp_path / "resolv.conf")
    assert "resolv_conf" in DnsMeasurement({"resolv_conf": missing}).unavailable()
    assert DnsMeasurement({"server": "::1#5353"}).unavailable() is None


def test_server_syntax():
    assert dns.parse_server("192.0.2.53") == Server("192.0.2.53", 53)
    assert dns.parse_server("192.0.2.53#5353") == Server("192.0.2.53", 5353)
    assert dns.parse_server("2001:DB8::53#5353") == Server("2001:db8::53", 5353)
    assert str(Server("::1", 5353)) == "::1#5353"
    for bad in ("dns.example", "192.0.2.53#", "192.0.2.53#99999", "[::1]:53", ""):
        with pytest.raises(MeasurementError, match=r"dns\.server"):
            dns.parse_server(bad)


def test_default_server_from_resolv_conf(tmp_path: Path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example\nnameserver bogus\nnameserver 192.0.2.1\n"
                    "nameserver 192.0.2.2\n")
    assert DnsMeasurement({"resolv_conf": str(conf)}).default_server() == Server("192.0.2.1")
    assert DnsMeasurement({"resolv_conf": str(conf), "server": "::1"}).default_server() \
        == Server("::1")
    conf.write_text("search example\n")
    with pytest.raises(MeasurementError, match="no nameserver in"):
        DnsMeasurement({"resolv_conf": str(conf)}).default_server()


@pytest.mark.parametrize(("label", "parameters", "message"), [
    ("dns-lookup", {"dns.name": "host.test", "dns.type": "SRV"}, r"dns\.type: 'SRV'"),
    ("dns-lookup", {"dns.name": "a" * 64 + ".test", "dns.type": "A"}, "longer than 63"),
    ("dns-lookup", {"dns.name": "a..test", "dns.type": "A"}, "empty label"),
    ("dns-lookup", {"dns.name": "", "dns.type": "A"}, "empty name"),
    ("dns-lookup", {"dns.name": "x.test", "dns.type": "A", "dns.server": "ns.example"},
     "not an IP address"),
    ("dns-reverse-ip4", {"destination.ip4": "::1"}, "not an IPv4 address"),
    ("dns-reverse-ip6", {"destination.ip6": "192.0.2.1"}, "not an IPv6 address"),
])
def test_bad_parameters(label, parameters, message):
    with pytest.raises(MeasurementError, match=message):
        list(DnsMeasurement({"server": "127.0.0.1"}).run(make_job(label, **parameters)))


# --- against dnsmasq --------------------------------------------------------------------------


@needs_dnsmasq
def test_a_and_aaaa(dnsmasq):
    rows = lookup(dnsmasq, "host.test", "A")
    assert values(rows) == [("host.test", "A", "192.0.2.10", 300)]
    assert isinstance(rows[0]["delay.resolution.ms"], int)
    assert 0 <= rows[0]["delay.resolution.ms"] < 1000
    assert values(lookup(dnsmasq, "host.test", "AAAA")) == [
        ("host.test", "AAAA", "2001:db8::10", 300)]
    assert values(lookup(dnsmasq, "x.wild.test", "a")) == [
        ("x.wild.test", "A", "192.0.2.30", 300)]


@needs_dnsmasq
def test_ttl_is_per_record(dnsmasq):
    assert values(lookup(dnsmasq, "short.test", "A")) == [("short.test", "A", "192.0.2.20", 42)]


@needs_dnsmasq
def test_cname_chain_gives_a_row_per_record(dnsmasq):
    assert values(lookup(dnsmasq, "alias.test", "A")) == [
        ("alias.test", "CNAME", "host.test", 300), ("host.test", "A", "192.0.2.10", 300)]


@needs_dnsmasq
def test_mx_txt_ns_soa(dnsmasq):
    assert sorted(values(lookup(dnsmasq, "mx.test", "MX"))) == [
        ("mx.test", "MX", "10 mail.test", 300), ("mx.test", "MX", "20 backup.test", 300)]
    assert values(lookup(dnsmasq, "txt.test", "TXT")) == [
        ("txt.test", "TXT", '"hello world" "second"', 300)]
    assert values(lookup(dnsmasq, "zone.test", "NS")) == [
        ("zone.test", "NS", "ns1.zone.test", 300)]
    assert values(lookup(dnsmasq, "zone.test", "SOA")) == [
        ("zone.test", "SOA", "ns1.zone.test hostmaster.zone.test 2024010101 3600 600 86400 300",
         300)]


@needs_dnsmasq
def test_ptr_lookup(dnsmasq):
    assert values(lookup(dnsmasq, "10.2.0.192.in-addr.arpa", "PTR")) == [
        ("10.2.0.192.in-addr.arpa", "PTR", "host.test", 300)]


@needs_dnsmasq
def test_reverse_ip4_and_ip6(dnsmasq):
    rows = run(dnsmasq, "dns-reverse-ip4", **{"destination.ip4": "192.0.2.5"})
    assert [(r["dns.record-name"], r["dns.record-value"], r["ttl"]) for r in rows] == [
        ("5.2.0.192.in-addr.arpa", "five.test", 300)]
    assert set(rows[0]) == {"dns.record-name", "dns.record-value", "ttl", "delay.resolution.ms"}
    rows = run(dnsmasq, "dns-reverse-ip6", **{"destination.ip6": "2001:db8::10"})
    assert [(r["dns.record-name"], r["dns.record-value"]) for r in rows] == [
        (ipaddress.ip_address("2001:db8::10").reverse_pointer, "host.test")]


@needs_dnsmasq
def test_default_server_through_resolv_conf(dnsmasq, tmp_path: Path):
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {dnsmasq}\n")
    measurement = DnsMeasurement({"resolv_conf": str(conf)})
    for server in ("*", ""):
        job = make_job("dns-lookup", **{"dns.name": "host.test", "dns.type": "A",
                                        "dns.server": server})
        assert [r["dns.record-value"] for r in measurement.run(job)] == ["192.0.2.10"]
    job = make_job("dns-reverse-ip4", **{"destination.ip4": "192.0.2.10"})
    assert [r["dns.record-value"] for r in measurement.run(job)] == ["host.test"]


@needs_dnsmasq
def test_error_rcodes_and_nodata(dnsmasq):
    with pytest.raises(MeasurementError, match=r"answered NXDOMAIN for nowhere\.test A"):
        lookup(dnsmasq, "nowhere.test", "A")
    with pytest.raises(MeasurementError, match="answered REFUSED"):
        lookup(dnsmasq, "outside.example", "A")
    with pytest.raises(MeasurementError, match=r"no MX record for host\.test .*NODATA"):
        lookup(dnsmasq, "host.test", "MX")
    with pytest.raises(MeasurementError, match="NXDOMAIN"):
        run(dnsmasq, "dns-reverse-ip4", **{"destination.ip4": "192.0.2.99"})


@needs_dnsmasq
def test_truncated_udp_answer_is_asked_again_over_tcp(dnsmasq):
    plain = query(dnsmasq, "big.test", 16, edns_udp_size=0)
    assert plain.transport == "tcp"
    assert sorted(r.value for r in plain.response.answers) == [f'"{t}"' for t in BIG_TXT]
    assert query(dnsmasq, "big.test", 16, edns_udp_size=1232).transport == "udp"
    rows = lookup(dnsmasq, "big.test", "TXT", edns_udp_size="0")
    assert len(rows) == 4


# --- the UDP client against a scripted server -----------------------------------------------


class ScriptedServer:
    """Answers each query with what ``reply(query)`` returns (a list of datagrams)."""

    def __init__(self, reply) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.reply = reply
        self.queries: list[bytes] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def server(self) -> Server:
        return Server("127.0.0.1", self.sock.getsockname()[1])

    def serve(self) -> None:
        while not self.done.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.queries.append(data)
            for datagram in self.reply(data):
                self.sock.sendto(datagram, peer)

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        self.sock.close()


def answer_for(query_packet: bytes, qid: int | None = None, ip: str = "192.0.2.1",
               ttl: int = 60) -> bytes:
    """A NOERROR answer with one A record, echoing the question (without EDNS)."""
    (orig_id,) = struct.unpack_from("!H", query_packet)
    _, end = read_name(query_packet, 12)
    question = query_packet[12:end + 4]
    header = struct.pack("!HHHHHH", orig_id if qid is None else qid, 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + socket.inet_aton(ip)
    return header + question + record


@pytest.fixture
def scripted() -> Iterator[list[ScriptedServer]]:
    started: list[ScriptedServer] = []
    yield started
    for server in started:
        server.close()


def test_spoofed_and_garbage_answers_are_ignored(scripted):
    def reply(packet: bytes) -> list[bytes]:
        (qid,) = struct.unpack_from("!H", packet)
        other_question = build_query("other.test", 1, qid)
        return [b"\x00garbage", answer_for(packet, qid=(qid + 1) % 65536, ip="198.51.100.6"),
                answer_for(other_question, ip="198.51.100.7"), answer_for(packet)]

    fake = ScriptedServer(reply)
    scripted.append(fake)
    answer = query(fake.server, "Host.Test", 1, timeout_s=1, retries=0)
    assert [r.value for r in answer.response.answers] == ["192.0.2.1"]
    assert len(fake.queries) == 1


def test_silent_server_times_out_after_retries(scripted):
    fake = ScriptedServer(lambda packet: [])
    scripted.append(fake)
    started = time.monotonic()
    with pytest.raises(MeasurementError, match=r"no answer from 127\.0\.0\.1#\d+ after 3 "
                                               r"tries of 150 ms"):
        lookup(fake.server, "host.test", "A", timeout_ms="150", retries="2")
    assert 0.45 <= time.monotonic() - started < 1.5
    assert len(fake.queries) == 3
    assert len({q[:2] for q in fake.queries}) == 1  # resent as is: a late answer still counts


def test_late_answer_to_first_try_counts(scripted):
    def reply(packet: bytes) -> list[bytes]:
        if len(fake.queries) == 1:
            time.sleep(0.25)  # past the first try's timeout, during the second
        return [answer_for(packet)]

    fake = ScriptedServer(reply)
    scripted.append(fake)
    answer = query(fake.server, "host.test", 1, timeout_s=0.2, retries=1)
    assert answer.response.answers[0].value == "192.0.2.1"
    assert 0.2 <= answer.seconds < 0.4


def test_closed_port_is_reported():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MeasurementError, match="port unreachable"):
        lookup(Server("127.0.0.1", port), "host.test", "A", timeout_ms="500")


def test_ipv6_server(scripted):
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind(("::1", 0))

    def serve() -> None:
        data, peer = sock.recvfrom(4096)
        sock.sendto(answer_for(data), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        rows = lookup(Server("::1", sock.getsockname()[1]), "host.test", "A")
        assert values(rows) == [("host.test", "A", "192.0.2.1", 60)]
    finally:
        thread.join(2)
        sock.close()


# --- the wire format on crafted packets ------------------------------------------------------


def header(qid: int = 0x1234, flags: int = 0x8180, qd: int = 0, an: int = 0, ns: int = 0,
           ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def test_query_layout():
    packet = build_query("www.Example.test.", 28, 0xBEEF, 1232)
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", packet)
    assert (qid, flags, qd, an, ns, ar) == (0xBEEF, 0x0100, 1, 0, 0, 1)
    assert packet[12:34] == b"\x03www\x07Example\x04test\x00\x00\x1c\x00\x01"
    assert packet[34:] == b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    assert struct.unpack_from("!H", build_query("a.test", 1, 1, 0), 10) == (0,)
    assert encode_name("bücher.test") == b"\x0dxn--bcher-kva\x04test\x00"
    assert encode_name(".") == b"\x00"
    with pytest.raises(DnsWireError, match="255"):
        encode_name(".".join(["a" * 63] * 4))


def test_compressed_names_are_read():
    msg = header() + b"\x04test\x00" + b"\x03www\xc0\x0c" + b"\x04mail\xc0\x12"
    assert read_name(msg, 12) == ((b"test",), 18)
    assert read_name(msg, 18) == ((b"www", b"test"), 24)
    assert read_name(msg, 24) == ((b"mail", b"www", b"test"), 31)


@pytest.mark.parametrize(("msg", "offset", "message"), [
    (header() + b"\xc0\x0c", 12, "does not point backwards"),  # points at itself
    (header() + b"\x01a\xc0\x0c", 14, "does not point backwards"),  # a -> ptr -> a ...
    (header() + b"\x01a\xc0\x0c", 12, "does not point backwards"),
    (header() + b"\xc0\x0e\x01a\x00", 12, "does not point backwards"),  # forward
    (header() + b"\x03ab", 12, "past the end"),
    (header() + b"\x01a", 12, "past the end"),
    (header() + b"\xc0", 12, "cut off"),
    (header() + b"\x41a\x00", 12, "unsupported label type"),
    (header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00", 12, "longer than 255"),
])
def test_bad_names_are_refused(msg, offset, message):
    with pytest.raises(DnsWireError, match=message):
        read_name(msg, offset)


def test_pointer_loop_through_two_names_terminates():
    # Two pointers pointing at each other's labels: the second must be refused.
    msg = header() + b"\x01a\xc0\x10" + b"\x01b\xc0\x0c"
    with pytest.raises(DnsWireError):
        read_name(msg, 12)
    with pytest.raises(DnsWireError):
        read_name(msg, 16)


@pytest.mark.parametrize("cut", [0, 5, 11, 20, 24, 30, 35, 41])
def test_truncated_packets_are_refused(cut):
    packet = answer_for(build_query("host.test", 1, 7))
    assert parse_response(packet).answers[0].value == "192.0.2.1"
    with pytest.raises(DnsWireError):
        parse_response(packet[:cut])


def test_rdata_past_its_length_is_refused():
    question = b"\x01a\x00\x00\x05\x00\x01"
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 2) + b"\x01b\x00"
    with pytest.raises(DnsWireError, match="past its record"):
        parse_response(header(qd=1, an=1) + question + cname)


def test_answer_validation():
    qname = labels_of("host.test")
    response = parse_response(answer_for(build_query("HOST.test", 1, 99)))
    assert answers_query(response, 99, qname, 1)
    assert not answers_query(response, 98, qname, 1)  # mismatched ID
    assert not answers_query(response, 99, labels_of("other.test"), 1)
    assert not answers_query(response, 99, qname, 28)
    as_query = parse_response(build_query("host.test", 1, 99))  # QR bit clear
    assert not answers_query(as_query, 99, qname, 1)


def test_record_details():
    question = b"\x01a\x00\x00\x10\x00\x01"
    txt = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 0x80000001, 9) + b"\x03x\"y\x04\x00\xff\\z"
    unknown = b"\xc0\x0c" + struct.pack("!HHIH", 99, 1, 5, 2) + b"\xab\xcd"
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0x01000000, 0)
    response = parse_response(header(flags=0x8180, qd=1, an=2, ar=1) + question + txt
                              + unknown + opt)
    first, second = response.answers
    assert first.ttl == 0  # top bit set: RFC 2181 says zero
    assert first.value == '"x\\"y" "\\000\\255\\\\z"'
    assert (second.type_name, second.value) == ("TYPE99", "\\# 2 abcd")
    assert response.rcode_name == "BADVERS"  # extended rcode 1 << 4
    assert name_text((b"a.b", b"c\\", b"\x00")) == "a\\.b.c\\\\.\\000"
    assert name_text(()) == "."


def test_measurement_module_uses_only_the_standard_library():
    imported = imported_roots(dns.__file__)
    assert imported - {"probe_daemon"} <= set(sys.stdlib_module_names)
