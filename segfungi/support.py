"""The support index: nearest plain-embedding neighbours of each token, the negatives
of the FUNGI segmentation loss."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from segfungi.errors import BankError
from segfungi.memory_bank import MemoryBank


class _RawTokens:
    """Raw support tokens (stored normalised float16 feature × stored norm, rounded to
    float16) gathered row by row from the shard files when asked for.

    Nothing of the bank is held in memory: rows are read with `os.pread` (a memory map
    would leave every page it ever touched in the process's resident set, which would
    then grow with the bank). Each file's checksum is checked once, when it is first
    opened here (the bank's on-read verification)."""

    def __init__(self, bank: "MemoryBank"):
        self.bank = bank
        self.offsets = np.cumsum([0] + [s["patches"] for s in bank.shards]).astype(np.int64)
        self._files: list[tuple[Path, int, int, Path, int] | None] = [None] * len(bank.shards)
        self.dim = bank.feature_dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _layout(self, i: int):
        """(features path, data offset, row bytes, norms path, data offset) of shard i."""
        if self._files[i] is None:
            shard = self.bank.shards[i]
            feats = self.bank._array(shard, "features", mmap=True)
            norms = self.bank._array(shard, "embedding_norm", mmap=True)
            if not (feats.flags.c_contiguous and isinstance(feats, np.memmap) and isinstance(norms, np.memmap)):
                raise BankError(f"{self.bank.path}: shard {shard['name']} arrays are not plain row-major .npy")
            self._files[i] = (Path(feats.filename), int(feats.offset), feats.shape[1] * 2,
                              Path(norms.filename), int(norms.offset))
            del feats, norms
        return self._files[i]

    def __getitem__(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
        flat = ids.reshape(-1).numpy().astype(np.int64)
        flat = np.where(flat < 0, flat + len(self), flat)  # -1 (a missing neighbour): as a tensor would
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"support row ids must lie in 0..{len(self) - 1}")
        unique, inverse = np.unique(flat, return_inverse=True)
        rows = np.empty((len(unique), self.dim), dtype=np.float16)
        norms = np.empty(len(unique), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, unique, side="right") - 1
        for i in np.unique(shard_of):
            feats_path, feats_at, row_bytes, norms_path, norms_at = self._layout(int(i))
            picked = np.flatnonzero(shard_of == i)
            local = unique[picked] - self.offsets[i]
            with open(feats_path, "rb", buffering=0) as f, open(norms_path, "rb", buffering=0) as g:
                fd, gd = f.fileno(), g.fileno()
                for j, row in zip(picked, local):
                    rows[j] = np.frombuffer(os.pread(fd, row_bytes, feats_at + int(row) * row_bytes), np.float16)
                    norms[j] = np.frombuffer(os.pread(gd, 4, norms_at + int(row) * 4), np.float32)[0]
        tokens = (rows.astype(np.float32) * norms[:, None]).astype(np.float16)
        return torch.from_numpy(tokens[inverse]).reshape(*ids.shape, self.dim)


class SupportIndex:
    """Nearest plain-embedding neighbours of each token: the negatives of the FUNGI loss.

    A training image never meets its own patches here: while building a bank, the
    neighbours that come from the same source image (any augmentation epoch) are
    skipped, because at query time a validation image cannot be in the support set
    and its gradients should be computed the way the bank's were.

    Memory: the search index, plus 4 bytes of source image per support patch; the raw
    tokens the loss needs are read from the shard files per batch (`_RawTokens`)."""

    def __init__(self, path: str | Path, settings: dict):
        self.bank = MemoryBank(path)
        if self.bank.features_kind != "embeddings":
            raise BankError(f"{path}: a support index must be an embeddings bank")
        self.k = settings["fungi"]["support_neighbours"]
        self.exclude_self = settings["fungi"]["exclude_self"]
        self.index = self.bank.index(settings)
        # Raw tokens (normalised feature × stored norm, float16) are what the loss head expects.
        self.tokens = _RawTokens(self.bank)
        self.source_image = torch.from_numpy(
            np.concatenate([np.asarray(p[:, 0], dtype=np.int32) for p in self.bank.iter_shards("provenance")]))
        # Enough candidates that k usually survive after removing an image's own patches;
        # queries left with fewer are searched again with room for all of them (`_own_patches`).
        self._own_patches = (self.bank.manifest["patches_per_image"]
                             * self.bank.manifest["identity"]["sampling"]["aug_epochs"])
        self.margin = min(self._own_patches, 64) if self.exclude_self else 0

    def negatives_for(self, image_ids: list[int] | None, generators: list[torch.Generator] | None = None):
        """A callable raw tokens (B×T×D) -> one kept neighbour per token (B×T×D).

        `image_ids` (training images being encoded) turns on the exclusion of their own
        patches; `generators` (one per image) pick which of the k neighbours is kept, so
        the choice does not depend on how images are batched."""

        def retrieve(tokens: torch.Tensor) -> torch.Tensor:
            batch, num_tokens, dim = tokens.shape
            queries = torch.nn.functional.normalize(tokens.detach().float(), dim=-1).reshape(-1, dim)
            margin = self.margin if image_ids is not None else 0
            _, ids = self.index.search(queries.cpu().numpy(), self.k + margin)
            ids = torch.as_tensor(ids).reshape(batch, num_tokens, -1)
            if margin:
                ids = self._drop_own(ids, image_ids)[..., : self.k]
                ids = self._search_again_where_own(queries, ids, image_ids)
            ids = ids[..., : self.k]
            gens = generators or [torch.Generator().manual_seed(b) for b in range(batch)]
            choice = torch.stack([torch.randint(self.k, (num_tokens,), generator=g) for g in gens])
            kept = torch.gather(ids, -1, choice[..., None]).squeeze(-1)
            return self.tokens[kept].float()

        return retrieve

    def _search_again_where_own(self, queries: torch.Tensor, ids: torch.Tensor, image_ids: list[int]):
        """Queries whose k first candidates still hold an own patch (the image's own patches
        crowded the k + margin nearest, e.g. many near-identical background patches) are
        searched again with k + all of the image's patches: at most that many are own, so k
        foreign ones survive wherever the bank has them. Per query, so batch-independent."""
        own = self.source_image[ids.clamp(min=0)] == torch.tensor(image_ids).view(-1, 1, 1)
        redo = own.any(dim=-1).reshape(-1)
        if not redo.any() or self._own_patches <= self.margin:
            return ids
        batch, num_tokens, _ = ids.shape
        wanted = min(self.k + self._own_patches, len(self.source_image))  # never more than exist
        _, more = self.index.search(queries[redo].cpu().numpy(), wanted)
        owners = torch.tensor(image_ids).repeat_interleave(num_tokens)[redo]
        more = self._drop_own(torch.as_tensor(more)[:, None], owners.tolist())[:, 0, : self.k]
        flat = ids.reshape(batch * num_tokens, -1).clone()
        flat[redo] = more
        return flat.reshape(batch, num_tokens, -1)

    def _drop_own(self, ids: torch.Tensor, image_ids: list[int]) -> torch.Tensor:
        own = self.source_image[ids.clamp(min=0)] == torch.tensor(image_ids).view(-1, 1, 1)
        # Stable sort puts foreign neighbours first, in their original rank order; if
        # fewer than k are foreign, the best own patches fill the rest.
        order = torch.sort(own.to(torch.int8), dim=-1, stable=True).indices
        return torch.gather(ids, -1, order)
