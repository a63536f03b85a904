# SPDX-License-Identifier: Apache-2.0
"""A Debian binary package (Architecture: all), written without dpkg-deb.

Layout as dpkg-deb 1.21 writes it: an ar archive with the members debian-binary ("2.0\\n"),
control.tar.xz and data.tar.xz in that order. The maintainer scripts are the ones debhelper
13 (bookworm) generates for a package with a systemd unit, a sysv init script and private
Python modules (dh_installsystemd, dh_installinit, dh_python3), with each helper call
guarded so that the package still installs where a helper is missing.
"""

import hashlib
from pathlib import Path

from pkgformats import archive, tree
from pkgformats.archive import Entry
from pkgformats.tree import NAME, PackageTree

DEPENDS = "python3 (>= 3.11)"
# invoke-rc.d --skip-systemd-native, as debhelper 13 declares it.
PRE_DEPENDS = "init-system-helpers (>= 1.54~)"
SECTION = "net"
UNIT = f"{NAME}.service"
INIT = f"/etc/init.d/{NAME}"

_HEADER = """#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# {name} of {package}: debhelper 13's generated snippets, each helper guarded.
set -e
"""

_CONFIGURING = ('[ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || '
                '[ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]')

PREINST = _HEADER.format(name="preinst", package=NAME) + f"""
# dh_installinit: postrm took the x bit away on remove; a reinstall keeps the old file.
if [ "$1" = "install" ] && [ -n "$2" ] && [ -e "{INIT}" ]; then
	chmod +x "{INIT}" >/dev/null || true
fi
"""

POSTINST = _HEADER.format(name="postinst", package=NAME) + f"""
if {_CONFIGURING}; then
	# dh_python3 (py3compile): byte code for the python3 installed, not the build host's.
	if [ -z "${{DPKG_ROOT:-}}" ] && command -v py3compile >/dev/null 2>&1; then
		py3compile -p {NAME} {tree.LIB_DIR}
	fi

	# dh_installsystemd: enable on first installation, refresh the symlinks on upgrades.
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper unmask '{UNIT}' >/dev/null || true
		if deb-systemd-helper --quiet was-enabled '{UNIT}'; then
			deb-systemd-helper enable '{UNIT}' >/dev/null || true
		else
			deb-systemd-helper update-state '{UNIT}' >/dev/null || true
		fi
	fi

	# dh_installinit: sysv links; start (restart on upgrade) where systemd does not run.
	# Not fatal, unlike debhelper's default: a probe whose credentials are not deployed yet
	# must still install (systemd's start below is not fatal either).
	if [ -z "${{DPKG_ROOT:-}}" ] && [ -x "{INIT}" ] && command -v update-rc.d >/dev/null 2>&1; then
		update-rc.d {NAME} defaults >/dev/null
		if [ -n "$2" ]; then
			_dh_action=restart
		else
			_dh_action=start
		fi
		invoke-rc.d --skip-systemd-native {NAME} $_dh_action || true
	fi

	# dh_installsystemd: start (restart on upgrade) under a running systemd.
	if [ -d /run/systemd/system ] && command -v deb-systemd-invoke >/dev/null 2>&1; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			_dh_action=restart
		else
			_dh_action=start
		fi
		deb-systemd-invoke $_dh_action '{UNIT}' >/dev/null || true
	fi
fi
"""

PRERM = _HEADER.format(name="prerm", package=NAME) + f"""
# dh_installsystemd: stop on removal; an upgrade restarts it from the new postinst.
if [ -z "${{DPKG_ROOT:-}}" ] && [ "$1" = remove ] && [ -d /run/systemd/system ] \\
	&& command -v deb-systemd-invoke >/dev/null 2>&1; then
	deb-systemd-invoke stop '{UNIT}' >/dev/null || true
fi

# dh_installinit: the same without systemd.
if [ -z "${{DPKG_ROOT:-}}" ] && [ "$1" = remove ] && [ -x "{INIT}" ] \\
	&& command -v invoke-rc.d >/dev/null 2>&1; then
	invoke-rc.d --skip-systemd-native {NAME} stop || true
fi

# dh_python3 (py3clean): the byte code Python wrote beside the modules is in no file list,
# and would keep dpkg from removing the directories.
if [ -d {tree.LIB_DIR} ]; then
	find {tree.LIB_DIR} -type d -name __pycache__ -prune -exec rm -rf {{}} +
fi
"""

