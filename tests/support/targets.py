# SPDX-License-Identifier: Apache-2.0
"""Throw-away Debian 12 targets for role tests, each a context manager.

Every target starts from a root tarball (:mod:`tests.support.debian_root`): a writable
overlay over the tarball's cached, once-extracted tree (milliseconds; where overlays cannot
be mounted, the tarball is extracted instead, seconds).

:class:`ChrootTarget`
    The root with /proc, /sys (read only), its own /dev (a tmpfs with the usual nodes and a
    private devpts instance), a private tmpfs on /run, a ``policy-rc.d`` that exits 101 and
    the host's resolv.conf: what the appliance build's chroot provisioning needs (see
    FIELD-NOTES). For Ansible's ``community.general.chroot`` connection and testinfra's
    chroot backend. Nothing writable of the host is mounted into the root, so even a
    forgotten root is safe to ``rm -rf``. Facts there describe the build host (the
    service_mgr fact is the host's PID 1): never ``state: started`` in a chroot.

:class:`SshTarget`
    The same kind of root run live: its own sshd under a minimal init (PID 1 of a new PID
    namespace, named "init" so that Ansible's service_mgr fact is "sysvinit"), in a new
    mount, UTS and IPC namespace inside a new named network namespace, reached over a veth
    pair with a /30 from 10.254.0.0/16. Its overlay, /proc, /sys, /dev and /run are mounted
    inside its private mount namespace only: the host's mount table never sees them. Killing
    that PID 1 kills every process of the target (sessions, daemons a role started) and frees
    the mount namespace. For Ansible's ssh connection and testinfra's paramiko backend.

    There is no systemd as PID 1 here (nor in the chroot): ``systemctl enable``/``disable``
    and unit files work (systemctl acts on the files, offline), ``systemctl start`` does not.
    A role's "service starts and listens" is checked on this target through the package's
    sysv init script (``ansible.builtin.service`` picks it, as the service_mgr fact is
    "sysvinit"; ``service NAME start``, ``invoke-rc.d`` too, there is no policy-rc.d here)
    or by running the daemon directly; whatever a role starts dies with the target. A role
    whose daemon has only a systemd unit needs ``systemctl start`` and so a real boot: the
    place for systemd itself is the QEMU guest. testinfra's ``service`` module sees sysv
    here: ``is_enabled`` looks for /etc/rc?.d/S??NAME links (what ``systemctl enable`` makes
    through systemd-sysv-install when an init script exists); check a unit's own
    enablement with ``systemctl is-enabled`` or the ``*.wants/`` symlink.

    ``apt_proxy=True`` starts a small HTTP proxy on the host end of the veth that forwards
    only to the Debian archive, and points apt in the root at it: the target has no other
    way out (no route, no NAT, the host's forwarding and firewall untouched).

:class:`QemuTarget`
    The root (made bootable: :func:`tests.support.debian_root.qemu_test_tarball`) booted as
    an x86_64 guest with systemd as PID 1, SSH forwarded from 127.0.0.1. KVM if a test boot
    shows it works, else TCG: ~1.5 min to SSH and seconds per Ansible task. Opt-in.

All write an inventory for ``ansible-playbook`` (:meth:`inventory_file`, or
:meth:`ansible_hostvars` for one's own) and give a testinfra host (:meth:`testinfra_host`)
and :meth:`run`; :func:`run_playbook` runs a playbook and returns its stats, :func:`no_leaks`
checks that nothing of a target outlives it.

If the test process dies without tearing down (SIGKILL, a CI timeout), a reaper process
started with each target (own session, so Ctrl-C and process-group kills miss it) notices
its pipe closing and unmounts what is mounted under the root (lazily), kills processes
whose root is in it and the target's sshd/QEMU, and deletes the target's network
namespace and veth. sshd and QEMU are also started under ``setpriv --pdeathsig KILL`` (and
``unshare --kill-child``), so they die with the test even without the reaper. What can
still remain after a SIGKILL of both the test and the reaper (or a reaper that could not
run): mounts of a ChrootTarget or QemuTarget under its root (harmless to rm -rf, see
above; ``umount -R -l ROOT`` removes them), an empty named netns ``pft-<pid>-<hex>`` (the
next SshTarget deletes those whose owner PID is gone, and its veth goes with it), and the
roots' upper layers, keys and disk images in the workdir (pytest's temporary directory,
which pytest prunes).
"""

import base64
import contextlib
import fcntl
import http.client
import http.server
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko
import testinfra.backend
import testinfra.host

from appliance.sandbox import mounts_under, processes_rooted_in, unmount_all
from rig.kvm import kvm_usable, qemu_binary
from tests.support.debian_root import debian_root_tree

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
# All SshTargets of all checkouts on this machine take their /30 under this lock.
ADDRESS_LOCK = Path("/run/lock/probeforge-targets.lock")
ADDRESS_POOL = ipaddress.ip_network("10.254.0.0/16")
NETNS_PREFIX = "pft"
DEBIAN_ARCHIVE_HOSTS = ("deb.debian.org",)
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes")


def _run(*command: str | Path, timeout: float = 120, **kwargs: Any) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            timeout=timeout, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(str(c) for c in command)} exited {result.returncode}:"
                           f"\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


