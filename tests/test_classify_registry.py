"""classify's registries (losses, modalities), the projection kinds it takes from
segfungi.gradients, its checkpoint loading through segfungi.backbones, and its
progress lines off a terminal."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_classify_gradients import _images, _List, _reference, _vit_full_embed  # the per-sample autograd reference

from segfungi.classify.audio import AudioFungi, SpectrogramViT
from segfungi.classify.image import ImageFungi
from segfungi.classify.losses import ClassifyLoss, get_loss, loss_names, register_loss, simclr_loss, unregister_loss
from segfungi.classify.modalities import get_modality, modality_names
from segfungi.classify.settings import defaults, load_settings
from segfungi.classify.text import TextFungi
from segfungi.cli import build_parser, main
from segfungi.families import load_backbone
from segfungi.infra.errors import CheckpointError, ConfigError
from segfungi.infra.progress import ProgressLines, progress_bar
from segfungi.ops.seg_loss import seg_simclr_loss

TINY = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)


def _fungi(losses, **extra):
    fungi = defaults("image")["fungi"]
    fungi.update(losses=losses, row_chunk=5, projection_batch=1, **extra)
    fungi["kl"].update(head_dim=24, proj_dim=16)
    fungi["simclr"].update(head_dim=16, negatives=2, stride_divisor=2, proj_dim=16)
    return fungi


def _backbone():
    return load_backbone("vit_tiny_patch16_224", img_size=32, model_kwargs=TINY)


def _check_against_autograd(ex, imgs, loss, split="train"):
    from segfungi.classify import augment

    out = ex.extract_batch(imgs, list(range(len(imgs))), [loss], split)
    for i, img in enumerate(imgs):
        p = ex._prepare(img)
        gen = augment.sample_generator(ex.view_seed, f"{loss}:{split}", i)
        rows = ex._loss_rows(loss, p, gen)
        torch.testing.assert_close(out[loss][i], _reference(ex, loss, rows, _vit_full_embed(ex)), atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------- losses


@pytest.fixture
def toy_loss():
    """A loss registered for one test: squared norm of a head output on the evaluation view."""

    def value(heads, cfg, emb, negatives):
        return float(cfg["scale"]) * heads["toy"](emb[:, 0]).pow(2).sum(-1)

    spec = register_loss(ClassifyLoss("toy", view="eval", heads=(("toy", 7),), value=value))
    yield spec
    unregister_loss("toy")


def test_a_new_loss_is_one_registration(toy_loss):
    assert loss_names()[-1] == "toy"
    # on the evaluation view: every modality offers it
    for cls in (ImageFungi, TextFungi, AudioFungi):
        assert "toy" in cls.supported_losses()
    fungi = _fungi(["kl", "toy"])
    fungi["toy"] = {"head_dim": 12, "proj_dim": 16, "scale": 0.5}
    ex = ImageFungi(_backbone(), fungi)
    assert set(ex.heads) == {"kl", "toy"}
    imgs = _images(3)
    _check_against_autograd(ex, imgs, "toy")
    feats = ex.extract(_List(imgs), ["embedding", "kl", "toy"], split="train", batch_size=2)
    assert set(feats) == {"embedding", "kl", "toy"} and feats["toy"].shape == (3, 16)
    assert ex.source_identity("toy")["loss"]["scale"] == 0.5


def test_losses_on_a_view_recipe_follow_the_modalities():
    spec = register_loss(ClassifyLoss("crops", view="dino", heads=(("crops", 21),), value=lambda *a: None))
    try:
        assert "crops" in ImageFungi.supported_losses()
        assert "crops" not in TextFungi.supported_losses() and "crops" not in AudioFungi.supported_losses()
    finally:
        unregister_loss(spec.name)
    assert TextFungi.supported_losses() == ("kl", "simclr") == AudioFungi.supported_losses()
    assert ImageFungi.supported_losses() == ("kl", "dino", "simclr")


def test_registry_refuses_duplicates_and_names_the_known_ones():
    with pytest.raises(ValueError, match="already registered"):
        register_loss(get_loss("kl"))
    with pytest.raises(ValueError, match="'embedding' is reserved"):
        register_loss(ClassifyLoss("embedding", view="eval", heads=(), value=lambda *a: None))
    with pytest.raises(ConfigError, match=r"unknown classify loss 'vicreg' \(choose from kl, dino, simclr\)"):
        get_loss("vicreg")
    assert modality_names() == ("image", "text", "audio")
    with pytest.raises(ConfigError, match=r"unknown classify modality 'video' \(choose from image, text, audio\)"):
        load_settings("video")
    assert get_modality("text").extractor_class() is TextFungi


def test_a_registered_modality_is_a_classify_subcommand_with_its_schema_until_unregistered(monkeypatch):
    from segfungi import settings_schema
    from segfungi.classify.modalities import Modality, register_modality, unregister_modality

    def subcommands():
        try:
            build_parser().parse_args(["classify", "toy", "--k", "3"])
        except SystemExit:
            return False
        return True

    assert not subcommands()
    register_modality(Modality("toy", "toy inputs", "segfungi.classify.image:ImageFungi", lambda data: None,
                               lambda s, device: None))
    try:
        assert modality_names()[-1] == "toy" and subcommands()
        with pytest.raises(ConfigError, match="no settings are declared for classify modality 'toy'"):
            load_settings("toy")
        monkeypatch.setitem(settings_schema.CLASSIFY, "toy", settings_schema.CLASSIFY["image"])
        assert load_settings("toy", None, ["knn.k=3"])["knn"]["k"] == 3
    finally:
        unregister_modality("toy")
    assert not subcommands()


def test_settings_checks_come_from_the_registries():
    with pytest.raises(ConfigError, match=r"fungi.losses: 'dino' is not available for text \(choose from kl, simclr\)"):
        load_settings("text", None, [{"fungi": {"losses": ["dino"]}}])
    with pytest.raises(ConfigError, match=r"fungi.dino.local_scale must be \[low, high\]"):
        load_settings("image", None, ["fungi.dino.local_scale=[0.5, 0.1]"])
    with pytest.raises(ConfigError, match=r"'fungi\.projection' must be one of dense, structured, got 'bogus'"):
        load_settings("image", None, ["fungi.projection=bogus"])
    with pytest.raises(ConfigError, match="progress_interval"):
        load_settings("audio", None, ["run.progress_interval=-1"])


def test_simclr_is_the_segmentation_closed_form_with_shared_negatives():
    torch.manual_seed(4)
    pos, neg = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    per_sample = torch.stack([
        seg_simclr_loss(F.normalize(pos[b : b + 1], dim=-1), F.normalize(neg, dim=-1)[None], 0.1)[0] for b in range(3)
    ])
    assert torch.equal(simclr_loss(pos, neg, 0.1), per_sample)


# ------------------------------------------------------------------ projection


def test_structured_projection_equals_per_sample_autograd():
    fungi = _fungi(["kl", "simclr"], projection="structured", structured_terms=4)
    ex = ImageFungi(_backbone(), fungi)
    imgs = _images(2, seed=5)
    ex.setup(_List(imgs))
    ident = ex.source_identity("kl")["projection"]
    assert ident["kind"] == "structured" and ident["terms"] == 4 and ident["dim"] == 16
    for loss in ("kl", "simclr"):
        _check_against_autograd(ex, imgs, loss)
    # grouped projection of whole-sample gradients gives the same features
    ex.fungi["projection_batch"] = 2
    grouped = ex.extract(_List(imgs), ["kl"], split="train", batch_size=1)
    ref = ex.extract_batch(imgs, [0, 1], ["kl"], "train")["kl"].numpy()
    np.testing.assert_allclose(grouped["kl"], ref, atol=1e-5)


# ------------------------------------------------------------------ checkpoints


def test_audio_checkpoints_load_through_the_backbone_loader(tmp_path):
    rng_before = torch.get_rng_state()
    source = SpectrogramViT("vit_tiny_patch16_224", num_mel_bins=16, target_length=24, init_seed=1, **TINY)
    assert torch.equal(torch.get_rng_state(), rng_before)  # seeded init leaves the global RNG alone
    wrapped = {"teacher": {f"module.{k}": v for k, v in source.model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "audio.pth")
    loaded = SpectrogramViT("vit_tiny_patch16_224", num_mel_bins=16, target_length=24, init_seed=2,
                            weights=tmp_path / "audio.pth", **TINY)
    for (k, a), (_, b) in zip(source.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.weights_id.startswith("file:audio.pth:sha256:")
    x = torch.randn(2, 16, 24)
    torch.testing.assert_close(loaded.forward_until_last_block(x), source.forward_until_last_block(x), rtol=0, atol=0)
    wider = SpectrogramViT("vit_tiny_patch16_224", num_mel_bins=16, target_length=24, **{**TINY, "embed_dim": 48})
    torch.save(wider.model.state_dict(), tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match=r"wider\.pth.*shape mismatches"):
        SpectrogramViT("vit_tiny_patch16_224", num_mel_bins=16, target_length=24, weights=tmp_path / "wider.pth", **TINY)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth"):
        SpectrogramViT("vit_tiny_patch16_224", num_mel_bins=16, target_length=24, weights=tmp_path / "junk.pth", **TINY)


# -------------------------------------------------------------------- progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_at_intervals():
    out, clock = io.StringIO(), _Clock()
    bar = ProgressLines(10, "simclr negatives", interval=30, stream=out, clock=clock)
    clock.now += 10
    bar.update(1)  # before the interval: nothing
    clock.now += 30
    bar.update(3)  # 4 done in 40 s
    clock.now += 20
    bar.update(6)
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == [
        "simclr negatives: 0/10 (0%)",
        "simclr negatives: 4/10 (40%), 40 s, 0.10/s, ~60 s left",
        "simclr negatives: 10/10 (100%), 60 s, 0.17/s",
    ]


def test_progress_bar_kinds():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_bar(5, "x", True, stream=io.StringIO()), ProgressLines)
    quiet = io.StringIO()
    bar = progress_bar(5, "x", False, stream=quiet)
    bar.update(5)
    bar.close()
    assert quiet.getvalue() == ""
    assert not isinstance(progress_bar(5, "x", True, stream=Tty()), ProgressLines)


def test_cli_logs_progress_when_not_a_terminal(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "d" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "d" / split / cls / f"{i}.png")
    args = [
        "classify", "image", "--root", str(tmp_path / "d"), "--backbone", "vit_tiny_patch16_224", "--img-size", "16",
        "--set", "backbone.model_kwargs={patch_size: 8, depth: 1, embed_dim: 16, num_heads: 2}",
        "--set", "fungi.simclr.stride_divisor=1", "--set", "run.progress_interval=0",
        "--losses", "kl,simclr", "--negatives", "2", "--shots", "0", "--k", "1", "--no-cache", "--out", str(tmp_path / "r.json"),
    ]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert "simclr negatives: 0/2 (0%)" in err
    assert any(line.startswith("simclr negatives: 2/2 (100%)") for line in err)
    assert any(line.startswith("image train [embedding+kl+simclr]: 4/4 (100%)") for line in err)
    assert any(line.startswith("image test [embedding+kl+simclr]: 4/4 (100%)") for line in err)


def test_help_states_the_cost_of_simclr(capsys):
    for modality in ("image", "text", "audio"):
        with pytest.raises(SystemExit):
            main(["classify", modality, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "0.13 samples/s on one CPU core" in text, modality


def test_classify_encoders_write_weights_ids_that_parse(tmp_path):
    """Every weights id comes from segfungi.infra.weights.WeightsSource: a random-init spectrogram
    ViT and a ViT module given ready (named by its parameters' digest) both parse back."""
    import timm

    from segfungi.classify.audio import SpectrogramViT
    from segfungi.classify.vit import TimmViT
    from segfungi.infra.weights import WeightsSource

    audio = SpectrogramViT("vit_tiny_patch16_224", num_mel_bins=32, target_length=64, init_seed=3, depth=1)
    assert WeightsSource.parse(audio.weights_id) == WeightsSource.random_init(3, timm.__version__)
    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=0)
    ready = WeightsSource.parse(TimmViT(module).weights_id)
    assert ready.kind == "parameters" and len(ready.digest) == 16
    with torch.no_grad():
        module.blocks[0].attn.proj.bias.add_(1.0)
    assert WeightsSource.parse(TimmViT(module).weights_id) != ready  # other parameters, another id
