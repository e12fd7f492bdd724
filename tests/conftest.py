"""Shared fixtures: where the real LFW data lives, and an isolated cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_DIR / "data" / "lfw-sample"


def lfw_root() -> Path:
    """The full LFW copy: ``VQBENCH_LFW_ROOT``, else ``../shared/data/lfw`` beside the repository."""
    return Path(os.environ.get("VQBENCH_LFW_ROOT", REPO_DIR.parent / "shared" / "data" / "lfw"))


@pytest.fixture(scope="session")
def full_lfw() -> Path:
    root = lfw_root()
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"full LFW not found at {root}; set VQBENCH_LFW_ROOT")
    return root


@pytest.fixture(scope="session")
def sample_lfw() -> Path:
    return SAMPLE_DIR


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the vqbench cache at a per-session folder unless the caller chose one."""
    if "VQBENCH_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("VQBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vqbench-cache"))
