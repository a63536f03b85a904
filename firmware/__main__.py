# SPDX-License-Identifier: Apache-2.0
"""``python -m firmware``: build a board's base, build a host's image, check an image.

The firmware role calls ``base`` once and ``image`` once per host with ``--json``, the host's
overlay description (``probeforge-overlay 1``) on stdin; operators use ``verify`` on an image
before flashing it by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from firmware import FirmwareError
from firmware.build import base_only, build_host_image
from firmware.image import verify_image
from firmware.overlay import write_overlay
from firmware.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = REPO / "images" / "openwrt" / "recipe.yml"
DEFAULT_CACHE = REPO / ".cache" / "firmware"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m firmware", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (("base", "build (or find in the cache) a board's shared base"),
                       ("image", "build one host's image into its output directory")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                         help=f"firmware recipe (default {DEFAULT_RECIPE})")
        sub.add_argument("--board", required=True, help="a board of the recipe")
        sub.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                         help=f"packages and bases (default {DEFAULT_CACHE})")
        sub.add_argument("--json", action="store_true",
                         help="print one JSON object (with 'changed') instead of a summary")
    image = commands.choices["image"]
    image.add_argument("--host", required=True, help="the inventory host")
    image.add_argument("--overlay", required=True, type=Path,
                       help="the host's overlay directory (written from --overlay-spec, "
                            "else used as it is)")
    image.add_argument("--overlay-spec", metavar="JSON",
                       help="write the overlay first from this overlay description "
                            "(probeforge-overlay 1, roles/firmware renders it; - for stdin)")
    image.add_argument("--base", metavar="KEY",
                       help="build on this cached base (the key `base --json` printed) "
                            "instead of resolving the board's base again")
    image.add_argument("--out", required=True, type=Path,
                       help="output directory, build/<inventory>/<host>")
    verify = commands.add_parser("verify", help="check an image: format, hashes, board")
    verify.add_argument("image", type=Path)
    verify.add_argument("--board", help="refuse an image for another board")
    verify.add_argument("--json", action="store_true",
                        help="print board, version, build and host as one JSON object")
    return parser


def _progress(json_output: bool) -> Callable[[str], None]:
    # Progress goes to stderr so that --json output stays one object on stdout.
    return lambda line: print(line, file=sys.stderr if json_output else sys.stdout, flush=True)


def _read_spec(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        return json.loads(text)
    except OSError as exc:
        raise FirmwareError(f"overlay description {source}: {exc.strerror}") from exc
    except ValueError as exc:
        raise FirmwareError(f"overlay description {source}: not JSON ({exc})") from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "verify":
            header = verify_image(args.image, board=args.board)
            if args.json:
                print(json.dumps({"board": header.board, "version": header.version,
                                  "build": header.build, "host": header.host}))
            else:
                print(f"{args.image}: ok: board {header.board}, version {header.version}, "
                      f"build {header.build}, host {header.host}")
            return 0
        recipe = load_recipe(args.recipe)
        progress = _progress(args.json)
        if args.command == "base":
            images, changed = base_only(recipe, args.board, args.cache.resolve(), progress)
            for omitted in images.base.omitted:
                print(f"warning: {omitted['component']} left out: {omitted['reason']}; "
                      f"{omitted['fix']}", file=sys.stderr)
            summary = {"changed": changed, "key": images.base.key,
                       "omitted": images.base.omitted}
        else:
            overlay_changed = False
            if args.overlay_spec is not None:
                overlay_changed = write_overlay(_read_spec(args.overlay_spec),
                                                args.overlay.resolve())
            built = build_host_image(recipe, args.board, args.host, args.overlay.resolve(),
                                     args.out.resolve(), cache=args.cache.resolve(),
                                     base_key=args.base, progress=progress)
            summary = {"changed": built.changed or overlay_changed,
                       "image": str(built.image), "build": built.build}
    except FirmwareError as exc:
        print(f"firmware: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in
                                                          summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
