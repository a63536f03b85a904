# SPDX-License-Identifier: Apache-2.0
"""Documentation that partners read stays true to the code."""

import importlib

from probe_daemon.registry import MEASUREMENT_MODULES
from probe_daemon.settings import SETTINGS
from tests.conftest import REPO

DAEMON_DOC = (REPO / "docs" / "probe-daemon.md").read_text()


def test_probe_daemon_doc_lists_every_capability_as_offered():
    for name, target in MEASUREMENT_MODULES.items():
        module, cls = target.split(":")
        for template in getattr(importlib.import_module(module), cls)({}).capabilities():
            row = next((line for line in DAEMON_DOC.splitlines()
                        if line.startswith(f"| `{template.label}` |")), None)
            assert row is not None, f"{template.label} is not documented"
            assert f"`{template.when}`" in row and f"`[{name}]`" in row
            assert all(f"`{r}`" in row for r in template.results), template.label
            assert all(f"`{p}`" in row for p in template.parameters), template.label


def test_probe_daemon_doc_lists_every_setting_with_its_default():
    for setting in SETTINGS:
        assert f"| `[{setting.section}] {setting.name}` | `{setting.default}` |" in DAEMON_DOC


def test_readme_names_the_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    for command in ("setup/setup.sh", "make test"):
        assert command in ci and command in readme
