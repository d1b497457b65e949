"""Opening a registered dataset by name, and taking reproducible subsets of it (few-shot).

Layouts and their on-disk conventions are described in voc.py, ade20k.py,
cityscapes.py, coco_stuff.py and folder.py; the bad-sample policy in base.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segfungi.data.base import SegDataset, check_policy
from segfungi.data.idlists import read_id_file
from segfungi.data.registry import DATASETS
from segfungi.infra.errors import ConfigError, DatasetError

SUBSET_SHUFFLE_SEED = 0  # fixed: the subset seed picks a block of the shuffle, not the shuffle


def build_dataset(name: str, root: str | Path, split: str, on_bad_sample: str = "error") -> SegDataset:
    """Open `split` of the registered dataset `name` (voc | ade20k | cityscapes | coco-stuff |
    folder, `segfungi.data.registry`) at `root`."""
    key = str(name).lower().replace("_", "-")  # "VOC", "coco_stuff": the registered spelling
    info = DATASETS.get(key if key in DATASETS else name)  # else as given (unknown: lists the names)
    if root is None or str(root) == "":
        raise ConfigError("dataset root is not set (data.root / --root)")
    check_policy(on_bad_sample)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root folder missing")
    return info.open(root, split, on_bad_sample=on_bad_sample)


def subset(dataset: SegDataset, ids_file: str | Path | None = None, fraction: float | None = None,
           seed: int = 0) -> SegDataset:
    """The images named in `ids_file` (one id per line), or a seeded random `fraction`
    of them: round(fraction·N) images, at least 1 (1/128 of VOC trainaug's 10582 = 83).

    Fraction draws cut a fixed shuffle of the sorted ids into blocks of that size and
    `seed` picks the block, so subsets of different seeds are disjoint while they fit
    in the split (few-shot trials then measure different images); later seeds go on
    with a new shuffle. Negative seeds are refused. The
    draw depends only on the sorted ids, the fraction and the seed: the same on every
    machine and every run."""
    if (ids_file is None) == (fraction is None):
        raise ConfigError("subset needs exactly one of ids_file and fraction")
    if ids_file is not None:
        ids = read_id_file(ids_file, what="subset file")
        known = set(dataset.ids)
        skipped = {image_id for image_id, _ in dataset.bad_samples}
        unknown = [i for i in ids if i not in known and i not in skipped]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise DatasetError(
                f"{ids_file}: {len(unknown)} ids are not in {dataset.name} {dataset.split}: {shown}"
            )
        chosen = [i for i in ids if i in known]  # ids skipped as bad are already reported
        info = {"ids_file": str(ids_file), "count": len(chosen)}
    else:
        if not 0 < fraction <= 1:
            raise ConfigError(f"subset fraction must be in (0, 1], got {fraction}")
        if int(seed) < 0:
            raise ConfigError(f"subset seed must be >= 0, got {seed}")
        ordered = sorted(dataset.ids)
        count = max(1, round(fraction * len(ordered)))
        # Seeds 0..B-1 (B = N // count) take the B disjoint blocks of one shuffle; the
        # next B seeds those of a fresh shuffle, and so on.
        shuffle_round, block = divmod(int(seed), len(ordered) // count)
        shuffle = np.random.default_rng([SUBSET_SHUFFLE_SEED, shuffle_round]).permutation(len(ordered))
        picked_ids = {ordered[i] for i in shuffle[block * count:(block + 1) * count]}
        chosen = [i for i in dataset.ids if i in picked_ids]  # keep the dataset's order
        info = {"fraction": fraction, "seed": seed, "count": count}
    if not chosen:
        raise DatasetError(f"{ids_file}: every listed image was skipped as bad")
    return dataset.restricted(chosen, info)

