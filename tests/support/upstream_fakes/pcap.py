# SPDX-License-Identifier: Apache-2.0
"""Small, deterministic pcap files of complete TCP connections, written with ``struct`` only.

Every connection is a real one as far as a flow meter can tell: three-way handshake, some
data each way with matching sequence and acknowledgement numbers, FIN from both sides, valid
IPv4 and TCP checksums. Tstat (real or fake) logs each of them in ``log_tcp_complete``.
"""

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

LINKTYPE_ETHERNET = 1
_CLIENT_MAC = bytes.fromhex("020000000001")
_SERVER_MAC = bytes.fromhex("020000000002")


@dataclass(frozen=True)
class Flow:
    client: str
    client_port: int
    server: str
    server_port: int
    upload: int = 200  # payload bytes client -> server
    download: int = 1000  # payload bytes server -> client


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packet(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
            payload: bytes, ident: int, from_client: bool) -> bytes:
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    macs = (_SERVER_MAC + _CLIENT_MAC) if from_client else (_CLIENT_MAC + _SERVER_MAC)
    return macs + b"\x08\x00" + ip + tcp + payload


SYN, FIN, ACK, PSH = 0x02, 0x01, 0x10, 0x08


def _flow_packets(flow: Flow, start: float, ident: int) -> list[tuple[float, bytes]]:
    c = (flow.client, flow.client_port)
    s = (flow.server, flow.server_port)
    cseq, sseq = 1000, 5000
    steps: list[tuple[bool, int, bytes]] = [(True, SYN, b""), (False, SYN | ACK, b""),
                                            (True, ACK, b"")]
    steps.append((True, PSH | ACK, b"G" * flow.upload))
    steps.append((False, ACK, b""))
    for offset in range(0, flow.download, 1000):
        steps.append((False, PSH | ACK, b"R" * min(1000, flow.download - offset)))
    steps.append((True, ACK, b""))
    steps += [(True, FIN | ACK, b""), (False, FIN | ACK, b""), (True, ACK, b"")]
    packets = []
    t = start
    for from_client, flags, payload in steps:
        # Sequence numbers: what the sender has sent so far; acks: what it has received.
        if from_client:
            raw = _packet(*c, *s, cseq, sseq if flags & ACK else 0, flags, payload, ident, True)
            cseq += len(payload) + (1 if flags & (SYN | FIN) else 0)
        else:
            raw = _packet(*s, *c, sseq, cseq, flags, payload, ident, False)
            sseq += len(payload) + (1 if flags & (SYN | FIN) else 0)
        packets.append((t, raw))
        ident += 1
        t += 0.002
    return packets


def write_pcap(path: Path, flows: list[Flow], start: float = 1_700_000_000.0) -> Path:
    """Write ``flows`` one after the other (1 s apart) as a classic little-endian pcap."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    for number, flow in enumerate(flows):
        for t, raw in _flow_packets(flow, start + number, ident=number * 100):
            seconds = int(t)
            micros = round((t - seconds) * 1_000_000)
            out.append(struct.pack("<IIII", seconds, micros, len(raw), len(raw)) + raw)
    path.write_bytes(b"".join(out))
    return path


def sample_flows(count: int = 3) -> list[Flow]:
    """``count`` connections from one client to a web server (distinct client ports)."""
    return [Flow("192.168.10.2", 40000 + n, "198.51.100.80", 80, upload=100 + n,
                 download=1500 + 1000 * n) for n in range(count)]
