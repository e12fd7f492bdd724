"""Renderers of a check report and the writer of its report files.

The renderers produce the console table with its summary line, Markdown for a pull-request
comment, JUnit XML and github-action-benchmark JSON. ``write_check_outputs`` writes the files
that the options of ``CHECK_RENDERERS`` name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from vqbench.check.paths import check_output_path, write_output_text
from vqbench.check.verdicts import FAILING, CheckReport, CheckResult, plural
from vqbench.errors import DataError


_STATUS_STYLE = {"pass": "green", "improved": "cyan", "warn": "yellow", "regression": "bold red",
                 "missing": "bold red", "new": "blue", "skipped": "dim", "inconclusive": "magenta"}
_STATUS_ORDER = ("regression", "missing", "inconclusive", "warn", "improved", "new", "skipped", "pass")


def _sorted(results: tuple[CheckResult, ...]) -> list[CheckResult]:
    return sorted(results, key=lambda r: (_STATUS_ORDER.index(r.status), r.row, r.metric))


def _format_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _format_change(result: CheckResult) -> str:
    if result.change is None:
        return "–"
    if result.kind == "ratio":
        return f"{result.change:.3g}x"
    return f"{result.change * 100:+.2f} %"


_STATUS_NOUNS = {
    "regression": ("regression", "regressions"), "missing": ("missing figure", "missing figures"),
    "warn": ("warning", "warnings"), "improved": ("improvement", "improvements"), "new": ("new row", "new rows"),
    "skipped": ("skipped", "skipped"), "pass": ("passed", "passed"),
    "inconclusive": ("inconclusive", "inconclusive"),
}


def _counts(report: CheckReport) -> str:
    """Count the verdicts per status; a missing row is counted apart from missing figures."""
    parts = []
    for status in _STATUS_ORDER:
        count = sum(r.status == status and not (status == "missing" and r.kind == "row") for r in report.results)
        if count:
            parts.append(plural(count, *_STATUS_NOUNS[status]))
        if status == "missing":
            rows = sum(r.status == "missing" and r.kind == "row" for r in report.results)
            if rows:
                parts.append(plural(rows, "missing row"))
    return ", ".join(parts)


#: Statuses hidden from the console table unless ``show_passing`` is set.
QUIET_STATUSES = frozenset({"pass", "skipped"})


def check_summary(report: CheckReport) -> str:
    """Return one line with the verdict, the count of each status and the report's summary notes.

    For example ``vqbench check FAILED: 1 regression, ...``.
    """
    line = f"vqbench check {'PASSED' if report.passed else 'FAILED'}: {_counts(report) or 'nothing gated'}"
    return "; ".join([line, *report.summary_notes])


def render_check_table(report: CheckReport, show_passing: bool = False):
    """Return a rich renderable: a one-line summary, then a table of the verdicts, failures first.

    Passing and skipped verdicts are left out of the table unless ``show_passing`` is True; the
    summary line still counts them.
    """
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    shown = [r for r in _sorted(report.results) if show_passing or r.status not in QUIET_STATUSES]
    hidden = len(report.results) - len(shown)
    summary = check_summary(report)
    if hidden:
        summary += f" ({plural(hidden, 'passing or skipped verdict')} not shown; pass --verbose to list them)"
    parts: list = [Text(summary, style="bold green" if report.passed else "bold red")]
    if shown:
        table = Table(caption=escape("; ".join(report.notes)) or None)
        for header in ("status", "row", "metric", "baseline", "current", "change", "p", "detail"):
            table.add_column(header, overflow="fold")
        for result in shown:
            table.add_row(
                f"[{_STATUS_STYLE[result.status]}]{result.status}[/]", escape(result.row), result.metric,
                _format_value(result.baseline_value), _format_value(result.current_value), _format_change(result),
                "–" if result.p_value is None else f"{result.p_value:.3g}", escape(result.message),
            )
        parts.append(table)
    elif report.notes:
        parts.append(Text("Note: " + "; ".join(report.notes), style="dim"))
    return Group(*parts)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_rows(results: list[CheckResult]) -> list[str]:
    lines = ["| status | row | metric | baseline | current | change | detail |", "|---|---|---|---:|---:|---:|---|"]
    for r in results:
        cells = (r.status, r.row, r.metric, _format_value(r.baseline_value), _format_value(r.current_value),
                 _format_change(r), r.message)
        lines.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
    return lines


def render_check_markdown(report: CheckReport) -> str:
    """Return a Markdown summary for a pull-request comment: failures in a table, the rest folded."""
    icon = "✅" if report.passed else "❌"
    lines = [f"### {icon} vqbench check {'passed' if report.passed else 'failed'}", "", _counts(report) + ".", ""]
    for note in report.summary_notes:
        lines += [f"**Warning:** {note}.", ""]
    notable = [r for r in _sorted(report.results) if r.status not in ("pass", "skipped")]
    if notable:
        lines += _markdown_rows(notable) + [""]
    for note in report.notes:
        lines.append(f"> Note: {note}")
    lines += ["", "<details><summary>All verdicts</summary>", ""]
    lines += _markdown_rows(_sorted(report.results))
    lines += ["", "</details>", ""]
    return "\n".join(lines)


#: Statuses written as skipped test cases in JUnit XML: neither passed nor failed.
_JUNIT_SKIPPED = frozenset({"skipped", "new", "inconclusive"})


def render_check_junit(report: CheckReport) -> str:
    """Return JUnit XML: one test case per verdict, failures for regressions and missing figures."""
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", {
        "name": "vqbench check",
        "tests": str(len(report.results)),
        "failures": str(len(report.failures)),
        "skipped": str(sum(r.status in _JUNIT_SKIPPED for r in report.results)),
    })
    for result in report.results:
        case = ET.SubElement(suite, "testcase", {"classname": result.row, "name": result.metric})
        if result.status in FAILING:
            failure = ET.SubElement(case, "failure", {"message": result.message, "type": result.status})
            failure.text = f"{result.message}\nlimit: {result.limit}"
        elif result.status in _JUNIT_SKIPPED:
            ET.SubElement(case, "skipped", {"message": result.message})
        else:
            ET.SubElement(case, "system-out").text = f"{result.status}: {result.message}"
    if report.summary_notes:
        ET.SubElement(suite, "system-out").text = "\n".join(report.summary_notes)
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def render_check_benchmark_json(report: CheckReport) -> str:
    """Return github-action-benchmark ``customSmallerIsBetter`` JSON: a list of {name, unit, value}.

    Accuracy is turned into an error rate (1 - accuracy) so that smaller is better for every entry.
    Ratio gates report the current median ratio to the reference.
    """
    entries = []
    for result in report.results:
        if result.current_value is None or result.kind == "row":
            continue
        name, value, unit = f"{result.row} {result.metric}", result.current_value, result.unit
        if result.metric == "lfw_accuracy_mean":
            name, value, unit = f"{result.row} lfw_error_rate", 1.0 - value, "fraction"
        elif result.kind == "ratio":
            name, unit = f"{result.row} {result.metric} ratio to reference", "ratio"
        entries.append({"name": name, "unit": unit, "value": value, "extra": result.message})
    return json.dumps(entries, indent=2) + "\n"


#: The report files that `vqbench check` writes, by option: the renderer of each.
CHECK_RENDERERS: dict[str, Callable[[CheckReport], str]] = {
    "--junit": render_check_junit,
    "--markdown": render_check_markdown,
    "--benchmark-json": render_check_benchmark_json,
}


def check_output_paths(results_dir: Path, outputs: Mapping[str, Path | None], baseline_file: Path | None,
                       policy_file: Path | None = None) -> None:
    """Raise DataError before a check when an output path is unusable (see ``check_output_path``) or given twice.

    ``outputs`` maps an option of ``CHECK_RENDERERS`` to its path, or to None when not given.
    """
    inputs = {"--baseline": baseline_file, "--policy": policy_file}
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_output_path(results_dir, path, option, inputs)
        target = Path(path).resolve()
        if target in seen:
            raise DataError(f"{seen[target]} and {option} both name {path}; give each output its own file")
        seen[target] = option


def write_check_outputs(report: CheckReport, outputs: Mapping[str, Path | None],
                        policy_file: Path | None = None) -> list[Path]:
    """Render and write each report file in ``outputs`` (option -> path or None); return the paths written.

    Raises DataError (exit code 2) for a path that ``check_output_paths`` rejects or that cannot be written.
    """
    check_output_paths(Path(report.results_dir), outputs, Path(report.baseline_file), policy_file)
    written = []
    for option, path in outputs.items():
        if path is not None:
            written.append(write_output_text(Path(path), CHECK_RENDERERS[option](report), option))
    return written
