"""Input fuzzing (hypothesis, bounded): dataset readers and the config loader.

* Random bytes and mutated PNG/JPEG/GIF/BMP/TIFF/WebP files, read as an image, as a
  mask, and as a sample of a dataset: the only outcomes are a correct read (uint8 of
  the documented shape, mask values mapped into the dataset's labels) or a
  DatasetError naming the file; never another exception.
* Random mappings, `--set` strings and YAML texts given to the config loader: the only
  outcomes are a ConfigError or a settings dict that passes the schema the defaults
  describe (every key known, every value of its default's type, numbers in range).
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import bad_inputs
from segfungi.config import load_config, parse_override
from segfungi.data.base import ClassIdMasks, SampleFiles, SegDataset
from segfungi.data.imageio import read_class_mask, read_image
from segfungi.infra.errors import ConfigError, DatasetError

# SEGFUNGI_FUZZ_EXAMPLES=2000 for a deeper run by hand; the suite keeps it bounded.
FUZZ = settings(max_examples=int(os.environ.get("SEGFUNGI_FUZZ_EXAMPLES", 80)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


def _seed_files() -> list[bytes]:
    files = [bad_inputs.valid_png(0), bad_inputs.valid_png(1, mode="L"), bad_inputs.valid_jpeg(0)]
    for fmt in ("GIF", "BMP", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(np.full((12, 20, 3), 90, np.uint8)).save(buffer, format=fmt)
        files.append(buffer.getvalue())
    return files


SEEDS = _seed_files()


@st.composite
def mutated_files(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            data = data[:pos]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


FILES = st.one_of(st.binary(max_size=400), mutated_files())
# PIL warns about the corrupt metadata it skips; that is expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]


@pytest.fixture(scope="module", autouse=True)
def small_pixel_limit():
    """Fuzzed headers may claim huge sizes; a lower PIL limit keeps every read fast
    (bigger claims are refused as decompression bombs, which is a DatasetError)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1 << 20
    yield
    Image.MAX_IMAGE_PIXELS = before


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=FILES)
def test_image_and_mask_readers_read_correctly_or_raise_dataset_error(scratch, data):
    path = scratch / "sample.png"
    path.write_bytes(data)
    try:
        image = read_image(path)
    except DatasetError as err:
        assert str(path) in str(err)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.flags.c_contiguous
    try:
        mask = read_class_mask(path)
    except DatasetError as err:
        assert str(path) in str(err)
    else:
        assert mask.dtype == np.uint8 and mask.ndim == 2
        with Image.open(path) as opened:  # a mask is never a lossy file
            assert opened.format not in ("JPEG", "MPO", "WEBP")


@FUZZ
@given(image=FILES, mask=FILES, which=st.sampled_from(["image", "mask", "both"]))
def test_dataset_sample_is_correct_or_a_dataset_error(scratch, image, mask, which):
    """One sample of a 3-class dataset with fuzzed files: a returned pair is always
    consistent (same size, RGB uint8 image, mask values in 0..2 or 255)."""
    good_image, good_mask = bad_inputs.valid_png(5), bad_inputs.valid_png(5, mode="L")
    files = SampleFiles("x", scratch / "x_image.png", scratch / "x_mask.png")
    files.image.write_bytes(image if which in ("image", "both") else good_image)
    files.mask.write_bytes(mask if which in ("mask", "both") else good_mask)
    reader = ClassIdMasks({0: 0, 1: 1, 2: 2, 255: 255}, "3 classes")
    for policy in ("error", "skip"):
        try:
            dataset = SegDataset(name="fuzz", root=scratch, split="s", classes=("a", "b", "c"),
                                 palette=np.zeros((256, 3), np.uint8), files=[files], read_mask=reader,
                                 source="fuzz", on_bad_sample=policy)
            sample = dataset[0]
        except DatasetError as err:
            assert str(files.image) in str(err) or str(files.mask) in str(err) or "fuzz" in str(err)
            continue
        assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
        assert sample.mask.shape == sample.image.shape[:2] and sample.mask.dtype == np.uint8
        assert set(np.unique(sample.mask)) <= {0, 1, 2, 255}


