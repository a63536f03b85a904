# SPDX-License-Identifier: Apache-2.0
"""What the probe-daemon package installs, where and with which modes, for both formats.

Both the .deb and the .ipk install the same program, launcher and configuration; they
differ only in what ties the daemon to the init system (systemd unit and sysv script on
Debian, procd script on OpenWrt), in Debian's documentation files, and in OpenWrt's spool
and sysupgrade keep list. All of that is decided here, so deb.py and ipk.py only pack.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from pkgformats.archive import Entry, gzip_bytes
from pkgformats.errors import BuildError

NAME = "probe-daemon"
TARGETS = ("debian", "openwrt")
LIB_DIR = "/usr/lib/probe-daemon"
CONFIG_DIR = "/etc/mplane"
CONFIG_FILE = f"{CONFIG_DIR}/probe.conf"
PACKAGING_DIR = Path("packaging") / NAME
LICENSE = "Apache-2.0"
DEFAULT_MAINTAINER = "probeforge developers <probeforge@example.org>"
SUMMARY = "mPlane probe daemon: network measurements for an mPlane supervisor"
DESCRIPTION = (
    "The on-device component of an mPlane measurement testbed. It registers this\n"
    "host's measurement capabilities (ping, traceroute, HTTP, DNS, OTT video, Tstat\n"
    "logging) with its supervisor over mutually authenticated TLS, runs the\n"
    "measurements the supervisor specifies and delivers their results, keeping them\n"
    "in a spool while the supervisor is away."
)

# Outside site-packages on purpose: the path is the same whatever the target's Python
# version or layout, and nothing else on the system can import the daemon's modules by
# accident. -I keeps PYTHONPATH, the user's site directory and /usr/bin off sys.path.
LAUNCHER = f'''#!/usr/bin/python3 -I
# SPDX-License-Identifier: {LICENSE}
"""probe-daemon: the mPlane probe daemon (package launcher)."""

import sys

sys.path.insert(0, "{LIB_DIR}")

from probe_daemon.cli import main  # noqa: E402

sys.exit(main())
'''.encode()

# On OpenWrt /var is a tmpfs: results spooled there would be lost at every reboot. The
# spool goes to flash instead, next to the credentials, where sysupgrade keeps it too; a
# MiniProbe has only a few MB of flash to spare, hence the smaller limit.
OPENWRT_CONFIG = {"spool_dir": f"{CONFIG_DIR}/spool", "spool_max_bytes": "1M"}
# sysupgrade keeps what /lib/upgrade/keep.d/* lists: the credentials, configuration and
# undelivered results survive an upgrade (the device contract in DESIGN.md).
OPENWRT_KEEP = f"{CONFIG_DIR}/\n"

# Deliberate departures from Debian's defaults, so lintian reports only news.
LINTIAN_OVERRIDES = (
    "# The private key lives here: only root may list it (device contract).\n"
    f"{NAME}: non-standard-dir-perm 0700 != 0755 [etc/mplane/certs/]\n"
).encode()

_SKIPPED_NAMES = re.compile(r"^(__pycache__|\..*|.*\.py[co]|.*~)$")


@dataclass(frozen=True)
class PackageTree:
    target: str
    version: str
    entries: tuple[Entry, ...]
    conffiles: tuple[str, ...]
    source_root: Path

    def file(self, path: str) -> Entry:
        for entry in self.entries:
            if entry.path == path:
                return entry
        raise KeyError(path)


def _read(source_root: Path, relative: Path) -> bytes:
    path = source_root / relative
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {path} ({exc.strerror}): run from a probeforge "
                         "checkout or pass --source to it") from None


def _daemon_entries(source_root: Path) -> list[Entry]:
    package = source_root / "probe_daemon"
    if not (package / "__init__.py").is_file():
        raise BuildError(f"{package} is not the probe_daemon package: pass --source with "
                         "the probeforge checkout")
    entries = []
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(source_root)
        if any(_SKIPPED_NAMES.match(part) for part in relative.parts):
            continue
        if path.is_symlink():
            raise BuildError(f"{path} is a symlink; packages carry regular files only: "
                             "replace it by the file it points to")
        target = f"{LIB_DIR}/{relative.as_posix()}"
        if path.is_dir():
            entries.append(Entry(target, 0o755))
        elif path.is_file():
            entries.append(Entry(target, 0o644, path.read_bytes()))
    return entries


def configure(text: str, section: str, values: dict[str, str]) -> str:
    """The config text with `key = value` lines of one section replaced; every key must exist.

    A line edit rather than configparser, so the example's comments and order survive.
    """
    lines = text.splitlines(keepends=True)
    current = None
    missing = dict(values)
    for index, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            current = header.group(1).strip()
            continue
        key = re.match(r"^\s*([A-Za-z0-9_]+)\s*=", line)
        if current == section and key and key.group(1) in missing:
            lines[index] = f"{key.group(1)} = {missing.pop(key.group(1))}\n"
    if missing:
        raise BuildError(f"{PACKAGING_DIR}/probe.conf.example has no {', '.join(missing)} in "
                         f"[{section}]: put the key(s) back, the OpenWrt package sets them")
    return "".join(lines)


def conffiles(source_root: Path) -> tuple[str, ...]:
    text = _read(source_root, PACKAGING_DIR / "conffiles").decode()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def debian_changelog(version: str, maintainer: str, epoch: int) -> bytes:
    date = format_datetime(datetime.fromtimestamp(epoch, UTC))
    text = (f"{NAME} ({version}) unstable; urgency=medium\n\n"
            f"  * Built from the probeforge sources by pkgformats.\n\n"
            f" -- {maintainer}  {date}\n")
    # gzip -9n, as dh_compress does: no name, no timestamp.
    return gzip_bytes(text.encode())


def debian_copyright(epoch: int) -> bytes:
    # The year of the sources, not of the build: the same sources give the same file.
    year = datetime.fromtimestamp(epoch, UTC).year
    return (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        f"Upstream-Name: {NAME}\n"
        "Source: probeforge\n\n"
        "Files: *\n"
        f"Copyright: {year} probeforge developers\n"
        f"License: {LICENSE}\n"
        " On Debian systems, the full text of the Apache License, Version 2.0 is in\n"
        " /usr/share/common-licenses/Apache-2.0.\n"
    ).encode()


# Debian's upstream[-revision] without an epoch: the version is part of the file name, and
# opkg compares versions the same way.
_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+~]*(-[A-Za-z0-9.+~]+)?$")


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise BuildError(f"version {version!r} is not a package version: use digits first, "
                         "then letters, digits, '.', '+', '~', and at most one '-' before a "
                         "revision (e.g. 0.1.0 or 0.1.0-1)")
    return version


def build_tree(target: str, source_root: Path, version: str, epoch: int,
               maintainer: str = DEFAULT_MAINTAINER) -> PackageTree:
    if target not in TARGETS:
        raise BuildError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    check_version(version)
    config = _read(source_root, PACKAGING_DIR / "probe.conf.example").decode()
    if target == "openwrt":
        config = configure(config, "daemon", OPENWRT_CONFIG)
    entries = [
        Entry("/usr/bin/probe-daemon", 0o755, LAUNCHER),
        Entry(LIB_DIR, 0o755),
        *_daemon_entries(source_root),
        Entry(CONFIG_DIR, 0o755),
        # Holds the private key: only root may even list it (device contract).
        Entry(f"{CONFIG_DIR}/certs", 0o700),
        Entry(CONFIG_FILE, 0o644, config.encode()),
    ]
    if target == "debian":
        doc = f"/usr/share/doc/{NAME}"
        entries += [
            Entry(f"/lib/systemd/system/{NAME}.service", 0o644,
                  _read(source_root, PACKAGING_DIR / "probe-daemon.service")),
            # For Debian without systemd and for the busybox-init emulated MiniProbe,
            # which is assembled from this same .deb.
            Entry(f"/etc/init.d/{NAME}", 0o755, _read(source_root, PACKAGING_DIR / "busybox-init")),
            Entry(f"{doc}/copyright", 0o644, debian_copyright(epoch)),
            Entry(f"{doc}/changelog.gz", 0o644, debian_changelog(version, maintainer, epoch)),
            Entry(f"/usr/share/lintian/overrides/{NAME}", 0o644, LINTIAN_OVERRIDES),
        ]
    else:
        entries += [
            Entry(f"/etc/init.d/{NAME}", 0o755, _read(source_root, PACKAGING_DIR / "openwrt-init")),
            Entry(f"{CONFIG_DIR}/spool", 0o700),
            Entry(f"/lib/upgrade/keep.d/{NAME}", 0o644, OPENWRT_KEEP.encode()),
        ]
    listed = conffiles(source_root)
    paths = {entry.path for entry in entries if not entry.is_dir}
    unknown = [path for path in listed if path not in paths]
    if unknown:
        raise BuildError(f"{PACKAGING_DIR}/conffiles lists {', '.join(unknown)}, which the "
                         "package does not install: remove the line or add the file")
    return PackageTree(target, version, tuple(entries), listed, source_root)
