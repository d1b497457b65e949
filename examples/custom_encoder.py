"""Evaluate your own torch model with segfungi: embeddings and FUNGI banks, one mIoU each.

    python examples/custom_encoder.py DATA_ROOT [--image-size 64] [--bank-size 4096] [--out DIR]

DATA_ROOT is a Pascal VOC layout (VOCdevkit/VOC2012/...), e.g. what `segfungi demo-data`
writes. The encoder below is a small patch transformer in plain torch (no timm),
randomly initialised from a seed: put your own model (and its weights) in its place.
Prints one JSON line: {"embeddings": mIoU, "fungi": mIoU}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

import segfungi


# ----------------------------------------------------------------------- the model
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)  # applied token by token: FUNGI's gradient layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(mixed.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchTransformer(nn.Module):
    """Image B×3×S×S -> tokens B×(1 + (S/p)²)×D: a CLS token, then the patches row by row."""

    def __init__(self, image_size: int = 64, patch_size: int = 8, dim: int = 64, depth: int = 3, heads: int = 4):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch_size) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], dim=1) + self.pos_embed
        for block in self.blocks[:-1]:
            h = block(h)
        return h

    def last_block(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks[-1](h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_block(self.until_last_block(x))


# ------------------------------------------------------------------------ the data
class Pairs:
    """Any (image, mask) source will do; here the VOC reader's samples, as plain pairs."""

    def __init__(self, dataset, limit: int | None = None):
        self.dataset = dataset
        self.count = len(dataset) if limit is None else min(limit, len(dataset))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        sample = self.dataset[i]
        return sample.image, sample.mask  # H×W×3 uint8, H×W class ids (255 = ignore)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root", help="VOC layout root (holds VOCdevkit/)")
    parser.add_argument("--image-size", type=int, default=64, help="model input size (default 64)")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--bank-size", type=int, default=2048, help="patches per bank (default 2048)")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N train and val images")
    parser.add_argument("--out", help="folder for the banks (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="the model's init seed")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = PatchTransformer(image_size=args.image_size, patch_size=args.patch_size)
    last = len(model.blocks) - 1
    backbone = segfungi.CustomBackbone(
        model,
        identity=f"examples.PatchTransformer:seed={args.seed}",
        patch_size=args.patch_size,
        image_size=args.image_size,
        num_prefix_tokens=1,  # the CLS token
        until_last_block=model.until_last_block,  # omit both: FUNGI runs the whole model with autograd
        last_block=model.last_block,
        grad_layer=f"blocks.{last}.attn.proj",
    )
    voc_train = segfungi.build_dataset("voc", args.data_root, "train")
    voc_val = segfungi.build_dataset("voc", args.data_root, "val")
    train = segfungi.from_pairs(Pairs(voc_train, args.max_images), voc_train.classes, name="voc-train")
    val = segfungi.from_pairs(Pairs(voc_val, args.max_images), voc_val.classes, name="voc-val")

    settings = segfungi.load_config(overrides=[
        {"bank": {"features": "fungi", "size": args.bank_size, "shard_images": 16, "batch_size": 8}},
    ])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        # A FUNGI bank: its support/ folder is the embeddings bank with the same sampling.
        fungi_bank = segfungi.build_bank(settings, out / "fungi", backbone=backbone, dataset=train, progress=False)
        banks = {"embeddings": fungi_bank / "support", "fungi": fungi_bank}
        results = {kind: segfungi.evaluate(bank, backbone=backbone, dataset=val, progress=False)["miou"]
                   for kind, bank in banks.items()}
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
