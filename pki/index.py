# SPDX-License-Identifier: Apache-2.0
"""The index of issued and revoked certificates: the commit point of every PKI change."""

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pki.errors import PKIError

FORMAT = 1

CURRENT, SUPERSEDED, REVOKED = "current", "superseded", "revoked"


def serial_hex(serial: int) -> str:
    """Upper-case hex in whole bytes, as `openssl x509 -serial` prints it."""
    digits = f"{serial:X}"
    return digits.zfill(len(digits) + len(digits) % 2)


@dataclass
class CertRecord:
    serial: str  # hex, as `openssl x509 -serial` prints it
    host: str
    subject: str
    identity: str
    profile: str
    dns_names: list[str]
    ip_addresses: list[str]
    key_type: str
    issuer_serial: str
    not_before: str
    not_after: str
    status: str = CURRENT
    revoked_at: str | None = None
    reason: str | None = None
    # True when this was the host's certificate in use at revocation: the host then stays
    # without one until re-issue is asked for explicitly.
    revoked_while_current: bool = False

    @property
    def serial_int(self) -> int:
        return int(self.serial, 16)

    @property
    def not_after_dt(self) -> datetime:
        return datetime.fromisoformat(self.not_after)

    @property
    def bundle_name(self) -> str:
        return f"{self.host}-{self.serial[:16].lower()}"


@dataclass
class Index:
    deployment: str
    crl_number: int = 0
    crl_validity_days: int = 7
    # What the inventory last asked for: mPlane identity -> roles, capability label -> roles.
    # Kept here so a revocation can withdraw an identity's roles without the inventory.
    roles: dict[str, list[str]] = field(default_factory=dict)
    authorizations: dict[str, list[str]] = field(default_factory=dict)
    certificates: list[CertRecord] = field(default_factory=list)

    def current(self, host: str) -> CertRecord | None:
        for record in reversed(self.certificates):
            if record.host == host and record.status == CURRENT:
                return record
        return None

    def latest(self, host: str) -> CertRecord | None:
        for record in reversed(self.certificates):
            if record.host == host:
                return record
        return None

    def is_blocked(self, host: str) -> bool:
        """A host whose certificate was revoked is never re-issued silently."""
        latest = self.latest(host)
        return latest is not None and latest.status == REVOKED and latest.revoked_while_current

    def by_serial(self, serial: str) -> CertRecord | None:
        wanted = int(serial, 16)
        for record in self.certificates:
            if record.serial_int == wanted:
                return record
        return None

    def revoked(self) -> list[CertRecord]:
        return [r for r in self.certificates if r.status == REVOKED]

    def to_json(self) -> bytes:
        data = {"format": FORMAT, "deployment": self.deployment, "crl_number": self.crl_number,
                "crl_validity_days": self.crl_validity_days, "roles": self.roles,
                "authorizations": self.authorizations,
                "certificates": [asdict(r) for r in self.certificates]}
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "Index":
        try:
            data: dict[str, Any] = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            return cls(
                deployment=data["deployment"],
                crl_number=int(data["crl_number"]),
                crl_validity_days=int(data["crl_validity_days"]),
                roles=dict(data["roles"]),
                authorizations=dict(data["authorizations"]),
                certificates=[CertRecord(**r) for r in data["certificates"]],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise PKIError(f"the PKI index {where} is corrupt ({exc})",
                           "restore the state directory from its backup") from None
