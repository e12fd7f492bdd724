"""JSON input files with repeated keys, which ``json.loads`` reads silently, keeping the last value.

A results or baseline file that gives a key twice was edited by hand, so its readers reject it
with the key's path instead of measuring or gating with one of the two values.
"""

from __future__ import annotations

import json
from typing import Any


class JsonObject(dict):
    """A JSON object as ``json.loads`` builds it, with the first key that the text gives twice."""

    repeated_key: str | None = None


def _json_object(pairs: list[tuple[str, Any]]) -> JsonObject:
    """Build a JSON object and note its first repeated key, whose earlier value a plain dict drops silently."""
    content = JsonObject(pairs)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            content.repeated_key = key
            break
        seen.add(key)
    return content


def _child_location(location: str, key: object) -> str:
    return f"{location}.{key}" if location else str(key)


def repeated_key_location(value: object, location: str = "") -> str | None:
    """Return the key path of the first key given twice in a JSON object inside ``value``, or None."""
    children: list[tuple[str, object]] = []
    if isinstance(value, JsonObject):
        if value.repeated_key is not None:
            return _child_location(location, value.repeated_key)
        children = [(_child_location(location, key), item) for key, item in value.items()]
    elif isinstance(value, list):
        children = [(_child_location(location, index), item) for index, item in enumerate(value)]
    for child_location, item in children:
        found = repeated_key_location(item, child_location)
        if found is not None:
            return found
    return None


def parse_json_noting_repeats(content: bytes) -> object | None:
    """Parse JSON text, noting in each object the first key it gives twice. Return None when the text is not JSON."""
    try:
        return json.loads(content, object_pairs_hook=_json_object)
    except ValueError:
        # Invalid JSON is left to the caller's schema validation, which reports where it breaks.
        return None
