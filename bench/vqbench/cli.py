"""The ``vqbench`` command line: run, env, data, report, compare, check.

Heavy libraries (torch, dlib, onnxruntime) are imported inside commands so that ``--help``
stays instant. ``VqbenchError`` is caught: its message is printed on one line and the
process exits with the error's code (2 for user mistakes, 1 for failed runs). So are the
operating system's errors about a path (missing, not a folder, a folder, no permission):
they name the path and exit with 2, because the path came from the user. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.markup import escape

from vqbench import __version__
from vqbench.console import console, output
from vqbench.errors import DataError, VqbenchError
from vqbench.text import plural

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

PYNVML_WARNING_FILTER = "ignore:The pynvml package is deprecated:FutureWarning"


def _user_errors(command: F) -> F:
    """Turn a VqbenchError into one line on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VqbenchError as error:
            # Messages quote lists such as [wifi, host], which rich would read as markup.
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=error.exit_code) from None
        except PATH_ERRORS as error:
            console.print(f"[bold red]error:[/] {escape(path_error_message(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


#: Operating-system errors that come from a path the user gave, not from a bug.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def path_error_message(error: OSError) -> str:
    """Describe a path error in one line: the path, the reason and what to check."""
    path = error.filename if error.filename is not None else "a path"
    return f"cannot use {path}: {error.strerror or error}; check that the path exists, is of the right kind and is writable"


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

    levels = {0: logging.WARNING, 1: logging.INFO}
    level = levels.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(name)s: %(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    # torch imports the deprecated pynvml wrapper that codecarbon depends on; its warning is noise
    # here. The environment variable carries the filter into the memory probe's child processes.
    os.environ.setdefault("PYTHONWARNINGS", PYNVML_WARNING_FILTER)
    warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)
    # httpx logs every request at INFO; keep those for -vv.
    logging.getLogger("httpx").setLevel(logging.INFO if verbose >= 2 else logging.WARNING)


@app.command()
@_user_errors
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file (see scenarios/).")],
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Run folder; default reports/<scenario>-<UTC timestamp>/.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run already in the --out folder.")
    ] = False,
) -> None:
    """Run a scenario and write results files and reports."""
    from vqbench.console import RichProgress
    from vqbench.runner import default_out_dir, run_scenario
    from vqbench.scenario import load_scenario

    loaded = load_scenario(scenario)
    out_dir = out or default_out_dir(loaded)
    with RichProgress() as progress:
        outcome = run_scenario(loaded, scenario, out_dir, progress, overwrite)
    _print_summary(outcome.out_dir)
    for failure in outcome.failures:
        console.print(f"[red]failed:[/] {failure}", highlight=False)
    output.print(f"Results written to [bold]{outcome.out_dir}[/] in {outcome.duration_s:.0f} s", highlight=False)
    if outcome.failures:
        raise typer.Exit(code=1)