# --- mounts and processes under a root ----------------------------------------------------


def _kill_and_wait(pids: Iterable[int], timeout: float = 10) -> None:
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}")
                and not _is_zombie(p)]
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def remove_root(path: Path) -> None:
    """rm -rf a root, never while anything is mounted below it."""
    if not path.exists():
        return
    unmount_all(path)
    shutil.rmtree(path)


def extract(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True)
    # --numeric-owner: the archive's uids, not the host's idea of its user names.
    _run("tar", "--numeric-owner", "-xpf", tarball, "-C", root, timeout=600)


_overlay_checked: dict[int, bool] = {}


def overlay_usable(workdir: Path) -> bool:
    """Whether an overlay with its upper layer in ``workdir`` can be mounted (tried once per
    file system) and ``workdir``'s path is safe in mount options."""
    if re.search(r"[,:\\\s]", str(workdir)) or re.search(r"[,:\\\s]", str(REPO)):
        return False
    device = workdir.stat().st_dev
    if device not in _overlay_checked:
        probe = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=workdir))
        try:
            for part in ("lower", "upper", "work", "merged"):
                (probe / part).mkdir()
            _overlay_checked[device] = subprocess.run(
                ["mount", "-t", "overlay", "-o", f"lowerdir={probe}/lower,upperdir={probe}/upper,"
                 f"workdir={probe}/work", "overlay", str(probe / "merged")],
                capture_output=True).returncode == 0
        finally:
            if mounts_under(probe):
                subprocess.run(["umount", "--lazy", str(probe / "merged")], capture_output=True)
            if not mounts_under(probe):
                shutil.rmtree(probe)
    return _overlay_checked[device]


class _Layers:
    """Where a target's / comes from: a writable overlay (``upper``, ``work``) over the
    tarball's cached tree, or, where overlays cannot be mounted, the tarball extracted."""

    def __init__(self, tarball: Path, workdir: Path, prefix: str, overlay: bool | None) -> None:
        self.root = workdir / f"{prefix}-root"
        self.upper = workdir / f"{prefix}-upper"
        self.work = workdir / f"{prefix}-work"
        if self.root.exists():
            raise RuntimeError(f"{self.root} exists: one target of a kind per workdir")
        self.tarball = tarball
        self.overlay = overlay_usable(workdir) if overlay is None else overlay
        self.lower = debian_root_tree(tarball) if self.overlay else None

    def mount_command(self) -> list[str]:
        return ["mount", "-t", "overlay", "-o", f"lowerdir={self.lower},upperdir={self.upper},"
                f"workdir={self.work}", "overlay", str(self.root)]

    def create(self) -> None:
        """The directories; the tree itself when not overlaid (mounting is the caller's)."""
        if self.overlay:
            for path in (self.root, self.upper, self.work):
                path.mkdir(parents=True)
        else:
            extract(self.tarball, self.root)

    def remove(self) -> None:
        remove_root(self.root)
        for path in (self.upper, self.work):
            if path.exists():
                shutil.rmtree(path)


DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))


def mount_commands(root: Path) -> list[list[str]]:
    """What makes an extracted root usable: /proc, read-only /sys, a private /dev with the
    usual nodes and its own devpts, a tmpfs /dev/shm and a private tmpfs /run. Nothing of
    the host that could be written is mounted (a tmpfs /dev, not a bind of the host's)."""
    r = str(root)
    commands = [
        ["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{r}/proc"],
        ["mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{r}/sys"],
        ["mount", "-t", "tmpfs", "-o", "nosuid,mode=0755,size=8m", "tmpfs", f"{r}/dev"],
    ]
    commands += [["mknod", "-m", "0666", f"{r}/dev/{name}", "c", str(major), str(minor)]
                 for name, major, minor in DEVICES]
    commands += [
        ["mkdir", "-m", "0755", f"{r}/dev/pts"],
        ["mkdir", "-m", "1777", f"{r}/dev/shm"],
        ["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec",
         "devpts", f"{r}/dev/pts"],
        ["ln", "-s", "pts/ptmx", f"{r}/dev/ptmx"],
        ["ln", "-s", "/proc/self/fd", f"{r}/dev/fd"],
        ["ln", "-s", "/proc/self/fd/0", f"{r}/dev/stdin"],
        ["ln", "-s", "/proc/self/fd/1", f"{r}/dev/stdout"],
        ["ln", "-s", "/proc/self/fd/2", f"{r}/dev/stderr"],
        ["mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs", f"{r}/dev/shm"],
        ["mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=0755,size=64m", "tmpfs", f"{r}/run"],
        ["mkdir", "-m", "1777", f"{r}/run/lock"],
        ["mkdir", "-m", "0755", f"{r}/run/sshd"],
    ]
    return commands


def copy_resolv_conf(root: Path) -> None:
    target = root / "etc/resolv.conf"
    if target.is_symlink() or target.exists():
        target.unlink()
    target.write_bytes(Path("/etc/resolv.conf").read_bytes())
    target.chmod(0o644)


# --- the reaper -----------------------------------------------------------------------------

