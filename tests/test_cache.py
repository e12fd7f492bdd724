"""The disk cache: hits, misses, damaged entries recomputed."""

import numpy as np

from vqbench.data.cache import ArrayCache


def test_round_trip(tmp_path):
    cache = ArrayCache(tmp_path, "chips")
    value = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cache.put("key", value)
    assert np.array_equal(cache.get("key"), value)
    assert cache.hits == 1


def test_miss_returns_none(tmp_path):
    cache = ArrayCache(tmp_path, "chips")
    assert cache.get("absent") is None
    assert cache.misses == 1


def test_damaged_entry_is_deleted_and_missed(tmp_path):
    cache = ArrayCache(tmp_path, "embeddings")
    cache.put("key", np.ones(128, dtype=np.float32))
    entry = next((tmp_path / "embeddings").rglob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:40])  # truncate inside the header
    assert cache.get("key") is None
    assert cache.damaged == 1
    assert not entry.exists()


def test_garbage_entry_is_recomputed(tmp_path):
    cache = ArrayCache(tmp_path, "embeddings")
    cache.put("key", np.ones(4, dtype=np.float32))
    entry = next((tmp_path / "embeddings").rglob("*.npy"))
    entry.write_bytes(b"not a numpy file at all")
    assert cache.get("key") is None
    cache.put("key", np.zeros(4, dtype=np.float32))
    assert np.array_equal(cache.get("key"), np.zeros(4, dtype=np.float32))
