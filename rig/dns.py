# SPDX-License-Identifier: Apache-2.0
"""A real DNS server on 127.0.0.1: dnsmasq, hermetic, started and stopped by PID.

The rig's emulated MiniProbes ask it (at 10.0.2.2 from inside QEMU's user network) for the
testbed's own names, so that no DNS query of the rig leaves the machine; the tests use it as
the server their DNS measurements ask."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

from probe_daemon.measurements.base import MeasurementError
from probe_daemon.measurements.dns import Server, query

DNSMASQ = shutil.which("dnsmasq", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


class DnsmasqError(RuntimeError):
    pass


def base_args(port: int) -> list[str]:
    """A hermetic dnsmasq: no config file, no upstream, no /etc/hosts, loopback only."""
    return [DNSMASQ or "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--pid-file=",
            "--no-resolv", "--no-hosts", f"--port={port}", "--listen-address=127.0.0.1",
            "--bind-interfaces"]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq needs both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@contextlib.contextmanager
def running_dnsmasq(records: Callable[[int], list[str]], ready_name: str,
                    port: int | None = None,
                    started: Callable[[int], None] | None = None) -> Iterator[Server]:
    """Run dnsmasq with ``base_args(port) + records(port)`` until it answers ``ready_name``;
    on ``port``, or on a free one. ``started`` learns its PID, to record it."""
    if DNSMASQ is None:
        raise DnsmasqError("no dnsmasq binary (Debian: dnsmasq-base)")
    attempts = 1 if port else 5
    tried: list[int] = []
    for _attempt in range(attempts):
        port = port if port and not tried else free_port()
        tried.append(port)
        proc = subprocess.Popen(base_args(port) + records(port), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        server = Server("127.0.0.1", port)
        deadline = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                query(server, ready_name, 1, timeout_s=0.1, retries=0)
                break
            except MeasurementError:
                continue
        else:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            log = proc.communicate(timeout=5)[0]
            if b"in use" in log:
                if len(tried) == attempts:
                    raise DnsmasqError(f"port {port} is in use: free it, or give dnsmasq "
                                       "another port")
                continue  # lost the port to someone else between the probe and the bind
            raise DnsmasqError(f"dnsmasq did not start: {log.decode(errors='replace')}")
        break
    else:
        raise DnsmasqError("no free port for dnsmasq after 5 attempts")
    if started is not None:
        started(proc.pid)
    try:
        yield server
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
