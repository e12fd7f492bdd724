"""Tests of `vqbench compare`: the notes above the table, energy methods and the --markdown file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_report import synthetic_run
from vqbench.cli import app
from vqbench.compare import (
    compare_runs,
    comparison_notes,
    deployment_note,
    evaluation_set_note,
    render_comparison_markdown,
    render_comparison_table,
)
from vqbench.io import write_path_atomic, write_text_atomic


def _write_run(tmp_path: Path, name: str, **row_fields) -> Path:
    run = synthetic_run(0, with_samples=False)
    for row in run.results.rows:
        for field, value in row_fields.items():
            setattr(row, field, value)
    return run.write(tmp_path / name)


def _edit_results(run_dir: Path, edit) -> Path:
    path = run_dir / "results.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    edit(content)
    path.write_text(json.dumps(content), encoding="utf-8")
    return run_dir


def _console_text(renderable) -> str:
    from rich.console import Console

    console = Console(width=400, record=True, force_terminal=False)
    console.print(renderable)
    return console.export_text()


# ---------------------------------------------------------------------------------------------
# The evaluation-set note


def test_note_names_differing_pair_counts(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", n_pairs=300)
    note = evaluation_set_note(run_a, run_b)
    assert note is not None
    assert "pairs: 600 vs 300" in note
    assert "accuracy figures are not comparable" in note
    assert "a (scenario 'synthetic') and b (scenario 'synthetic')" in note


def test_note_names_differing_folds(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", folds=[9, 10])
    note = evaluation_set_note(run_a, run_b)
    assert note is not None
    assert "folds: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] vs [9, 10]" in note
    assert "pairs:" not in note


def test_note_names_differing_alignment(tmp_path):
    def record(face_choice):
        def edit(content):
            content["assumptions"]["dataset"] = {"kind": "lfw", "folds": None, "max_pairs": None}
            content["assumptions"]["alignment"] = {"upsample": 1, "face_choice": face_choice}
        return edit

    run_a = _edit_results(_write_run(tmp_path, "a"), record("center"))
    run_b = _edit_results(_write_run(tmp_path, "b"), record("score"))
    note = evaluation_set_note(run_a, run_b)
    assert note is not None
    assert "alignment: face_choice 'center' vs 'score'" in note
    assert "dataset:" not in note
    assert "upsample" not in note


def test_note_names_differing_round_trips(tmp_path):
    def record(round_trips):
        def edit(content):
            content["assumptions"]["deployment"] = {"downlink_bytes": 0, "transfers_per_day": None,
                                                    "setup_round_trips": round_trips}
        return edit

    run_a = _edit_results(_write_run(tmp_path, "a"), record(0))
    run_b = _edit_results(_write_run(tmp_path, "b"), record(2))
    note = deployment_note(run_a, run_b)
    assert note is not None
    assert "setup_round_trips 0 vs 2" in note
    assert "downlink_bytes" not in note
    assert deployment_note(run_a, run_a) is None
    # A run made before the settings were recorded is not compared.
    assert deployment_note(run_a, _write_run(tmp_path, "old")) is None


def test_same_run_has_no_note(tmp_path):
    run_dir = _write_run(tmp_path, "a")
    assert evaluation_set_note(run_dir, run_dir) is None


def test_other_scenario_without_settings_gets_caveat(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _edit_results(_write_run(tmp_path, "b"), lambda content: content.update(scenario_name="other"))
    note = evaluation_set_note(run_a, run_b)
    assert note is not None
    assert "come from different scenarios" in note
    assert "do not record the data set and alignment settings" in note


def test_other_scenario_with_equal_settings_has_no_note(tmp_path):
    def record_settings(content):
        content["assumptions"]["dataset"] = {"kind": "lfw"}
        content["assumptions"]["alignment"] = {"face_choice": "center"}

    def rename_and_record(content):
        record_settings(content)
        content["scenario_name"] = "other"

    run_a = _edit_results(_write_run(tmp_path, "a"), record_settings)
    run_b = _edit_results(_write_run(tmp_path, "b"), rename_and_record)
    assert evaluation_set_note(run_a, run_b) is None


def test_note_heads_table_and_markdown(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", n_pairs=300)
    comparison = compare_runs(run_a, run_b)
    note = evaluation_set_note(run_a, run_b)
    text = _console_text(render_comparison_table(comparison, title="a vs b", notes=[note]))
    assert text.startswith("note: ")
    assert "pairs: 600 vs 300" in text
    markdown = render_comparison_markdown(comparison, notes=[note])
    assert markdown.startswith(f"**Note:** {note}\n\n| row |")
    assert render_comparison_markdown(compare_runs(run_a, run_a), notes=[note]).endswith("\n\nNo differences.\n")


def test_cli_compare_prints_and_writes_note(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", n_pairs=300)
    markdown = tmp_path / "compare.md"
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b), "--markdown", str(markdown)])
    assert result.exit_code == 0, result.output
    assert "accuracy figures are not comparable" in result.output
    assert markdown.read_text(encoding="utf-8").startswith("**Note:** a (scenario 'synthetic')")


# ---------------------------------------------------------------------------------------------
# Incomplete runs


def test_note_names_interrupted_run(tmp_path):
    run_a = _write_run(tmp_path, "a")

    def interrupt(content):
        content["rows"] = [row for row in content["rows"] if row["pipeline"] != "edge-embed"]
        content.update(complete=False, variants_missing=["edge-embed/int8"])

    run_b = _edit_results(_write_run(tmp_path, "b"), interrupt)
    notes = comparison_notes(run_a, run_b, compare_runs(run_a, run_b))
    assert ("B (b) is an incomplete run (it was interrupted), so it has no figures for the variant "
            "edge-embed/int8; they show as – on its side.") in notes
    assert not any(note.startswith("A (a)") for note in notes)


def test_note_names_failed_variants(tmp_path):
    def fail(content):
        content.update(complete=False, variants_missing=["edge-embed/int8"], variants_failed=["edge-embed/int8"])

    run_a = _edit_results(_write_run(tmp_path, "a"), fail)
    run_b = _write_run(tmp_path, "b")
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b)])
    assert result.exit_code == 0, result.output
    assert "A (a) is an incomplete run (the variant edge-embed/int8 failed)" in " ".join(result.output.split())


def test_complete_runs_have_no_incomplete_note(tmp_path):
    run_a, run_b = _write_run(tmp_path, "a"), _write_run(tmp_path, "b")
    assert comparison_notes(run_a, run_b, compare_runs(run_a, run_b)) == []


# ---------------------------------------------------------------------------------------------
# Energy methods beside the figures


def _markdown_line(markdown: str, row: str, metric: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {row} | {metric} |"))


def test_method_change_flagged_beside_figure(tmp_path):
    run_a = _write_run(tmp_path, "a")
    # Same seed, so every figure is equal and only the cloud method differs.
    run_b = _write_run(tmp_path, "b", cloud_energy_method="estimated-codecarbon")
    comparison = compare_runs(run_a, run_b)
    cloud_raw = comparison["pipeline"] == "cloud-raw"
    cloud = comparison[cloud_raw & (comparison["metric"] == "cloud_energy_j_per_inference")]
    assert cloud["method_a"].tolist() == ["measured-rapl"]
    assert cloud["method_b"].tolist() == ["estimated-codecarbon"]
    assert cloud["difference"].tolist() == [0.0]

    markdown = render_comparison_markdown(comparison)
    line = _markdown_line(markdown, "cloud-raw/original [wifi, raspberry-pi-4]", "cloud_energy_j_per_inference")
    assert "measured-rapl → estimated-codecarbon (method changed: measured vs estimated)" in line
    dynamic = _markdown_line(markdown, "cloud-raw/original [wifi, raspberry-pi-4]",
                             "cloud_dynamic_energy_j_per_inference")
    assert "method changed: measured vs estimated" in dynamic
    total = _markdown_line(markdown, "cloud-codec/jpeg-q50 [wifi, raspberry-pi-4]", "total_energy_j_per_inference")
    assert ("modeled-device-profile + measured-rapl + modeled-link → modeled-device-profile + estimated-codecarbon "
            "+ modeled-link (method changed: measured vs estimated)") in total
    # The edge method and the payload did not change, so they are not listed.
    assert "edge_energy_j_per_inference |" not in markdown
    assert "payload_bytes_mean" not in markdown


def test_method_change_note_counts_figures(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", cloud_energy_method="measured-external")
    notes = comparison_notes(run_a, run_b, compare_runs(run_a, run_b))
    # 6 variants x (cloud energy, its interval, its dynamic share, total energy, CO2e).
    assert notes == [
        "30 energy figures were obtained by a different method in B than in A (see the method column), so their "
        "differences mix a change of method with a change of energy."
    ]

    run_c = _write_run(tmp_path, "c", cloud_energy_method="estimated-codecarbon")
    notes = comparison_notes(run_a, run_c, compare_runs(run_a, run_c))
    assert notes[0].endswith(
        " 30 of them compare a measured figure with an estimated or modeled one, so their difference is not a "
        "measured change."
    )
    markdown = render_comparison_markdown(compare_runs(run_a, run_b))
    line = _markdown_line(markdown, "cloud-raw/original [wifi, raspberry-pi-4]", "cloud_energy_j_per_inference")
    assert "measured-rapl → measured-external (method changed) |" in line


def test_unchanged_method_named_with_all(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", payload_bytes_mean=300.0)
    markdown = render_comparison_markdown(compare_runs(run_a, run_b), changed_only=False)
    row = "cloud-raw/original [wifi, raspberry-pi-4]"
    assert _markdown_line(markdown, row, "cloud_energy_j_per_inference").startswith(
        f"| {row} | cloud_energy_j_per_inference | measured-rapl | ")
    assert _markdown_line(markdown, row, "network_energy_j_per_inference").startswith(
        f"| {row} | network_energy_j_per_inference | modeled-link | ")
    assert _markdown_line(markdown, row, "payload_bytes_mean").startswith(f"| {row} | payload_bytes_mean |  | ")
    assert "method changed" not in markdown


def test_method_not_recorded_counts_as_change(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", network_energy_method=None)
    markdown = render_comparison_markdown(compare_runs(run_a, run_b))
    line = _markdown_line(markdown, "cloud-raw/original [wifi, raspberry-pi-4]", "network_energy_j_per_inference")
    assert "modeled-link → not recorded (method changed: modeled vs not recorded)" in line


def test_cli_compare_prints_method_column(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", cloud_energy_method="estimated-codecarbon")
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "note: 30 energy figures were obtained by a different method" in text
    assert "cloud_energy_j_per_inference" in text  # metric names are never cut
    assert "method changed" in text


def test_unrecorded_method_is_not_called_estimated(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", network_energy_method=None)
    notes = comparison_notes(run_a, run_b, compare_runs(run_a, run_b))
    assert len(notes) == 1
    assert "compare a measured figure with an estimated" not in notes[0]
    total = _markdown_line(render_comparison_markdown(compare_runs(run_a, run_b)),
                           "cloud-raw/original [wifi, raspberry-pi-4]", "total_energy_j_per_inference")
    assert ("measured-rapl + modeled-link → measured-rapl + not recorded "
            "(method changed: modeled vs not recorded)") in total


def test_total_without_stage_names_missing_part(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = synthetic_run(0, with_samples=False)
    run_b.row("cloud-codec", "jpeg-q50").edge_energy_j_per_inference = None
    comparison = compare_runs(run_a, run_b.write(tmp_path / "b"))
    total = _markdown_line(render_comparison_markdown(comparison),
                           "cloud-codec/jpeg-q50 [wifi, raspberry-pi-4]", "total_energy_j_per_inference")
    assert ("modeled-device-profile + measured-rapl + modeled-link → measured-rapl + modeled-link "
            "(method changed: no modeled-device-profile part in B)") in total


# ---------------------------------------------------------------------------------------------
# Writing the Markdown file: errors name the path that was given


@pytest.mark.parametrize(
    ("side", "relative"),
    [("a", "results.json"), ("b", "results.json"), ("b", "results.csv"), ("a", "report.html"),
     ("a", "samples/k512-14x14-0-original.png")],
)
def test_cli_compare_markdown_never_replaces_run_file(tmp_path, side, relative):
    runs = {"a": _write_run(tmp_path, "a"), "b": _write_run(tmp_path, "b", n_pairs=300)}
    target = runs[side] / relative
    before = {path: path.read_bytes() for run in runs.values() for path in run.rglob("*") if path.is_file()}
    result = CliRunner().invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--markdown", str(target)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert f"--markdown {target} would replace {target.name} of the run folder {runs[side]}" in output
    assert "Traceback" not in result.output
    after = {path: path.read_bytes() for run in runs.values() for path in run.rglob("*") if path.is_file()}
    assert after == before


def test_cli_compare_markdown_may_sit_in_run_folder(tmp_path):
    run_a, run_b = _write_run(tmp_path, "a"), _write_run(tmp_path, "b", n_pairs=300)
    markdown = run_a / "compare.md"
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b), "--markdown", str(markdown)])
    assert result.exit_code == 0, result.output
    assert markdown.read_text(encoding="utf-8").startswith("**Note:** a (scenario 'synthetic')")


def test_cli_compare_markdown_folder_names_folder(tmp_path):
    run_dir = _write_run(tmp_path, "a")
    folder = tmp_path / "out"
    folder.mkdir()
    result = CliRunner().invoke(app, ["compare", str(run_dir), str(run_dir), "--markdown", str(folder)])
    assert result.exit_code == 2
    assert f"--markdown {folder} is a folder" in result.output
    assert ".tmp" not in result.output
    assert list(folder.iterdir()) == []


def test_atomic_write_onto_folder_names_folder(tmp_path):
    with pytest.raises(IsADirectoryError) as caught:
        write_text_atomic(tmp_path, "text")
    assert caught.value.filename == str(tmp_path)
    with pytest.raises(IsADirectoryError) as caught:
        write_path_atomic(tmp_path, lambda temporary: temporary.write_text("text", encoding="utf-8"))
    assert caught.value.filename == str(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == []


def test_atomic_write_onto_folder_names_relative_path(tmp_path, monkeypatch):
    (tmp_path / "run" / "report.pdf").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    relative = Path("run") / "report.pdf"
    with pytest.raises(IsADirectoryError) as caught:
        write_path_atomic(relative, lambda temporary: temporary.write_text("text", encoding="utf-8"))
    assert caught.value.filename == str(relative)


def test_atomic_write_temporary_failure_names_target(tmp_path, monkeypatch):
    target = tmp_path / "compare.md"

    def deny_permission(**options):
        # mkstemp names the temporary file it failed to create.
        name = f"{options['prefix']}x1y2{options['suffix']}"
        raise PermissionError(13, "Permission denied", str(Path(options["dir"]) / name))

    monkeypatch.setattr(tempfile, "mkstemp", deny_permission)
    with pytest.raises(PermissionError) as caught:
        write_text_atomic(target, "text")
    assert caught.value.filename == str(target)
    assert caught.value.strerror == "Permission denied"


def test_atomic_write_other_error_unchanged(tmp_path):
    target = tmp_path / "missing-parent-is-a-file" / "compare.md"
    target.parent.write_text("a file, not a folder", encoding="utf-8")
    with pytest.raises(FileExistsError) as caught:
        write_text_atomic(target, "text")
    assert caught.value.filename == str(target.parent)

