"""The generated demo dataset: real layouts that read back as the same scenes,
determinism, the demo-data command, and (slow) that a random-init ViT can learn it."""

import hashlib
import time

import numpy as np
import pytest
from scipy import ndimage

from segfungi.cli import main
from segfungi.data import build_dataset
from segfungi.data.demo import ADE_IDS, COCO_BACKGROUND, COCO_THINGS, VOC_IDS, write_demo_dataset
from segfungi.data.demo_scenes import STYLES
from segfungi.infra.errors import DatasetError

LAYOUTS = ("voc", "ade20k", "folder", "coco-stuff")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The same 6 scenes (seed 1) written in every layout, read back per split."""
    base = tmp_path_factory.mktemp("demo")
    read = {}
    for layout in LAYOUTS:
        root = write_demo_dataset(base / layout, layout, n_images=6, seed=1, n_val=2)
        read[layout] = {split: list(build_dataset(layout, root, split)) for split in ("train", "val")}
    read["trainaug"] = list(build_dataset("voc", base / "voc", "trainaug"))
    return read


def test_layouts_read_back_as_the_same_scenes(demo):
    for split, count in (("train", 4), ("val", 2)):
        styles = [s.mask for s in demo["folder"][split]]  # folder masks hold the style index
        assert len(styles) == count
        coco_ids = [COCO_BACKGROUND[0]] + [cid for cid, _ in COCO_THINGS]  # per style
        coco_class = np.array([sorted(coco_ids).index(cid) for cid in coco_ids])  # sorted by COCO id
        for k, (voc, ade, coco, folder) in enumerate(zip(
                demo["voc"][split], demo["ade20k"][split], demo["coco-stuff"][split], demo["folder"][split])):
            np.testing.assert_array_equal(voc.image, folder.image)  # same JPEG bytes
            np.testing.assert_array_equal(coco.image, folder.image)
            labelled = voc.mask != 255
            np.testing.assert_array_equal(voc.mask[labelled], np.array(VOC_IDS)[styles[k]][labelled])
            ade_expected = np.array(ADE_IDS)[styles[k]] - 1
            known = ade.mask != 255
            np.testing.assert_array_equal(ade.mask[known], ade_expected[known])
            difference = np.abs(ade.image.astype(int) - folder.image)[known]
            assert difference.mean() < 1  # JPEG blocks next to the "other" blob differ a little
            np.testing.assert_array_equal(coco.mask, coco_class[styles[k]])  # polygons: pixel-exact
    for aug, folder in zip(demo["trainaug"], demo["folder"]["train"]):
        np.testing.assert_array_equal(aug.mask, np.array(VOC_IDS)[folder.mask])  # no void band


def test_voc_has_a_void_band_on_object_outlines_only(demo):
    for voc, aug in zip(demo["voc"]["train"], demo["trainaug"]):
        void = voc.mask == 255
        assert void.any()
        edges = ndimage.morphological_gradient(aug.mask, size=5) > 0
        np.testing.assert_array_equal(void, edges)


def test_ade_other_blob_is_ignore(demo):
    assert any((s.mask == 255).any() for s in demo["ade20k"]["train"] + demo["ade20k"]["val"])


def test_images_are_varied_non_square_and_every_class_appears(tmp_path):
    root = write_demo_dataset(tmp_path / "f", "folder", n_images=12, seed=0, n_val=2)
    train = build_dataset("folder", root, "train")
    shapes = [s.image.shape[:2] for s in train]
    assert all(300 <= h <= 520 and 300 <= w <= 520 and h != w for h, w in shapes)
    assert len(set(shapes)) == len(shapes)
    assert set(np.unique(np.concatenate([s.mask.ravel() for s in train]))) == set(range(len(STYLES)))
    assert train.classes == tuple(name for name, _, _ in STYLES)


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes()
                                   for p in files)).hexdigest()


def test_deterministic_in_seed(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_demo_dataset(tmp_path / name, "coco-stuff", n_images=5, seed=seed)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_fifty_images_in_seconds(tmp_path):
    started = time.perf_counter()
    write_demo_dataset(tmp_path / "a", "voc", n_images=50, seed=0)
    assert time.perf_counter() - started < 20  # ~1.5 s on one free core


def test_rewrite_and_refusals(tmp_path):
    write_demo_dataset(tmp_path / "d", "ade20k", n_images=8, seed=0)
    write_demo_dataset(tmp_path / "d", "ade20k", n_images=4, seed=0)  # an earlier demo is replaced
    assert len(build_dataset("ade20k", tmp_path / "d", "train")) == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty"):
        write_demo_dataset(tmp_path / "mine", "voc", n_images=4, seed=0)
    with pytest.raises(DatasetError, match="layout"):
        write_demo_dataset(tmp_path / "x", "kitti", n_images=4, seed=0)
    with pytest.raises(DatasetError, match="val"):
        write_demo_dataset(tmp_path / "x", "voc", n_images=1, seed=0)


def test_demo_data_command(tmp_path, capsys):
    from segfungi.commands import demo_data
    from segfungi.data import demo as demo_module

    assert demo_data.LAYOUTS == demo_module.LAYOUTS
    out = tmp_path / "cli"
    assert main(["demo-data", str(out), "--layout", "coco-stuff", "--images", "5", "--seed", "2"]) == 0
    assert "--dataset coco-stuff" in capsys.readouterr().out
    assert len(build_dataset("coco-stuff", out, "train")) + len(build_dataset("coco-stuff", out, "val")) == 5
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    assert main(["demo-data", str(tmp_path / "other"), "--images", "4"]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_random_init_vit_retrieval_beats_chance(tmp_path):
    """Patch-kNN label transfer with a random-init ViT-Tiny (no augmentation, exact
    search) reaches far above the majority-class baseline on the demo data."""
    import timm
    import torch

    from segfungi.data.augment import eval_transform, patch_histograms

    root = write_demo_dataset(tmp_path / "r", "folder", n_images=14, seed=0, n_val=4)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()

    def features(split):
        dataset = build_dataset("folder", root, split)
        feats, hists = [], []
        for sample in dataset:
            image, mask = eval_transform(sample.image, sample.mask, size=224)
            x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
            with torch.no_grad():
                tokens = model.forward_features(x)[0, 1:]
            feats.append(torch.nn.functional.normalize(tokens, dim=-1))
            hists.append(patch_histograms(mask, 16, num_classes=dataset.num_classes))
        return torch.cat(feats), np.concatenate(hists)

    bank, bank_hist = features("train")
    query, query_hist = features("val")
    labels = torch.from_numpy(bank_hist / bank_hist.sum(1, keepdims=True)).float()
    sims, idx = (query @ bank.T).topk(30, dim=1)
    pred = (torch.softmax(sims / 0.02, dim=1)[:, :, None] * labels[idx]).sum(1).argmax(1).numpy()
    truth = query_hist.argmax(1)

    def miou(prediction):
        ious = [((prediction == c) & (truth == c)).sum() / max(((prediction == c) | (truth == c)).sum(), 1)
                for c in np.unique(truth)]
        return float(np.mean(ious))

    majority = np.full_like(truth, np.bincount(bank_hist.argmax(1)).argmax())
    assert miou(pred) > 0.4 and miou(pred) > 3 * miou(majority)  # measured: 0.59 vs 0.13
