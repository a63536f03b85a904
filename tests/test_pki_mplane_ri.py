# SPDX-License-Identifier: Apache-2.0
"""The PKI's bundles and authorizations work with the mPlane reference implementation.

ISSUE requirement: the mPlane reference supervisor (mplane-sdk from PyPI, in a
Python 3.11 venv the test makes), started with a generated bundle and the
generated authorization sections, serves an authorized client and refuses an
unauthorized one.

Everything TLS-related comes from ``pki.sync`` on a request as the ``pki`` role
would render it: the name-constrained issuing CA, ECDSA P-256 keys, each
host's ``chain.pem``, ``cert-mplane.pem`` and ``key.pem``, and ``authz.ini``.
"""

from __future__ import annotations

import configparser
import contextlib
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pki import Deployment, PKIState, revoke, sync
from pki.ca import mplane_identity
from rig.mplane_ri import (
    RI_PING_LABELS,
    RIComponent,
    RIError,
    RISupervisor,
    TLSFiles,
    default_cache_dir,
    fetch_capabilities,
    free_port,
    list_capabilities,
    result_row,
    ri_venv,
    run_specification,
)

pytestmark = [pytest.mark.slow, pytest.mark.mplane_ri]

PASSPHRASE = b"a-long-test-passphrase"
PING_TARGET = {"destination.ip4": "127.0.0.1"}
NO_PERMISSION = "User has no permission to request this capability"

needs_ping = pytest.mark.skipif(
    shutil.which("ping") is None, reason="no ping binary on PATH (Debian: iputils-ping)"
)


def pki_request(deployment: str) -> dict[str, Any]:
    """A request as the pki role renders it from an inventory.

    "operator-2" is a second member of the clients group: it stays authorized
    when "operator" is revoked, which shows a restarted supervisor is serving.
    """
    hosts = [
        ("supervisor", "supervisors"),
        ("probe-01", "probes"),
        ("operator", "clients"),
        ("operator-2", "clients"),
        ("guest", "guests"),
    ]
    return {
        "deployment": deployment,
        "domains": [f"{deployment}.internal"],
        "networks": ["127.0.0.0/8"],
        "inventory_groups": ["supervisors", "probes", "clients", "guests"],
        "group_profiles": {
            "supervisors": "supervisor",
            "probes": "probe",
            "clients": "client",
            "guests": "client",
        },
        "mplane_roles": {"operators": ["clients"], "supervisors": ["supervisors"]},
        "authorizations": {"ping-": ["operators"]},
        "hosts": [
            {"name": name, "groups": [group], "address": "127.0.0.1"} for name, group in hosts
        ],
    }


def authz_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """``[Roles]`` and ``[Authorizations]`` of an authz.ini as the RI reads them."""
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {
        section: {key: value.split(",") for key, value in parser[section].items()}
        for section in ("Roles", "Authorizations")
    }


@dataclass(frozen=True)
class RigPKI:
    """One deployment's PKI state directory, as the RI tests use it."""

    state: PKIState

    @classmethod
    def create(cls, path: Path, request: Mapping[str, Any]) -> RigPKI:
        state = PKIState(path)
        sync(state, Deployment.from_request(request), PASSPHRASE)
        return cls(state)

    def cert(self, host: str) -> x509.Certificate:
        path = self.state.hosts_dir / host / "cert.pem"
        return x509.load_pem_x509_certificate(path.read_bytes())

    def tls(self, host: str) -> TLSFiles:
        return TLSFiles.from_pki_bundle(self.state.hosts_dir / host)

    def identity(self, host: str) -> str:
        """The name the RI knows ``host`` by, derived from its certificate."""
        return mplane_identity(self.cert(host).subject)

    @property
    def authz_ini(self) -> str:
        return self.state.authz_path.read_text()

    def component_authz(self) -> dict[str, dict[str, list[str]]]:
        """What an RI ping component needs: the supervisor, in the roles the
        PKI gave it, may use the ping capabilities. The PKI grants no
        component capabilities; that is the component's own configuration."""
        supervisor = self.identity("supervisor")
        roles = authz_tables(self.authz_ini)["Roles"][supervisor]
        return {"roles": {supervisor: roles}, "authorizations": {"ping-": roles}}


@contextlib.contextmanager
def ri_rig(venv: Path, work: Path, pki: RigPKI, authz_ini: str) -> Iterator[RISupervisor]:
    """A TLS supervisor with the PKI's authz.ini and an RI ping component, both
    on PKI bundles; ready once operator-2 (a client the authz.ini grants) sees
    the ping capabilities."""
    with (
        RISupervisor(
            venv,
            work,
            component_port=free_port(),
            client_port=free_port(),
            tls=pki.tls("supervisor"),
            authz_ini=authz_ini,
        ) as supervisor,
        RIComponent(
            venv,
            work,
            supervisor_url=supervisor.component_url,
            tls=pki.tls("probe-01"),
            **pki.component_authz(),
            wait_client_url=supervisor.client_url,
            wait_client_tls=pki.tls("operator-2"),
        ),
    ):
        yield supervisor


@pytest.fixture(scope="module")
def venv() -> Path:
    return ri_venv(default_cache_dir())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> RigPKI:
    return RigPKI.create(tmp_path_factory.mktemp("pki") / "state", pki_request("ri-test"))


@pytest.fixture(scope="module")
def supervisor(venv, pki, tmp_path_factory) -> Iterator[RISupervisor]:
    with ri_rig(venv, tmp_path_factory.mktemp("ri-tls"), pki, pki.authz_ini) as running:
        yield running


