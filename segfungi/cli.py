"""The `segfungi` command line: one sub-command per module in `segfungi.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from segfungi import __version__, commands, distributed
from segfungi.errors import SegfungiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segfungi",
        description="In-context semantic segmentation with FUNGI features of frozen ViTs.",
    )
    parser.add_argument("--version", action="version", version=f"segfungi {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared helpers, not commands
        module = importlib.import_module(f"segfungi.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    for stream in (sys.stdout, sys.stderr):
        # File names that are not UTF-8 (bytes names on Linux) are printed escaped
        # instead of ending the command with a UnicodeEncodeError.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    distributed.init_from_env()  # a no-op unless launched by torchrun
    try:
        return int(args.func(args) or 0)
    except SegfungiError as err:
        # Errors a user can fix get one clear line, not a traceback.
        print(f"segfungi {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
