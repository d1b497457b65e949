"""Generated scenes for the demo dataset: a textured background with a few polygon
objects, each object class a distinctive colour *and* texture, with per-object colour
jitter, random pattern phase/period and pixel noise so the task is easy for even a
random-init ViT's patch features but not a colour lookup.

A scene is drawn by style index: 0 = background, 1..5 = foreground styles. Object
shapes are polygons (ellipses as 36-gons, rotated rectangles, triangles, pentagons),
rasterised with pycocotools, the same rasteriser that reads COCO polygons back, so a
scene written as COCO polygons reads back pixel-exactly. Later objects cover earlier
ones."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from segfungi.data.coco_stuff import decode_segmentation

# name, base colour, texture. Pairs of classes share a hue (red, blue) or a texture
# (checker), so neither colour alone nor texture alone separates every class.
STYLES = (
    ("background", (118, 112, 100), "waves"),
    ("red_stripes", (200, 50, 45), "hstripes"),
    ("red_checker", (200, 50, 45), "checker"),
    ("blue_checker", (50, 80, 200), "checker"),
    ("blue_dots", (50, 80, 200), "dots"),
    ("yellow_diagonal", (215, 195, 50), "diagonal"),
)
NUM_FOREGROUND = len(STYLES) - 1
MIN_SIDE, MAX_SIDE = 300, 520


@dataclass
class SceneObject:
    style: int
    polygon: list[float]  # x0, y0, x1, y1, … (COCO polygon order)
    region: np.ndarray = field(repr=False)  # bool H×W, before later objects cover it


@dataclass
class Scene:
    image: np.ndarray  # RGB uint8 H×W×3
    styles: np.ndarray  # uint8 H×W style index per pixel (0 = background)
    objects: list[SceneObject]


def texture(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """H×W float pattern in [0, 1] with a random period and phase."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(7.0, 11.0)
    y += rng.uniform(0, period)
    x += rng.uniform(0, period)
    if kind == "hstripes":
        return (np.sin(2 * np.pi * y / period) > 0).astype(np.float32)
    if kind == "vstripes":
        return (np.sin(2 * np.pi * x / period) > 0).astype(np.float32)
    if kind == "diagonal":
        return (np.sin(2 * np.pi * (x + y) / (period * 1.4)) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    if kind == "dots":
        dy, dx = (y % period) - period / 2, (x % period) - period / 2
        return (dy * dy + dx * dx < (period * 0.3) ** 2).astype(np.float32)
    # waves: slow, low-contrast undulation of a plain background
    angle = rng.uniform(0, np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    return 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(60, 150))


def paint(style: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """H×W×3 float image of one style: jittered base colour modulated by its texture."""
    _, colour, kind = STYLES[style]
    base = np.asarray(colour, dtype=np.float32) + rng.uniform(-20, 20, size=3)
    contrast = rng.uniform(0.25, 0.45) if style else 0.15
    shade = 1.0 - contrast + contrast * texture(kind, height, width, rng)
    return base * shade[:, :, None]


def random_polygon(rng: np.random.Generator, height: int, width: int) -> list[float]:
    radius = rng.uniform(0.15, 0.32) * min(height, width)
    cx, cy = rng.uniform(0.4 * radius, width - 0.4 * radius), rng.uniform(0.4 * radius, height - 0.4 * radius)
    shape = rng.integers(4)
    if shape == 0:  # ellipse
        axes = (int(radius), int(radius * rng.uniform(0.5, 1.0)))
        points = cv2.ellipse2Poly((int(cx), int(cy)), axes, int(rng.integers(180)), 0, 360, 10)
    elif shape == 1:  # rotated rectangle
        size = (radius * 2, radius * rng.uniform(0.8, 1.6))
        points = cv2.boxPoints(((cx, cy), size, float(rng.uniform(0, 90))))
    else:  # triangle or pentagon with jittered corners
        corners = 3 if shape == 2 else 5
        angles = np.linspace(0, 2 * np.pi, corners, endpoint=False) + rng.uniform(0, 2 * np.pi)
        angles += rng.uniform(-0.2, 0.2, corners)
        radii = radius * rng.uniform(0.8, 1.2, corners)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    points = np.clip(np.asarray(points, dtype=np.float64), 0, [width - 1, height - 1])
    return [round(float(v), 2) for v in points.reshape(-1)]


def rasterise(polygon: list[float], height: int, width: int) -> np.ndarray:
    return decode_segmentation([polygon], height, width)


def render_scene(rng: np.random.Generator, first_style: int) -> Scene:
    """One scene of random size (sides 300..520 px, never square) with 1–3 objects;
    the first object has `first_style`, so a dataset can cycle through all classes."""
    height, width = rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2)
    while width == height:
        width = rng.integers(MIN_SIDE, MAX_SIDE + 1)
    height, width = int(height), int(width)
    image = paint(0, height, width, rng)
    styles = np.zeros((height, width), dtype=np.uint8)
    objects = []
    for index in range(int(rng.integers(1, 4))):
        style = first_style if index == 0 else int(rng.integers(1, NUM_FOREGROUND + 1))
        polygon = random_polygon(rng, height, width)
        region = rasterise(polygon, height, width)
        rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
        if rows.size == 0:
            continue
        box = np.s_[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        patch = paint(style, rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1, rng)
        image[box][region[box]] = patch[region[box]]
        styles[region] = style
        objects.append(SceneObject(style, polygon, region))
    image += rng.normal(0, 10, size=image.shape).astype(np.float32)
    return Scene(np.clip(image, 0, 255).astype(np.uint8), styles, objects)
