"""The built-in backbone families, registered by reference (importing this imports no torch)."""

from __future__ import annotations

from segfungi.families._registry import FAMILIES, BackboneFamily

TIMM_VIT = BackboneFamily(
    name="timm-vit",
    description="timm VisionTransformer: learned absolute position embedding resampled (bicubic) to the grid",
    loader="segfungi.backbones:load_timm_vit",
    timm_class="VisionTransformer",
    examples=("vit_small_patch16_224.dino", "vit_base_patch14_reg4_dinov2", "vit_base_patch16_siglip_224",
              "vit_base_patch16_clip_224", "vit_base_patch16_radio_v3"),
    tested="split = timm forward_features; rank-1 gradients = autograd; batch-invariant; build + eval; pinned bank hashes",
)
TIMM_EVA = BackboneFamily(
    name="timm-eva",
    description="timm Eva (DINOv3, EVA-02, PE, rope ViTs): RoPE re-gridded by timm's set_input_size, "
                "absolute position embedding (if any) resampled",
    loader="segfungi.families.timm_eva:load",
    timm_class="Eva",
    examples=("vit_small_patch16_dinov3", "vit_base_patch16_dinov3", "eva02_small_patch14_224",
              "vit_pe_core_small_patch16_384"),
    tested="split = timm forward_features; rank-1 gradients = autograd; batch-invariant; build + eval; bank refuses "
           "other families/weights",
)
TIMM_NAFLEX = BackboneFamily(
    name="timm-naflexvit",
    description="timm NaFlexVit (C-RADIO, NaFlex SigLIP-2): position embedding interpolated to each input's grid",
    loader="segfungi.families.timm_naflex:load",
    timm_class="NaFlexVit",
    examples=("naflexvit_base_patch16_radio_v3", "naflexvit_base_patch16_siglip"),
    tested="split = timm forward_features; rank-1 gradients = autograd; batch-invariant; build + eval",
)
HUGGING_FACE = BackboneFamily(
    name="hf",
    description="Hugging Face transformers vision models (AutoModel): DINOv2 (+registers), DINOv3, CLIP and "
                "SigLIP vision towers, from a local snapshot folder or a hub id",
    loader="segfungi.families.hf:load",
    prefix="hf:",
    extra="hf",
    examples=("hf:facebook/dinov2-small", "hf:facebook/dinov3-vits16-pretrain-lvd1689m",
              "hf:openai/clip-vit-base-patch16", "hf:google/siglip-base-patch16-224", "hf:/path/to/snapshot"),
    tested="tiny models built from a config (no download): split = the model's last_hidden_state; rank-1 gradients "
           "= autograd; batch-invariant; snapshot folder round trip; build + eval",
)
OPEN_CLIP = BackboneFamily(
    name="open_clip",
    description="open_clip visual towers (open_clip VisionTransformer; the last block's attention is rerun with "
                "its own out_proj so the gradient is captured); timm-trunk towers use the timm families",
    loader="segfungi.families.openclip:load",
    prefix="open_clip:",
    extra="openclip",
    examples=("open_clip:ViT-B-16:openai", "open_clip:ViT-B-16:laion2b_s34b_b88k",
              "open_clip:ViT-B-16:/path/to/open_clip_pytorch_model.bin"),
    tested="tiny tower from a config (no download): split = the tower's tokens; rank-1 gradients = autograd; "
           "batch-invariant; build + eval",
)
CUSTOM = BackboneFamily(
    name="custom",
    description="segfungi.CustomBackbone: any torch module, you say how to get its tokens (passed as backbone=)",
    loader="segfungi.custom:load_by_name",
    prefix="custom:",
    examples=("segfungi.CustomBackbone(model, identity=..., ...)",),
    tested="rank-1 gradients = autograd; split = whole model; build + eval; bank refuses other parameters",
)

for _family in ("TIMM_VIT", "TIMM_EVA", "TIMM_NAFLEX", "HUGGING_FACE", "OPEN_CLIP", "CUSTOM"):
    FAMILIES.register_lazy(globals()[_family].name, f"segfungi.families._builtin:{_family}")
