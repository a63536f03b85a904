# SPDX-License-Identifier: Apache-2.0
"""Traceroute done natively, by UDP datagrams or ICMP echo requests with increasing TTL.

Hop by hop (TTL / hop limit 1, 2, ...) ``probes_per_hop`` probes go out one after the other,
each waiting up to ``timeout_ms`` for its answer; one result row per hop. The trace ends at the
first hop where the destination answered (port unreachable for UDP, echo reply for ICMP) or a
router reported the destination unreachable, or after ``max_hops``.

Answers are ICMP errors (time exceeded, unreachable), which only a raw ICMP socket receives:
traceroute needs root or CAP_NET_RAW. Probes are sent one at a time, not in bursts, because
routers rate-limit the ICMP errors they send (Linux: a burst of 6 per source, then 1/s).
"""

import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from probe_daemon.measurements.base import (
    CapabilityTemplate,
    Job,
    MeasurementError,
    Options,
    ip_param,
)
from probe_daemon.measurements.ping import (
    COOKIE_SIZE,
    IP4,
    IP6,
    IcmpFamily,
    IcmpMessage,
    IcmpSocket,
    average_row,
    bind_source,
    echo_request,
    ipv6_available,
    is_echo_reply,
    packed,
    quoted_datagram,
    quotes_echo,
    sockaddr,
    source_param,
    target_family,
)

OPTIONS: dict[str, tuple[str, str]] = {
    "source_ip4": ("*", "source.ip4 addresses clients may choose (constraint: *, a list a,b or "
                        "a range a ... b)"),
    "source_ip6": ("*", "source.ip6 addresses clients may choose, as source_ip4"),
    "probes_per_hop": ("3", "probes sent to each hop"),
    "max_hops": ("30", "the largest TTL (hop limit) tried before giving up"),
    "timeout_ms": ("1000", "how long to wait for the answer to each probe, in milliseconds"),
}
# Every element used is in the mPlane core registry.
ELEMENTS: dict[str, tuple[str, str]] = {}

# One run per specification; "now + 30s" is accepted too and runs once.
TRACEROUTE_WHEN = "now"
MODES = ("udp", "icmp")  # what probes are sent: the <mode> of traceroute-<mode>-ip4
# Classic traceroute's destination ports: unlikely to have a listener.
BASE_PORT = 33434
UDP_PAYLOAD = bytes(32)
NO_ANSWER = "*"
MAX_TTL = 255
MAX_PROBES_PER_HOP = 10


def results(family: IcmpFamily) -> tuple[str, ...]:
    return ("hops.ip", f"intermediate.{family.suffix}", "delay.twoway.icmp.us.min",
            "delay.twoway.icmp.us.mean", "delay.twoway.icmp.us.max", "delay.twoway.icmp.count")


@dataclass(frozen=True)
class Answer:
    """Who answered one probe, after how long, and whether the path ends there."""

    address: str
    rtt_us: int
    final: bool


class Prober(Protocol):
    def send(self, ttl: int, seq: int) -> int:
        """Send probe ``seq`` with this TTL; return time.perf_counter_ns() of the send."""
        ...

    def answer(self, message: IcmpMessage, seq: int, sent_ns: int) -> Answer | None:
        """The answer to probe ``seq`` if ``message`` is one."""
        ...

    def close(self) -> None: ...


def rtt_us(message: IcmpMessage, sent_ns: int) -> int:
    return (message.received_ns - sent_ns) // 1000


class UdpProber:
    """UDP datagrams to ports BASE_PORT + seq; the source port tells our probes apart."""

    def __init__(self, icmp: IcmpSocket, destination: str, source: str | None) -> None:
        self.family = icmp.family
        self.destination = destination
        self.packed = packed(destination)
        self.udp = socket.socket(self.family.address_family, socket.SOCK_DGRAM)
        try:
            bind_source(self.udp, self.family, source)
        except BaseException:
            self.udp.close()
            raise
        self.port = self.udp.getsockname()[1]

    def send(self, ttl: int, seq: int) -> int:
        self.udp.setsockopt(*self.family.hop_limit, ttl)
        address = sockaddr(self.family, self.destination, BASE_PORT + seq)
        sent_ns = time.perf_counter_ns()
        self.udp.sendto(UDP_PAYLOAD, address)
        return sent_ns

    def answer(self, message: IcmpMessage, seq: int, sent_ns: int) -> Answer | None:
        if message.type not in (self.family.time_exceeded, self.family.unreachable):
            return None
        quoted = quoted_datagram(self.family, message.body)
        if quoted is None or quoted.protocol != socket.IPPROTO_UDP \
                or quoted.destination != self.packed or len(quoted.transport) < 4:
            return None
        ports = struct.unpack_from("!HH", quoted.transport)
        if ports != (self.port, BASE_PORT + seq):
            return None
        return Answer(message.source, rtt_us(message, sent_ns),
                      final=message.type == self.family.unreachable)

    def close(self) -> None:
        self.udp.close()


