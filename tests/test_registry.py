"""segfungi.infra.registry.Registry, and the registries' promise: their names (settings
choices, --help) load no torch."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from segfungi.infra.errors import ConfigError
from segfungi.infra.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def entry_module(monkeypatch):
    """A module that counts its imports, to see when a lazy entry is resolved."""
    imports = []

    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name != "toy_registry_entries":
                return None
            import importlib.machinery

            return importlib.machinery.ModuleSpec(name, self)

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            imports.append(module.__name__)
            module.ENTRY = {"made": "on import"}

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    yield imports
    sys.modules.pop("toy_registry_entries", None)


def test_entries_keep_registration_order_and_lazy_ones_import_on_first_get(entry_module):
    things = Registry("thing")
    eager = things.register("eager", types.SimpleNamespace(value=1))
    things.register_lazy("lazy", "toy_registry_entries:ENTRY")
    assert things.names() == ("eager", "lazy") and "lazy" in things and "other" not in things
    assert entry_module == []  # naming it imported nothing
    assert things.get("eager") is eager
    assert things.get("lazy") == {"made": "on import"} and entry_module == ["toy_registry_entries"]
    assert things.get("lazy") is things.get("lazy") and entry_module == ["toy_registry_entries"]


def test_bad_registrations_and_unknown_names_are_refused_naming_the_registered_ones():
    things = Registry("thing", reserved=("auto",))
    things.register("a", 1)
    with pytest.raises(ValueError, match="a thing named 'a' is already registered"):
        things.register("a", 2)
    with pytest.raises(ValueError, match="a thing named 'a' is already registered"):
        things.register_lazy("a", "x:y")
    with pytest.raises(ValueError, match="'auto' is reserved"):
        things.register("auto", 3)
    with pytest.raises(ValueError, match="non-empty name"):
        things.register("", 3)
    with pytest.raises(ValueError, match="module:attribute"):
        things.register_lazy("b", "no_attribute")
    things.register("b", 2)
    with pytest.raises(ConfigError, match=r"unknown thing 'c' \(choose from a, b\)"):
        things.get("c")
    things.unregister("a")
    things.unregister("never-registered")  # no error: cleanup code need not know
    assert things.names() == ("b",)


def test_the_registries_settings_and_cli_parsers_load_no_torch():
    # The schema's choices, the CLI options and the classify subcommands read the
    # registries; none of that may import torch (segfungi --help stays fast).
    script = (
        "import sys, argparse\n"
        "from segfungi import settings_schema\n"
        "from segfungi.commands import _options, classify\n"
        "from segfungi.config import load_config\n"
        "from segfungi.classify.settings import load_settings, defaults\n"
        "from segfungi.data import dataset_names\n"
        "from segfungi.gradients import projection_names\n"
        "from segfungi.index import index_kinds\n"
        "from segfungi.classify.modalities import modality_names\n"
        "settings_schema.checks()\n"
        "load_config(overrides=['fungi.projection=structured', 'index.kind=exact', 'data.dataset=ade20k'])\n"
        "[defaults(m) for m in modality_names()]\n"
        "parser = argparse.ArgumentParser()\n"
        "_options.add_config_options(parser)\n"
        "classify.register(parser.add_subparsers())\n"
        "print(projection_names(), index_kinds(), dataset_names(), modality_names())\n"
        "print(sorted(m for m in ('torch', 'numpy', 'timm') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0, done.stderr
    names, heavy = done.stdout.splitlines()
    assert names == ("('dense', 'structured') ('exact', 'scann', 'device-exact') ('voc', 'ade20k', 'cityscapes', 'coco-stuff', 'folder') "
                     "('image', 'text', 'audio')")
    assert heavy == "[]"
