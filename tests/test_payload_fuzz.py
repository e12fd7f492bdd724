"""Property tests: the codec payload decode path fails only with the project's own errors.

Inputs are arbitrary bytes and mutations (byte flips, truncations, insertions) of small valid
JPEG, PNG and WebP chips, so that the fuzzer reaches the image decoders beyond their magic
numbers. The decoders must return a chip or raise CorruptImageError or PayloadError.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vqbench.data.align import CorruptImageError, decode_image
from vqbench.errors import PayloadError
from vqbench.network.service import check_image_header
from vqbench.pipelines.codecs import decode_chip, encode_chip

ALLOWED_ERRORS = (CorruptImageError, PayloadError)
# No example database: it would write .hypothesis/ into the working tree.
FUZZ_SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _seed_chips() -> list[bytes]:
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    return [encode_chip(chip, codec, quality, 24) for codec, quality in (("jpeg", 50), ("png", 60), ("webp", 50))]


SEEDS = _seed_chips()


@st.composite
def mutated_chips(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif len(data) > 1:
            del data[position]
    return bytes(data[: draw(st.integers(0, len(data)))])


PAYLOADS = st.one_of(st.binary(max_size=256), mutated_chips())


@FUZZ_SETTINGS
@given(PAYLOADS)
def test_decode_chip_raises_only_project_errors(payload: bytes) -> None:
    try:
        chip = decode_chip(payload, 150)
    except ALLOWED_ERRORS:
        return
    assert chip.shape == (150, 150, 3)
    assert chip.dtype == np.uint8


@FUZZ_SETTINGS
@given(PAYLOADS)
def test_decode_image_raises_only_project_errors(payload: bytes) -> None:
    try:
        image = decode_image(payload, source="fuzz")
    except ALLOWED_ERRORS:
        return
    assert image.ndim == 3
    assert image.shape[2] == 3


@FUZZ_SETTINGS
@given(PAYLOADS, st.sampled_from(["image/jpeg", "image/png", "image/webp"]))
def test_image_header_check_raises_only_payload_error(payload: bytes, content_type: str) -> None:
    try:
        check_image_header(payload, content_type, max_pixels=1024 * 1024)
    except PayloadError:
        return


def test_seed_chips_decode() -> None:
    for seed in SEEDS:
        assert decode_chip(seed, 150).shape == (150, 150, 3)


def _png_claiming(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def test_header_check_rejects_decompression_bomb() -> None:
    with pytest.raises(PayloadError, match="declares more pixels than Pillow opens, above the limit of 1048576"):
        check_image_header(_png_claiming(30_000, 30_000), "image/png", max_pixels=1024 * 1024)
    with pytest.raises(PayloadError, match="above the limit"):
        check_image_header(_png_claiming(2_000, 2_000), "image/png", max_pixels=1024 * 1024)


def test_decode_image_rejects_decompression_bomb() -> None:
    with pytest.raises(CorruptImageError):
        decode_image(_png_claiming(30_000, 30_000), source="bomb")
