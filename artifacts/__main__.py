# SPDX-License-Identifier: Apache-2.0
import sys

from artifacts.cli import main

sys.exit(main())
