# SPDX-License-Identifier: Apache-2.0
"""The generic appliance: the provisioned tree (cached by its inputs) and its images.

:func:`build_base` makes ``<cache>/base/<key>/tree``: mmdebstrap's root, the recipe's roles
applied through the chroot connection, generalised, with fstab and grub.cfg for its disk.
``key`` hashes every input (recipe, roles, builder, probe daemon sources, optional components'
artifacts); an identical later call returns the cached tree at once. :func:`build_image` makes
the disk and its exports into ``build/appliance/<name>/`` (manifest.json, SHA256SUMS, the
package list). Both are built in a temporary directory beside their destination and renamed
into place only when complete, so an interrupted build leaves nothing half-made; whatever a
killed build left is removed by the next one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.disk import kernel_version, make_disk, prepare_tree
from appliance.export import export
from appliance.generalise import generalise
from appliance.provision import run_play
from appliance.recipe import REPO, Recipe, RoleStep
from appliance.rootfs import make_rootfs
from appliance.sandbox import ChrootMounts, owner_pid
from builds.cross import sha256_file
from builds.workdirs import build_lock, clean_stale_builds

DEFAULT_CACHE = REPO / ".cache" / "appliance"
DEFAULT_IMAGES = REPO / "build" / "appliance"
FORMAT = 1
MANIFEST_FORMAT = "probeforge-appliance-manifest 1"
# What shapes the tree besides the recipe: a change to any of them rebuilds it.
_SOURCES = ("roles/appliance_base", "roles/supervisor", "roles/probe_daemon", "probe_daemon",
            "packaging", "pkgformats", "pki")
# The builder's modules that write into the tree (the disk's fstab and grub.cfg are written
# at image time, appliance/disk.py).
_BUILDER = ("appliance/recipe.py", "appliance/rootfs.py", "appliance/provision.py",
            "appliance/generalise.py", "appliance/sandbox.py")
# Variables for the roles in an image root: nothing may start in a chroot.
IMAGE_VARS = {"supervisor_service_state": "", "probe_daemon_service_state": "",
              "tstat_service_state": "", "glimpse_console_service_state": ""}
KEEP_BASES = 2


@dataclass(frozen=True)
class Base:
    key: str
    dir: Path
    tree: Path
    packages: list[dict[str, str]]
    omitted: list[dict[str, str]]
    components: list[str]
    kernel: str
    inputs: dict[str, str]


def tree_digest(root: Path) -> str:
    """SHA-256 over the paths, modes and contents below ``root`` (caches left out)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            digest.update(f"F {rel} {path.stat().st_mode & 0o777:o} "
                          f"{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def optional_components(recipe: Recipe, progress: Callable[[str], None],
                        artifact_cache: str | None = None
                        ) -> tuple[list[RoleStep], list[str], list[dict[str, str]], dict[str, str]]:
    """Role steps, names and input hashes of the optional components whose artifact is in the
    cache, and the ``omitted`` records of the others."""
    from artifacts import ArtifactError, verified_path

    steps: list[RoleStep] = []
    names: list[str] = []
    omitted: list[dict[str, str]] = []
    inputs: dict[str, str] = {}
    for component in recipe.optional:
        try:
            path = Path(verified_path(component.artifact, artifact_cache))
        except ArtifactError as exc:
            fix = (f"probeforge-artifacts fetch {component.artifact} (or probeforge-artifacts "
                   "add FILE, see docs/artifacts.md), then build again")
            omitted.append({"component": component.name, "artifact": component.artifact,
                            "reason": str(exc).splitlines()[0], "fix": fix})
            progress(f"warning: {component.name} left out of the appliance: its source "
                     f"({component.artifact}) is not in the artifact cache. To add it: {fix}")
            continue
        steps += component.roles
        names.append(component.name)
        inputs[f"artifact/{component.artifact}"] = sha256_file(path)
        for step in component.roles:
            inputs[f"role/{step.role}"] = tree_digest(REPO / "roles" / step.role)
    return steps, names, omitted, inputs


def _packages(tree: Path) -> list[dict[str, str]]:
    out = subprocess.run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "--show",
                          "--showformat=${Package}\t${Version}\t${Architecture}\t"
                          "${db:Status-Status}\n"], capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    return [{"name": n, "version": v, "architecture": a} for n, v, a, s in rows
            if s == "installed"]


def load_base(directory: Path) -> Base | None:
    """The finished base in ``directory``, or None."""
    record = directory / "base.json"
    if not (record.is_file() and (directory / "tree" / "boot").is_dir()):
        return None
    data = json.loads(record.read_text())
    return Base(key=data["key"], dir=directory, tree=directory / "tree",
                packages=data["packages"], omitted=data["omitted"],
                components=data["components"], kernel=data["kernel"], inputs=data["inputs"])


