"""The import layering holds, and docs/architecture.md shows the contracts CI checks.

`.importlinter` lists the layers (a module imports only downwards; modules of one layer do
not import each other; every top-level module placed) and forbids import cycles inside every
package. This test runs those contracts, and compares the doc's "Layers" table with them, so
the doc and the code cannot drift apart."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def contract_layers() -> list[str]:
    """The layers of every layers contract, top first: the package root's as they are, each
    package's with its name in front (`experiments.fewshot | experiments.sweep`)."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    out = []
    for section in config.sections():
        if config[section].get("type") != "layers":
            continue
        container = config[section]["containers"].strip()
        prefix = "" if container == "segfungi" else container.removeprefix("segfungi.") + "."
        for line in config[section]["layers"].strip().splitlines():
            out.append(" | ".join(prefix + name.strip() for name in line.split("|")))
    return out


def documented_layers() -> list[str]:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc[doc.index("## Layers"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    block = re.findall(r"^    (\S.*)$", section, flags=re.M)
    return [" ".join(line.split()) for line in block]


def test_the_doc_shows_the_contracts_layers():
    assert documented_layers() == contract_layers()


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter")
    # The checkout's own package (PYTHONPATH), whatever copy of segfungi is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--no-cache"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"Contracts: \d+ kept, 0 broken\.", done.stdout), done.stdout[-2000:]
