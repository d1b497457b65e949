"""Segmentation datasets (Pascal VOC, ADE20K, COCO-Stuff, a generic folder), the
Hummingbird augmentation (`segfungi.data.augment`) and a generated demo dataset
(`segfungi.data.demo`).

Every dataset returns `Sample(image, mask, id)`: RGB uint8 H×W×3, uint8 H×W class ids
0..C-1 with 255 = ignore, whatever the on-disk convention. Layout descriptions: voc.py,
ade20k.py, coco_stuff.py, folder.py; what happens to bad samples ("error" / "skip"):
base.py. A new layout is one `register_dataset` call (`segfungi.data.registry`).

Names are imported when first used, so the registry (`dataset_names()`, the settings'
`data.dataset` choices) loads neither NumPy nor PIL."""

from segfungi.lazy import lazy_exports

# Public name -> the module that defines it.
_PUBLIC = {
    "ADE20K_CLASSES": "segfungi.data.labels",
    "IGNORE": "segfungi.data.labels",
    "VOC_CLASSES": "segfungi.data.labels",
    "MIN_SIDE": "segfungi.data.base",
    "Sample": "segfungi.data.base",
    "SampleFiles": "segfungi.data.base",
    "SegDataset": "segfungi.data.base",
    "build_dataset": "segfungi.data.datasets",
    "subset": "segfungi.data.datasets",
    "DATASETS": "segfungi.data.registry",
    "dataset_names": "segfungi.data.registry",
    "register_dataset": "segfungi.data.registry",
    "unregister_dataset": "segfungi.data.registry",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
