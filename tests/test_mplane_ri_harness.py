# SPDX-License-Identifier: Apache-2.0
"""The mPlane RI harness drives the real RI end to end, over HTTP and HTTPS."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.mplane_ri import (
    RI_PING_LABELS,
    RIComponent,
    RISupervisor,
    TLSFiles,
    fetch_capabilities,
    free_port,
    list_capabilities,
    render_authz_ini,
    ri_cert_form,
    ri_venv,
    run_specification,
)

REPO = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("PROBEFORGE_RI_CACHE", REPO / ".cache" / "mplane-ri"))
PING_TARGET = {"destination.ip4": "127.0.0.1"}

needs_ping = pytest.mark.skipif(
    shutil.which("ping") is None, reason="no ping binary on PATH (Debian: iputils-ping)"
)


@pytest.fixture(scope="module")
def venv() -> Path:
    return ri_venv(CACHE_DIR)


def assert_ping_average(result: dict) -> None:
    assert result.get("result") == "measure", result
    assert result["label"].startswith("ping-average-ip4")
    [row] = result["resultvalues"]
    values = dict(zip(result["results"], row, strict=True))
    # "now + 3s / 1s" is three pings; loopback answers them all.
    assert int(values["delay.twoway.icmp.count"]) == 3
    assert 0 <= int(values["delay.twoway.icmp.us.min"]) <= int(values["delay.twoway.icmp.us.max"])


# --- plain HTTP --------------------------------------------------------------


@pytest.fixture(scope="module")
def http_supervisor(venv, tmp_path_factory) -> Iterator[RISupervisor]:
    work = tmp_path_factory.mktemp("ri-http")
    with (
        RISupervisor(venv, work, component_port=free_port(), client_port=free_port()) as supervisor,
        RIComponent(
            venv,
            work,
            supervisor_url=supervisor.component_url,
            wait_client_url=supervisor.client_url,
        ),
    ):
        yield supervisor


def test_config_rendering_takes_authz_either_way(tmp_path) -> None:
    fragment = render_authz_ini({"org.mplane.Clients.c-1": ["a", "b"]}, {"ping-": ["a"]})
    tls = TLSFiles(tmp_path / "ca.pem", tmp_path / "cert.txt", tmp_path / "key.pem")
    by_tables = RISupervisor(
        Path("/nonexistent"),
        tmp_path,
        component_port=1,
        client_port=2,
        tls=tls,
        roles={"org.mplane.Clients.c-1": ["a", "b"]},
        authorizations={"ping-": ["a"]},
    )
    by_fragment = RISupervisor(
        Path("/nonexistent"), tmp_path, component_port=1, client_port=2, tls=tls, authz_ini=fragment
    )
    assert by_tables.config_text == by_fragment.config_text
    assert "org.mplane.Clients.c-1 = a,b" in by_tables.config_text
    assert "listen-spec-link = https://127.0.0.1:1/" in by_tables.config_text
    with pytest.raises(ValueError):
        RISupervisor(
            Path("/nonexistent"),
            tmp_path,
            component_port=1,
            client_port=2,
            authz_ini="[TLS]\nkey = x\n",
        )


@pytest.mark.slow
@pytest.mark.mplane_ri
def test_http_client_lists_ri_ping_capabilities(venv, http_supervisor) -> None:
    labels = list_capabilities(venv, http_supervisor.client_url)
    assert set(RI_PING_LABELS) <= set(labels)


@pytest.mark.slow
@pytest.mark.mplane_ri
@needs_ping
def test_http_ping_average_returns_result(venv, http_supervisor) -> None:
    result = run_specification(venv, http_supervisor.client_url, "ping-average-ip4", PING_TARGET)
    assert_ping_average(result)


# --- mutual TLS --------------------------------------------------------------
# Throw-away PKI from the openssl CLI, only to exercise the harness's TLS path;
# to be replaced by certificates from probeforge's own PKI.


@dataclass(frozen=True)
class ThrowawayPKI:
    supervisor: TLSFiles
    component: TLSFiles
    client: TLSFiles
    intruder: TLSFiles


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_pki(root: Path) -> ThrowawayPKI:
    ca_key, ca_cert = root / "ca.key", root / "ca.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "2",
        "-subj", "/DC=org/DC=mplane/OU=CA/CN=throwaway-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    ext = root / "leaf.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1\n"
    )

    def leaf(ou: str, cn: str) -> TLSFiles:
        key, csr, pem = root / f"{cn}.key", root / f"{cn}.csr", root / f"{cn}.pem"
        _openssl(
            "req", "-new", *ec, "-keyout", str(key), "-out", str(csr),
            "-subj", f"/DC=org/DC=mplane/OU={ou}/CN={cn}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(pem),
        )  # fmt: skip
        return TLSFiles(ca_cert, ri_cert_form(pem, root / f"{cn}.ri.pem"), key)

    return ThrowawayPKI(
        supervisor=leaf("Supervisors", "supervisor"),
        component=leaf("Probes", "probe-01"),
        client=leaf("Clients", "client-1"),
        intruder=leaf("Clients", "client-2"),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> ThrowawayPKI:
    return _make_pki(tmp_path_factory.mktemp("ri-pki"))


SUPERVISOR_ID = "org.mplane.Supervisors.supervisor"
CLIENT_ID = "org.mplane.Clients.client-1"


@pytest.fixture(scope="module")
def tls_supervisor(venv, pki, tmp_path_factory) -> Iterator[RISupervisor]:
    work = tmp_path_factory.mktemp("ri-tls")
    with (
        RISupervisor(
            venv,
            work,
            component_port=free_port(),
            client_port=free_port(),
            tls=pki.supervisor,
            # client-2 has a valid certificate but no role: it must be refused.
            roles={CLIENT_ID: ["measurer"]},
            authorizations={"ping-": ["measurer"]},
        ) as supervisor,
        RIComponent(
            venv,
            work,
            supervisor_url=supervisor.component_url,
            tls=pki.component,
            roles={SUPERVISOR_ID: ["supervisor"]},
            authorizations={"ping-": ["supervisor"]},
            wait_client_url=supervisor.client_url,
            wait_client_tls=pki.client,
        ),
    ):
        yield supervisor


@pytest.mark.slow
@pytest.mark.mplane_ri
def test_tls_authorized_client_sees_only_granted_capabilities(venv, pki, tls_supervisor) -> None:
    labels = list_capabilities(venv, tls_supervisor.client_url, tls=pki.client)
    # The RI component's "callback" pseudo-capability matches no authorization.
    assert labels == sorted(RI_PING_LABELS)


@pytest.mark.slow
@pytest.mark.mplane_ri
def test_tls_unauthorized_client_is_refused(venv, pki, tls_supervisor) -> None:
    url = tls_supervisor.client_url
    assert list_capabilities(venv, url, tls=pki.intruder) == []
    capability = fetch_capabilities(venv, url, tls=pki.client)["ping-detail-ip4"]
    reply = run_specification(
        venv, url, "ping-detail-ip4", PING_TARGET, tls=pki.intruder, capability=capability
    )
    assert reply["message"] == "User has no permission to request this capability"
    assert "result" not in reply


@pytest.mark.slow
@pytest.mark.mplane_ri
@needs_ping
def test_tls_authorized_client_gets_result(venv, pki, tls_supervisor) -> None:
    result = run_specification(
        venv, tls_supervisor.client_url, "ping-average-ip4", PING_TARGET, tls=pki.client
    )
    assert_ping_average(result)
