"""The `*_fast` presets are their paper presets with only the fast FUNGI projection set
(`fungi.projection: structured`, `fungi.projection_dtype: auto`; evidence in the presets'
comments and benchmarks/README.md): everything else, and the paper presets themselves
(dense float32, tests/test_pinned_banks.py), unchanged."""

from __future__ import annotations

import pytest

from segfungi.config import dotted_items, load_config


@pytest.mark.parametrize("paper", ["voc_vits16", "voc_vitb16"])
def test_a_fast_preset_is_its_paper_preset_with_the_fast_projection(paper):
    base = dict(dotted_items(load_config(paper)))
    fast = dict(dotted_items(load_config(f"{paper}_fast")))
    changed = {key: (base[key], fast[key]) for key in base if base[key] != fast[key]}
    assert changed == {"fungi.projection": ("dense", "structured"), "fungi.projection_dtype": ("float32", "auto")}
    assert set(base) == set(fast)
