# SPDX-License-Identifier: Apache-2.0
"""The virtual appliance: Debian/Ubuntu root → roles through chroot → GPT disk → exports.

``recipe``: ``images/ubuntu-appliance/recipe.yml``, validated. ``rootfs``: the root tree with
mmdebstrap. ``sandbox``: the mount namespace every mount of a build lives in. ``provision``:
the roles through Ansible's chroot connection. ``generalise``: what makes the tree every
host's. ``disk``: hybrid GPT, grub for BIOS and UEFI. ``export``: qcow2, VMDK, OVF/OVA.
``seed``: a host's identity disk. ``build``: the whole, cached and atomic (docs/appliance.md).
"""


class ApplianceError(Exception):
    """An appliance build cannot go on; the message is one line naming the problem and the fix."""
