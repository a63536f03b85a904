# SPDX-License-Identifier: Apache-2.0
"""DNS lookups with a small native wire client: what a resolver answers and how fast.

Capabilities (registry ``REGISTRY_PROBEFORGE``, when ``now``):

- ``dns-lookup``: parameters ``dns.name`` (``*``), ``dns.type``
  (``A,AAAA,CNAME,MX,NS,TXT,SOA,PTR``), ``dns.server`` (``*``); results ``dns.record-name``,
  ``dns.record-type``, ``dns.record-value``, ``ttl``, ``delay.resolution.ms``. One row per
  record of the answer section, so a CNAME chain shows as its CNAME rows followed by the
  records of the type asked for.
- ``dns-reverse-ip4`` / ``dns-reverse-ip6``: parameter ``destination.ip4`` /
  ``destination.ip6``; results ``dns.record-name`` (the ``in-addr.arpa``/``ip6.arpa`` owner),
  ``dns.record-value`` (the host name), ``ttl``, ``delay.resolution.ms``; one row per PTR
  record, asked of the default server.

``dns.server`` is an IP address, optionally followed by ``#port`` (``192.0.2.53``,
``192.0.2.53#5353``, ``2001:db8::53#5353``): the syntax of dnsmasq and unbound, which needs no
brackets because ``#`` never occurs in an address. Host names are refused: resolving the
resolver would measure another server. ``default`` (what the mPlane RI client can send), ``*``
or empty means the default server: option
``server`` when set, else the first usable ``nameserver`` of ``resolv_conf`` (where ``#port``
is accepted too, although glibc would skip such a line). On OpenWrt that file names the local
dnsmasq; point ``resolv_conf`` at ``/tmp/resolv.conf.d/resolv.conf.auto`` to measure the
upstream resolvers instead.

Values are in zone-file presentation form without the final dot: names as
``mail.example.com``, MX as ``10 mail.example.com``, SOA as ``mname rname serial refresh retry
expire minimum``, TXT as its quoted strings (``"v=spf1 -all"``), other types as RFC 3597
``\\# length hex``. ``delay.resolution.ms`` runs from the first query sent to the valid answer,
retries and a TCP fallback included. ``ttl`` is the record's TTL as received.

Failures raise ``MeasurementError``: a response code other than NOERROR (the message names
it: NXDOMAIN, SERVFAIL, REFUSED ...), an answer without records (NODATA; an empty result
would be indistinguishable from a lost one), no valid answer within the retries, a server
that is unreachable. Each tick of the scope is one lookup; the capability offers singletons
because the results carry no time to tell repeated lookups apart.

The client: one question with a random ID from a random port (the OS's), recursion desired,
EDNS0 with a UDP payload of ``edns_udp_size`` unless that is 0. UDP answers are accepted only
from the server's address and port, with the query's ID and the same question (names compared
case-insensitively); anything else is ignored as spoofed or stale while the wait goes on.
Each try waits ``timeout_ms``; ``retries`` more tries resend the same query, so a late answer
to an earlier try still counts. A truncated (TC) answer is asked again over TCP. Compression
pointers must point backwards, which guarantees parsing ends, and names are limited to 255
octets.
"""

import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from probe_daemon.measurements.base import (
    REGISTRY_PROBEFORGE,
    CapabilityTemplate,
    Job,
    MeasurementError,
    Options,
    ip_param,
)

OPTIONS: dict[str, tuple[str, str]] = {
    "timeout_ms": ("2000", "milliseconds to wait for an answer to each try"),
    "retries": ("2", "further tries over UDP after the first one times out"),
    "edns_udp_size": ("1232", "EDNS0 UDP payload size announced; 0: no EDNS (512 bytes)"),
    "server": ("", "default server, address[#port]; empty: the first nameserver of "
                   "resolv_conf"),
    "resolv_conf": ("/etc/resolv.conf", "where the default server is read from"),
}

ELEMENTS: dict[str, tuple[str, str]] = {
    "dns.name": ("string", "domain name to look up"),
    "dns.type": ("string", "DNS record type asked for (A, AAAA, MX ...)"),
    "dns.server": ("string", "DNS server asked, address or address#port; default (or *) for the "
                             "probe's default resolver"),
    "dns.record-name": ("string", "owner name of a DNS record"),
    "dns.record-type": ("string", "type of a DNS record"),
    "dns.record-value": ("string", "data of a DNS record in presentation form"),
    # GLIMPSE uses ttl for IP hop limits too: the description covers both uses.
    "ttl": ("natural", "time to live: seconds for a DNS record, hops for an IP packet"),
}

