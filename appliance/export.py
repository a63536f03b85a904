# SPDX-License-Identifier: Apache-2.0
"""The raw disk as a partner imports it: compressed qcow2 (KVM, Proxmox), streamOptimized VMDK
and an OVA (VirtualBox, VMware): an OVF descriptor, its SHA-256 manifest and the VMDK, in a
ustar archive in that order, as the OVF specification wants."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import jinja2

from appliance import ApplianceError
from appliance.recipe import Recipe
from builds.cross import sha256_file

# CIM operating system ids and VMware guest types.
_OS = {"debian": ("96", "debian12_64Guest", "Debian GNU/Linux 64-bit"),
       "ubuntu": ("94", "ubuntu64Guest", "Ubuntu Linux 64-bit")}


def _qemu_img(args: list[str], what: str) -> str:
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                            errors="replace")
    if result.returncode != 0:
        raise ApplianceError(f"qemu-img {what} failed: {result.stderr.strip()[-300:]} "
                             "(apt-get install qemu-utils)")
    return result.stdout


def to_qcow2(raw: Path, out: Path) -> None:
    _qemu_img(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zlib",
               str(raw), str(out)], "convert to qcow2")


def to_vmdk(raw: Path, out: Path) -> None:
    _qemu_img(["convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
               "subformat=streamOptimized,adapter_type=lsilogic,hwversion=14",
               str(raw), str(out)], "convert to a streamOptimized VMDK")


def image_info(path: Path) -> dict[str, object]:
    return json.loads(_qemu_img(["info", "--output=json", str(path)], "info"))


def render_ovf(recipe: Recipe, *, name: str, vmdk: Path, capacity: int, build: str) -> str:
    os_id, vmw, description = _OS[recipe.distribution]
    info = image_info(vmdk)
    template = jinja2.Template(recipe.ovf_template.read_text(), autoescape=True,
                               undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return template.render(
        name=name, build=build, version=recipe.version, disk_file=vmdk.name,
        disk_file_size=vmdk.stat().st_size, capacity=capacity,
        populated=info.get("actual-size", vmdk.stat().st_size), cpus=recipe.cpus,
        memory_mib=recipe.memory_mib, os_id=os_id, vmw_os_type=vmw,
        os_description=f"{description} ({recipe.distribution} {recipe.suite})",
        description=f"probeforge appliance {recipe.version}: mPlane supervisor and probe")


def make_ova(ovf: Path, vmdk: Path, out: Path, *, epoch: int) -> Path:
    """``out`` (.ova) holding ``ovf``, its manifest (written beside it) and ``vmdk``."""
    manifest = ovf.with_suffix(".mf")
    manifest.write_text("".join(f"SHA256({p.name})= {sha256_file(p)}\n" for p in (ovf, vmdk)))
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as ova:
        for path in (ovf, manifest, vmdk):
            info = ova.gettarinfo(str(path), arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            info.mtime = epoch
            with path.open("rb") as data:
                ova.addfile(info, data)
    return manifest


def export(raw: Path, recipe: Recipe, directory: Path, name: str, *, build: str, epoch: int,
           progress: Callable[[str], None]) -> list[Path]:
    """Every format of the recipe from ``raw`` into ``directory``; the files written."""
    written: list[Path] = []
    capacity = raw.stat().st_size
    if "qcow2" in recipe.formats:
        progress("export: compressed qcow2")
        to_qcow2(raw, directory / f"{name}.qcow2")
        written.append(directory / f"{name}.qcow2")
    if "vmdk" in recipe.formats:
        progress("export: streamOptimized VMDK")
        vmdk = directory / f"{name}.vmdk"
        to_vmdk(raw, vmdk)
        written.append(vmdk)
        if "ova" in recipe.formats:
            progress("export: OVF descriptor, manifest and OVA")
            ovf = directory / f"{name}.ovf"
            ovf.write_text(render_ovf(recipe, name=name, vmdk=vmdk, capacity=capacity,
                                      build=build))
            manifest = make_ova(ovf, vmdk, directory / f"{name}.ova", epoch=epoch)
            # The OVA carries descriptor and manifest; outside it they would only repeat it.
            ovf.unlink()
            manifest.unlink()
            written.append(directory / f"{name}.ova")
    if not written:
        raise ApplianceError("the recipe's output.formats names nothing to export: add qcow2")
    return written
