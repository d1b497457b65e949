"""Your own torch model and data: segfungi.CustomBackbone, from_pairs / as_dataset, and
examples/custom_encoder.py end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import segfungi
from segfungi.gradients import l2_normalize
from segfungi.infra.errors import BankError, ConfigError, DatasetError
from segfungi.ops.seg_loss import seg_simclr_loss

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_encoder.py"


def example_module():
    spec = importlib.util.spec_from_file_location("custom_encoder_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_model(seed=0, image_size=32, patch_size=8):
    torch.manual_seed(seed)
    return example_module().PatchTransformer(image_size=image_size, patch_size=patch_size, dim=32, depth=2, heads=2)


def wrap(model, split=True, **kwargs):
    options = dict(identity="test-transformer", patch_size=8, image_size=32, num_prefix_tokens=1,
                   grad_layer="blocks.1.attn.proj")
    if split:
        options.update(until_last_block=model.until_last_block, last_block=model.last_block)
    return segfungi.CustomBackbone(model, **{**options, **kwargs})


def images(n=2, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_split_and_whole_model_give_the_same_fungi_features():
    model = make_model()
    x = images()
    negatives = torch.randn(2, 1 + 16, 2, 32, generator=torch.Generator().manual_seed(1))
    negatives = l2_normalize(negatives)
    out = {}
    for split in (True, False):
        extractor = segfungi.FeatureExtractor(wrap(model, split), features="fungi", proj_dim=24)
        out[split] = extractor.fungi(x, negatives, generator=torch.Generator().manual_seed(3))
        assert extractor.feature_dim == 24 + 32
    for a, b in zip(out[True].features, out[False].features):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[True].losses, out[False].losses)


class NoPrefix(nn.Module):
    """Patch tokens only (no CLS): every token the gradient layer sees is a patch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.mix = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 16)

    def embed(self, x):
        return self.patch_embed(x).flatten(2).transpose(1, 2)

    def head(self, h):
        return self.out(torch.nn.functional.gelu(self.norm(self.mix(h))))

    def forward(self, x):
        return self.head(self.embed(x))


@pytest.mark.parametrize("split", [True, False])
def test_token_gradients_sum_to_the_autograd_weight_gradient(split):
    """Oracle: Σ_b Σ_t δ_t a_tᵀ must equal dL/dW (and Σ δ_t = dL/db) of the summed loss
    from plain autograd on the layer's own parameters."""
    model = NoPrefix()
    backbone = segfungi.CustomBackbone(model, identity="no-prefix", patch_size=8, image_size=32, grad_layer="mix",
                                       **({"until_last_block": model.embed, "last_block": model.head} if split else {}))
    assert not backbone.has_class_token and backbone.splits is split
    extractor = segfungi.FeatureExtractor(backbone, features="fungi")
    x = backbone.prepare(images())
    negatives = l2_normalize(torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(2)))
    grads, _, losses = extractor.patch_gradients(extractor.last_block_input(x), negatives)

    layer = model.mix
    layer.requires_grad_(True)
    try:
        tokens = model(x)
        loss = seg_simclr_loss(l2_normalize(extractor.head(tokens)), l2_normalize(extractor.head(negatives)),
                               extractor.tau).sum()
        loss.backward()
        expected_w, expected_b = layer.weight.grad.clone(), layer.bias.grad.clone()
    finally:
        layer.weight.grad = layer.bias.grad = None
        layer.requires_grad_(False)
    torch.testing.assert_close(losses.sum(), loss.detach())
    torch.testing.assert_close(torch.einsum("bto,bti->oi", grads.delta, grads.inputs), expected_w,
                               rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads.delta.sum(dim=(0, 1)), expected_b, rtol=1e-4, atol=1e-7)


def test_embeddings_are_the_models_patch_tokens():
    model = make_model()
    backbone = wrap(model)
    x = images()
    extractor = segfungi.FeatureExtractor(backbone)
    with torch.no_grad():
        expected = model(backbone.prepare(x))[:, 1:]
    torch.testing.assert_close(extractor.embeddings(x, normalize=False), expected)
    assert backbone.embed_dim == 32 and backbone.grid == (4, 4) and backbone.has_class_token


