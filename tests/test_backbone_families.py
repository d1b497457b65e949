"""Backbone families (segfungi.families): every family on a tiny random-init instance.

Hugging Face and open_clip models are built from a config, never downloaded: the HF
ones are saved as snapshot folders (config.json + model.safetensors), open_clip's is a
model config registered with open_clip.add_model_config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import segfungi
from conftest import tiny_settings
from segfungi.families import (
    BackboneFamily,
    LoadOptions,
    backbone_families,
    load_backbone,
    register_backbone_family,
    unregister_backbone_family,
)
from segfungi.gradients import gradient_pass, l2_normalize
from segfungi.infra.errors import BankError, CheckpointError, ConfigError
from segfungi.ops.seg_loss import seg_simclr_loss

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(depth=2, embed_dim=32, num_heads=2)
HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8,
               image_size=32)
OPEN_CLIP_TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                                  "head_width": 16},
                  "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}

# (case, family, how to load it) — timm names with architecture overrides, HF snapshot folders.
TIMM_CASES = {
    "vit": ("timm-vit", "vit_tiny_patch16_224", 64),
    "dinov3": ("timm-eva", "vit_small_patch16_dinov3", 64),  # RoPE, 4 registers
    "eva02": ("timm-eva", "eva02_small_patch14_224", 56),  # RoPE + abs pos embed, /14
    "rope-mixed": ("timm-eva", "vit_small_patch16_rope_mixed_224", 64),  # depth-dependent RoPE
    "radio": ("timm-naflexvit", "naflexvit_base_patch16_radio_v3", 64),  # 1 CLS + 7 registers
}
HF_CASES = {
    "hf-dinov2-reg": ("Dinov2WithRegistersConfig", dict(num_register_tokens=4)),
    "hf-dinov3": ("DINOv3ViTConfig", dict(num_register_tokens=4)),
    "hf-clip": ("CLIPVisionConfig", {}),
    "hf-siglip": ("SiglipVisionConfig", {}),  # no CLS token
}
CASES = [*TIMM_CASES, *HF_CASES, "open_clip"]


@pytest.fixture(scope="module")
def hf_snapshots(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folders = {}
    for case, (config_class, extra) in HF_CASES.items():
        config = getattr(transformers, config_class)(**HF_TINY, **extra)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.AutoModel.from_config(config)
        folders[case] = tmp_path_factory.mktemp(case)
        model.save_pretrained(folders[case])
    return folders


@pytest.fixture(scope="module")
def open_clip_arch(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / "segfungi-tiny-vit.json").write_text(json.dumps(OPEN_CLIP_TINY))
    open_clip.add_model_config(folder)
    return "segfungi-tiny-vit"


def load_case(case, hf_snapshots, open_clip_arch, seed=0, **options):
    if case in TIMM_CASES:
        _, name, size = TIMM_CASES[case]
        return load_backbone(name, model_kwargs=TINY, img_size=size, init_seed=seed, **options)
    if case in HF_CASES:
        return load_backbone(f"hf:{hf_snapshots[case]}", img_size=64, **options)
    return load_backbone(f"open_clip:{open_clip_arch}", img_size=64, init_seed=seed, **options)


@pytest.fixture(scope="module")
def backbones(hf_snapshots, open_clip_arch):
    torch.set_num_threads(1)
    return {case: load_case(case, hf_snapshots, open_clip_arch) for case in CASES}


def images(backbone, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, backbone.img_size, backbone.img_size, 3), dtype=np.uint8)


def reference_tokens(case, backbone, x):
    """The tokens each library's own forward gives (the split must equal them)."""
    if case in TIMM_CASES:
        return backbone.model.forward_features(x)
    if case in HF_CASES:
        out = backbone.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state \
            if case in ("hf-clip", "hf-siglip") else backbone.model(pixel_values=x).last_hidden_state
        return backbone.model.post_layernorm(out) if case == "hf-clip" else out  # CLIP norms the CLS only
    backbone.model.output_tokens = True
    try:
        _, patches = backbone.model(x)
    finally:
        backbone.model.output_tokens = False
    return patches  # open_clip returns the patch tokens (after ln_post) without the CLS


