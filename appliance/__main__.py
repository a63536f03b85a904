# SPDX-License-Identifier: Apache-2.0
"""``python -m appliance`` (``probeforge-appliance``): build the generic appliance, a host's
seed disk (and, with ``--image``, the host's own images).

playbooks/appliance.yml calls ``image`` once and ``seed`` per host with ``--json``. Every
build runs in its own mount and PID namespace (appliance/sandbox.py): it needs root.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from appliance import ApplianceError
from appliance.build import DEFAULT_CACHE, build_image
from appliance.recipe import DEFAULT_RECIPE, load_recipe
from appliance.sandbox import in_sandbox, reexec_in_sandbox


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="probeforge-appliance", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    image = commands.add_parser("image", help="build the generic images (qcow2, VMDK, OVA)")
    seed = commands.add_parser("seed", help="build a host's seed disk (and its own images)")
    for sub in (image, seed):
        sub.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                         help=f"appliance recipe (default {DEFAULT_RECIPE})")
        sub.add_argument("--distribution", help="a distribution of the recipe (debian, ubuntu)")
        sub.add_argument("--suite", help="override the distribution's suite")
        sub.add_argument("--mirror", help="override the distribution's mirror URL")
        sub.add_argument("--keyring", type=Path, help="the archive's keyring file")
        sub.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                         help=f".debs and provisioned trees (default {DEFAULT_CACHE})")
        sub.add_argument("--json", action="store_true",
                         help="print one JSON object (with 'changed') instead of a summary")
    image.add_argument("--out", type=Path, help="output directory (default "
                                                "build/appliance/<name>)")
    seed.add_argument("--inventory", required=True, type=Path, help="the Ansible inventory")
    seed.add_argument("--host", required=True, help="the inventory host")
    seed.add_argument("--out", required=True, type=Path,
                      help="output directory, build/<inventory>/<host>")
    seed.add_argument("--generic", type=Path,
                      help="the generic images' directory the seed is for (default: build or "
                           "find them now)")
    seed.add_argument("--image", action="store_true",
                      help="also the host's own images (the generic one with its identity)")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(arguments)
    json_output = args.json

    def progress(line: str) -> None:
        # Progress on stderr when --json keeps stdout for the one result object.
        print(line, file=sys.stderr if json_output else sys.stdout, flush=True)

    try:
        if not in_sandbox():
            return reexec_in_sandbox(arguments)
        recipe = load_recipe(args.recipe, distribution=args.distribution, suite=args.suite,
                             mirror=args.mirror, keyring=args.keyring)
        if args.command == "image":
            out, changed = build_image(recipe, cache=args.cache, out=args.out,
                                       progress=progress)
            summary = {"changed": changed, "directory": str(out),
                       "manifest": str(out / "manifest.json")}
        else:
            from appliance.seed import build_seed

            built = build_seed(recipe, inventory=args.inventory.resolve(), host=args.host,
                               out=args.out.resolve(), cache=args.cache, image=args.image,
                               generic=args.generic.resolve() if args.generic else None,
                               progress=progress)
            summary = {"changed": built.changed, "directory": str(built.directory),
                       "seed": str(built.seed)}
    except ApplianceError as exc:
        print(f"probeforge-appliance: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else
          "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
