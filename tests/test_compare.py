"""Tests of `vqbench compare`: the note about differing evaluation sets and the --markdown file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_report import synthetic_run
from vqbench.cli import app
from vqbench.compare import compare_runs, evaluation_set_note, render_comparison_markdown, render_comparison_table
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
    text = _console_text(render_comparison_table(comparison, title="a vs b", note=note))
    assert text.startswith("note: ")
    assert "pairs: 600 vs 300" in text
    markdown = render_comparison_markdown(comparison, note=note)
    assert markdown.startswith(f"**Note:** {note}\n\n| row |")
    assert render_comparison_markdown(compare_runs(run_a, run_a), note=note).endswith("\n\nNo differences.\n")


def test_cli_compare_prints_and_writes_note(tmp_path):
    run_a = _write_run(tmp_path, "a")
    run_b = _write_run(tmp_path, "b", n_pairs=300)
    markdown = tmp_path / "compare.md"
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b), "--markdown", str(markdown)])
    assert result.exit_code == 0, result.output
    assert "accuracy figures are not comparable" in result.output
    assert markdown.read_text(encoding="utf-8").startswith("**Note:** a (scenario 'synthetic')")


# ---------------------------------------------------------------------------------------------
# Writing the Markdown file: errors name the path that was given


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
