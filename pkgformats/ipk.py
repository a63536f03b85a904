# SPDX-License-Identifier: Apache-2.0
"""An OpenWrt 24.10 package (.ipk, for opkg), as OpenWrt's scripts/ipkg-build writes it.

Not an ar archive like a .deb: ipkg-build packs a gzip'd GNU tar holding ./debian-binary,
./data.tar.gz and ./control.tar.gz, in that order (named on its command line, so not
sorted), with --numeric-owner (uid/gid 0, empty owner names), --sort=name inside the two
inner tars, every mtime at SOURCE_DATE_EPOCH and `gzip -n`. Installed-Size is the size of
the uncompressed data tar in bytes (ipkg-build: `zcat data.tar.gz | wc -c`), not KiB.

The control fields and the postinst/prerm follow include/package-pack.mk: the scripts only
call default_postinst/default_prerm from /lib/functions.sh, which enable and start (stop and
disable) every /etc/init.d script the package installs, and source <package>.postinst-pkg
or <package>.prerm-pkg for anything package-specific.
"""

from pathlib import Path

from pkgformats import archive, tree
from pkgformats.archive import Entry
from pkgformats.openwrt import python_depends
from pkgformats.tree import NAME, PackageTree

FEED = "probeforge"
SECTION = "net"

# include/package-pack.mk's default scripts, byte for byte.
POSTINST = """#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_postinst $0 $@
"""
PRERM = """#!/bin/sh
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_prerm $0 $@
"""


def prerm_pkg(package: PackageTree) -> str:
    """Sourced by default_prerm: removes the byte code Python wrote beside the modules.

    It is in no opkg file list and would keep opkg from removing the directories. The
    directories are listed rather than found, as busybox find may lack -prune or -exec +.
    """
    caches = " ".join(f'"${{IPKG_INSTROOT}}{entry.path}/__pycache__"'
                      for entry in archive.with_parents(package.entries)
                      if entry.is_dir and entry.path.startswith(f"{tree.LIB_DIR}/"))
    return ("#!/bin/sh\n"
            "# Byte code written at run time: in no file list, so opkg would leave it.\n"
            f"rm -rf {caches}\n")


def control_text(package: PackageTree, maintainer: str, installed_size: int,
                 epoch: int) -> str:
    description = "\n".join(f" {line}" if line.strip() else " ." for line in
                            tree.DESCRIPTION.splitlines())
    fields = [
        ("Package", NAME),
        ("Version", package.version),
        ("Depends", ", ".join(python_depends(package.entries))),
        ("Source", f"feeds/{FEED}/{NAME}"),
        ("SourceName", NAME),
        ("License", tree.LICENSE),
        ("Section", SECTION),
        ("SourceDateEpoch", str(epoch)),
        ("Maintainer", maintainer),
        ("Architecture", "all"),
        ("Installed-Size", str(installed_size)),
        ("Description", f"{tree.SUMMARY}\n{description}"),
    ]
    return "".join(f"{name}: {value}\n" for name, value in fields)


def build(package: PackageTree, out_dir: Path, epoch: int,
          maintainer: str = tree.DEFAULT_MAINTAINER) -> Path:
    """Write <out_dir>/probe-daemon_<version>_all.ipk and return its path."""
    data_tar = archive.tar_bytes(package.entries, epoch)
    control_entries = [
        Entry("/control", 0o644,
              control_text(package, maintainer, len(data_tar), epoch).encode()),
        Entry("/conffiles", 0o644, "".join(f"{c}\n" for c in sorted(package.conffiles)).encode()),
        Entry("/postinst", 0o755, POSTINST.encode()),
        Entry("/prerm", 0o755, PRERM.encode()),
        Entry("/prerm-pkg", 0o755, prerm_pkg(package).encode()),
    ]
    control_tar = archive.gzip_bytes(archive.tar_bytes(control_entries, epoch))
    outer = [
        Entry("/debian-binary", 0o644, b"2.0\n"),
        Entry("/data.tar.gz", 0o644, archive.gzip_bytes(data_tar)),
        Entry("/control.tar.gz", 0o644, control_tar),
    ]
    ipk = archive.gzip_bytes(archive.tar_bytes(outer, epoch, as_listed=True))
    return archive.write_atomically(out_dir / f"{NAME}_{package.version}_all.ipk", ipk)
