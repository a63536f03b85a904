# SPDX-License-Identifier: Apache-2.0
"""The role-test targets work with real Ansible and testinfra, twice, and leave nothing.

A throw-away playbook stands in for a role: a system user and group, a directory and a file
with modes and owners, a line in a file, the apt module (python3-apt, no network), a systemd
unit enabled (offline), service facts; on the live SSH target also a sysv service started
and listening. Run twice: the second run must change nothing. Then testinfra checks the
result, and after teardown nothing of the target may remain.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.debian_root import qemu_test_tarball, role_test_tarball
from tests.support.targets import (
    ChrootTarget,
    QemuTarget,
    SshTarget,
    mounts_under,
    no_leaks,
    processes_rooted_in,
    qemu_binary,
    run_playbook,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ansible,
    pytest.mark.skipif(os.geteuid() != 0, reason="targets need root (mounts, namespaces)"),
]

# What a package would ship: a systemd unit and a sysv script for the same daemon.
UNIT = """\
[Unit]
Description=probeforge target test daemon

[Service]
ExecStart=/usr/bin/python3 -m http.server 8000 --directory /var/lib/pftest

[Install]
WantedBy=multi-user.target
"""

INIT_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          pftest
# Required-Start:    $network
# Required-Stop:     $network
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: probeforge target test daemon
### END INIT INFO
PIDFILE=/run/pftest.pid
case "$1" in
  start) start-stop-daemon --start --quiet --background --make-pidfile --pidfile $PIDFILE \\
           --chuid pftest --exec /usr/bin/python3 -- -m http.server 8000 \\
           --directory /var/lib/pftest ;;
  stop) start-stop-daemon --stop --quiet --oknodo --remove-pidfile --pidfile $PIDFILE ;;
  status) start-stop-daemon --status --pidfile $PIDFILE ;;
  restart|force-reload) "$0" stop; "$0" start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 3 ;;
esac
"""

PLAYBOOK = f"""\
- name: A role's worth of changes
  hosts: targets
  gather_facts: false
  tasks:
    - name: Group
      ansible.builtin.group:
        name: pftest
        system: true
    - name: User
      ansible.builtin.user:
        name: pftest
        group: pftest
        system: true
        shell: /usr/sbin/nologin
        home: /var/lib/pftest
        create_home: true
    - name: Configuration directory
      ansible.builtin.file:
        path: /etc/pftest
        state: directory
        owner: root
        group: pftest
        mode: "0750"
    - name: Configuration
      ansible.builtin.copy:
        dest: /etc/pftest/pftest.conf
        content: "[daemon]\\n"
        force: false
        owner: root
        group: pftest
        mode: "0640"
    - name: A setting
      ansible.builtin.lineinfile:
        path: /etc/pftest/pftest.conf
        line: "interval = 10"
        insertafter: '^\\[daemon\\]'
    - name: Packages (python3-apt; already installed, so no network)
      ansible.builtin.apt:
        name: [iproute2, python3]
        state: present
    - name: Unit file
      ansible.builtin.copy:
        dest: /etc/systemd/system/pftest.service
        content: {json.dumps(UNIT)}
        mode: "0644"
    - name: Sysv script
      ansible.builtin.copy:
        dest: /etc/init.d/pftest
        content: {json.dumps(INIT_SCRIPT)}
        mode: "0755"
    - name: Enabled at boot (systemctl works on the files; no systemd running)
      ansible.builtin.systemd_service:
        name: pftest.service
        enabled: true
    - name: Service facts
      ansible.builtin.service_facts:
    - name: Service facts see the sysv services
      ansible.builtin.assert:
        that: "'pftest' in ansible_facts.services or 'pftest.service' in ansible_facts.services"

- name: Started, on live targets only (never in a chroot)
  hosts: live
  gather_facts: false
  tasks:
    - name: Started (the service_mgr fact is "sysvinit" there, so through its sysv script)
      ansible.builtin.service:
        name: pftest
        state: started
"""


@pytest.fixture(scope="module")
def tarball() -> Path:
    return role_test_tarball()


def _playbook(tmp_path: Path) -> Path:
    path = tmp_path / "playbook.yml"
    path.write_text(PLAYBOOK)
    return path


def _apply_twice(playbook: Path, inventory: Path, name: str) -> None:
    first = run_playbook(playbook, inventory)
    assert first.returncode == 0 and first.failed() == 0, first.report()
    assert first.changed(name) >= 6, first.report()
    second = run_playbook(playbook, inventory)
    assert second.returncode == 0 and second.failed() == 0, second.report()
    assert second.changed(name) == 0, second.report()