def _print_summary(run_dir: Path) -> None:
    """Print the main columns of results.csv as a table.

    An estimated or modeled energy figure (or one whose method is not recorded) is printed with a
    leading ``~``, and the caption names the methods behind each energy column.
    """
    import pandas as pd
    from rich.table import Table

    from vqbench.report.findings import is_unmeasured

    frame = pd.read_csv(run_dir / "results.csv")
    columns = [
        ("lfw_accuracy_mean", "acc", "{:.4f}"),
        ("payload_bytes_mean", "bytes", "{:,.0f}"),
        ("end_to_end_latency_ms_p50", "e2e ms", "{:.1f}"),
        ("edge_energy_j_per_inference", "edge J", "{:.3g}"),
        ("network_energy_j_per_inference", "link J", "{:.3g}"),
        ("cloud_energy_j_per_inference", "cloud J", "{:.3g}"),
    ]
    method_columns = {
        "edge_energy_j_per_inference": ("edge", "edge_energy_method"),
        "network_energy_j_per_inference": ("link", "network_energy_method"),
        "cloud_energy_j_per_inference": ("cloud", "cloud_energy_method"),
    }
    table = Table(title=f"vqbench results ({plural(len(frame), 'row')}; all columns in results.csv)")
    table.add_column("variant", no_wrap=True)
    table.add_column("link/device")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for _, row in frame.iterrows():
        place = "/".join(str(row[key]) for key in ("link", "edge_device") if not pd.isna(row[key])) or "-"
        if row.get("link_feasible") is False or str(row.get("link_feasible")) == "False":
            place += " (infeasible)"
        cells = [f"{row['pipeline']}/{row['variant']}", place]
        for name, _, fmt in columns:
            value = row[name]
            text = "-" if pd.isna(value) else fmt.format(value)
            if name in method_columns and not pd.isna(value):
                method = row.get(method_columns[name][1])
                if pd.isna(method) or is_unmeasured(str(method)):
                    text = "~" + text
            cells.append(text)
        table.add_row(*cells)
    methods = []
    for name, (stage, method_column) in method_columns.items():
        used = frame.loc[frame[name].notna(), method_column] if method_column in frame else pd.Series(dtype=object)
        names = sorted({"not recorded" if pd.isna(method) else str(method) for method in used})
        if names:
            methods.append(f"{stage} J {', '.join(names)}")
    if methods:
        table.caption = (f"Energy methods: {'; '.join(methods)}. "
                         "~ marks an estimated or modeled figure, not a measurement.")
    output.print(table)


@app.command()
@_user_errors
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the machine, software versions and which energy meters work here (and why not)."""
    from vqbench.environment import PROJECT_DIR, collect_environment
    from vqbench.meters.registry import probe_all

    meters = {name: {"available": a.available, "reason": a.reason} for name, a in probe_all().items()}
    environment = collect_environment(meters=meters, project_dir=PROJECT_DIR)
    if as_json:
        typer.echo(json.dumps(environment, indent=2))
        return
    from rich.table import Table

    table = Table(title="vqbench environment", show_header=False)
    for key in ("cpu_model", "cpu_logical_cores", "ram_bytes", "os", "python"):
        table.add_row(key, str(environment[key]))
    for package, version in environment["packages"].items():
        table.add_row(package, str(version))
    output.print(table)
    meter_table = Table(title="energy meters")
    meter_table.add_column("meter")
    meter_table.add_column("available")
    meter_table.add_column("reason")
    for name, status in meters.items():
        meter_table.add_row(name, "yes" if status["available"] else "no", str(status["reason"]))
    output.print(meter_table)


@data_app.command("fetch")
@_user_errors
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="Data set to download; only 'lfw' is known.")],
    dest: Annotated[
        Optional[Path], typer.Option("--dest", help="Folder that receives lfw/; default ${VQBENCH_DATA_DIR}.")
    ] = None,
    url: Annotated[
        Optional[str],
        typer.Option(
            "--url",
            help="http:// or https:// URL of a mirror folder with the LFW files, or of lfw-deepfunneled.tgz itself.",
        ),
    ] = None,
) -> None:
    """Download a data set, verify every file's SHA-256 and unpack it atomically."""
    from vqbench.errors import ScenarioError
    from vqbench.scenario import default_data_dir

    if dataset != "lfw":
        raise ScenarioError(f"unknown data set {dataset!r}; the only downloadable data set is 'lfw'")
    from vqbench.data.fetch import fetch_lfw

    root = fetch_lfw(dest or default_data_dir(), url=url)
    output.print(f"LFW ready at [bold]{root}[/]", highlight=False)


@app.command()
@_user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder holding results.json.")],
) -> None:
    """Rebuild report.html and report.pdf from a run folder's results files."""
    from vqbench.report import render_reports

    html_path, pdf_path = render_reports(run_dir)
    output.print(f"Wrote {html_path} and {pdf_path}", highlight=False)


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
    output.print(f"Wrote {out}", highlight=False)