def test_identity_names_the_model_and_its_weights():
    a, b = wrap(make_model(seed=0)), wrap(make_model(seed=1))
    assert a.identity()["custom"] == "test-transformer" and a.identity()["split"] is True
    assert a.identity()["weights_id"] != b.identity()["weights_id"]
    assert a.identity()["weights_id"] == wrap(make_model(seed=0), split=False).identity()["weights_id"]


@pytest.mark.parametrize("kwargs, message", [
    ({"identity": ""}, "identity= must name the model"),
    ({"image_size": 30}, "not a positive multiple"),
    ({"num_prefix_tokens": 0, "has_class_token": False}, "tokens are \\(1, 17, 32\\), expected 1×16×D"),
    ({"grad_layer": "blocks.1.norm1"}, "is a LayerNorm, FUNGI needs an nn.Linear"),
    ({"grad_layer": "blocks.9.attn.proj"}, "not a submodule"),
    ({"grad_layer": "blocks.0.attn.proj"}, "runs in until_last_block"),
    ({"grad_layer": "blocks.1.mlp.0"}, None),  # a token-wise Linear in the last block is fine
    ({"embed_dim": 48}, "width 32, embed_dim=48"),
])
def test_bad_adapters_are_refused_when_made(kwargs, message):
    model = make_model()
    if message is None:
        wrap(model, **kwargs)
        return
    with pytest.raises(ConfigError, match=message):
        wrap(model, **kwargs)


def test_one_half_of_a_split_or_fungi_without_grad_layer_is_refused():
    model = make_model()
    with pytest.raises(ConfigError, match="give both until_last_block= and last_block="):
        segfungi.CustomBackbone(model, identity="m", patch_size=8, image_size=32, num_prefix_tokens=1,
                                last_block=model.last_block)
    plain = segfungi.CustomBackbone(model, identity="m", patch_size=8, image_size=32, num_prefix_tokens=1)
    assert segfungi.FeatureExtractor(plain).feature_dim == 32  # embeddings need no gradient layer
    with pytest.raises(ConfigError, match="FUNGI features need the backbone's grad_layer"):
        segfungi.FeatureExtractor(plain, features="fungi")


def test_pairs_are_checked_and_converted():
    classes = ["background", "thing"]
    image, mask = np.zeros((8, 6, 3), np.uint8), np.zeros((8, 6), np.int64)
    mask[0, 0] = 255
    data = segfungi.from_pairs([(image, mask), (torch.zeros(3, 8, 6, dtype=torch.uint8), torch.ones(8, 6))], classes)
    with pytest.raises(DatasetError, match="item 1: the mask must be an H×W array of integer class ids"):
        data[1]
    data = segfungi.from_pairs([(image, mask), (torch.zeros(3, 8, 6, dtype=torch.uint8), torch.ones(8, 6).long())],
                               classes, name="toy")
    assert data[1].image.shape == (8, 6, 3) and data[1].mask.dtype == np.uint8 and data.ids == ("0", "1")
    assert data[0].mask[0, 0] == 255 and data.palette.shape == (256, 3)
    bad = segfungi.from_pairs([(image, np.full((8, 6), 2))], classes, name="toy")
    with pytest.raises(DatasetError, match="dataset 'toy' item 0: mask value 2 is not a class id 0..1 or 255"):
        bad[0]
    with pytest.raises(DatasetError, match="mask is 5×8 but the image 6×8"):
        segfungi.from_pairs([(image, np.zeros((8, 5), np.uint8))], classes)[0]
    with pytest.raises(DatasetError, match="needs a class list"):
        segfungi.as_dataset([(image, mask)])

    class WithClasses(list):
        pass

    WithClasses.classes = classes
    assert segfungi.as_dataset(WithClasses([(image, mask)])).classes == tuple(classes)


@pytest.fixture(scope="module")
def custom_banks(tmp_path_factory, demo_voc_root):
    model = make_model(image_size=32)
    backbone = wrap(model)
    voc = segfungi.build_dataset("voc", demo_voc_root, "train")
    train = segfungi.from_pairs(example_module().Pairs(voc, 6), voc.classes, name="voc-6")
    settings = segfungi.load_config(overrides=[{"bank": {"features": "fungi", "size": 96, "shard_images": 4}}])
    out = tmp_path_factory.mktemp("custom") / "fungi"
    bank = segfungi.build_bank(settings, out, backbone=backbone, dataset=train, progress=False)
    return {"bank": bank, "backbone": backbone, "settings": settings, "train": train, "model": model}


