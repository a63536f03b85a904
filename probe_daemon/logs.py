# SPDX-License-Identifier: Apache-2.0
"""Logging to stderr (procd and systemd capture it) or to syslog, with levels."""

import logging
import logging.handlers
import os

SYSLOG_SOCKETS = ("/dev/log", "/var/run/syslog")


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
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("probe-daemon[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s probe-daemon %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
