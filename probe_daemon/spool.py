# SPDX-License-Identifier: Apache-2.0
"""Outgoing messages on disk until the supervisor has them.

One file per message, named by a sequence number, written to a temporary name, synced and
renamed: a ``kill -9`` at any moment leaves either no file or a complete one (flash storage
included). Delivery is oldest first; a file is deleted only after the supervisor accepted it.
The spool is bounded in messages and bytes; when full, the oldest messages go first and the
count is logged — never silently.
"""

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".msg"


class Spool:
    def __init__(self, directory: Path, max_messages: int, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in self.directory.glob(".*.tmp"):
            # An interrupted write: the message was never committed.
            leftover.unlink(missing_ok=True)
        self._entries: list[tuple[int, Path, int]] = sorted(
            (int(p.stem), p, p.stat().st_size) for p in self.directory.glob(f"*{SUFFIX}")
            if p.stem.isdigit())
        self._next = self._entries[-1][0] + 1 if self._entries else 1
        if self._entries:
            log.info("spool: %d messages from before the restart await delivery",
                     len(self._entries))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, body: bytes) -> None:
        with self._lock:
            seq = self._next
            self._next += 1
            path = self.directory / f"{seq:012d}{SUFFIX}"
            tmp = self.directory / f".{seq:012d}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._entries.append((seq, path, len(body)))
            self._enforce_bounds()
            self._ready.notify_all()

    def _enforce_bounds(self) -> None:
        dropped = 0
        total = sum(size for _, _, size in self._entries)
        while self._entries and (len(self._entries) > self.max_messages
                                 or total > self.max_bytes):
            _, path, size = self._entries.pop(0)
            path.unlink(missing_ok=True)
            total -= size
            dropped += 1
        if dropped:
            self.dropped += dropped
            log.warning("spool full (%d messages, %d bytes at most): dropped the %d oldest "
                        "undelivered messages, %d in all since start", self.max_messages,
                        self.max_bytes, dropped, self.dropped)

    def peek(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The oldest message, waiting up to ``timeout`` for one."""
        with self._lock:
            if not self._entries:
                self._ready.wait(timeout)
            while self._entries:
                seq, path, _ = self._entries[0]
                try:
                    return seq, path.read_bytes()
                except FileNotFoundError:
                    self._entries.pop(0)
            return None

    def done(self, seq: int) -> None:
        with self._lock:
            for index, (entry_seq, path, _) in enumerate(self._entries):
                if entry_seq == seq:
                    path.unlink(missing_ok=True)
                    del self._entries[index]
                    return

    def wake(self) -> None:
        with self._lock:
            self._ready.notify_all()
