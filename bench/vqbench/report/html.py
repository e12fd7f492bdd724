"""Render the self-contained ``report.html``: inline CSS and inline SVG plots, no external files."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import jinja2

from vqbench.report.findings import collect_warnings, key_findings
from vqbench.report.loader import RunData
from vqbench.report.plots import PlotItem, figure_to_svg
from vqbench.report.tables import assumption_tables, environment_tables, key_column_count, report_tables

_TEMPLATE = "report.html.j2"
_STYLESHEET = "report.css"


def _environment() -> jinja2.Environment:
    loader = jinja2.PackageLoader("vqbench.report", "templates")
    return jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _stylesheet() -> str:
    return resources.files("vqbench.report").joinpath("templates", _STYLESHEET).read_text(encoding="utf-8")


def _plot_context(items: list[PlotItem]) -> list[dict[str, str | None]]:
    return [
        {
            "key": item.key,
            "title": item.title,
            "caption": item.caption,
            "svg": figure_to_svg(item.figure, item.title) if item.figure is not None else None,
            "missing_reason": item.missing_reason,
        }
        for item in items
    ]


def render_html(run: RunData, plots: list[PlotItem]) -> str:
    """Return the report page for a loaded run and its figures."""
    results = run.results
    template = _environment().get_template(_TEMPLATE)
    tables = report_tables(run.rows)
    return template.render(
        css=_stylesheet(),
        scenario_name=results.scenario_name,
        scenario_path=results.scenario_path,
        created_utc=results.created_utc,
        vqbench_version=results.vqbench_version,
        schema_version=results.schema_version,
        built_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        run_dir_name=run.run_dir.name,
        findings=key_findings(run.rows),
        warnings=collect_warnings(run),
        tables=tables,
        key_count=key_column_count(tables[0]),
        plots=_plot_context(plots),
        assumption_tables=assumption_tables(results.assumptions),
        environment_tables=environment_tables(run.environment),
    )
