# SPDX-License-Identifier: Apache-2.0
import sys

from probe_daemon.cli import main

sys.exit(main())
