# SPDX-License-Identifier: Apache-2.0
"""rig.ssh says why a device's SSH does not answer: the words a failed boot wait reports.

The "devices" are loopback sockets this test serves: a refused port, a port that accepts and
closes (what QEMU's forwarded port does before the guest listens), one that accepts and says
nothing, and one that sends an SSH banner and then nothing more."""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rig.ssh import SshEndpoint


@contextmanager
def serving(behaviour: str) -> Iterator[int]:
    """A loopback port that treats every connection as ``behaviour`` says."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if behaviour == "close":
                conn.close()
                continue
            if behaviour == "banner":
                conn.sendall(b"SSH-2.0-dropbear_2022.83\r\n")
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_banner_tells_refused_closed_silent_and_ssh_apart():
    assert "Connection refused" in SshEndpoint("127.0.0.1", free_port()).banner()
    with serving("close") as port:
        assert SshEndpoint("127.0.0.1", port).banner() == "the port accepted and closed at once"
    with serving("silent") as port:
        assert SshEndpoint("127.0.0.1", port).banner(timeout=0.5) == (
            "the port accepted but sent no banner within 0.5 s")
    with serving("banner") as port:
        assert SshEndpoint("127.0.0.1", port).banner() == "banner 'SSH-2.0-dropbear_2022.83'"


def test_failure_names_what_ssh_said_and_what_the_port_did():
    refused = SshEndpoint("127.0.0.1", free_port()).failure()
    assert refused is not None and refused.startswith("ssh exited 255: ")
    assert "refused" in refused
    with serving("banner") as port:
        stalled = SshEndpoint("127.0.0.1", port).failure(timeout=2)
    assert stalled == "ssh took more than 2 s (banner 'SSH-2.0-dropbear_2022.83')"
