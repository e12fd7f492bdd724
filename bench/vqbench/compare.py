"""Compare two runs row by row: the difference of every numeric figure.

Rows are matched on (pipeline, variant, link, edge_device). A row found in one run only is kept
with the other side empty, so nothing disappears from the comparison silently.
Each energy figure carries the method that produced it on each side (``method_a``,
``method_b``), and a figure whose method changed is printed even when its value did not.
``comparison_notes`` heads the output: it warns when the two runs scored different face pairs
(their accuracy figures then measure different things), when a run is incomplete or its
results.json contradicts itself, when a run has no rows, when rows exist in one run only, and
when energy methods changed between the runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vqbench.check.validation import run_evaluation_set
from vqbench.report.findings import is_unmeasured
from vqbench.report.loader import incomplete_cause, load_results, run_completeness
from vqbench.results import RESULT_COLUMNS, ResultRow, RunResults
from vqbench.text import plural

KEY_COLUMNS = ("pipeline", "variant", "link", "edge_device")
COMPARISON_COLUMNS = (
    *KEY_COLUMNS, "metric", "value_a", "value_b", "difference", "relative_change", "presence", "method_a", "method_b",
)

#: Frame column holding ``_combined_methods`` of each row, such as ``measured-rapl + modeled-link``.
COMBINED_METHODS = "combined_energy_methods"
#: The column of a results row that names the method behind each energy figure. Total energy and
#: CO2e add up every stage, so their method is the stages' methods joined (``COMBINED_METHODS``).
METHOD_COLUMNS = {
    "edge_energy_j_per_inference": "edge_energy_method",
    "edge_energy_ci95_j": "edge_energy_method",
    "edge_dynamic_energy_j_per_inference": "edge_energy_method",
    "cloud_energy_j_per_inference": "cloud_energy_method",
    "cloud_energy_ci95_j": "cloud_energy_method",
    "cloud_dynamic_energy_j_per_inference": "cloud_energy_method",
    "network_energy_j_per_inference": "network_energy_method",
    "network_transit_energy_j_per_inference": "network_energy_method",
    "network_transit_energy_j_per_inference_min": "network_energy_method",
    "network_transit_energy_j_per_inference_max": "network_energy_method",
    "total_energy_j_per_inference": COMBINED_METHODS,
    "co2e_g_per_inference": COMBINED_METHODS,
}
#: Printed for a figure whose row does not record its method.
METHOD_NOT_RECORDED = "not recorded"


def _numeric_columns() -> list[str]:
    numeric = []
    for name in RESULT_COLUMNS:
        annotation = str(ResultRow.model_fields[name].annotation)
        if ("float" in annotation or "int" in annotation) and "list" not in annotation and name not in KEY_COLUMNS:
            numeric.append(name)
    return numeric


def _frame(run_dir: Path) -> pd.DataFrame:
    rows = load_results(Path(run_dir)).rows
    records = [{**row.model_dump(), COMBINED_METHODS: _combined_methods(row)} for row in rows]
    # The column list also fixes the columns of a run without rows.
    frame = pd.DataFrame(records, columns=[*RESULT_COLUMNS, COMBINED_METHODS])
    # Missing links and devices become "" so that rows without them still match in the merge.
    frame = frame.astype({"link": "object", "edge_device": "object"})
    return frame.fillna({"link": "", "edge_device": ""})


def _combined_methods(row: ResultRow) -> str | None:
    """Join the methods of the stage energies a row has, such as ``measured-rapl + modeled-link``."""
    methods: list[str] = []
    for stage in ("edge", "cloud", "network"):
        if getattr(row, f"{stage}_energy_j_per_inference") is not None:
            method = getattr(row, f"{stage}_energy_method") or METHOD_NOT_RECORDED
            if method not in methods:
                methods.append(method)
    return " + ".join(methods) or None


def compare_runs(run_a: Path, run_b: Path) -> pd.DataFrame:
    """Return one row per (pipeline, variant, link, edge_device, metric) with A, B and B - A.

    ``relative_change`` is (B - A) / |A| (NaN when A is 0 or missing). ``presence`` is ``both``,
    ``only_a`` or ``only_b``. Metrics missing on both sides are left out. ``method_a`` and
    ``method_b`` name how an energy figure was obtained on a side that has the figure (see
    ``METHOD_COLUMNS``), and are None for other metrics and for a side without the figure.
    """
    frame_a, frame_b = _frame(run_a), _frame(run_b)
    metrics = _numeric_columns()
    methods = sorted(set(METHOD_COLUMNS.values()))
    columns = [*KEY_COLUMNS, *metrics, *methods]
    # Marker columns instead of merge(indicator=True): the indicator is inserted into the wide
    # merged frame, which makes pandas warn about fragmentation.
    merged = frame_a[columns].assign(_in_a=True).merge(
        frame_b[columns].assign(_in_b=True), on=list(KEY_COLUMNS), how="outer", suffixes=("_a", "_b"),
    )
    in_a, in_b = merged["_in_a"].notna(), merged["_in_b"].notna()
    presence = pd.Series(np.select([in_a & in_b, in_a], ["both", "only_a"], "only_b"), index=merged.index)
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
                "method_a": _side_method(row, metric, "_a", a), "method_b": _side_method(row, metric, "_b", b),
            })
    return pd.DataFrame.from_records(records, columns=list(COMPARISON_COLUMNS))


def _side_method(row: pd.Series, metric: str, suffix: str, value: float) -> str | None:
    """Return the method behind one side's figure, or None when that side has no figure or the metric has no method."""
    column = METHOD_COLUMNS.get(metric)
    if column is None or math.isnan(value):
        return None
    method = row[f"{column}{suffix}"]
    return method if isinstance(method, str) and method else METHOD_NOT_RECORDED


