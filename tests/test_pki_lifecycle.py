# SPDX-License-Identifier: Apache-2.0
"""Renewal, revocation, CRLs and the state directory's safety under failure."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from pki import Deployment, PKIError, PKIState, revoke, sync
from pki.operations import refresh_crl
from tests.conftest import PASSPHRASE, REPO, openssl, rig_request, tree_snapshot


def serial_of(state: PKIState, host: str) -> int:
    cert = x509.load_pem_x509_certificate((state.hosts_dir / host / "cert.pem").read_bytes())
    return cert.serial_number


def crl_check(state: PKIState, host: str) -> subprocess.CompletedProcess[str]:
    bundle = state.path.parent / "chain-with-crl.pem"
    bundle.write_bytes(state.chain_path.read_bytes() + state.crl_path.read_bytes())
    return openssl("verify", "-crl_check", "-CAfile", str(bundle),
                   str(state.hosts_dir / host / "cert.pem"), check=False)


# -- renewal ---------------------------------------------------------------------------------

def test_second_run_changes_nothing(issued, deployment):
    before = tree_snapshot(issued.path)
    report = sync(issued, deployment, PASSPHRASE)
    assert not report.changed
    assert tree_snapshot(issued.path) == before


def test_renews_only_hosts_inside_the_renewal_window(issued, deployment):
    serials = {h.name: serial_of(issued, h.name) for h in deployment.hosts}
    # 59 days on, 31 days remain: outside the 30-day window.
    report = sync(issued, deployment, PASSPHRASE, now=datetime.now(UTC) + timedelta(days=59))
    assert report.issued == []
    report = sync(issued, deployment, PASSPHRASE, now=datetime.now(UTC) + timedelta(days=61))
    assert sorted(i["host"] for i in report.issued) == sorted(serials)
    assert all(i["reason"].startswith("expires") for i in report.issued)
    assert all(serial_of(issued, h) != s for h, s in serials.items())


def test_changed_sans_reissue_that_host_only(issued):
    serials = {h: serial_of(issued, h) for h in ("probe-01", "probe-02")}
    request = rig_request()
    request["hosts"][1]["ip_addresses"] = ["127.0.0.1", "::1"]
    report = sync(issued, Deployment.from_request(request), PASSPHRASE)
    assert [(i["host"], i["reason"]) for i in report.issued] == [("probe-01", "names changed")]
    assert serial_of(issued, "probe-02") == serials["probe-02"]
    assert serial_of(issued, "probe-01") != serials["probe-01"]
    # The superseded bundle and its key are gone; the index remembers the old serial.
    assert len(list(issued.bundles_dir.iterdir())) == 4
    statuses = [r.status for r in issued.load_index().certificates if r.host == "probe-01"]
    assert statuses == ["superseded", "current"]


def test_changed_group_changes_subject(issued):
    request = rig_request()
    request["hosts"][3]["groups"] = ["supervisors"]
    report = sync(issued, Deployment.from_request(request), PASSPHRASE)
    assert [(i["host"], i["reason"]) for i in report.issued] == [("operator", "subject changed")]


def test_deleted_bundle_file_is_repaired(issued, deployment):
    (issued.hosts_dir / "probe-02" / "key.pem").unlink()
    report = sync(issued, deployment, PASSPHRASE)
    assert [(i["host"], i["reason"]) for i in report.issued] == [("probe-02", "bundle incomplete")]


# -- revocation and CRL ----------------------------------------------------------------------

def test_revoked_certificate_fails_crl_check(issued):
    assert crl_check(issued, "probe-01").returncode == 0
    cert_copy = issued.path.parent / "probe-01.pem"
    shutil.copy(issued.hosts_dir / "probe-01" / "cert.pem", cert_copy)
    report = revoke(issued, PASSPHRASE, host="probe-01", reason="key-compromise")
    assert report.revoked[0]["host"] == "probe-01"
    bundle = issued.path.parent / "chain-with-crl.pem"
    bundle.write_bytes(issued.chain_path.read_bytes() + issued.crl_path.read_bytes())
    result = openssl("verify", "-crl_check", "-CAfile", str(bundle), str(cert_copy), check=False)
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr
    crl = x509.load_pem_x509_crl(issued.crl_path.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(
        x509.load_pem_x509_certificate(cert_copy.read_bytes()).serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.key_compromise
    # The bundle with the compromised key is gone, and so are the host's mPlane roles.
    assert not (issued.hosts_dir / "probe-01").exists()
    assert crl_check(issued, "probe-02").returncode == 0


def test_revoked_host_is_never_silently_reissued(issued, deployment):
    revoke(issued, PASSPHRASE, host="operator", reason="key-compromise")
    assert "org.mplane.Clients.operator" not in issued.authz_path.read_text()
    report = sync(issued, deployment, PASSPHRASE)
    assert report.blocked == ["operator"]
    assert report.issued == []
    assert not (issued.hosts_dir / "operator").exists()
    report = sync(issued, deployment, PASSPHRASE, reissue=frozenset({"operator"}))
    assert [i["host"] for i in report.issued] == ["operator"]
    assert crl_check(issued, "operator").returncode == 0
    assert "org.mplane.Clients.operator = operators" in issued.authz_path.read_text()


def test_revoke_by_serial_of_a_superseded_certificate(issued):
    old = format(serial_of(issued, "probe-02"), "X")
    sync(issued, Deployment.from_request(rig_request()), PASSPHRASE,
         reissue=frozenset({"probe-02"}))
    revoke(issued, PASSPHRASE, serial=old.lower(), reason="superseded")
    crl = x509.load_pem_x509_crl(issued.crl_path.read_bytes())
    assert [e.serial_number for e in crl] == [int(old, 16)]
    # Revoking a certificate no longer in use does not take the host down.
    assert crl_check(issued, "probe-02").returncode == 0
    with pytest.raises(PKIError, match="already revoked"):
        revoke(issued, PASSPHRASE, serial=old, reason="superseded")
    with pytest.raises(PKIError, match="no certificate with serial"):
        revoke(issued, PASSPHRASE, serial="ABCDEF", reason="superseded")


def test_crl_is_resigned_before_next_update(issued, deployment):
    crl = x509.load_pem_x509_crl(issued.crl_path.read_bytes())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.next_update_utc - crl.last_update_utc >= timedelta(days=7)
    assert not refresh_crl(issued, PASSPHRASE).crl_signed
    later = datetime.now(UTC) + timedelta(days=4)  # past half of the 7-day validity
    assert refresh_crl(issued, PASSPHRASE, now=later).crl_signed
    crl2 = x509.load_pem_x509_crl(issued.crl_path.read_bytes())
    assert crl2.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert crl2.next_update_utc > crl.next_update_utc
    # A sync re-signs it too, so running the playbook regularly keeps it current.
    report = sync(issued, deployment, PASSPHRASE, now=later + timedelta(days=4))
    assert report.crl_signed and report.issued == []


# -- passphrase, tampering, corruption: clear error, nothing changed -------------------------

def test_wrong_passphrase_changes_nothing(issued):
    request = rig_request()
    request["hosts"].append({"name": "probe-03", "groups": ["probes"], "address": "127.0.0.3"})
    before = tree_snapshot(issued.path)
    with pytest.raises(PKIError, match="wrong passphrase"):
        sync(issued, Deployment.from_request(request), b"not the passphrase at all")
    with pytest.raises(PKIError, match="wrong passphrase"):
        revoke(issued, b"not the passphrase at all", host="probe-01")
    assert tree_snapshot(issued.path) == before


def test_issuing_works_without_the_root_key(issued):
    offline = issued.path.parent / "root.key.offline"
    shutil.move(issued.root_key_path, offline)
    request = rig_request()
    request["hosts"].append({"name": "probe-03", "groups": ["probes"], "address": "127.0.0.3"})
    report = sync(issued, Deployment.from_request(request), PASSPHRASE)
    assert [i["host"] for i in report.issued] == ["probe-03"]
    revoke(issued, PASSPHRASE, host="probe-03", reason="cessation-of-operation")


def test_tampered_issuing_certificate_is_refused(issued, deployment, tmp_path):
    # Swap in an issuing certificate from another PKI: same file name, wrong signer.
    other = PKIState(tmp_path / "other")
    sync(other, deployment, PASSPHRASE)
    shutil.copy(other.issuing_cert_path, issued.issuing_cert_path)
    with pytest.raises(PKIError, match="fails its signature check"):
        sync(issued, deployment, PASSPHRASE)


def test_mismatched_issuing_key_is_refused(issued, deployment, tmp_path):
    other = PKIState(tmp_path / "other")
    sync(other, deployment, PASSPHRASE)
    shutil.copy(other.issuing_key_path, issued.issuing_key_path)
    with pytest.raises(PKIError, match="does not belong to"):
        sync(issued, deployment, PASSPHRASE)


def test_expired_ca_is_refused(issued, deployment):
    with pytest.raises(PKIError, match="expired on"):
        sync(issued, deployment, PASSPHRASE, now=datetime.now(UTC) + timedelta(days=1100))


def test_corrupt_index_is_refused(issued, deployment):
    issued.index_path.write_text("{not json")
    with pytest.raises(PKIError, match=r"index .* is corrupt"):
        sync(issued, deployment, PASSPHRASE)


def test_missing_index_with_ca_present_is_refused(issued, deployment):
    issued.index_path.unlink()
    with pytest.raises(PKIError, match=r"no index\.json"):
        sync(issued, deployment, PASSPHRASE)
    assert issued.root_key_path.exists()


def test_domain_outside_existing_ca_is_refused(issued):
    request = rig_request(domains=["test-rig.internal", "elsewhere.example"])
    with pytest.raises(PKIError, match=r"elsewhere\.example, which the issuing CA does not permit"):
        sync(issued, Deployment.from_request(request), PASSPHRASE)


def test_state_of_another_deployment_is_refused(issued):
    with pytest.raises(PKIError, match="belongs to deployment 'test-rig'"):
        sync(issued, Deployment.from_request(rig_request(deployment="other")), PASSPHRASE)


def test_concurrent_run_is_refused(issued, deployment):
    with issued.locked(), pytest.raises(PKIError, match="another probeforge-pki run"):
        sync(issued, deployment, PASSPHRASE)


@pytest.mark.slow
def test_interrupted_run_leaves_a_usable_state(tmp_path):
    """SIGKILL in the middle of issuing 400 hosts, then a re-run: every host verifies."""
    hosts = [{"name": f"p{i:03d}", "groups": ["probes"],
              "address": f"127.0.{i // 250}.{i % 250 + 1}"} for i in range(400)]
    request = rig_request(hosts=hosts)
    (tmp_path / "request.json").write_text(json.dumps(request))
    state = PKIState(tmp_path / "pki")
    sync(state, Deployment.from_request(rig_request(hosts=hosts[:10])), PASSPHRASE)
    command = [sys.executable, "-m", "pki", "sync", "--state", str(state.path),
               "--request", str(tmp_path / "request.json")]
    env = {**os.environ, "PROBEFORGE_PKI_PASSPHRASE": PASSPHRASE.decode(), "PYTHONPATH": str(REPO)}
    interrupted = 0
    for delay in (0.3, 0.5, 0.7):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        interrupted += proc.wait() == -signal.SIGKILL
        # Whatever the moment, the committed state is consistent: every linked bundle verifies.
        index = state.load_index()
        for record in index.certificates:
            assert (state.hosts_dir / record.host / "cert.pem").exists()
    assert interrupted, "the run finished before it could be interrupted"
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    index = state.load_index()
    assert sorted(r.host for r in index.certificates if r.status == "current") == \
        sorted(h["name"] for h in hosts)
    assert not [p for p in state.bundles_dir.iterdir() if p.name.startswith(".tmp")]
    assert len(list(state.bundles_dir.iterdir())) == 400
    issuing = x509.load_pem_x509_certificate(state.issuing_cert_path.read_bytes())
    for host in hosts:
        cert_path = state.hosts_dir / host["name"] / "cert.pem"
        x509.load_pem_x509_certificate(cert_path.read_bytes()).verify_directly_issued_by(issuing)
    for host in hosts[::50]:
        openssl("verify", "-CAfile", str(state.chain_path),
                str(state.hosts_dir / host["name"] / "cert.pem"))
    report = sync(state, Deployment.from_request(request), PASSPHRASE)
    assert not report.changed
