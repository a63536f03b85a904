# SPDX-License-Identifier: Apache-2.0
"""What the PKI does: bring every host's identity in line with the inventory, and revoke.

Every operation checks the passphrase, the CA and the request before it writes anything.
"""

import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import ca as certs
from pki.authz import render_authz
from pki.ca import IssuingCA
from pki.deployment import Deployment, HostRequest, in_domain
from pki.errors import PKIError
from pki.files import write_atomic, write_new
from pki.index import CURRENT, REVOKED, SUPERSEDED, CertRecord, Index, serial_hex
from pki.keys import encrypted_pem, generate_key, plain_pem
from pki.mplane_form import mplane_forms
from pki.state import BUNDLE_FILES, PKIState, pem


@dataclass
class Report:
    created_ca: bool = False
    issued: list[dict[str, str]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    revoked: list[dict[str, str]] = field(default_factory=list)
    crl_signed: bool = False
    authz_changed: bool = False
    not_in_inventory: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created_ca or self.issued or self.revoked or self.crl_signed
                    or self.authz_changed)

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "created_ca": self.created_ca, "issued": self.issued,
                "blocked": self.blocked, "revoked": self.revoked, "crl_signed": self.crl_signed,
                "authz_changed": self.authz_changed, "not_in_inventory": self.not_in_inventory}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# -- CA creation ---------------------------------------------------------------------------

def _create(state: PKIState, deployment: Deployment, passphrase: bytes, now: datetime) -> None:
    """Build a complete new PKI beside the state directory, then rename it into place."""
    if state.path.exists() and any(state.path.iterdir()):
        raise PKIError(f"{state.path} holds files but no index.json (corrupt state)",
                       "restore index.json from the state directory's backup, or move the "
                       "directory away to start a new PKI")
    staging = PKIState(state.path.with_name(f".{state.path.name}.new"))
    shutil.rmtree(staging.path, ignore_errors=True)
    staging.path.mkdir(mode=0o700)
    staging.ca_dir.mkdir(mode=0o700)
    root_key = generate_key(deployment.key_type)
    issuing_key = generate_key(deployment.key_type)
    root = certs.make_root(deployment, root_key, now)
    issuing = certs.make_issuing(deployment, issuing_key, root, root_key, now)
    write_atomic(staging.root_key_path, encrypted_pem(root_key, passphrase), mode=0o600)
    write_atomic(staging.issuing_key_path, encrypted_pem(issuing_key, passphrase), mode=0o600)
    write_atomic(staging.root_cert_path, pem(root))
    write_atomic(staging.issuing_cert_path, pem(issuing))
    write_atomic(staging.chain_path, pem(issuing) + pem(root))
    index = Index(deployment=deployment.name, crl_validity_days=deployment.crl_validity.days)
    _refresh_crl(staging, index, IssuingCA(issuing, issuing_key), now)
    staging.commit_index(index)
    if state.path.exists():
        state.path.rmdir()
    os.rename(staging.path, state.path)


# -- CRL -----------------------------------------------------------------------------------