def method_changed(method_a: object, method_b: object) -> bool:
    """True when both sides have a figure and its methods differ."""
    return isinstance(method_a, str) and isinstance(method_b, str) and method_a != method_b


def _method_kinds(method: str) -> set[str]:
    """Return the kinds of the methods in ``method``, so ``measured-rapl + modeled-link`` gives {measured, modeled}."""
    if method == METHOD_NOT_RECORDED:
        return {METHOD_NOT_RECORDED}
    return {part.strip().split("-", 1)[0] for part in method.split(" + ")}


def _kind_change(method_a: str, method_b: str) -> str | None:
    """Describe how the changed methods differ in kind, such as ``measured vs estimated``, or return None if alike.

    Only the methods found on one side count, so ``measured-rapl + modeled-link`` against
    ``estimated-codecarbon + modeled-link`` gives ``measured vs estimated``. When one side's
    methods include all of the other's (a total without one stage's figure), the stage methods
    that only one side has are named instead.
    """
    parts_a, parts_b = set(method_a.split(" + ")), set(method_b.split(" + "))
    changed_a, changed_b = parts_a - parts_b, parts_b - parts_a
    if not changed_b:
        return f"no {' + '.join(sorted(changed_a))} part in B"
    if not changed_a:
        return f"no {' + '.join(sorted(changed_b))} part in A"
    kinds_a = set().union(*(_method_kinds(part) for part in changed_a))
    kinds_b = set().union(*(_method_kinds(part) for part in changed_b))
    if kinds_a == kinds_b:
        return None
    return f"{' + '.join(sorted(kinds_a))} vs {' + '.join(sorted(kinds_b))}"


def _mixes_measured(method_a: str, method_b: str) -> bool:
    """True when the methods that changed are measured on one side and estimated or modeled on the other.

    Only the methods found on one side count, as in ``_kind_change``.
    """
    parts_a, parts_b = set(method_a.split(" + ")), set(method_b.split(" + "))
    changed_a, changed_b = parts_a - parts_b, parts_b - parts_a
    if not changed_a or not changed_b:
        return False

    def measured(parts: set[str]) -> bool:
        return all(part.startswith("measured") for part in parts)

    def unmeasured(parts: set[str]) -> bool:
        return any(is_unmeasured(part) for part in parts)

    return (measured(changed_a) and unmeasured(changed_b)) or (unmeasured(changed_a) and measured(changed_b))


def method_text(method_a: object, method_b: object) -> str:
    """Print the method column: one method, or ``A → B (method changed: measured vs estimated)``."""
    a = method_a if isinstance(method_a, str) else None
    b = method_b if isinstance(method_b, str) else None
    if not method_changed(a, b):
        return a or b or ""
    kinds = _kind_change(a, b)
    return f"{a} → {b} (method changed{': ' + kinds if kinds else ''})"


def method_change_note(comparison: pd.DataFrame) -> str | None:
    """Return a note counting the energy figures whose method differs between the runs, else None."""
    changed = [(a, b) for a, b in zip(comparison["method_a"], comparison["method_b"]) if method_changed(a, b)]
    if not changed:
        return None
    mixed = sum(_mixes_measured(a, b) for a, b in changed)
    note = (f"{len(changed)} energy figures were obtained by a different method in B than in A (see the method "
            "column), so their differences mix a change of method with a change of energy.")
    if mixed:
        note += (f" {mixed} of them compare a measured figure with an estimated or modeled one, so their "
                 "difference is not a measured change.")
    return note


