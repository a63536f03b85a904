# SPDX-License-Identifier: Apache-2.0
"""SSH to a MiniProbe, emulated or real: commands and file copies.

Dropbear on a MiniProbe has no sftp server, so files travel as ``cat`` over the session into
a ``.part`` file renamed when complete. Host keys are not pinned: an emulated board makes new
ones on first boot, and the identity that matters (the probe's certificate) is checked
through the supervisor.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rig import RigError

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=3")


def quote(text: str) -> str:
    """``text`` as one word for the device's POSIX shell."""
    return "'" + text.replace("'", "'\\''") + "'"


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    key: Path | None = None
    user: str = "root"

    def command(self, command: str) -> list[str]:
        key = ["-i", str(self.key)] if self.key else []
        return ["ssh", *SSH_OPTIONS, *key, "-p", str(self.port), f"{self.user}@{self.host}",
                command]

    def run(self, command: str, *, timeout: float = 120, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the device's shell; RigError when it fails and ``check``."""
        try:
            result = subprocess.run(self.command(command), input=stdin, capture_output=True,
                                    timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RigError(f"ssh {command!r} to {self.host}:{self.port} took more than "
                           f"{timeout:.0f} s") from None
        done = subprocess.CompletedProcess(result.args, result.returncode,
                                           result.stdout.decode(errors="replace"),
                                           result.stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            raise RigError(f"ssh {command!r} on {self.host}:{self.port} exited "
                           f"{done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}")
        return done

    def put(self, local: Path, remote: str, *, timeout: float = 300) -> None:
        """Copy ``local`` to ``remote`` on the device, complete or not at all."""
        with local.open("rb") as data:
            try:
                result = subprocess.run(
                    self.command(f"cat > {quote(remote)}.part && mv {quote(remote)}.part "
                                 f"{quote(remote)}"),
                    stdin=data, capture_output=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise RigError(f"copying {local} to {self.host}:{self.port} took more than "
                               f"{timeout:.0f} s") from None
        if result.returncode != 0:
            raise RigError(f"copying {local} to {self.host}:{remote} failed: "
                           f"{result.stderr.decode(errors='replace').strip()[-500:]}")

    def failure(self, timeout: float = 20) -> str | None:
        """None when a command runs on the device now, else why not (ssh's own words, or
        what the port answered: an open port proves little, QEMU accepts before the guest
        listens)."""
        try:
            result = subprocess.run(self.command("true"), capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"ssh took more than {timeout:.0f} s ({self.banner()})"
        if result.returncode == 0:
            return None
        said = result.stderr.decode(errors="replace").strip().splitlines()
        return f"ssh exited {result.returncode}: {said[-1] if said else 'no message'}"

    def banner(self, timeout: float = 5) -> str:
        """What the port says first: an SSH banner, nothing, or a refusal."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                first = sock.recv(256)
        except TimeoutError:
            return f"the port accepted but sent no banner within {timeout:g} s"
        except OSError as exc:
            return f"the port: {exc.strerror or exc}"
        if not first:
            return "the port accepted and closed at once"
        return f"banner {first.splitlines()[0].decode(errors='replace')!r}"
