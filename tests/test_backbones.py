"""Backbones: splitting, resizing, sources of weights, and checkpoint errors."""
import argparse
import os

import numpy as np
import pytest
import safetensors.torch
import torch

from segfungi.families import load_backbone
from segfungi.infra.errors import CheckpointError, ConfigError

# Small variants of registered names (timm accepts architecture overrides) keep files tiny.
TINY16 = dict(name="vit_tiny_patch16_224", model_kwargs=dict(depth=2, embed_dim=32, num_heads=2))
TINY14_REG = dict(name="vit_small_patch14_reg4_dinov2", model_kwargs=dict(depth=2, embed_dim=32, num_heads=2))


def _images(backbone, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, backbone.img_size, backbone.img_size, 3), dtype=np.uint8)


def _outputs(backbone, x):
    return backbone.forward_last_block(backbone.forward_until_last_block(x))


def test_vit_tiny_at_512_splits_like_timm_forward():
    bb = load_backbone("vit_tiny_patch16_224")  # the real registered ViT-Ti/16, random init
    assert (bb.img_size, bb.patch_size, bb.grid, bb.embed_dim, bb.num_prefix_tokens) == (512, 16, (32, 32), 192, 1)
    x = bb.prepare(_images(bb, batch=1))
    assert x.shape == (1, 3, 512, 512) and x.dtype == torch.float32
    tokens = _outputs(bb, x)
    assert tokens.shape == (1, 1025, 192)
    torch.testing.assert_close(tokens, bb.model.forward_features(x), rtol=0, atol=0)
    assert bb.grad_layer is bb.model.blocks[-1].attn.proj
    assert not bb.model.training
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert not bb.forward_until_last_block(x).requires_grad


def test_patch14_with_registers_defaults_to_448_and_drops_prefix():
    bb = load_backbone(**TINY14_REG)
    assert (bb.img_size, bb.patch_size, bb.grid, bb.num_prefix_tokens) == (448, 14, (32, 32), 5)
    x = bb.prepare(_images(bb, batch=1))
    tokens = _outputs(bb, x)
    assert tokens.shape == (1, 1029, 32)
    torch.testing.assert_close(tokens, bb.model.forward_features(x))
    torch.testing.assert_close(bb.patch_embeddings(x), tokens[:, 5:], rtol=0, atol=0)
    assert bb.patch_embeddings(x).shape == (1, 1024, 32)
    ident = bb.identity()
    assert ident["grad_layer"] == "blocks.1.attn.proj" and ident["img_size"] == 448
    assert ident["model_kwargs"] == TINY14_REG["model_kwargs"]


def test_img_size_override_and_divisibility():
    assert load_backbone(**TINY16, img_size=64).grid == (4, 4)
    with pytest.raises(ConfigError, match="500.*patch size 16"):
        load_backbone(**TINY16, img_size=500)
    with pytest.raises(ConfigError, match="no_such_vit"):
        load_backbone("no_such_vit_patch16")
    with pytest.raises(ConfigError, match="VisionTransformer"):
        load_backbone("resnet18")


