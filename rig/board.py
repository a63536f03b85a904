# SPDX-License-Identifier: Apache-2.0
"""One emulated MiniProbe: the bootloader, QEMU, and the reboots in between.

:class:`EmulatedBoard` plays the board's bootloader (docs/firmware.md, "Boot"): it reads the
boot environment from the flash file, checks the active slot's image there (falling back to
the other slot when it is invalid), takes the kernel and the initramfs out of that image, and
starts ``qemu-system-mipsel -M malta`` with the flash as a virtio disk and the slot and the
offsets of the ``rootfs`` and ``host`` parts on the kernel command line. QEMU runs with
``-no-reboot``: a guest reboot ends it, and the bootloader reads the flash again and boots
what is active now — that is how a sysupgrade lands. A guest power-off ends the board.

The serial console is appended to ``console_log`` (and offered on a loopback TCP port when
``console_port`` is given); the bootloader's own lines, prefixed ``[rig]``, go there too, as
a real bootloader prints on its serial port. QEMU is stopped by its PID, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from firmware.image import ImageHeader, extract_part
from rig import RigError
from rig.flash import FlashError, active_image, read_bootenv, read_layout
from rig.ssh import SshEndpoint

# PCI slots of malta's PIIX4 with an interrupt line each (see qemu_command).
NIC_SLOT = 18
FLASH_SLOT = 20
QEMU = "qemu-system-mipsel"
# A guest that reboots this many times in a row, each time within QUICK_BOOT_S of power-on
# (a healthy one needs ~8 s to reach SSH), is in a boot loop: the board stops.
MAX_QUICK_REBOOTS = 10
QUICK_BOOT_S = 5.0


@dataclass
class Boot:
    """One power-on: what the bootloader chose and how it ended."""

    number: int
    slot: str
    header: ImageHeader
    fallback: bool  # the active slot was invalid; this is the other one
    cmdline: str
    started: float
    pid: int = 0
    ended: float | None = None
    reason: str | None = None  # QEMU's SHUTDOWN reason: guest-reset, guest-shutdown, …
    returncode: int | None = None


@dataclass(frozen=True)
class GuestForward:
    """A guest connection to ``guest_address:guest_port`` (inside QEMU's user network)
    carried to ``host_address:host_port`` on the host (needed with ``restrict``)."""

    guest_address: str
    guest_port: int
    host_address: str
    host_port: int


@dataclass
class _State:
    boots: list[Boot] = field(default_factory=list)
    error: str | None = None
    finished: bool = False


class EmulatedBoard:
    """An emulated MiniProbe booted from ``flash``; ``workdir`` holds what the bootloader
    extracted, QEMU's log, its PID file and its QMP socket."""

    def __init__(self, flash: Path, workdir: Path, *, ssh_port: int, console_log: Path,
                 memory_mib: int = 256, ssh_key: Path | None = None,
                 console_port: int | None = None, guest_address: str | None = None,
                 restrict_network: bool = False, guest_forwards: Sequence[GuestForward] = (),
                 host_forwards: Sequence[tuple[int, int]] = (),
                 board: str | None = "qemu-malta-mipsel", machine: str = "malta",
                 extra_cmdline: Sequence[str] = (), extra_qemu_args: Sequence[str] = (),
                 qemu: str = QEMU) -> None:
        self.flash = flash.resolve()
        self.workdir = workdir.resolve()
        self.ssh_port = ssh_port
        self.console_log = console_log.resolve()
        self.memory_mib = memory_mib
        self.ssh_key = ssh_key
        self.console_port = console_port
        self.guest_address = guest_address
        self.restrict_network = restrict_network
        self.guest_forwards = tuple(guest_forwards)
        self.host_forwards = tuple(host_forwards)
        self.board = board
        self.machine = machine
        self.extra_cmdline = tuple(extra_cmdline)
        self.extra_qemu_args = tuple(extra_qemu_args)
        self.qemu = qemu
        self._state = _State()
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._socket_dir: str | None = None

    # --- public interface -------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> EmulatedBoard:
        """Power on: boot in a background thread that survives the guest's reboots until
        :meth:`stop`. Returns once QEMU runs (``pid`` is set); RigError when the bootloader
        finds nothing to boot or QEMU does not start."""
        if self._thread is not None:
            raise RigError("this board was started already: stop() it, or make a new one")
        if shutil.which(self.qemu) is None:
            raise RigError(f"{self.qemu} not found: apt-get install qemu-system-mips")
        read_layout(self.flash)  # a missing or foreign flash fails here, not in the thread
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        self.console_log.touch()
        self._thread = threading.Thread(target=self._run, name=f"board-{self.ssh_port}",
                                        daemon=True)
        self._thread.start()
        try:
            self.wait_boot(1, timeout)
        except RigError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Power off: SIGTERM to QEMU's PID, SIGKILL if it lingers; wait for the thread."""
        self._stopping.set()
        self._terminate(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        with self._lock:
            ended = self._state.finished
        if not ended:  # the thread returned without a word: the board is off, no error
            self._finish(None)

    def power_cut(self, timeout: float = 20.0) -> int | None:
        """Pull the plug: SIGKILL to QEMU's PID, so the guest gets no chance to sync or shut
        down (what it still held in its page cache never reaches the flash, as in a real
        power cut), and end the board: no reboot follows. Power on again with a new board on
        the same flash. Returns the PID killed, None when no QEMU ran (between two
        power-ons)."""
        # Stopping first: the thread must not take QEMU's end for a guest reboot or an error.
        self._stopping.set()
        process = self._process
        killed = None
        if process is not None and process.poll() is None:
            self._say("power cut: SIGKILL to QEMU")
            try:
                os.kill(process.pid, signal.SIGKILL)
                killed = process.pid
            except ProcessLookupError:
                pass
            process.wait(timeout)
        self.stop(timeout)
        return killed

    def __enter__(self) -> EmulatedBoard:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """PID of the running QEMU, None between boots and after stop."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def boots(self) -> list[Boot]:
        with self._lock:
            return list(self._state.boots)

    @property
    def boot_count(self) -> int:
        with self._lock:
            return len(self._state.boots)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> str | None:
        with self._lock:
            return self._state.error

    def wait_boot(self, count: int, timeout: float) -> Boot:
        """Wait until the ``count``-th power-on (1 is the first) has started."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._state.boots) < count:
                self._raise_if_finished()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RigError(f"board on port {self.ssh_port} did not boot a {count}. "
                                   f"time within {timeout:.0f} s{self._console_tail()}")
                self._lock.wait(min(left, 1.0))
            return self._state.boots[count - 1]

    @property
    def endpoint(self) -> SshEndpoint:
        if self.ssh_key is None:
            raise RigError("this board has no ssh_key: pass the private key whose public half "
                           "is in the image's /etc/dropbear/authorized_keys")
        return SshEndpoint("127.0.0.1", self.ssh_port, self.ssh_key)

    def ssh_command(self, command: str) -> list[str]:
        return self.endpoint.command(command)

    def ssh(self, command: str, *, timeout: float = 120, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the guest's shell; RigError when it fails and ``check``."""
        return self.endpoint.run(command, timeout=timeout, check=check, stdin=stdin)

    def put(self, local: Path, remote: str, *, timeout: float = 300) -> None:
        """Copy a file into the guest (dropbear has no sftp server; ``cat`` does)."""
        self.endpoint.put(local, remote, timeout=timeout)

    def wait_ssh(self, timeout: float = 120) -> float:
        """Wait until the guest's SSH server runs a command (an open forwarded port proves
        nothing: QEMU accepts before the guest listens); return the seconds waited."""
        start = time.monotonic()
        deadline = start + timeout
        endpoint = self.endpoint
        while True:
            with self._lock:
                self._raise_if_finished()
            failure = endpoint.failure(timeout=20)
            if failure is None:
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise RigError(f"no SSH on port {self.ssh_port} within {timeout:.0f} s, last "
                               f"try: {failure}; {endpoint.banner()} (console: "
                               f"{self.console_log}){self._console_tail()}")
            time.sleep(1.0)

    # --- the bootloader -------------------------------------------------------------------

    def choose(self) -> tuple[str, ImageHeader, bool]:
        """What the bootloader boots now: (slot, header, fell back to the other slot)."""
        slot, header = active_image(self.flash, board=self.board)
        try:
            fallback = read_bootenv(self.flash).active != slot
        except FlashError:
            fallback = False
        return slot, header, fallback

    def cmdline(self, slot: str, header: ImageHeader) -> str:
        rootfs, host = header.part("rootfs"), header.part("host")
        words = ["console=ttyS0", f"pf.slot={slot}", f"pf.rootfs={rootfs.offset}:{rootfs.size}",
                 f"pf.host={host.offset}:{host.size}", f"pf.epoch={int(time.time())}",
                 *self.extra_cmdline]
        return " ".join(words)

    def qemu_command(self, kernel: Path, initramfs: Path, cmdline: str) -> list[str]:
        """The QEMU command line of one power-on."""
        nic = ["user", "id=net", f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"]
        nic += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in self.host_forwards]
        if self.guest_address:
            nic.append(f"dhcpstart={self.guest_address}")
        if self.restrict_network:
            nic.append("restrict=on")
        nic += [f"guestfwd=tcp:{f.guest_address}:{f.guest_port}-tcp:{f.host_address}:"
                f"{f.host_port}" for f in self.guest_forwards]
        if self.console_port is not None:
            console = (f"socket,id=console,host=127.0.0.1,port={self.console_port},server=on,"
                       f"wait=off,logfile={self.console_log},logappend=on")
        else:
            console = f"file,id=console,path={self.console_log},append=on"
        return [self.qemu, "-M", self.machine, "-m", str(self.memory_mib),
                "-accel", "tcg,thread=multi", "-nodefaults", "-display", "none",
                "-no-reboot", "-kernel", str(kernel), "-initrd", str(initramfs),
                "-append", cmdline,
                "-drive", f"file={self.flash},format=raw,if=none,id=flash",
                # Malta's PIIX4 routes PCI slots 18/19 to IRQ 10 and 20/21 to IRQ 11, and
                # Linux drives that i8259 edge-triggered: two busy devices on one line lose an
                # interrupt sooner or later (the line never drops, so no new edge comes) and
                # both stop for good. So the flash and the NIC get a line each, and there is
                # no third device (no virtio-rng: the kernel's RNG is ready at boot without
                # it, as on a real MiniProbe, which has none either).
                "-device", f"virtio-blk-pci,drive=flash,addr={FLASH_SLOT:#x}",
                "-netdev", ",".join(nic),
                "-device", f"virtio-net-pci,netdev=net,addr={NIC_SLOT:#x}",
                "-chardev", console, "-serial", "chardev:console",
                "-qmp", f"unix:{self._qmp_path()},server=on,wait=off",
                "-pidfile", str(self.workdir / "qemu.pid"),
                *self.extra_qemu_args]

    # --- internals ------------------------------------------------------------------------

    def _qmp_path(self) -> Path:
        # A unix socket path has ~107 bytes; a test's workdir may be longer.
        if self._socket_dir is None:
            self._socket_dir = tempfile.mkdtemp(prefix="pf-board-")
        return Path(self._socket_dir) / "qmp.sock"

    def _say(self, line: str) -> None:
        with self.console_log.open("a+b") as log:
            # The guest's last words often lack a newline ("Please press Enter…").
            start = b""
            if log.tell() > 0:
                log.seek(-1, os.SEEK_END)
                start = b"" if log.read(1) == b"\n" else b"\n"
            log.write(start + f"[rig] {line}\n".encode())

    def _console_tail(self, lines: int = 15) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return "\nconsole:\n  " + "\n  ".join(tail) if tail else ""

    def _raise_if_finished(self) -> None:
        if self._state.finished:
            reason = self._state.error or "the board is off"
            raise RigError(f"board on port {self.ssh_port} stopped: {reason}"
                           f"{self._console_tail()}")

    def _finish(self, error: str | None) -> None:
        with self._lock:
            self._state.error = error
            self._state.finished = True
            self._lock.notify_all()
        if error:
            self._say(f"stopped: {error}")

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a thread has nobody to raise to: record it
            self._finish(f"{type(exc).__name__}: {exc}")
        finally:
            self._process = None

    def _loop(self) -> None:
        quick = 0
        while not self._stopping.is_set():
            try:
                slot, header, fallback = self.choose()
            except FlashError as exc:
                self._finish(str(exc))
                return
            boot_dir = self.workdir / "boot"
            kernel, initramfs = boot_dir / "kernel", boot_dir / "initramfs"
            layout = read_layout(self.flash)
            with self.flash.open("rb") as disk:
                start = layout.slot(slot).start
                extract_part(disk, "kernel", kernel, offset=start)
                extract_part(disk, "initramfs", initramfs, offset=start)
            cmdline = self.cmdline(slot, header)
            with self._lock:
                number = len(self._state.boots) + 1
            note = " (the active slot is invalid: falling back)" if fallback else ""
            self._say(f"boot {number}: slot {slot}{note}: version {header.version} build "
                      f"{header.build} host {header.host}")
            boot = Boot(number, slot, header, fallback, cmdline, time.time())
            reason = self._power_on(boot, kernel, initramfs)
            if self._stopping.is_set():
                return
            if reason != "guest-reset":
                if boot.returncode not in (0, None) and reason is None:
                    log = self.workdir / "qemu.log"
                    text = log.read_text(errors="replace").strip() if log.is_file() else ""
                    self._finish(f"QEMU exited with code {boot.returncode}: "
                                 f"{text.splitlines()[-1] if text else 'no output'} "
                                 f"(full log: {log})")
                else:
                    self._finish(None if reason == "guest-shutdown" else
                                 f"QEMU ended ({reason or 'no reason given'})")
                    self._say(f"powered off ({reason})")
                return
            quick = quick + 1 if (boot.ended or 0) - boot.started < QUICK_BOOT_S else 0
            if quick >= MAX_QUICK_REBOOTS:
                self._finish(f"the guest rebooted {quick} times in a row within "
                             f"{QUICK_BOOT_S:.0f} s of power-on: a boot loop")
                return
            self._say("the guest rebooted: reading the flash again")

    def _power_on(self, boot: Boot, kernel: Path, initramfs: Path) -> str | None:
        """Run QEMU for one power-on; return QEMU's shutdown reason."""
        qmp_path = self._qmp_path()
        qmp_path.unlink(missing_ok=True)
        command = self.qemu_command(kernel, initramfs, boot.cmdline)
        # If this process dies without stop(), the kernel sends QEMU SIGTERM.
        setpriv = shutil.which("setpriv")
        if setpriv:
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        with (self.workdir / "qemu.log").open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self._process = process
        boot.pid = process.pid
        with self._lock:
            self._state.boots.append(boot)
            self._lock.notify_all()
        if self._stopping.is_set():
            self._terminate(20.0)
        reason = self._watch_qmp(process, qmp_path)
        boot.returncode = process.wait()
        boot.ended = time.time()
        boot.reason = reason
        self._process = None
        return reason

    def _watch_qmp(self, process: subprocess.Popen[bytes], path: Path) -> str | None:
        """Follow QEMU's QMP events until it exits; the last SHUTDOWN reason."""
        deadline = time.monotonic() + 30
        conn = None
        while conn is None and process.poll() is None and time.monotonic() < deadline:
            try:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.connect(str(path))
            except OSError:
                conn.close()
                conn = None
                time.sleep(0.05)
        if conn is None:
            return None
        reason = None
        with conn, conn.makefile("rwb") as stream:
            stream.write(b'{"execute": "qmp_capabilities"}\n')
            stream.flush()
            for line in stream:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if message.get("event") == "SHUTDOWN":
                    reason = message.get("data", {}).get("reason")
        return reason

    def _terminate(self, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        # QEMU leads its own session: its PID, not a name, names it.
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
