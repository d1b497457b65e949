import numpy as np
import pytest
from PIL import Image

from segfungi.inference import viz

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
    outlined = viz.outline_regions(viz.overlay(picture, mask, PALETTE), mask, PALETTE)
    assert (drawn[:, :500] == outlined).all()
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


# ------------------------------------------------------- plots say what was run
CONTEXT = "vit_tiny_patch16_224, random init (seed 0), no pretrained weights\nvoc train: 8 training images"


def tick_texts(axis) -> list[str]:
    return [label.get_text() for label in axis.get_ticklabels()]


def assert_no_overlap(fig, labels):
    fig.canvas.draw()
    boxes = [label.get_window_extent() for label in labels if label.get_text()]
    for i, first in enumerate(boxes):
        for second in boxes[i + 1:]:
            assert not first.overlaps(second), "tick labels overlap"


@pytest.mark.parametrize("sizes", [[512, 2048, 8192], [4096, 20480], [102400, 1024000, 10240000], [32768]])
def test_bank_size_plot_ticks_at_the_sizes_built_from_zero(sizes):
    rows = [{"features": k, "bank_size": s, "miou": base + 0.01 * i}
            for k, base in [("embeddings", 0.4), ("fungi", 0.3)] for i, s in enumerate(sizes)]
    fig = viz.bank_size_figure(rows, context=CONTEXT)
    ax = fig.axes[0]
    assert fig.get_suptitle() == "mIoU against memory-bank size\n" + CONTEXT
    assert list(ax.get_xticks()) == sizes
    assert tick_texts(ax.xaxis) == [f"{s:,}" for s in sizes]
    assert not ax.xaxis.get_minorticklocs().size  # no extra log-scale labels between them
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 100 * max(r["miou"] for r in rows)
    assert_no_overlap(fig, ax.xaxis.get_ticklabels())
    viz.plt.close(fig)


def test_plot_functions_pass_title_and_context_to_the_file(tmp_path):
    rows = [{"features": "fungi", "bank_size": 1024, "miou": 0.2}]
    path = viz.plot_miou_vs_bank_size(rows, tmp_path / "sweep.png", context=CONTEXT, title="demo")
    assert_png(path)
    assert viz.bank_size_figure(rows, "demo", CONTEXT).get_suptitle().startswith("demo\nvit_tiny")
    viz.plt.close("all")


def test_fewshot_plot_labels_images_and_bank_sizes():
    summary = [{"subset": s, "images": n, "bank_size": b, "features": k, "miou_mean": m, "miou_std": 0.01}
               for s, n, b in [("1/64", 165, 168960), ("1/128", 83, 84992)]
               for k, m in [("embeddings", 0.26), ("fungi", 0.29)]]
    fig = viz.fewshot_figure(summary, context=CONTEXT)
    ax = fig.axes[0]
    assert fig.get_suptitle() == "few-shot mIoU\n" + CONTEXT
    assert tick_texts(ax.xaxis) == ["1/128\n83 images\nbank 84,992", "1/64\n165 images\nbank 168,960"]
    assert ax.get_ylim()[0] == 0
    assert_no_overlap(fig, ax.xaxis.get_ticklabels())
    viz.plt.close(fig)


def test_per_class_iou_tells_zero_from_absent():
    first = {"miou": 0.4, "per_class_iou": {"background": 0.9, "cat": 0.0, "dog": None, "person": 0.1}}
    second = {"miou": 0.5, "per_class_iou": {"background": 0.8, "cat": 0.5, "dog": float("nan"), "person": 0.0}}
    fig = viz.per_class_iou_figure({"embeddings": first, "FUNGI": second}, title="val", context=CONTEXT)
    ax = fig.axes[0]
    assert fig.get_suptitle() == "val\n" + CONTEXT
    assert tick_texts(ax.yaxis) == CLASSES
    assert ax.get_xlim() == (0, 100)
    absent = fig.findobj(lambda a: a.get_gid() == "absent")
    assert [round(p.get_y() + p.get_height() / 2) for p in absent] == [CLASSES.index("dog")]
    assert absent[0].get_hatch() and absent[0].get_facecolor()[3] == 0  # hatched, not a filled bar
    assert "absent" in [t.get_text() for t in ax.texts]
    zero_rows = sorted(round(y) for line in fig.findobj(lambda a: a.get_gid() == "zero") for y in line.get_ydata())
    assert zero_rows == [CLASSES.index("cat"), CLASSES.index("person")]  # one marker per measured 0
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("absent") for t in legend) and any(t.startswith("IoU 0") for t in legend)
    viz.plt.close(fig)


def test_per_class_iou_without_zero_or_absent_has_no_such_marks():
    only = {"miou": 0.5, "per_class_iou": {"background": 0.9, "cat": 0.3, "dog": 0.4, "person": 0.1}}
    fig = viz.per_class_iou_figure(only)
    assert fig.get_suptitle() == "per-class IoU"
    assert not fig.findobj(lambda a: a.get_gid() in ("absent", "zero"))
    viz.plt.close(fig)