def _check_common(host) -> None:
    conf = host.file("/etc/pftest/pftest.conf")
    assert conf.is_file and conf.mode == 0o640
    assert (conf.user, conf.group) == ("root", "pftest")
    assert conf.content_string == "[daemon]\ninterval = 10\n"
    directory = host.file("/etc/pftest")
    assert directory.is_directory and directory.mode == 0o750 and directory.group == "pftest"
    user = host.user("pftest")
    assert user.exists and user.shell == "/usr/sbin/nologin" and user.home == "/var/lib/pftest"
    assert user.uid < 1000 and user.group == "pftest"
    assert host.file("/var/lib/pftest").user == "pftest"
    assert host.package("openssh-server").is_installed
    assert host.package("python3-apt").is_installed
    # Enabled the systemd way (offline) and, through systemd-sysv-install, the sysv way.
    assert host.file("/etc/systemd/system/multi-user.target.wants/pftest.service").is_symlink
    assert host.run("systemctl is-enabled pftest.service").stdout.strip() == "enabled"
    assert host.service("pftest").is_enabled  # testinfra's sysv check: /etc/rc?.d/S??pftest
    assert host.file("/etc/init.d/pftest").mode == 0o755


def test_chroot_target_with_ansible_and_testinfra(tarball, tmp_path):
    started = time.monotonic()
    with no_leaks(tmp_path), ChrootTarget(tarball, tmp_path) as target:
        root = target.root
        policy = root / "usr/sbin/policy-rc.d"
        assert os.access(policy, os.X_OK)
        assert (root / "etc/resolv.conf").read_bytes() == Path("/etc/resolv.conf").read_bytes()
        points = mounts_under(tmp_path)
        for sub in ("proc", "sys", "dev", "dev/pts", "run"):
            assert str(root / sub) in points, sub
        # Nothing of the host that could be written is mounted in: rm -rf would be safe.
        assert stat.S_ISCHR((root / "dev/null").stat().st_mode)
        with pytest.raises(OSError):
            (root / "sys/kernel/probeforge").write_text("x")
        assert target.run("sh", "-c", "echo x >/dev/null && ls /run").split() == [
            "lock", "sshd"]

        inventory = target.inventory_file()
        _apply_twice(_playbook(tmp_path), inventory, target.name)

        host = target.testinfra_host()
        _check_common(host)
        # policy-rc.d held: nothing was started in the chroot.
        assert not host.file("/run/pftest.pid").exists
        assert processes_rooted_in(root) == []
        applied = time.monotonic() - started
    assert not root.exists()
    print(f"chroot target: {applied:.1f} s up and applied twice, "
          f"{time.monotonic() - started:.1f} s with teardown")


@pytest.mark.netns
def test_ssh_target_with_ansible_and_testinfra(tarball, tmp_path):
    started = time.monotonic()
    with no_leaks(tmp_path):
        with SshTarget(tarball, tmp_path) as target:
            up = time.monotonic() - started
            root, netns, veth = target.root, target.netns, target.veth_host
            # Its mounts are its own: none in the host's mount table.
            assert mounts_under(tmp_path) == []
            assert target.run("hostname").strip() == target.name
            assert target.run("cat", "/proc/1/comm").strip() == "init"
            assert target.run("findmnt", "-n", "-o", "FSTYPE", "/run").strip() == "tmpfs"
            # Its network is the veth only: no route out.
            assert "default" not in target.run("ip", "route")

            inventory = target.inventory_file(groups=("targets", "live"))
            _apply_twice(_playbook(tmp_path), inventory, target.name)

            host = target.testinfra_host()
            _check_common(host)
            assert host.socket(f"tcp://{target.host}:22").is_listening
            assert host.service("pftest").is_running
            deadline = time.monotonic() + 15
            while not host.socket("tcp://0.0.0.0:8000").is_listening:
                assert time.monotonic() < deadline, "pftest never listened on 8000"
                time.sleep(0.2)
            daemon = host.process.get(comm="python3", user="pftest")
            assert "http.server" in daemon.args
            # Reachable from the host through the veth, as clients of a role's service are.
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with direct.open(f"http://{target.host}:8000/", timeout=10) as response:
                assert response.status == 200

            pids = target.pids()
            assert len(pids) >= 3  # unshare, sshd, the daemon (and sessions)
            applied = time.monotonic() - started
        # Everything of the target is gone, not only what no_leaks looks at.
        assert not root.exists()
        left = [p for p in pids if os.path.exists(f"/proc/{p}")]
        assert not left, [Path(f"/proc/{p}/status").read_text() for p in left]
        assert not target.client_processes()
        assert not Path(f"/run/netns/{netns}").exists()
        assert not Path(f"/sys/class/net/{veth}").exists()
    print(f"ssh target: {up:.1f} s to SSH, {applied:.1f} s applied twice, "
          f"{time.monotonic() - started:.1f} s with teardown")


@pytest.mark.parametrize("kind", ["ChrootTarget",
                                  pytest.param("SshTarget", marks=pytest.mark.netns)])