@pytest.mark.parametrize("case", CASES)
def test_the_split_is_the_models_own_forward(backbones, case):
    bb = backbones[case]
    x = bb.prepare(images(bb, n=2))
    with torch.no_grad():
        tokens = bb.forward_last_block(bb.forward_until_last_block(x))
        expected = reference_tokens(case, bb, x)
    assert tokens.shape == (2, bb.num_prefix_tokens + bb.num_patches, bb.embed_dim)
    compared = tokens[:, 1:] if case == "open_clip" else tokens
    torch.testing.assert_close(compared, expected, rtol=1e-4, atol=1e-5)
    assert bb.grid == (bb.img_size // bb.patch_size,) * 2
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_token_layouts_and_families(backbones):
    layout = {case: (bb.num_prefix_tokens, bb.has_class_token, bb.identity().get("family"))
              for case, bb in backbones.items()}
    assert layout == {
        "vit": (1, True, None),  # timm-vit records no family: its banks keep their hash
        "dinov3": (5, True, "timm-eva"),
        "eva02": (1, True, "timm-eva"),
        "rope-mixed": (1, True, "timm-eva"),
        "radio": (8, True, "timm-naflexvit"),
        "hf-dinov2-reg": (5, True, "hf"),
        "hf-dinov3": (5, True, "hf"),
        "hf-clip": (1, True, "hf"),
        "hf-siglip": (0, False, "hf"),
        "open_clip": (1, True, "open_clip"),
    }
    assert {backbones[c].img_size for c in CASES if c != "eva02"} == {64} and backbones["eva02"].img_size == 56


@pytest.mark.parametrize("case", CASES)
def test_token_gradients_sum_to_autograds_weight_gradient(backbones, case):
    """Oracle: Σ_b Σ_t δ_t a_tᵀ over every token the gradient layer sees must equal dL/dW
    (and Σ δ_t = dL/db) of the summed SimCLR loss, from plain autograd on the layer."""
    bb = backbones[case]
    extractor = segfungi.FeatureExtractor(bb, features="fungi", proj_dim=16)
    hidden = extractor.last_block_input(images(bb, n=2))
    n_loss = bb.num_patches + int(bb.has_class_token)
    negatives = l2_normalize(torch.randn(2, n_loss, bb.embed_dim, generator=torch.Generator().manual_seed(1)))

    def loss_tokens(tokens):
        patches = tokens[:, bb.num_prefix_tokens:]
        return torch.cat([tokens[:, :1], patches], 1) if bb.has_class_token else patches

    def losses(tokens):
        return seg_simclr_loss(l2_normalize(extractor.head(loss_tokens(tokens))), l2_normalize(extractor.head(negatives)),
                               extractor.tau)

    grads, _, per_image = gradient_pass(bb.grad_layer, lambda: bb.forward_last_block(hidden), losses)
    assert grads.delta.shape[1] == bb.num_prefix_tokens + bb.num_patches  # every token, in order

    layer = bb.grad_layer
    layer.requires_grad_(True)
    try:
        with torch.enable_grad():
            total = losses(bb.forward_last_block(hidden)).sum()
            total.backward()
        expected_w, expected_b = layer.weight.grad.clone(), layer.bias.grad.clone()
    finally:
        layer.weight.grad = layer.bias.grad = None
        layer.requires_grad_(False)
    torch.testing.assert_close(per_image.sum(), total.detach())
    torch.testing.assert_close(torch.einsum("bto,bti->oi", grads.delta, grads.inputs), expected_w,
                               rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads.delta.sum(dim=(0, 1)), expected_b, rtol=1e-4, atol=1e-7)
    # The extractor's pass keeps exactly the patch rows of these gradients.
    patch_grads, _, _ = extractor.patch_gradients(hidden, negatives)
    torch.testing.assert_close(patch_grads.delta, grads.delta[:, bb.num_prefix_tokens:], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("case", CASES)
def test_features_do_not_depend_on_the_batch(backbones, case):
    bb = backbones[case]
    extractor = segfungi.FeatureExtractor(bb, features="fungi", proj_dim=16)
    x = images(bb, n=3, seed=2)
    n_loss = bb.num_patches + int(bb.has_class_token)
    negatives = l2_normalize(torch.randn(3, n_loss, bb.embed_dim, generator=torch.Generator().manual_seed(4)))
    together = extractor.fungi(x, negatives)
    alone = extractor.fungi(x[1:2], negatives[1:2])
    torch.testing.assert_close(alone.embeddings[0], together.embeddings[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.features[0], together.features[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(extractor.embeddings(x[2:]), extractor.embeddings(x)[2:], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ banks end to end
E2E_CASES = ["dinov3", "radio", "hf-siglip", "open_clip"]


@pytest.fixture(scope="module")
def family_banks(backbones, demo_voc_root, tmp_path_factory):
    banks = {}
    for case in E2E_CASES:
        settings = tiny_settings(demo_voc_root, data={"image_size": backbones[case].img_size},
                                 bank={"size": 256, "features": "fungi"}, eval={"max_images": 2})
        out = tmp_path_factory.mktemp("family-banks") / case
        banks[case] = (segfungi.build_bank(settings, out, backbone=backbones[case], progress=False), settings)
    return banks


@pytest.mark.parametrize("case", E2E_CASES)
def test_build_and_evaluate_end_to_end(family_banks, backbones, case):
    bank, settings = family_banks[case]
    built = segfungi.MemoryBank(bank).manifest["identity"]["extractor"]["backbone"]
    assert built["name"] == backbones[case].name and built["family"] == backbones[case].family
    results = segfungi.evaluate(bank, settings, backbone=backbones[case], progress=False)
    assert results["images"] == 2 and 0 <= results["miou"] <= 1


def test_a_bank_refuses_another_family_and_other_weights(family_banks, backbones, hf_snapshots, open_clip_arch):
    bank, settings = family_banks["dinov3"]
    # Another family with the same grid and width.
    with pytest.raises(BankError, match="family: bank has 'timm-eva', query has 'timm-naflexvit'"):
        segfungi.Segmenter.from_settings(bank, settings, backbone=backbones["radio"])
    # The same family and architecture, other weights (another random init).
    other = load_case("dinov3", hf_snapshots, open_clip_arch, seed=7)
    with pytest.raises(BankError, match="weights_id: bank has 'random-init:seed=0"):
        segfungi.Segmenter.from_settings(bank, settings, backbone=other)
    # From settings that name another family's model, refused before it is loaded.
    named = {**settings, "backbone": {**settings["backbone"], "name": f"hf:{hf_snapshots['hf-dinov3']}"}}
    with pytest.raises(BankError, match="backbone.name: bank has 'vit_small_patch16_dinov3', query has 'hf:"):
        segfungi.Segmenter.from_settings(bank, named)
    hf_bank, hf_settings = family_banks["hf-siglip"]
    with pytest.raises(BankError, match="weights_id: bank has 'file:"):
        segfungi.Segmenter.from_settings(hf_bank, hf_settings, backbone=backbones["open_clip"])


def test_an_hf_snapshot_folder_names_its_weights_in_settings(hf_snapshots, tmp_path):
    """hf:<folder> carries its weights: the settings ask for that file, not a random init."""
    from segfungi.components import requested_weights

    settings = segfungi.load_config(overrides=[{"backbone": {"name": f"hf:{hf_snapshots['hf-clip']}"}}])
    source = requested_weights(settings)
    assert source.kind == "file" and Path(source.name) == hf_snapshots["hf-clip"]
    bb = load_backbone(f"hf:{hf_snapshots['hf-clip']}", img_size=64)
    assert bb.weights_id.startswith(f"file:{hf_snapshots['hf-clip'].name}:sha256:")
    # A config-only folder is a random init, named as one, seeded.
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((hf_snapshots["hf-clip"] / "config.json").read_text())
    a = load_backbone(f"hf:{config_only}", img_size=64, init_seed=3)
    b = load_backbone(f"hf:{config_only}", img_size=64, init_seed=3)
    assert a.weights_id.startswith("random-init:seed=3:transformers=")
    torch.testing.assert_close(a.grad_layer.weight, b.grad_layer.weight, rtol=0, atol=0)


def test_settings_load_every_family_by_name(hf_snapshots, open_clip_arch):
    from segfungi.components import load_backbone_from

    for name, family in ((f"hf:{hf_snapshots['hf-dinov3']}", "hf"), (f"open_clip:{open_clip_arch}", "open_clip"),
                         ("vit_tiny_patch16_dinov3_qkvb", "timm-eva")):
        settings = segfungi.load_config(overrides=[{"backbone": {"name": name, "random_init": True},
                                                    "data": {"image_size": 64}}])
        assert load_backbone_from(settings).identity()["family"] == family


# ------------------------------------------------------------------ the registry
def test_a_registered_toy_family_runs_end_to_end():
    """A family is one registration: its prefix routes names to its loader."""
    toy = BackboneFamily(name="toy", description="a test family", loader="tests_toy_family:load", prefix="toy:")
    module = type(sys)("tests_toy_family")

    def load(name, options, model=None):
        assert isinstance(options, LoadOptions) and options.img_size == 32
        torch.manual_seed(options.init_seed)
        example = _example_module().PatchTransformer(image_size=32, patch_size=8, dim=32, depth=2, heads=2)
        return segfungi.CustomBackbone(example, identity=name, patch_size=8, image_size=32, num_prefix_tokens=1,
                                       until_last_block=example.until_last_block, last_block=example.last_block,
                                       grad_layer="blocks.1.attn.proj")

    module.load = load
    sys.modules["tests_toy_family"] = module
    register_backbone_family(toy)
    try:
        assert "toy" in backbone_families()
        bb = load_backbone("toy:tiny", img_size=32)
        extractor = segfungi.FeatureExtractor(bb, features="fungi", proj_dim=8)
        x = np.zeros((1, 32, 32, 3), np.uint8)
        out = extractor.fungi(x, l2_normalize(torch.randn(1, 17, 32)))
        assert out.features[0].shape == (16, 8 + 32)
    finally:
        unregister_backbone_family("toy")
        sys.modules.pop("tests_toy_family", None)
    assert "toy" not in backbone_families()


def _example_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("custom_encoder_example", ROOT / "examples" / "custom_encoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_family_names_load_no_torch():
    code = ("import sys; from segfungi.families import backbone_families, get_backbone_family, implied_weights; "
            "names = backbone_families(); [get_backbone_family(n) for n in names]; implied_weights('hf:x'); "
            "print(','.join(names)); assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "timm-vit,timm-eva,timm-naflexvit,hf,open_clip,custom"


# ------------------------------------------------------------------ bad input
def test_a_name_no_family_knows():
    with pytest.raises(ConfigError, match="unknown backbone name 'no_such_net'.*hf:<hub id or folder>"):
        load_backbone("no_such_net")
    with pytest.raises(ConfigError, match="is a ResNet, but segfungi needs a timm VisionTransformer or another ViT "
                                          r"class .*Eva \(timm-eva\)"):
        load_backbone("resnet18")
    with pytest.raises(ConfigError, match="custom model cannot be loaded from the settings; build it and pass it"):
        load_backbone("custom:mine")


def test_a_last_block_without_attention_output_projection(backbones):
    from segfungi.families.timm_eva import EvaBackbone

    bb = load_backbone("vit_small_patch16_dinov3", model_kwargs=TINY, img_size=64)
    bb.model.blocks[-1].attn.proj = nn.Identity()
    with pytest.raises(ConfigError, match=r"last block \(EvaBlock\) has no attention output projection \(attn.proj"
                                          ".*bank.features=embeddings"):
        segfungi.FeatureExtractor(bb, features="fungi")
    assert isinstance(bb, EvaBackbone)
    segfungi.FeatureExtractor(bb, features="embeddings")  # embeddings need none


def test_hf_block_without_projection(hf_snapshots):
    bb = load_backbone(f"hf:{hf_snapshots['hf-dinov3']}", img_size=64)
    del bb.layers[-1].attention.o_proj
    bb.layers[-1].attention.o_proj = nn.Identity()
    bb.grad_layer_name, bb._grad_layer = bb._find_grad_layer()
    with pytest.raises(ConfigError, match=r"no attention output projection \(attention.o_proj, an nn.Linear\)"):
        segfungi.FeatureExtractor(bb, features="fungi")


@pytest.mark.parametrize("case", ["dinov3", "radio", "hf-dinov3", "open_clip"])
def test_an_image_size_the_patch_does_not_divide(case, hf_snapshots, open_clip_arch):
    with pytest.raises(ConfigError, match="img_size 60 .*not a positive multiple of the patch size (16|8)"):
        if case in TIMM_CASES:
            load_backbone(TIMM_CASES[case][1], model_kwargs=TINY, img_size=60)
        elif case == "hf-dinov3":
            load_backbone(f"hf:{hf_snapshots[case]}", img_size=60)
        else:
            load_backbone(f"open_clip:{open_clip_arch}", img_size=60)


def test_a_folder_that_is_not_a_snapshot(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"is not a Hugging Face snapshot \(a folder without config.json\).*"
                                          "hf download <hub id> --local-dir DIR"):
        load_backbone(f"hf:{tmp_path}")
    with pytest.raises(ConfigError, match=r"is not a Hugging Face snapshot \(a folder without config.json\)"):
        load_backbone("hf:facebook/dinov2-small", weights=tmp_path)


def test_offline_hub_names_what_to_download(monkeypatch):
    """No network (this test makes sure of it): an error at once naming the files to fetch."""
    import segfungi.backbones as backbones_module
    import segfungi.families.hf as hf_module

    def offline(repo, files, revision=None):
        return "offline"

    monkeypatch.setattr(backbones_module, "hub_unreachable", offline)
    monkeypatch.setattr(hf_module, "hub_unreachable", offline)
    with pytest.raises(CheckpointError, match="facebook/dinov2-small's weights are neither in the Hugging Face cache"
                                              ".*hf download facebook/dinov2-small --local-dir DIR"):
        load_backbone("hf:facebook/dinov2-small", pretrained=True)
    with pytest.raises(CheckpointError, match="config.json is neither"):
        load_backbone("hf:facebook/dinov2-small")
    pytest.importorskip("open_clip")
    with pytest.raises(CheckpointError, match="open_clip's ViT-B-16:openai weights .* download "
                                              ".*open_clip_model.safetensors"):
        load_backbone("open_clip:ViT-B-16:openai", pretrained=True)


def test_names_that_promise_weights_need_them():
    from segfungi.families import check_weights_source

    with pytest.raises(ConfigError, match="names pretrained weights \\(hub 'facebook/dinov2-small'\\)"):
        check_weights_source("hf:facebook/dinov2-small", weights=None, pretrained=False, random_init=None)
    with pytest.raises(ConfigError, match="names pretrained weights \\(hub 'openai'\\)"):
        check_weights_source("open_clip:ViT-B-16:openai", weights=None, pretrained=False, random_init=None)
    check_weights_source("open_clip:ViT-B-16", weights=None, pretrained=False, random_init=None)  # an architecture
    check_weights_source("vit_small_patch16_dinov3", weights=None, pretrained=False, random_init=True)
    with pytest.raises(ConfigError, match="timm tag 'lvd1689m'"):
        check_weights_source("vit_small_patch16_dinov3", weights=None, pretrained=False, random_init=None)


def test_dinov3_presets_name_an_eva_at_a_32x32_grid():
    from segfungi.config import load_config

    for preset, width in (("voc_vits16_dinov3", 384), ("voc_vitb16_dinov3", 768)):
        settings = load_config(preset)
        backbone = settings["backbone"]
        assert backbone["name"].endswith("_patch16_dinov3.lvd1689m") and backbone["pretrained"] is True
        bb = load_backbone(backbone["name"], img_size=settings["data"]["image_size"], model_kwargs=dict(depth=1))
        assert (bb.family, bb.grid, bb.num_prefix_tokens, bb.embed_dim) == ("timm-eva", (32, 32), 5, width)


def test_the_cli_builds_and_evaluates_an_hf_snapshot(hf_snapshots, demo_voc_root, tmp_path, capsys):
    from segfungi.cli import main

    folder = hf_snapshots["hf-dinov2-reg"]
    common = ["--root", str(demo_voc_root), "--set", "data.image_size=64", "--quiet"]
    assert main(["build-bank", "--backbone", f"hf:{folder}", "--bank-size", "256", "--features", "fungi",
                 "--set", "bank.shard_images=4", "--out", str(tmp_path / "bank"), *common]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f"backbone hf:{folder}: weights {folder.name}"
    assert main(["eval", "--bank", str(tmp_path / "bank"), "--max-images", "2", *common]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith(f"backbone hf:{folder}: weights {folder.name}") and "mIoU" in printed
    assert main(["bank", "info", str(tmp_path / "bank")]) == 0
    assert f"hf:{folder}" in capsys.readouterr().out


def test_weights_ids_of_the_new_sources_read_back():
    from segfungi.infra.weights import WeightsSource

    for text in ("hf-hub:facebook/dinov2-small", "open_clip-hub:ViT-B-16:openai",
                 "random-init:seed=3:transformers=5.25.0", "random-init:seed=0:open_clip=3.3.0",
                 "random-init:seed=1:timm=1.0.31", "file:snapshot:sha256:0123456789abcdef"):
        assert WeightsSource.parse(text).id == text
    hf = WeightsSource.parse("hf-hub:facebook/dinov2-small")
    assert hf.describe() == "pretrained weights facebook/dinov2-small"
    assert hf.mismatch(WeightsSource.hub("hf:facebook/dinov2-small")) is None  # --pretrained asks for "the hub"
    assert "query asks for a random init" in hf.mismatch(WeightsSource.random_init(0))
    assert WeightsSource.parse("random-init:seed=3:transformers=5.25.0").library == "transformers"


@pytest.mark.parametrize("case", ["dinov3", "eva02", "radio"])
def test_timm_family_checkpoints_load_through_their_classes_filter(case, backbones, tmp_path):
    """A local checkpoint of an Eva / NaFlexVit (saved at another resolution) loads into the
    model at the working size; the random init's seed no longer matters."""
    import safetensors.torch

    _, name, size = TIMM_CASES[case]
    source = load_backbone(name, model_kwargs=TINY, img_size=size * 2, init_seed=5)
    path = tmp_path / f"{case}.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = load_backbone(name, model_kwargs=TINY, img_size=size, init_seed=99, weights=path)
    assert loaded.weights_id.startswith(f"file:{case}.safetensors:sha256:")
    torch.testing.assert_close(loaded.grad_layer.weight, source.grad_layer.weight, rtol=0, atol=0)
    other = load_backbone(name, model_kwargs=TINY, img_size=size, init_seed=99)
    assert not torch.equal(other.grad_layer.weight, loaded.grad_layer.weight)


def test_an_open_clip_checkpoint_file_in_the_name(open_clip_arch, tmp_path):
    import open_clip

    torch.manual_seed(5)
    clip = open_clip.create_model(open_clip_arch)
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    bb = load_backbone(f"open_clip:{open_clip_arch}:{path}", img_size=64)  # saved at 32²: resampled to 64²
    assert bb.weights_id.startswith("file:tiny.pt:sha256:") and bb.grid == (8, 8)
    torch.testing.assert_close(bb.grad_layer.weight, clip.visual.transformer.resblocks[-1].attn.out_proj.weight)
    from segfungi.components import requested_weights

    settings = segfungi.load_config(overrides=[{"backbone": {"name": f"open_clip:{open_clip_arch}:{path}"}}])
    assert requested_weights(settings).kind == "file"


def test_an_hf_model_type_the_family_does_not_read(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Siglip2VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=64, patch_size=8, num_patches=16)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model_type 'siglip2_vision_model' is not one the hf family reads.*"
                                          "naflexvit_base_patch16_siglip.v2_webli"):
        load_backbone(f"hf:{tmp_path}", img_size=64)
