# SPDX-License-Identifier: Apache-2.0
"""The emulated MiniProbe on the host: its flash file and the launcher that boots it.

``flash``: the flash file (``probeforge-flash 1`` of docs/firmware.md), its boot environment
and the factory programmer that puts a first image on it. ``board``: the bootloader and
QEMU, one emulated board per :class:`rig.board.EmulatedBoard`.
"""

from firmware import FirmwareError


class RigError(FirmwareError):
    """The rig cannot go on; the message is one line naming the problem and the fix."""
