"""Fields of a model card read with checks: each error names the field, its JSON type and the fix.

The card is JSON written by ``vqbench train``, so a field is looked up by its dotted path and a
missing field or one of another type raises ModelError naming the card file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqbench.errors import ModelError

#: JSON names of the Python types ``require_field`` checks for.
JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def require_field(data: object, card_path: Path, path: str, kind: type | None = None) -> Any:
    """Return the field at the dotted ``path`` of a card, raising ModelError that names it when it is missing or of another type.

    File names contain dots, so fields under ``files`` are read with ``file_field`` instead.
    """
    value = data
    walked: list[str] = []
    for part in path.split("."):
        if not isinstance(value, dict):
            raise ModelError(
                f"model card {card_path} has the field '{'.'.join(walked)}' as {json_type_name(value)}, expected an object; "
                "restore the card from the repository or retrain"
            )
        walked.append(part)
        if part not in value:
            raise ModelError(
                f"model card {card_path} is missing the field '{'.'.join(walked)}'; restore the card from the repository or retrain"
            )
        value = value[part]
    if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise ModelError(
            f"model card {card_path} has the field '{path}' as {json_type_name(value)}, expected {JSON_TYPE_NAMES[kind]}; "
            "restore the card from the repository or retrain"
        )
    return value


def json_type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number"
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def file_field(entry: dict, card_path: Path, name: str, field: str, kind: type) -> Any:
    """Return ``files[name][field]`` of a card, raising ModelError that names it when it is missing or of another type."""
    if field not in entry:
        raise ModelError(f"model card {card_path} is missing the field '{field}' of files[{name!r}]; restore the card from the repository or retrain")
    value = entry[field]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ModelError(
            f"model card {card_path} has files[{name!r}].{field} as {json_type_name(value)}, expected {JSON_TYPE_NAMES[kind]}; "
            "restore the card from the repository or retrain"
        )
    return value