def test_reaper_cleans_up_after_a_killed_test(tarball, tmp_path, kind):
    """The owner dies (SIGKILL) inside the with block: mounts, processes, the namespace
    and the veth go anyway; only the extracted root stays (safe to delete)."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""\
        import os
        from pathlib import Path
        from tests.support.targets import {kind} as Target
        target = Target(Path({str(tarball)!r}), Path({str(workdir)!r})).__enter__()
        if hasattr(target, "netns"):
            print(target.netns, target.veth_host, *target.pids(), flush=True)
        else:
            print(len(os.listdir(target.root / "proc")) > 10, flush=True)
        os.kill(os.getpid(), 9)
        """))
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            cwd=repo, timeout=120, env={**os.environ, "PYTHONPATH": str(repo)})
    assert result.returncode == -9, result.stderr
    words = result.stdout.split()
    if kind == "SshTarget":
        netns, veth, *pids = words
        assert len(pids) >= 2, words  # unshare and sshd
    else:
        assert words == ["True"]  # /proc was mounted when the owner died

    def leftovers() -> list[str]:  # what the reaper must remove
        left = mounts_under(workdir) + [str(p) for p in processes_rooted_in(workdir)]
        if kind == "SshTarget":
            left += [p for p in (f"/run/netns/{netns}", f"/sys/class/net/{veth}",
                                 *(f"/proc/{pid}" for pid in pids)) if os.path.exists(p)]
        return left

    deadline = time.monotonic() + 20
    while leftovers():
        assert time.monotonic() < deadline, f"the reaper left {leftovers()}"
        time.sleep(0.1)
    shutil.rmtree(workdir)


APT_PLAYBOOK = """\
- name: A package from the Debian archive, through the target's only way out
  hosts: targets
  gather_facts: false
  tasks:
    - name: Installed
      ansible.builtin.apt:
        name: netcat-openbsd
        update_cache: true
        install_recommends: false
"""


@pytest.mark.netns
def test_ssh_target_installs_packages_through_the_apt_proxy(tarball, tmp_path):
    playbook = tmp_path / "apt.yml"
    playbook.write_text(APT_PLAYBOOK)
    with no_leaks(tmp_path), SshTarget(tarball, tmp_path, apt_proxy=True) as target:
        assert target.proxy and target.proxy.startswith(f"http://{target.host_address}:")
        result = run_playbook(playbook, target.inventory_file())
        assert result.returncode == 0 and result.changed() == 1, result.report()
        host = target.testinfra_host()
        assert host.package("netcat-openbsd").is_installed
        # No route out: the proxy is the only way, and it serves only the Debian archive.
        assert host.run("ip route get 192.0.2.1").rc != 0
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": target.proxy}))
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open("http://example.com/", timeout=10)
        assert refused.value.code == 403


QEMU_PLAYBOOK = f"""\
- name: A service under systemd (each task costs seconds under TCG, so only a few)
  hosts: targets
  gather_facts: false
  tasks:
    - name: User
      ansible.builtin.user:
        name: pftest
        system: true
        shell: /usr/sbin/nologin
        home: /var/lib/pftest
        create_home: true
    - name: Unit file
      ansible.builtin.copy:
        dest: /etc/systemd/system/pftest.service
        content: {json.dumps(UNIT)}
        mode: "0644"
    - name: Enabled and started by systemd
      ansible.builtin.systemd_service:
        name: pftest.service
        enabled: true
        state: started
"""


@pytest.mark.skipif(os.environ.get("PROBEFORGE_QEMU") != "1",
                    reason="boots a QEMU guest, ~3 min under TCG: set PROBEFORGE_QEMU=1")
@pytest.mark.skipif(qemu_binary() is None, reason="apt-get install qemu-system-x86")
def test_qemu_target_with_ansible_and_testinfra(tmp_path):
    """A booted guest: systemd is PID 1 and starts the unit Ansible installed."""
    tarball = qemu_test_tarball()
    started = time.monotonic()
    with no_leaks(tmp_path), QemuTarget(tarball, tmp_path) as target:
        up = time.monotonic() - started
        assert target.run("cat", "/proc/1/comm").strip() == "systemd"
        playbook = tmp_path / "qemu.yml"
        playbook.write_text(QEMU_PLAYBOOK)
        first = run_playbook(playbook, target.inventory_file())
        assert first.returncode == 0 and first.changed() == 3, first.report()
        second = run_playbook(playbook, target.inventory_file())
        assert second.returncode == 0 and second.changed() == 0, second.report()
        applied = time.monotonic() - started
        host = target.testinfra_host()
        assert host.user("pftest").exists and host.file("/var/lib/pftest").user == "pftest"
        assert host.file("/etc/systemd/system/pftest.service").mode == 0o644
        service = host.service("pftest")  # testinfra's systemd flavour here
        assert service.is_running and service.is_enabled
        assert host.run("systemctl is-system-running --wait").stdout.strip() in (
            "running", "degraded")
        deadline = time.monotonic() + 30
        while not host.socket("tcp://0.0.0.0:8000").is_listening:
            assert time.monotonic() < deadline, "pftest never listened on 8000"
            time.sleep(0.5)
        assert host.socket("tcp://0.0.0.0:22").is_listening
    assert not target.client_processes() and not target.disk.exists()
    print(f"qemu target ({target.accel}): {target.seconds_to_ssh:.0f} s boot to SSH, "
          f"{up:.0f} s up, {applied:.0f} s applied twice, "
          f"{time.monotonic() - started:.0f} s with teardown")