class EchoProber:
    """ICMP echo requests, told apart by identifier and sequence number."""

    def __init__(self, icmp: IcmpSocket, destination: str) -> None:
        self.icmp = icmp
        self.family = icmp.family
        self.address = sockaddr(self.family, destination)
        self.packed = packed(destination)
        self.payload = os.urandom(COOKIE_SIZE)

    def send(self, ttl: int, seq: int) -> int:
        packet = echo_request(self.family, self.icmp.ident, seq, self.payload)
        return self.icmp.send(self.address, packet, hop_limit=ttl)

    def answer(self, message: IcmpMessage, seq: int, sent_ns: int) -> Answer | None:
        if is_echo_reply(self.family, message, self.icmp.ident, seq, self.payload):
            return Answer(message.source, rtt_us(message, sent_ns), final=True)
        if message.type in (self.family.time_exceeded, self.family.unreachable) \
                and quotes_echo(self.family, message, self.packed, self.icmp.ident, seq):
            return Answer(message.source, rtt_us(message, sent_ns),
                          final=message.type == self.family.unreachable)
        return None

    def close(self) -> None:
        """The ICMP socket belongs to the caller."""


def hop_row(family: IcmpFamily, ttl: int, answers: list[Answer]) -> dict[str, Any]:
    """One row per hop; several routers answering one hop (ECMP) show as the first one."""
    intermediate = f"intermediate.{family.suffix}"
    if not answers:
        return {"hops.ip": ttl, intermediate: NO_ANSWER, "delay.twoway.icmp.us.min": NO_ANSWER,
                "delay.twoway.icmp.us.mean": NO_ANSWER, "delay.twoway.icmp.us.max": NO_ANSWER,
                "delay.twoway.icmp.count": 0}
    return {"hops.ip": ttl, intermediate: answers[0].address,
            **average_row([answer.rtt_us for answer in answers])}


def started(job: Job) -> bool:
    """Wait for the start of the scope; False if stopped first. Only the first tick counts."""
    for _tick in job.ticks():
        return True
    return False


class Tracer:
    """One trace: probes hop by hop over a prober, answers read from the raw ICMP socket."""

    def __init__(self, icmp: IcmpSocket, prober: Prober, destination: str, timeout_s: float,
                 stop: threading.Event) -> None:
        self.icmp = icmp
        self.prober = prober
        self.destination = destination
        self.timeout_s = timeout_s
        self.stop = stop
        self.seq = itertools.count()

    def hops(self, max_hops: int, probes: int) -> Iterator[dict[str, Any]]:
        for ttl in range(1, max_hops + 1):
            answers = self._hop(ttl, probes)
            if self.stop.is_set():
                return  # an interrupted hop has no meaningful row
            yield hop_row(self.icmp.family, ttl, answers)
            if any(answer.final for answer in answers):
                return

    def _hop(self, ttl: int, probes: int) -> list[Answer]:
        answers = []
        for _ in range(probes):
            if self.stop.is_set():
                break
            answer = self._probe(ttl, next(self.seq))
            if answer is not None:
                answers.append(answer)
        return answers

    def _probe(self, ttl: int, seq: int) -> Answer | None:
        try:
            sent_ns = self.prober.send(ttl, seq)
        except OSError as exc:
            raise MeasurementError(f"cannot trace {self.destination}: {exc.strerror}") from None
        deadline = time.monotonic() + self.timeout_s
        while (message := self.icmp.receive(deadline, self.stop)) is not None:
            answer = self.prober.answer(message, seq, sent_ns)
            if answer is not None:
                return answer
        return None


class _Probing:
    """The sockets of one run, closed together."""

    def __init__(self, family: IcmpFamily, mode: str, destination: str,
                 source: str | None) -> None:
        self.icmp = IcmpSocket(family, source, raw_only=True)
        try:
            self.prober: Prober = (UdpProber(self.icmp, destination, source) if mode == "udp"
                                   else EchoProber(self.icmp, destination))
        except BaseException:
            self.icmp.close()
            raise

    def __enter__(self) -> "_Probing":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.prober.close()
        self.icmp.close()


class TracerouteMeasurement:
    name = "traceroute"

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        read = Options(options, OPTIONS)
        self.sources = {4: read.text("source_ip4"), 6: read.text("source_ip6")}
        self.probes = read.integer("probes_per_hop", minimum=1, maximum=MAX_PROBES_PER_HOP)
        self.max_hops = read.integer("max_hops", minimum=1, maximum=MAX_TTL)
        self.timeout_s = read.integer("timeout_ms", minimum=1) / 1000

    def capabilities(self) -> list[CapabilityTemplate]:
        families = [IP4, IP6] if ipv6_available() else [IP4]
        return [CapabilityTemplate(
                    f"traceroute-{mode}-{family.suffix}",
                    {f"destination.{family.suffix}": "*",
                     f"source.{family.suffix}": self.sources[family.version]},
                    results(family), TRACEROUTE_WHEN)
                for family in families for mode in MODES]

    def unavailable(self) -> str | None:
        try:
            IcmpSocket(IP4, raw_only=True).close()
        except MeasurementError as exc:
            return f"traceroute: {exc}"
        return None

    def run(self, job: Job) -> Iterator[Mapping[str, Any]]:
        mode, family = target_family(job.label, "traceroute", MODES)
        destination = ip_param(job.parameters, f"destination.{family.suffix}", family.version)
        source = source_param(job.parameters, family.version)
        if not started(job):
            return
        with _Probing(family, mode, destination, source) as probing:
            tracer = Tracer(probing.icmp, probing.prober, destination, self.timeout_s, job.stop)
            yield from tracer.hops(self.max_hops, self.probes)
