"""CLI: help text, version, and one-line errors with exit code 2 for user mistakes."""

from typer.testing import CliRunner

from vqbench import __version__
from vqbench.cli import app

runner = CliRunner()


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


def test_unknown_dataset_to_fetch_exits_2():
    result = runner.invoke(app, ["data", "fetch", "imagenet"])
    assert result.exit_code == 2
    assert "lfw" in result.output


def test_report_of_missing_run_dir_exits_2(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "norun")])
    assert result.exit_code == 2


def test_unwritable_output_path_exits_2(tmp_path):
    result = runner.invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"cannot use {tmp_path}" in result.output
    assert "Traceback" not in result.output
