"""Seeds derived from explicit integers, never from global random state, so that any
piece of work (one augmented image, one shard) is reproducible on its own: a resumed
or multi-process build equals an uninterrupted single-process one."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends only on `keys` (e.g. bank seed, epoch, image index, purpose)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(*keys: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*keys))
    return gen


def pixels_seed(image: np.ndarray) -> int:
    """A 63-bit seed that depends only on an image's pixels (shape, dtype and bytes)."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(f"{array.shape}{array.dtype}".encode(), digest_size=8)
    digest.update(array.tobytes())
    return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)


# Purposes keep the streams of one work item independent of each other.
AUGMENT, SAMPLE, NEGATIVES, QUERY_NEGATIVES = 1, 2, 3, 4
# The seed of a FUNGI bank's support drawn from its own views (fungi.support_views:
# independent): derive_seed(bank seed, SUPPORT_VIEWS) seeds that support's augmentation
# and sampling as bank.seed seeds the bank's.
SUPPORT_VIEWS = 5
