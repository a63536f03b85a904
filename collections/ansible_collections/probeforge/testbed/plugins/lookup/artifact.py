# SPDX-License-Identifier: Apache-2.0
"""Ansible lookup: the verified path of a pinned upstream file in probeforge's artifact cache."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: artifact
author: probeforge
version_added: "0.1.0"
short_description: Verified controller path of a pinned file in the probeforge artifact cache
description:
  - Returns the absolute path, on the controller, of each named artifact in the probeforge
    artifact cache, after hashing the file and comparing it with the SHA-256 the manifest pins.
  - The lookup never downloads. A missing or corrupt file fails the task with one line naming
    the file and the fix (run C(probeforge-artifacts fetch NAME) where there is internet access,
    or copy the file into the cache), so air-gapped builds fail early and clearly.
  - Uses the C(artifacts) Python package of probeforge, which must be importable on the
    controller (C(setup/setup.sh) installs it into the project's virtualenv).
options:
  _terms:
    description: Names of artifacts in the manifest, for example C(tstat-source).
    type: list
    elements: str
    required: true
  cache:
    description:
      - The cache directory.
      - When neither this option nor E(PROBEFORGE_ARTIFACT_CACHE) is set, the default is
        C(~/.cache/probeforge/artifacts), as for C(probeforge-artifacts --cache).
    type: path
    env:
      - name: PROBEFORGE_ARTIFACT_CACHE
  manifest:
    description:
      - The manifest pinning every artifact's file name, URL and SHA-256.
      - When neither this option nor E(PROBEFORGE_ARTIFACT_MANIFEST) is set, the manifest
        shipped with probeforge (C(artifacts/manifest.yml)) is used.
    type: path
    env:
      - name: PROBEFORGE_ARTIFACT_MANIFEST
notes:
  - The file is hashed on every lookup; there is no cached verification, so a file changed
    after it was checked once is still caught.
  - Lookups run on the controller; copy the returned path to a target with a task such as
    M(ansible.builtin.copy) or M(ansible.builtin.unarchive).
  - How to fill a cache online, carry it to an air-gapped testbed or use an internal mirror is
    described in C(docs/artifacts.md) of the probeforge repository.
"""

EXAMPLES = r"""
- name: Unpack the pinned Tstat source on the build host
  ansible.builtin.unarchive:
    src: "{{ lookup('probeforge.testbed.artifact', 'tstat-source') }}"
    dest: /usr/src
    creates: /usr/src/tstat-92523dc

- name: Copy the GLIMPSE sources from a cache on a USB stick
  ansible.builtin.copy:
    src: "{{ item }}"
    dest: /usr/src/glimpse/
    mode: "0644"
  loop: "{{ query('probeforge.testbed.artifact', 'glimpse-source', 'glimpse-miniupnp',
            'glimpse-qtsystems', cache='/media/usb/probeforge-artifacts') }}"
"""

RETURN = r"""
_raw:
  description: Absolute, just-verified path on the controller of each artifact, in term order.
  type: list
  elements: path
"""

# collections/ansible_collections/probeforge/testbed/plugins/lookup/ -> the repository root.
_REPO = Path(__file__).resolve().parents[6]


def _import_artifacts() -> Any:
    try:
        import artifacts
    except ImportError:
        # Running from a checkout whose venv predates the artifacts package (or an
        # ansible outside the venv): the package sits at the root of this same tree.
        if not (_REPO / "artifacts" / "__init__.py").is_file():
            raise AnsibleLookupError(
                "the probeforge 'artifacts' Python package is not importable on the "
                "controller: run setup/setup.sh (pip install -e .) in the probeforge checkout"
            ) from None
        sys.path.insert(0, str(_REPO))
        import artifacts
    return artifacts


class LookupModule(LookupBase):
    def run(self, terms: list[Any], variables: dict[str, Any] | None = None,
            **kwargs: Any) -> list[str]:
        self.set_options(var_options=variables, direct=kwargs)
        artifacts = _import_artifacts()
        # Ansible has already applied "option > environment variable"; the package
        # adds the same defaults the command line uses.
        try:
            manifest = artifacts.load_manifest(self.get_option("manifest"))
            cache = artifacts.Cache(artifacts.resolve_cache_dir(self.get_option("cache")))
            return [str(cache.verified_path(manifest.get(str(term)))) for term in terms]
        except artifacts.ArtifactError as exc:
            raise AnsibleLookupError(str(exc)) from None