@app.command()
@_user_errors
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run folder.")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder.")],
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Also write the differences as Markdown.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Show unchanged figures too.")] = False,
) -> None:
    """Show how the figures of two runs differ, variant by variant, with how each energy figure was obtained."""
    from vqbench.check import check_output_path, write_output_text
    from vqbench.compare import compare_runs, comparison_notes, render_comparison_markdown, render_comparison_table

    # The output path is checked before the comparison, so a folder or a run file of either run
    # (such as results.json) is rejected before any output and is never overwritten.
    if markdown is not None:
        if markdown.is_dir():
            raise DataError(f"--markdown {markdown} is a folder; give a file path, such as {markdown / 'compare.md'}")
        for run_dir in (run_a, run_b):
            check_output_path(run_dir, markdown, "--markdown")
    comparison = compare_runs(run_a, run_b)
    notes = comparison_notes(run_a, run_b, comparison)
    output.print(render_comparison_table(comparison, changed_only=not show_all, title=f"{run_a.name} vs {run_b.name}",
                                         notes=notes))
    if markdown:
        write_output_text(markdown, render_comparison_markdown(comparison, changed_only=not show_all, notes=notes),
                          "--markdown")


@app.command()
@_user_errors
def check(
    results_dir: Annotated[Path, typer.Argument(help="Run folder holding results.json.")],
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="Baseline JSON to compare against.")] = None,
    write_baseline_file: Annotated[
        Optional[Path], typer.Option("--write-baseline",
                                     help="Record this run as a baseline file instead of checking it; "
                                          "not allowed with --baseline, --policy or the report options.")
    ] = None,
    policy: Annotated[Optional[Path], typer.Option("--policy", help="Gate policy YAML; default: built in.")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown summary here.")] = None,
    benchmark_json: Annotated[
        Optional[Path],
        typer.Option("--benchmark-json", help="Write github-action-benchmark JSON (customSmallerIsBetter) here."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="List passing and skipped figures too.")] = False,
) -> None:
    """Gate a run against a baseline: exit 0 pass, 1 regression, 2 bad input."""
    from vqbench.check import check_output_paths, render_check_table, run_check, write_baseline, write_check_outputs
    from vqbench.errors import ScenarioError

    if write_baseline_file is not None:
        # Recording skips the check, so a CI step that passed both options would always pass.
        check_options = {"--baseline": baseline, "--policy": policy, "--junit": junit, "--markdown": markdown,
                         "--benchmark-json": benchmark_json}
        conflicting = [option for option, value in check_options.items() if value is not None]
        if conflicting:
            raise ScenarioError(
                f"--write-baseline records the run without checking it, so {', '.join(conflicting)} would be ignored; "
                "use --baseline to check a run, or --write-baseline to record one, in separate commands"
            )
        path = write_baseline(results_dir, write_baseline_file)
        output.print(f"Baseline written to {path}", highlight=False)
        return
    if baseline is None:
        raise ScenarioError("pass --baseline FILE to check a run, or --write-baseline FILE to record one")
    outputs = {"--junit": junit, "--markdown": markdown, "--benchmark-json": benchmark_json}
    # The output paths are checked first, so a bad one fails before the check and never overwrites a run file.
    check_output_paths(results_dir, outputs, baseline, policy)
    report = run_check(results_dir, baseline, policy)
    output.print(render_check_table(report, show_passing=verbose))
    write_check_outputs(report, outputs, policy)
    raise typer.Exit(code=report.exit_code)


@app.command()
@_user_errors
def train(
    config: Annotated[Path, typer.Argument(help="Training config YAML (see models/*/train.yaml).")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the model in the output folder if it already contains a card.json.")
    ] = False,
) -> None:
    """Train a VQ-VAE and its student, or the edge embedder, and write the model folder."""
    from vqbench.training import train_command

    try:
        folder = train_command(config, overwrite=overwrite)
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    output.print(f"Model written to [bold]{folder}[/]", highlight=False)


