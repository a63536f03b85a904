# SPDX-License-Identifier: Apache-2.0
"""The PKI request: what the inventory says every host's identity must be, validated up front.

The request is plain JSON (the ``pki`` role renders it from the inventory), so the command line
and tests can build one without Ansible. Every rule that can be checked without the CA is
checked here, before anything is written.
"""

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pki.errors import PKIError
from pki.keys import KEY_TYPES
from pki.profiles import PROFILES, Profile

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_DC = re.compile(r"^[A-Za-z0-9-]{1,63}$")


def is_dns_name(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def in_domain(name: str, domain: str) -> bool:
    name, domain = name.lower(), domain.lower()
    return name == domain or name.endswith("." + domain)


@dataclass(frozen=True)
class HostRequest:
    """One host's wanted identity."""

    name: str
    profile: Profile
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deployment:
    """A validated request for a whole deployment."""

    name: str
    subject_dc: tuple[str, ...]
    domains: tuple[str, ...]
    networks: tuple[IPNetwork, ...]
    hosts: tuple[HostRequest, ...]
    key_type: str = "ecdsa-p256"
    cert_validity: timedelta = timedelta(days=90)
    renew_before: timedelta = timedelta(days=30)
    crl_validity: timedelta = timedelta(days=7)
    root_validity: timedelta = timedelta(days=3650)
    issuing_validity: timedelta = timedelta(days=1095)
    # mPlane role -> inventory groups whose hosts hold it
    mplane_roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # capability label (matched as substring by the supervisor) -> roles allowed to use it
    authorizations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, source: str = "request") -> "Deployment":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PKIError(f"{source} is not valid JSON ({exc})",
                           "pass the request the pki role renders") from None
        return cls.from_request(data)

    @classmethod
    def from_request(cls, data: Mapping[str, Any]) -> "Deployment":
        return _parse(data)

    def host(self, name: str) -> HostRequest:
        for host in self.hosts:
            if host.name == name:
                return host
        raise PKIError(f"host {name!r} is not in the deployment", "check the host name")

    def roles_of(self, host: HostRequest) -> list[str]:
        return sorted(role for role, groups in self.mplane_roles.items()
                      if set(groups) & set(host.groups))


def _fail(where: str, problem: str, fix: str) -> PKIError:
    return PKIError(f"{where}: {problem}", fix)


def _days(data: Mapping[str, Any], key: str, default: timedelta) -> timedelta:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _fail(key, f"{value!r} is not a positive whole number of days",
                    f"set pki_{key} to a number of days such as {default.days}")
    return timedelta(days=value)


def _str_list(data: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, f"{key} must be a list of strings, not {value!r}",
                    f"write {key} as a YAML list")
    return value


