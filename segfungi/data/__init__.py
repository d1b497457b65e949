"""Segmentation datasets (Pascal VOC, ADE20K, Cityscapes, COCO-Stuff, a generic folder),
the Hummingbird augmentation (`segfungi.data.augment`) and a generated demo dataset
(`segfungi.data.demo`).

Every dataset returns `Sample(image, mask, id)`: RGB uint8 H×W×3, uint8 H×W class ids
0..C-1 with 255 = ignore, whatever the on-disk convention. Layout descriptions: voc.py,
ade20k.py, cityscapes.py, coco_stuff.py, folder.py; what happens to bad samples ("error" /
"skip"): base.py."""

from segfungi.data.base import MIN_SIDE, Sample, SampleFiles, SegDataset
from segfungi.data.datasets import DATASETS, build_dataset, subset
from segfungi.data.labels import ADE20K_CLASSES, CITYSCAPES_CLASSES, IGNORE, VOC_CLASSES

__all__ = [
    "ADE20K_CLASSES", "CITYSCAPES_CLASSES", "DATASETS", "IGNORE", "MIN_SIDE", "VOC_CLASSES", "Sample",
    "SampleFiles", "SegDataset", "build_dataset", "subset",
]
