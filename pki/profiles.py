# SPDX-License-Identifier: Apache-2.0
"""Certificate profiles: what a host may do is decided by its inventory group.

The subject convention is ``DC=<dc>..., OU=<profile OU>, CN=<host>``, so the mPlane identity of
every element (its subject's RDN values joined by ".") is known before it is issued:
``DC=org, DC=mplane, OU=Probes, CN=probe-01`` is ``org.mplane.Probes.probe-01``.
"""

from dataclasses import dataclass

from cryptography.x509.oid import ExtendedKeyUsageOID


@dataclass(frozen=True)
class Profile:
    name: str
    organizational_unit: str
    server_auth: bool

    @property
    def extended_key_usages(self) -> list:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if self.server_auth:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        return usages


# Order is precedence: a host in several profile groups gets the first one listed here.
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("supervisor", "Supervisors", server_auth=True),
        Profile("probe", "Probes", server_auth=True),
        Profile("component", "Components", server_auth=True),
        Profile("client", "Clients", server_auth=False),
    )
}