# ---------------------------------------------------------------------- config
DEFAULTS = load_config()
SECTION_KEYS = [(section, key) for section, values in DEFAULTS.items() for key in values]
OPTIONAL = {"data.root": str, "data.subset_file": str, "data.val_subset_file": str,
            "backbone.weights": str, "eval.out": str,
            "data.subset_fraction": float, "fungi.proj_dim": int, "eval.max_images": int,
            "data.image_size": int, "backbone.random_init": bool}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**7),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
known_or_random_key = st.one_of(st.sampled_from(SECTION_KEYS), st.tuples(st.text(max_size=8), st.text(max_size=8)))


def _of_type(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, float) and math.isfinite(value)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def assert_valid_settings(result: dict) -> None:
    """The schema the defaults describe, plus the ranges the pipeline relies on."""
    assert set(result) == set(DEFAULTS)
    for section, keys in DEFAULTS.items():
        assert set(result[section]) == set(keys), section
        for key, default in keys.items():
            value, dotted = result[section][key], f"{section}.{key}"
            if default is None:
                assert value is None or _of_type(OPTIONAL[dotted](), value), (dotted, value)
            elif isinstance(default, list):
                assert isinstance(value, list) and all(_of_type(default[0], v) for v in value), (dotted, value)
            else:
                assert _of_type(default, value), (dotted, value)
    bank, index = result["bank"], result["index"]
    assert min(bank["size"], bank["shard_images"], bank["batch_size"], bank["aug_epochs"], bank["label_topk"]) > 0
    assert bank["seed"] >= 0 and result["eval"]["k"] > 0 and result["eval"]["temperature"] > 0
    # data.image_size null: 32 × the backbone's patch size
    assert result["data"]["image_size"] is None or result["data"]["image_size"] > 0
    assert result["data"]["on_bad_sample"] in ("error", "skip")
    assert index["kind"] in ("auto", "scann", "exact") and index["reorder"] >= 0
    json.dumps(result)  # hashable into a manifest


@FUZZ
@given(entries=st.lists(st.tuples(known_or_random_key, values), max_size=4))
def test_config_mappings_give_config_error_or_valid_settings(entries):
    overrides = [{section: {key: value}} for (section, key), value in entries]
    try:
        result = load_config("demo", overrides)
    except ConfigError:
        return
    assert_valid_settings(result)


@FUZZ
@given(key=st.one_of(st.sampled_from([f"{s}.{k}" for s, k in SECTION_KEYS]), st.text(max_size=12)),
       raw=st.one_of(st.text(max_size=16), st.sampled_from(["1e3", "2001-13-01", "!!int x", ".nan", "-.inf", "[1, x]",
                                                             "{a: 1}", "~", "yes", "0x10", "&a [*a]", "!!binary x"])))
def test_override_strings_give_config_error_or_valid_settings(key, raw):
    try:
        result = load_config(None, [f"{key}={raw}"])
    except ConfigError:
        return
    assert_valid_settings(result)
    assert parse_override(f"{key}={raw}")  # what was merged parses on its own too


@FUZZ
@given(text=st.one_of(
    st.text(max_size=120),
    st.builds(lambda section, key, value: f"{section}:\n  {key}: {value}\n",
              st.sampled_from(list(DEFAULTS) + ["x"]), st.sampled_from(["size", "k", "root", "kind", "zz"]),
              st.text(max_size=20)),
))
def test_yaml_files_give_config_error_or_valid_settings(scratch, text):
    path = scratch / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        result = load_config(path)
    except ConfigError as err:
        assert str(path) in str(err)
        return
    assert_valid_settings(result)