LOOKUP_TYPES = ("A", "AAAA", "CNAME", "MX", "NS", "TXT", "SOA", "PTR")
TYPE_CODES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
              "AAAA": 28, "SRV": 33, "DNAME": 39, "OPT": 41, "DS": 43, "RRSIG": 46,
              "NSEC": 47, "DNSKEY": 48, "NSEC3": 50, "SVCB": 64, "HTTPS": 65, "CAA": 257}
TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH",
               10: "NOTZONE", 16: "BADVERS"}
CLASS_IN = 1
TYPE_OPT = 41
HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")
FLAG_QR, FLAG_TC, FLAG_RD = 0x8000, 0x0200, 0x0100
MAX_NAME = 255
MAX_UDP = 65535
DEFAULT_PORT = 53

LOOKUP_RESULTS = ("dns.record-name", "dns.record-type", "dns.record-value", "ttl",
                  "delay.resolution.ms")
REVERSE_RESULTS = ("dns.record-name", "dns.record-value", "ttl", "delay.resolution.ms")

Labels = tuple[bytes, ...]


class DnsWireError(ValueError):
    """A packet that is not a well-formed DNS message."""


# --- names -------------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    """Wire form of a textual name (trailing dot optional); IDNs go through IDNA."""
    text = name.strip()
    if text in ("", "."):
        if not text:
            raise DnsWireError("empty name")
        return b"\x00"
    text = text.removesuffix(".")
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        try:
            raw = text.encode("idna")
        except UnicodeError as exc:
            raise DnsWireError(f"{name!r} is not a valid domain name ({exc})") from None
    out = bytearray()
    for label in raw.split(b"."):
        if not label:
            raise DnsWireError(f"{name!r} has an empty label")
        if len(label) > 63:
            raise DnsWireError(f"{name!r} has a label longer than 63 octets")
        out += bytes([len(label)]) + label
    out += b"\x00"
    if len(out) > MAX_NAME:
        raise DnsWireError(f"{name!r} is longer than 255 octets")
    return bytes(out)


def read_name(msg: bytes, offset: int) -> tuple[Labels, int]:
    """Labels of the name at ``offset`` and the offset just after it in place."""
    labels: list[bytes] = []
    length = 1
    end: int | None = None
    pos = segment = offset
    while True:
        if pos >= len(msg):
            raise DnsWireError("name runs past the end of the message")
        size = msg[pos]
        if size & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise DnsWireError("compression pointer cut off")
            target = ((size & 0x3F) << 8) | msg[pos + 1]
            # A pointer must land before the labels it continues: every jump then goes to
            # a strictly lower offset, so no loop is possible. Encoders only ever point at an
            # earlier occurrence, whose own pointers point earlier still.
            if target >= segment:
                raise DnsWireError(f"compression pointer at {pos} does not point backwards")
            if end is None:
                end = pos + 2
            pos = segment = target
            continue
        if size & 0xC0:
            raise DnsWireError(f"unsupported label type 0x{size:02x} at {pos}")
        if size == 0:
            return tuple(labels), end if end is not None else pos + 1
        if pos + 1 + size > len(msg):
            raise DnsWireError("label runs past the end of the message")
        length += size + 1
        if length > MAX_NAME:
            raise DnsWireError("name longer than 255 octets")
        labels.append(msg[pos + 1:pos + 1 + size])
        pos += 1 + size


def _label_text(label: bytes) -> str:
    out = []
    for byte in label:
        char = chr(byte)
        if char in ".\\":
            out.append("\\" + char)
        elif 0x21 <= byte <= 0x7E:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def name_text(labels: Labels) -> str:
    """Presentation form without the final dot; the root is ``.``."""
    return ".".join(_label_text(label) for label in labels) if labels else "."


def same_name(a: Labels, b: Labels) -> bool:
    # DNS names compare case-insensitively on ASCII letters only (RFC 4343).
    return len(a) == len(b) and all(x.lower() == y.lower() for x, y in zip(a, b, strict=True))


def labels_of(name: str) -> Labels:
    labels, _ = read_name(encode_name(name), 0)
    return labels


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    name: Labels
    rtype: int
    rclass: int
    ttl: int
    value: str

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.rtype, f"TYPE{self.rtype}")


@dataclass(frozen=True)
class Response:
    id: int
    flags: int
    rcode: int  # with the EDNS extended bits
    question: tuple[Labels, int, int] | None
    answers: tuple[Record, ...]

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def rcode_name(self) -> str:
        return RCODE_NAMES.get(self.rcode, f"RCODE{self.rcode}")


