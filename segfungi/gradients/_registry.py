"""The registry of projections: a new projection is one :func:`register_projection` call.

A registered projection is a name (the ``fungi.projection`` setting, and the ``kind``
field of the projection's identity), a ``factory(in_features, out_features, dim, seed,
bias=…, compute_dtype=…, **options)`` (or its reference ``"module:attribute"``, imported by
the first projection built), ``options_from_settings(fungi)``, which reads the projection's
own options from the ``fungi`` settings section (e.g. ``terms`` from
``fungi.structured_terms``), and ``defaults``: its options' default values, the one source
of them (the settings schema's defaults of those keys read them, and
:func:`make_projection` fills options a caller leaves out from them). :func:`make_projection`,
:func:`projection_options` and the settings schema's ``fungi.projection`` choices read
this registry.

This module imports no torch and nothing of the settings: the built-in projections
(``dense``, ``structured``) are registered here with their facts, their classes by reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from segfungi.infra.registry import Registry, load_reference


@dataclass(frozen=True)
class RegisteredProjection:
    """What a projection's name stands for (see the module docstring)."""

    name: str
    factory: Callable[..., Any] | str
    options_from_settings: Callable[[dict], dict]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def build(self, *args, **kwargs):
        factory = load_reference(self.factory) if isinstance(self.factory, str) else self.factory
        return factory(*args, **kwargs)


PROJECTIONS: Registry[RegisteredProjection] = Registry("projection")


def register_projection(
    name: str, factory: Callable[..., Any] | str, *, options_from_settings: Callable[[dict], dict] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> RegisteredProjection:
    """Makes ``name`` usable as ``fungi.projection`` and ``make_projection(name, …)``."""
    return PROJECTIONS.register(name, RegisteredProjection(name, factory, options_from_settings or (lambda fungi: {}),
                                                           defaults or {}))


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
    Options left out take the entry's defaults (the settings' defaults of the same keys),
    so every caller builds the same projection from the same options."""
    entry = PROJECTIONS.get(name)
    return entry.build(in_features, out_features, dim, seed, bias=bias, **{**entry.defaults, **options})


def projection_defaults(name: str) -> Mapping[str, Any]:
    """The default values of projection ``name``'s options (read-only)."""
    return PROJECTIONS.get(name).defaults


# The built-ins. dense: the GEMM or the CPU's sign-lookup tables (same numbers up to rounding);
# structured: 16 outer products per row (1, 4 and 8 miss the recall bar, benchmarks/README.md).
register_projection("dense", "segfungi.gradients._dense:AchlioptasProjection",
                    options_from_settings=lambda fungi: {"kernel": fungi["projection_kernel"]},
                    defaults={"kernel": "auto"})
register_projection("structured", "segfungi.gradients._structured:OuterProductProjection",
                    options_from_settings=lambda fungi: {"terms": int(fungi["structured_terms"])},
                    defaults={"terms": 16})
