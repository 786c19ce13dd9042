"""Opening images for the model: EXIF orientation applied, converted to RGB, errors that name the file."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageLoadError(ValueError):
    """An image that cannot be used; the message names the file (or the sample, for in-memory bytes)."""


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Open `source` (a path, or encoded bytes from a parquet row) as an RGB image.

    Scanners often store grayscale (mode L / I;16) or palette images and phones write rotations as
    EXIF tags; the vision tower wants upright 3-channel pixels, so both are normalised here.
    `name` is what error messages call the image when `source` is bytes.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<image bytes>")
    try:
        if isinstance(source, bytes):
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(f"image not found: {path}")
            image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here and not inside a training step
        image = ImageOps.exif_transpose(image)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageLoadError(f"cannot read image {label}: {error}") from error
    if image.mode.startswith("I"):
        # 16/32-bit scans: stretch to 8 bit before RGB conversion, which would otherwise clip at 255
        pixels = np.asarray(image, dtype=np.float64)
        pixels = (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1.0) * 255.0
        image = Image.fromarray(pixels.round().astype(np.uint8), mode="L")
    return image.convert("RGB")