def _crl_is_current(state: PKIState, index: Index, ca: IssuingCA, now: datetime) -> bool:
    try:
        crl = x509.load_pem_x509_crl(state.crl_path.read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    if not crl.is_signature_valid(ca.cert.public_key()):  # type: ignore[arg-type]
        return False
    listed = {entry.serial_number for entry in crl}
    if listed != {r.serial_int for r in index.revoked()}:
        return False
    # Re-signed once half its life is gone, so a CRL in use is never stale.
    half_life = timedelta(days=index.crl_validity_days) / 2
    return crl.next_update_utc is not None and crl.next_update_utc - now > half_life


def _refresh_crl(state: PKIState, index: Index, ca: IssuingCA, now: datetime) -> bool:
    if _crl_is_current(state, index, ca, now):
        return False
    number = index.crl_number
    try:
        old = x509.load_pem_x509_crl(state.crl_path.read_bytes())
        old_number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        number = max(number, old_number)
    except (FileNotFoundError, ValueError, x509.ExtensionNotFound):
        pass
    index.crl_number = number + 1
    revoked = [(r.serial_int, datetime.fromisoformat(r.revoked_at or r.not_before),
                r.reason or "unspecified") for r in index.revoked()]
    crl = ca.sign_crl(revoked, index.crl_number, now, timedelta(days=index.crl_validity_days))
    write_atomic(state.crl_path, crl.public_bytes(serialization.Encoding.PEM))
    return True


def _write_authz(state: PKIState, index: Index) -> bool:
    blocked = {r.identity for r in index.certificates if index.is_blocked(r.host)}
    roles = {identity: r for identity, r in index.roles.items() if identity not in blocked}
    text = render_authz(index.deployment, roles, index.authorizations).encode()
    if state.authz_path.exists() and state.authz_path.read_bytes() == text:
        return False
    write_atomic(state.authz_path, text)
    return True


# -- sync ----------------------------------------------------------------------------------

def _check_constraints(deployment: Deployment, ca: IssuingCA) -> None:
    constraints = ca.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    permitted = constraints.permitted_subtrees or []
    domains = [n.value for n in permitted if isinstance(n, x509.DNSName)]
    networks = [n.value for n in permitted if isinstance(n, x509.IPAddress)]
    for domain in deployment.domains:
        if not any(in_domain(domain, d) for d in domains):
            raise PKIError(f"pki_domains names {domain}, which the issuing CA does not permit "
                           f"(it was made for {', '.join(domains)})",
                           "remove it, or move the state directory away to make a new PKI")
    for net in deployment.networks:
        if not any(net.version == n.version and net.subnet_of(n) for n in networks):
            raise PKIError(f"pki_networks names {net}, which the issuing CA does not permit "
                           f"(it was made for {', '.join(map(str, networks)) or 'none'})",
                           "remove it, or move the state directory away to make a new PKI")


def _why_issue(state: PKIState, deployment: Deployment, host: HostRequest,
               current: CertRecord | None, ca: IssuingCA, now: datetime) -> str | None:
    if current is None:
        return "new"
    if current.subject != certs.host_subject(deployment, host).rfc4514_string():
        return "subject changed"
    if (current.dns_names != list(host.dns_names)
            or current.ip_addresses != [str(ip) for ip in host.ip_addresses]):
        return "names changed"
    if current.key_type != deployment.key_type:
        return "key type changed"
    if current.issuer_serial != serial_hex(ca.cert.serial_number):
        return "issuing CA changed"
    if current.not_after_dt - now <= deployment.renew_before:
        return f"expires {current.not_after_dt:%Y-%m-%d}"
    bundle = state.hosts_dir / host.name
    if not all((bundle / name).is_file() for name in BUNDLE_FILES):
        return "bundle incomplete"
    return None


def _record(deployment: Deployment, host: HostRequest, cert: x509.Certificate,
            ca: IssuingCA) -> CertRecord:
    return CertRecord(
        serial=serial_hex(cert.serial_number), host=host.name,
        subject=cert.subject.rfc4514_string(), identity=certs.mplane_identity(cert.subject),
        profile=host.profile.name, dns_names=list(host.dns_names),
        ip_addresses=[str(ip) for ip in host.ip_addresses],
        key_type=deployment.key_type, issuer_serial=serial_hex(ca.cert.serial_number),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
    )


def _issue(state: PKIState, deployment: Deployment, hosts: list[HostRequest], ca: IssuingCA,
           now: datetime) -> list[CertRecord]:
    """Write a new bundle for each host; nothing refers to them until the index is committed."""
    chain = state.chain_path.read_bytes()
    root = state.root_cert_path.read_bytes()
    issued: list[tuple[HostRequest, x509.Certificate, Path]] = []
    for host in hosts:
        key = generate_key(deployment.key_type)
        cert = ca.issue(deployment, host, key.public_key(), now)
        record = _record(deployment, host, cert, ca)
        tmp = state.new_bundle_dir(record.bundle_name)
        # The directory is renamed into place only when complete, so its files need no
        # atomic write of their own; one sync below makes the whole batch durable.
        write_new(tmp / "key.pem", plain_pem(key), mode=0o600)
        write_new(tmp / "cert.pem", pem(cert))
        write_new(tmp / "chain.pem", chain)
        write_new(tmp / "ca.pem", root)
        issued.append((host, cert, tmp))
    forms = mplane_forms([cert for _, cert, _ in issued])
    records = []
    for (host, cert, tmp), form in zip(issued, forms, strict=True):
        write_new(tmp / "cert-mplane.pem", form)
        record = _record(deployment, host, cert, ca)
        final = state.bundles_dir / record.bundle_name
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        records.append(record)
    os.sync()
    return records


def sync(state: PKIState, deployment: Deployment, passphrase: bytes,
         reissue: frozenset[str] = frozenset(), now: datetime | None = None) -> Report:
    """Create the PKI if needed and give every host a valid certificate matching the inventory."""
    now = now or _now()
    report = Report()
    unknown = reissue - {h.name for h in deployment.hosts}
    if unknown:
        raise PKIError(f"cannot re-issue {', '.join(sorted(unknown))}: not in the inventory",
                       "fix the host names in pki_reissue_hosts / --reissue")
    with state.locked():
        if not state.exists():
            _create(state, deployment, passphrase, now)
            report.created_ca = True
        index = state.load_index()
        if index.deployment != deployment.name:
            raise PKIError(f"{state.path} belongs to deployment {index.deployment!r}, not "
                           f"{deployment.name!r}", "point pki_state_dir at this inventory's own "
                           "state directory")
        ca = state.issuing_ca(passphrase, now)
        _check_constraints(deployment, ca)

        todo: list[tuple[HostRequest, str]] = []
        for host in deployment.hosts:
            if index.is_blocked(host.name) and host.name not in reissue:
                report.blocked.append(host.name)
                continue
            current = index.current(host.name)
            reason = _why_issue(state, deployment, host, current, ca, now)
            if reason is None and host.name in reissue:
                reason = "re-issue requested"
            if reason is not None:
                todo.append((host, reason))
        if todo:
            records = _issue(state, deployment, [h for h, _ in todo], ca, now)
            for (host, reason), record in zip(todo, records, strict=True):
                old = index.current(host.name)
                if old is not None:
                    old.status = SUPERSEDED
                index.certificates.append(record)
                report.issued.append({"host": host.name, "serial": record.serial,
                                      "reason": reason})
        index.crl_validity_days = deployment.crl_validity.days
        index.roles = {}
        for host in deployment.hosts:
            record = index.current(host.name)
            roles = deployment.roles_of(host)
            if record is not None and roles:
                index.roles[record.identity] = roles
        index.authorizations = {k: list(v) for k, v in deployment.authorizations.items()}
        state.commit_index(index)
        state.link_hosts(index)
        report.crl_signed = _refresh_crl(state, index, ca, now)
        if report.crl_signed:
            state.commit_index(index)
        report.authz_changed = _write_authz(state, index)
        known = {h.name for h in deployment.hosts}
        report.not_in_inventory = sorted({r.host for r in index.certificates
                                          if r.status == CURRENT and r.host not in known})
    return report


# -- revocation ----------------------------------------------------------------------------

def revoke(state: PKIState, passphrase: bytes, *, host: str | None = None,
           serial: str | None = None, reason: str = "unspecified",
           now: datetime | None = None) -> Report:
    """Revoke a host's current certificate, or any certificate by serial, and re-sign the CRL."""
    now = now or _now()
    if reason not in certs.REVOCATION_REASONS:
        raise PKIError(f"unknown revocation reason {reason!r}",
                       f"use one of {', '.join(certs.REVOCATION_REASONS)}")
    if (host is None) == (serial is None):
        raise PKIError("say what to revoke", "give either a host name or a serial")
    with state.locked():
        index = state.load_index()
        ca = state.issuing_ca(passphrase, now)
        if host is not None:
            record = index.current(host)
            if record is None:
                latest = index.latest(host)
                if latest is not None and latest.status == REVOKED:
                    raise PKIError(f"host {host} is already revoked ({latest.reason}, "
                                   f"{latest.revoked_at})", "nothing to do")
                raise PKIError(f"host {host} has no certificate", "check the host name "
                               "(`probeforge-pki status` lists them)")
        else:
            try:
                record = index.by_serial(serial or "")
            except ValueError:
                raise PKIError(f"{serial!r} is not a hexadecimal serial number",
                               "copy it from `probeforge-pki status`") from None
            if record is None:
                raise PKIError(f"no certificate with serial {serial} was issued by this CA",
                               "copy it from `probeforge-pki status`")
            if record.status == REVOKED:
                raise PKIError(f"certificate {serial} is already revoked ({record.reason})",
                               "nothing to do")
        record.revoked_while_current = record.status == CURRENT
        record.status = REVOKED
        record.revoked_at = now.isoformat()
        record.reason = reason
        state.commit_index(index)
        state.link_hosts(index)
        _refresh_crl(state, index, ca, now)
        state.commit_index(index)
        report = Report(crl_signed=True)
        report.revoked.append({"host": record.host, "serial": record.serial, "reason": reason})
        report.authz_changed = _write_authz(state, index)
        return report


def refresh_crl(state: PKIState, passphrase: bytes, now: datetime | None = None) -> Report:
    """Re-sign the CRL if it is past half its life (for a timer or cron job)."""
    now = now or _now()
    with state.locked():
        index = state.load_index()
        ca = state.issuing_ca(passphrase, now)
        report = Report(crl_signed=_refresh_crl(state, index, ca, now))
        if report.crl_signed:
            state.commit_index(index)
        return report

