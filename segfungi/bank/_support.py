"""The support index: nearest plain-embedding neighbours of each token, the negatives
of the FUNGI segmentation loss.

Self-exclusion is exact for any bank size.  While a bank is built, a token of training
image i takes its K neighbours among the support patches of the *other* images.  The
search asks for K + min(own, 64) candidates (own = the most patches one image has in
the index); a token whose candidates hold fewer than K foreign ones is searched again
with K + own_i candidates (own_i: image i's patches), which always holds K foreign
ones when the index returns that many rows; a token still short (an approximate index
returning fewer rows) falls back to an exact search over the foreign rows.  Own
patches never fill in, and an index with fewer than K foreign patches for some image
is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segfungi.bank._reader import MemoryBank
from segfungi.feature_kinds import FeatureKind
from segfungi.infra.errors import BankError


class _RawTokens:
    """Support tokens gathered row by row from the shard files when asked for: raw (stored
    normalised float16 feature × stored norm, rounded to float16), or with
    ``raw=False`` the stored normalised float16 rows themselves.

    Nothing of the bank is held in memory: features and norms are read as two
    `segfungi.index.ConcatRows` over the shard files, which open a shard's file for one
    read and drop it right after (a memory map kept open would leave every page it ever
    touched in the process's resident set, which would then grow with the bank). Each
    file's checksum is checked once, when it is first read (the bank's on-read
    verification)."""

    def __init__(self, bank: "MemoryBank", raw: bool = True):
        from segfungi.index import ConcatRows

        self.raw = raw
        self.dim = bank.feature_dim
        self.rows = bank.feature_rows()
        # The norms as a one-column row array (shard files hold them 1-D).
        norms = [lambda shard=shard: bank.array(shard, "embedding_norm", mmap=True)[:, None] for shard in bank.shards]
        self.norms = ConcatRows(norms, [s["patches"] for s in bank.shards], 1, np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
        flat = ids.reshape(-1).numpy().astype(np.int64)
        flat = np.where(flat < 0, flat + len(self), flat)  # -1 (a missing neighbour): as a tensor would
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"support row ids must lie in 0..{len(self) - 1}")
        unique, inverse = np.unique(flat, return_inverse=True)
        rows = self.rows[unique]
        if self.raw:
            rows = (rows.astype(np.float32) * self.norms[unique]).astype(np.float16)
        return torch.from_numpy(rows[inverse]).reshape(*ids.shape, self.dim)


class SupportIndex:
    """Nearest plain-embedding neighbours of each token: the negatives of the FUNGI loss.

    A training image never meets its own patches here: while building a bank, the
    neighbours that come from the same source image (any augmentation epoch) are
    skipped, exactly (module docstring), because at query time a validation image
    cannot be in the support set and its gradients should be computed the way the
    bank's were.

    Memory: the search index, plus 4 bytes of source image per support patch; the
    tokens the loss needs are read from the shard files per batch (`_RawTokens`)."""

    def __init__(self, path: str | Path, spec, index, device: str = "cpu"):
        """`spec`: a `SupportSpec` (K, self-exclusion, negatives space); `index`: the
        `IndexSettings` searches use; `device`: where an exact index searches."""
        self.bank = MemoryBank(path)
        if self.bank.features != FeatureKind.EMBEDDINGS:
            raise BankError(f"{path}: a support index must be an embeddings bank")
        self.k = spec.neighbours
        self.exclude_self = spec.exclude_self
        self.index = self.bank.index(index, device)
        # fungi.negatives: raw tokens (normalised feature × stored norm) or the normalised rows.
        self.tokens = _RawTokens(self.bank, raw=spec.negatives == "raw")
        self.source_image = torch.from_numpy(
            np.concatenate([np.asarray(p[:, 0], dtype=np.int32) for p in self.bank.iter_shards("provenance")]))
        self.own_count = torch.bincount(self.source_image.long()) if len(self.source_image) else torch.zeros(1)
        own = int(self.own_count.max()) if self.exclude_self else 0
        if len(self.tokens) - own < self.k:
            raise BankError(
                f"{path}: the support index has {len(self.tokens)} patches; excluding an image's own "
                f"{own} leaves fewer than the {self.k} neighbours each token needs: build a larger bank "
                "(bank.size, bank.aug_epochs) or set fungi.exclude_self=false")
        # First-pass candidates; tokens that need more are searched again (neighbour_ids).
        self.margin = min(own, 64)

    def negatives_for(self, image_ids: list[int] | None):
        """A callable loss tokens (B×T×D) -> their K neighbours' tokens (B×T×K×D, best first).

        `image_ids` (training images being encoded) turns on the exclusion of their own
        patches. Which of the K are used is the feature extractor's choice."""

        def retrieve(tokens: torch.Tensor) -> torch.Tensor:
            return self.tokens[self.neighbour_ids(tokens, image_ids)].float()

        return retrieve

    def neighbour_ids(self, tokens: torch.Tensor, image_ids: list[int] | None = None) -> torch.Tensor:
        """B×T×K support row ids of each token's K nearest neighbours, best first; with
        `image_ids` (and fungi.exclude_self) none of them comes from that image."""
        batch, num_tokens, dim = tokens.shape
        queries = torch.nn.functional.normalize(tokens.detach().float(), dim=-1).reshape(-1, dim).cpu().numpy()
        if image_ids is None or not self.exclude_self:
            _, ids = self.index.search(queries, self.k)
            return torch.as_tensor(ids).reshape(batch, num_tokens, self.k)
        if len(image_ids) != batch:
            raise ValueError(f"{len(image_ids)} image ids for a batch of {batch}")
        owner = torch.as_tensor(image_ids, dtype=torch.int64).repeat_interleave(num_tokens)
        ids = self._foreign_first(self._search(queries, self.k + self.margin), owner)
        short = torch.nonzero((ids < 0).any(dim=1)).squeeze(1)
        if len(short):  # widen the search for these tokens only: K + their image's own patches
            widest = self.k + int(self._own_of(owner[short]).max())
            ids[short] = self._foreign_first(self._search(queries[short.numpy()], widest), owner[short])
            short = short[(ids[short] < 0).any(dim=1)]
        if len(short):  # an approximate index returned too few rows: exact search over foreign rows
            ids[short] = self.exact_foreign_ids(queries[short.numpy()], owner[short])
        return ids.reshape(batch, num_tokens, self.k)

    def _own_of(self, owner: torch.Tensor) -> torch.Tensor:
        inside = owner < len(self.own_count)
        return torch.where(inside, self.own_count[owner.clamp(max=len(self.own_count) - 1)], 0)

    def _search(self, queries: np.ndarray, k: int) -> torch.Tensor:
        _, ids = self.index.search(queries, min(k, len(self.tokens)))
        return torch.as_tensor(ids)

    def _foreign_first(self, ids: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Q×C candidates -> Q×K: the first K foreign ones in rank order, -1 where fewer exist."""
        foreign = (ids >= 0) & (self.source_image[ids.clamp(min=0)].long() != owner[:, None])
        # A stable sort puts the foreign candidates first, in their rank order.
        order = torch.sort((~foreign).to(torch.int8), dim=-1, stable=True).indices
        picked = torch.where(foreign.gather(1, order), ids.gather(1, order), -1)[:, : self.k]
        missing = self.k - picked.shape[1]
        return torch.cat([picked, picked.new_full((len(picked), missing), -1)], dim=1) if missing else picked

    def exact_foreign_ids(self, queries: np.ndarray, owner: torch.Tensor) -> torch.Tensor:
        """Q×K ids of the exact top-K cosine neighbours among rows not from `owner` (per query),
        streamed over the shard files (one Q×chunk block of similarities at a time, ≤ 64 MB)."""
        rows = self.bank.feature_rows()
        q = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=-1)
        chunk = max(1024, (1 << 24) // max(1, len(q)))
        best_sims = torch.full((len(q), 0), -torch.inf)
        best_ids = torch.zeros((len(q), 0), dtype=torch.int64)
        for start in range(0, len(rows), chunk):
            block = torch.from_numpy(np.asarray(rows[start : start + chunk], dtype=np.float32))
            sims = q @ torch.nn.functional.normalize(block, dim=-1).T
            own = self.source_image[start : start + len(block)].long()[None, :] == owner[:, None]
            sims = sims.masked_fill(own, -torch.inf)
            merged_sims = torch.cat([best_sims, sims], dim=1)
            merged_ids = torch.cat([best_ids, torch.arange(start, start + len(block)).expand(len(q), -1)], dim=1)
            best_sims, order = merged_sims.topk(min(self.k, merged_sims.shape[1]), dim=1)
            best_ids = merged_ids.gather(1, order)
        return torch.where(torch.isfinite(best_sims), best_ids, torch.full_like(best_ids, -1))
