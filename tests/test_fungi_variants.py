"""FUNGI variants and negatives (issue 14): the research-code loss and gather against
hand-written references, raw vs normalised negatives against per-token autograd,
negatives seeded from the image (eval at any batch size = predict), exact
self-exclusion, and DINOv2 backbones from the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import SUPPORT_DIR, MemoryBank, SupportIndex
from segfungi.components import index_settings, support_spec
from segfungi.families import load_backbone
from segfungi.features import FeatureExtractor
from segfungi.gradients import l2_normalize
from segfungi.infra.errors import BankError, ConfigError
from segfungi.ops.negatives import keep_one, research_code_negatives, scrambled_gather
from segfungi.ops.seg_loss import naive_research_code_loss, naive_seg_simclr_loss, seg_simclr_loss

TINY = dict(depth=2, embed_dim=32, num_heads=2)


# ------------------------------------------------------------------ research-code loss
def test_research_code_loss_equals_a_naive_loop_of_its_formula():
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    z_neg = l2_normalize(torch.randn(3, 10, 8, generator=gen, dtype=torch.float64))
    mask = torch.rand(3, 10, generator=gen) < 0.5
    mask[2] = False  # an image whose negatives were all dropped
    z_pos = l2_normalize(raw)  # on the sphere in both, so the gradients w.r.t. raw compare
    fast = seg_simclr_loss(z_pos, z_neg, 0.07, neg_mask=mask, tau_in_denominator=False)
    (fast_grad,) = torch.autograd.grad(fast.sum(), raw)
    slow = naive_research_code_loss(l2_normalize(raw), [neg[m] for neg, m in zip(z_neg, mask)], 0.07)
    (slow_grad,) = torch.autograd.grad(slow.sum(), raw)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-10, atol=1e-10)
    # It is not the paper's loss; the paper's loss with a mask is its loss on the kept rows.
    z_pos = z_pos.detach()
    assert not torch.allclose(fast, seg_simclr_loss(z_pos, z_neg, 0.07, neg_mask=mask))
    paper = seg_simclr_loss(z_pos, z_neg, 0.07, neg_mask=mask)
    for b in range(3):
        expected = naive_seg_simclr_loss(z_pos[b : b + 1], z_neg[b : b + 1, mask[b]], 0.07)
        torch.testing.assert_close(paper[b : b + 1], expected, rtol=1e-10, atol=1e-10)


def test_scrambled_gather_on_a_hand_built_block():
    # K = 3 neighbours of D = 2: a = (1, 2), b = (3, 4), c = (5, 6); the block laid end to
    # end is [1 2 3 4 5 6]; read as D×K = [[1 2 3], [4 5 6]] and transposed, the rows are
    # (1, 4), (2, 5), (3, 6): "negative" j has coordinate e = block[e·K + j].
    neighbours = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert scrambled_gather(neighbours, 3).tolist() == [[1, 4], [2, 5], [3, 6]]
    assert scrambled_gather(neighbours, 2).tolist() == [[1, 4], [2, 5]]
    # The same element-wise on a random block with leading dims.
    block = torch.randn(2, 4, 5, 7)  # B×M×K×D
    out = scrambled_gather(block, 3)
    flat = block.reshape(2, 4, 35)
    for j in range(3):
        for e in range(7):
            assert torch.equal(out[:, :, j, e], flat[:, :, e * 5 + j])


def test_research_code_negatives_keep_rows_per_image():
    candidates = torch.randn(2, 300, 5, 4)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    negatives, mask = research_code_negatives(candidates, 2, 0.5, gens)
    assert negatives.shape == (2, 600, 4) and mask.shape == (2, 600) and mask.dtype == torch.bool
    assert 0.4 < mask.float().mean() < 0.6
    torch.testing.assert_close(negatives.reshape(2, 300, 2, 4), scrambled_gather(candidates, 2), rtol=0, atol=0)
    # Per-image generators: image 1 alone gets the rows it got in the batch.
    alone, alone_mask = research_code_negatives(candidates[1:], 2, 0.5, [torch.Generator().manual_seed(8)])
    assert torch.equal(alone_mask[0], mask[1]) and torch.equal(alone[0], negatives[1])
    # And the paper's 1-of-K choice likewise.
    kept = keep_one(candidates, [torch.Generator().manual_seed(s) for s in (7, 8)])
    assert torch.equal(keep_one(candidates[1:], [torch.Generator().manual_seed(8)])[0], kept[1])


def test_variant_settings_are_checked():
    bb = load_backbone("vit_small_patch14_reg4_dinov2", model_kwargs=TINY, img_size=56)
    with pytest.raises(ConfigError, match="research-code"):
        FeatureExtractor(bb, features="fungi", variant="research-code", negatives="raw")
    with pytest.raises(ConfigError, match="research_code_kept"):
        FeatureExtractor(bb, features="fungi", variant="research-code", research_code_kept=6)
    with pytest.raises(ConfigError, match="fungi.negatives"):
        FeatureExtractor(bb, features="fungi", negatives="unit")
    ident = {v: FeatureExtractor(bb, features="fungi", variant=v).identity() for v in ("paper", "research-code")}
    assert ident["paper"]["variant"] == "paper" and ident["paper"]["negatives"] == "normalised"
    assert ident["research-code"]["research_code_kept"] == 5 and ident["research-code"]["loss"] != ident["paper"]["loss"]
    # paper + raw (the only pass before these settings) names neither, so old banks keep their hash
    assert "variant" not in FeatureExtractor(bb, features="fungi", negatives="raw").identity()


# ------------------------------------------------------- raw vs normalised, slow reference
class PerTokenLinear(torch.nn.Module):
    """attn.proj with one copy of W, b per token: autograd's gradient of copy t is token t's."""

    def __init__(self, linear, tokens):
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().expand(tokens, -1, -1).clone())
        self.bias = torch.nn.Parameter(linear.bias.detach().expand(tokens, -1).clone())

    def forward(self, a):
        return torch.einsum("toi,bti->bto", self.weight, a) + self.bias


def _slow_features(fe, x, loss_of):
    """Per-token autograd through timm's own forward; `loss_of(z_pos)` builds the loss."""
    model, prefix = fe.backbone.model, fe.backbone.num_prefix_tokens
    original = model.blocks[-1].attn.proj
    tokens_total = prefix + fe.backbone.num_patches
    model.blocks[-1].attn.proj = per_token = PerTokenLinear(original, tokens=tokens_total)
    try:
        tokens = model.forward_features(x)
        positives = torch.cat([tokens[:, :1], tokens[:, prefix:]], dim=1)  # CLS + patches
        loss_of(l2_normalize(fe.head(positives))).sum().backward()
    finally:
        model.blocks[-1].attn.proj = original
    grads = torch.cat([per_token.weight.grad, per_token.bias.grad.unsqueeze(-1)], dim=-1)[prefix:]
    projected = grads.reshape(fe.backbone.num_patches, -1).double() @ fe.projection.dense_matrix().T
    return torch.cat([l2_normalize(projected).float(), l2_normalize(tokens.detach()[0, prefix:])], dim=-1)


