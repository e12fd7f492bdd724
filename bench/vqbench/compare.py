"""Compare two runs row by row: the difference of every numeric figure.

Rows are matched on (pipeline, variant, link, edge_device). A row found in one run only is kept
with the other side empty, so nothing disappears from the comparison silently.
``evaluation_set_note`` warns when the two runs scored different face pairs, because their
accuracy figures then measure different things.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from vqbench.check.validation import run_evaluation_set
from vqbench.report.loader import load_results
from vqbench.results import RESULT_COLUMNS, ResultRow, RunResults

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


#: Entries of results.json ``assumptions`` that describe the evaluation set beyond its pairs and
#: folds. They are compared only when both runs record them (runs made before vqbench recorded
#: them have neither).
EVALUATION_ASSUMPTIONS = ("dataset", "alignment")


def evaluation_set_differences(results_a: RunResults, results_b: RunResults) -> list[str]:
    """List how the evaluation sets of two runs differ, one ``what: A vs B`` phrase per difference.

    Pair counts and folds come from ``run_evaluation_set``, as `vqbench check` reads them. A side
    whose rows disagree or do not record them is not compared. The ``EVALUATION_ASSUMPTIONS``
    entries are compared when both runs record them.
    """
    set_a, set_b = run_evaluation_set(results_a), run_evaluation_set(results_b)
    differences = []
    if set_a.n_pairs is not None and set_b.n_pairs is not None and set_a.n_pairs != set_b.n_pairs:
        differences.append(f"pairs: {set_a.n_pairs} vs {set_b.n_pairs}")
    if set_a.folds is not None and set_b.folds is not None and set_a.folds != set_b.folds:
        differences.append(f"folds: {_folds_text(set_a.folds)} vs {_folds_text(set_b.folds)}")
    for name in EVALUATION_ASSUMPTIONS:
        settings_a, settings_b = results_a.assumptions.get(name), results_b.assumptions.get(name)
        if settings_a is not None and settings_b is not None and settings_a != settings_b:
            differences.append(f"{name}: {_settings_difference(settings_a, settings_b)}")
    return differences


def _folds_text(folds: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(fold) for fold in folds) + "]"


def _settings_difference(settings_a: object, settings_b: object) -> str:
    """Describe two differing settings: the differing keys when both are mappings, else both values."""
    if not (isinstance(settings_a, dict) and isinstance(settings_b, dict)):
        return f"{settings_a!r} vs {settings_b!r}"
    keys = sorted(set(settings_a) | set(settings_b))
    return ", ".join(f"{key} {settings_a.get(key)!r} vs {settings_b.get(key)!r}"
                     for key in keys if settings_a.get(key) != settings_b.get(key))


def evaluation_set_note(run_a: Path, run_b: Path) -> str | None:
    """Return a note for the comparison's header when the runs were not evaluated alike, else None.

    The note lists what differs (``evaluation_set_differences``). When nothing recorded differs but
    the scenarios do, and the runs do not both record their data set and alignment, the note warns
    that results.json cannot show whether the two scenarios used the same faces.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    results_a, results_b = load_results(run_a), load_results(run_b)
    names = (f"{run_a.name} (scenario {results_a.scenario_name!r}) and "
             f"{run_b.name} (scenario {results_b.scenario_name!r})")
    differences = evaluation_set_differences(results_a, results_b)
    if differences:
        return (f"{names} were evaluated on different face pairs or settings ({'; '.join(differences)}), "
                "so their accuracy figures are not comparable.")
    recorded = all(name in results.assumptions for results in (results_a, results_b) for name in EVALUATION_ASSUMPTIONS)
    if results_a.scenario_name != results_b.scenario_name and not recorded:
        return (f"{names} come from different scenarios. Their results.json files show no difference in pair "
                "counts or folds, but they do not record the data set and alignment settings, so compare accuracy "
                "only if both scenarios use the same.")
    return None


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


def render_comparison_table(comparison: pd.DataFrame, changed_only: bool = True, title: str = "A vs B",
                            note: str | None = None):
    """Return a rich Table of the comparison (only changed figures unless ``changed_only`` is False).

    When nothing differs, return a line saying ``A vs B: no differences`` instead of an empty table.
    A ``note`` (from ``evaluation_set_note``) is printed above either.
    """
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    rows = _printed(comparison, changed_only)
    if not rows:
        body = Text(f"{title}: {NO_DIFFERENCES} in {len(comparison)} compared figures")
    else:
        body = Table(title=escape(title))
        for header in _HEADERS:
            body.add_column(header, justify="left" if header in ("row", "metric") else "right")
        for row in rows:
            body.add_row(*(escape(cell) for cell in row))
    if note is None:
        return body
    return Group(Text(f"note: {note}", style="yellow"), body)


def render_comparison_markdown(comparison: pd.DataFrame, changed_only: bool = True, note: str | None = None) -> str:
    """Return the comparison as a Markdown table, or a line saying there are no differences.

    A ``note`` (from ``evaluation_set_note``) comes first, as a bold "Note:" paragraph.
    """
    header = "" if note is None else f"**Note:** {note}\n\n"
    if not _printed(comparison, changed_only):
        return f"{header}{NO_DIFFERENCES.capitalize()}.\n"
    lines = ["| " + " | ".join(_HEADERS) + " |", "|---|---|---:|---:|---:|---:|"]
    for row in _printed(comparison, changed_only):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return header + "\n".join(lines) + "\n"