def test_prediction_panels_title():
    fig = viz.prediction_panels_figure([image()], {"ground truth": [quadrant_mask()]}, CLASSES, PALETTE,
                                       title="val predictions", context=CONTEXT)
    assert fig.get_suptitle() == "val predictions\n" + CONTEXT
    assert [ax.get_title() for ax in fig.axes[:2]] == ["image", "ground truth"]
    viz.plt.close(fig)


def test_overlay_caption_goes_below_and_keeps_the_pixels():
    picture, mask = image(120, 200), quadrant_mask(120, 200)
    plain = viz.overlay_with_legend(picture, mask, CLASSES, PALETTE)
    captioned = viz.overlay_with_legend(picture, mask, CLASSES, PALETTE, caption=CONTEXT)
    assert captioned.shape[0] > plain.shape[0] and captioned.shape[1] >= plain.shape[1]
    assert (captioned[:120, :200] == plain[:120, :200]).all()
    below = captioned[plain.shape[0]:]
    assert (below < 128).any()  # dark text was drawn there


def demo_manifest(root, weights_id="random-init:seed=0:timm=1.0", images=8):
    """What describe_banks reads of a bank: its identity and its settings."""
    from types import SimpleNamespace

    from segfungi.bank import BackboneIdentity, BankIdentity, DatasetIdentity, ExtractorIdentity, SamplingIdentity
    from segfungi.infra.weights import WeightsSource

    backbone = BackboneIdentity("vit_tiny_patch16_224", WeightsSource.parse(weights_id), 512, 16, 192, 1)
    identity = BankIdentity(ExtractorIdentity("embeddings", 192, backbone),
                            DatasetIdentity("voc", "train", images, "0" * 16, ("background", "cat")),
                            SamplingIdentity(1024, 1, 0, 512, 8, 16))
    return SimpleNamespace(identity=identity, settings={"data": {"root": str(root), "val_split": "val"}})


def test_describe_banks_names_backbone_weights_data_and_images(tmp_path):
    from segfungi.data.demo import MARKER

    (tmp_path / MARKER).write_text("{}")
    text = viz.describe_banks([demo_manifest(tmp_path)], eval_images=4)
    assert text == ("vit_tiny_patch16_224, random init (seed 0), no pretrained weights\n"
                    "voc train: 8 training images (generated demo data), evaluated on 4 val images\n"
                    + viz.RANDOM_INIT_NOTE)
    assert "FUNGI's gain needs pretrained weights" in viz.RANDOM_INIT_NOTE
    real = viz.describe_banks([demo_manifest(tmp_path / "voc", "timm-hub:timm/vit_small_patch16_224.dino", 4),
                               demo_manifest(tmp_path / "voc", "timm-hub:timm/vit_small_patch16_224.dino", 2)])
    assert real == ("vit_tiny_patch16_224, pretrained weights timm/vit_small_patch16_224.dino\n"
                    "voc train: 2 / 4 training images")
    from segfungi.infra.weights import WeightsSource

    assert WeightsSource.parse("file:dino.pth:sha256:0123").describe() == "weights dino.pth"


# ------------------------------------------------ issue 22, item 8: legible overlays
def _luminance(pixels) -> np.ndarray:
    return np.asarray(pixels, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


@pytest.mark.parametrize("shade", [10, 245], ids=["dark-image", "bright-image"])
def test_every_voc_class_stands_out_on_dark_and_bright_images(shade):
    from segfungi.data.labels import VOC_CLASSES, voc_palette

    picture = np.full((120, 160, 3), shade, np.uint8)
    for class_id in range(1, 21):
        mask = np.full((120, 160), viz.IGNORE, np.uint8)  # alone: no neighbour's outline helps
        mask[30:90, 40:120] = class_id
        drawn = viz.overlay_with_legend(picture, mask, VOC_CLASSES, voc_palette())
        assert drawn.shape[1] > 160  # the legend strip is still there
        region = drawn[30:90, 40:120]
        # Along the region's outline, pixels differ from the image by at least 100 grey
        # levels all round (at alpha 0.5 alone, VOC's cat differs from a dark image by 4).
        for side in (region[:2, 1:-1], region[-2:, 1:-1], region[1:-1, :2], region[1:-1, -2:]):
            differs = np.abs(_luminance(side) - shade) >= 100
            assert differs.any(axis=-1 if side.shape[0] > 2 else 0).all(), VOC_CLASSES[class_id]
        # Inside the region, the blend itself is unchanged.
        assert (drawn[40:80, 50:110] == viz.overlay(picture, mask, voc_palette())[40:80, 50:110]).all()
