# SPDX-License-Identifier: Apache-2.0
"""A host's identity as a seed disk, made by the project's roles themselves.

The seed play (the recipe's ``seed.roles``: supervisor, probe daemon and appliance_base's
``identity``, run in full with the host's inventory variables) is applied through the chroot
connection to an overlay whose lower layer is the generic tree: what the roles write lands in
the overlay's upper layer, and exactly that (below the recipe's ``seed.paths``, less
``seed.never``) goes into ``root/`` of a small ext4 filesystem labelled ``seed.label``, made
with ``mkfs.ext4 -d`` (owners and modes kept, nothing mounted on the host). At first boot
``probeforge-seed.service`` copies it over / (roles/appliance_base). With ``image=True`` the
merged tree itself becomes the host's own images, its identity built in.

Outputs in ``build/<inventory>/<host>/``: the seed image (mode 0600: it holds the host's
private key), manifest.json (the seed's files, the generic images it goes with), SHA256SUMS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import ApplianceError
from appliance.build import (
    DEFAULT_CACHE,
    IMAGE_VARS,
    MANIFEST_FORMAT,
    Base,
    build_base,
    build_image,
    images_from_tree,
    load_base,
    write_sums,
)
from appliance.provision import run_play
from appliance.recipe import Recipe
from appliance.sandbox import ChrootMounts, owner_pid
from builds.workdirs import clean_stale_builds

SEED_FORMAT = "probeforge-seed 1"


@dataclass(frozen=True)
class HostSeed:
    directory: Path
    seed: Path
    build: str
    changed: bool


def _selected(rel: str, paths: tuple[str, ...], never: tuple[str, ...]) -> bool:
    def under(item: str) -> bool:
        return rel == item or rel.startswith(item + "/")
    return any(under(p) for p in paths) and not any(under(n) for n in never)


def collect(upper: Path, target: Path, paths: tuple[str, ...],
            never: tuple[str, ...]) -> list[dict[str, Any]]:
    """Copy what the roles wrote (the overlay's upper layer) below ``paths`` into ``target``
    with owners and modes; the list of entries. Deletions (whiteouts) are not carried."""
    target.mkdir(mode=0o755)
    os.chown(target, 0, 0)
    entries: list[dict[str, Any]] = []
    for directory, dirs, files in os.walk(upper):
        dirs.sort()
        for name in [*sorted(dirs), *sorted(files)]:
            source = Path(directory) / name
            rel = source.relative_to(upper).as_posix()
            info = source.lstat()
            wanted = _selected(rel, paths, never)
            ancestor = stat.S_ISDIR(info.st_mode) and any(p.startswith(rel + "/")
                                                          for p in paths)
            if not (wanted or ancestor) or stat.S_ISCHR(info.st_mode):
                continue
            dest = target / rel
            if stat.S_ISDIR(info.st_mode):
                dest.mkdir(exist_ok=True)
            elif stat.S_ISLNK(info.st_mode):
                dest.symlink_to(os.readlink(source))
            elif stat.S_ISREG(info.st_mode):
                shutil.copyfile(source, dest)
            else:
                continue
            os.lchown(dest, info.st_uid, info.st_gid)
            if not stat.S_ISLNK(info.st_mode):
                os.chmod(dest, stat.S_IMODE(info.st_mode))
            if wanted:
                entry: dict[str, Any] = {"path": "/" + rel, "uid": info.st_uid,
                                         "gid": info.st_gid,
                                         "mode": f"{stat.S_IMODE(info.st_mode):04o}"}
                if stat.S_ISLNK(info.st_mode):
                    entry["link"] = os.readlink(source)
                elif stat.S_ISREG(info.st_mode):
                    entry["sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
                entries.append(entry)
    return entries


def seed_build_id(base_key: str, host: str, entries: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps({"base": base_key, "host": host, "files": entries},
                                     sort_keys=True).encode()).hexdigest()[:16]


def make_seed_image(staging: Path, out: Path, *, label: str, size_mib: int, epoch: int) -> None:
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)}
    result = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, "-m", "0", "-N", "256",
                             "-E", "root_owner=0:0", "-d", str(staging), str(out),
                             f"{size_mib}M"], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ApplianceError(f"mkfs.ext4 of the seed failed: {result.stderr.strip()[-300:]} "
                             "(a bigger seed.size_mib in the recipe?)")
    out.chmod(0o600)


def generic_base(generic: Path, cache: Path) -> Base:
    """The cached base the generic images in ``generic`` were made from."""
    try:
        key = json.loads((generic / "manifest.json").read_text())["base"]
    except (OSError, ValueError, KeyError):
        raise ApplianceError(f"{generic} holds no appliance manifest.json: pass the directory "
                             "that `python -m appliance image` printed") from None
    base = load_base(cache.resolve() / "base" / key)
    if base is None:
        raise ApplianceError(f"the base {key[:16]} of {generic} is no longer in the cache "
                             f"{cache}: build the generic images again (python -m appliance "
                             "image)")
    return base


def build_seed(recipe: Recipe, *, inventory: Path, host: str, out: Path,
               cache: Path = DEFAULT_CACHE, image: bool = False,
               generic: Path | None = None,
               progress: Callable[[str], None] = print) -> HostSeed:
    """``host``'s seed (and with ``image`` its own images) into ``out``, for the generic
    images in ``generic`` (default: build or find them now). A seed always goes with the
    generic images it was made for: their base is the seed's lower layer."""
    if generic is not None:
        base = generic_base(generic, cache)
    else:
        base = build_base(recipe, cache=cache, progress=progress)
        generic, _ = build_image(recipe, cache=cache, progress=progress, base=base)
    generic_manifest = json.loads((generic / "manifest.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_builds(out.parent, owner_pid())
    # The host's private key passes through here: nothing but the owner may read.
    work = out.parent / f".build-{host}-{owner_pid()}"
    work.mkdir(mode=0o700)
    started = time.monotonic()
    seed_name = f"{recipe.name}-{host}-seed.img"
    try:
        upper, ovl, merged = work / "upper", work / "ovl", work / "merged"
        for directory in (upper, ovl, merged):
            directory.mkdir()
        result = work / "out"
        result.mkdir(mode=0o700)
        host_images: dict[str, Any] = {}
        with ChrootMounts(merged, overlay=(base.tree, upper, ovl), resolv_conf=False):
            run_play(recipe.seed_roles, work / "ansible", root=merged, inventory=inventory,
                     host=host, name=f"The identity of {host}", extra_vars=IMAGE_VARS,
                     progress=progress, label=f"seed {host}")
            staging = work / "seed"
            staging.mkdir()
            entries = collect(upper, staging / "root", recipe.seed_paths, recipe.seed_never)
            if not any(e["path"] == "/etc/hostname" for e in entries):
                raise ApplianceError(f"the seed play wrote no /etc/hostname for {host}: keep "
                                     "appliance_base (tasks_from: identity) in seed.roles")
            build = seed_build_id(base.key, host, entries)
            previous = out / "manifest.json"
            with contextlib.suppress(OSError, ValueError, KeyError):
                old = json.loads(previous.read_text())
                if (old["build"] == build and old["generic"]["base"] == base.key
                        and bool(old.get("images")) == image and (out / seed_name).is_file()):
                    progress(f"{host}: seed {build} is up to date in {out}")
                    return HostSeed(out, out / seed_name, build, changed=False)
        if image:
            # The tree as the roles left it, without the chroot's /proc, /sys, /dev and /run
            # mounted inside it, which mkfs.ext4 -d would try to copy.
            with ChrootMounts(merged, overlay=(base.tree, upper, ovl), chroot=False):
                progress(f"{host}: the host's own images (identity built in)")
                marker = merged / "var/lib/probeforge/seed.done"
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"host {host}\nbuild {build}\ndevice built-in\n")
                host_key = hashlib.sha256(f"{base.key}/{host}".encode()).hexdigest()
                host_images = images_from_tree(merged, recipe, host_key, result, work,
                                               f"{recipe.name}-{host}", progress=progress)
        (staging / "seed.conf").write_text(f"{SEED_FORMAT}\nhost {host}\nbuild {build}\n"
                                           f"base {base.key}\n")
        seed = result / seed_name
        progress(f"{host}: seed disk {seed_name} ({len(entries)} files, label "
                 f"{recipe.seed_label})")
        make_seed_image(staging, seed, label=recipe.seed_label, size_mib=recipe.seed_size_mib,
                        epoch=recipe.source_date_epoch)
        manifest = {
            "format": MANIFEST_FORMAT, "kind": "host", "host": host, "build": build,
            "seed": {"file": seed_name, "label": recipe.seed_label,
                     "sha256": hashlib.sha256(seed.read_bytes()).hexdigest(), "files": entries},
            "generic": {"directory": str(generic), "name": generic_manifest["name"],
                        "base": base.key, "images": generic_manifest["images"]},
            "omitted": base.omitted, "components": base.components,
            **({"images": host_images["images"], "disk": host_images["disk"]}
               if image else {})}
        (result / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True)
                                              + "\n")
        write_sums(result)
        if out.exists():
            out.rename(work / "previous")
        result.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"{host}: {out / seed_name} (seed {build}, {time.monotonic() - started:.0f} s)")
    return HostSeed(out, out / seed_name, build, changed=True)
