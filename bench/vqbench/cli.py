"""The ``vqbench`` command line: run, env, data, report, compare, check.

Heavy libraries (torch, dlib, onnxruntime) are imported inside commands so that ``--help``
stays instant. Only ``VqbenchError`` is caught: its message is printed on one line and the
process exits with the error's code (2 for user mistakes, 1 for failed runs). Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from vqbench import __version__
from vqbench.console import console
from vqbench.errors import VqbenchError

app = typer.Typer(
    name="vqbench",
    help="Measure what face recognition costs, edge versus cloud: accuracy, bytes, latency, memory, energy, CO2e.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Download and verify data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(command: F) -> F:
    """Turn a VqbenchError into one line on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VqbenchError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=error.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vqbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v for INFO logs, -vv for DEBUG.")] = 0,
) -> None:
    """vqbench: edge versus cloud face recognition, measured."""
    from rich.logging import RichHandler

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(name)s: %(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    # httpx logs every request at INFO; keep those for -vv.
    logging.getLogger("httpx").setLevel(logging.INFO if verbose >= 2 else logging.WARNING)


@app.command()
@_user_errors
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file (see scenarios/).")],
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Run folder; default reports/<scenario>-<UTC timestamp>/.")
    ] = None,
) -> None:
    """Run a scenario and write results files and reports."""
    from vqbench.console import RichProgress
    from vqbench.runner import default_out_dir, run_scenario
    from vqbench.scenario import load_scenario

    loaded = load_scenario(scenario)
    out_dir = out or default_out_dir(loaded)
    with RichProgress() as progress:
        outcome = run_scenario(loaded, scenario, out_dir, progress)
    _print_summary(outcome.out_dir)
    for failure in outcome.failures:
        console.print(f"[red]failed:[/] {failure}", highlight=False)
    console.print(f"Results written to [bold]{outcome.out_dir}[/] in {outcome.duration_s:.0f} s", highlight=False)
    if outcome.failures:
        raise typer.Exit(code=1)


def _print_summary(run_dir: Path) -> None:
    """Print the main columns of results.csv as a table."""
    import pandas as pd
    from rich.table import Table

    frame = pd.read_csv(run_dir / "results.csv")
    columns = [
        ("variant", "variant", "{}"),
        ("lfw_accuracy_mean", "accuracy", "{:.4f}"),
        ("payload_bytes_mean", "payload B", "{:,.0f}"),
        ("edge_latency_ms_p50", "edge ms p50", "{:.1f}"),
        ("cloud_latency_ms_p50", "cloud ms p50", "{:.1f}"),
        ("edge_energy_j_per_inference", "edge J", "{:.3g}"),
        ("cloud_energy_j_per_inference", "cloud J", "{:.3g}"),
    ]
    table = Table(title="vqbench results")
    table.add_column("pipeline")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for _, row in frame.iterrows():
        cells = [str(row["pipeline"])]
        for name, _, fmt in columns:
            value = row[name]
            cells.append("-" if pd.isna(value) else fmt.format(value))
        table.add_row(*cells)
    console.print(table)


@app.command()
@_user_errors
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the machine, software versions and which energy meters work here (and why not)."""
    from vqbench.environment import collect_environment
    from vqbench.meters.registry import probe_all

    meters = {name: {"available": a.available, "reason": a.reason} for name, a in probe_all().items()}
    environment = collect_environment(meters=meters)
    if as_json:
        typer.echo(json.dumps(environment, indent=2))
        return
    from rich.table import Table

    table = Table(title="vqbench environment", show_header=False)
    for key in ("cpu_model", "cpu_logical_cores", "ram_bytes", "os", "python"):
        table.add_row(key, str(environment[key]))
    for package, version in environment["packages"].items():
        table.add_row(package, str(version))
    console.print(table)
    meter_table = Table(title="energy meters")
    meter_table.add_column("meter")
    meter_table.add_column("available")
    meter_table.add_column("reason")
    for name, status in meters.items():
        meter_table.add_row(name, "yes" if status["available"] else "no", str(status["reason"]))
    console.print(meter_table)


@data_app.command("fetch")
@_user_errors
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="Data set to download; only 'lfw' is known.")],
    dest: Annotated[
        Optional[Path], typer.Option("--dest", help="Folder that receives lfw/; default ${VQBENCH_DATA_DIR}.")
    ] = None,
    url: Annotated[Optional[str], typer.Option("--url", help="Base URL of a mirror of the LFW files.")] = None,
) -> None:
    """Download a data set, verify every file's SHA-256 and unpack it atomically."""
    from vqbench.errors import ScenarioError
    from vqbench.scenario import default_data_dir

    if dataset != "lfw":
        raise ScenarioError(f"unknown data set {dataset!r}; the only downloadable data set is 'lfw'")
    from vqbench.data.fetch import fetch_lfw

    root = fetch_lfw(dest or default_data_dir(), url=url)
    console.print(f"LFW ready at [bold]{root}[/]", highlight=False)


@app.command()
@_user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder holding results.json.")],
) -> None:
    """Rebuild report.html and report.pdf from a run folder's results files."""
    from vqbench.report import render_reports

    html_path, pdf_path = render_reports(run_dir)
    console.print(f"Wrote {html_path} and {pdf_path}", highlight=False)


@app.command("schema")
@_user_errors
def schema(
    out: Annotated[Path, typer.Option("--out", help="Where to write the JSON Schema.")] = Path(
        "scenarios/scenario.schema.json"
    ),
) -> None:
    """Write the JSON Schema of scenario files."""
    from vqbench.scenario import write_json_schema

    write_json_schema(out)
    console.print(f"Wrote {out}", highlight=False)
