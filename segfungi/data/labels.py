"""Class names and colour palettes.

A palette is a 256×3 uint8 lookup table: row i is the colour of class i and row 255
the colour of the ignore label, so `palette[mask]` colours any segfungi mask."""

from __future__ import annotations

import colorsys

import numpy as np

IGNORE = 255
IGNORE_COLOUR = (224, 224, 192)  # VOC's colour for its 255 "void" border

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

# ADE20K SceneParsing (objectInfo150), in on-disk order 1..150 → segfungi ids 0..149.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


# Cityscapes' 19 evaluation classes, in trainId order 0..18 (cityscapesscripts' labels.py).
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_COLOURS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
CITYSCAPES_IGNORE_COLOUR = (0, 0, 0)  # Cityscapes draws its void labels black


def voc_palette() -> np.ndarray:
    """The Pascal VOC colour map (bit-interleaved class index); row 255 is (224, 224, 192)."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> channel) & 1
            palette[:, channel] |= bit << (7 - shift)
        index = index >> 3
    return palette.astype(np.uint8)


def distinct_palette(num_classes: int) -> np.ndarray:
    """Well-separated colours for any class count: golden-ratio hue steps, with
    saturation and value cycling so neighbouring hues of large label sets still differ."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        saturation = (0.9, 0.6, 0.75)[i % 3]
        value = (0.95, 0.7)[(i // 3) % 2]
        palette[i] = np.round(np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255)
    palette[IGNORE] = IGNORE_COLOUR
    return palette


def cityscapes_palette() -> np.ndarray:
    """The official Cityscapes colours of the 19 trainIds; row 255 (ignore) is black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(CITYSCAPES_COLOURS)] = CITYSCAPES_COLOURS
    palette[IGNORE] = CITYSCAPES_IGNORE_COLOUR
    return palette
