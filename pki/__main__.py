# SPDX-License-Identifier: Apache-2.0
import sys

from pki.cli import main

sys.exit(main())
