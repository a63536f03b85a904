# SPDX-License-Identifier: Apache-2.0
"""MiniProbe firmware: Debian packages → base tree → squashfs/initramfs → image (docs/firmware.md).

``recipe``: the data of ``images/openwrt/recipe.yml``, validated. ``rootfs``: the shared base
root filesystem of a board, built once per set of inputs into a cache. ``squashfs`` and
``cpio``: the reproducible containers the image parts are made of.
"""


class FirmwareError(Exception):
    """A firmware build cannot go on; the message is one line naming the problem and the fix."""
