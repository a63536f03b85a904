# SPDX-License-Identifier: Apache-2.0
import sys

from rig.cli import main

sys.exit(main())
