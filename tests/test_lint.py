# SPDX-License-Identifier: Apache-2.0
"""Lint runs as part of the test suite: ruff, yamllint, ansible-lint, shellcheck, syntax."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.lint
BIN = Path(sys.executable).parent


def run(*command: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_ruff():
    run(str(BIN / "ruff"), "check", ".")


def test_yamllint():
    run(str(BIN / "yamllint"), "--strict", ".")


@pytest.mark.slow
def test_ansible_lint_production_profile():
    run(str(BIN / "ansible-lint"), "--profile", "production", "--nocolor")


@pytest.mark.parametrize("playbook", sorted(p.name for p in (REPO / "playbooks").glob("*.yml")))
def test_playbook_syntax(playbook):
    for inventory in ("inventory/virtual-rig", "inventory/examples"):
        run(str(BIN / "ansible-playbook"), "--syntax-check", "-i", inventory,
            f"playbooks/{playbook}")


def test_shellcheck():
    scripts = [str(p.relative_to(REPO)) for p in (REPO / "setup").glob("*.sh")]
    scripts.append(".ci/run")
    run("shellcheck", *scripts)


def test_every_role_has_argument_specs_readme_and_documented_defaults():
    import yaml

    for role in sorted((REPO / "roles").iterdir()):
        assert (role / "README.md").is_file(), f"{role.name} has no README"
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
        options = specs["argument_specs"]["main"]["options"]
        defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
        # The defaults file and the argument spec describe the same variables.
        assert set(defaults) == set(options), f"{role.name}: defaults and argument_specs differ"
        readme = (role / "README.md").read_text()
        missing = [name for name in defaults if f"`{name}" not in readme]
        assert not missing, f"{role.name}: README does not mention {missing}"
        for name in defaults:
            assert name.startswith(f"{role.name}_"), f"{name} lacks the role prefix"


def test_no_private_key_or_state_is_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert not [p for p in tracked if "/.state/" in p]
    pem_key = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-{5}")
    for path in tracked:
        file = REPO / path
        if file.is_file() and file.stat().st_size < 1_000_000:
            assert not pem_key.search(file.read_bytes()), f"{path} holds a private key"


def test_state_directories_are_ignored_by_git():
    for inventory in ("virtual-rig", "examples"):
        path = f"inventory/{inventory}/.state/pki/ca/root.key"
        result = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert result.returncode == 0, f"{path} would not be ignored by git"