@pytest.fixture(scope="module")
def small14():
    return load_backbone("vit_small_patch14_reg4_dinov2", model_kwargs=TINY, img_size=56)  # 16 patches


def _neighbours(fe, x, k, seed=0):
    """Raw tokens of other random images as the K neighbours of each of the 17 loss tokens."""
    rng = np.random.default_rng(seed + 100)
    other = rng.integers(0, 256, (3, 56, 56, 3), dtype=np.uint8)
    pool = fe.embeddings(other, normalize=False).reshape(-1, fe.backbone.embed_dim)
    pick = torch.randint(len(pool), (1, 17, k), generator=torch.Generator().manual_seed(seed))
    return pool[pick]


def test_raw_and_normalised_negatives_differ_and_each_matches_a_slow_reference(small14):
    x = small14.prepare(np.random.default_rng(3).integers(0, 256, (1, 56, 56, 3), dtype=np.uint8))
    feats = {}
    for space in ("raw", "normalised"):
        fe = FeatureExtractor(small14, features="fungi", proj_seed=1, head_seed=2, negatives=space)
        raw = _neighbours(fe, x, 1)[:, :, 0]  # one per token: nothing left to chance
        given = raw if space == "raw" else l2_normalize(raw)
        feats[space] = fe.fungi(x, given).features[0]
        expected = _slow_features(fe, x, lambda z_pos: seg_simclr_loss(z_pos, l2_normalize(fe.head(given)), 0.07))
        torch.testing.assert_close(feats[space], expected, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="fungi.negatives"):  # the other space is refused
            fe.fungi(x, l2_normalize(raw) if space == "raw" else raw)
    grad_cos = (l2_normalize(feats["raw"][:, :32]) * l2_normalize(feats["normalised"][:, :32])).sum(-1)
    assert grad_cos.mean() < 0.99  # the gradient parts differ
    torch.testing.assert_close(feats["raw"][:, 32:], feats["normalised"][:, 32:])  # the embeddings do not


