# SPDX-License-Identifier: Apache-2.0
"""The probe daemon: the mPlane component on every MiniProbe and appliance.

Standard library only: it has to fit on a 16 MB-flash MIPS router.
"""

__version__ = "0.1.0"
