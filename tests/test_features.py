"""FeatureExtractor: embeddings and FUNGI patch features end to end."""
import numpy as np
import pytest
import torch
from torch import nn

from segfungi.families import load_backbone
from segfungi.features import FeatureExtractor
from segfungi.gradients import l2_normalize
from segfungi.ops.seg_loss import seg_simclr_loss

TINY = dict(depth=2, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def reg14():
    """Patch-14 ViT with 4 registers at its default 448² (32×32 grid), tiny widths."""
    return load_backbone("vit_small_patch14_reg4_dinov2", model_kwargs=TINY)


def _images(backbone, batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, backbone.img_size, backbone.img_size, 3), dtype=np.uint8)


def _raw_negatives(extractor, x, neighbours=2, seed=0):
    """Plausible raw neighbours: other images' raw tokens, shuffled per image."""
    raw = extractor.embeddings(x, normalize=False)  # B×P×D
    batch, patches, dim = raw.shape
    gen = torch.Generator().manual_seed(seed)
    pool = raw.reshape(-1, dim)
    pick = torch.randint(len(pool), (batch, patches + 1, neighbours), generator=gen)
    return pool[pick]  # B×(P+1)×K×D


def test_fungi_shapes_vit_tiny_at_512():
    bb = load_backbone("vit_tiny_patch16_224")  # the real ViT-Ti/16 at 512²
    fe = FeatureExtractor(bb, features="fungi", negatives="raw")
    x = bb.prepare(_images(bb, 1))
    out = fe.fungi(x, _raw_negatives(fe, x))
    assert fe.feature_dim == 384
    assert len(out.features) == 1 and out.features[0].shape == (1024, 384)
    assert out.features[0].dtype == torch.float32 and out.embeddings.shape == (1, 1024, 192)
    grad_part, emb_part = out.features[0][:, :192], out.features[0][:, 192:]
    torch.testing.assert_close(grad_part.norm(dim=-1), torch.ones(1024))
    torch.testing.assert_close(emb_part, out.embeddings[0])
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(1, 1024))
    assert torch.isfinite(out.losses).all() and out.losses.shape == (1,)


