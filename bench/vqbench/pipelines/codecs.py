"""Image codecs for chips sent from the edge: JPEG, WebP and PNG through Pillow."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vqbench.data.align import PAYLOAD_IMAGE_FIX, decode_image

#: Pillow format names by codec.
PILLOW_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}


def encode_chip(chip: np.ndarray, codec: str, quality: int, size_px: int) -> bytes:
    """Resize an RGB chip to ``size_px`` (if needed) and encode it.

    For PNG, which is lossless, ``quality`` maps to zlib's compression level (0-9).
    """
    image = Image.fromarray(chip)
    if image.width != size_px:
        image = image.resize((size_px, size_px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if codec == "png":
        image.save(buffer, format="PNG", compress_level=min(9, quality // 10))
    elif codec == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        image.save(buffer, format=PILLOW_FORMATS[codec], quality=quality)
    return buffer.getvalue()


def decode_chip(payload: bytes, size_px: int) -> np.ndarray:
    """Decode a codec payload and upscale it to ``size_px`` x ``size_px`` RGB."""
    chip = decode_image(payload, source="codec payload", fix=PAYLOAD_IMAGE_FIX)
    if chip.shape[0] != size_px or chip.shape[1] != size_px:
        image = Image.fromarray(chip).resize((size_px, size_px), Image.Resampling.BICUBIC)
        chip = np.asarray(image, dtype=np.uint8)
    return chip