def incomplete_run_notes(run_a: Path, run_b: Path) -> list[str]:
    """Return one note per incomplete run, naming why it is incomplete and the variants it lacks."""
    notes = []
    for side, run_dir in (("A", Path(run_a)), ("B", Path(run_b))):
        results = load_results(run_dir)
        complete, missing = run_completeness(results)
        if complete:
            if missing:
                notes.append(_contradicting_completeness_note(side, run_dir, missing))
            continue
        label = f"{side} ({run_dir.name}) is an incomplete run ({incomplete_cause(results)})"
        if missing:
            noun = "the variant" if len(missing) == 1 else "the variants"
            notes.append(f"{label}, so it has no figures for {noun} {', '.join(missing)}; "
                         f"they show as – on its side.")
        else:
            notes.append(f"{label} and does not list the variants it lacks.")
    return notes


def _contradicting_completeness_note(side: str, run_dir: Path, missing: Sequence[str]) -> str:
    """Describe a results.json marked complete that still lists variants in ``variants_missing``."""
    noun = "the variant" if len(missing) == 1 else "the variants"
    listed = ", ".join(missing)
    return (f"{side} ({run_dir.name}) is marked complete, but its results.json also lists {noun} {listed} in "
            f"variants_missing. The file contradicts itself, so check whether that run finished before comparing "
            f"its figures for {listed}.")


def empty_run_notes(run_a: Path, run_b: Path) -> list[str]:
    """Return one note per run that has no rows although its results.json marks it complete.

    An incomplete run without rows is left to ``incomplete_run_notes``.
    """
    notes = []
    for side, run_dir in (("A", Path(run_a)), ("B", Path(run_b))):
        results = load_results(run_dir)
        complete, _ = run_completeness(results)
        if complete and not results.rows:
            notes.append(f"{side} ({run_dir.name}) has no rows although its results.json marks it complete, "
                         "so every figure shows as – on its side.")
    return notes


#: Maximum number of rows or variants that the note on one-sided rows names. The rest are only counted.
MAX_NAMED_ROWS = 10

RowKey = tuple[str, str, str, str]


def _row_keys(results: RunResults) -> list[RowKey]:
    """Return the (pipeline, variant, link, edge_device) of each row, with "" for a missing link or device."""
    return [(row.pipeline, row.variant, row.link or "", row.edge_device or "") for row in results.rows]


def _key_name(key: RowKey) -> str:
    """Name a row as the table does: ``pipeline/variant [link, device]``."""
    pipeline, variant, link, device = key
    extras = [part for part in (link, device) if part]
    return f"{pipeline}/{variant}" + (f" [{', '.join(extras)}]" if extras else "")


def _one_sided_names(only_here: list[RowKey], all_here: list[RowKey]) -> list[str]:
    """Name the rows of ``only_here``: a variant whose rows are all in ``only_here`` once, with its row count."""
    names = []
    by_variant: dict[str, list[RowKey]] = {}
    for key in only_here:
        by_variant.setdefault(f"{key[0]}/{key[1]}", []).append(key)
    for variant, keys in by_variant.items():
        rows_of_variant = sum(1 for key in all_here if f"{key[0]}/{key[1]}" == variant)
        if len(keys) == rows_of_variant:
            names.append(f"{variant} ({plural(len(keys), 'row')})")
        else:
            names.extend(_key_name(key) for key in keys)
    if len(names) > MAX_NAMED_ROWS:
        names = [*names[:MAX_NAMED_ROWS], f"and {len(names) - MAX_NAMED_ROWS} more"]
    return names


