"""The wheel carries what a non-editable install needs: configs/, the subset lists and
the published numbers."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from segfungi.config import CONFIG_DIR, config_dir

REPO = Path(__file__).resolve().parent.parent


def test_every_package_is_listed():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "segfungi").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"segfungi.configs"}
    assert setuptools["package-dir"] == {"segfungi.configs": "configs"}


def test_a_checkout_reads_its_own_configs():
    assert config_dir() == CONFIG_DIR == REPO / "configs"


def can_build_wheels() -> bool:
    # setuptools >= 70.1 builds wheels itself; older ones need the wheel package.
    return importlib.util.find_spec("wheel") is not None or importlib.util.find_spec(
        "setuptools.command.bdist_wheel") is not None


@pytest.mark.skipif(not can_build_wheels(), reason="needs setuptools >= 70.1 or the wheel package")
def test_wheel_ships_configs_subset_lists_and_published_numbers(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("segfungi", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("segfungi-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (REPO / "configs").glob("*.yaml"):
        assert f"segfungi/configs/{config.name}" in names
    for folder in ("subsets", "published", "demo_subsets"):
        shipped = REPO / "segfungi" / "data" / folder
        for path in shipped.rglob("*"):
            if path.is_file():
                assert f"segfungi/data/{folder}/{path.relative_to(shipped).as_posix()}" in names
    assert not any(n.startswith("configs/") for n in names)  # only inside the package
