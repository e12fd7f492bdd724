"""The wire format of VQ payloads: a 6-byte header, then the bit-packed code indices.

    byte 0     format version (high 4 bits) | flags (low 4 bits)
    bytes 1-2  model tag: the first 16 bits of SHA-256(model id), big-endian
    byte 3     grid height H'
    byte 4     grid width W'
    byte 5     bits per index b (1..16)
    bytes 6..  the H' * W' indices in row-major order, each as b bits, most significant bit
               first, zero-padded to a whole byte: ceil(H' * W' * b / 8) bytes

Flag bit 0 (``FLAG_DEFLATE``) means the packed indices were compressed with raw DEFLATE
(zlib, level 9, no zlib header). The encoder sets it only when that makes the payload
smaller, so the flag costs nothing when entropy coding does not pay. Other flag bits are
reserved and must be 0. The byte count of a payload is exactly what is sent.

``PayloadFormat.decode`` rejects, with a ``PayloadError`` that names the field, the value
found and the fix: a payload shorter than the header, another format version, unknown flags,
another model's tag, another grid, another index width, a body of the wrong length (or a
DEFLATE stream that does not inflate to it), non-zero padding bits, and indices >= K.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from vqbench.errors import PayloadError

FORMAT_VERSION = 1
HEADER_BYTES = 6
FLAG_DEFLATE = 0x1
_KNOWN_FLAGS = FLAG_DEFLATE


def model_tag(model_id: str) -> int:
    """Return the 16-bit tag that identifies a model in payload headers."""
    return int.from_bytes(hashlib.sha256(model_id.encode()).digest()[:2], "big")


def bits_for(codebook_size: int) -> int:
    """Return the bits needed for one index into a codebook of ``codebook_size`` codes."""
    if not 2 <= codebook_size <= 2**16:
        raise PayloadError(f"codebook_size {codebook_size} is out of range; payloads support 2..65536 codes")
    return (codebook_size - 1).bit_length()


def pack_indices(indices: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers into ``bits`` bits each, most significant bit first."""
    flat = np.asarray(indices, dtype=np.uint32).reshape(-1)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bit_matrix = ((flat[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1)).tobytes()


def unpack_indices(body: bytes, count: int, bits: int) -> tuple[np.ndarray, bool]:
    """Unpack ``count`` indices; also return whether the padding bits are all zero."""
    all_bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8))
    used = all_bits[: count * bits].reshape(count, bits).astype(np.uint32)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.uint32))
    return (used * weights).sum(axis=1).astype(np.int64), not all_bits[count * bits :].any()


