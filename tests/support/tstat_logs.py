# SPDX-License-Identifier: Apache-2.0
"""Reading Tstat's logs, for the tests that check what it captured."""

from __future__ import annotations


def parse_tcp_complete(text: str) -> list[dict[str, str]]:
    """log_tcp_complete rows by column name, from its ``#15#c_ip:1 c_port:2 …`` header (the
    number after the first ``#`` is the log level: which tcplog_* blocks follow)."""
    names: list[str] = []
    rows = []
    for line in text.split("\n"):
        if line.startswith("#"):
            names = [word.split(":", 1)[0].rsplit("#", 1)[-1] for word in line.split()]
        elif line.strip() and names:
            rows.append(dict(zip(names, line.split(), strict=False)))
    return rows
