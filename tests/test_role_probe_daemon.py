# SPDX-License-Identifier: Apache-2.0
"""The probe_daemon role, applied for real.

Into a Debian 12 image root through the chroot connection (twice: the second run changes
nothing; nothing is started), and into a live Debian 12 root over SSH, where the installed
daemon is started by its package's init script and registers over mutual TLS with the real
mPlane RI supervisor running on the other end of the target's network link.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pki import Deployment, PKIState, sync
from rig.mplane_ri import (
    RISupervisor,
    TLSFiles,
    default_cache_dir,
    free_port,
    list_capabilities,
    ri_venv,
)
from tests.support.debian_root import role_test_tarball
from tests.support.probe_daemon_proc import registry_file
from tests.support.targets import ChrootTarget, SshTarget, processes_rooted_in, run_playbook

pytestmark = [pytest.mark.slow, pytest.mark.ansible,
              pytest.mark.skipif(os.geteuid() != 0, reason="targets need root")]
PASSPHRASE = b"probe-daemon-role-test"
PLAYBOOK = """\
- name: The probe daemon role
  hosts: probes
  gather_facts: false
  roles:
    - probe_daemon
"""


def build_pki(state_dir: Path, probe: str, probe_address: str, supervisor_address: str,
              networks: list[str]) -> PKIState:
    hosts = [("supervisor", "supervisors", supervisor_address), (probe, "probes", probe_address),
             ("operator", "clients", supervisor_address)]
    state = PKIState(state_dir)
    sync(state, Deployment.from_request({
        "deployment": "probe-role-test", "domains": ["probe-test.internal"],
        "networks": networks,
        "group_profiles": {"supervisors": "supervisor", "probes": "probe", "clients": "client"},
        "mplane_roles": {"operators": ["clients"]},
        "authorizations": {"ping-": ["operators"]},
        "hosts": [{"name": n, "groups": [g], "address": a} for n, g, a in hosts],
    }), PASSPHRASE)
    return state


def apply(workdir: Path, target: ChrootTarget | SshTarget, **variables: object):
    inventory = workdir / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"vars": variables, "children": {
        "probes": {"hosts": {target.name: target.ansible_hostvars()}}}}}, indent=2))
    playbook = workdir / "probe.yml"
    playbook.write_text(PLAYBOOK)
    result = run_playbook(playbook, inventory, env={"ANSIBLE_PIPELINING": "1"})
    assert result.returncode == 0 and result.failed() == 0, \
        result.output[-8000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tarball() -> Path:
    return role_test_tarball()


def test_role_in_an_image_root(tarball, tmp_path):
    with ChrootTarget(tarball, tmp_path, name="probe-image") as target:
        state = build_pki(tmp_path / ".state" / "pki", target.name, "192.0.2.20", "192.0.2.10",
                          ["192.0.2.0/24"])
        variables = {"mplane_supervisor_address": "192.0.2.10", "mplane_tls": True,
                     "probe_daemon_service_state": "",
                     "probe_daemon_build_dir": str(tmp_path / "packages"),
                     "probe_daemon_measurements": {"tstat": {"enabled": False},
                                                   "ott": {"playout_s": 60}}}
        first = apply(tmp_path, target, **variables)
        assert first.changed(target.name) > 5, first.stats
        second = apply(tmp_path, target, **variables)
        assert second.changed(target.name) == 0, second.output[-8000:]

        host = target.testinfra_host()
        assert host.package("probe-daemon").is_installed
        key = host.file("/etc/mplane/certs/probe.key")
        assert key.mode == 0o600 and key.user == "root"
        bundle = state.hosts_dir / target.name
        assert key.content_string == (bundle / "key.pem").read_text()
        assert host.file("/etc/mplane/certs/ca.pem").content_string == \
            (bundle / "chain.pem").read_text()
        assert host.file("/etc/mplane/certs").mode == 0o700
        conf = host.file("/etc/mplane/probe.conf").content_string
        assert "supervisor_url = https://192.0.2.10:8889/" in conf
        assert "[tstat]\nenabled = no" in conf and "[ott]\nplayout_s = 60" in conf
        assert host.file(
            "/etc/systemd/system/multi-user.target.wants/probe-daemon.service").is_symlink
        # The daemon itself finds the configuration and credentials good (the supervisor is
        # not there: that is only a warning).
        check = host.run("probe-daemon --config /etc/mplane/probe.conf --check")
        assert check.rc == 0 and "ok: " in check.stdout, check.stdout + check.stderr
        # Nothing was started inside the image (the check above has exited).
        assert processes_rooted_in(target.root) == []


def test_live_host_registers_with_the_supervisor(tarball, tmp_path):
    venv = ri_venv(default_cache_dir())
    registry = registry_file(tmp_path)
    with SshTarget(tarball, tmp_path, name="probe-live") as target:
        state = build_pki(tmp_path / ".state" / "pki", target.name, target.host,
                          target.host_address, ["10.254.0.0/16", "127.0.0.0/8"])
        component_port, client_port = free_port(), free_port()
        # The RI binds every interface: the probe reaches it on the host end of its veth.
        with RISupervisor(venv, tmp_path, component_port=component_port,
                          client_port=client_port, host=target.host_address,
                          tls=TLSFiles.from_pki_bundle(state.hosts_dir / "supervisor"),
                          authz_ini=state.authz_path.read_text(),
                          registry_preload=registry) as supervisor:
            apply(tmp_path, target, mplane_supervisor_address=target.host_address,
                  mplane_supervisor_component_port=component_port, mplane_tls=True,
                  probe_daemon_service_state="", probe_daemon_poll_interval=1,
                  probe_daemon_build_dir=str(tmp_path / "packages"))
            host = target.testinfra_host()
            # No systemd in this target: the package's init script starts it.
            started = host.run("/etc/init.d/probe-daemon start")
            assert started.rc == 0, started.stdout + started.stderr
            operator = TLSFiles.from_pki_bundle(state.hosts_dir / "operator")
            deadline = time.monotonic() + 60
            labels: list[str] = []
            while time.monotonic() < deadline and "ping-average-ip4" not in labels:
                labels = list_capabilities(venv, supervisor.client_url, tls=operator,
                                           registry_preload=registry)
                time.sleep(1)
            assert "ping-average-ip4" in labels, host.run("tail -n 30 /var/log/syslog "
                                                          "/var/log/probe-daemon.log").stdout
            stopped = host.run("/etc/init.d/probe-daemon stop")
            assert stopped.rc == 0