def test_a_custom_bank_records_the_model_and_is_rebuilt_only_for_other_inputs(custom_banks):
    manifest = segfungi.MemoryBank(custom_banks["bank"]).manifest
    built = manifest["identity"]["extractor"]["backbone"]
    assert built["custom"] == "test-transformer" and built["weights_id"].startswith("sha256:")
    assert manifest["identity"]["dataset"]["name"] == "voc-6" and manifest["identity"]["dataset"]["num_images"] == 6
    # The same inputs find the bank that is there.
    again = segfungi.build_bank(custom_banks["settings"], custom_banks["bank"], backbone=custom_banks["backbone"],
                                dataset=custom_banks["train"], progress=False)
    assert again == custom_banks["bank"]
    with pytest.raises(BankError, match="holds a different bank"):
        segfungi.build_bank(custom_banks["settings"], custom_banks["bank"], backbone=wrap(make_model(seed=5)),
                            dataset=custom_banks["train"], progress=False)


def test_queries_from_another_model_are_refused(custom_banks):
    bank = custom_banks["bank"]
    with pytest.raises(BankError, match="weights_id: bank has 'sha256:"):
        segfungi.Segmenter.from_settings(bank, backbone=wrap(make_model(seed=5)))
    with pytest.raises(BankError, match="custom model 'test-transformer'; pass it as backbone="):
        segfungi.Segmenter.from_settings(bank)
    segmenter = segfungi.Segmenter.from_settings(bank, backbone=custom_banks["backbone"])
    mask = segmenter.predict(np.zeros((40, 50, 3), np.uint8))
    assert mask.shape == (40, 50) and mask.dtype == np.uint8


def test_evaluate_a_custom_bank_on_given_pairs(custom_banks, demo_voc_root):
    voc = segfungi.build_dataset("voc", demo_voc_root, "val")
    val = segfungi.from_pairs(example_module().Pairs(voc, 3), voc.classes, name="voc-val-3")
    results = segfungi.evaluate(custom_banks["bank"], backbone=custom_banks["backbone"], dataset=val, progress=False)
    assert results["images"] == 3 and 0 <= results["miou"] <= 1
    other = segfungi.from_pairs(val.items, ["a", "b"], name="other")
    with pytest.raises(BankError, match="bank classes differ from the other classes"):
        segfungi.evaluate(custom_banks["bank"], backbone=custom_banks["backbone"], dataset=other, progress=False)


def test_the_example_runs_on_generated_voc_data(tmp_path):
    source = EXAMPLE.read_text()
    assert "timm" not in source.replace("(no timm)", "")  # a plain-torch model
    root = segfungi.write_demo_dataset(tmp_path / "data", layout="voc", n_images=10, n_val=3, seed=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(EXAMPLE), str(root), "--image-size", "64", "--bank-size", "448",
                          "--out", str(tmp_path / "banks")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(results) == {"embeddings", "fungi"} and all(0 <= v <= 1 for v in results.values())
    assert (tmp_path / "banks" / "fungi" / "support" / "manifest.json").is_file()


def test_a_whole_model_fungi_bank_equals_the_split_one(custom_banks, tmp_path):
    """No split: no last-block cache (nothing to cache), and the bank's features are the
    split bank's when that one is built without the float16 cache too."""
    model, train = custom_banks["model"], custom_banks["train"]
    banks = {}
    for split, cache in ((False, True), (True, False)):
        settings = segfungi.load_config(overrides=[{"bank": {"features": "fungi", "size": 96, "shard_images": 4,
                                                             "cache_last_block_input": cache}}])
        banks[split] = segfungi.MemoryBank(segfungi.build_bank(settings, tmp_path / f"split-{split}",
                                                               backbone=wrap(model, split), dataset=train,
                                                               progress=False))
    assert banks[False].manifest["identity"]["support"]["last_block_input"] == "float32"
    np.testing.assert_array_equal(banks[False].load("provenance"), banks[True].load("provenance"))
    np.testing.assert_allclose(banks[False].load_features().astype(np.float32),
                               banks[True].load_features().astype(np.float32), atol=2e-3)
