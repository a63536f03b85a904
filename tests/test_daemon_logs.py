# SPDX-License-Identifier: Apache-2.0
"""The daemon's own syslog handler writes what logging.handlers.SysLogHandler would, to a
real datagram socket, and finds a restarted syslogd again."""

from __future__ import annotations

import logging
import logging.handlers
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe_daemon import logs


@pytest.fixture
def syslogd(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield path, sock
    sock.close()


def _record(level: int, text: str) -> logging.LogRecord:
    return logging.LogRecord("probe_daemon.x", level, __file__, 1, text, None, None)


def test_messages_match_the_stdlib_syslog_handler(syslogd):
    path, server = syslogd
    ours = logs.SyslogHandler(str(path))
    theirs = logging.handlers.SysLogHandler(
        address=str(path), facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    try:
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                      logging.CRITICAL):
            record = _record(level, "spool: 3 messages await délivery")
            ours.handle(record)
            theirs.handle(record)
            assert server.recv(4096) == server.recv(4096)
    finally:
        ours.close()
        theirs.close()


def test_a_restarted_syslogd_is_found_again(syslogd):
    path, server = syslogd
    handler = logs.SyslogHandler(str(path))
    try:
        handler.handle(_record(logging.WARNING, "one"))
        assert server.recv(4096) == b"<28>one\0"
        server.close()
        path.unlink()
        again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        again.bind(str(path))
        again.settimeout(5)
        with again:
            handler.handle(_record(logging.ERROR, "two"))
            assert again.recv(4096) == b"<27>two\0"
    finally:
        handler.close()


def test_setup_uses_the_first_syslog_socket_present(syslogd, monkeypatch):
    path, server = syslogd
    monkeypatch.setattr(logs, "SYSLOG_SOCKETS", (str(path.with_name("absent")), str(path)))
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.setup("syslog", "info")
        logging.getLogger("probe_daemon").info("registered %d capabilities", 13)
        logging.getLogger("probe_daemon").debug("not sent")
        assert server.recv(4096).startswith(b"<30>probe-daemon[")
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.recv(4096)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
