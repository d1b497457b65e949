"""README.md's Python block runs as written on generated demo data, and what it promises
of Segmenter holds: any image form `segfungi predict` reads, and settings that do not
match the bank refused before a backbone is loaded."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segfungi.config import load_config
from segfungi.infra.errors import BankError

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Run the block in a folder holding runs/demo/data, as after `segfungi demo` (smaller)."""
    from segfungi.data.demo import write_demo_dataset

    (block,) = python_blocks(README.read_text())
    folder = tmp_path_factory.mktemp("readme")
    write_demo_dataset(folder / "runs" / "demo" / "data", layout="voc", n_images=6, n_val=2, seed=0)
    here = os.getcwd()
    os.chdir(folder)
    try:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    finally:
        os.chdir(here)
    namespace["folder"] = folder
    return namespace


def test_readme_has_one_python_block_that_defines_what_it_uses():
    (block,) = python_blocks(README.read_text())
    assert "image = " in block and "MemoryBank(bank).settings" in block


def test_readme_block_runs_and_predicts_the_image(readme_run):
    image, mask = readme_run["image"], readme_run["mask"]
    assert isinstance(image, Image.Image)
    assert mask.shape == (image.height, image.width) and mask.dtype == np.uint8
    assert (Path(readme_run["folder"]) / readme_run["bank"] / "manifest.json").is_file()


@pytest.fixture(scope="module")
def segmenter(readme_run):
    from segfungi.inference.segmenter import Segmenter

    bank = Path(readme_run["folder"]) / readme_run["bank"]
    return Segmenter.from_settings(bank, readme_run["bank_settings"])


def test_predict_takes_pil_grey_and_rgba_like_the_cli(readme_run, segmenter):
    from segfungi.data.imageio import to_rgb

    pil = readme_run["image"]
    rgb = np.asarray(pil.convert("RGB"))
    expected = segmenter.predict(rgb)
    np.testing.assert_array_equal(segmenter.predict(pil), expected)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(segmenter.predict(rgba), expected)  # alpha dropped
    grey = np.asarray(pil.convert("L"))
    np.testing.assert_array_equal(segmenter.predict(grey), segmenter.predict(to_rgb(grey)))
    np.testing.assert_array_equal(segmenter.predict(pil.convert("L")), segmenter.predict(to_rgb(grey)))
    assert segmenter.predict(grey).shape == grey.shape


@pytest.mark.parametrize("change, named", [
    ({"backbone": {"pretrained": True, "random_init": False}}, "backbone weights"),
    ({"backbone": {"name": "vit_small_patch16_224.dino", "pretrained": True}}, "backbone.name"),
    ({"backbone": {"init_seed": 4}}, "backbone.init_seed"),
    ({"data": {"image_size": 224}}, "data.image_size"),
    ({"backbone": {"dtype": "bfloat16"}}, "backbone.dtype"),
    ({"backbone": {"weights": "elsewhere/dino.pth"}}, "weights file elsewhere/dino.pth"),
])
def test_mismatched_settings_fail_before_any_model_is_loaded(readme_run, monkeypatch, change, named):
    import segfungi.inference.segmenter

    def no_loading(*args, **kwargs):
        raise AssertionError("a backbone was loaded (or downloaded) for mismatched settings")

    monkeypatch.setattr(segfungi.inference.segmenter, "make_extractor", no_loading)
    bank = Path(readme_run["folder"]) / readme_run["bank"]
    settings = load_config(base=readme_run["bank_settings"], overrides=[change])
    with pytest.raises(BankError, match=f"other feature settings than this query \\(checked before loading(.|\\n)*{re.escape(named)}"):
        segfungi.inference.segmenter.Segmenter.from_settings(bank, settings)


def test_readme_starts_with_the_two_commands():
    first = re.search(r"^```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M).group(1)
    assert first.splitlines() == [
        "pip install -e . && segfungi demo            # the whole job end to end on generated VOC-layout data",
        'pip install -e ".[dev]" && python -m pytest -q  # the whole test suite',
    ]


def test_docs_name_only_files_a_clone_has():
    root = README.parent
    for doc in [README, root / "memory_banks" / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../" not in text, f"{doc} points outside the repository"
        for name in re.findall(r"`([\w./-]+\.md)`", text):
            assert (root / name).is_file(), f"{doc} names {name}, which does not exist"
    assert "docs/method.md" in README.read_text()


def test_memory_banks_readme_names_the_files_a_bank_has():
    from segfungi.bank import BUILD_RECORD, LAST_BLOCK_INPUT_DIR, MANIFEST, SUPPORT_DIR

    text = (README.parent / "memory_banks" / "README.md").read_text()
    for name in (BUILD_RECORD, MANIFEST, SUPPORT_DIR, LAST_BLOCK_INPUT_DIR, "build.lock"):
        assert name in text, name
    # Files no code writes any more (the sampler counts classes per view since issue 13).
    assert "partial" not in text and "class_frequency" not in text


def test_built_bank_has_what_memory_banks_readme_lists(readme_run):
    bank = Path(readme_run["folder"]) / readme_run["bank"]
    assert sorted(p.name for p in bank.iterdir()) == ["manifest.json", "shards", "support"]
