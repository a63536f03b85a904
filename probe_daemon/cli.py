# SPDX-License-Identifier: Apache-2.0
"""probe-daemon: the mPlane measurement component of a MiniProbe or appliance."""

import argparse
import logging
import signal
import sys
from pathlib import Path

from probe_daemon import __version__, logs
from probe_daemon.component import Component
from probe_daemon.registry import declared_elements, registry_json
from probe_daemon.settings import DEFAULT_CONFIG, SETTINGS, ConfigError, add_arguments, load

log = logging.getLogger("probe_daemon")

HANDLED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe-daemon", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, type=Path,
                        help=f"configuration file (default {DEFAULT_CONFIG})")
    parser.add_argument("--check", action="store_true",
                        help="validate configuration and credentials, then exit")
    parser.add_argument("--print-registry", action="store_true",
                        help="print the mPlane registry of this daemon's elements and exit")
    parser.add_argument("--version", action="version", version=__version__)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_registry:
        sys.stdout.write(registry_json(declared_elements()))
        return 0
    overrides = {s.name: getattr(args, s.name) for s in SETTINGS}
    try:
        config = load(args.config, overrides)
    except ConfigError as exc:
        print(f"probe-daemon: error: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_target, config.log_level)
    if args.check:
        # Only here: check needs tempfile, whose shutil loads bz2 and lzma (0.4 MB on a
        # MiniProbe) that the running daemon never uses.
        from probe_daemon.check import report

        return report(config)
    # Signals are taken synchronously with sigwait: no handler can run while a lock is held,
    # nothing polls, and a signal that comes during start-up waits until we are ready. The
    # mask is set before any thread starts, so every thread inherits it.
    for signum in HANDLED_SIGNALS:
        # Started under nohup (or by anything else that ignores them), they would be lost.
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        component = Component(config)
    except (ConfigError, OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    component.start()
    log.info("probe-daemon %s started: %d capabilities for %s", __version__,
             len(component.catalog.offers), config.supervisor_url)
    while signal.sigwait(HANDLED_SIGNALS) == signal.SIGHUP:
        try:
            component.reload(load(args.config, overrides))
        except (ValueError, OSError, ImportError) as exc:
            # ConfigError, a measurement's option error, unreadable TLS files ...: none
            # may take the running daemon down.
            log.error("reload refused, keeping the running configuration: %s", exc)
    log.info("stopping: interrupting measurements and flushing results")
    component.stop()
    log.info("stopped")
    return 0