REAPER = r'''
import json, os, re, signal, subprocess, sys, time
todo = []
for line in sys.stdin:
    item = json.loads(line)
    if item == "done":
        sys.exit(0)
    todo.append(item)
# EOF without "done": whoever started us died before tearing its target down.
def unescape(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)
for kind, value in todo:
    try:
        if kind == "kill":
            pid, started = value
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[19] == started:
                    os.kill(pid, signal.SIGKILL)
        elif kind == "root":
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        root = os.readlink(f"/proc/{entry}/root")
                    except OSError:
                        continue
                    if root == value or root.startswith(value + "/"):
                        os.kill(int(entry), signal.SIGKILL)
            time.sleep(0.2)
            with open("/proc/self/mountinfo") as f:
                points = [unescape(line.split()[4]) for line in f]
            points = [p for p in points if p == value or p.startswith(value + "/")]
            for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
                subprocess.run(["umount", "--lazy", point], capture_output=True)
        elif kind == "netns":
            pids = subprocess.run(["ip", "netns", "pids", value], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", value], capture_output=True)
        elif kind == "link":
            subprocess.run(["ip", "link", "del", value], capture_output=True)
    except Exception:
        pass
'''


class _Reaper:
    """Undoes a target's set-up if this process dies before tearing it down."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", REAPER], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, text=True)

    def note(self, kind: str, value: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([kind, value]) + "\n")
        self.proc.stdin.flush()

    def disarm(self) -> None:
        """Called after a complete teardown: the reaper leaves without doing anything."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write('"done"\n')
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- Ansible and testinfra ----------------------------------------------------------------


