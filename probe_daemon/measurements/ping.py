# SPDX-License-Identifier: Apache-2.0
"""ICMP echo ("ping") done natively: the mPlane RI ping component's capabilities.

The RI ran the system ``ping`` and parsed its (localised, version-dependent) output; here each
tick of the temporal scope sends one echo request and waits up to ``timeout_ms`` for its reply.

Sockets, in order of preference: a raw ICMP socket (root or CAP_NET_RAW), else the kernel's
unprivileged ICMP socket (SOCK_DGRAM, allowed to the groups in net.ipv4.ping_group_range).
A raw socket sees every ICMP message reaching the host, so replies are matched on identifier,
sequence number and a random per-job payload.

The ICMP helpers here (checksum, message parsing, sockets) are shared with traceroute.
"""

import errno
import ipaddress
import itertools
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from probe_daemon.measurements.base import (
    CapabilityTemplate,
    Job,
    MeasurementError,
    Options,
    ip_param,
)

OPTIONS: dict[str, tuple[str, str]] = {
    "source_ip4": ("*", "source.ip4 addresses clients may choose (constraint: *, a list a,b or "
                        "a range a ... b); the socket is bound to the one a specification gives"),
    "source_ip6": ("*", "source.ip6 addresses clients may choose, as source_ip4"),
    "timeout_ms": ("1000", "how long to wait for each echo reply, in milliseconds"),
}
# Every element used is in the mPlane core registry.
ELEMENTS: dict[str, tuple[str, str]] = {}

AVERAGE_RESULTS = ("delay.twoway.icmp.us.min", "delay.twoway.icmp.us.mean",
                   "delay.twoway.icmp.us.max", "delay.twoway.icmp.count")
DETAIL_RESULTS = ("time", "delay.twoway.icmp.us")
# What the RI offers; existing clients send specifications against exactly this.
PING_WHEN = "now ... future / 1s"

# Linux values, the same on every architecture (linux/in.h, linux/in6.h); Python 3.11 lacks them.
IP_RECVERR = 11
IPV6_RECVERR = 25
# How often a wait for a reply looks at the job's stop event.
STOP_POLL_S = 0.05
RECEIVE_BUFFER = 2048
# 56 bytes of payload, as ping sends: 8 random bytes identify the job, the rest pads.
PAYLOAD_SIZE = 56
COOKIE_SIZE = 8

UNPRIVILEGED_HINT = (
    "ICMP sockets need root or CAP_NET_RAW, or unprivileged ICMP sockets for this group: "
    "sysctl -w net.ipv4.ping_group_range='0 2147483647' (this process runs as gid {gid})")
RAW_HINT = "raw ICMP sockets need root or CAP_NET_RAW (e.g. setcap cap_net_raw+ep on python)"


@dataclass(frozen=True)
class IcmpFamily:
    """What differs between ICMP for IPv4 and ICMPv6."""

    version: int
    address_family: int
    protocol: int
    echo_request: int
    echo_reply: int
    unreachable: int
    time_exceeded: int
    hop_limit: tuple[int, int]  # the socket option setting the TTL / hop limit of sends
    recverr: tuple[int, int]  # the option making ping sockets report ICMP errors
    any_address: str
    # Raw IPv4 sockets deliver the IP header, ICMPv6 ones start at the ICMP header.
    raw_has_ip_header: bool
    unreachable_reasons: Mapping[int, str]
    time_exceeded_reason: str

    @property
    def suffix(self) -> str:
        return f"ip{self.version}"


IP4 = IcmpFamily(
    version=4, address_family=socket.AF_INET, protocol=socket.IPPROTO_ICMP,
    echo_request=8, echo_reply=0, unreachable=3, time_exceeded=11,
    hop_limit=(socket.IPPROTO_IP, socket.IP_TTL), recverr=(socket.IPPROTO_IP, IP_RECVERR),
    any_address="0.0.0.0", raw_has_ip_header=True,
    unreachable_reasons={0: "network unreachable", 1: "host unreachable",
                         2: "protocol unreachable", 3: "port unreachable",
                         4: "fragmentation needed", 5: "source route failed",
                         6: "destination network unknown", 7: "destination host unknown",
                         9: "network administratively prohibited",
                         10: "host administratively prohibited",
                         13: "communication administratively prohibited"},
    time_exceeded_reason="time to live exceeded")
