"""Opening images for the model: EXIF orientation applied, converted to RGB, errors that name the file.

Size: an image is decoded in full and the image processor then resizes it, aspect ratio kept and
nothing cropped, to at most its max_pixels (12.8 MP for Qwen2-VL-2B: 16,384 image tokens), as
Qwen2-VL's own pipeline does. The limits are Pillow's decompression-bomb limits, applied here rather
than by Pillow, which warns (DecompressionBombWarning) from whichever call first opens a large image,
mid-run: images above `LARGE_IMAGE_PIXELS` (89.5 MP) are decoded and named once, in one warning, when
their dataset loads (src/data/loaders.py); above `MAX_IMAGE_PIXELS` (twice that) `load_image`
refuses them with an ImageLoadError naming the file: downscale such an image first. Pillow's own
guard is therefore switched off for this process (`Image.MAX_IMAGE_PIXELS = None`).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

LARGE_IMAGE_PIXELS = 89_478_485      # Pillow's default MAX_IMAGE_PIXELS, where it would warn
MAX_IMAGE_PIXELS = 2 * LARGE_IMAGE_PIXELS  # where it would refuse
Image.MAX_IMAGE_PIXELS = None  # the limits above are applied by this module instead (see the docstring)


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
        if image.width * image.height > MAX_IMAGE_PIXELS:  # known from the header, before any decoding
            raise ImageLoadError(f"cannot read image {label}: {image.width}x{image.height} is "
                                 f"{image.width * image.height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                 "decoded here (Pillow's decompression-bomb limit); downscale the image")
        image.load()  # decode now, so a truncated file fails here and not inside a training step
        image = ImageOps.exif_transpose(image)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        reason = "empty file" if not isinstance(source, bytes) and Path(source).stat().st_size == 0 else error
        raise ImageLoadError(f"cannot read image {label}: {reason}") from error
    if image.mode.startswith("I"):
        # 16/32-bit scans: stretch to 8 bit before RGB conversion, which would otherwise clip at 255
        pixels = np.asarray(image, dtype=np.float64)
        pixels = (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1.0) * 255.0
        image = Image.fromarray(pixels.round().astype(np.uint8), mode="L")
    return image.convert("RGB")
