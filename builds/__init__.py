# SPDX-License-Identifier: Apache-2.0
"""Builds of third-party software on the controller (cross-compiled for the MiniProbes).

``cross``: a foreign-architecture package list and sysroot from the Debian archive, and an
autotools cross build into a staged install tree. ``tstat_cross``: Tstat for mipsel, with a
command line the ``tstat`` role calls.
"""


class BuildError(Exception):
    """A build step failed; the message says what to do about it."""