def build_base(recipe: Recipe, *, cache: Path = DEFAULT_CACHE,
               progress: Callable[[str], None] = print,
               artifact_cache: str | None = None) -> Base:
    """The provisioned, generalised tree of ``recipe``, built unless cached."""
    started = time.monotonic()
    cache = cache.resolve()
    steps, components, omitted, component_inputs = optional_components(
        recipe, progress, artifact_cache)
    inputs = {
        "format": str(FORMAT),
        "recipe": hashlib.sha256(json.dumps(recipe.as_data(), sort_keys=True,
                                            default=str).encode()).hexdigest(),
        **{f"source/{s}": tree_digest(REPO / s) for s in _SOURCES},
        "builder": hashlib.sha256(b"".join((REPO / s).read_bytes()
                                           for s in _BUILDER)).hexdigest(),
        **component_inputs,
    }
    if recipe.keyring is not None:
        inputs["keyring"] = sha256_file(recipe.keyring)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    bases = cache / "base"
    final = bases / key
    with build_lock(bases / ".lock"):
        existing = load_base(final)
        if existing is not None:
            os.utime(final / "base.json")
            progress(f"base {key[:16]} is cached ({final})")
            return existing
        clean_stale_builds(bases, owner_pid())
        shutil.rmtree(final, ignore_errors=True)
        work = bases / f".build-{key[:16]}-{owner_pid()}"
        work.mkdir(parents=True)
        try:
            tree = work / "tree"
            make_rootfs(recipe, tree, cache / "debs", epoch=recipe.source_date_epoch,
                        progress=progress)
            with ChrootMounts(tree):
                run_play([*recipe.provision, *steps], work / "ansible", root=tree,
                         name="The generic appliance", extra_vars=IMAGE_VARS,
                         progress=progress, label="provision")
            release = (f"PROBEFORGE_APPLIANCE_VERSION={recipe.version}\n"
                       f"PROBEFORGE_APPLIANCE_BASE={key[:16]}\n"
                       f"PROBEFORGE_APPLIANCE_DISTRIBUTION={recipe.distribution} "
                       f"{recipe.suite}\n")
            generalise(tree, hostname=recipe.hostname, release=release)
            kernel = kernel_version(tree)
            record = {"key": key, "packages": _packages(tree), "omitted": omitted,
                      "components": ["supervisor", "probe-daemon", *components],
                      "kernel": kernel, "inputs": inputs}
            (work / "base.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            shutil.rmtree(work / "ansible", ignore_errors=True)
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        for old in sorted((d for d in bases.iterdir() if (d / "base.json").is_file()
                           and d != final), key=lambda d: (d / "base.json").stat().st_mtime,
                          reverse=True)[KEEP_BASES - 1:]:
            shutil.rmtree(old, ignore_errors=True)
    base = load_base(final)
    assert base is not None
    progress(f"base {key[:16]} ready in {time.monotonic() - started:.0f} s")
    return base


def write_sums(directory: Path) -> None:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    (directory / "SHA256SUMS").write_text("".join(f"{sha256_file(p)}  {p.name}\n"
                                                  for p in files))


def package_list(base: Base) -> str:
    return "".join(f"{p['name']}\t{p['version']}\t{p['architecture']}\n"
                   for p in sorted(base.packages, key=lambda p: p["name"]))


def images_from_tree(tree: Path, recipe: Recipe, key: str, result: Path, work: Path,
                     name: str, *, progress: Callable[[str], None]) -> dict[str, Any]:
    """Disk and exports of ``tree`` into ``result``; what manifest.json says of them."""
    raw = work / f"{name}.raw"
    prepare_tree(tree, recipe, key)
    ids = make_disk(tree, recipe, key, raw, work / "disk", epoch=recipe.source_date_epoch,
                    progress=progress)
    files = export(raw, recipe, result, name, build=key[:16], epoch=recipe.source_date_epoch,
                   progress=progress)
    raw.unlink()
    return {"disk": {**ids, "size": recipe.disk_size_gib << 30,
                     "partitions": [p.__dict__ for p in recipe.partitions]},
            "images": [{"file": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
                       for p in files]}


def build_image(recipe: Recipe, *, cache: Path = DEFAULT_CACHE, out: Path | None = None,
                progress: Callable[[str], None] = print, artifact_cache: str | None = None,
                base: Base | None = None) -> tuple[Path, bool]:
    """The generic images of ``base`` (default: :func:`build_base`) in ``out`` (default
    ``build/appliance/<name>``); whether they were made now (False: the outputs there are of
    the same base)."""
    if base is None:
        base = build_base(recipe, cache=cache, progress=progress,
                          artifact_cache=artifact_cache)
    out = (out or DEFAULT_IMAGES / recipe.name).resolve()
    manifest = out / "manifest.json"
    if manifest.is_file() and (out / "SHA256SUMS").is_file():
        with contextlib.suppress(ValueError, KeyError):
            if json.loads(manifest.read_text())["base"] == base.key:
                progress(f"images of base {base.key[:16]} are up to date in {out}")
                return out, False
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_builds(out.parent, owner_pid())
    work = out.parent / f".build-{out.name}-{owner_pid()}"
    started = time.monotonic()
    try:
        result = work / "out"
        result.mkdir(parents=True)
        record = images_from_tree(base.tree, recipe, base.key, result, work, recipe.name,
                                  progress=progress)
        (result / f"{recipe.name}.packages").write_text(package_list(base))
        manifest_data = {
            "format": MANIFEST_FORMAT, "kind": "generic", "name": recipe.name,
            "version": recipe.version, "distribution": recipe.distribution,
            "suite": recipe.suite, "mirror": recipe.mirror, "base": base.key,
            "kernel": base.kernel, "components": base.components, "omitted": base.omitted,
            "packages": base.packages, "inputs": base.inputs,
            "source_date_epoch": recipe.source_date_epoch, **record}
        (result / "manifest.json").write_text(json.dumps(manifest_data, indent=2,
                                                         sort_keys=True) + "\n")
        write_sums(result)
        result.chmod(0o755)
        previous = work / "previous"
        if out.exists():
            out.rename(previous)
        result.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"images of base {base.key[:16]} in {out} ({time.monotonic() - started:.0f} s)")
    return out, True
