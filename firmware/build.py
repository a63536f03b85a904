# SPDX-License-Identifier: Apache-2.0
"""One host's firmware: the board's base, the host's layer, the image, its manifest.

The base (root filesystem, kernel, initramfs) is built once per board and input set and kept
in the cache; a host only adds its layer, a small squashfs of its overlay, which is why an
extra host costs about half a second (less when the caller names the base it just built, so
its inputs are not resolved again for every host). Outputs appear in
``build/<inventory>/<host>/`` only when complete, and a rebuild from identical inputs leaves
them untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware import FirmwareError
from firmware.image import read_header, write_image
from firmware.initramfs import build_initramfs
from firmware.overlay import overlay_digest, stage_layer
from firmware.recipe import Recipe
from firmware.rootfs import Base, build_base, load_base
from firmware.squashfs import make_squashfs

MANIFEST_FORMAT = "probeforge-firmware-manifest 1"


@dataclass(frozen=True)
class BaseImages:
    """The parts every host of a board shares: the base's kernel and root squashfs, and
    the initramfs that mounts them."""

    base: Base
    initramfs: Path
    rootfs: Path


@dataclass(frozen=True)
class HostImage:
    directory: Path
    image: Path
    build: str
    changed: bool


def base_images(recipe: Recipe, board: str, cache: Path,
                progress: Callable[[str], None] = print) -> BaseImages:
    """The base of ``board`` with its initramfs, from the cache when there."""
    base = build_base(recipe, board, cache=cache, progress=progress)
    directory = cache / "images" / base.key
    initramfs = directory / "initramfs.cpio.gz"
    if not initramfs.is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{base.key}.", dir=directory.parent))
        try:
            progress(f"{board}: packing the initramfs")
            build_initramfs(base.tree, base.kernel_version, work / initramfs.name,
                            epoch=base.epoch)
            work.chmod(0o755)
            shutil.rmtree(directory, ignore_errors=True)  # an older, incomplete attempt
            work.rename(directory)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return BaseImages(base, initramfs, base.squashfs)


def cached_base_images(board: str, cache: Path, key: str) -> BaseImages:
    """The base ``key`` of ``board`` with its initramfs, as ``python -m firmware base`` left
    them in the cache. Its inputs (package list, .deb hashes, the probe daemon's package) are
    not resolved again: that is most of a host's build, and the caller has just done it."""
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise FirmwareError(f"base {key!r}: not a base key (64 hex digits, as python -m "
                            "firmware base --json prints it)")
    base = load_base(cache / "base" / key)
    initramfs = cache / "images" / key / "initramfs.cpio.gz"
    if base is None or not initramfs.is_file():
        raise FirmwareError(f"base {key} of {board} is not in {cache}: build it with python "
                            f"-m firmware base --board {board} (roles/firmware does)")
    if base.board != board:
        raise FirmwareError(f"base {key[:16]} is for board {base.board}, not {board}")
    return BaseImages(base, initramfs, base.squashfs)


def build_id(images: BaseImages, board: str, version: str, host: str,
             overlay: dict[str, str]) -> str:
    """16 hex digits naming everything that went into a host's image."""
    digest = hashlib.sha256(json.dumps(
        {"base": images.base.key, "board": board, "version": version, "host": host,
         "overlay": overlay}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def image_name(version: str, board: str, host: str) -> str:
    return f"probeforge-{version}-{board}-{host}-sysupgrade.bin"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(images: BaseImages, recipe: Recipe, board: str, host: str, build: str,
              image: Path, overlay: dict[str, str]) -> dict[str, Any]:
    header = read_header(image)
    base = images.base
    return {
        "format": MANIFEST_FORMAT,
        "host": host,
        "board": board,
        "version": recipe.version,
        "build": build,
        "image": {"file": image.name, "size": image.stat().st_size, "sha256": _sha256(image)},
        "parts": [{"name": p.name, "offset": p.offset, "size": p.size, "sha256": p.sha256}
                  for p in header.parts],
        "kernel": base.kernel_version,
        "base": base.key,
        "packages": base.packages,
        "inputs": {**base.inputs, **{f"overlay/{k}": v for k, v in overlay.items()}},
        "omitted": base.omitted,
        "source_date_epoch": base.epoch,
    }


def _same_outputs(new: Path, old: Path) -> bool:
    sums = "SHA256SUMS"
    return ((old / sums).is_file() and (new / sums).read_bytes() == (old / sums).read_bytes()
            and sorted(p.name for p in old.iterdir()) == sorted(p.name for p in new.iterdir()))


def build_host_image(recipe: Recipe, board: str, host: str, overlay: Path, out: Path, *,
                     cache: Path, base_key: str | None = None,
                     progress: Callable[[str], None] = print) -> HostImage:
    """Build ``host``'s image into ``out`` (``build/<inventory>/<host>``), on the cached base
    ``base_key`` when given, else on the board's base as the recipe makes it now."""
    if board not in recipe.boards:
        raise FirmwareError(f"host {host}: board {board!r} is not in the recipe "
                            f"({', '.join(sorted(recipe.boards))}): fix firmware_board")
    images = (base_images(recipe, board, cache, progress) if base_key is None
              else cached_base_images(board, cache, base_key))
    digests = overlay_digest(overlay)
    build = build_id(images, board, recipe.version, host, digests)
    name = image_name(recipe.version, board, host)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The host's private key passes through here: nothing but the owner may read.
    work = Path(tempfile.mkdtemp(prefix=f".{host}.", dir=out.parent))
    try:
        layer_tree = work / "layer"
        layer_tree.mkdir()
        stage_layer(overlay, layer_tree, {"version": recipe.version, "board": board,
                                          "build": build, "host": host})
        layer = work / "host.squashfs"
        make_squashfs(layer_tree, layer, epoch=images.base.epoch)
        result = work / "out"
        result.mkdir()
        image = result / name
        write_image(image, board=board, version=recipe.version, build=build, host=host,
                    parts=[("kernel", images.base.kernel), ("initramfs", images.initramfs),
                           ("rootfs", images.rootfs), ("host", layer)])
        image.chmod(0o600)
        manifest = result / "manifest.json"
        manifest.write_text(json.dumps(_manifest(images, recipe, board, host, build, image,
                                                 digests), indent=2, sort_keys=True) + "\n")
        (result / "SHA256SUMS").write_text(
            "".join(f"{_sha256(p)}  {p.name}\n" for p in (image, manifest)))
        result.chmod(0o755)
        if out.is_dir() and _same_outputs(result, out):
            return HostImage(out, out / name, build, changed=False)
        previous = work / "previous"
        if out.exists():
            out.rename(previous)
        result.rename(out)
        progress(f"{host}: {out / name} (build {build})")
        return HostImage(out, out / name, build, changed=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def base_only(recipe: Recipe, board: str, cache: Path,
              progress: Callable[[str], None] = print) -> tuple[BaseImages, bool]:
    """The board's base images and whether they had to be built now."""
    before = {p.name for p in (cache / "images").iterdir()} if (cache / "images").is_dir() \
        else set()
    images = base_images(recipe, board, cache, progress)
    return images, images.base.key not in before

