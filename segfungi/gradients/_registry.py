"""The registry of projections: a new projection is one :func:`register_projection` call.

A registered projection is a name (the ``fungi.projection`` setting, and the ``kind``
field of the projection's identity), a ``factory(in_features, out_features, dim, seed,
bias=…, compute_dtype=…, **options)`` and ``options_from_settings(fungi)``, which reads
the projection's own options from the ``fungi`` settings section (e.g. ``terms`` from
``fungi.structured_terms``). :func:`make_projection`, :func:`projection_options` and the
settings schema's ``fungi.projection`` choices read this registry.

This module imports no torch: the built-in projections (``dense``, ``structured``) are
registered by reference and their modules load with the first projection built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from segfungi.registry import Registry


@dataclass(frozen=True)
class RegisteredProjection:
    """What a projection's name stands for (see the module docstring)."""

    name: str
    factory: Callable[..., Any]
    options_from_settings: Callable[[dict], dict]


PROJECTIONS: Registry[RegisteredProjection] = Registry("projection")
PROJECTIONS.register_lazy("dense", "segfungi.gradients._dense:DENSE")
PROJECTIONS.register_lazy("structured", "segfungi.gradients._structured:STRUCTURED")


def register_projection(
    name: str, factory: Callable[..., Any], *, options_from_settings: Callable[[dict], dict] | None = None
) -> RegisteredProjection:
    """Makes ``name`` usable as ``fungi.projection`` and ``make_projection(name, …)``."""
    return PROJECTIONS.register(name, RegisteredProjection(name, factory, options_from_settings or (lambda fungi: {})))


def unregister_projection(name: str) -> None:
    """Removes a projection registered with :func:`register_projection` (e.g. a test's toy)."""
    PROJECTIONS.unregister(name)


def projection_names() -> tuple[str, ...]:
    """The registered projections, in registration order."""
    return PROJECTIONS.names()


def projection_options(name: str, fungi: dict) -> dict:
    """The options projection ``name`` takes from the ``fungi`` settings section
    (``kernel`` for dense, ``terms`` for structured)."""
    return PROJECTIONS.get(name).options_from_settings(fungi)


def make_projection(
    name: str = "dense", *, in_features: int, out_features: int, dim: int, seed: int, bias: bool = True, **options
):
    """Build the projection registered as ``name``: ``"dense"`` (default, the paper's
    :class:`AchlioptasProjection`) or ``"structured"`` (:class:`OuterProductProjection`).
    Options left out take the values the settings' defaults give them (e.g. ``terms`` =
    ``fungi.structured_terms``), so every caller builds the same projection from the same
    options."""
    from segfungi.settings_schema import DEFAULTS

    entry = PROJECTIONS.get(name)
    try:
        defaults = entry.options_from_settings(DEFAULTS["fungi"])
    except KeyError:  # a projection registered with settings of its own, which have no schema default
        defaults = {}
    options = {**defaults, **options}
    return entry.factory(in_features, out_features, dim, seed, bias=bias, **options)
