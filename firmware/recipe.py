# SPDX-License-Identifier: Apache-2.0
"""The firmware recipe (``images/openwrt/recipe.yml``), loaded and validated.

Every problem is a :class:`FirmwareError` of one line that names the file, the key and the
fix, so that a partner editing the recipe never has to read a traceback.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from firmware import FirmwareError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "images" / "openwrt" / "recipe.yml"

# The components the base build knows how to put into an image (firmware/rootfs.py).
KNOWN_COMPONENTS = ("probe-daemon", "tstat")
# Debian architectures with a cross toolchain and qemu-user in builds/cross.py.
KNOWN_ARCHES = ("mipsel", "mips64el", "armhf", "arm64", "amd64")
DISTRIBUTIONS = ("debian",)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~_-]*$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_MODULE = re.compile(r"^[A-Za-z0-9_-]+$")
_MIRROR = re.compile(r"^https?://[^\s]+$")


@dataclass(frozen=True)
class Component:
    name: str
    required: bool
    artifact: str | None = None  # artifact cache entry the component is built from


@dataclass(frozen=True)
class Board:
    name: str
    arch: str
    distribution: str
    suite: str
    mirror: str
    areas: tuple[str, ...]
    kernel: str  # the kernel metapackage; its Depends name the ABI-numbered package
    qemu_machine: str
    qemu_memory: int  # MiB
    packages: tuple[str, ...]
    exclude: tuple[str, ...]
    component_packages: Mapping[str, tuple[str, ...]]
    modules: tuple[str, ...]
    description: str = ""

    def as_data(self) -> dict[str, Any]:
        """Everything a build of this board depends on, as plain data (for hashing)."""
        return {"name": self.name, "arch": self.arch, "distribution": self.distribution,
                "suite": self.suite, "mirror": self.mirror, "areas": list(self.areas),
                "kernel": self.kernel, "qemu_machine": self.qemu_machine,
                "qemu_memory": self.qemu_memory, "packages": list(self.packages),
                "exclude": list(self.exclude),
                "component_packages": {k: list(v) for k, v in
                                       sorted(self.component_packages.items())},
                "modules": list(self.modules)}


@dataclass(frozen=True)
class Recipe:
    path: Path
    version: str
    source_date_epoch: int
    components: Mapping[str, Component]
    boards: Mapping[str, Board] = field(default_factory=dict)

    def board(self, name: str) -> Board:
        try:
            return self.boards[name]
        except KeyError:
            raise FirmwareError(f"{self.path}: no board {name!r} (the recipe has "
                                f"{', '.join(sorted(self.boards))}): use one of those or add "
                                "it under boards:") from None


class _Checker:
    """Reads one recipe, raising a one-line FirmwareError at the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> FirmwareError:
        return FirmwareError(f"{self.source}: {where} {problem}")

    def mapping(self, value: Any, where: str, known: tuple[str, ...] | None = None,
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping of keys to values, not "
                                   f"{type(value).__name__}: indent its keys under it")
        if known is not None:
            unknown = sorted(str(k) for k in value if k not in known)
            if unknown:
                raise self.fail(where, f"has unknown key {unknown[0]!r}: use one of "
                                       f"{', '.join(known)} (check the spelling)")
        for key in required:
            if key not in value:
                raise self.fail(where, f"lacks {key!r}: add it (see the qemu-malta-mipsel "
                                       "board in images/openwrt/recipe.yml)")
        return value

    def text(self, value: Any, where: str, pattern: re.Pattern[str] | None = None,
             example: str = "") -> str:
        if not isinstance(value, str) or not value:
            hint = f" in quotes, e.g. {example!r}" if example else " in quotes"
            raise self.fail(where, f"must be a non-empty string{hint}, not {value!r}")
        if pattern is not None and not pattern.match(value):
            raise self.fail(where, f"{value!r} is malformed: write it like {example!r}")
        return value

    def integer(self, value: Any, where: str, example: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"must be a whole number of at least {minimum}, not "
                                   f"{value!r}: write it like {example}")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, not {value!r}")
        return value

    def names(self, value: Any, where: str, pattern: re.Pattern[str], example: str,
              empty: bool = True) -> tuple[str, ...]:
        if not isinstance(value, list) or (not empty and not value):
            need = "a list" if empty else "a non-empty list"
            raise self.fail(where, f"must be {need} of names, e.g. [{example}]")
        items = tuple(self.text(v, f"{where}[{i}]", pattern, example)
                      for i, v in enumerate(value))
        duplicates = sorted({v for v in items if items.count(v) > 1})
        if duplicates:
            raise self.fail(where, f"lists {duplicates[0]!r} twice: keep one")
        return items


