# SPDX-License-Identifier: Apache-2.0
"""The mPlane RI harness: its configuration rendering, and the real RI over plain HTTP.

Mutual TLS with certificates and authorizations from probeforge's PKI is
tested in test_pki_mplane_ri.py.
"""

from __future__ import annotations

import configparser
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.authz import render_authz
from rig.mplane_ri import (
    RI_PING_LABELS,
    RIComponent,
    RISupervisor,
    TLSFiles,
    default_cache_dir,
    free_port,
    list_capabilities,
    result_row,
    ri_venv,
    run_specification,
)

PING_TARGET = {"destination.ip4": "127.0.0.1"}

needs_ping = pytest.mark.skipif(
    shutil.which("ping") is None, reason="no ping binary on PATH (Debian: iputils-ping)"
)


@pytest.fixture(scope="module")
def venv() -> Path:
    return ri_venv(default_cache_dir())


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


def _sections(config_text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(config_text)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_config_rendering_takes_authz_either_way(tmp_path) -> None:
    roles = {"org.mplane.Clients.c-1": ["b", "a"], "org.mplane.Supervisors.sup": ["s"]}
    authorizations = {"ping-": ["a", "s"]}
    tls = TLSFiles(tmp_path / "chain.pem", tmp_path / "cert-mplane.pem", tmp_path / "key.pem")

    def supervisor(**authz) -> RISupervisor:
        return RISupervisor(
            Path("/nonexistent"), tmp_path, component_port=1, client_port=2, tls=tls, **authz
        )

    by_tables = supervisor(roles=roles, authorizations=authorizations)
    # What the PKI writes as authz.ini, comment lines and all.
    by_file = supervisor(authz_ini=render_authz("rig", roles, authorizations))
    assert by_tables.config_text == by_file.config_text
    sections = _sections(by_tables.config_text)
    assert sections["Roles"] == {
        "org.mplane.Clients.c-1": "a,b",
        "org.mplane.Supervisors.sup": "s",
    }
    assert sections["Authorizations"] == {"ping-": "a,s"}
    assert sections["TLS"]["cert"] == str((tmp_path / "cert-mplane.pem").resolve())
    assert sections["client"]["listen-spec-link"] == "https://127.0.0.1:1/"
    assert sections["component"]["listen-cap-link"] == "https://127.0.0.1:2/"

    # With TLS the RI needs both sections; nothing listed means nothing allowed.
    empty = _sections(supervisor().config_text)
    assert empty["Roles"] == {} and empty["Authorizations"] == {}


@pytest.mark.parametrize(
    ("authz", "problem"),
    [
        pytest.param({"authz_ini": "[TLS]\nkey = x\n"}, "may only hold", id="foreign-section"),
        pytest.param({"authz_ini": "[Roles]\n", "roles": {}}, "either", id="both-ways"),
        # Tables the RI would read back as something else than what was meant.
        pytest.param({"roles": {"org.mplane=Clients.c-1": ["a"]}}, "read back", id="key-with-="),
        pytest.param({"roles": {"a:b": ["a"]}}, "read back", id="key-with-colon"),
        pytest.param({"roles": {" c-1": ["a"]}}, "read back", id="key-with-blank"),
        pytest.param({"roles": {"": ["a"]}}, "render cleanly", id="empty-key"),
        pytest.param({"roles": {"[Authorizations]": ["a"]}}, "render cleanly", id="section-key"),
        pytest.param({"roles": {"c-1": ["a,b"]}}, "read back", id="role-with-comma"),
        pytest.param({"roles": {"c-1": [""]}}, "read back", id="empty-role"),
        pytest.param({"authorizations": {"ping-\nx": ["a"]}}, "render cleanly", id="line-break"),
        pytest.param({"authorizations": {"100%": ["a"]}}, "'%'", id="percent"),
    ],
)
def test_config_rendering_refuses_unusable_authz(tmp_path, authz, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        RISupervisor(Path("/nonexistent"), tmp_path, component_port=1, client_port=2, **authz)


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
    values = result_row(result)
    assert result["label"].startswith("ping-average-ip4")
    # "now + 3s / 1s" is three pings; loopback answers them all.
    assert int(values["delay.twoway.icmp.count"]) == 3
    assert 0 <= int(values["delay.twoway.icmp.us.min"]) <= int(values["delay.twoway.icmp.us.max"])
