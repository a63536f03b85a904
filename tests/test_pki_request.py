# SPDX-License-Identifier: Apache-2.0
"""Bad input stops with one line naming the problem and the fix, before anything is written."""

import json
import os
import subprocess
import sys

import pytest

from pki import Deployment, PKIError
from tests.conftest import PASSPHRASE, REPO, rig_request


def host(name, groups=("probes",), address="127.0.0.1", **extra):
    return {"name": name, "groups": list(groups), "address": address, **extra}


BAD_REQUESTS = {
    "unknown group": (
        rig_request(mplane_roles={"operators": ["client"]}),
        "mplane_roles.operators: group 'client' is not in the inventory",
    ),
    "host in a misspelt group": (
        rig_request(group_profiles={"supervisor": "supervisor", "probes": "probe",
                                    "clients": "client"}),
        "host supervisor: is in none of the PKI groups (supervisor, probes, clients)",
    ),
    "unknown profile": (
        rig_request(group_profiles={"probes": "prober"}),
        "maps to unknown profile 'prober'",
    ),
    "host in no PKI group": (
        rig_request(hosts=[host("lost", groups=["ungrouped"])]),
        "host lost: is in none of the PKI groups",
    ),
    "duplicate CN": (
        rig_request(hosts=[host("a"), host("b", common_name="A")]),
        "common name 'A' is already used by host a",
    ),
    "invalid host name": (
        rig_request(hosts=[host("probe_01")]),
        "is not a valid host name",
    ),
    "invalid address": (
        rig_request(hosts=[host("p", ip_addresses=["127.0.0.300"])]),
        "'127.0.0.300' is not an IP address",
    ),
    "address outside networks": (
        rig_request(hosts=[host("p", address="192.0.2.7")]),
        "address 192.0.2.7 is outside the permitted networks",
    ),
    "name outside domains": (
        rig_request(hosts=[host("p", dns_names=["p.example.com"])]),
        "DNS name p.example.com is outside the permitted domains",
    ),
    "bad key type": (rig_request(key_type="dsa-1024"), "unknown key type 'dsa-1024'"),
    "renewal window too long": (
        rig_request(cert_validity_days=30, renew_before_days=30),
        "renewal window is as long as the validity",
    ),
    "undefined role": (
        rig_request(authorizations={"ping-": ["admins"]}),
        "role 'admins' is not defined",
    ),
    "no domains": (rig_request(domains=[]), "no DNS domain is permitted"),
    "bad network": (rig_request(networks=["10.0.0.0/33"]), "'10.0.0.0/33' is not an address range"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_is_refused(name):
    request, message = BAD_REQUESTS[name]
    with pytest.raises(PKIError) as error:
        Deployment.from_request(request)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert error.value.fix  # every error names the fix


def test_precedence_of_profiles_and_overrides():
    deployment = Deployment.from_request(rig_request(hosts=[
        host("both", groups=["clients", "supervisors"]),
        host("pinned", groups=["probes"], profile="component"),
    ]))
    assert deployment.host("both").profile.name == "supervisor"
    assert deployment.host("pinned").profile.organizational_unit == "Components"


def test_default_sans_and_per_host_domain():
    request = rig_request(domains=["a.internal", "b.internal"], hosts=[
        host("x"), host("y", domain="b.internal"), host("z.b.internal"),
        host("w", address="w.a.internal")])
    d = Deployment.from_request(request)
    assert d.host("x").dns_names == ("x.a.internal",)
    assert d.host("y").dns_names == ("y.b.internal",)
    assert d.host("z.b.internal").dns_names == ("z.b.internal",)
    assert d.host("w").dns_names == ("w.a.internal",) and d.host("w").ip_addresses == ()


DEFAULT_PASSPHRASE = PASSPHRASE.decode()


def run_cli(tmp_path, *args, stdin=None, passphrase=DEFAULT_PASSPHRASE):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROBEFORGE_PKI_PASSPHRASE", None)
    if passphrase is not None:
        env["PROBEFORGE_PKI_PASSPHRASE"] = passphrase
    return subprocess.run([sys.executable, "-m", "pki", *args], input=stdin, text=True,
                          capture_output=True, env=env, cwd=tmp_path)


def test_cli_bad_request_prints_one_line_and_writes_nothing(tmp_path):
    request = json.dumps(rig_request(hosts=[host("probe_01")]))
    result = run_cli(tmp_path, "sync", "--state", "pki", "--request", "-", stdin=request)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("probeforge-pki: error: host 'probe_01': ")
    assert not (tmp_path / "pki").exists()


def test_cli_missing_passphrase(tmp_path):
    result = run_cli(tmp_path, "sync", "--state", "pki", "--request", "-",
                     stdin=json.dumps(rig_request()), passphrase=None)
    assert result.returncode == 2
    assert "no CA passphrase given; set PROBEFORGE_PKI_PASSPHRASE" in result.stderr
    assert not (tmp_path / "pki").exists()


def test_cli_broken_json(tmp_path):
    result = run_cli(tmp_path, "sync", "--state", "pki", "--request", "-", stdin="{")
    assert result.returncode == 2 and "is not valid JSON" in result.stderr


def test_cli_passphrase_file_is_created_once_and_required_after(tmp_path):
    request = json.dumps(rig_request())
    secret = tmp_path / "secret" / "ca.passphrase"
    args = ("sync", "--state", "pki", "--request", "-", "--passphrase-file", str(secret),
            "--create-passphrase-file")
    first = run_cli(tmp_path, *args, stdin=request, passphrase=None)
    assert first.returncode == 0, first.stderr
    assert "created root and issuing CA" in first.stdout
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    second = run_cli(tmp_path, *args, stdin=request, passphrase=None)
    assert "nothing to do" in second.stdout
    secret.unlink()
    third = run_cli(tmp_path, *args, stdin=request, passphrase=None)
    assert third.returncode == 2
    assert "cannot open the existing CA keys" in third.stderr


def test_cli_status_and_revoke(tmp_path):
    run_cli(tmp_path, "sync", "--state", "pki", "--request", "-", stdin=json.dumps(rig_request()))
    result = run_cli(tmp_path, "revoke", "--state", "pki", "--host", "probe-02",
                     "--reason", "key-compromise")
    assert result.returncode == 0 and "revoked probe-02" in result.stdout
    status = run_cli(tmp_path, "status", "--state", "pki", "--json", passphrase=None)
    rows = {r["host"]: r for r in json.loads(status.stdout)}
    assert rows["probe-02"]["status"] == "revoked"
    assert rows["probe-02"]["reason"] == "key-compromise"
    assert rows["probe-01"]["identity"] == "org.mplane.Probes.probe-01"
    again = run_cli(tmp_path, "revoke", "--state", "pki", "--host", "probe-02")
    assert again.returncode == 2 and "already revoked" in again.stderr
