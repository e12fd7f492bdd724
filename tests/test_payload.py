"""Payload wire format: round trips, entropy-coding choice and every rejection."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from vqbench.errors import PayloadError
from vqbench.pipelines.payload import FLAG_DEFLATE, HEADER_BYTES, PayloadFormat, model_tag, pack_indices, unpack_indices

FORMAT = PayloadFormat("vq-test", (14, 14), 256)


def random_indices(fmt: PayloadFormat, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, fmt.codebook_size, fmt.grid)


@pytest.mark.parametrize(
    ("grid", "codebook_size", "expected_bytes"),
    [((14, 14), 256, 196), ((14, 14), 512, 221), ((10, 10), 128, 88), ((8, 8), 4096, 96), ((28, 28), 256, 784), ((3, 5), 2, 2)],
)
def test_round_trip_sizes(grid: tuple[int, int], codebook_size: int, expected_bytes: int) -> None:
    fmt = PayloadFormat("vq-test", grid, codebook_size)
    indices = random_indices(fmt)
    payload = fmt.encode(indices, entropy_coding=False)
    assert len(payload) == HEADER_BYTES + expected_bytes
    assert fmt.body_bytes == expected_bytes
    np.testing.assert_array_equal(fmt.decode(payload), indices)


def test_extreme_index_values_round_trip() -> None:
    indices = np.full(FORMAT.grid, FORMAT.codebook_size - 1)
    indices[0, 0] = 0
    np.testing.assert_array_equal(FORMAT.decode(FORMAT.encode(indices, entropy_coding=False)), indices)


def test_entropy_coding_used_only_when_smaller() -> None:
    constant = np.zeros(FORMAT.grid, dtype=np.int64)
    compressed = FORMAT.encode(constant)
    assert compressed[0] & FLAG_DEFLATE
    assert len(compressed) < FORMAT.max_bytes
    np.testing.assert_array_equal(FORMAT.decode(compressed), constant)

    noisy = random_indices(FORMAT)
    plain = FORMAT.encode(noisy)
    assert not plain[0] & FLAG_DEFLATE
    assert len(plain) == FORMAT.max_bytes


def test_pack_unpack_bits() -> None:
    packed = pack_indices(np.array([5, 0, 7]), 3)
    assert packed == bytes([0b10100011, 0b10000000])
    values, clean = unpack_indices(packed, 3, 3)
    assert values.tolist() == [5, 0, 7]
    assert clean


def _with_byte(payload: bytes, position: int, value: int) -> bytes:
    changed = bytearray(payload)
    changed[position] = value
    return bytes(changed)


def _rejections() -> list[tuple[str, bytes, str]]:
    good = FORMAT.encode(random_indices(FORMAT), entropy_coding=False)
    other_tag = model_tag("another-model").to_bytes(2, "big")
    return [
        ("short", good[:3], "shorter than the 6-byte header"),
        ("version", _with_byte(good, 0, (2 << 4)), "format version 2"),
        ("flags", _with_byte(good, 0, (1 << 4) | 0x4), "reserved bits"),
        ("model", good[:1] + other_tag + good[3:], "does not match model vq-test"),
        ("grid", _with_byte(good, 3, 13), "grid 13x14"),
        ("bits", _with_byte(good, 5, 9), "bits per index 9"),
        ("truncated", good[:-1], "body length 195 bytes"),
        ("padded", good + b"\x00", "body length 197 bytes"),
        ("deflate", _with_byte(good, 0, (1 << 4) | FLAG_DEFLATE), "DEFLATE"),
    ]


@pytest.mark.parametrize(("case", "payload", "message"), _rejections(), ids=[case for case, _, _ in _rejections()])
def test_decode_rejects(case: str, payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        FORMAT.decode(payload)


def test_decode_rejects_out_of_range_index() -> None:
    # K=200 still packs 8 bits per index, so 250 fits the bits but not the codebook.
    fmt = PayloadFormat("vq-test", (14, 14), 200)
    payload = fmt.header(0) + pack_indices(np.full(fmt.grid, 250), 8)
    with pytest.raises(PayloadError, match="index value 250 is out of range"):
        fmt.decode(payload)


def test_decode_rejects_nonzero_padding() -> None:
    # 15 indices of 3 bits fill 45 bits, so the last byte carries 3 padding bits.
    fmt = PayloadFormat("vq-test", (3, 5), 8)
    good = fmt.encode(np.zeros((3, 5), dtype=np.int64), entropy_coding=False)
    with pytest.raises(PayloadError, match="padding bits"):
        fmt.decode(good[:-1] + bytes([good[-1] | 0x01]))


def test_decode_rejects_deflate_with_trailing_bytes() -> None:
    compressed = FORMAT.encode(np.zeros(FORMAT.grid, dtype=np.int64))
    with pytest.raises(PayloadError, match="does not end cleanly"):
        FORMAT.decode(compressed + b"\x00")


def test_decode_names_deflate_bomb_limit() -> None:
    plain = FORMAT.encode(np.zeros(FORMAT.grid, dtype=np.int64), entropy_coding=False)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflate.compress(bytes(1_000_000)) + deflate.flush()
    # The low four bits of the first header byte are the flags.
    flagged = bytes([plain[0] | FLAG_DEFLATE]) + plain[1:HEADER_BYTES] + bomb
    with pytest.raises(PayloadError, match=f"inflates to more than the model's {FORMAT.body_bytes} bytes"):
        FORMAT.decode(flagged)


def test_encode_rejects_bad_indices() -> None:
    with pytest.raises(PayloadError, match="shape"):
        FORMAT.encode(np.zeros((13, 14), dtype=np.int64))
    with pytest.raises(PayloadError, match="outside 0..255"):
        FORMAT.encode(np.full(FORMAT.grid, 256))


def test_format_rejects_bad_layout() -> None:
    with pytest.raises(PayloadError, match="grid"):
        PayloadFormat("m", (0, 14), 256)
    with pytest.raises(PayloadError, match="codebook_size"):
        PayloadFormat("m", (14, 14), 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fp16_embedding_with_non_finite_values_is_rejected(bad):
    from vqbench.pipelines.edge_vq import decode_embedding, encode_embedding

    embedding = np.linspace(-0.5, 0.5, 128, dtype=np.float32)
    payload = bytearray(encode_embedding(embedding, "fp16"))
    payload[1 + 2 * 7 : 1 + 2 * 8] = np.array([bad], dtype="<f2").tobytes()
    with pytest.raises(PayloadError, match=r"NaN or infinite values \(1 of 128 components\)"):
        decode_embedding(bytes(payload), "fp16")
    np.testing.assert_allclose(decode_embedding(encode_embedding(embedding, "fp16"), "fp16"), embedding, atol=1e-3)
