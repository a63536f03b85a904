# SPDX-License-Identifier: Apache-2.0
"""Certificate construction: the root CA, the issuing CA, host certificates and CRLs.

Pure functions of their inputs (keys, names, clock): no files here.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from pki.deployment import Deployment, HostRequest
from pki.keys import PrivateKey

# Devices' clocks drift and a fresh certificate must work at once on all of them.
BACKDATE = timedelta(minutes=5)

REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


def _dc_name(deployment: Deployment, *rest: x509.NameAttribute) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.DOMAIN_COMPONENT, dc) for dc in deployment.subject_dc]
        + list(rest)
    )


def host_subject(deployment: Deployment, host: HostRequest) -> x509.Name:
    return _dc_name(
        deployment,
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, host.profile.organizational_unit),
        x509.NameAttribute(NameOID.COMMON_NAME, host.common_name),
    )


def mplane_identity(subject: x509.Name) -> str:
    """The identity the mPlane RI derives from a subject: RDN values joined by '.'."""
    return ".".join(str(attr.value) for attr in subject)


def host_sans(host: HostRequest) -> list[x509.GeneralName]:
    return [x509.DNSName(d) for d in host.dns_names] + [
        x509.IPAddress(ip) for ip in host.ip_addresses
    ]


# SHA-256 for every key type: what every TLS stack on the rig and on OpenWrt verifies.
HASH = hashes.SHA256()


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )


def make_root(deployment: Deployment, key: PrivateKey, now: datetime) -> x509.Certificate:
    name = _dc_name(deployment, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                   "Certificate Authority"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{deployment.name} root CA"))
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + deployment.root_validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, HASH)
    )


def name_constraints(deployment: Deployment) -> x509.NameConstraints:
    permitted: list[x509.GeneralName] = [x509.DNSName(d) for d in deployment.domains]
    permitted += [x509.IPAddress(net) for net in deployment.networks]
    # The subject prefix is constrained too, so the issuing CA cannot mint an identity
    # outside the deployment's mPlane namespace.
    permitted.append(x509.DirectoryName(_dc_name(deployment)))
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def make_issuing(deployment: Deployment, key: PrivateKey, root_cert: x509.Certificate,
                 root_key: PrivateKey, now: datetime) -> x509.Certificate:
    name = _dc_name(deployment, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                   "Certificate Authority"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{deployment.name} issuing CA"))
    public = key.public_key()
    not_after = min(now + deployment.issuing_validity, root_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(root_cert.subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(name_constraints(deployment), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_cert.public_key()),
            critical=False)
        .sign(root_key, HASH)
    )


@dataclass(frozen=True)
class IssuingCA:
    cert: x509.Certificate
    key: PrivateKey

    def issue(self, deployment: Deployment, host: HostRequest, public_key: object,
              now: datetime) -> x509.Certificate:
        not_after = min(now + deployment.cert_validity, self.cert.not_valid_after_utc)
        rsa = deployment.key_type.startswith("rsa")
        return (
            x509.CertificateBuilder()
            .subject_name(host_subject(deployment, host)).issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=rsa,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(host.profile.extended_key_usages),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(host_sans(host)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False)
            .sign(self.key, HASH)
        )

    def sign_crl(self, revoked: Iterable[tuple[int, datetime, str]], number: int,
                 now: datetime, validity: timedelta) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - BACKDATE).next_update(now + validity)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False)
        )
        for serial, when, reason in revoked:
            entry = (x509.RevokedCertificateBuilder().serial_number(serial)
                     .revocation_date(when))
            if reason != "unspecified":
                entry = entry.add_extension(x509.CRLReason(REVOCATION_REASONS[reason]),
                                            critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(self.key, HASH)