@dataclass
class PlaybookResult:
    returncode: int
    stats: dict[str, dict[str, int]]
    output: str
    stderr: str

    def changed(self, host: str | None = None) -> int:
        return sum(s.get("changed", 0) for h, s in self.stats.items() if host in (None, h))

    def failed(self) -> int:
        return sum(s.get("failures", 0) + s.get("unreachable", 0) for s in self.stats.values())

    def tasks(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(task name, host, result) of every task run, in order."""
        try:
            plays = json.loads(self.output)["plays"]
        except (ValueError, KeyError):
            return []
        return [(task["task"]["name"], host, result) for play in plays
                for task in play["tasks"] for host, result in task["hosts"].items()]

    def report(self) -> str:
        """What went wrong or changed, for assertion messages."""
        lines = [f"exit {self.returncode}, stats {self.stats}"]
        for name, host, result in self.tasks():
            if result.get("failed") or result.get("unreachable"):
                detail = " ".join(str(result.get(k, "")) for k in ("msg", "stderr", "stdout"))
                lines.append(f"FAILED {host}: {name}: {detail.strip()[:2000]}")
            elif result.get("changed"):
                lines.append(f"changed {host}: {name}")
        if not self.tasks():
            lines += [self.output[-3000:], self.stderr[-3000:]]
        return "\n".join(lines)


def ansible_executable(name: str = "ansible-playbook") -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def run_playbook(playbook: Path, inventory: Path, *args: str, timeout: float = 900,
                 env: dict[str, str] | None = None) -> PlaybookResult:
    """``ansible-playbook -i inventory playbook args`` from the repository (its ansible.cfg,
    roles_path), with the JSON callback; ``stats`` maps host -> {ok, changed, failures, ...}."""
    environment = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
                   "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", **(env or {})}
    result = subprocess.run([ansible_executable(), "-i", str(inventory), str(playbook), *args],
                            capture_output=True, text=True, cwd=REPO, env=environment,
                            timeout=timeout, check=False)
    try:
        stats = json.loads(result.stdout)["stats"]
    except (ValueError, KeyError):
        stats = {}
    return PlaybookResult(result.returncode, stats, result.stdout, result.stderr)


def _inventory(name: str, hostvars: dict[str, Any], groups: Sequence[str]) -> str:
    # JSON is YAML: Ansible's yaml inventory plugin reads it, with no quoting pitfalls.
    return json.dumps({"all": {"children": {
        group: {"hosts": {name: hostvars}} for group in groups}}}, indent=2) + "\n"


class _Target:
    name: str
    workdir: Path
    _kind: str

    def ansible_hostvars(self) -> dict[str, Any]:
        raise NotImplementedError

    def ansible_inventory(self, groups: Sequence[str] = ("targets",)) -> str:
        """A YAML inventory with this target as ``name`` in each of ``groups``."""
        return _inventory(self.name, self.ansible_hostvars(), groups)

    def inventory_file(self, groups: Sequence[str] = ("targets",)) -> Path:
        path = self.workdir / f"{self._kind}-inventory.yml"
        path.write_text(self.ansible_inventory(groups))
        return path


# --- ChrootTarget ---------------------------------------------------------------------------


class ChrootTarget(_Target):
    """A Debian root ready for Ansible's chroot connection; see the module's documentation.

    ``with ChrootTarget(tarball, tmp_path) as target:`` gives ``target.root`` (a directory
    under ``workdir``), :meth:`inventory_file`, :meth:`testinfra_host`, :meth:`run`. The root
    is an overlay over the tarball's cached tree (``overlay=False``: the tarball extracted,
    slower). Leaving kills anything still running chrooted in it, removes policy-rc.d and
    /root/.ansible, unmounts everything and deletes the root."""

    _kind = "chroot"

    def __init__(self, tarball: Path, workdir: Path, *, name: str = "chroot-target",
                 overlay: bool | None = None) -> None:
        self.tarball = Path(tarball)
        self.workdir = Path(workdir).resolve()
        self.name = name
        self._layers = _Layers(self.tarball, self.workdir, "chroot", overlay)
        self.root = self._layers.root
        self._reaper: _Reaper | None = None
        self._policy_rc_d_existed = False

    def __enter__(self) -> "ChrootTarget":
        self._reaper = _Reaper()
        self._reaper.note("root", str(self.root))
        try:
            self._layers.create()
            if self._layers.overlay:
                _run(*self._layers.mount_command())
            for command in mount_commands(self.root):
                _run(*command)
            policy = self.root / "usr/sbin/policy-rc.d"
            self._policy_rc_d_existed = policy.exists()
            if not self._policy_rc_d_existed:
                policy.write_text("#!/bin/sh\n# probeforge test: no service starts here\n"
                                  "exit 101\n")
                policy.chmod(0o755)
            copy_resolv_conf(self.root)
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._teardown()

    def _teardown(self) -> None:
        _kill_and_wait(processes_rooted_in(self.root))
        if self.root.is_dir() and not self._policy_rc_d_existed:
            (self.root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
        shutil.rmtree(self.root / "root/.ansible", ignore_errors=True)
        self._layers.remove()
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None

    def ansible_hostvars(self) -> dict[str, Any]:
        return {"ansible_connection": "community.general.chroot",
                "ansible_host": str(self.root),
                "ansible_python_interpreter": PYTHON}

    def testinfra_host(self) -> testinfra.host.Host:
        # Not "chroot://PATH": testinfra reads an absolute path there as an empty host name.
        return testinfra.host.Host(
            testinfra.backend.get_backend(str(self.root), connection="chroot"))

    def run(self, *command: str, timeout: float = 120) -> str:
        """Run a command chrooted in the root; its stdout (raises on failure)."""
        return _run("chroot", self.root, *command, timeout=timeout)


# --- SshTarget --------------------------------------------------------------------------------


def veth_prefix(pid: int | None = None) -> str:
    """The start of the names of every veth the SshTargets of process ``pid`` make."""
    return f"pf{os.getpid() if pid is None else pid:x}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_namespaces(min_age: float = 60) -> list[str]:
    """Delete our network namespaces ``pft-<pid>-<hex>`` left by test runs that died with
    their reaper: owner PID gone, no process inside, older than ``min_age`` seconds."""
    swept = []
    for line in _run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{NETNS_PREFIX}-(\d+)-[0-9a-f]+", name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        try:
            age = time.time() - os.stat(f"/run/netns/{name}").st_mtime
        except OSError:
            continue
        if age < min_age or _run("ip", "netns", "pids", name).split():
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        swept.append(name)
    return swept


def _addresses_in_use() -> list[ipaddress.IPv4Interface]:
    out = _run("ip", "-4", "-o", "addr", "show")
    return [ipaddress.ip_interface(m) for m in re.findall(r"\binet (\S+)", out)]


def _choose_subnet(tries: int = 64) -> ipaddress.IPv4Network:
    """A /30 of ADDRESS_POOL that no address on the host touches, starting from one derived
    from our PID (parallel runs start apart); call with ADDRESS_LOCK held."""
    used = _addresses_in_use()
    subnets = ADDRESS_POOL.num_addresses // 4
    start = (os.getpid() * 2654435761) % (subnets - 1) + 1
    for n in range(tries):
        index = (start + n * 97) % (subnets - 1) + 1
        subnet = ipaddress.ip_network(
            f"{ADDRESS_POOL.network_address + index * 4}/30")
        if not any(iface.network.overlaps(subnet) for iface in used):
            return subnet
    raise RuntimeError(f"no free /30 in {ADDRESS_POOL}")


# PID 1 of an SshTarget: reaps every orphan (daemons a role starts double-fork), ends (and
# with it the namespace) when sshd ends. Named "init", so that Ansible's service_mgr fact
# falls through to its file checks and says "sysvinit": the service module then works
# without `use:` (with sshd as PID 1 the fact would be "sshd").
INIT = """\
import os, sys
with open("/proc/self/comm", "w") as comm:
    comm.write("init")
main = os.fork()
if main == 0:
    os.execv(sys.argv[1], sys.argv[1:])
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        sys.exit(1)
    except InterruptedError:
        continue
    if pid == main:
        sys.exit(os.waitstatus_to_exitcode(status))