def test_research_code_features_match_a_slow_reference(small14):
    x = small14.prepare(np.random.default_rng(4).integers(0, 256, (1, 56, 56, 3), dtype=np.uint8))
    fe = FeatureExtractor(small14, features="fungi", proj_seed=1, head_seed=2, variant="research-code",
                          research_code_neighbours=5, research_code_kept=3)
    neighbours = l2_normalize(_neighbours(fe, x, 5, seed=1))  # 1×17×5×D, unit rows
    out = fe.fungi(x, neighbours, generator=[torch.Generator().manual_seed(11)])
    # By hand: the block of each token, scrambled element by element, 3 rows, dropout draws.
    rows = []
    for t in range(17):
        block = neighbours[0, t].reshape(-1)
        rows += [torch.stack([block[e * 5 + j] for e in range(32)]) for j in range(3)]
    keep = torch.rand(17 * 3, generator=torch.Generator().manual_seed(11)) <= 0.5
    kept_rows = torch.stack(rows)[keep]
    expected = _slow_features(fe, x, lambda z_pos: naive_research_code_loss(
        z_pos, [l2_normalize(fe.head(kept_rows))], 0.07))
    torch.testing.assert_close(out.features[0], expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------- defect 1: query seeds from pixels
def _record(monkeypatch, cls, name, store):
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        store.append(result)
        return result

    monkeypatch.setattr(cls, name, wrapper)


def test_eval_features_do_not_depend_on_batch_size_and_predict_agrees(fungi_bank, demo_voc_root, monkeypatch):
    from segfungi.components import open_dataset
    from segfungi.inference.evaluation import evaluate
    from segfungi.inference.predict import predict_images
    from segfungi.inference.segmenter import Segmenter
    from segfungi.inference.transfer import scores_to_mask

    runs = {}
    for batch_size in (1, 3):
        feats, scores = [], []
        with monkeypatch.context() as m:
            _record(m, Segmenter, "patch_features", feats)
            _record(m, Segmenter, "predict_scores", scores)
            settings = tiny_settings(demo_voc_root, eval={"batch_size": batch_size, "max_images": 3})
            results = evaluate(fungi_bank, settings, progress=False)
        runs[batch_size] = (torch.cat(feats), torch.cat(scores), results["miou"])
    assert torch.equal(runs[1][0], runs[3][0])  # bit-identical FUNGI features
    assert torch.equal(runs[1][1], runs[3][1]) and runs[1][2] == runs[3][2]
    # predict on the validation image file: the mask eval computed for it.
    dataset = open_dataset(tiny_settings(demo_voc_root), "val")
    image_file = dataset.files(dataset.ids[0]).image
    mask = predict_images(fungi_bank, [image_file])[0]
    expected = scores_to_mask(runs[1][1][:1], out_size=mask.shape)[0]
    np.testing.assert_array_equal(mask, expected)



def test_a_batch_out_of_memory_is_scored_in_halves_with_the_same_miou(fungi_bank, demo_voc_root, monkeypatch,
                                                                        capsys):
    """A device that can score only one image at a time: every batch of 3 is split (3 -> 2 + 1
    -> 1 + 1 + 1) and the evaluation gives the results of one that never ran out."""
    from segfungi.inference.evaluation import evaluate
    from segfungi.inference.segmenter import Segmenter

    settings = tiny_settings(demo_voc_root, eval={"batch_size": 3, "max_images": 3})
    expected = evaluate(fungi_bank, settings, progress=False)
    original, sizes = Segmenter.predict_scores, []

    def one_at_a_time(self, images):
        sizes.append(len(images))
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, images)

    monkeypatch.setattr(Segmenter, "predict_scores", one_at_a_time)
    results = evaluate(fungi_bank, settings, progress=False)
    assert sizes == [3, 2, 1, 1, 1]
    assert results["miou"] == expected["miou"] and results["per_class_iou"] == expected["per_class_iou"]
    said = capsys.readouterr().err
    assert "out of memory on a batch of 3 images; computing 2 and 1 apart" in said and "eval.batch_size" in said


