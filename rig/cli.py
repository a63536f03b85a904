# SPDX-License-Identifier: Apache-2.0
"""``probeforge-rig``: the whole emulated testbed on one machine.

``up`` builds what is missing (``playbooks/rig.yml``: SSH key, PKI, firmware), starts the
supervisor and every emulated MiniProbe of the inventory, waits until each has registered,
runs one measurement through the supervisor with the RI client and prints its result. Then it
tears everything down — or, with ``--hold``, keeps the rig running until Ctrl-C or
``probeforge-rig down``. ``status`` shows what runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from firmware import FirmwareError
from rig import RigError
from rig.inventory import load_plan
from rig.mplane_ri import RIError
from rig.testbed import MEASUREMENT, Testbed

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = REPO / "inventory" / "virtual-rig"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="probeforge-rig", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (("up", "build what is missing, start, register, measure"),
                       ("down", "stop a rig started with `up --hold`"),
                       ("status", "what the rig runs now")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--inventory", "-i", type=Path, default=DEFAULT_INVENTORY,
                         help=f"inventory directory (default {DEFAULT_INVENTORY})")
    up = commands.choices["up"]
    up.add_argument("--hold", action="store_true",
                    help="keep the rig running after the measurement, until Ctrl-C or `down`")
    up.add_argument("--skip-build", action="store_true",
                    help="do not run playbooks/rig.yml (the firmware must already be built)")
    up.add_argument("--timeout", type=float, default=300.0,
                    help="seconds every probe gets to register (default 300)")
    return parser


def _say(line: str) -> None:
    print(f"rig: {line}", flush=True)


def _ansible(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def build(inventory: Path) -> None:
    _say(f"building what is missing: ansible-playbook -i {inventory} playbooks/rig.yml")
    done = subprocess.run([_ansible("ansible-playbook"), "-i", str(inventory),
                           str(REPO / "playbooks" / "rig.yml")], cwd=REPO)
    if done.returncode != 0:
        raise RigError(f"playbooks/rig.yml failed (exit {done.returncode}); its output above "
                       "names the host and the task")


def _raise_interrupt(signum: int, _frame: object) -> None:
    # SIGTERM (probeforge-rig down) ends the rig like Ctrl-C: through the same teardown.
    raise KeyboardInterrupt


def up(args: argparse.Namespace) -> int:
    inventory = args.inventory.resolve()
    plan = load_plan(inventory, _ansible("ansible-inventory"))
    testbed = Testbed(plan, repo=REPO, progress=_say, boot_timeout=args.timeout)
    testbed.state.mkdir(parents=True, exist_ok=True)
    stale = testbed.clean_stale()
    if stale:
        _say(f"stopped processes a previous rig left behind: pids {', '.join(stale)}")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    try:
        if not args.skip_build:
            build(inventory)
        testbed.start_dns()
        testbed.start_supervisor()
        testbed.start_boards()
        registered = testbed.wait_registered()
        first = registered[plan.probes[0].name]
        _say(f"{first.probe}: running {MEASUREMENT} to the host through the supervisor "
             "with the RI client")
        row = testbed.measure(first)
        _say(f"result from {first.probe}: " + json.dumps(row, sort_keys=True))
        _say(f"rig up and measured in {time.monotonic() - started:.0f} s")
        if args.hold:
            _say("holding: Ctrl-C here or `probeforge-rig down` stops every board and the "
                 "supervisor")
            while True:
                for name, board in testbed.boards.items():
                    if board.error:
                        raise RigError(f"{name}: {board.error}")
                time.sleep(2)
    except KeyboardInterrupt:
        _say("interrupted: tearing down")
    finally:
        testbed.stop()
        _say("down: every board and the supervisor stopped")
    return 0


def _record(inventory: Path) -> tuple[Path, dict[str, object]]:
    path = inventory.resolve() / ".state" / "rig" / "rig.json"
    if not path.is_file():
        return path, {}
    return path, json.loads(path.read_text())


def down(args: argparse.Namespace) -> int:
    path, record = _record(args.inventory)
    pid = record.get("rig")
    if not isinstance(pid, int):
        _say(f"no rig is running for {args.inventory}")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _say(f"the rig (pid {pid}) is gone; the next `up` stops anything it left")
        return 0
    deadline = time.monotonic() + 60
    while path.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    if path.is_file():
        raise RigError(f"the rig (pid {pid}) did not stop within 60 s: press Ctrl-C in its "
                       "terminal, or kill that pid; the next `up` cleans up after it")
    _say(f"rig (pid {pid}) stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    _, record = _record(args.inventory)
    if not record:
        _say(f"no rig is running for {args.inventory}")
        return 0
    print(json.dumps(record, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"up": up, "down": down, "status": status}[args.command](args)
    except (FirmwareError, RIError) as exc:  # RigError, the firmware's and the RI's errors
        print(f"probeforge-rig: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
