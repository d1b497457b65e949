"""Whether the user asked for verbose output (`segfungi --verbose …` or `SEGFUNGI_VERBOSE=1`).

The CLI calls `set_verbose(args.verbose)` before it runs a command; code that silences
noisy third-party start-up logs (ScaNN's absl lines) asks `verbose()` first. The flag is
kept in the environment variable `SEGFUNGI_VERBOSE`, so worker processes (torchrun,
data-loader workers) see the same answer as the process that parsed the command line.
"""

from __future__ import annotations

import os

ENV_VAR = "SEGFUNGI_VERBOSE"


def set_verbose(on: bool) -> None:
    """Turn verbose output on; `False` leaves an explicit SEGFUNGI_VERBOSE=1 in place."""
    if on:
        os.environ[ENV_VAR] = "1"


def verbose() -> bool:
    """True when --verbose was given or SEGFUNGI_VERBOSE is set to anything but '', '0'."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in ("", "0", "false", "no")
