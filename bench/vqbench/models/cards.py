"""Model cards: the JSON file beside each committed model that records what it is.

A card lists every file of the model with its SHA-256 and size under ``files``
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
    """Check every file a card lists against its SHA-256 and byte count; return the number of files checked.

    An entry may be the SHA-256 alone (``"encoder.onnx": "ab12..."``), and then only the SHA-256
    is compared.
    """
    card = read_card(model_dir)
    card_path = model_dir / CARD_FILE
    for name, entry in card["files"].items():
        expected_sha256, expected_bytes = _expected_file(card_path, name, entry)
        path = model_dir / name
        if not path.is_file():
            raise ModelError(f"{path} is listed in {card_path} but missing; restore it from git")
        size = path.stat().st_size
        if expected_bytes is not None and size != expected_bytes:
            raise ModelError(
                f"{path} does not match its card: {size} bytes, expected {expected_bytes}; "
                "restore the file from git or retrain and rewrite the card"
            )
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ModelError(
                f"{path} does not match its card: SHA-256 {actual[:16]}..., expected {expected_sha256[:16]}...; "
                "restore the file from git or retrain and rewrite the card"
            )
    return len(card["files"])


def _expected_file(card_path: Path, name: str, entry: object) -> tuple[str, int | None]:
    """Return the SHA-256 and byte count (None when not listed) that a card's ``files`` entry gives."""
    if isinstance(entry, str):
        return entry, None
    if not isinstance(entry, dict):
        raise ModelError(f"model card {card_path} has files[{name!r}] of type {type(entry).__name__}, expected an object with 'sha256'; restore the card from git")
    if "sha256" not in entry:
        raise ModelError(f"model card {card_path} is missing the field 'sha256' of files[{name!r}]; restore the card from git")
    expected_bytes = entry.get("bytes")
    if expected_bytes is not None and (not isinstance(expected_bytes, int) or isinstance(expected_bytes, bool)):
        raise ModelError(f"model card {card_path} has files[{name!r}].bytes {expected_bytes!r}, expected a whole number of bytes; restore the card from git")
    return entry["sha256"], expected_bytes
