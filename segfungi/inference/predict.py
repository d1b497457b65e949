"""Segment arbitrary images with an existing memory bank.

From Python, `predict_images(bank, images)` returns one H×W uint8 class-id mask per
image, at the image's own size. `predict_to_folder` also writes, per image,
`masks/<stem>.png` (mode 'P', the bank's palette, so the ids are the pixel values and
viewers show colours, like VOC's SegmentationClass) and `overlays/<stem>.png` (the
colours blended over the image, each region outlined so that dark classes show on dark
images too, with a legend of the classes present).

Images are read as the datasets read them (segfungi.data.imageio.read_image):
grayscale, palette, RGBA (alpha dropped) and 16-bit inputs become RGB, and EXIF
orientation is ignored, so a mask lines up with the stored pixels. An unreadable image
found in a folder is left out and reported; one named directly stops the run
(`on_bad_sample` chooses either for all).

With a FUNGI bank, an image's kept negatives are seeded from its own (resized) pixels
(`segfungi.inference.segmenter.query_seeds`), so a mask is the one `eval` computes for the
same image, whatever else is segmented with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from segfungi.data.imageio import to_rgb
from segfungi.infra.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def make_segmenter(bank, settings: dict | None = None):
    """A Segmenter for `bank` (a folder or a Segmenter); settings default to the bank's own."""
    from segfungi.inference.segmenter import Segmenter

    if isinstance(bank, Segmenter):
        return bank
    return Segmenter.from_settings(bank, settings)


def predict_images(bank, images: Iterable, settings: dict | None = None) -> list[np.ndarray]:
    """One H×W uint8 class-id mask per image (paths or arrays), at each image's size."""
    segmenter = make_segmenter(bank, settings)
    return [segmenter.predict(to_rgb(image)) for image in images]


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus the image files inside named folders (sorted)."""
    return list(_listed_images(inputs))


def _listed_images(inputs: Sequence[str | Path]) -> dict[Path, bool]:
    """{image file: whether it was found in a named folder (else named directly)}, in order."""
    found: dict[Path, bool] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            found.update((p, True) for p in sorted(item.iterdir())
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            found[item] = False
        else:
            raise DatasetError(f"{item}: no such image or folder")
    if not found:
        raise DatasetError(f"no images found in {', '.join(map(str, inputs))}")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems:
            raise DatasetError(f"{path} and {stems[path.stem]}: same name, their masks would overwrite each other")
        stems[path.stem] = path
    return found


def save_mask(mask: np.ndarray, palette, path: str | Path) -> Path:
    """Class-id mask as a 'P'-mode PNG: pixel values are the ids, the palette gives colours."""
    from segfungi.inference.viz import full_palette

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8))
    image.putpalette(full_palette(palette).reshape(-1).tolist())  # turns the 'L' image into 'P'
    image.save(path)
    return path


def predict_to_folder(bank, inputs: Sequence[str | Path], out: str | Path, settings: dict | None = None,
                      alpha: float = 0.5, overlays: bool = True, progress: bool = True,
                      on_bad_sample: str | None = None) -> list[dict]:
    """Segment every image of `inputs` (files or folders), writing masks and overlays under `out`.

    An unreadable image stops the run (`on_bad_sample="error"`) or is left out ("skip");
    the default (None) skips the images found in a folder and stops at one named directly.
    Returns one record per image: its path, size, mask and overlay files, or for an image
    left out its path and why (`{"image", "skipped"}`)."""
    from segfungi.inference.viz import describe_banks, overlay_with_legend
    from segfungi.infra.progress import progress_iter
    from segfungi.infra.storage import ensure_writable_dir

    if on_bad_sample not in (None, "error", "skip"):
        raise ConfigError(f"on_bad_sample must be 'error', 'skip' or None, got {on_bad_sample!r}")
    listed = _listed_images(inputs)
    ensure_writable_dir(Path(out))  # before the model loads: a read-only --out fails now, with the fix
    segmenter = make_segmenter(bank, settings)
    classes, palette = segmenter.bank.classes, segmenter.bank.palette
    # Under each overlay: which bank (features, size, backbone, weights, data) drew it.
    about = (f"{segmenter.bank.features} bank of {segmenter.bank.num_patches:,} patches\n"
             + describe_banks([segmenter.bank]))
    out = Path(out)
    records = []
    for path, in_folder in progress_iter(listed.items(), "predict", enabled=progress):
        try:
            image = to_rgb(path)
        except DatasetError as err:
            if (on_bad_sample or ("skip" if in_folder else "error")) == "error":
                raise
            records.append({"image": str(path), "skipped": str(err)})
            continue
        mask = segmenter.predict(image)
        record = {"image": str(path), "height": mask.shape[0], "width": mask.shape[1],
                  "mask": str(save_mask(mask, palette, out / "masks" / f"{path.stem}.png"))}
        if overlays:
            picture = overlay_with_legend(image, mask, classes, palette, alpha, caption=f"{path.name}: {about}")
            overlay_path = out / "overlays" / f"{path.stem}.png"
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(overlay_path)
            record["overlay"] = str(overlay_path)
        records.append(record)
    return records
