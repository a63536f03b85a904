# SPDX-License-Identifier: Apache-2.0
"""The appliance recipe (``images/ubuntu-appliance/recipe.yml``), loaded and validated.

:func:`load_recipe` returns a :class:`Recipe` for one distribution of the recipe (Debian by
default, Ubuntu with ``distribution="ubuntu"``), with its mirror, suite, keyring and package
names resolved. Every problem is one :class:`ApplianceError` line naming the key and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import ApplianceError
from firmware.recipe import read_recipe_yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "images" / "ubuntu-appliance"
DEFAULT_RECIPE = RECIPE_DIR / "recipe.yml"

# Suites mmdebstrap knows and what each distribution's archive calls them.
SUITES = {"debian": ("bookworm", "trixie"), "ubuntu": ("jammy", "noble")}
PARTITION_TYPES = {
    "bios-boot": "21686148-6E6F-744E-6565-644E65656645",
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "linux-root-x86-64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
}
FORMATS = ("qcow2", "vmdk", "ova")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~_-]*$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_MIRROR = re.compile(r"^(https?|file)://\S+$")
_LABEL = re.compile(r"^[A-Z0-9_-]{1,16}$")


@dataclass(frozen=True)
class RoleStep:
    """One role applied by Ansible: ``include_role`` with ``tasks_from`` and ``vars``."""

    role: str
    tasks_from: str = "main"
    vars: dict[str, Any] | None = None

    def task(self) -> dict[str, Any]:
        task: dict[str, Any] = {
            "name": f"Apply {self.role}" + (f" ({self.tasks_from})"
                                             if self.tasks_from != "main" else ""),
            "ansible.builtin.include_role": {"name": self.role, "tasks_from": self.tasks_from}}
        if self.vars:
            task["vars"] = dict(self.vars)
        return task


@dataclass(frozen=True)
class Component:
    name: str
    artifact: str
    roles: tuple[RoleStep, ...]


@dataclass(frozen=True)
class Partition:
    name: str
    type: str  # a key of PARTITION_TYPES
    size_mib: int | None  # None: the rest of the disk


@dataclass(frozen=True)
class Recipe:
    path: Path
    version: str
    source_date_epoch: int
    distribution: str
    suite: str
    mirror: str
    components: tuple[str, ...]  # archive components (main, universe)
    keyring: Path | None
    packages: tuple[str, ...]  # resolved for the distribution, kernel included
    hostname: str
    provision: tuple[RoleStep, ...]
    optional: tuple[Component, ...]
    seed_label: str
    seed_size_mib: int
    seed_roles: tuple[RoleStep, ...]
    seed_paths: tuple[str, ...]
    seed_never: tuple[str, ...]
    disk_size_gib: int
    partitions: tuple[Partition, ...]
    kernel_cmdline: str
    formats: tuple[str, ...]
    ovf_template: Path
    memory_mib: int
    cpus: int

    @property
    def name(self) -> str:
        """The image's base name: probeforge-appliance-<version>-<distribution>-<suite>."""
        return f"probeforge-appliance-{self.version}-{self.distribution}-{self.suite}"

    def as_data(self) -> dict[str, Any]:
        """What the generic image depends on in the recipe, as plain data (for hashing)."""
        return {
            "version": self.version, "epoch": self.source_date_epoch,
            "distribution": self.distribution, "suite": self.suite, "mirror": self.mirror,
            "components": list(self.components),
            "keyring": str(self.keyring) if self.keyring else "",
            "packages": list(self.packages), "hostname": self.hostname,
            "provision": [s.__dict__ for s in self.provision],
            "optional": [{"name": c.name, "artifact": c.artifact,
                          "roles": [s.__dict__ for s in c.roles]} for c in self.optional],
            "disk": {"size_gib": self.disk_size_gib, "cmdline": self.kernel_cmdline,
                     "partitions": [p.__dict__ for p in self.partitions]},
        }


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> ApplianceError:
        return ApplianceError(f"{self.source}: {where} {problem}")

    def mapping(self, value: Any, where: str, known: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, not {type(value).__name__}: indent "
                                   "its keys under it")
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise self.fail(where, f"has unknown key {unknown[0]!r}: use one of "
                                   f"{', '.join(known)} (check the spelling)")
        for key in required:
            if key not in value:
                raise self.fail(where, f"lacks {key!r}: add it (see images/ubuntu-appliance/"
                                       "recipe.yml)")
        return value

    def text(self, value: Any, where: str, pattern: re.Pattern[str] | None = None,
             example: str = "", empty: bool = False) -> str:
        if not isinstance(value, str) or (not value and not empty):
            raise self.fail(where, f"must be a string, e.g. {example!r}, not {value!r}")
        if value and pattern is not None and not pattern.match(value):
            raise self.fail(where, f"{value!r} is malformed: write it like {example!r}")
        return value

    def integer(self, value: Any, where: str, example: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"must be a whole number of at least {minimum}, not "
                                   f"{value!r}: write it like {example}")
        return value

    def names(self, value: Any, where: str, pattern: re.Pattern[str], example: str,
              empty: bool = True) -> tuple[str, ...]:
        if not isinstance(value, list) or (not empty and not value):
            raise self.fail(where, f"must be a {'' if empty else 'non-empty '}list, "
                                   f"e.g. [{example}]")
        items = tuple(self.text(v, f"{where}[{i}]", pattern, example)
                      for i, v in enumerate(value))
        twice = sorted({v for v in items if items.count(v) > 1})
        if twice:
            raise self.fail(where, f"lists {twice[0]!r} twice: keep one")
        return items

    def roles(self, value: Any, where: str) -> tuple[RoleStep, ...]:
        if not isinstance(value, list):
            raise self.fail(where, "must be a list of {role: NAME, tasks_from: FILE, vars: {…}}")
        steps = []
        for i, item in enumerate(value):
            item = self.mapping(item, f"{where}[{i}]", ("role", "tasks_from", "vars"), ("role",))
            role = self.text(item["role"], f"{where}[{i}].role", _NAME, "supervisor")
            if not (REPO / "roles" / role).is_dir():
                raise self.fail(f"{where}[{i}].role", f"{role!r} is no role in roles/: fix "
                                                      "the name")
            tasks_from = self.text(item.get("tasks_from", "main"), f"{where}[{i}].tasks_from",
                                   _NAME, "install")
            if not (REPO / "roles" / role / "tasks" / f"{tasks_from}.yml").is_file():
                raise self.fail(f"{where}[{i}].tasks_from", f"names no roles/{role}/tasks/"
                                                            f"{tasks_from}.yml: fix it")
            variables = item.get("vars")
            if variables is not None and not isinstance(variables, dict):
                raise self.fail(f"{where}[{i}].vars", "must be a mapping of variables")
            steps.append(RoleStep(role, tasks_from, variables))
        return tuple(steps)