def test_a_fungi_build_out_of_memory_is_done_in_halves_with_the_same_bytes(fungi_bank, demo_voc_root, tmp_path,
                                                                            monkeypatch):
    """The gradient pass of a build that can take only one image at a time: every batch is
    split, and the bank's shards are byte for byte those of the build that never ran out."""
    original, sizes = FeatureExtractor.kept_gradients, []

    def one_at_a_time(self, last_block_input, *args, **kwargs):
        sizes.append(len(last_block_input))
        if len(last_block_input) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, last_block_input, *args, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "kept_gradients", one_at_a_time)
    settings = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"})
    halved = build_bank(settings, tmp_path / "halved", progress=False)
    assert {4, 2, 1} <= set(sizes)  # bank.batch_size 4, split twice
    assert [s["checksums"] for s in MemoryBank(halved).shards] == [s["checksums"] for s in MemoryBank(fungi_bank).shards]


def test_out_of_memory_on_one_image_is_raised_as_it_is():
    from segfungi.infra.memory import in_halves_when_out_of_memory

    def never(images, seeds):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        in_halves_when_out_of_memory(never, torch.cat, np.zeros((1, 4, 4, 3)), np.zeros(1), setting="eval.batch_size")
    joined = in_halves_when_out_of_memory(lambda x, seeds: torch.as_tensor(x) if len(x) < 3 else never(x, seeds),
                                          torch.cat, np.arange(5.0), np.arange(5), setting="eval.batch_size")
    assert joined.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]

# ------------------------------------------------------ defect 2: exact self-exclusion
def _foreign_brute_force(support, tokens, image):
    """The exact top-K cosine neighbours among the support rows of other images."""
    rows = torch.from_numpy(np.asarray(support.bank.feature_rows()[0 : len(support.tokens)], np.float32))
    sims = l2_normalize(tokens.float()) @ l2_normalize(rows).T
    sims[:, support.source_image == image] = -torch.inf
    return sims.topk(support.k, dim=1)


def test_build_with_all_patches_kept_never_uses_own_patches(tmp_path, demo_voc_root, monkeypatch):
    # 3 training images, 2 augmentation epochs, all 1024 patches of each view kept:
    # 2048 own patches per image, far beyond the first search's margin of 64.
    settings = tiny_settings(demo_voc_root, data={"subset_fraction": 0.25},
                             bank={"size": 3 * 2 * 1024, "aug_epochs": 2, "features": "fungi"},
                             fungi={"proj_dim": 8})
    seen = []

    def recording(self, tokens, image_ids=None):
        ids = original(self, tokens, image_ids)
        seen.append((ids.clone(), list(image_ids) if image_ids is not None else None))
        return ids

    original = SupportIndex.neighbour_ids
    monkeypatch.setattr(SupportIndex, "neighbour_ids", recording)
    out = build_bank(settings, tmp_path / "bank", progress=False)
    support = SupportIndex(out / SUPPORT_DIR, support_spec(settings), index_settings(settings))
    assert MemoryBank(out).manifest["patches_per_image"] == 1024 and int(support.own_count.max()) == 2048
    assert seen and all(images is not None for _, images in seen)
    checked = 0
    for ids, images in seen:
        assert (ids >= 0).all()
        source = support.source_image[ids].long()  # provenance: source image of each neighbour
        owner = torch.as_tensor(images)[:, None, None]
        assert (source != owner).all()
        checked += ids.numel()
    assert checked == 6 * 1025 * 2