# --- what the PKI generated ----------------------------------------------------


def test_generated_authz_grants_operators_only(pki) -> None:
    tables = authz_tables(pki.authz_ini)
    assert tables["Roles"] == {
        pki.identity("operator"): ["operators"],
        pki.identity("operator-2"): ["operators"],
        pki.identity("supervisor"): ["supervisors"],
    }
    assert tables["Authorizations"] == {"ping-": ["operators"]}
    assert pki.identity("guest") not in tables["Roles"]
    # The identity the RI reads from the "Subject:" line of cert-mplane.pem.
    assert pki.identity("supervisor") == "org.mplane.Supervisors.supervisor"


# --- authorized and unauthorized clients -----------------------------------------


def test_operator_sees_exactly_the_ping_capabilities(venv, pki, supervisor) -> None:
    labels = list_capabilities(venv, supervisor.client_url, tls=pki.tls("operator"))
    # The RI component's "callback" pseudo-capability matches no authorization.
    assert labels == sorted(RI_PING_LABELS)


@needs_ping
def test_operator_gets_a_ping_result(venv, pki, supervisor) -> None:
    result = run_specification(
        venv, supervisor.client_url, "ping-average-ip4", PING_TARGET, tls=pki.tls("operator")
    )
    values = result_row(result)
    assert result["label"].startswith("ping-average-ip4")
    # "now + 3s / 1s" is three pings; loopback answers them all.
    assert int(values["delay.twoway.icmp.count"]) == 3
    assert 0 <= int(values["delay.twoway.icmp.us.min"]) <= int(values["delay.twoway.icmp.us.max"])


def test_guest_without_role_sees_nothing_and_is_refused(venv, pki, supervisor) -> None:
    url = supervisor.client_url
    # A valid certificate from the same CA: the TLS handshake succeeds.
    assert list_capabilities(venv, url, tls=pki.tls("guest")) == []
    capability = fetch_capabilities(venv, url, tls=pki.tls("operator"))["ping-detail-ip4"]
    reply = run_specification(
        venv, url, "ping-detail-ip4", PING_TARGET, tls=pki.tls("guest"), capability=capability
    )
    assert reply.get("exception") is not None, reply
    assert reply["message"] == NO_PERMISSION
    assert "result" not in reply


def test_certificate_from_a_foreign_ca_fails_the_handshake(
    venv, pki, supervisor, tmp_path_factory
) -> None:
    foreign = RigPKI.create(
        tmp_path_factory.mktemp("pki-foreign") / "state", pki_request("ri-foreign")
    )
    # Same subject convention, so the foreign certificate claims an identity the
    # supervisor's [Roles] grants: only the chain can tell them apart.
    assert foreign.identity("operator") == pki.identity("operator")
    intruder = TLSFiles(
        # Trusts the real supervisor, so any refusal is the supervisor's.
        ca_chain=pki.tls("operator").ca_chain,
        cert=foreign.tls("operator").cert,
        key=foreign.tls("operator").key,
    )
    refused = "certificate verify failed: unable to get local issuer certificate"
    before = supervisor.log_path.read_text().count(refused)
    # Under TLS 1.3 the client learns of the refusal only on its first read:
    # urllib3 retries, then gives up with "Caused by SSLError(SSLEOFError(...))".
    with pytest.raises(RIError, match=r"capabilities at .*: .*Caused by SSLError"):
        list_capabilities(venv, supervisor.client_url, tls=intruder, timeout=60.0)
    assert supervisor.log_path.read_text().count(refused) > before


# --- revocation ------------------------------------------------------------------


@pytest.fixture(scope="module")
def revoked(pki, tmp_path_factory) -> RigPKI:
    """The module's PKI with "operator" revoked, in a copy so the other tests
    keep an intact one."""
    copy = PKIState(tmp_path_factory.mktemp("pki-revoked") / "state")
    shutil.copytree(pki.state.path, copy.path, symlinks=True)
    revoke(copy, PASSPHRASE, host="operator", reason="key-compromise")
    return RigPKI(copy)


def test_revoked_operator_is_refused_by_a_restarted_supervisor(
    venv, pki, supervisor, revoked, tmp_path_factory
) -> None:
    operator = pki.identity("operator")
    # The operator keeps its key and certificate; the PKI deletes its copy.
    operator_tls = pki.tls("operator")
    assert not (revoked.state.hosts_dir / "operator").exists()
    crl = x509.load_pem_x509_crl(revoked.state.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(pki.cert("operator").serial_number)

    roles = authz_tables(revoked.authz_ini)["Roles"]
    assert operator not in roles
    assert roles[revoked.identity("operator-2")] == ["operators"]

    # The RI checks no CRL: a supervisor still running on the old authz.ini
    # serves the revoked certificate. Only a restart with the new one helps.
    assert list_capabilities(venv, supervisor.client_url, tls=operator_tls) == sorted(
        RI_PING_LABELS
    )
    work = tmp_path_factory.mktemp("ri-tls-revoked")
    with ri_rig(venv, work, revoked, revoked.authz_ini) as restarted:
        url = restarted.client_url
        # ri_rig waited until operator-2 saw the ping capabilities here.
        assert list_capabilities(venv, url, tls=operator_tls) == []
        capability = fetch_capabilities(venv, url, tls=revoked.tls("operator-2"))["ping-detail-ip4"]
        reply = run_specification(
            venv, url, "ping-detail-ip4", PING_TARGET, tls=operator_tls, capability=capability
        )
        assert reply["message"] == NO_PERMISSION
        assert "result" not in reply
