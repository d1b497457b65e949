"""Whether the user asked for verbose output (`segfungi --verbose …` or `SEGFUNGI_VERBOSE=1`).

The CLI runs each command inside `verbose_while(args.verbose)`; code that silences
noisy third-party start-up logs (ScaNN's absl lines) asks `verbose()` first. The flag is
kept in the environment variable `SEGFUNGI_VERBOSE`, so worker processes (torchrun,
data-loader workers) see the same answer as the process that parsed the command line.
"""

from __future__ import annotations

import contextlib
import os

ENV_VAR = "SEGFUNGI_VERBOSE"


def set_verbose(on: bool) -> None:
    """Turn verbose output on; `False` leaves an explicit SEGFUNGI_VERBOSE=1 in place."""
    if on:
        os.environ[ENV_VAR] = "1"


@contextlib.contextmanager
def verbose_while(on: bool):
    """Verbose for the block only (one CLI command called from Python, e.g. a test or a
    notebook), then the environment as it was."""
    before = os.environ.get(ENV_VAR)
    set_verbose(on)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def verbose() -> bool:
    """True when --verbose was given or SEGFUNGI_VERBOSE is set to anything but '', '0'."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in ("", "0", "false", "no")