models_app = typer.Typer(help="Check committed models and the teacher port.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("verify")
@_user_errors
def models_verify(
    model_dirs: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Model folders to check; default: every folder with a card.json under ${VQBENCH_MODELS_DIR}, "
            "else the repository's models/.",
            show_default=False,
        ),
    ] = None,
    images: Annotated[int, typer.Option("--images", min=1, help="Real LFW chips to compare dlib and the port on.")] = 200,
    lfw_root: Annotated[
        Optional[Path],
        typer.Option("--lfw-root", help="LFW folder; default ${VQBENCH_DATA_DIR}/lfw, else the shipped sample."),
    ] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="Port runtime to check: torch or onnxruntime.")] = "onnxruntime",
) -> None:
    """Check model folders against their cards as a run does, then the teacher port against dlib."""
    from vqbench.models.verify import compare_port_with_dlib
    from vqbench.models.vq_card import default_models_dir, model_folders, verify_model_folder
    from vqbench.scenario import default_data_dir

    if model_dirs:
        missing = [folder for folder in model_dirs if not folder.is_dir()]
        if missing:
            raise DataError(f"model folder {missing[0]} not found; pass folders that contain a card.json, such as "
                            "models/vq-g14-k256-aug")
        folders, where = model_dirs, ", ".join(str(folder) for folder in model_dirs)
    else:
        models_dir = default_models_dir()
        folders, where = model_folders(models_dir), f"under {models_dir}"
    # The checks the runner applies (SHA-256 of each file, model id, people list, payload block and
    # the graphs that read the payload), plus each file's size. Every folder is checked and every
    # problem printed before the exit.
    checked = 0
    failed = 0
    for folder in folders:
        files, problems = verify_model_folder(folder)
        checked += files
        if not problems:
            continue
        failed += 1
        console.print(f"[bold red]{escape(str(folder))}[/] does not match its card:", highlight=False, soft_wrap=True)
        for problem in problems:
            console.print(f"  {escape(problem)}", highlight=False, soft_wrap=True)
    if failed:
        verb = "does" if failed == 1 else "do"
        console.print(
            f"[bold red]error:[/] {failed} of {plural(len(folders), 'model folder')} {escape(where)} {verb} not match "
            "their cards (problems listed above), so the teacher port was not checked; restore those folders from "
            "the repository or retrain them",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(code=2)
    output.print(
        f"{plural(checked, 'file')} of {plural(len(folders), 'model folder')} {where} match their cards", highlight=False
    )

    root = lfw_root or default_data_dir() / "lfw"
    if not (root / "lfw-deepfunneled").is_dir():
        root = Path(__file__).resolve().parents[2] / "data" / "lfw-sample"
    fidelity = compare_port_with_dlib(images, root, runtime=runtime)
    output.print(
        f"{runtime} port vs dlib on {fidelity.n_images} chips from {root}: "
        f"min cosine {fidelity.min_cosine:.10f}, mean cosine {fidelity.mean_cosine:.10f}, "
        f"max abs difference {fidelity.max_abs_difference:.3g}",
        highlight=False,
    )
    if fidelity.min_cosine < PORT_MIN_COSINE:
        console.print(f"[red]failed:[/] minimum cosine below {PORT_MIN_COSINE}", highlight=False)
        raise typer.Exit(code=1)


@models_app.command("evaluate")
@_user_errors
def models_evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Model folder containing card.json, such as models/vq-g14-k256-aug.")],
    folds: Annotated[
        Optional[list[int]],
        typer.Option("--fold", help="View 2 fold to score (repeat the option); default: every fold the model may be scored on."),
    ] = None,
    lfw_root: Annotated[
        Optional[Path], typer.Option("--lfw-root", help="LFW folder; default ${VQBENCH_DATA_DIR}/lfw.")
    ] = None,
    training_fit: Annotated[
        bool,
        typer.Option(
            "--training-fit",
            help="Score the folds of the model's own training people instead, to compare fit with held-out accuracy.",
        ),
    ] = False,
) -> None:
    """Score a trained model on LFW View 2 pairs and write the figures into its card."""
    from vqbench.data.cache import default_cache_dir
    from vqbench.scenario import default_data_dir
    from vqbench.training.evaluate import evaluate_and_record, render_metrics_table

    root = lfw_root or default_data_dir() / "lfw"
    recorded = evaluate_and_record(model_dir, root, folds, default_cache_dir() / "evaluation", training_fit)
    output.print(render_metrics_table(recorded.model_id, recorded.metrics))
    output.print(f"Recorded in {model_dir / 'card.json'} under metrics.{recorded.metrics_key}", highlight=False)