def parse_recipe(data: Any, path: Path) -> Recipe:
    """The recipe ``data`` (as loaded from YAML) checked and typed; ``path`` names it in errors."""
    check = _Checker(str(path))
    top = check.mapping(data, "the recipe",
                        ("version", "source_date_epoch", "components", "boards"),
                        ("version", "source_date_epoch", "components", "boards"))
    version = check.text(top["version"], "version", _VERSION, "2026.11.0")
    epoch = check.integer(top["source_date_epoch"], "source_date_epoch", "1793491200", 1)

    components: dict[str, Component] = {}
    for name, spec in check.mapping(top["components"], "components").items():
        where = f"components.{name}"
        if name not in KNOWN_COMPONENTS:
            raise check.fail(where, f"is not a component the build knows: use one of "
                                    f"{', '.join(KNOWN_COMPONENTS)}")
        spec = check.mapping(spec, where, ("required", "artifact"), ("required",))
        required = check.flag(spec["required"], f"{where}.required")
        if name == "probe-daemon" and not required:
            raise check.fail(where, "must have `required: true`: every MiniProbe runs the "
                                    "probe daemon (docs/firmware.md)")
        artifact = (check.text(spec["artifact"], f"{where}.artifact", _NAME, "tstat-source")
                    if "artifact" in spec else None)
        if not required and artifact is None:
            raise check.fail(where, "is optional but names no artifact: add `artifact:` (the "
                                    "artifact cache entry whose presence builds it in)")
        components[name] = Component(name, required, artifact)
    if "probe-daemon" not in components:
        raise check.fail("components", "must have probe-daemon with `required: true`: every "
                                       "MiniProbe runs it (docs/firmware.md)")

    boards: dict[str, Board] = {}
    board_keys = ("description", "arch", "distribution", "suite", "mirror", "areas", "kernel",
                  "qemu", "packages", "exclude", "component_packages", "modules")
    for name, spec in check.mapping(top["boards"], "boards").items():
        where = f"boards.{name}"
        check.text(name, "boards: a board name", _NAME, "qemu-malta-mipsel")
        spec = check.mapping(spec, where, board_keys, ("arch", "suite", "kernel", "qemu",
                                                      "packages", "modules"))
        arch = check.text(spec["arch"], f"{where}.arch")
        if arch not in KNOWN_ARCHES:
            raise check.fail(f"{where}.arch", f"{arch!r} is not a Debian architecture the "
                                              f"build knows: use one of {', '.join(KNOWN_ARCHES)}")
        distribution = check.text(spec.get("distribution", "debian"), f"{where}.distribution")
        if distribution not in DISTRIBUTIONS:
            raise check.fail(f"{where}.distribution", f"{distribution!r} is not supported: "
                                                      f"use {', '.join(DISTRIBUTIONS)}")
        qemu = check.mapping(spec["qemu"], f"{where}.qemu", ("machine", "memory"),
                             ("machine", "memory"))
        component_packages: dict[str, tuple[str, ...]] = {}
        for component, packages in check.mapping(spec.get("component_packages", {}),
                                                 f"{where}.component_packages").items():
            if component not in components:
                raise check.fail(f"{where}.component_packages.{component}",
                                 f"names no component of the recipe: use one of "
                                 f"{', '.join(components)}")
            component_packages[component] = check.names(
                packages, f"{where}.component_packages.{component}", _PACKAGE, "libpcap0.8")
        boards[name] = Board(
            name=name, arch=arch, distribution=distribution,
            suite=check.text(spec["suite"], f"{where}.suite", _NAME, "bookworm"),
            mirror=check.text(spec.get("mirror", "http://deb.debian.org/debian"),
                              f"{where}.mirror", _MIRROR, "http://deb.debian.org/debian"),
            areas=check.names(spec.get("areas", ["main"]), f"{where}.areas", _NAME, "main",
                              empty=False),
            kernel=check.text(spec["kernel"], f"{where}.kernel", _PACKAGE,
                              "linux-image-4kc-malta"),
            qemu_machine=check.text(qemu["machine"], f"{where}.qemu.machine", _NAME, "malta"),
            qemu_memory=check.integer(qemu["memory"], f"{where}.qemu.memory", "256 (MiB)", 16),
            packages=check.names(spec["packages"], f"{where}.packages", _PACKAGE,
                                 "busybox-static", empty=False),
            exclude=check.names(spec.get("exclude", []), f"{where}.exclude", _PACKAGE, "dpkg"),
            component_packages=component_packages,
            modules=check.names(spec["modules"], f"{where}.modules", _MODULE, "virtio_net"),
            description=(check.text(spec["description"], f"{where}.description")
                         if "description" in spec else ""),
        )
        both = sorted(set(boards[name].packages) & set(boards[name].exclude))
        if both:
            raise check.fail(where, f"lists {both[0]!r} in both packages and exclude: keep one")
    if not boards:
        raise check.fail("boards", "is empty: add a board (see docs/firmware.md)")
    return Recipe(path=path, version=version, source_date_epoch=epoch,
                  components=components, boards=boards)


def read_recipe_yaml(path: Path, error: type[Exception], example: Path) -> Any:
    """The YAML in ``path``; ``error`` naming the problem (unreadable, bad syntax) otherwise.
    The appliance's recipe is read the same way."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"cannot read the recipe {path} ({exc.strerror}): pass the path "
                    f"of a recipe such as {example}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}: not valid YAML ({problem}{line}): fix the syntax "
                    "there") from None


def load_recipe(path: Path = DEFAULT_RECIPE) -> Recipe:
    """The recipe at ``path``, validated (FirmwareError naming the problem otherwise)."""
    return parse_recipe(read_recipe_yaml(path, FirmwareError, DEFAULT_RECIPE), path)