"""


def sshd_script(root: Path, address: str, hostname: str, setup: Sequence[Sequence[str]]) -> str:
    """Run in the new namespaces: ``setup`` (the overlay, the target's own files), mount the
    root's pseudo file systems (all private to this mount namespace), then start sshd under
    a minimal init as PID 1 of the new PID namespace."""
    lines = ["set -e", shlex.join(["hostname", hostname])]
    lines += [shlex.join(c) for c in setup]
    lines += [shlex.join(c) for c in mount_commands(root)]
    lines.append(shlex.join([
        "exec", "chroot", str(root), PYTHON, "-c", INIT, "/usr/sbin/sshd", "-D", "-e", "-p", "22",
        "-o", f"ListenAddress={address}", "-o", "HostKey=/etc/ssh/ssh_host_ed25519_key",
        "-o", "PermitRootLogin=prohibit-password", "-o", "PasswordAuthentication=no",
        "-o", "UseDNS=no"]))
    return "\n".join(lines) + "\n"


class _SshAccess(_Target):
    """SSH, Ansible and testinfra access to a target that runs sshd (key-only root login)."""

    host: str
    port: int
    user: str
    key: Path
    host_key: str
    _testinfra: list[testinfra.host.Host]

    def ssh_command(self, *command: str) -> list[str]:
        """An ssh(1) command line running ``command`` on the target."""
        return ["ssh", *SSH_OPTIONS, "-o", "ConnectTimeout=3", "-i", str(self.key),
                "-p", str(self.port), f"{self.user}@{self.host}", *command]

    def run(self, *command: str, timeout: float = 120) -> str:
        """Run a command on the target over SSH; its stdout (raises on failure)."""
        return _run(*self.ssh_command(shlex.join(command)), timeout=timeout,
                    stdin=subprocess.DEVNULL)

    def ansible_hostvars(self) -> dict[str, Any]:
        return {"ansible_connection": "ssh",
                "ansible_host": self.host,
                "ansible_port": self.port,
                "ansible_user": self.user,
                "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
                "ansible_python_interpreter": PYTHON}

    def testinfra_host(self) -> testinfra.host.Host:
        """A paramiko testinfra host (closed at teardown; not testinfra's cached one) that
        knows the target's host key."""
        backend = testinfra.backend.get_backend(
            f"paramiko://{self.user}@{self.host}:{self.port}",
            ssh_identity_file=str(self.key), timeout=10)
        client = paramiko.SSHClient()
        kind, blob = self.host_key.split()[:2]
        client.get_host_keys().add(f"[{self.host}]:{self.port}" if self.port != 22 else self.host,
                                   kind, paramiko.PKey.from_type_string(kind,
                                                                        base64.b64decode(blob)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.host, self.port, username=self.user, key_filename=str(self.key),
                       timeout=10, allow_agent=False, look_for_keys=False)
        backend.client = client  # testinfra's own would warn about the unknown host key
        host = testinfra.host.Host(backend)
        self._testinfra.append(host)
        return host

    def client_processes(self) -> list[int]:
        """Host processes whose command line names this target's private key (ssh clients,
        Ansible's ControlPersist master)."""
        needle = str(self.key).encode()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                with contextlib.suppress(OSError):
                    if needle in Path(f"/proc/{entry}/cmdline").read_bytes() \
                            and not _is_zombie(int(entry)):
                        found.append(int(entry))
        return found

    def _close_clients(self) -> None:
        for host in self._testinfra:
            client = host.backend.__dict__.get("client")
            if client is not None:
                client.close()
        self._testinfra.clear()

    def _wait_ssh(self, proc: "subprocess.Popen[bytes]", log: Path, timeout: float,
                  what: str) -> None:
        """Until a real command goes through (an open port is not readiness), while ``proc``
        (sshd, QEMU) runs."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited {proc.returncode}:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                result = subprocess.run(self.ssh_command("true"), capture_output=True,
                                        text=True, timeout=10, stdin=subprocess.DEVNULL)
                if result.returncode == 0:
                    return
                last = result.stderr
            time.sleep(0.2)
        raise RuntimeError(f"no SSH to {self.host}:{self.port} within {timeout} s: {last}\n"
                           f"{log.read_text(errors='replace')[-3000:]}")


class SshTarget(_SshAccess):
    """A Debian root running its own sshd in its own namespaces; see the module's
    documentation.

    Attributes once entered: ``host`` (the target's address), ``port`` (22), ``user``
    ("root"), ``key`` (private key file), ``host_key`` (the target's public host key line),
    ``host_address`` (the host's end of the veth, to reach servers a test runs on the host),
    ``netns``, ``veth_host``/``veth_target`` (the target's interface name inside), ``proxy``
    (the apt proxy's URL or None), ``pid1`` (host PID of its sshd) and ``root``: the target's
    / seen from the host, ``/proc/<pid1>/root``, valid while it runs (its overlay is mounted
    only in its own mount namespace). Root on the host may read and write through it, e.g.
    to seed caches; what a role does goes through SSH."""

    _kind = "ssh"

    def __init__(self, tarball: Path, workdir: Path, *, name: str = "ssh-target",
                 apt_proxy: bool = False, ready_timeout: float = 30,
                 overlay: bool | None = None) -> None:
        self.tarball = Path(tarball)
        self.workdir = Path(workdir).resolve()
        self.name = name
        self.apt_proxy = apt_proxy
        self.ready_timeout = ready_timeout
        self._layers = _Layers(self.tarball, self.workdir, "ssh", overlay)
        self.port = 22
        self.user = "root"
        self.files = self.workdir / "ssh-target-files"
        self.key = self.files / "id_ed25519"
        self.host_key = ""
        self.log = self.workdir / "ssh-target-sshd.log"
        tag = secrets.token_hex(2)
        self.netns = f"{NETNS_PREFIX}-{os.getpid()}-{tag}"
        # Interface names have at most 15 characters: the PID in hex (at most 6).
        self.veth_host = f"{veth_prefix()}{tag}h"
        self.veth_target = f"{veth_prefix()}{tag}t"
        self.host = ""
        self.host_address = ""
        self.proxy: str | None = None
        self.pid1: int | None = None
        self._proxy_server: AptProxy | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: _Reaper | None = None
        self._testinfra: list[testinfra.host.Host] = []

    @property
    def root(self) -> Path:
        if self.pid1 is None:
            raise RuntimeError("the target is not running")
        return Path(f"/proc/{self.pid1}/root")

    # set-up

    def __enter__(self) -> "SshTarget":
        sweep_stale_namespaces()
        self._reaper = _Reaper()
        self._reaper.note("netns", self.netns)
        self._reaper.note("link", self.veth_host)
        self._reaper.note("root", str(self._layers.root))
        try:
            self._layers.create()
            self._network()
            if self.apt_proxy:
                self._proxy_server = AptProxy(self.host_address)
                self.proxy = self._proxy_server.url
            self._start_sshd(self._files())
            self._wait_ready()
        except BaseException:
            self._teardown()
            raise
        return self

    def _files(self) -> list[list[str]]:
        """Keys and files of this target, made here and installed into its root by the
        start-up script (in an overlay, that is the only place the root is mounted)."""
        self.files.mkdir(mode=0o700)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"probeforge-test@{self.name}",
             "-f", self.key)
        host_key = self.files / "ssh_host_ed25519_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{self.name}",
             "-f", host_key)
        self.host_key = host_key.with_suffix(".pub").read_text().strip()
        (self.files / "hostname").write_text(self.name + "\n")
        (self.files / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")
        (self.files / "resolv.conf").write_bytes(Path("/etc/resolv.conf").read_bytes())
        r, f = str(self._layers.root), str(self.files)
        setup = [self._layers.mount_command()] if self._layers.overlay else []
        setup += [
            # The tarball's host keys are the same in every copy: never use them.
            ["find", f"{r}/etc/ssh", "-maxdepth", "1", "-name", "ssh_host_*", "-delete"],
            ["install", "-m", "0600", f"{f}/ssh_host_ed25519_key",
             f"{r}/etc/ssh/ssh_host_ed25519_key"],
            ["install", "-m", "0644", f"{f}/ssh_host_ed25519_key.pub",
             f"{r}/etc/ssh/ssh_host_ed25519_key.pub"],
            ["install", "-d", "-m", "0700", f"{r}/root/.ssh"],
            ["install", "-m", "0600", f"{f}/id_ed25519.pub", f"{r}/root/.ssh/authorized_keys"],
            ["install", "-m", "0644", f"{f}/hostname", f"{r}/etc/hostname"],
            ["install", "-m", "0644", f"{f}/hosts", f"{r}/etc/hosts"],
            ["rm", "-f", f"{r}/etc/resolv.conf"],
            ["install", "-m", "0644", f"{f}/resolv.conf", f"{r}/etc/resolv.conf"],
        ]
        if self.proxy:
            (self.files / "apt-proxy.conf").write_text(f'Acquire::http::Proxy "{self.proxy}";\n')
            setup.append(["install", "-m", "0644", f"{f}/apt-proxy.conf",
                          f"{r}/etc/apt/apt.conf.d/01probeforge-proxy"])
        return setup

    def _network(self) -> None:
        _run("ip", "netns", "add", self.netns)
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")
        ADDRESS_LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(ADDRESS_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = _choose_subnet()
            host, target = list(subnet.hosts())
            _run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name",
                 self.veth_target, "netns", self.netns)
            _run("ip", "addr", "add", f"{host}/30", "dev", self.veth_host)
        self.host_address, self.host = str(host), str(target)
        _run("ip", "link", "set", self.veth_host, "up")
        _run("ip", "-n", self.netns, "addr", "add", f"{target}/30", "dev", self.veth_target)
        _run("ip", "-n", self.netns, "link", "set", self.veth_target, "up")

    def _start_sshd(self, setup: list[list[str]]) -> None:
        # setpriv: if this process dies, so does unshare; --kill-child: then so does the init,
        # and with PID 1 of the namespace every process in it.
        command = ["setpriv", "--pdeathsig", "KILL",
                   "ip", "netns", "exec", self.netns,
                   "unshare", "--mount", "--propagation", "private", "--uts", "--ipc",
                   "--pid", "--fork", "--kill-child",
                   "sh", "-c", sshd_script(self._layers.root, self.host, self.name, setup)]
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        assert self._reaper is not None
        with contextlib.suppress(OSError, IndexError):
            self._reaper.note("kill", [self._proc.pid, _start_time(self._proc.pid)])

    def _wait_ready(self) -> None:
        assert self._proc is not None
        self._wait_ssh(self._proc, self.log, self.ready_timeout, "sshd")
        self.pid1 = self._find_pid1()

    def _find_pid1(self) -> int:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
                if nspid and nspid.group(1).split()[1:] == ["1"]:
                    return pid
        raise RuntimeError(f"no PID 1 in {self.netns}")

    # use

    def pids(self) -> list[int]:
        """Host PIDs of every process in the target's network namespace."""
        return [int(p) for p in _run("ip", "netns", "pids", self.netns).split()]

    # teardown

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._teardown()

    def _teardown(self) -> None:
        self._close_clients()
        if self._proc is not None:
            # PID 1 of the namespace first: the kernel kills every process of the namespace
            # and PID 1's exit reaps them (killed after it, they would become zombies of the
            # host's init); unshare then exits by itself. Killing unshare would also do (its
            # --kill-child takes PID 1 along), it is the fallback.
            if self.pid1 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid1, signal.SIGKILL)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=30)
            self._proc = None
        self.pid1 = None
        # The veth before the namespace: deleting one end deletes both at once, while a
        # deleted namespace takes its end (and so the pair) along only a moment later.
        link = Path(f"/sys/class/net/{self.veth_host}")
        if link.exists():
            subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
        if Path(f"/run/netns/{self.netns}").exists():
            _kill_and_wait(self.pids())
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        deadline = time.monotonic() + 10
        while link.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # ssh clients of ours (Ansible's ControlPersist master) lost their server; end them.
        _kill_and_wait(self.client_processes())
        if self._proxy_server is not None:
            self._proxy_server.close()
            self._proxy_server = None
        self._layers.remove()
        if self.files.exists():
            shutil.rmtree(self.files)
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None

# --- QemuTarget -------------------------------------------------------------------------------

class QemuTarget(_SshAccess):
    """The root booted as an x86_64 QEMU guest with systemd as PID 1: the place for what the
    namespaced targets cannot do (systemd starting units, reboots, the kernel's own view).

    The root (an overlay over the tarball's cached tree, see :func:`qemu_test_tarball`) gets
    its own SSH host key, root's authorized key, systemd-networkd with DHCP, a machine-id
    (no first-boot prompts) and masked apt-daily timers (they would take dpkg's lock under
    a role's apt tasks); ``mkfs.ext4 -d`` makes the disk from it without mounting anything;
    the kernel and initramfs are the root's own, booted with ``-kernel/-initrd``. Network:
    user mode, ``restrict=on`` (no way out, not even to the Debian archive), SSH forwarded
    from 127.0.0.1:``port``. KVM when a test boot shows it works (:func:`kvm_usable`),
    otherwise TCG: then 1-2 min to SSH and every Ansible task seconds. ``console_log`` has
    the serial console. Leaving kills QEMU and deletes the disk."""

    _kind = "qemu"

    def __init__(self, tarball: Path, workdir: Path, *, name: str = "qemu-target",
                 memory_mb: int = 1024, cpus: int = 2, boot_timeout: float = 300,
                 free_mb: int = 1024, accel: str | None = None) -> None:
        self.tarball = Path(tarball)
        self.workdir = Path(workdir).resolve()
        self.name = name
        self.memory_mb, self.cpus, self.free_mb = memory_mb, cpus, free_mb
        self.boot_timeout = boot_timeout
        self.accel = accel
        self._layers = _Layers(self.tarball, self.workdir, "qemu", None)
        self.files = self.workdir / "qemu-target-files"
        self.key = self.files / "id_ed25519"
        self.disk = self.files / "disk.img"
        self.console_log = self.workdir / "qemu-target-console.log"
        self.host, self.port, self.user = "127.0.0.1", 0, "root"
        self.host_key = ""
        self.seconds_to_ssh = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: _Reaper | None = None
        self._testinfra: list[testinfra.host.Host] = []

    def __enter__(self) -> "QemuTarget":
        qemu = qemu_binary()
        if qemu is None:
            raise RuntimeError("qemu-system-x86_64 not installed (apt-get install "
                               "qemu-system-x86)")
        self._reaper = _Reaper()
        self._reaper.note("root", str(self._layers.root))
        try:
            self._layers.create()
            if self._layers.overlay:
                _run(*self._layers.mount_command())
            self.files.mkdir(mode=0o700)
            self._customise(self._layers.root)
            kernel, initrd = self._boot_files(self._layers.root)
            self._make_disk(self._layers.root)
            self._layers.remove()
            if self.accel is None:
                self.accel = "kvm" if kvm_usable(kernel, initrd) else "tcg"
            self.port = free_port()
            started = time.monotonic()
            self._boot(qemu, kernel, initrd)
            assert self._proc is not None
            self._wait_ssh(self._proc, self.console_log, self.boot_timeout, "QEMU")
            self.seconds_to_ssh = time.monotonic() - started
        except BaseException:
            self._teardown()
            raise
        return self

    def _customise(self, root: Path) -> None:
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"probeforge-test@{self.name}",
             "-f", self.key)
        for old in (root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        host_key = root / "etc/ssh/ssh_host_ed25519_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{self.name}",
             "-f", host_key)
        self.host_key = host_key.with_suffix(".pub").read_text().strip()
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_bytes(self.key.with_suffix(".pub").read_bytes())
        (ssh_dir / "authorized_keys").chmod(0o600)
        (root / "etc/hostname").write_text(self.name + "\n")
        (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.name}\n"
                                        "::1\tlocalhost ip6-localhost ip6-loopback\n")
        (root / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
        (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        network = root / "etc/systemd/network/10-probeforge.network"
        network.parent.mkdir(parents=True, exist_ok=True)
        network.write_text("[Match]\nName=eth* en*\n\n[Network]\nDHCP=ipv4\n")
        units = root / "etc/systemd/system"
        for wants, unit in (("multi-user.target.wants", "systemd-networkd.service"),
                            ("sockets.target.wants", "systemd-networkd.socket")):
            (units / wants).mkdir(parents=True, exist_ok=True)
            link = units / wants / unit
            if not link.is_symlink():
                link.symlink_to(f"/lib/systemd/system/{unit}")
        for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
            link = units / timer
            if not link.is_symlink():
                link.symlink_to("/dev/null")
        copy_resolv_conf(root)

    def _boot_files(self, root: Path) -> tuple[Path, Path]:
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise RuntimeError(f"no kernel in {self.tarball}: use qemu_test_tarball()")
        version = kernels[-1].name.removeprefix("vmlinuz-")
        boot = []
        for path in (root / "boot" / f"vmlinuz-{version}", root / "boot" / f"initrd.img-{version}"):
            copy = self.files / path.name
            shutil.copyfile(path, copy)
            boot.append(copy)
        return boot[0], boot[1]

    def _make_disk(self, root: Path) -> None:
        used = int(_run("du", "-s", "-x", "--block-size=1M", root).split()[0])
        size = used + used // 4 + self.free_mb
        _run("mkfs.ext4", "-q", "-F", "-L", "root", "-E", "root_owner=0:0", "-d", root,
             self.disk, f"{size}M", timeout=600)

    def _boot(self, qemu: str, kernel: Path, initrd: Path) -> None:
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else \
            ["-accel", "tcg,thread=multi"]
        command = [
            "setpriv", "--pdeathsig", "KILL", qemu, "-name", self.name, "-machine", "q35",
            *accel, "-smp", str(self.cpus), "-m", str(self.memory_mb), "-nodefaults",
            "-display", "none", "-serial", f"file:{self.console_log}", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet",
            "-drive", f"file={self.disk},format=raw,if=virtio,cache=unsafe",
            "-nic", f"user,model=virtio-net-pci,restrict=on,"
                    f"hostfwd=tcp:127.0.0.1:{self.port}-:22"]
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert self._reaper is not None
        with contextlib.suppress(OSError, IndexError):
            self._reaper.note("kill", [self._proc.pid, _start_time(self._proc.pid)])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._teardown()

    def _teardown(self) -> None:
        self._close_clients()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            self._proc = None
        _kill_and_wait(self.client_processes())
        self._layers.remove()
        if self.files.exists():
            shutil.rmtree(self.files)
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None


# --- apt through the host -------------------------------------------------------------------


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    allowed: tuple[str, ...] = DEBIAN_ARCHIVE_HOSTS
    timeout = 60

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def _forward(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or url.hostname not in self.allowed or url.port not in (None,
                                                                                         80):
            self.send_error(403, "only http://deb.debian.org through this proxy")
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-connection", "connection", "keep-alive")}
        connection = http.client.HTTPConnection(url.hostname, 80, timeout=60)
        try:
            connection.request(self.command, url.path + (f"?{url.query}" if url.query else ""),
                               headers=headers)
            response = connection.getresponse()
            body = response.read() if self.command == "GET" else b""
        except OSError as exc:
            self.send_error(502, f"{type(exc).__name__}: {exc}")
            return
        finally:
            connection.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                   "content-length"):
                self.send_header(key, value)
        length = response.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class AptProxy:
    """A forwarding HTTP proxy on ``address`` (a free port) that only talks to the Debian
    archive: what an SshTarget's apt uses, as the target has no route out."""

    def __init__(self, address: str, allowed: Sequence[str] = DEBIAN_ARCHIVE_HOSTS) -> None:
        handler = type("Handler", (_ProxyHandler,), {"allowed": tuple(allowed)})
        self.server = _ThreadingServer((address, 0), handler)
        self.url = f"http://{address}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name=f"apt-proxy {self.url}")
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


# --- leak checks for tests ------------------------------------------------------------------


@contextlib.contextmanager
def no_leaks(workdir: Path) -> Iterator[None]:
    """Assert that leaving the block leaves nothing of a target behind: mounts under
    ``workdir``, network namespaces or veths of this process's targets (other test runs may
    be making their own meanwhile), processes rooted under ``workdir``."""
    workdir = Path(workdir).resolve()
    netns_before = set(_run("ip", "netns", "list").split())
    links_before = set(os.listdir("/sys/class/net"))
    yield
    assert mounts_under(workdir) == [], "mounts left under the workdir"
    netns_after = {n for n in _run("ip", "netns", "list").split()
                   if n.startswith(f"{NETNS_PREFIX}-{os.getpid()}-")}
    assert netns_after <= netns_before, f"network namespaces left: {netns_after}"
    links_left = {n for n in set(os.listdir("/sys/class/net")) - links_before
                  if n.startswith(veth_prefix())}
    assert not links_left, f"veths left: {links_left}"
    assert processes_rooted_in(workdir) == [], "processes left in a target root"


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
