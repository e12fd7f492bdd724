"""Small helpers for the wording of messages shared by the runner, the gate and the reports."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """Return the count with the noun in the right number: ``1 row``, ``2 rows``."""
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"