def parse_recipe(data: Any, path: Path, *, distribution: str | None = None,
                 mirror: str | None = None, keyring: Path | None = None,
                 suite: str | None = None) -> Recipe:
    """``data`` (the YAML) checked and resolved for ``distribution`` (default: the recipe's);
    ``mirror``, ``keyring`` and ``suite`` override the distribution's."""
    check = _Checker(str(path))
    top = check.mapping(data, "the recipe",
                        ("version", "source_date_epoch", "distribution", "distributions",
                         "content", "provision", "components", "seed", "disk", "output"),
                        ("version", "source_date_epoch", "distribution", "distributions",
                         "content", "provision", "seed", "disk", "output"))
    version = check.text(top["version"], "version", _VERSION, "2026.11.0")
    epoch = check.integer(top["source_date_epoch"], "source_date_epoch", "1793491200")
    chosen = distribution or check.text(top["distribution"], "distribution", _NAME, "debian")
    dists = top["distributions"]
    if not isinstance(dists, dict) or not dists:
        raise check.fail("distributions", "must map debian/ubuntu to their settings")
    for name in dists:
        if name not in SUITES:
            raise check.fail(f"distributions.{name}", f"is not a distribution the build knows: "
                                                      f"use {' or '.join(SUITES)}")
    if chosen not in dists:
        raise check.fail("distribution", f"{chosen!r} has no entry under distributions: use "
                                         f"one of {', '.join(dists)} or add it")
    where = f"distributions.{chosen}"
    dist = check.mapping(dists[chosen], where,
                         ("suite", "mirror", "components", "keyring", "kernel", "rename"),
                         ("suite", "mirror", "components", "kernel"))
    chosen_suite = suite or check.text(dist["suite"], f"{where}.suite", _NAME, "bookworm")
    if chosen_suite not in SUITES[chosen]:
        raise check.fail(f"{where}.suite", f"{chosen_suite!r} is not a {chosen} suite the "
                                           f"build knows: use {', '.join(SUITES[chosen])}")
    chosen_mirror = check.text(mirror or dist["mirror"], f"{where}.mirror", _MIRROR,
                               "http://deb.debian.org/debian")
    components = check.names(dist["components"], f"{where}.components", _NAME, "main",
                             empty=False)
    keyring_text = check.text(dist.get("keyring", ""), f"{where}.keyring", empty=True)
    chosen_keyring = keyring or ((path.parent / keyring_text).resolve() if keyring_text
                                 else None)
    kernel = check.text(dist["kernel"], f"{where}.kernel", _PACKAGE, "linux-image-amd64")
    rename = dist.get("rename", {}) or {}
    if not isinstance(rename, dict):
        raise check.fail(f"{where}.rename", "must map Debian package names to this "
                                            "distribution's")
    for old, new in rename.items():
        check.text(old, f"{where}.rename key", _PACKAGE, "libfoo1")
        check.text(new, f"{where}.rename.{old}", _PACKAGE, "libfoo1t64")

    content = check.mapping(top["content"], "content", ("packages", "hostname"),
                            ("packages",))
    listed = check.names(content["packages"], "content.packages", _PACKAGE, "openssh-server",
                         empty=False)
    packages = tuple(dict.fromkeys([*(rename.get(p, p) for p in listed), kernel]))
    hostname = check.text(content.get("hostname", "appliance"), "content.hostname", _NAME,
                          "appliance")

    provision = check.roles(top["provision"], "provision")
    optional = []
    for name, spec in (top.get("components") or {}).items():
        spec = check.mapping(spec, f"components.{name}", ("artifact", "roles"),
                             ("artifact", "roles"))
        optional.append(Component(name, check.text(spec["artifact"],
                                                   f"components.{name}.artifact", _NAME,
                                                   "tstat-source"),
                                  check.roles(spec["roles"], f"components.{name}.roles")))

    seed = check.mapping(top["seed"], "seed", ("label", "size_mib", "roles", "paths", "never"),
                         ("label", "roles", "paths"))
    label = check.text(seed["label"], "seed.label", _LABEL, "PFSEED")
    rel = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$")
    seed_paths = check.names(seed["paths"], "seed.paths", rel, "etc", empty=False)
    seed_never = check.names(seed.get("never", []), "seed.never", rel, "etc/resolv.conf")
    for item in (*seed_paths, *seed_never):
        if ".." in item.split("/") or item.startswith("/"):
            raise check.fail("seed", f"path {item!r} must be relative to / without '..'")

    disk = check.mapping(top["disk"], "disk", ("size_gib", "partitions", "kernel_cmdline"),
                         ("size_gib", "partitions"))
    partitions = []
    for i, item in enumerate(disk["partitions"] if isinstance(disk["partitions"], list)
                             else []):
        item = check.mapping(item, f"disk.partitions[{i}]", ("name", "type", "size_mib"),
                             ("name", "type"))
        kind = check.text(item["type"], f"disk.partitions[{i}].type", example="esp")
        if kind not in PARTITION_TYPES:
            raise check.fail(f"disk.partitions[{i}].type", f"{kind!r} is unknown: use one "
                                                           f"of {', '.join(PARTITION_TYPES)}")
        size = (check.integer(item["size_mib"], f"disk.partitions[{i}].size_mib", "64")
                if "size_mib" in item else None)
        partitions.append(Partition(check.text(item["name"], f"disk.partitions[{i}].name",
                                               _NAME, "root"), kind, size))
    kinds = [p.type for p in partitions]
    if sorted(kinds) != sorted(PARTITION_TYPES) or partitions[-1].size_mib is not None:
        raise check.fail("disk.partitions", "must be one bios-boot, one esp and one "
                                            "linux-root-x86-64 partition, the root last and "
                                            "without size_mib (it takes the rest)")

    output = check.mapping(top["output"], "output", ("formats", "ovf", "memory_mib", "cpus"),
                           ("formats", "ovf"))
    formats = check.names(output["formats"], "output.formats", _NAME, "qcow2", empty=False)
    for fmt in formats:
        if fmt not in FORMATS:
            raise check.fail("output.formats", f"{fmt!r} is unknown: use {', '.join(FORMATS)}")
    if "ova" in formats and "vmdk" not in formats:
        raise check.fail("output.formats", "has ova without vmdk: an OVA carries the VMDK")
    ovf = (path.parent / check.text(output["ovf"], "output.ovf", example="ovf/x.ovf.j2"))
    if "ova" in formats and not ovf.is_file():
        raise check.fail("output.ovf", f"{ovf} does not exist: fix the path (relative to "
                                       "the recipe)")
    return Recipe(
        path=path, version=version, source_date_epoch=epoch, distribution=chosen,
        suite=chosen_suite, mirror=chosen_mirror, components=components,
        keyring=chosen_keyring, packages=packages, hostname=hostname,
        provision=provision, optional=tuple(optional), seed_label=label,
        seed_size_mib=check.integer(seed.get("size_mib", 8), "seed.size_mib", "8", 2),
        seed_roles=check.roles(seed["roles"], "seed.roles"), seed_paths=seed_paths,
        seed_never=seed_never,
        disk_size_gib=check.integer(disk["size_gib"], "disk.size_gib", "8", 2),
        partitions=tuple(partitions),
        kernel_cmdline=check.text(disk.get("kernel_cmdline", ""), "disk.kernel_cmdline",
                                  empty=True),
        formats=formats, ovf_template=ovf,
        memory_mib=check.integer(output.get("memory_mib", 2048), "output.memory_mib", "2048",
                                 256),
        cpus=check.integer(output.get("cpus", 2), "output.cpus", "2"))


def load_recipe(path: Path = DEFAULT_RECIPE, **overrides: Any) -> Recipe:
    """The recipe at ``path`` for one distribution (see :func:`parse_recipe`)."""
    data = read_recipe_yaml(path, ApplianceError, DEFAULT_RECIPE)
    return parse_recipe(data, path, **overrides)