def build_query(name: str, qtype: int, qid: int, edns_udp_size: int = 0) -> bytes:
    additional = 1 if edns_udp_size else 0
    msg = HEADER.pack(qid, FLAG_RD, 1, 0, 0, additional) + encode_name(name)
    msg += struct.pack("!HH", qtype, CLASS_IN)
    if edns_udp_size:
        # OPT pseudo-record: root owner, class = payload size, TTL = rcode/version/flags 0.
        msg += b"\x00" + struct.pack("!HHIH", TYPE_OPT, max(512, edns_udp_size), 0, 0)
    return msg


def _rdata_text(msg: bytes, rtype: int, start: int, end: int) -> str:
    rdata = msg[start:end]

    def name_at(pos: int) -> tuple[str, int]:
        labels, after = read_name(msg, pos)
        if after > end:
            raise DnsWireError("name runs past its record")
        return name_text(labels), after

    if rtype == TYPE_CODES["A"] and len(rdata) == 4:
        return str(ipaddress.IPv4Address(rdata))
    if rtype == TYPE_CODES["AAAA"] and len(rdata) == 16:
        return str(ipaddress.IPv6Address(rdata))
    if rtype in (TYPE_CODES["CNAME"], TYPE_CODES["NS"], TYPE_CODES["PTR"],
                 TYPE_CODES["DNAME"]):
        text, _ = name_at(start)
        return text
    if rtype == TYPE_CODES["MX"] and len(rdata) >= 3:
        (preference,) = struct.unpack_from("!H", msg, start)
        text, _ = name_at(start + 2)
        return f"{preference} {text}"
    if rtype == TYPE_CODES["SOA"]:
        mname, pos = name_at(start)
        rname, pos = name_at(pos)
        if pos + 20 != end:
            raise DnsWireError("SOA record of the wrong length")
        numbers = struct.unpack_from("!IIIII", msg, pos)
        return " ".join([mname, rname, *(str(n) for n in numbers)])
    if rtype == TYPE_CODES["TXT"] and rdata:
        strings, pos = [], 0
        while pos < len(rdata):
            size = rdata[pos]
            if pos + 1 + size > len(rdata):
                raise DnsWireError("TXT string runs past its record")
            chunk = rdata[pos + 1:pos + 1 + size]
            strings.append('"' + "".join(
                "\\" + chr(b) if chr(b) in '"\\' else chr(b) if 0x20 <= b <= 0x7E
                else f"\\{b:03d}" for b in chunk) + '"')
            pos += 1 + size
        return " ".join(strings)
    return f"\\# {len(rdata)} {rdata.hex()}".rstrip()


