"""Names a package exports but imports only when first used (PEP 562 module ``__getattr__``).

A package declares ``{public name: module that defines it}`` and calls::

    __getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)

so ``import segfungi`` (or ``segfungi.bank``) stays cheap: torch and timm load with the
first name that needs them. A name equal to its own submodule (``segfungi.bank``)
resolves to that module.
"""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, table: dict[str, str]):
    """(``__getattr__``, ``__dir__``) for `package`; `table` maps names to module paths,
    absolute or relative to the package (``"._build"``)."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        where = importlib.import_module(module, package)
        value = where if where.__name__ == f"{package}.{name}" else getattr(where, name)
        vars(sys.modules[package])[name] = value  # the next look-up skips __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
