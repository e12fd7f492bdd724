"""Model cards: the JSON file beside each committed model that records what it is.

A card lists every file of the model with its SHA-256 under ``files``
(``{"encoder.onnx": {"sha256": "...", "bytes": 1234}, ...}``), so that a changed or damaged
file is caught before it is measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vqbench.errors import ModelError
from vqbench.models.files import sha256_file

#: Committed models, one folder each, in the repository's top-level models/ folder.
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
CARD_FILE = "card.json"


def read_card(model_dir: Path) -> dict[str, Any]:
    """Read and minimally validate a model folder's card."""
    path = model_dir / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ModelError(f"model card not found: {path}; every folder under models/ needs a {CARD_FILE}") from error
    except json.JSONDecodeError as error:
        raise ModelError(f"model card {path} is not valid JSON: {error}") from error
    if not isinstance(card.get("files"), dict):
        raise ModelError(f"model card {path} has no 'files' mapping of file name to SHA-256")
    return card


def verify_model_dir(model_dir: Path) -> int:
    """Check every file a card lists against its SHA-256; return the number of files checked."""
    card = read_card(model_dir)
    for name, entry in card["files"].items():
        expected = entry["sha256"] if isinstance(entry, dict) else entry
        path = model_dir / name
        if not path.is_file():
            raise ModelError(f"{path} is listed in {model_dir / CARD_FILE} but missing; restore it from git")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"{path} does not match its card: SHA-256 {actual[:16]}..., expected {expected[:16]}...; "
                "restore the file from git or retrain and rewrite the card"
            )
    return len(card["files"])