def parse_response(msg: bytes) -> Response:
    if len(msg) < HEADER.size:
        raise DnsWireError(f"message of {len(msg)} bytes is shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(msg)
    pos = HEADER.size
    question = None
    for index in range(qdcount):
        labels, pos = read_name(msg, pos)
        if pos + 4 > len(msg):
            raise DnsWireError("question cut off")
        qtype, qclass = struct.unpack_from("!HH", msg, pos)
        pos += 4
        if index == 0:
            question = (labels, qtype, qclass)
    sections: list[list[Record]] = [[], [], []]
    rcode = flags & 0x000F
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            labels, pos = read_name(msg, pos)
            if pos + RR_FIXED.size > len(msg):
                raise DnsWireError("record header cut off")
            rtype, rclass, ttl, rdlength = RR_FIXED.unpack_from(msg, pos)
            pos += RR_FIXED.size
            if pos + rdlength > len(msg):
                raise DnsWireError("record data runs past the end of the message")
            if rtype == TYPE_OPT:
                rcode |= (ttl >> 24) << 4  # EDNS extended rcode: the upper 8 of 12 bits
                value = ""
            else:
                value = _rdata_text(msg, rtype, pos, pos + rdlength)
            # RFC 2181: a TTL with the top bit set is to be taken as zero.
            sections[section].append(Record(labels, rtype, rclass,
                                             0 if ttl & 0x80000000 else ttl, value))
            pos += rdlength
    return Response(qid, flags, rcode, question, tuple(sections[0]))


def answers_query(response: Response, qid: int, qname: Labels, qtype: int) -> bool:
    """Whether ``response`` is the answer to our query (not spoofed, not stale)."""
    if response.id != qid or not response.flags & FLAG_QR or response.question is None:
        return False
    labels, rtype, rclass = response.question
    return rtype == qtype and rclass == CLASS_IN and same_name(labels, qname)


# --- transport ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    address: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return self.address if self.port == DEFAULT_PORT else f"{self.address}#{self.port}"


def parse_server(text: str) -> Server:
    address, sep, port_text = text.strip().partition("#")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise MeasurementError(f"dns.server: {text!r} is not an IP address[#port]") from None
    port = DEFAULT_PORT
    if sep:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise MeasurementError(f"dns.server: {text!r} has no valid port after #")
        port = int(port_text)
    return Server(str(ip), port)


def resolv_conf_server(path: str) -> Server:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    # glibc ignores a nameserver it cannot parse; so do we.
                    try:
                        return parse_server(words[1])
                    except MeasurementError:
                        continue
    except OSError as exc:
        raise MeasurementError(f"cannot read {path}: {exc.strerror or exc}") from None
    raise MeasurementError(f"no nameserver in {path}")


@dataclass(frozen=True)
class Answer:
    response: Response
    seconds: float
    transport: str  # "udp" or "tcp"


def _family(server: Server) -> int:
    return socket.AF_INET6 if ":" in server.address else socket.AF_INET


def query(server: Server, name: str, qtype: int, timeout_s: float = 2.0, retries: int = 2,
          edns_udp_size: int = 1232) -> Answer:
    """Ask ``server``; the first valid answer, after TCP fallback when truncated."""
    # Unpredictable, as secrets would make it, without the hashlib and hmac it imports.
    qid = int.from_bytes(os.urandom(2), "big")
    packet = build_query(name, qtype, qid, edns_udp_size)
    qname = labels_of(name)
    t0 = time.perf_counter()
    response = _udp_exchange(server, packet, qid, qname, qtype, timeout_s, retries)
    transport = "udp"
    if response.truncated:
        response = _tcp_exchange(server, packet, qid, qname, qtype, timeout_s)
        transport = "tcp"
    return Answer(response, time.perf_counter() - t0, transport)


def _udp_exchange(server: Server, packet: bytes, qid: int, qname: Labels, qtype: int,
                  timeout_s: float, retries: int) -> Response:
    with socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
        try:
            # A connected socket only receives datagrams from the server's address and port.
            sock.connect((server.address, server.port))
        except OSError as exc:
            raise MeasurementError(f"cannot reach {server}: {exc.strerror or exc}") from None
        for _ in range(1 + retries):
            try:
                sock.send(packet)
            except OSError as exc:
                raise MeasurementError(f"cannot send to {server}: {exc.strerror or exc}") \
                    from None
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                try:
                    data = sock.recv(MAX_UDP)
                except ConnectionRefusedError:
                    raise MeasurementError(f"{server} refused the query (port unreachable)") \
                        from None
                except OSError as exc:
                    raise MeasurementError(f"receiving from {server}: {exc.strerror or exc}") \
                        from None
                try:
                    response = parse_response(data)
                except DnsWireError:
                    continue  # garbage is ignored like a spoofed answer: keep waiting
                if answers_query(response, qid, qname, qtype):
                    return response
    tries = 1 + retries
    raise MeasurementError(f"no answer from {server} after {tries} "
                           f"{'try' if tries == 1 else 'tries'} of {timeout_s * 1000:g} ms")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        data += chunk
    return bytes(data)


def _tcp_exchange(server: Server, packet: bytes, qid: int, qname: Labels, qtype: int,
                  timeout_s: float) -> Response:
    try:
        with socket.create_connection((server.address, server.port), timeout=timeout_s) \
                as sock:
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            (size,) = struct.unpack("!H", _recv_exact(sock, 2))
            data = _recv_exact(sock, size)
    except TimeoutError:
        raise MeasurementError(f"truncated answer, and no answer from {server} over TCP "
                               f"within {timeout_s * 1000:g} ms") from None
    except OSError as exc:
        raise MeasurementError(f"truncated answer, and TCP to {server} failed: "
                               f"{exc.strerror or exc}") from None
    try:
        response = parse_response(data)
    except DnsWireError as exc:
        raise MeasurementError(f"malformed answer from {server} over TCP: {exc}") from None
    if not answers_query(response, qid, qname, qtype):
        raise MeasurementError(f"answer from {server} over TCP does not match the query")
    return response


# --- the measurement ---------------------------------------------------------------------


class DnsMeasurement:
    name = "dns"

    def __init__(self, options: Mapping[str, str]) -> None:
        self._problem: str | None = None
        self.timeout_s, self.retries, self.edns_udp_size = 2.0, 2, 1232
        read = Options(options, OPTIONS)
        self.server = read.text("server")
        self.resolv_conf = read.text("resolv_conf") or OPTIONS["resolv_conf"][0]
        try:
            self.timeout_s = read.integer("timeout_ms", minimum=1, maximum=600_000) / 1000
            self.retries = read.integer("retries", minimum=0, maximum=100)
            size = read.integer("edns_udp_size", minimum=0, maximum=65535)
            self.edns_udp_size = size if size == 0 else max(512, size)
            if self.server:
                parse_server(self.server)
        except (ValueError, MeasurementError) as exc:
            self._problem = str(exc).replace("dns.server", "option server")

    def capabilities(self) -> list[CapabilityTemplate]:
        return [
            CapabilityTemplate(
                label="dns-lookup",
                parameters={"dns.name": "*", "dns.type": ",".join(LOOKUP_TYPES),
                            "dns.server": "*"},
                results=LOOKUP_RESULTS, when="now", registry=REGISTRY_PROBEFORGE),
            CapabilityTemplate(
                label="dns-reverse-ip4", parameters={"destination.ip4": "*"},
                results=REVERSE_RESULTS, when="now", registry=REGISTRY_PROBEFORGE),
            CapabilityTemplate(
                label="dns-reverse-ip6", parameters={"destination.ip6": "*"},
                results=REVERSE_RESULTS, when="now", registry=REGISTRY_PROBEFORGE),
        ]

    def unavailable(self) -> str | None:
        if self._problem:
            return self._problem
        if not self.server and not os.access(self.resolv_conf, os.R_OK):
            return f"option resolv_conf: {self.resolv_conf} is not readable"
        return None

    def default_server(self) -> Server:
        if self.server:
            return parse_server(self.server)
        return resolv_conf_server(self.resolv_conf)

    def run(self, job: Job) -> Iterator[Mapping[str, Any]]:
        if self._problem:
            raise MeasurementError(self._problem)
        if job.label == "dns-lookup":
            name, qtype, server = self._lookup_parameters(job.parameters)
            reverse = False
        elif job.label in ("dns-reverse-ip4", "dns-reverse-ip6"):
            version = 4 if job.label.endswith("ip4") else 6
            address = ip_param(job.parameters, f"destination.ip{version}", version)
            name = ipaddress.ip_address(address).reverse_pointer
            qtype, server, reverse = TYPE_CODES["PTR"], self.default_server(), True
        else:
            raise MeasurementError(f"dns: no capability {job.label!r}")
        for _tick in job.ticks():
            yield from self.lookup(server, name, qtype, reverse)

    def _lookup_parameters(self, parameters: Mapping[str, str]) -> tuple[str, int, Server]:
        name = parameters.get("dns.name", "").strip()
        try:
            encode_name(name)
        except DnsWireError as exc:
            raise MeasurementError(f"dns.name: {exc}") from None
        type_text = parameters.get("dns.type", "").strip().upper()
        if type_text not in LOOKUP_TYPES:
            raise MeasurementError(f"dns.type: {type_text!r} is not one of "
                                   f"{', '.join(LOOKUP_TYPES)}")
        server_text = parameters.get("dns.server", "").strip()
        # "*" is mPlane's "no value", which the RI client cannot send: it says "default".
        server = self.default_server() if server_text.lower() in ("", "*", "default") \
            else parse_server(server_text)
        return name, TYPE_CODES[type_text], server

    def lookup(self, server: Server, name: str, qtype: int,
               reverse: bool = False) -> list[dict[str, Any]]:
        answer = query(server, name, qtype, self.timeout_s, self.retries, self.edns_udp_size)
        response = answer.response
        type_name = TYPE_NAMES[qtype]
        if response.rcode:
            raise MeasurementError(f"{server} answered {response.rcode_name} for "
                                   f"{name} {type_name}")
        records = [r for r in response.answers if r.rtype == qtype] if reverse \
            else list(response.answers)
        if not records:
            raise MeasurementError(f"{server} has no {type_name} record for {name} "
                                   "(NOERROR, NODATA)")
        delay_ms = round(answer.seconds * 1000)
        rows: list[dict[str, Any]] = []
        for record in records:
            row: dict[str, Any] = {"dns.record-name": name_text(record.name)}
            if not reverse:
                row["dns.record-type"] = record.type_name
            row.update({"dns.record-value": record.value, "ttl": record.ttl,
                        "delay.resolution.ms": delay_ms})
            rows.append(row)
        return rows