#: Lowest acceptable cosine similarity between dlib's descriptor and the port's.
PORT_MIN_COSINE = 0.9999


@app.command()
@_user_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8080,
    scenario: Annotated[
        Optional[Path], typer.Option("--scenario", help="Serve this scenario's pipelines; default: teacher and VQ models.")
    ] = None,
    token_file: Annotated[
        Optional[Path], typer.Option("--token-file", help="File holding the bearer token clients must send.")
    ] = None,
    # The default equals vqbench.network.service.DEFAULT_MAX_REQUEST_BYTES (16 MiB), which is
    # not imported here so that --help stays instant; a test checks that the two agree. The
    # service checks the value, so that its message names the value and the option.
    max_request_bytes: Annotated[
        int,
        typer.Option("--max-request-bytes",
                     help="Largest request body accepted, in bytes (1 to 1 GiB); larger ones get 413. "
                          "Each body is held in memory while it is read."),
    ] = 16 * 1024 * 1024,
    # Equals vqbench.network.service.DEFAULT_BODY_TIMEOUT_S, for the same reason; the same test checks it.
    body_timeout_s: Annotated[
        float,
        typer.Option("--body-timeout-s",
                     help="Maximum wait for the next part of a request body, in seconds (0.1 to 3600); a body that stalls "
                          "longer gets 408 and its connection is closed."),
    ] = 30.0,
) -> None:
    """Run the cloud half as an HTTP service."""
    from vqbench.network.service import serve_command

    def announce(line: str) -> None:
        console.print(escape(line), highlight=False, soft_wrap=True)

    serve_command(host, port, scenario, token_file, max_request_bytes, announce, body_timeout_s=body_timeout_s)


@app.command()
@_user_errors
def loadtest(
    url: Annotated[str, typer.Option("--url", help="Base URL of a running `vqbench serve`.")],
    # The load test checks both ranges (MAX_CLIENTS and MAX_DURATION_S in vqbench.network.loadtest).
    # Its messages name the option and catch a length of nan. A test checks that the help agrees.
    clients: Annotated[int, typer.Option("--clients", help="Concurrent edge clients, 1 to 64.")] = 8,
    duration_s: Annotated[float, typer.Option("--duration-s", help="Test length, in seconds, at most 3600.")] = 30.0,
    scenario: Annotated[
        Optional[Path],
        typer.Option("--scenario", help="The scenario file the service was started with; payloads come from its pipelines. "
                                        "Default: the service's default pipelines, aligned with the settings it lists."),
    ] = None,
    token_file: Annotated[Optional[Path], typer.Option("--token-file", help="File holding the bearer token.")] = None,
    images: Annotated[int, typer.Option("--images", min=1, help="LFW sample images to build payloads from; a value above the sample's size uses the whole sample.")] = 16,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Send real payloads from N concurrent clients and check every response."""
    from vqbench.network.loadtest import loadtest_command, write_report_json

    # The JSON path is checked before the test, so a typo does not cost the test's figures.
    report = loadtest_command(url, clients, duration_s, scenario, token_file, images, json_path=json_out)
    for line in report.summary_lines():
        output.print(line, highlight=False)
    if json_out:
        write_report_json(report, json_out)
    if not report.all_correct:
        raise typer.Exit(code=1)
