# SPDX-License-Identifier: Apache-2.0
"""playbooks/deploy.yml end to end, for real: the PKI role makes the deployment's identities,
then the supervisor and probe_daemon roles are applied over SSH to a throw-away Debian 12 host
(its own sshd in its own mount, PID and network namespace) that is both the testbed's
supervisor and a probe, as the appliance will be. The installed services are started from what
the roles installed, the probe daemon registers with the supervisor over mutual TLS, and the
RI client on the controller, with the operator's identity, gets a ping result through it.
A second run of the playbook changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rig.mplane_ri import (
    RIError,
    TLSFiles,
    default_cache_dir,
    free_port,
    list_capabilities,
    result_row,
    ri_venv,
    run_specification,
)
from tests.conftest import REPO
from tests.support.debian_root import role_test_tarball
from tests.support.probe_daemon_proc import registry_file
from tests.support.targets import (
    SshTarget,
    mounts_under,
    processes_rooted_in,
    run_playbook,
)

pytestmark = [pytest.mark.slow, pytest.mark.ansible, pytest.mark.mplane_ri,
              pytest.mark.skipif(os.geteuid() != 0, reason="targets need root")]
PLAYBOOK = REPO / "playbooks" / "deploy.yml"
SUPERVISOR_UNIT = "/etc/systemd/system/mplane-supervisor.service"


@pytest.fixture(scope="module")
def supervisor_artifacts() -> None:
    """The supervisor's pinned wheels in the artifact cache (from PyPI on first use)."""
    done = subprocess.run([sys.executable, "-m", "artifacts", "fetch", "--group", "supervisor"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def write_inventory(directory: Path, target: SshTarget, client_port: int,
                    component_port: int) -> Path:
    """A partner's inventory in miniature: the target is the supervisor and a passive probe,
    the operator works from the controller."""
    directory.mkdir()
    inventory = {"all": {
        "vars": {
            "mplane_supervisor_host": target.name,
            "mplane_supervisor_address": target.host,
            "mplane_supervisor_client_port": client_port,
            "mplane_supervisor_component_port": component_port,
            "mplane_tls": True,
            "pki_deployment": "deploy-test",
            "pki_domains": ["deploy-test.internal"],
            "pki_networks": ["10.254.0.0/16", "127.0.0.0/8"],
            "pki_ca_passphrase_file": str(directory / "ca.passphrase"),
            "pki_ca_passphrase_file_create": True,
            "pki_mplane_roles": {"operators": ["clients"], "supervisors": ["supervisors"]},
            "pki_authorizations": {"ping-": ["operators"], "glimpse-": ["operators"]},
            # This target has no systemd: the roles enable the services, the test starts them.
            "supervisor_service_state": "",
            "probe_daemon_service_state": "",
            "probe_daemon_poll_interval": 1,
            "probe_daemon_build_dir": str(directory.parent / "packages"),
        },
        "children": {
            "supervisors": {"hosts": {target.name: target.ansible_hostvars()}},
            "probes": {"children": {"passive_probes": {"hosts": {target.name: {}}}}},
            "clients": {"hosts": {"operator": {"ansible_host": "127.0.0.1",
                                               "ansible_connection": "ansible.builtin.local"}}},
        },
    }}
    path = directory / "hosts.yml"
    path.write_text(json.dumps(inventory, indent=2) + "\n")
    return path


def deploy(inventory: Path) -> tuple[float, object]:
    started = time.monotonic()
    result = run_playbook(PLAYBOOK, inventory, env={"ANSIBLE_PIPELINING": "1"})
    assert result.returncode == 0 and result.failed() == 0, \
        result.output[-8000:] + result.stderr[-3000:]
    return time.monotonic() - started, result


def start_supervisor(target: SshTarget) -> str:
    """Start mpsup exactly as its installed unit would, detached from the SSH session."""
    unit = target.run("cat", SUPERVISOR_UNIT)
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines()
                      if line.startswith("ExecStart="))
    log = "/var/log/mplane-supervisor.log"
    target.run("sh", "-c", f"cd / && PYTHONUNBUFFERED=1 setsid -f {exec_start} "
                           f">{log} 2>&1 </dev/null")
    return log


def test_deploy_yields_a_working_supervisor_and_probe(supervisor_artifacts, tmp_path, capsys):
    venv = ri_venv(default_cache_dir())
    registry = registry_file(tmp_path)
    client_port, component_port = free_port(), free_port()
    with SshTarget(role_test_tarball(["python3-venv"]), tmp_path, name="appliance") as target:
        inventory = write_inventory(tmp_path / "inventory", target, client_port, component_port)
        first_time, first = deploy(inventory)
        assert first.changed(target.name) > 10, first.report()

        # The PKI role made the identities in the inventory's state directory.
        bundles = tmp_path / "inventory" / ".state" / "pki" / "hosts"
        assert {p.name for p in bundles.iterdir()} == {target.name, "operator"}
        host = target.testinfra_host()
        conf = host.file("/etc/mplane/supervisor.conf").content_string
        assert "/etc/mplane/registries/glimpse-registry.json" in conf
        assert "org.mplane.Clients.operator = operators" in conf
        probe_conf = host.file("/etc/mplane/probe.conf").content_string
        assert f"supervisor_url = https://{target.host}:{component_port}/" in probe_conf

        log = start_supervisor(target)
        started = host.run("/etc/init.d/probe-daemon start")
        assert started.rc == 0, started.stdout + started.stderr

        def logs() -> str:
            return host.run(f"tail -n 40 {log} /var/log/syslog /var/log/probe-daemon.log").stdout

        operator = TLSFiles.from_pki_bundle(bundles / "operator")
        url = f"https://{target.host}:{client_port}/"
        labels: list[str] = []
        deadline = time.monotonic() + 90
        while "ping-average-ip4" not in labels:
            assert time.monotonic() < deadline, f"probe never visible, saw {labels}\n{logs()}"
            with contextlib.suppress(RIError):  # the supervisor is still starting
                labels = list_capabilities(venv, url, tls=operator, registry_preload=registry)
            time.sleep(1)

        reply = run_specification(venv, url, "ping-average-ip4",
                                  {"destination.ip4": target.host_address,
                                   "source.ip4": target.host},
                                  tls=operator, when="now + 2s / 1s",
                                  registry_preload=registry)
        row = result_row(reply)
        # The RI client hands values back as the strings of the wire format.
        assert int(row["delay.twoway.icmp.count"]) >= 1, reply
        assert 0 < int(row["delay.twoway.icmp.us.min"]) <= int(row["delay.twoway.icmp.us.max"]), \
            reply
        assert "Traceback" not in host.file(log).content_string, logs()

        # An identity the PKI never issued is refused by the deployed supervisor.
        with pytest.raises(RIError):
            list_capabilities(venv, url, tls=None, registry_preload=registry, timeout=15)

        assert host.run("/etc/init.d/probe-daemon stop").rc == 0
        second_time, second = deploy(inventory)
        assert second.changed(target.name) == 0, second.report()
        assert second.changed("operator") == 0, second.report()
    assert mounts_under(tmp_path.resolve()) == []
    assert processes_rooted_in(tmp_path.resolve()) == []
    with capsys.disabled():
        print(f"\ndeploy.yml over SSH: first run {first_time:.1f} s, second {second_time:.1f} s")
