import numpy as np
import pytest
from PIL import Image

from segfungi import viz

CLASSES = ["background", "cat", "dog", "person"]
PALETTE = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]], dtype=np.uint8)


def quadrant_mask(height=60, width=90) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[: height // 2, width // 2 :] = 1
    mask[height // 2 :, : width // 2] = 3
    mask[:3] = viz.IGNORE
    return mask


def image(height=60, width=90) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def assert_png(path, min_side=100):
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert min(picture.size) >= min_side


def test_colorize_uses_palette_and_marks_ignore():
    mask = quadrant_mask()
    colours = viz.colorize(mask, PALETTE)
    assert colours.shape == (*mask.shape, 3) and colours.dtype == np.uint8
    assert (colours[mask == 1] == PALETTE[1]).all()
    assert (colours[mask == viz.IGNORE] == viz.IGNORE_COLOUR).all()
    # A 256-entry palette (VOC) keeps its own colour for 255.
    voc_like = np.zeros((256, 3), dtype=np.uint8)
    voc_like[255] = (224, 224, 192)
    assert (viz.colorize(mask, voc_like)[0, 0] == (224, 224, 192)).all()


def test_overlay_blends_labelled_pixels_only():
    picture, mask = image(), quadrant_mask()
    assert (viz.overlay(picture, mask, PALETTE, alpha=0.0) == picture).all()
    opaque = viz.overlay(picture, mask, PALETTE, alpha=1.0)
    assert (opaque[mask == 3] == PALETTE[3]).all()
    assert (opaque[mask == viz.IGNORE] == picture[mask == viz.IGNORE]).all()
    half = viz.overlay(picture, mask, PALETTE, alpha=0.5).astype(int)
    expected = (picture[mask == 1].astype(int) + PALETTE[1]) / 2
    assert np.abs(half[mask == 1] - expected).max() <= 1
    with pytest.raises(ValueError, match="differ in size"):
        viz.overlay(picture, mask[:10], PALETTE)


def test_present_classes_skips_ignore_and_none():
    assert viz.present_classes([quadrant_mask(), None], len(CLASSES)) == [0, 1, 3]


def test_prediction_panels_png(tmp_path):
    masks = [quadrant_mask(), quadrant_mask(40, 40)]
    images = [image(), image(40, 40)]
    path = viz.plot_prediction_panels(
        images,
        {"ground truth": masks, "embeddings": [np.zeros((60, 90), np.uint8), None], "FUNGI": masks},
        CLASSES, PALETTE, tmp_path / "sub" / "panels.png", row_titles=["a", "b"],
    )
    assert_png(path, min_side=300)


def test_overlay_with_legend_keeps_image_pixels_and_adds_a_legend():
    picture, mask = image(333, 500), quadrant_mask(333, 500)
    drawn = viz.overlay_with_legend(picture, mask, CLASSES, PALETTE)
    assert drawn.shape[0] == 333 and drawn.shape[1] > 500
    assert (drawn[:, :500] == viz.overlay(picture, mask, PALETTE)).all()
    # No class present: no legend strip at all.
    blank = viz.overlay_with_legend(picture, np.full((333, 500), viz.IGNORE, np.uint8), CLASSES, PALETTE)
    assert blank.shape == (333, 500, 3)


def test_per_class_iou_single_and_compared(tmp_path):
    first = {"miou": 0.4, "per_class_iou": {"background": 0.9, "cat": 0.3, "dog": None, "person": 0.1}}
    second = {"miou": 0.5, "per_class_iou": {"background": 0.8, "cat": 0.5, "dog": float("nan"), "person": 0.3}}
    assert_png(viz.plot_per_class_iou(first, tmp_path / "one.png", title="val"))
    assert_png(viz.plot_per_class_iou({"embeddings": first, "FUNGI": second}, tmp_path / "two.png"))


def test_bank_size_and_fewshot_plots(tmp_path):
    rows = [{"features": k, "bank_size": s, "miou": m}
            for k, base in [("embeddings", 0.2), ("fungi", 0.3)] for s, m in [(1024, base), (4096, base + 0.1)]]
    assert_png(viz.plot_miou_vs_bank_size(rows, tmp_path / "sweep.png"))
    summary = [{"subset": s, "images": n, "features": k, "miou_mean": m, "miou_std": 0.01}
               for s, n in [("1/64", 165), ("1/128", 83)] for k, m in [("embeddings", 0.26), ("fungi", 0.29)]]
    assert_png(viz.plot_fewshot(summary, tmp_path / "fewshot.png"))