def test_exclusion_with_a_1024_own_patch_image_equals_brute_force(tmp_path, demo_voc_root, monkeypatch):
    settings = tiny_settings(demo_voc_root, data={"subset_fraction": 0.25},
                             bank={"size": 3 * 1024, "features": "embeddings"})
    out = build_bank(settings, tmp_path / "support", progress=False, features="embeddings")
    support = SupportIndex(out, support_spec(settings), index_settings(settings))
    image = 1
    own = torch.nonzero(support.source_image == image).squeeze(1)
    assert len(own) == 1024
    tokens = support.tokens[own].float()  # the image's own stored tokens: each is its own nearest row
    ids = support.neighbour_ids(tokens[None], [image])[0]
    assert (support.source_image[ids] != image).all()
    sims, expected = _foreign_brute_force(support, tokens, image)
    agree = (ids == expected).all(dim=1)
    # Ties between float16 rows may order equal candidates differently; the similarities agree.
    rows = torch.from_numpy(np.asarray(support.bank.feature_rows()[0 : len(support.tokens)], np.float32))
    found = (l2_normalize(tokens)[:, None, :] * l2_normalize(rows[ids])).sum(-1)
    torch.testing.assert_close(found[~agree], sims[~agree], rtol=1e-5, atol=1e-5)
    assert agree.float().mean() > 0.99
    # An index that returns too few rows (as an approximate one can) falls back to the exact search.
    real_search = support.index.search

    def sparse(queries, k):
        s, i = real_search(queries, k)
        i[:, 1:] = -1
        return s, i

    monkeypatch.setattr(support.index, "search", sparse)
    fallback = support.neighbour_ids(tokens[None, :40], [image])[0]
    assert torch.equal(fallback, support.exact_foreign_ids(l2_normalize(tokens[:40]).numpy(),
                                                          torch.full((40,), image)))
    assert (support.source_image[fallback] != image).all()


def test_support_with_fewer_foreign_patches_than_k_is_refused(tmp_path, demo_voc_root):
    settings = tiny_settings(demo_voc_root, data={"subset_fraction": 0.05}, bank={"size": 64})
    out = build_bank(settings, tmp_path / "one", progress=False, features="embeddings")
    assert MemoryBank(out).manifest["identity"]["dataset"]["num_images"] == 1
    with pytest.raises(BankError, match="fewer than the 2 neighbours"):
        SupportIndex(out, support_spec(settings), index_settings(settings))


# --------------------------------------------------------- defect 3: DINOv2 from the CLI
@pytest.mark.parametrize("backbone, prefix", [("vit_small_patch14_dinov2", 1), ("vit_small_patch14_reg4_dinov2", 5)])
def test_dinov2_build_and_eval_from_the_cli_without_size_flags(tmp_path, demo_voc_root, capsys, backbone, prefix):
    from segfungi.cli import main

    out = tmp_path / "bank"
    shrink = ["--set", "data.subset_fraction=0.17", "--set", "fungi.proj_dim=8", "--set", "bank.batch_size=2"]
    code = main(["build-bank", "--root", str(demo_voc_root), "--random-init", "--backbone", backbone,
                 "--features", "fungi", "--bank-size", "128", "--out", str(out), "--quiet", *shrink])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    ident = manifest["identity"]
    assert ident["extractor"]["backbone"]["img_size"] == 448 and ident["sampling"]["image_size"] == 448
    assert ident["extractor"]["backbone"]["num_prefix_tokens"] == prefix
    assert manifest["settings"]["data"]["image_size"] is None  # still the default: follows the backbone
    code = main(["eval", "--bank", str(out), "--max-images", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "mIoU" in captured.out
