"""A bank's plan: which augmented images exist, how many patches each keeps, how they
are cut into shards; and what the bank will cost on disk.

N training images × E augmentation epochs give N·E augmented images ("items"); each
keeps K = S // (N·E) patches (at least 1, at most the whole grid), so the bank holds
K·N·E ≤ S patches. Items are cut into shards of `shard_images`, epoch-major.
"""

from __future__ import annotations

from dataclasses import dataclass

from segfungi.feature_kinds import FeatureKind

__all__ = ["BankPlan", "estimate_bank_bytes"]


@dataclass(frozen=True)
class BankPlan:
    num_images: int
    aug_epochs: int
    bank_size: int
    shard_images: int
    patches_per_image: int  # grid size, e.g. 1024

    @property
    def num_items(self) -> int:
        return self.num_images * self.aug_epochs

    @property
    def keep_per_item(self) -> int:
        # S // (N·E) patches per augmented image, at least one, at most all of them.
        return max(1, min(self.patches_per_image, self.bank_size // self.num_items))

    @property
    def num_patches(self) -> int:
        """Patches the bank will hold (bank.size, unless the images cannot give that many)."""
        return self.keep_per_item * self.num_items

    @property
    def capped(self) -> bool:
        """True when bank.size is more than the images can give (not mere S // (N·E) rounding)."""
        return self.bank_size > self.patches_per_image * self.num_items

    @property
    def num_shards(self) -> int:
        return -(-self.num_items // self.shard_images)

    def shard_items(self, shard: int) -> list[tuple[int, int]]:
        """(epoch, image index) pairs of one shard, epoch-major."""
        start = shard * self.shard_images
        stop = min(start + self.shard_images, self.num_items)
        return [divmod(item, self.num_images) for item in range(start, stop)]


def estimate_bank_bytes(plan: BankPlan, feature_dim: int, features: str, label_topk: int, index,
                        device=None) -> dict:
    """Disk bytes of a bank: shards (float16 features, int16/float16 top-k labels, int32
    provenance, float32 norms for embeddings banks, headers) and its saved index, as the
    index kind `index` (`IndexSettings`) picks for it on `device` estimates it
    (`segfungi.index.IndexKind.costs`; 0 for a kind that is not saved)."""
    from segfungi.index import IndexJob, index_costs

    patches = plan.num_patches
    per_patch = feature_dim * 2 + label_topk * (2 + 2) + 3 * 4 + (4 if features == FeatureKind.EMBEDDINGS else 0)
    shards = patches * per_patch + plan.num_shards * 4096  # .npy headers + meta.json
    saved = index_costs(IndexJob(patches, feature_dim, index, device)).disk
    return {"patches": patches, "shards": shards, "index": saved}
