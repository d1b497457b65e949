"""The `segfungi` command line: one sub-command per module in `segfungi.commands`.

Exit status: 0 success, 2 an error the user can fix (one line, no traceback), 130
interrupted (Ctrl-C); a command may define others (`bank verify` exits 1 on problems).
Commands that load models first check that torch and torchvision work together
(`segfungi.infra.install_check`); `bank` and `demo-data` set `loads_models=False` and, like
`--help`, import no torch at all.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from segfungi import __version__, commands
from segfungi.infra import distributed, install_check, logging_setup
from segfungi.infra.errors import SegfungiError

VERBOSE_HELP = f"show third-party start-up logs (ScaNN/absl) too; same as {logging_setup.ENV_VAR}=1"


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: it (and any parser nested in it) also takes --verbose.

    SUPPRESS: a sub-parser's default would overwrite the value `segfungi --verbose CMD`
    set on the main parser."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segfungi",
        description="In-context semantic segmentation with FUNGI features of frozen ViTs.",
    )
    parser.add_argument("--version", action="version", version=f"segfungi {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared helpers, not commands
        module = importlib.import_module(f"segfungi.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as typed, for messages such as the resume command
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    for stream in (sys.stdout, sys.stderr):
        # File names that are not UTF-8 (bytes names on Linux) are printed escaped
        # instead of ending the command with a UnicodeEncodeError.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        if getattr(args, "loads_models", True):  # bank info/verify and demo-data need no torch
            install_check.check_torch_pair()
        distributed.init_from_env()  # a no-op unless launched by torchrun
        with logging_setup.verbose_while(bool(getattr(args, "verbose", False))):
            return int(args.func(args) or 0)
    except SegfungiError as err:
        # Errors a user can fix get one clear line, not a traceback.
        print(f"segfungi {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is a request, not a crash: no traceback. (build-bank says itself what it kept.)
        print(f"segfungi {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
