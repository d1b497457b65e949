"""Segmentation datasets (Pascal VOC, ADE20K, Cityscapes, COCO-Stuff, a generic folder),
the Hummingbird augmentation (`segfungi.data.augment`) and a generated demo dataset
(`segfungi.data.demo`).

Every dataset returns `Sample(image, mask, id)`: RGB uint8 H×W×3, uint8 H×W class ids
0..C-1 with 255 = ignore, whatever the on-disk convention. Layout descriptions: voc.py,
ade20k.py, cityscapes.py, coco_stuff.py, folder.py; what happens to bad samples ("error" / "skip"):
base.py. A new dataset is one `register_dataset` call with its facts (`segfungi.data.registry.DatasetInfo`).

Names are imported when first used, so the registry (`dataset_names()`, the settings'
`data.dataset` choices) loads neither NumPy nor PIL."""

from segfungi.infra.lazy import lazy_exports

# Module -> the public names it defines.
_MODULES = {
    "segfungi.data.base": ("MIN_SIDE", "Sample", "SampleFiles", "SegDataset"),
    "segfungi.data.datasets": ("build_dataset", "subset"),
    "segfungi.data.registry": ("DATASETS", "DatasetInfo", "dataset_info", "dataset_names", "dataset_title",
                               "register_dataset", "unregister_dataset"),
    "segfungi.data.labels": ("ADE20K_CLASSES", "CITYSCAPES_CLASSES", "IGNORE", "VOC_CLASSES"),
}
_PUBLIC = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
