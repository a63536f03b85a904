# SPDX-License-Identifier: Apache-2.0
"""playbooks/pki.yml with real ansible-playbook runs against copies of the shipped inventories."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from pki import PKIState
from tests.conftest import REPO, openssl

pytestmark = [pytest.mark.ansible, pytest.mark.slow]
BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def playbook(inventory: Path, *extra: str, env: dict[str, str] | None = None):
    run_env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "NO_COLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", **(env or {})}
    run_env.pop("PROBEFORGE_PKI_PASSPHRASE", None) if env is None else None
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/pki.yml", *extra],
        cwd=REPO, env=run_env, capture_output=True, text=True)
    recap = {m[0]: (int(m[1]), int(m[2]), int(m[3])) for m in RECAP.findall(result.stdout)}
    return result, recap


def copy_inventory(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(REPO / "inventory" / name, target, ignore=shutil.ignore_patterns(".state"))
    return target


def changed(recap) -> int:
    return sum(c for c, _, _ in recap.values())


def test_rig_inventory_creates_ca_and_bundles_then_changes_nothing(tmp_path):
    inventory = copy_inventory("virtual-rig", tmp_path)
    secret = tmp_path / "config" / "rig.passphrase"
    first, recap = playbook(inventory, "-e", f"pki_ca_passphrase_file={secret}")
    assert first.returncode == 0, first.stdout[-3000:]
    assert changed(recap) == 1
    state = PKIState(inventory / ".state" / "pki")
    for host in ("supervisor", "probe-01", "probe-02", "operator"):
        bundle = state.hosts_dir / host
        openssl("verify", "-CAfile", str(bundle / "chain.pem"), str(bundle / "cert.pem"))
    cert = x509.load_pem_x509_certificate((state.hosts_dir / "probe-01" / "cert.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=probe-01,OU=Probes,DC=mplane,DC=org"
    authz = state.authz_path.read_text()
    assert "org.mplane.Clients.operator = operators" in authz
    assert "ping- = operators" in authz
    second, recap = playbook(inventory, "-e", f"pki_ca_passphrase_file={secret}")
    assert second.returncode == 0, second.stdout[-3000:]
    assert changed(recap) == 0, second.stdout[-3000:]
    # A host added to the inventory gets its certificate; the others are untouched.
    hosts = inventory / "hosts.yml"
    hosts.write_text(hosts.read_text().replace(
        "              rig_console_port: 4422\n",
        "              rig_console_port: 4422\n            probe-03:\n"
        "              ansible_host: 127.0.0.1\n"))
    third, recap = playbook(inventory, "-e", f"pki_ca_passphrase_file={secret}", "-v")
    assert third.returncode == 0, third.stdout[-3000:]
    assert "probe-03" in third.stdout and "reason: new" in third.stdout
    assert [r.host for r in state.load_index().certificates if r.status == "current"].count(
        "probe-01") == 1
    assert len([r for r in state.load_index().certificates]) == 5


def test_examples_inventory_with_vaulted_passphrase(tmp_path):
    inventory = copy_inventory("examples", tmp_path)
    vault_password = tmp_path / "vault-password"
    vault_password.write_text("vault-secret-for-tests\n")
    encrypted = subprocess.run(
        [str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file",
         str(vault_password), "a-consortium-ca-passphrase", "--name", "pki_ca_passphrase"],
        capture_output=True, text=True, check=True).stdout
    (inventory / "group_vars" / "all" / "vault.yml").write_text("---\n" + encrypted)
    first, recap = playbook(inventory, "--vault-password-file", str(vault_password), env={})
    assert first.returncode == 0, first.stdout[-3000:]
    state = PKIState(inventory / ".state" / "pki")
    key = state.issuing_key_path
    assert openssl("pkey", "-in", str(key), "-passin", "pass:a-consortium-ca-passphrase",
                   "-noout", check=False).returncode == 0
    assert "a-consortium-ca-passphrase" not in first.stdout + first.stderr
    san = openssl("x509", "-in", str(state.hosts_dir / "sup-vienna" / "cert.pem"), "-noout",
                  "-ext", "subjectAltName").stdout
    assert "DNS:supervisor.vienna.testbed.example" in san and "IP Address:198.51.100.10" in san
    assert "DNS:mp-torino-dorms.torino.testbed.example" in openssl(
        "x509", "-in", str(state.hosts_dir / "mp-torino-dorms" / "cert.pem"), "-noout",
        "-ext", "subjectAltName").stdout
    second, recap = playbook(inventory, "--vault-password-file", str(vault_password), env={})
    assert second.returncode == 0 and changed(recap) == 0


def test_wrong_inventory_stops_with_one_clear_line_and_writes_nothing(tmp_path):
    inventory = copy_inventory("virtual-rig", tmp_path)
    hosts = inventory / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("    clients:\n", "    operators:\n"))
    (inventory / "group_vars" / "all" / "pki.yml").write_text(
        (inventory / "group_vars" / "all" / "pki.yml").read_text().replace(
            "operators: [clients]", "operators: [operators]"))
    result, _ = playbook(inventory, "-e", f"pki_ca_passphrase_file={tmp_path / 'p'}")
    assert result.returncode != 0
    assert ("probeforge-pki: error: host operator: is in none of the PKI groups "
            "(supervisors, probes, clients); add it to one of them or set pki_profile for it"
            ) in result.stdout
    assert not (inventory / ".state" / "pki").exists()


def test_bad_variable_fails_argument_validation(tmp_path):
    inventory = copy_inventory("virtual-rig", tmp_path)
    result, _ = playbook(inventory, "-e", "pki_key_type=dsa")
    assert result.returncode != 0
    assert "pki_key_type" in result.stdout and "dsa" in result.stdout
    assert not (inventory / ".state").exists()