POSTRM = _HEADER.format(name="postrm", package=NAME) + f"""
# dh_installinit: a removed, not purged, package leaves its init script inert.
if [ "$1" = "remove" ] && [ -x "{INIT}" ]; then
	chmod -x "{INIT}" >/dev/null || true
fi
if [ -z "${{DPKG_ROOT:-}}" ] && [ "$1" = "purge" ] && command -v update-rc.d >/dev/null 2>&1; then
	update-rc.d {NAME} remove >/dev/null
fi

# dh_installsystemd.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "purge" ] && [ -x "/usr/bin/deb-systemd-helper" ]; then
	deb-systemd-helper purge '{UNIT}' >/dev/null || true
fi

# Purge also removes what systemd's StateDirectory= made: the spool of undelivered results
# and the daemon's state. The credentials in /etc/mplane/certs are not the package's: kept.
if [ "$1" = "purge" ]; then
	rm -rf /var/lib/{NAME}
fi
"""

SCRIPTS = {"preinst": PREINST, "postinst": POSTINST, "prerm": PRERM, "postrm": POSTRM}


def conffiles(package: PackageTree) -> list[str]:
    """The listed conffiles plus every file under /etc, as dh_installdeb marks them."""
    etc = {entry.path for entry in package.entries
           if not entry.is_dir and entry.path.startswith("/etc/")}
    return sorted(etc | set(package.conffiles))


def installed_size_kib(entries: list[Entry]) -> int:
    """dpkg-gencontrol's estimate: each file rounded up to KiB, 1 KiB for anything else."""
    return sum((len(e.data) + 1023) // 1024 if e.data is not None else 1 for e in entries)


def _description() -> str:
    body = "\n".join(f" {line}" if line.strip() else " ." for line in
                     tree.DESCRIPTION.splitlines())
    return f"{tree.SUMMARY}\n{body}"


def control_text(package: PackageTree, maintainer: str, data_entries: list[Entry]) -> str:
    fields = [
        ("Package", NAME),
        ("Version", package.version),
        ("Architecture", "all"),
        ("Maintainer", maintainer),
        ("Installed-Size", str(installed_size_kib(data_entries))),
        ("Pre-Depends", PRE_DEPENDS),
        ("Depends", DEPENDS),
        ("Section", SECTION),
        ("Priority", "optional"),
        ("Description", _description()),
    ]
    return "".join(f"{name}: {value}\n" for name, value in fields)


def build(package: PackageTree, out_dir: Path, epoch: int,
          maintainer: str = tree.DEFAULT_MAINTAINER) -> Path:
    """Write <out_dir>/probe-daemon_<version>_all.deb and return its path."""
    data_entries = archive.with_parents(package.entries)
    confs = conffiles(package)
    md5sums = "".join(f"{hashlib.md5(e.data).hexdigest()}  {e.path.lstrip('/')}\n"
                      for e in data_entries if e.data is not None and e.path not in confs)
    control_entries = [
        Entry("/control", 0o644, control_text(package, maintainer, data_entries).encode()),
        Entry("/md5sums", 0o644, md5sums.encode()),
        Entry("/conffiles", 0o644, "".join(f"{c}\n" for c in confs).encode()),
        *(Entry(f"/{name}", 0o755, text.encode()) for name, text in SCRIPTS.items()),
    ]
    control_tar = archive.xz_bytes(archive.tar_bytes(control_entries, epoch, "root"))
    data_tar = archive.xz_bytes(archive.tar_bytes(data_entries, epoch, "root"))
    deb = archive.ar_bytes([("debian-binary", b"2.0\n"), ("control.tar.xz", control_tar),
                            ("data.tar.xz", data_tar)], epoch)
    return archive.write_atomically(out_dir / f"{NAME}_{package.version}_all.deb", deb)