def one_sided_rows_note(run_a: Path, run_b: Path) -> str | None:
    """Return a note that counts and names the rows found in one run only, else None.

    Rows are matched on (pipeline, variant, link, edge_device), as in ``compare_runs``. Rows that
    another note already explains are left out: all rows when the other run has none, and the
    rows of variants that the other run lists in ``variants_missing``.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    results_a, results_b = load_results(run_a), load_results(run_b)
    keys_a, keys_b = _row_keys(results_a), _row_keys(results_b)

    def unexplained(keys: list[RowKey], other_keys: list[RowKey], other: RunResults) -> list[RowKey]:
        if not other_keys:
            return []
        other_set = set(other_keys)
        _, other_missing = run_completeness(other)
        return [key for key in keys if key not in other_set and f"{key[0]}/{key[1]}" not in other_missing]

    only_a, only_b = unexplained(keys_a, keys_b, results_b), unexplained(keys_b, keys_a, results_a)
    if not only_a and not only_b:
        return None
    counts = []
    lists = []
    if only_a:
        counts.append(f"{plural(len(only_a), 'row')} {'is' if len(only_a) == 1 else 'are'} only in A ({run_a.name})")
        lists.append(f"Only in A: {', '.join(_one_sided_names(only_a, keys_a))}.")
    if only_b:
        counts.append(f"{plural(len(only_b), 'row')} {'is' if len(only_b) == 1 else 'are'} only in B ({run_b.name})")
        lists.append(f"Only in B: {', '.join(_one_sided_names(only_b, keys_b))}.")
    return (f"{' and '.join(counts)}, so their figures show as – on the other side. A renamed variant, link "
            f"or device shows up this way. {' '.join(lists)}")


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


def deployment_note(run_a: Path, run_b: Path) -> str | None:
    """Return a note when both runs record their deployment settings and those differ, else None."""
    results_a, results_b = load_results(Path(run_a)), load_results(Path(run_b))
    settings_a, settings_b = results_a.assumptions.get("deployment"), results_b.assumptions.get("deployment")
    if settings_a is None or settings_b is None or settings_a == settings_b:
        return None
    return (f"{Path(run_a).name} and {Path(run_b).name} model their links with different deployment settings "
            f"({_settings_difference(settings_a, settings_b)}), so their network and end-to-end figures differ "
            "for that reason too.")


def comparison_notes(run_a: Path, run_b: Path, comparison: pd.DataFrame) -> list[str]:
    """Collect the notes that head a comparison.

    They cover, in this order: evaluation sets, deployment settings, incomplete or
    self-contradicting runs, runs without rows, rows in one run only and changed energy methods.
    """
    notes = [evaluation_set_note(run_a, run_b), deployment_note(run_a, run_b), *incomplete_run_notes(run_a, run_b),
             *empty_run_notes(run_a, run_b), one_sided_rows_note(run_a, run_b), method_change_note(comparison)]
    return [note for note in notes if note is not None]


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
        pairs = zip(comparison["method_a"], comparison["method_b"])
        changed_method = pd.Series([method_changed(a, b) for a, b in pairs], index=comparison.index, dtype=bool)
        chosen = comparison[(comparison["difference"] != 0) | comparison["difference"].isna() | changed_method]
    rows = []
    for _, record in chosen.iterrows():
        rows.append((
            _row_name(record), record["metric"], method_text(record["method_a"], record["method_b"]),
            _number(record["value_a"]), _number(record["value_b"]), _number(record["difference"]),
            _change_text(record["value_a"], record["value_b"], record["relative_change"]),
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


_HEADERS = ("row", "metric", "method", "A", "B", "B - A", "change")
_TEXT_HEADERS = ("row", "metric", "method")


def render_comparison_table(comparison: pd.DataFrame, changed_only: bool = True, title: str = "A vs B",
                            notes: Sequence[str] = ()):
    """Return a rich Table of the comparison (only changed figures unless ``changed_only`` is False).

    When nothing differs, return a line saying ``A vs B: no differences`` instead of an empty table.
    The ``notes`` (from ``comparison_notes``) are printed above either, one ``note:`` line each.
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
            # Metric names are searched for and copied, so they are never cut. The other cells wrap.
            body.add_column(header, justify="left" if header in _TEXT_HEADERS else "right", no_wrap=header == "metric")
        for row in rows:
            body.add_row(*(escape(cell) for cell in row))
    if not notes:
        return body
    return Group(*(Text(f"note: {note}", style="yellow") for note in notes), body)


def render_comparison_markdown(comparison: pd.DataFrame, changed_only: bool = True, notes: Sequence[str] = ()) -> str:
    """Return the comparison as a Markdown table, or a line saying there are no differences.

    The ``notes`` (from ``comparison_notes``) come first, each as a bold "Note:" paragraph.
    """
    header = "".join(f"**Note:** {note}\n\n" for note in notes)
    if not _printed(comparison, changed_only):
        return f"{header}{NO_DIFFERENCES.capitalize()}.\n"
    alignments = ["---" if name in _TEXT_HEADERS else "---:" for name in _HEADERS]
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "|".join(alignments) + "|"]
    for row in _printed(comparison, changed_only):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return header + "\n".join(lines) + "\n"