def test_fungi_patch14_registers_subset_batching_and_determinism(reg14):
    fe = FeatureExtractor(reg14, features="fungi", proj_seed=3, negatives="raw")
    x = reg14.prepare(_images(reg14, 2))
    negatives = _raw_negatives(fe, x)
    seen = {}

    def retrieve(tokens):
        seen["shape"] = tuple(tokens.shape)
        seen["grad"] = tokens.requires_grad
        return negatives

    full = fe.fungi(x, retrieve, generator=torch.Generator().manual_seed(5))
    assert seen == {"shape": (2, 1025, 32), "grad": False}  # CLS + 1024 patches, registers left out
    assert [f.shape for f in full.features] == [(1024, 64), (1024, 64)]
    assert full.embeddings.shape == (2, 1024, 32)

    # the tensor form with the same generator seed gives the same features
    again = fe.fungi(x, negatives, generator=torch.Generator().manual_seed(5))
    for a, b in zip(full.features, again.features):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # another choice of kept neighbours changes the gradient part
    other = fe.fungi(x, negatives, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(other.features[0][:, :32], full.features[0][:, :32])

    # only the requested patches are projected, with the same values
    index = [torch.tensor([0, 31, 500, 1023]), torch.tensor([7])]
    subset = fe.fungi(x, negatives, patch_index=index, generator=torch.Generator().manual_seed(5))
    for feats, whole, idx in zip(subset.features, full.features, index):
        torch.testing.assert_close(feats, whole[idx], rtol=1e-5, atol=1e-6)

    # images do not interact: image 1 alone equals image 1 in the batch (same kept neighbours)
    gen = torch.Generator().manual_seed(5)
    choice_rows = torch.randint(2, (2, 1025), generator=gen)
    kept = negatives.gather(2, choice_rows[:, :, None, None].expand(-1, -1, 1, 32)).squeeze(2)
    alone = fe.fungi(x[1:], kept[1:])
    torch.testing.assert_close(alone.features[0], full.features[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.losses, full.losses[1:], rtol=1e-5, atol=1e-6)


class PerTokenLinear(nn.Module):
    """Stand-in for attn.proj with its own copy of W, b per token: autograd's gradient of
    copy t is, by definition, token t's gradient (B = 1)."""

    def __init__(self, linear, tokens):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().expand(tokens, -1, -1).clone())
        self.bias = nn.Parameter(linear.bias.detach().expand(tokens, -1).clone())

    def forward(self, a):
        return torch.einsum("toi,bti->bto", self.weight, a) + self.bias


def test_fungi_features_equal_brute_force_per_token_gradients():
    # registers on, tiny grid: 1 CLS + 4 registers + 16 patches = 21 tokens
    bb = load_backbone("vit_small_patch14_reg4_dinov2", model_kwargs=TINY, img_size=56)
    fe = FeatureExtractor(bb, features="fungi", proj_seed=1, head_seed=2, negatives="raw")
    x = bb.prepare(_images(bb, 1, seed=3))
    negatives = _raw_negatives(fe, x)[:, :, 0]  # one per token: nothing left to chance
    out = fe.fungi(x, negatives)

    # Independent route: timm's own forward, per-token weight copies, the loss by hand.
    model = bb.model
    original = model.blocks[-1].attn.proj
    model.blocks[-1].attn.proj = per_token = PerTokenLinear(original, tokens=21)
    try:
        tokens = model.forward_features(x)
        positives = torch.cat([tokens[:, :1], tokens[:, 5:]], dim=1)  # CLS + patches, no registers
        z_pos, z_neg = l2_normalize(fe.head(positives)), l2_normalize(fe.head(negatives))
        seg_simclr_loss(z_pos, z_neg, 0.07).sum().backward()
    finally:
        model.blocks[-1].attn.proj = original
    grads = torch.cat([per_token.weight.grad, per_token.bias.grad.unsqueeze(-1)], dim=-1)[5:]  # patches only
    projected = grads.reshape(16, -1).double() @ fe.projection.dense_matrix().T
    expected = torch.cat([l2_normalize(projected).float(), l2_normalize(tokens.detach()[0, 5:])], dim=-1)
    torch.testing.assert_close(out.features[0], expected, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_cached_last_block_input_gives_the_same_features(reg14):
    fe = FeatureExtractor(reg14, features="fungi", proj_dim=8, negatives="raw")
    x = reg14.prepare(_images(reg14, 1))
    negatives = _raw_negatives(fe, x)
    hidden = fe.last_block_input(x)
    assert hidden.shape == (1, 1029, 32) and not hidden.requires_grad
    torch.testing.assert_close(fe.embeddings_from_last_block_input(hidden), fe.embeddings(x), rtol=0, atol=0)
    index = [torch.tensor([4, 8, 15, 16, 23, 42])]
    direct = fe.fungi(x, negatives, patch_index=index)
    cached = fe.fungi_from_last_block_input(hidden, negatives, patch_index=index)
    torch.testing.assert_close(cached.features[0], direct.features[0], rtol=0, atol=0)
    from_half = fe.fungi_from_last_block_input(hidden.half(), negatives, patch_index=index)  # as stored on disk
    assert from_half.features[0].dtype == torch.float32
    cosine = (from_half.features[0] * direct.features[0]).sum(-1) / 2  # both halves unit-norm
    assert cosine.min() > 0.99


def test_embeddings_and_input_forms(reg14):
    fe = FeatureExtractor(reg14)
    images = _images(reg14, 2)
    emb = fe.embeddings(images)  # uint8 numpy goes through prepare
    raw = reg14.model.forward_features(reg14.prepare(images))[:, 5:]
    torch.testing.assert_close(emb, l2_normalize(raw))
    torch.testing.assert_close(fe.embeddings(reg14.prepare(images), normalize=False), raw)
    assert fe.feature_dim == 32
    ident = fe.identity()
    assert ident["kind"] == "embeddings" and ident["backbone"] == reg14.identity() and "projection" not in ident
    fungi = FeatureExtractor(reg14, features="fungi", proj_dim=16, proj_seed=4, head_seed=5, projection="structured")
    ident = fungi.identity()
    assert ident["projection"]["kind"] == "structured" and ident["projection"]["seed"] == 4
    assert ident["head_seed"] == 5 and ident["feature_dim"] == 48 and ident["tau"] == 0.07
    with pytest.raises(ValueError, match="features must be one of"):
        FeatureExtractor(reg14, features="gradients")


def test_fungi_input_checks(reg14):
    fe = FeatureExtractor(reg14, features="fungi", proj_dim=8, projection="structured", negatives="raw")
    x = reg14.prepare(_images(reg14, 1))
    negatives = _raw_negatives(fe, x)
    out = fe.fungi(x, negatives, patch_index=[torch.tensor([1, 2])])
    assert out.features[0].shape == (2, 40)
    with pytest.raises(ValueError, match="L2-normalised"):
        fe.fungi(x, l2_normalize(negatives))
    with pytest.raises(ValueError, match="B×M×K×D"):
        fe.fungi(x, negatives[..., :5])
    with pytest.raises(ValueError, match="0..1023"):
        fe.fungi(x, negatives, patch_index=[torch.tensor([1024])])
    with pytest.raises(ValueError, match="entries"):
        fe.fungi(x, negatives, patch_index=[torch.tensor([1]), torch.tensor([2])])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        fe.fungi(x, negatives)


def test_full_float32_turns_tf32_off_on_a_gpu_only_and_restores_it():
    """On a GPU, cuDNN's TF32 (on by default in torch) would compute the float32 patch
    embedding with 10-bit mantissas; features are computed with it off."""
    from segfungi.backbones import full_float32

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        with full_float32("cuda"):
            assert not cudnn.allow_tf32 and not matmul.allow_tf32
        assert cudnn.allow_tf32 and matmul.allow_tf32
        with full_float32("cpu"):
            assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before
