"""Compare two runs row by row: the difference of every numeric figure.

Rows are matched on (pipeline, variant, link, edge_device). A row found in one run only is kept
with the other side empty, so nothing disappears from the comparison silently.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from vqbench.report.loader import load_results
from vqbench.results import RESULT_COLUMNS, ResultRow

KEY_COLUMNS = ("pipeline", "variant", "link", "edge_device")
COMPARISON_COLUMNS = (*KEY_COLUMNS, "metric", "value_a", "value_b", "difference", "relative_change", "presence")


def _numeric_columns() -> list[str]:
    numeric = []
    for name in RESULT_COLUMNS:
        annotation = str(ResultRow.model_fields[name].annotation)
        if ("float" in annotation or "int" in annotation) and "list" not in annotation and name not in KEY_COLUMNS:
            numeric.append(name)
    return numeric


def _frame(run_dir: Path) -> pd.DataFrame:
    rows = [row.model_dump() for row in load_results(Path(run_dir)).rows]
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    # Missing links and devices become "" so that rows without them still match in the merge.
    frame = frame.astype({"link": "object", "edge_device": "object"})
    return frame.fillna({"link": "", "edge_device": ""})


def compare_runs(run_a: Path, run_b: Path) -> pd.DataFrame:
    """Return one row per (pipeline, variant, link, edge_device, metric) with A, B and B - A.

    ``relative_change`` is (B - A) / |A| (NaN when A is 0 or missing). ``presence`` is ``both``,
    ``only_a`` or ``only_b``. Metrics missing on both sides are left out.
    """
    frame_a, frame_b = _frame(run_a), _frame(run_b)
    metrics = _numeric_columns()
    merged = frame_a[[*KEY_COLUMNS, *metrics]].merge(
        frame_b[[*KEY_COLUMNS, *metrics]], on=list(KEY_COLUMNS), how="outer", suffixes=("_a", "_b"), indicator=True
    )
    presence = merged["_merge"].map({"both": "both", "left_only": "only_a", "right_only": "only_b"})
    records = []
    for index, row in merged.iterrows():
        for metric in metrics:
            a, b = _as_float(row[f"{metric}_a"]), _as_float(row[f"{metric}_b"])
            if math.isnan(a) and math.isnan(b):
                continue
            records.append({
                **{key: row[key] for key in KEY_COLUMNS},
                "metric": metric, "value_a": a, "value_b": b, "difference": b - a,
                "relative_change": (b - a) / abs(a) if a not in (0.0,) and not math.isnan(a) else math.nan,
                "presence": presence[index],
            })
    return pd.DataFrame.from_records(records, columns=list(COMPARISON_COLUMNS))


def _as_float(value: object) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    return float(value)


def _row_name(record: pd.Series) -> str:
    extras = [part for part in (record["link"], record["edge_device"]) if part]
    return f"{record['pipeline']}/{record['variant']}" + (f" [{', '.join(extras)}]" if extras else "")


def _printed(comparison: pd.DataFrame, changed_only: bool) -> list[tuple[str, ...]]:
    chosen = comparison
    if changed_only:
        chosen = comparison[(comparison["difference"] != 0) | comparison["difference"].isna()]
    rows = []
    for _, record in chosen.iterrows():
        rows.append((
            _row_name(record), record["metric"], _number(record["value_a"]), _number(record["value_b"]),
            _number(record["difference"]), _change_text(record["value_a"], record["value_b"], record["relative_change"]),
        ))
    return rows


def _change_text(a: float, b: float, change: float) -> str:
    """Relative change as ``+12.3 %``; ``sign changed`` when A and B have opposite signs."""
    if not math.isnan(a) and not math.isnan(b) and a * b < 0:
        return "sign changed"
    return "–" if math.isnan(change) else f"{change * 100:+.1f} %"


NO_DIFFERENCES = "no differences"


def _number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4g}"


_HEADERS = ("row", "metric", "A", "B", "B - A", "change")


def render_comparison_table(comparison: pd.DataFrame, changed_only: bool = True, title: str = "A vs B"):
    """Return a rich Table of the comparison (only changed figures unless ``changed_only`` is False).

    When nothing differs, return a line saying ``A vs B: no differences`` instead of an empty table.
    """
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    rows = _printed(comparison, changed_only)
    if not rows:
        return Text(f"{title}: {NO_DIFFERENCES} in {len(comparison)} compared figures")
    table = Table(title=escape(title))
    for header in _HEADERS:
        table.add_column(header, justify="left" if header in ("row", "metric") else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def render_comparison_markdown(comparison: pd.DataFrame, changed_only: bool = True) -> str:
    """Return the comparison as a Markdown table, or a line saying there are no differences."""
    if not _printed(comparison, changed_only):
        return f"{NO_DIFFERENCES.capitalize()}.\n"
    lines = ["| " + " | ".join(_HEADERS) + " |", "|---|---|---:|---:|---:|---:|"]
    for row in _printed(comparison, changed_only):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"