@dataclass(frozen=True)
class PayloadFormat:
    """The payload layout of one model: its id, code grid and codebook size."""

    model_id: str
    grid: tuple[int, int]
    codebook_size: int

    def __post_init__(self) -> None:
        if not all(1 <= side <= 255 for side in self.grid):
            raise PayloadError(f"grid {self.grid} is out of range; payload headers hold sides of 1..255")
        bits_for(self.codebook_size)

    @property
    def bits_per_index(self) -> int:
        return bits_for(self.codebook_size)

    @property
    def body_bytes(self) -> int:
        """Bytes of the packed indices before entropy coding."""
        return -(-self.grid[0] * self.grid[1] * self.bits_per_index // 8)

    @property
    def max_bytes(self) -> int:
        """Largest payload this format produces (header plus uncompressed body)."""
        return HEADER_BYTES + self.body_bytes

    def header(self, flags: int) -> bytes:
        return bytes([(FORMAT_VERSION << 4) | flags]) + model_tag(self.model_id).to_bytes(2, "big") + bytes(
            [self.grid[0], self.grid[1], self.bits_per_index]
        )

    def encode(self, indices: np.ndarray, entropy_coding: bool = True) -> bytes:
        """Serialise one (H', W') index grid; compress the body only when that is smaller."""
        indices = np.asarray(indices)
        if indices.shape != self.grid:
            raise PayloadError(f"indices have shape {indices.shape}, expected the model's grid {self.grid}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise PayloadError(
                f"indices span {indices.min()}..{indices.max()}, outside 0..{self.codebook_size - 1} of model {self.model_id}"
            )
        body = pack_indices(indices, self.bits_per_index)
        if entropy_coding:
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            deflated = compressor.compress(body) + compressor.flush()
            if len(deflated) < len(body):
                return self.header(FLAG_DEFLATE) + deflated
        return self.header(0) + body

    def decode(self, payload: bytes) -> np.ndarray:
        """Parse a payload into an (H', W') int64 index grid, checking every header field."""
        if len(payload) < HEADER_BYTES:
            raise PayloadError(
                f"payload length {len(payload)} bytes is shorter than the {HEADER_BYTES}-byte header; "
                "send the whole payload produced by the edge encoder"
            )
        flags = self._check_header(payload)
        body = payload[HEADER_BYTES:]
        if flags & FLAG_DEFLATE:
            body = self._inflate(body)
        if len(body) != self.body_bytes:
            raise PayloadError(
                f"payload body length {len(body)} bytes does not match the {self.body_bytes} bytes of a "
                f"{self.grid[0]}x{self.grid[1]} grid at {self.bits_per_index} bits per index; the payload is truncated or padded"
            )
        indices, clean_padding = unpack_indices(body, self.grid[0] * self.grid[1], self.bits_per_index)
        if not clean_padding:
            raise PayloadError("payload padding bits after the last index are not zero; the body is corrupt")
        if indices.max(initial=0) >= self.codebook_size:
            raise PayloadError(
                f"payload index value {int(indices.max())} is out of range for codebook size {self.codebook_size} "
                f"of model {self.model_id}; the payload is corrupt or from another model"
            )
        return indices.reshape(self.grid)

    def _check_header(self, payload: bytes) -> int:
        version, flags = payload[0] >> 4, payload[0] & 0x0F
        if version != FORMAT_VERSION:
            raise PayloadError(
                f"payload format version {version} is not supported (expected {FORMAT_VERSION}); "
                "encode with the same vqbench release as the cloud"
            )
        if flags & ~_KNOWN_FLAGS:
            raise PayloadError(f"payload flags 0x{flags:x} set reserved bits (known flags: 0x{_KNOWN_FLAGS:x}); the header is corrupt")
        tag = int.from_bytes(payload[1:3], "big")
        if tag != model_tag(self.model_id):
            raise PayloadError(
                f"payload model tag 0x{tag:04x} does not match model {self.model_id} (tag 0x{model_tag(self.model_id):04x}); "
                "encode on the edge with the same model the cloud decodes with"
            )
        grid = (payload[3], payload[4])
        if grid != self.grid:
            raise PayloadError(f"payload grid {grid[0]}x{grid[1]} does not match the model's {self.grid[0]}x{self.grid[1]}; use the same model on both halves")
        if payload[5] != self.bits_per_index:
            raise PayloadError(
                f"payload bits per index {payload[5]} does not match the model's {self.bits_per_index} "
                f"(codebook size {self.codebook_size}); use the same model on both halves"
            )
        return flags

    def _inflate(self, body: bytes) -> bytes:
        decompressor = zlib.decompressobj(-15)
        try:
            inflated = decompressor.decompress(body, self.body_bytes + 1)
        except zlib.error as error:
            raise PayloadError(f"payload body is flagged DEFLATE but does not inflate ({error}); the payload is corrupt") from error
        if len(inflated) > self.body_bytes:
            raise PayloadError(
                f"payload DEFLATE body inflates to more than the model's {self.body_bytes} bytes of indices; "
                "the payload is corrupt or was made for another model"
            )
        if not decompressor.eof or decompressor.unused_data:
            raise PayloadError(
                f"payload DEFLATE body does not end cleanly after inflating to {len(inflated)} bytes "
                f"(expected {self.body_bytes}); the payload is truncated or padded"
            )
        return inflated
