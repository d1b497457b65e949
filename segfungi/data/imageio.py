"""Reading images and class-id masks with PIL, refusing anything that would give a
broken image/mask pair. Every error is a `DatasetError` whose message starts with the
file's path.

Images become RGB `uint8` H×W×3:
  * RGB as is; grayscale, palette, RGBA/LA (alpha dropped, not composited), CMYK and
    YCbCr are converted by PIL;
  * 16-bit grayscale (PIL modes I;16*, I) is scaled linearly 0..65535 → 0..255
    (a 16-bit photo is a photo; refusing it would only push users to convert by hand);
  * anything else (float images, …) is refused.
EXIF orientation is deliberately ignored: masks are aligned with the stored pixels.

Masks must be single-channel and lossless: PNG (or any lossless format) in mode L, P
(palette indices are the class ids, as in VOC SegmentationClass) or 1; 16-bit masks
are accepted when every value fits in 0..255. Colour (RGB/RGBA/…) masks and JPEG masks
are refused: a colour-rendered mask is not a class-id mask, and JPEG corrupts labels.

Truncated files raise (`Image.load()` decodes everything; LOAD_TRUNCATED_IMAGES is
never set).

Only the common raster formats are opened (`FORMATS`: JPEG, PNG, BMP, TIFF, WebP, GIF,
PPM); PIL's other plugins are never tried, so a shared dataset cannot route a file to
one of them (EPS, for instance, would run Ghostscript) and random bytes are not
mistaken for an obscure format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segfungi.infra.errors import DatasetError

# PIL modes that `convert("RGB")` maps to RGB without losing meaning.
_CONVERTIBLE_TO_RGB = {"1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_MASK_MODES = {"L", "P", "1"}
_LOSSY_FORMATS = {"JPEG", "MPO", "WEBP"}
FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")  # JPEG includes MPO


def _open_decoded(path: Path, kind: str) -> Image.Image:
    """Open and fully decode `path`; missing, empty, unreadable or truncated → DatasetError."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DatasetError(f"{path}: {kind} file missing") from None
    if size == 0:
        raise DatasetError(f"{path}: {kind} file is empty (0 bytes)")
    try:
        image = Image.open(path, formats=FORMATS)
        image.load()  # decode now, so truncation is found here and not later
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot read {kind} ({err})") from None
    return image


def _sixteen_bit_to_uint8(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.min() < 0 or pixels.max() > 65535:
        raise DatasetError(f"{path}: 32-bit image values outside 0..65535 cannot be read as an image")
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 H×W×3 (see the module docstring for the conversions)."""
    path = Path(path)
    with _open_decoded(path, "image") as image:
        return pil_to_rgb(image, path)


def pil_to_rgb(image: Image.Image, where: str | Path = "image") -> np.ndarray:
    """An opened PIL image -> RGB uint8 H×W×3, converted as read_image does; `where`
    (the file, or a description) starts the error message."""
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in _CONVERTIBLE_TO_RGB:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if image.mode in _SIXTEEN_BIT:
        gray = _sixteen_bit_to_uint8(np.asarray(image), where)
        return np.repeat(gray[:, :, None], 3, axis=2)
    raise DatasetError(
        f"{where}: unsupported image mode {image.mode} (expected 8-bit RGB/grayscale/RGBA/CMYK "
        "or 16-bit grayscale)"
    )


def read_class_mask(path: str | Path) -> np.ndarray:
    """Raw on-disk class ids as uint8 H×W (no dataset-specific mapping yet)."""
    path = Path(path)
    with _open_decoded(path, "mask") as mask:
        if mask.format in _LOSSY_FORMATS:
            raise DatasetError(f"{path}: mask is a {mask.format} file; class-id masks must be lossless (PNG)")
        if mask.mode in _MASK_MODES:
            return np.asarray(mask, dtype=np.uint8).copy()
        if mask.mode in _SIXTEEN_BIT:
            values = np.asarray(mask)
            if values.min() < 0 or values.max() > 255:
                raise DatasetError(
                    f"{path}: 16-bit mask has values {values.min()}..{values.max()}; class ids must fit 0..255"
                )
            return values.astype(np.uint8)
        raise DatasetError(
            f"{path}: mask has mode {mask.mode}, expected a single-channel class-id PNG (mode L or P); "
            "a colour-rendered mask (e.g. a VOC palette PNG converted to RGB) cannot be read as class ids"
        )



def to_rgb(image) -> np.ndarray:
    """An image file path, a PIL image or an array (H×W gray, H×W×1/3/4) -> H×W×3 uint8 RGB,
    as `read_image` makes files (alpha dropped)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image, f"PIL image (mode {image.mode})")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DatasetError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DatasetError(f"image array must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])
