# SPDX-License-Identifier: Apache-2.0
"""Issued certificates are what every element needs, checked with the real openssl."""

import ipaddress
import stat
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki import Deployment, sync
from pki.ca import mplane_identity
from pki.keys import generate_key
from tests.conftest import PASSPHRASE, openssl, rig_request


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_certificate_verifies_against_the_chain(issued):
    for host in ("supervisor", "probe-01", "probe-02", "operator"):
        bundle = issued.hosts_dir / host
        result = openssl("verify", "-CAfile", str(bundle / "ca.pem"),
                         "-untrusted", str(bundle / "chain.pem"), str(bundle / "cert.pem"))
        assert result.stdout.strip().endswith(": OK")
        # The chain file alone is what the mPlane RI gets as ca-chain.
        openssl("verify", "-CAfile", str(bundle / "chain.pem"), str(bundle / "cert.pem"))


def test_subjects_follow_the_convention_and_give_predictable_identities(issued):
    expected = {
        "supervisor": "org.mplane.Supervisors.supervisor",
        "probe-01": "org.mplane.Probes.probe-01",
        "operator": "org.mplane.Clients.operator",
    }
    for host, identity in expected.items():
        cert = load(issued.hosts_dir / host / "cert.pem")
        assert mplane_identity(cert.subject) == identity
        assert cert.subject.rfc4514_string().startswith("CN=")  # printed most specific first


def test_key_usage_follows_the_group(issued):
    def ekus(host):
        cert = load(issued.hosts_dir / host / "cert.pem")
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    both = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ekus("supervisor") == both
    assert ekus("probe-01") == both
    assert ekus("operator") == {ExtendedKeyUsageOID.CLIENT_AUTH}
    cert = load(issued.hosts_dir / "probe-01" / "cert.pem")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_sans_carry_names_and_addresses(issued):
    cert = load(issued.hosts_dir / "probe-01" / "cert.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["probe-01.test-rig.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_bundle_holds_key_0600_and_ri_form(issued):
    bundle = issued.hosts_dir / "probe-02"
    assert stat.S_IMODE((bundle / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.resolve().stat().st_mode) == 0o700
    key = (bundle / "key.pem").read_bytes()
    cert = load(bundle / "cert.pem")
    assert load_pem_private_key(key, None).public_key() == cert.public_key()
    ri = (bundle / "cert-mplane.pem").read_text()
    # The RI reads its identity from the "Subject:" line of the text dump ...
    subject_line = next(line for line in ri.splitlines() if line.strip().startswith("Subject:"))
    fields = subject_line.strip()[len("Subject:"):].replace(" ", "").split(",")
    assert ".".join(f.split("=")[1] for f in fields) == "org.mplane.Probes.probe-02"
    # ... and the PEM block after it is the same certificate.
    assert x509.load_pem_x509_certificate(ri.encode()) == cert


def test_issuing_ca_is_name_constrained_and_root_can_stay_offline(issued):
    issuing = load(issued.issuing_cert_path)
    nc = issuing.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    permitted = nc.value.permitted_subtrees
    assert x509.DNSName("test-rig.internal") in permitted
    assert x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")) in permitted
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    root = load(issued.root_cert_path)
    assert root.not_valid_after_utc - issuing.not_valid_after_utc > timedelta(days=365)


def test_ca_keys_are_encrypted_at_rest(issued):
    for path in (issued.root_key_path, issued.issuing_key_path):
        text = path.read_text()
        assert "BEGIN ENCRYPTED PRIVATE KEY" in text
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert openssl("pkey", "-in", str(path), "-passin", "pass:wrong", "-noout",
                       check=False).returncode != 0
        openssl("pkey", "-in", str(path), "-passin", f"pass:{PASSPHRASE.decode()}", "-noout")


def test_constraints_reject_a_name_the_ca_should_not_certify(issued, deployment):
    """A certificate the issuing CA signs outside its constraints fails verification."""
    now = datetime.now(UTC)
    ca = issued.issuing_ca(PASSPHRASE, now)
    rogue_request = rig_request(domains=["evil.example"], networks=["10.0.0.0/8"], hosts=[
        {"name": "rogue", "groups": ["probes"], "address": "10.1.2.3"}])
    rogue_deployment = Deployment.from_request(rogue_request)
    rogue = rogue_deployment.hosts[0]
    cert = ca.issue(deployment, rogue, generate_key("ecdsa-p256").public_key(), now)
    path = issued.path.parent / "rogue.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    result = openssl("verify", "-CAfile", str(issued.chain_path), str(path), check=False)
    assert result.returncode != 0
    assert "permitted subtree violation" in result.stdout + result.stderr


def test_rsa_is_selectable(state):
    for key_type, bits in (("rsa-2048", 2048), ("rsa-3072", 3072)):
        st = state.__class__(state.path.parent / key_type)
        sync(st, Deployment.from_request(rig_request(key_type=key_type)), PASSPHRASE)
        cert = load(st.hosts_dir / "probe-01" / "cert.pem")
        assert isinstance(cert.public_key(), rsa.RSAPublicKey)
        assert cert.public_key().key_size == bits
        openssl("verify", "-CAfile", str(st.chain_path),
                str(st.hosts_dir / "probe-01" / "cert.pem"))


def test_default_is_ecdsa_p256_with_short_validity(issued):
    cert = load(issued.hosts_dir / "probe-01" / "cert.pem")
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=89) < lifetime <= timedelta(days=91)
