# SPDX-License-Identifier: Apache-2.0
"""Reproducible Debian (.deb) and OpenWrt (.ipk) packages of the probe daemon, stdlib only.

``tree`` says which files go where with which modes, for both formats; ``deb`` and ``ipk``
only pack that tree the way dpkg-deb and OpenWrt's ipkg-build would, with every timestamp
at SOURCE_DATE_EPOCH so that the same sources give the same bytes.
"""

from pkgformats.errors import BuildError

__all__ = ["BuildError"]