IP6 = IcmpFamily(
    version=6, address_family=socket.AF_INET6, protocol=socket.IPPROTO_ICMPV6,
    echo_request=128, echo_reply=129, unreachable=1, time_exceeded=3,
    hop_limit=(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
    recverr=(socket.IPPROTO_IPV6, IPV6_RECVERR), any_address="::", raw_has_ip_header=False,
    unreachable_reasons={0: "no route to destination",
                         1: "communication administratively prohibited",
                         2: "beyond scope of source address", 3: "address unreachable",
                         4: "port unreachable",
                         5: "source address failed ingress/egress policy",
                         6: "reject route to destination"},
    time_exceeded_reason="hop limit exceeded")
FAMILIES = {4: IP4, 6: IP6}


def internet_checksum(data: bytes) -> int:
    """The RFC 1071 one's complement sum, as the integer to put on the wire with ``"!H"``.

    Words are read in network order whatever the host's byte order, so the same code is right
    on big-endian MIPS routers and little-endian emulators.
    """
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: IcmpFamily, ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", family.echo_request, 0, 0, ident, seq)
    if family.version == 6:
        # ICMPv6 checksums cover a pseudo-header with the source address the kernel picks;
        # the kernel fills them in on raw and ping sockets alike.
        return header + payload
    checksum = internet_checksum(header + payload)
    return header[:2] + struct.pack("!H", checksum) + header[4:] + payload


@dataclass(frozen=True)
class IcmpMessage:
    source: str
    type: int
    code: int
    ident: int  # meaningful for echo messages only
    seq: int
    body: bytes  # the echo payload, or the start of the datagram an error is about
    received_ns: int  # time.perf_counter_ns() when read


@dataclass(frozen=True)
class Quoted:
    """The start of the datagram an ICMP error message is about."""

    protocol: int
    destination: bytes  # packed address
    transport: bytes  # the first 8 bytes of its transport header


def parse_icmp(packet: bytes, source: str, received_ns: int, ip_header: bool,
               ) -> IcmpMessage | None:
    if ip_header:
        if len(packet) < 20:
            return None
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < 8:
        return None
    icmp_type, code, _checksum, ident, seq = struct.unpack_from("!BBHHH", packet)
    return IcmpMessage(source=source, type=icmp_type, code=code, ident=ident, seq=seq,
                       body=packet[8:], received_ns=received_ns)


def quoted_datagram(family: IcmpFamily, body: bytes) -> Quoted | None:
    if family.version == 4:
        if len(body) < 20 or body[0] >> 4 != 4:
            return None
        start = (body[0] & 0x0F) * 4
        return Quoted(protocol=body[9], destination=body[16:20],
                      transport=body[start:start + 8])
    # Probes carry no extension headers, so the transport header follows the fixed one.
    if len(body) < 40 or body[0] >> 4 != 6:
        return None
    return Quoted(protocol=body[6], destination=body[24:40], transport=body[40:48])


def error_reason(family: IcmpFamily, message: IcmpMessage) -> str | None:
    """Why a message says a datagram did not arrive; None if it is no error message."""
    if message.type == family.time_exceeded:
        return f"{family.time_exceeded_reason} at {message.source}"
    if message.type == family.unreachable:
        reason = family.unreachable_reasons.get(message.code, f"unreachable (code {message.code})")
        return f"{reason} (reported by {message.source})"
    return None


def sockaddr(family: IcmpFamily, address: str, port: int = 0) -> Any:
    """A socket address for ``address``; keeps IPv6 scope ids (fe80::1%eth0)."""
    infos = socket.getaddrinfo(address, port, family.address_family, socket.SOCK_DGRAM, 0,
                               socket.AI_NUMERICHOST)
    return infos[0][4]


def strip_scope(address: str) -> str:
    return address.split("%", 1)[0]


def packed(address: str) -> bytes:
    return ipaddress.ip_address(strip_scope(address)).packed


# Raw sockets share the host's ICMP traffic: identifiers must differ between concurrent jobs.
_IDENTS = itertools.count(random.randrange(0x10000))


def open_icmp(family: IcmpFamily, raw_only: bool = False) -> tuple[socket.socket, bool]:
    """A raw ICMP socket when allowed, else an unprivileged one; and whether it is raw."""
    try:
        return socket.socket(family.address_family, socket.SOCK_RAW, family.protocol), True
    except PermissionError:
        if raw_only:
            raise MeasurementError(RAW_HINT) from None
    except OSError as exc:
        raise MeasurementError(f"cannot open an ICMP socket for IPv{family.version}: "
                               f"{exc.strerror}") from None
    try:
        return socket.socket(family.address_family, socket.SOCK_DGRAM, family.protocol), False
    except PermissionError:
        raise MeasurementError(UNPRIVILEGED_HINT.format(gid=os.getgid())) from None
    except OSError as exc:
        raise MeasurementError(f"cannot open an ICMP socket for IPv{family.version}: "
                               f"{exc.strerror}") from None


def bind_source(sock: socket.socket, family: IcmpFamily, source: str | None) -> None:
    try:
        sock.bind(sockaddr(family, source or family.any_address))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise MeasurementError(f"source address {source} is not an address of this host"
                                   ) from None
        raise MeasurementError(f"cannot bind to {source or family.any_address}: "
                               f"{exc.strerror}") from None


class IcmpSocket:
    """One job's ICMP socket: sends echo requests, reads ICMP messages until a deadline."""

    def __init__(self, family: IcmpFamily, source: str | None = None,
                 raw_only: bool = False) -> None:
        self.family = family
        self.sock, self.raw = open_icmp(family, raw_only)
        try:
            self._setup(source)
        except BaseException:
            self.sock.close()
            raise

    def _setup(self, source: str | None) -> None:
        if self.raw:
            if source:
                bind_source(self.sock, self.family, source)
            self.ident = next(_IDENTS) & 0xFFFF
            return
        # Ping sockets drop ICMP errors unless asked; the kernel picks the identifier (the
        # "port" of the socket) and only hands this socket the replies carrying it.
        self.sock.setsockopt(*self.family.recverr, 1)
        bind_source(self.sock, self.family, source)
        self.ident = self.sock.getsockname()[1]

    def __enter__(self) -> "IcmpSocket":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, destination: Any, packet: bytes, hop_limit: int | None = None) -> int:
        """Send; return time.perf_counter_ns() of the send."""
        if hop_limit is not None:
            self.sock.setsockopt(*self.family.hop_limit, hop_limit)
        sent_ns = time.perf_counter_ns()
        self.sock.sendto(packet, destination)
        return sent_ns

    def receive(self, deadline: float, stop: threading.Event) -> IcmpMessage | None:
        """The next ICMP message, or None at ``deadline`` (time.monotonic()) or when stopped.

        On ping sockets an ICMP error about a sent echo raises OSError (errno says which).
        """
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self.sock], [], [], min(remaining, STOP_POLL_S))
            if not readable:
                continue
            packet, address = self.sock.recvfrom(RECEIVE_BUFFER)
            message = parse_icmp(packet, strip_scope(address[0]), time.perf_counter_ns(),
                                 ip_header=self.raw and self.family.raw_has_ip_header)
            if message is not None:
                return message
        return None

    def drain_errors(self) -> None:
        """Forget queued ICMP errors (ping sockets), so the queue cannot fill up."""
        while True:
            try:
                self.sock.recvmsg(RECEIVE_BUFFER, RECEIVE_BUFFER,
                                  socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except OSError:
                return


@dataclass(frozen=True)
class Echo:
    """What became of one echo request: a round-trip time, an error, or neither (lost)."""

    rtt_us: int | None = None
    error: str | None = None


class Pinger:
    """Echo requests to one destination over one socket."""

    def __init__(self, sock: IcmpSocket, destination: str, timeout_s: float) -> None:
        self.sock = sock
        self.family = sock.family
        self.destination = destination
        self.address = sockaddr(sock.family, destination)
        self.packed = packed(destination)
        self.timeout_s = timeout_s
        self.payload = os.urandom(COOKIE_SIZE) + bytes(PAYLOAD_SIZE - COOKIE_SIZE)

    def echo(self, seq: int, stop: threading.Event) -> Echo:
        packet = echo_request(self.family, self.sock.ident, seq, self.payload)
        try:
            sent_ns = self.sock.send(self.address, packet)
        except OSError as exc:
            # No route, or (ping sockets) an ICMP error that came in after an earlier wait.
            self.sock.drain_errors()
            return Echo(error=exc.strerror)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = self.sock.receive(deadline, stop)
            except OSError as exc:
                self.sock.drain_errors()
                return Echo(error=exc.strerror)
            if message is None:
                return Echo()
            outcome = self._outcome(message, seq, sent_ns)
            if outcome is not None:
                return outcome

    def _outcome(self, message: IcmpMessage, seq: int, sent_ns: int) -> Echo | None:
        if is_echo_reply(self.family, message, self.sock.ident, seq, self.payload):
            return Echo(rtt_us=(message.received_ns - sent_ns) // 1000)
        reason = error_reason(self.family, message)
        if reason is not None and quotes_echo(self.family, message, self.packed,
                                              self.sock.ident, seq):
            return Echo(error=reason)
        return None


def is_echo_reply(family: IcmpFamily, message: IcmpMessage, ident: int, seq: int,
                  payload: bytes) -> bool:
    return (message.type == family.echo_reply and (message.ident, message.seq) == (ident, seq)
            and message.body == payload)


def quotes_echo(family: IcmpFamily, message: IcmpMessage, destination: bytes, ident: int,
                seq: int) -> bool:
    """Whether an ICMP error message is about our echo request ``seq`` to ``destination``."""
    quoted = quoted_datagram(family, message.body)
    if quoted is None or quoted.protocol != family.protocol \
            or quoted.destination != destination or len(quoted.transport) < 8:
        return False
    icmp_type, _code, _sum, quoted_ident, quoted_seq = struct.unpack("!BBHHH", quoted.transport)
    return (icmp_type, quoted_ident, quoted_seq) == (family.echo_request, ident, seq)


def source_param(parameters: Mapping[str, str], version: int) -> str | None:
    """The source address a specification asks for, or None to let routing choose."""
    name = f"source.ip{version}"
    if parameters.get(name, "*").strip() in ("", "*"):
        return None
    return ip_param(parameters, name, version)


def target_family(label: str, prefix: str, modes: tuple[str, ...]) -> tuple[str, IcmpFamily]:
    """Split ``<prefix>-<mode>-ip4`` into mode and family; MeasurementError unless offered."""
    mode, _, suffix = label.removeprefix(prefix + "-").rpartition("-")
    family = {"ip4": IP4, "ip6": IP6}.get(suffix)
    if not label.startswith(prefix + "-") or family is None or mode not in modes:
        raise MeasurementError(f"{prefix}: no capability {label!r}")
    return mode, family


def ipv6_available() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        return False
    return True


class PingMeasurement:
    name = "ping"

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        read = Options(options, OPTIONS)
        self.sources = {4: read.text("source_ip4"), 6: read.text("source_ip6")}
        self.timeout_s = read.integer("timeout_ms", minimum=1) / 1000

    def capabilities(self) -> list[CapabilityTemplate]:
        families = [IP4, IP6] if ipv6_available() else [IP4]
        templates = []
        for family in families:
            parameters = {f"destination.{family.suffix}": "*",
                          f"source.{family.suffix}": self.sources[family.version]}
            templates += [
                CapabilityTemplate(f"ping-average-{family.suffix}", parameters,
                                   AVERAGE_RESULTS, PING_WHEN),
                CapabilityTemplate(f"ping-detail-{family.suffix}", parameters,
                                   DETAIL_RESULTS, PING_WHEN),
            ]
        return templates

    def unavailable(self) -> str | None:
        try:
            IcmpSocket(IP4).close()
        except MeasurementError as exc:
            return str(exc)
        return None

    def run(self, job: Job) -> Iterator[Mapping[str, Any]]:
        mode, family = target_family(job.label, "ping", ("average", "detail"))
        destination = ip_param(job.parameters, f"destination.{family.suffix}", family.version)
        source = source_param(job.parameters, family.version)
        with IcmpSocket(family, source) as sock:
            pinger = Pinger(sock, destination, self.timeout_s)
            if mode == "detail":
                yield from self._detail(pinger, job)
            else:
                yield from self._average(pinger, job)

    def _echoes(self, pinger: Pinger, job: Job) -> Iterator[int]:
        """Round-trip times of the replies, one echo per tick; raises if none can arrive."""
        replies = 0
        sent = 0
        for seq, _tick in enumerate(job.ticks(), start=1):
            sent += 1
            echo = pinger.echo(seq & 0xFFFF, job.stop)
            # A first echo answered by an error means the destination cannot be reached; once
            # it has answered, an error is a transient loss like any other.
            if echo.error and not replies:
                raise MeasurementError(f"cannot ping {pinger.destination}: {echo.error}")
            if echo.rtt_us is not None:
                replies += 1
                yield echo.rtt_us
        if sent and not replies:
            raise MeasurementError(f"no reply from {pinger.destination}")

    def _detail(self, pinger: Pinger, job: Job) -> Iterator[Mapping[str, Any]]:
        for rtt in self._echoes(pinger, job):
            yield {"time": datetime.now(UTC), "delay.twoway.icmp.us": rtt}

    def _average(self, pinger: Pinger, job: Job) -> Iterator[Mapping[str, Any]]:
        rtts = list(self._echoes(pinger, job))
        if rtts:
            yield average_row(rtts)


def average_row(rtts: list[int]) -> dict[str, int]:
    # The RI truncates the mean to whole microseconds.
    return {"delay.twoway.icmp.us.min": min(rtts),
            "delay.twoway.icmp.us.mean": sum(rtts) // len(rtts),
            "delay.twoway.icmp.us.max": max(rtts),
            "delay.twoway.icmp.count": len(rtts)}