def test_prepare_normalises_with_pretrained_cfg_and_checks_size():
    bb = load_backbone("vit_small_patch16_224.dino", model_kwargs=dict(depth=1, embed_dim=32, num_heads=2), img_size=32)
    assert bb.mean == pytest.approx((0.485, 0.456, 0.406)) and bb.std == pytest.approx((0.229, 0.224, 0.225))
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[..., 0] = 255
    x = bb.prepare(img)
    assert x[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229)
    assert x[0, 2, 5, 5].item() == pytest.approx(-0.406 / 0.225)
    torch.testing.assert_close(bb.prepare(torch.from_numpy(img[0])), x)  # single H×W×3 tensor
    with pytest.raises(ConfigError, match="48×48"):
        bb.prepare(np.zeros((1, 48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        bb.prepare(np.zeros((1, 32, 32, 3), np.float32))


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = load_backbone(**TINY16, img_size=64, init_seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = load_backbone(**TINY16, img_size=64, init_seed=3)
    c = load_backbone(**TINY16, img_size=64, init_seed=4)
    assert torch.equal(a.model.blocks[0].attn.qkv.weight, b.model.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.model.blocks[0].attn.qkv.weight, c.model.blocks[0].attn.qkv.weight)
    assert a.identity() == b.identity() != c.identity()
    assert a.weights_id.startswith("random-init:seed=3:timm=")


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def source():
    """A random-init model at its native 224 size (what a real checkpoint holds) and the
    reference backbone at 128: the same weights, positional grid resampled by timm."""
    native = load_backbone(**TINY16, img_size=224, init_seed=7)
    reference = load_backbone(**TINY16, img_size=128, init_seed=7)
    x = reference.prepare(_images(reference, batch=2))
    return native.model.state_dict(), reference, x, _outputs(reference, x)


def _assert_loads_identically(path, source):
    _, reference, x, expected = source
    bb = load_backbone(**TINY16, img_size=128, weights=path, init_seed=99)  # seed must not matter
    torch.testing.assert_close(_outputs(bb, x), expected, rtol=0, atol=1e-6)
    assert bb.weights_id.startswith(f"file:{os.path.basename(path)}:sha256:")
    return bb


def test_timm_pth_and_safetensors_load_identically(tmp_path, source):
    state = source[0]
    torch.save(state, tmp_path / "timm.pth")
    _assert_loads_identically(tmp_path / "timm.pth", source)
    safetensors.torch.save_file(state, tmp_path / "w.safetensors")
    _assert_loads_identically(tmp_path / "w.safetensors", source)
    # detection by content, not by extension
    safetensors.torch.save_file(state, tmp_path / "weights.bin")
    _assert_loads_identically(tmp_path / "weights.bin", source)
    # a timm training checkpoint wraps the weights (and may carry a classifier head)
    torch.save({"state_dict": {**state, "head.weight": torch.zeros(10, 32)}, "epoch": 3}, tmp_path / "train.pth")
    _assert_loads_identically(tmp_path / "train.pth", source)


def test_original_dino_layouts_load_identically(tmp_path, source):
    state = source[0]
    dino_head = {"head.mlp.0.weight": torch.zeros(8, 32), "head.last_layer.weight_g": torch.ones(1, 4)}
    full = {
        "teacher": {**{f"backbone.{k}": v for k, v in state.items()}, **dino_head},
        "student": {**{f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()}},
        "args": argparse.Namespace(arch="vit_tiny", patch_size=16),
        "epoch": 100,
    }
    torch.save(full, tmp_path / "checkpoint.pth")
    _assert_loads_identically(tmp_path / "checkpoint.pth", source)  # the teacher, not the zeroed student
    student_only = {"student": {f"module.backbone.{k}": v for k, v in state.items()}}
    torch.save(student_only, tmp_path / "student.pth")
    _assert_loads_identically(tmp_path / "student.pth", source)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    _assert_loads_identically(tmp_path / "ddp.pth", source)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    wider = load_backbone("vit_tiny_patch16_224", model_kwargs=dict(depth=2, embed_dim=48, num_heads=2), img_size=224)
    torch.save(wider.model.state_dict(), tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match=r"wider\.pth.*shape mismatches:.*\(48"):
        load_backbone(**TINY16, weights=tmp_path / "wider.pth")
    deeper = load_backbone("vit_tiny_patch16_224", model_kwargs=dict(depth=3, embed_dim=32, num_heads=2), img_size=224)
    torch.save(deeper.model.state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match=r"deeper\.pth.*unexpected keys: blocks\.2\."):
        load_backbone(**TINY16, weights=tmp_path / "deeper.pth")
    patch14 = load_backbone(**TINY14_REG, img_size=224)
    torch.save(patch14.model.state_dict(), tmp_path / "patch14.pth")
    with pytest.raises(CheckpointError, match=r"patch14\.pth.*\(14, 14\) patches"):
        load_backbone(**TINY16, weights=tmp_path / "patch14.pth")


def test_incomplete_missing_and_garbage_checkpoints(tmp_path, source):
    state = dict(source[0])
    for key in [k for k in state if k.startswith("blocks.1.")]:
        del state[key]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial\.pth.*missing keys: blocks\.1\..*more"):
        load_backbone(**TINY16, weights=tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"nowhere\.pth.*not found"):
        load_backbone(**TINY16, weights=tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth"):
        load_backbone(**TINY16, weights=tmp_path / "junk.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth.*not a state dict"):
        load_backbone(**TINY16, weights=tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="not both"):
        load_backbone(**TINY16, weights=tmp_path / "partial.pth", pretrained=True)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _PlainObject:
    """An ordinary class instance: harmless, but still not allowed through the unpickler."""


def test_pickled_objects_are_never_unpickled(tmp_path, source):
    marker = tmp_path / "pwned"
    torch.save({**source[0], "payload": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth.*refused.*pickled"):
        load_backbone(**TINY16, weights=tmp_path / "evil.pth")
    assert not marker.exists()
    torch.save({"weights": source[0], "note": _PlainObject()}, tmp_path / "object.pth")
    with pytest.raises(CheckpointError, match=r"object\.pth.*refused"):
        load_backbone(**TINY16, weights=tmp_path / "object.pth")
