# SPDX-License-Identifier: Apache-2.0
"""The appliance's root tree from the recipe's packages, with mmdebstrap.

:func:`mmdebstrap_command` is pure (unit-tested for Debian and Ubuntu); :func:`make_rootfs`
runs it with the build's .deb cache synced in before and out after, so that a second build
downloads nothing that is still current on the mirror.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from appliance import ApplianceError
from appliance.recipe import Recipe


def mmdebstrap_command(recipe: Recipe, target: Path, debs: Path, *,
                       arch: str = "amd64") -> list[str]:
    """mmdebstrap building ``recipe``'s root into the directory ``target``, using and
    refilling the .deb cache ``debs``."""
    cache_in = shlex.quote(str(debs))
    command = [
        "mmdebstrap", "--variant=minbase", f"--architectures={arch}",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(recipe.packages)}",
        "--format=directory",
        # A build root: no fsync per file (the image is written once, at the end).
        "--dpkgopt=force-unsafe-io",
        "--aptopt=Acquire::Retries \"3\"",
        # Keep what was downloaded until the customize hook has copied it out.
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/partial',
        f"--setup-hook=sync-in {cache_in} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {cache_in}",
        # No .debs or package lists in the image: apt update on the appliance fetches lists.
        "--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb",
    ]
    if recipe.keyring is not None:
        command.append(f"--keyring={recipe.keyring}")
    command += [recipe.suite, str(target),
                f"deb {recipe.mirror} {recipe.suite} {' '.join(recipe.components)}"]
    return command


def make_rootfs(recipe: Recipe, target: Path, debs: Path, *, epoch: int,
                progress: Callable[[str], None]) -> None:
    """Build the root tree into ``target`` (which must not exist yet)."""
    if shutil.which("mmdebstrap") is None:
        raise ApplianceError("mmdebstrap is not installed: apt-get install mmdebstrap "
                             "(setup/debian-packages.txt)")
    if recipe.keyring is not None and not recipe.keyring.is_file():
        raise ApplianceError(f"the {recipe.distribution} archive keyring {recipe.keyring} does "
                             "not exist: download it from the mirror (e.g. ubuntu-archive-"
                             "keyring.gpg) and pass --keyring FILE or set keyring: in the recipe")
    debs.mkdir(parents=True, exist_ok=True)
    (debs / "partial").mkdir(exist_ok=True)
    cached = len(list(debs.glob("*.deb")))
    progress(f"rootfs: mmdebstrap {recipe.distribution} {recipe.suite} from {recipe.mirror} "
             f"({len(recipe.packages)} packages asked, {cached} .debs cached)")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SOURCE_DATE_EPOCH": str(epoch),
           "LC_ALL": "C.UTF-8", "HOME": "/root"}
    result = subprocess.run(mmdebstrap_command(recipe, target, debs), capture_output=True,
                            text=True, env=env, errors="replace")
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("E:", "error"))] or lines
        last = errors[-1] if errors else f"exit code {result.returncode}"
        raise ApplianceError(f"mmdebstrap failed: {last} (check the mirror, suite, "
                             "components and package names in the recipe)")
    progress(f"rootfs: {len(list(debs.glob('*.deb')))} .debs in the cache")
