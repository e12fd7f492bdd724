"""Payload kinds of the cloud service: accepted media types, image header check, pair framing.

``PAYLOAD_KINDS`` maps each pipeline kind to the media types its payload may be sent as and,
for image payloads, the maximum pixel count that ``check_image_header`` enforces before any
pixels are decoded (and, for chips, their fixed side). A kind may also check the decoded
payload's values (edge embeddings must be finite). ``frame_pair`` and ``split_pair`` implement
the body framing of ``/v1/match``: each payload preceded by its uint32 big-endian length.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

from vqbench.errors import PayloadError
from vqbench.pipelines.base import Pipeline

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
VQ_CODES_TYPE = "application/vnd.vqbench.vq-codes"
OPAQUE_TYPE = "application/octet-stream"
PAIR_CONTENT_TYPE = "application/vnd.vqbench.pair"
PAYLOAD_TYPE_HEADER = "x-payload-type"

_PAIR_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class PayloadKind:
    """Accepted media types and image limits for the payload of one pipeline kind.

    ``content_types`` maps a pipeline variant to the media types its payload may be sent as.
    ``max_image_pixels`` turns on the image header check (format and pixel count) before
    ``cloud()`` decodes the payload; None means the payload is not an image file.
    ``chip_side_px`` returns the width and height, in pixels, that every payload of a variant
    has (the edge sends square chips of one size), or None when sizes vary.
    ``check_payload`` raises PayloadError for a payload whose values ``cloud()`` must not
    receive; None means the kind has no such check.
    """

    name: str
    content_types: Callable[[Pipeline], tuple[str, ...]]
    max_image_pixels: int | None = None
    chip_side_px: Callable[[Pipeline], int | None] = lambda pipeline: None
    check_payload: Callable[[Pipeline, bytes], None] | None = None


def _codec_content_types(pipeline: Pipeline) -> tuple[str, ...]:
    codec = getattr(pipeline, "codec", None)
    return (f"image/{codec}",) if codec in ("jpeg", "webp", "png") else RAW_IMAGE_TYPES


def check_embedding_payload(pipeline: Pipeline, payload: bytes) -> None:
    """Decode an ``edge-embed`` payload, so that a bad length, format byte or non-finite value
    is a PayloadError (422) before the request reaches a model worker or a gallery."""
    from vqbench.pipelines.edge_vq import decode_embedding

    # PAYLOAD_KINDS registers this check for the kind edge-embed only, whose pipelines have a dtype.
    decode_embedding(payload, pipeline.dtype)  # type: ignore[attr-defined]


PAYLOAD_KINDS: dict[str, PayloadKind] = {
    # The bound of 4096 x 4096 pixels covers a 16 MP camera sensor.
    "cloud-raw": PayloadKind("image-file", lambda pipeline: RAW_IMAGE_TYPES, max_image_pixels=4096 * 4096),
    # Chips are at most 150 x 150 pixels. The bound leaves room but stops decompression bombs.
    # encode_chip resizes every chip to the variant's size_px square, so other sizes are not from its edge.
    "cloud-codec": PayloadKind(
        "codec-chip", _codec_content_types, max_image_pixels=1024 * 1024,
        chip_side_px=lambda pipeline: getattr(pipeline, "size_px", None),
    ),
    "edge-vq-recon": PayloadKind("vq-codes", lambda pipeline: (VQ_CODES_TYPE, OPAQUE_TYPE)),
    "edge-vq-student": PayloadKind("vq-codes", lambda pipeline: (VQ_CODES_TYPE, OPAQUE_TYPE)),
    "edge-embed": PayloadKind("embedding", lambda pipeline: (OPAQUE_TYPE,), check_payload=check_embedding_payload),
}
OPAQUE_PAYLOAD_KIND = PayloadKind("opaque", lambda pipeline: (OPAQUE_TYPE,))


def payload_kind_of(pipeline: Pipeline) -> PayloadKind:
    """Return the payload kind registered for a pipeline's kind (opaque bytes when none is)."""
    return PAYLOAD_KINDS.get(pipeline.kind, OPAQUE_PAYLOAD_KIND)


def check_image_header(payload: bytes, content_type: str, max_pixels: int) -> tuple[int, int]:
    """Check an image payload's format and size from its header, without decoding pixels.

    Returns the image's (width, height) in pixels. Raises PayloadError when the header cannot
    be parsed, when the format differs from ``content_type``, or when the image has more than
    ``max_pixels`` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as image:
            width, height = image.size
            mime_type = image.get_format_mimetype()
    except Image.DecompressionBombError as error:
        raise PayloadError(f"image payload declares more pixels than Pillow opens, above the limit of {max_pixels}") \
            from error
    except UnidentifiedImageError as error:
        raise PayloadError(f"image payload is not in a known image format (Content-Type {content_type})") from error
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
        raise PayloadError(f"image payload header is invalid: {error}") from error
    if mime_type != content_type:
        raise PayloadError(f"payload is {mime_type or 'an unknown format'} but Content-Type is {content_type}")
    if width * height > max_pixels:
        raise PayloadError(f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")
    return width, height


def media_type(content_type: str | None) -> str:
    """Return the lower-case media type of a Content-Type value, without its parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def frame_pair(first: bytes, second: bytes) -> bytes:
    """Frame two payloads for ``/v1/match``: each preceded by its uint32 big-endian length."""
    return _PAIR_LENGTH.pack(len(first)) + first + _PAIR_LENGTH.pack(len(second)) + second


def split_pair(body: bytes) -> list[bytes]:
    """Split a framed payload pair, raising PayloadError when a length does not fit the body."""
    payloads: list[bytes] = []
    offset = 0
    for which in ("first", "second"):
        if len(body) - offset < _PAIR_LENGTH.size:
            raise PayloadError(f"pair body of {len(body)} bytes ends before the length of the {which} payload")
        (length,) = _PAIR_LENGTH.unpack_from(body, offset)
        offset += _PAIR_LENGTH.size
        if length > len(body) - offset:
            raise PayloadError(f"the {which} payload declares {length} bytes but only {len(body) - offset} follow")
        payloads.append(body[offset : offset + length])
        offset += length
    if offset != len(body):
        raise PayloadError(f"pair body has {len(body) - offset} bytes after the second payload")
    return payloads
