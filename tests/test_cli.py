"""CLI: help text, version, and one-line errors with exit code 2 for user mistakes."""

from pathlib import Path

import yaml
from typer.testing import CliRunner

from conftest_report import synthetic_run
from vqbench import __version__
from vqbench.cli import _print_summary, app
from vqbench.console import output

runner = CliRunner()
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "env", "data", "report"):
        assert command in result.output


def test_no_arguments_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_missing_scenario_exits_2(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "scenario file not found" in result.output
    assert "Traceback" not in result.output


def test_invalid_scenario_exits_2_naming_key(tmp_path):
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("name: bad\npipelines: [{kind: cloud-codec, codec: gif}]\n")
    result = runner.invoke(app, ["run", str(scenario)])
    assert result.exit_code == 2
    assert "codec" in result.output


def test_missing_data_exits_2_with_fetch_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path / "nodata"))
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\npipelines: [{kind: cloud-raw}]\n")
    result = runner.invoke(app, ["run", str(scenario), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "vqbench data fetch lfw" in output
    assert "VQBENCH_DATA_DIR" in output


def test_run_check_error_is_first_line(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\npipelines: [{kind: cloud-raw}]\ncarbon: {edge_location: atlantis}\n")
    result = runner.invoke(app, ["run", str(scenario), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown grid location 'atlantis'")


def test_unknown_dataset_to_fetch_exits_2():
    result = runner.invoke(app, ["data", "fetch", "imagenet"])
    assert result.exit_code == 2
    assert "lfw" in result.output


def test_report_of_missing_run_dir_exits_2(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "norun")])
    assert result.exit_code == 2


def test_schema_into_folder_exits_2(tmp_path):
    result = runner.invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"--out {tmp_path} is a folder" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_schema_keeps_other_files(tmp_path):
    results = tmp_path / "results.json"
    results.write_text('{"rows": []}\n', encoding="utf-8")
    result = runner.invoke(app, ["schema", "--out", str(results)])
    assert result.exit_code == 2, result.output
    assert "is not a vqbench scenario schema, so it is not replaced" in " ".join(result.output.split())
    assert results.read_text(encoding="utf-8") == '{"rows": []}\n'


def test_schema_replaces_earlier_schema(tmp_path):
    path = tmp_path / "scenario.schema.json"
    assert runner.invoke(app, ["schema", "--out", str(path)]).exit_code == 0
    first = path.read_text(encoding="utf-8")
    result = runner.invoke(app, ["schema", "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_text(encoding="utf-8") == first


def test_unwritable_output_path_exits_2(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("x", encoding="utf-8")
    result = runner.invoke(app, ["schema", "--out", str(blocked / "schema.json")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def _summary_lines(run_dir: Path) -> list[str]:
    with output.capture() as captured:
        _print_summary(run_dir)
    return captured.get().splitlines()


def _summary_cells(lines: list[str], variant: str, place: str) -> list[str]:
    line = next(line for line in lines if f" {variant} " in line and f" {place} " in line)
    return [cell.strip() for cell in line.strip("│ ").split("│")]


def test_run_summary_marks_unmeasured_energy(tmp_path):
    run = synthetic_run(0, with_samples=False)
    run.row("cloud-codec", "webp-q30").cloud_energy_method = "estimated-codecarbon"
    lines = _summary_lines(run.write(tmp_path / "run"))
    # Columns: variant, link/device, acc, bytes, e2e ms, edge J, link J, cloud J.
    jpeg = _summary_cells(lines, "cloud-codec/jpeg-q50", "wifi/raspberry-pi-4")
    assert jpeg[5].startswith("~")  # modeled-device-profile
    assert jpeg[6].startswith("~")  # modeled-link
    assert not jpeg[7].startswith("~")  # measured-rapl
    webp = _summary_cells(lines, "cloud-codec/webp-q30", "wifi/raspberry-pi-4")
    assert webp[7].startswith("~")
    caption = " ".join(" ".join(lines).split())
    assert ("Energy methods: edge J modeled-device-profile; link J modeled-link; "
            "cloud J estimated-codecarbon, measured-rapl.") in caption
    assert "~ marks an estimated or modeled figure, not a measurement." in caption


def test_run_summary_missing_energy_unmarked(tmp_path):
    lines = _summary_lines(synthetic_run(0, with_samples=False).write(tmp_path / "run"))
    # cloud-raw has no edge half: its edge figure is missing, not an estimate.
    assert _summary_cells(lines, "cloud-raw/original", "wifi/raspberry-pi-4")[5] == "-"


def test_quickstart_http_matches_served_scenario():
    """The HTTP quickstart posts to `vqbench serve --scenario scenarios/quickstart.yaml`.

    The service serves only that file's pipelines and rejects other alignment settings.
    """
    served = yaml.safe_load((SCENARIOS / "quickstart.yaml").read_text(encoding="utf-8"))
    text = (SCENARIOS / "quickstart-http.yaml").read_text(encoding="utf-8")
    http = yaml.safe_load(text)
    assert http["pipelines"] == served["pipelines"]
    assert http["alignment"] == served["alignment"]
    assert http["dataset"] == served["dataset"]
    assert "vqbench serve --scenario scenarios/quickstart.yaml --port 8080" in text
    assert http["transport"] == {"mode": "http", "url": "http://127.0.0.1:8080"}
    assert "vqbench run scenarios/quickstart-http.yaml" in text


def test_stopped_phase_keeps_its_count():
    from vqbench.console import RichProgress, _PhaseSpinner

    progress = RichProgress()
    stopped = progress.phase("Timing 3 variants, interleaved", 5)
    progress.advance(stopped)
    progress.done(stopped, finished=False)
    finished = progress.phase("Aligning faces", 4)
    progress.done(finished)

    first, second = progress._progress.tasks
    assert first.completed == 1
    assert first.description == "Timing 3 variants, interleaved (stopped)"
    assert str(_PhaseSpinner().render(first)) == "x"
    assert second.completed == 4
    assert not second.fields.get("stopped")


def test_env_json_names_git_revision():
    import json
    import shutil

    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    environment = json.loads(result.output)
    is_checkout = (Path(__file__).resolve().parents[1] / ".git").exists() and shutil.which("git") is not None
    if is_checkout:
        assert environment["git_revision"]
