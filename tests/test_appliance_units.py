# SPDX-License-Identifier: Apache-2.0
"""The appliance builder's pure parts, without building: the recipe for Debian and Ubuntu
(suite, components, keyring, package names, mmdebstrap's command), one-line errors, the disk
layout and grub's BIOS boot patching, the OVF descriptor and the OVA's order, the seed's
collection from an overlay's upper layer."""

from __future__ import annotations

import copy
import os
import struct
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance import ApplianceError
from appliance.disk import MIB, SECTOR, derived_uuid, grub_cfg, install_bios_boot, layout
from appliance.export import make_ova
from appliance.generalise import private_keys
from appliance.recipe import DEFAULT_RECIPE, load_recipe, parse_recipe
from appliance.rootfs import mmdebstrap_command
from appliance.seed import collect
from builds.cross import sha256_file

DATA = yaml.safe_load(DEFAULT_RECIPE.read_text())


def _parse(data: object, **kwargs: object):
    return parse_recipe(data, DEFAULT_RECIPE, **kwargs)


def test_debian_is_the_default():
    recipe = load_recipe()
    assert (recipe.distribution, recipe.suite) == ("debian", "bookworm")
    assert recipe.mirror == "http://deb.debian.org/debian"
    assert recipe.components == ("main",) and recipe.keyring is None
    assert recipe.packages[-1] == "linux-image-amd64"
    assert {"openssh-server", "systemd-timesyncd", "cockpit-ws"} <= set(recipe.packages)
    assert recipe.name == f"probeforge-appliance-{recipe.version}-debian-bookworm"


def test_ubuntu_takes_its_suite_components_keyring_and_kernel(tmp_path):
    keyring = tmp_path / "ubuntu-archive-keyring.gpg"
    keyring.write_bytes(b"key")
    recipe = load_recipe(distribution="ubuntu", mirror="http://mirror.example/ubuntu",
                         keyring=keyring)
    assert (recipe.suite, recipe.components) == ("noble", ("main", "universe"))
    assert recipe.keyring == keyring
    assert "linux-image-virtual" in recipe.packages
    assert "linux-image-amd64" not in recipe.packages
    command = mmdebstrap_command(recipe, tmp_path / "tree", tmp_path / "debs")
    assert f"--keyring={keyring}" in command
    assert "--components=main,universe" in command
    assert command[-3:] == ["noble", str(tmp_path / "tree"),
                            "deb http://mirror.example/ubuntu noble main universe"]
    # The recipe's own keyring path is relative to the recipe.
    default = load_recipe(distribution="ubuntu")
    assert default.keyring == (DEFAULT_RECIPE.parent / "keys/ubuntu-archive-keyring.gpg")


def test_package_renames_apply_to_one_distribution():
    data = copy.deepcopy(DATA)
    data["distributions"]["ubuntu"]["rename"] = {"vim-tiny": "vim"}
    ubuntu = _parse(data, distribution="ubuntu")
    assert "vim" in ubuntu.packages and "vim-tiny" not in ubuntu.packages
    assert "vim-tiny" in _parse(data).packages


def test_mmdebstrap_reuses_the_deb_cache(tmp_path):
    command = mmdebstrap_command(load_recipe(), tmp_path / "tree", tmp_path / "debs")
    assert f"--setup-hook=sync-in {tmp_path / 'debs'} /var/cache/apt/archives/" in command
    assert f"--customize-hook=sync-out /var/cache/apt/archives {tmp_path / 'debs'}" in command
    assert "--variant=minbase" in command and "--format=directory" in command


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.update(distribution="arch"), "'arch' has no entry under distributions"),
    (lambda d: d["distributions"]["debian"].update(suite="sid"), "not a debian suite"),
    (lambda d: d["distributions"]["debian"].update(mirror="ftp://x"), "malformed"),
    (lambda d: d["content"]["packages"].append("Bad_Name"), "malformed"),
    (lambda d: d["content"]["packages"].append("less"), "lists 'less' twice"),
    (lambda d: d["provision"].append({"role": "nope"}), "is no role in roles/"),
    (lambda d: d["provision"].append({"role": "supervisor", "tasks_from": "nope"}),
     "names no roles/supervisor/tasks/nope.yml"),
    (lambda d: d["disk"]["partitions"].pop(0), "must be one bios-boot"),
    (lambda d: d["output"].update(formats=["ova"]), "ova without vmdk"),
    (lambda d: d["seed"].update(label="lower"), "malformed"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
])
def test_recipe_errors_are_one_line_naming_the_fix(change, expected):
    data = copy.deepcopy(DATA)
    change(data)
    with pytest.raises(ApplianceError) as error:
        _parse(data)
    message = str(error.value)
    assert expected in message and "\n" not in message and ":" in message


def test_unreadable_or_broken_recipe(tmp_path):
    with pytest.raises(ApplianceError, match="cannot read the recipe"):
        load_recipe(tmp_path / "missing.yml")
    broken = tmp_path / "recipe.yml"
    broken.write_text("version: [\n")
    with pytest.raises(ApplianceError, match="not valid YAML"):
        load_recipe(broken)


