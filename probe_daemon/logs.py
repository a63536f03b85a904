# SPDX-License-Identifier: Apache-2.0
"""Logging to stderr (procd and systemd capture it) or to syslog, with levels."""

import logging
import os
import socket

SYSLOG_SOCKETS = ("/dev/log", "/var/run/syslog")
LOG_DAEMON = 3  # syslog facility
_SEVERITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class SyslogHandler(logging.Handler):
    """Messages to the local syslog socket as logging.handlers.SysLogHandler sends them
    (``<priority>message`` and a NUL, facility daemon). Our own because logging.handlers
    imports pickle and queue, half a megabyte of a MiniProbe's memory, for handlers the
    daemon never uses."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        # busybox and systemd listen on a datagram socket; some syslogds on a stream one.
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
            else:
                return sock
        raise OSError(f"cannot connect to the syslog socket {self.address}")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            priority = LOG_DAEMON << 3 | _SEVERITY.get(record.levelname, 6)
            data = f"<{priority}>{self.format(record)}\0".encode()
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.sendall(data)
            except OSError:
                # syslogd restarted: its old socket is gone.
                self._sock.close()
                self._sock = self._connect()
                self._sock.sendall(data)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        super().close()


def setup(target: str, level: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler: logging.Handler
    if target == "syslog":
        address = next((s for s in SYSLOG_SOCKETS if os.path.exists(s)), None)
        if address is None:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("probe-daemon: %(levelname)s %(message)s"))
            root.addHandler(handler)
            root.setLevel(level.upper())
            logging.getLogger(__name__).warning("no syslog socket (%s); logging to stderr",
                                                ", ".join(SYSLOG_SOCKETS))
            return
        handler = SyslogHandler(address)
        handler.setFormatter(logging.Formatter("probe-daemon[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s probe-daemon %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
