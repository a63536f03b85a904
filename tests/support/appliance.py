# SPDX-License-Identifier: Apache-2.0
"""The appliance under test: a small deployment inventory (the VM itself is
:class:`rig.appliance.ApplianceVM`), and HTTPS to its supervisor.

:func:`write_inventory` makes an inventory with one appliance (a supervisor running its own
probe daemon) and an operator, its PKI under ``<dir>/.state/pki`` and outputs under
``<dir>-build`` (:func:`output_dir`). :func:`https_get` asks the supervisor's client port,
with a client certificate or without one.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path

HOST = "appliance-01"
CLIENT_PORT, COMPONENT_PORT = 8888, 8889


def output_dir(inventory: Path) -> Path:
    """Where the playbook puts the test deployment's seeds and host images."""
    return inventory.with_name(f"{inventory.name}-build")


def write_inventory(directory: Path, public_key: Path, *, host_image: bool = False) -> Path:
    """A deployment with ``HOST`` in appliances and supervisors and an operator; its path.
    With ``host_image`` the playbook also makes the host's own images (identity built in)."""
    (directory / "group_vars").mkdir(parents=True)
    hosts = {"all": {"children": {
        "supervisors": {"hosts": {HOST: {
            "ansible_host": "127.0.0.1",
            "mplane_supervisor_client_port": CLIENT_PORT,
            "mplane_supervisor_component_port": COMPONENT_PORT}}},
        "appliances": {"hosts": {HOST: {}}},
        "clients": {"hosts": {"operator": {"ansible_host": "127.0.0.1",
                                           "ansible_connection": "ansible.builtin.local"}}},
    }}}
    (directory / "hosts.yml").write_text(json.dumps(hosts, indent=1) + "\n")
    variables = {
        "pki_deployment": "appliance-test", "pki_domains": ["appliance-test.internal"],
        "pki_networks": ["127.0.0.0/8", "10.0.2.0/24"],
        "pki_ca_passphrase_file": str(directory / ".state" / "passphrase"),
        "pki_ca_passphrase_file_create": True,
        "pki_mplane_roles": {"operators": ["clients"], "supervisors": ["supervisors"]},
        "pki_authorizations": {"ping-": ["operators"], "traceroute": ["operators"],
                               "http-download": ["operators"], "dns-": ["operators"]},
        # The appliance's own probe daemon talks to the supervisor beside it.
        "mplane_supervisor_host": HOST, "mplane_supervisor_address": "127.0.0.1",
        "mplane_supervisor_client_port": CLIENT_PORT,
        "mplane_supervisor_component_port": COMPONENT_PORT, "mplane_tls": True,
        "appliance_base_authorized_key_files": [str(public_key)],
        # Beside the inventory, not in it: Ansible reads every file of an inventory directory
        # as an inventory source, images included.
        "appliance_output_dir": str(output_dir(directory)),
        "appliance_host_image": host_image,
    }
    (directory / "group_vars" / "all.yml").write_text(json.dumps(variables, indent=1) + "\n")
    return directory


def https_get(address: str, port: int, path: str, *, ca: Path,
              cert: tuple[Path, Path] | None, timeout: float = 30) -> tuple[int, str]:
    """Status and body of ``GET path``, the server checked against ``ca``, presenting the
    PEM certificate and key ``cert`` (None: no client certificate)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    connection = http.client.HTTPSConnection(address, port, context=context, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def operator_get(port: int, path: str, pki: Path, host: str = HOST) -> tuple[int, str]:
    """``https_get`` on 127.0.0.1 as the test deployment's operator, to ``host``."""
    return https_get("127.0.0.1", port, path, ca=pki / "hosts" / host / "chain.pem",
                     cert=(pki / "hosts" / "operator" / "cert.pem",
                           pki / "hosts" / "operator" / "key.pem"))