def _ip(value: str, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise _fail(where, f"{value!r} is not an IP address",
                    "fix the address in the inventory (ansible_host or pki_ip_addresses)") from None


def _parse(data: Mapping[str, Any]) -> Deployment:
    if not isinstance(data, Mapping):
        raise PKIError("the request is not a JSON object", "pass the request the pki role renders")
    name = data.get("deployment")
    if not isinstance(name, str) or not is_dns_name(name):
        raise _fail("deployment", f"{name!r} is not a valid deployment name",
                    "set pki_deployment to letters, digits and hyphens")
    subject_dc = tuple(data.get("subject_dc") or ("org", "mplane"))
    for dc in subject_dc:
        if not isinstance(dc, str) or not _DC.match(dc):
            raise _fail("subject_dc", f"{dc!r} is not a valid domain component",
                        "use letters, digits and hyphens, e.g. [org, mplane]")

    domains = [d.lower().strip(".") for d in _str_list(data, "domains", "request")]
    if not domains:
        raise _fail("domains", "no DNS domain is permitted",
                    "set pki_domains to the deployment's DNS domains (e.g. [rig.example.internal])")
    for domain in domains:
        if not is_dns_name(domain):
            raise _fail("domains", f"{domain!r} is not a DNS domain", "fix pki_domains")
    networks: list[IPNetwork] = []
    for net in _str_list(data, "networks", "request"):
        try:
            networks.append(ipaddress.ip_network(net))
        except ValueError:
            raise _fail("networks", f"{net!r} is not an address range",
                        "write pki_networks entries as CIDR, e.g. 10.10.0.0/16") from None

    key_type = data.get("key_type") or "ecdsa-p256"
    if key_type not in KEY_TYPES:
        raise _fail("key_type", f"unknown key type {key_type!r}",
                    f"set pki_key_type to one of {', '.join(KEY_TYPES)}")
    defaults = Deployment.__dataclass_fields__
    cert_validity = _days(data, "cert_validity_days", defaults["cert_validity"].default)
    renew_before = _days(data, "renew_before_days", defaults["renew_before"].default)
    if renew_before >= cert_validity:
        raise _fail("renew_before_days", "the renewal window is as long as the validity",
                    "set pki_renew_before_days below pki_cert_validity_days")
    crl_validity = _days(data, "crl_validity_days", defaults["crl_validity"].default)
    root_validity = _days(data, "root_validity_days", defaults["root_validity"].default)
    issuing_validity = _days(data, "issuing_validity_days", defaults["issuing_validity"].default)
    if issuing_validity > root_validity:
        raise _fail("issuing_validity_days", "the issuing CA would outlive its root",
                    "set pki_issuing_validity_days below pki_root_validity_days")

    inventory_groups = set(_str_list(data, "inventory_groups", "request"))
    group_profiles = data.get("group_profiles") or {}
    # A profile group the inventory lacks is fine (a deployment without operators has no
    # clients); a host that falls in no profile group is the error, reported by name below.
    for group, profile in group_profiles.items():
        if profile not in PROFILES:
            raise _fail("group_profiles", f"group {group!r} maps to unknown profile {profile!r}",
                        f"use one of {', '.join(PROFILES)}")

    mplane_roles: dict[str, tuple[str, ...]] = {}
    for role, groups in (data.get("mplane_roles") or {}).items():
        groups = _str_list({"groups": groups}, "groups", f"mplane_roles.{role}")
        for group in groups:
            if inventory_groups and group not in inventory_groups:
                raise _fail(f"mplane_roles.{role}", f"group {group!r} is not in the inventory",
                            "fix the group name in pki_mplane_roles or add the group")
        mplane_roles[role] = tuple(groups)
    authorizations: dict[str, tuple[str, ...]] = {}
    for label, roles in (data.get("authorizations") or {}).items():
        roles = _str_list({"roles": roles}, "roles", f"authorizations.{label}")
        for role in roles:
            if role not in mplane_roles:
                raise _fail(f"authorizations.{label}", f"role {role!r} is not defined",
                            "add it to pki_mplane_roles or fix the role name")
        authorizations[label] = tuple(roles)

    hosts = _parse_hosts(data.get("hosts"), group_profiles, domains, networks)
    return Deployment(
        name=name, subject_dc=subject_dc, domains=tuple(domains), networks=tuple(networks),
        hosts=hosts, key_type=key_type, cert_validity=cert_validity, renew_before=renew_before,
        crl_validity=crl_validity, root_validity=root_validity, issuing_validity=issuing_validity,
        mplane_roles=mplane_roles, authorizations=authorizations,
    )


def _profile_for(host: Mapping[str, Any], name: str, group_profiles: Mapping[str, str]) -> Profile:
    explicit = host.get("profile")
    if explicit:
        if explicit not in PROFILES:
            raise _fail(f"host {name}", f"pki_profile {explicit!r} is unknown",
                        f"use one of {', '.join(PROFILES)}")
        return PROFILES[explicit]
    wanted = {group_profiles[g] for g in host.get("groups") or [] if g in group_profiles}
    for profile in PROFILES.values():
        if profile.name in wanted:
            return profile
    raise _fail(f"host {name}", f"is in none of the PKI groups ({', '.join(group_profiles)})",
                "add it to one of them or set pki_profile for it")


def _parse_hosts(raw: Any, group_profiles: Mapping[str, str], domains: list[str],
                 networks: list[IPNetwork]) -> tuple[HostRequest, ...]:
    if not isinstance(raw, list) or not raw:
        raise PKIError("the request lists no hosts", "add hosts to the inventory")
    hosts: list[HostRequest] = []
    seen_names: set[str] = set()
    seen_cns: dict[str, str] = {}
    for entry in raw:
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not is_dns_name(name):
            raise _fail(f"host {name!r}", "is not a valid host name (letters, digits, hyphens, "
                        "dots)", "rename the host in the inventory")
        if name in seen_names:
            raise _fail(f"host {name}", "is listed twice", "list each host once")
        seen_names.add(name)
        where = f"host {name}"
        profile = _profile_for(entry, name, group_profiles)
        common_name = entry.get("common_name") or name
        if not isinstance(common_name, str) or not is_dns_name(common_name):
            raise _fail(where, f"common name {common_name!r} is invalid",
                        "set pki_common_name to letters, digits, hyphens and dots")
        if common_name.lower() in seen_cns:
            raise _fail(where, f"common name {common_name!r} is already used by host "
                        f"{seen_cns[common_name.lower()]}",
                        "give each host its own pki_common_name")
        seen_cns[common_name.lower()] = name

        address = entry.get("address")
        dns_names = entry.get("dns_names")
        ip_addresses = entry.get("ip_addresses")
        derived_ip: list[str] = []
        domain = entry.get("domain") or domains[0]
        if domain not in domains:
            raise _fail(where, f"pki_domain {domain!r} is not one of pki_domains",
                        "add it to pki_domains or fix pki_domain")
        fqdn = name if any(in_domain(name, d) for d in domains) else f"{name}.{domain}"
        derived_dns = [fqdn]
        if isinstance(address, str) and address:
            try:
                ipaddress.ip_address(address)
                derived_ip = [address]
            except ValueError:
                derived_dns.append(address)
        dns = _str_list({"d": dns_names}, "d", where) if dns_names is not None else derived_dns
        ips = _str_list({"i": ip_addresses}, "i", where) if ip_addresses is not None else derived_ip
        for dns_name in dns:
            if not is_dns_name(dns_name):
                raise _fail(where, f"{dns_name!r} is not a valid DNS name",
                            "fix pki_dns_names or ansible_host")
            if not any(in_domain(dns_name, d) for d in domains):
                raise _fail(where, f"DNS name {dns_name} is outside the permitted domains "
                            f"({', '.join(domains)})",
                            "fix the name, or add its domain to pki_domains before the CA is made")
        parsed_ips = tuple(_ip(ip, where) for ip in ips)
        for ip in parsed_ips:
            if not any(ip in net for net in networks):
                raise _fail(where, f"address {ip} is outside the permitted networks "
                            f"({', '.join(map(str, networks)) or 'none'})",
                            "fix the address, or add its range to pki_networks before the CA is "
                            "made")
        hosts.append(HostRequest(
            name=name, profile=profile, common_name=common_name,
            dns_names=tuple(dict.fromkeys(d.lower() for d in dns)),
            ip_addresses=tuple(dict.fromkeys(parsed_ips)),
            groups=tuple(entry.get("groups") or ()),
        ))
    return tuple(hosts)