def test_layout_is_aligned_and_fills_the_disk():
    recipe = load_recipe()
    lay = layout(recipe)
    assert lay.starts["bios"] == MIB // SECTOR
    assert lay.starts["esp"] == lay.starts["bios"] + lay.sizes["bios"]
    assert all(start % (MIB // SECTOR) == 0 for start in lay.starts.values())
    end = lay.starts["root"] + lay.sizes["root"]
    assert end * SECTOR == lay.disk_bytes - MIB  # room for the backup GPT


def test_derived_uuids_are_stable_and_distinct():
    assert derived_uuid("k", "root-fs") == derived_uuid("k", "root-fs")
    assert derived_uuid("k", "root-fs") != derived_uuid("k", "esp")
    assert derived_uuid("k", "root-fs")[14] == "4"


def test_grub_cfg_uses_the_root_uuid():
    text = grub_cfg("1234-uuid", "6.1.0-1-amd64", "console=ttyS0", "name")
    assert "root=UUID=1234-uuid ro console=ttyS0" in text
    assert "search --no-floppy --fs-uuid --set=root 1234-uuid" in text


def test_bios_boot_keeps_the_partition_table_and_points_at_core(tmp_path):
    disk = tmp_path / "disk"
    table = bytes(range(256)) * 2
    disk.write_bytes(table + bytes(4 * MIB))
    boot = bytes([0xEB, 0x63]) + bytes(SECTOR - 2)
    core = b"C" * (3 * SECTOR + 10)
    install_bios_boot(disk, boot, core, 2048, 2048)
    data = disk.read_bytes()
    assert data[0x1B8:0x1FE] == table[0x1B8:0x1FE]
    assert struct.unpack_from("<Q", data, 0x5C)[0] == 2048
    assert data[0x66:0x68] == b"\x90\x90" and data[0x64] == 0xFF
    start, length, segment = struct.unpack_from("<QHH", data, 2048 * SECTOR + SECTOR - 12)
    assert (start, length, segment) == (2049, 3, 0x820)
    with pytest.raises(ApplianceError, match="does not fit the BIOS boot partition"):
        install_bios_boot(disk, boot, core, 2048, 2)


def test_ova_holds_descriptor_manifest_disk_in_order(tmp_path):
    ovf, vmdk = tmp_path / "a.ovf", tmp_path / "a.vmdk"
    ovf.write_text("<Envelope/>")
    vmdk.write_bytes(b"disk" * 100)
    manifest = make_ova(ovf, vmdk, tmp_path / "a.ova", epoch=1793491200)
    assert manifest.read_text() == (f"SHA256(a.ovf)= {sha256_file(ovf)}\n"
                                    f"SHA256(a.vmdk)= {sha256_file(vmdk)}\n")
    with tarfile.open(tmp_path / "a.ova") as ova:
        assert ova.getnames() == ["a.ovf", "a.mf", "a.vmdk"]
        assert all(m.mtime == 1793491200 and m.uid == 0 for m in ova.getmembers())


def test_ovf_template_is_wellformed_with_sata_and_e1000():
    import jinja2

    text = jinja2.Template((DEFAULT_RECIPE.parent / "ovf/appliance.ovf.j2").read_text(),
                           undefined=jinja2.StrictUndefined).render(
        name="n", build="b", version="v", disk_file="n.vmdk", disk_file_size=1, capacity=2,
        populated=1, cpus=2, memory_mib=2048, os_id="96", vmw_os_type="debian12_64Guest",
        os_description="d", description="d")
    root = ET.fromstring(text)
    rasd = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
    subtypes = [e.text for e in root.iter(f"{rasd}ResourceSubType")]
    assert subtypes == ["AHCI", "E1000"]
    for item in root.iter("{http://schemas.dmtf.org/ovf/envelope/1}Item"):
        names = [child.tag for child in item]
        assert names == sorted(names), "rasd elements must be in schema order"


@pytest.mark.skipif(os.geteuid() != 0, reason="keeps owners: needs root")
def test_seed_collects_only_what_roles_wrote_below_its_paths(tmp_path):
    upper = tmp_path / "upper"
    (upper / "etc/mplane/certs").mkdir(parents=True)
    (upper / "etc/mplane/certs").chmod(0o700)
    (upper / "etc/mplane/certs/probe.key").write_text("secret")
    (upper / "etc/mplane/certs/probe.key").chmod(0o600)
    (upper / "etc/resolv.conf").write_text("nameserver 1.1.1.1\n")
    (upper / "var/cache").mkdir(parents=True)
    (upper / "var/cache/junk").write_text("x")
    (upper / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (upper / "etc/systemd/system/multi-user.target.wants/x.service").symlink_to("/x")
    os.mknod(upper / "etc/deleted", 0o020000, os.makedev(0, 0))  # an overlay whiteout
    entries = collect(upper, tmp_path / "seed", ("etc",), ("etc/resolv.conf",))
    paths = {e["path"]: e for e in entries}
    assert paths["/etc/mplane/certs/probe.key"]["mode"] == "0600"
    assert (tmp_path / "seed/etc/mplane/certs").stat().st_mode & 0o777 == 0o700
    assert os.readlink(tmp_path / "seed/etc/systemd/system/multi-user.target.wants/"
                       "x.service") == "/x"
    assert "/etc/resolv.conf" not in paths and "/etc/deleted" not in paths
    assert not (tmp_path / "seed/var").exists()


def test_private_key_scan_finds_keys(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    assert private_keys(tmp_path) == []
    # A real key, made here: the repository itself never holds one (tests/test_lint.py).
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "etc/key.pem").write_bytes(key)
    assert private_keys(tmp_path) == ["etc/key.pem"]


def test_recipe_roles_exist_and_the_keyring_directory_is_documented():
    recipe = load_recipe()
    for step in (*recipe.provision, *recipe.seed_roles):
        assert (Path("roles") / step.role / "tasks" / f"{step.tasks_from}.yml").is_file()
