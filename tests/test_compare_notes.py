"""Notes of `vqbench compare` for rows in one run only, runs without rows and a results.json that
is marked complete but lists missing variants."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from conftest_report import synthetic_run
from vqbench.cli import app
from vqbench.compare import (
    MAX_NAMED_ROWS,
    compare_runs,
    comparison_notes,
    one_sided_rows_note,
    render_comparison_markdown,
)

#: Two links and two devices, so each variant has four rows, as in the quickstart.
LINKS = ("wifi", "lte")
DEVICES = ("raspberry-pi-4", "host")


def write_run(tmp_path: Path, name: str, edit=None) -> Path:
    """Write a synthetic run of 6 variants x 4 rows, then apply ``edit`` to its results.json content."""
    run_dir = synthetic_run(0, links=LINKS, devices=DEVICES, with_samples=False).write(tmp_path / name)
    if edit is not None:
        path = run_dir / "results.json"
        content = json.loads(path.read_text(encoding="utf-8"))
        edit(content)
        path.write_text(json.dumps(content), encoding="utf-8")
    return run_dir


def rename_variant(old: str, new: str):
    def edit(content: dict) -> None:
        for row in content["rows"]:
            if row["variant"] == old:
                row["variant"] = new
    return edit


def notes_of(run_a: Path, run_b: Path) -> list[str]:
    return comparison_notes(run_a, run_b, compare_runs(run_a, run_b))


def one_line(text: str) -> str:
    return " ".join(text.split())


# ----- rows in one run only ------------------------------------------------------------------


def test_renamed_variant_counts_both_sides(tmp_path: Path) -> None:
    run_a = write_run(tmp_path, "a")
    run_b = write_run(tmp_path, "b", rename_variant("jpeg-q50", "jpeg-q20"))
    note = one_sided_rows_note(run_a, run_b)
    assert note is not None
    assert note.startswith("4 rows are only in A (a) and 4 rows are only in B (b)")
    assert "Only in A: cloud-codec/jpeg-q50 (4 rows)." in note
    assert "Only in B: cloud-codec/jpeg-q20 (4 rows)." in note


def test_renamed_variant_note_heads_output(tmp_path: Path) -> None:
    run_a = write_run(tmp_path, "a")
    run_b = write_run(tmp_path, "b", rename_variant("jpeg-q50", "jpeg-q20"))
    notes = notes_of(run_a, run_b)
    assert len(notes) == 1
    assert notes[0] == one_sided_rows_note(run_a, run_b)


def test_partial_variant_names_each_row(tmp_path: Path) -> None:
    def drop_one_row(content: dict) -> None:
        content["rows"] = [row for row in content["rows"]
                           if not (row["variant"] == "webp-q30" and row["link"] == "lte" and row["edge_device"] == "host")]

    run_a = write_run(tmp_path, "a")
    run_b = write_run(tmp_path, "b", drop_one_row)
    note = one_sided_rows_note(run_a, run_b)
    assert note is not None
    assert note.startswith("1 row is only in A (a),")
    assert "Only in A: cloud-codec/webp-q30 [lte, host]." in note
    assert "Only in B" not in note


def test_renamed_link_caps_named_rows(tmp_path: Path) -> None:
    def rename_link(content: dict) -> None:
        for row in content["rows"]:
            if row["link"] == "lte":
                row["link"] = "lte-m"

    run_a = write_run(tmp_path, "a")
    run_b = write_run(tmp_path, "b", rename_link)
    note = one_sided_rows_note(run_a, run_b)
    assert note is not None
    assert note.startswith("12 rows are only in A (a) and 12 rows are only in B (b)")
    assert "cloud-raw/original [lte, raspberry-pi-4]" in note
    assert f"and {12 - MAX_NAMED_ROWS} more." in note
    assert "cloud-raw/original [lte-m, raspberry-pi-4]" in note


def test_same_rows_have_no_one_sided_note(tmp_path: Path) -> None:
    run_a, run_b = write_run(tmp_path, "a"), write_run(tmp_path, "b")
    assert one_sided_rows_note(run_a, run_b) is None


def test_missing_variant_left_to_incomplete_note(tmp_path: Path) -> None:
    def interrupt(content: dict) -> None:
        content["rows"] = [row for row in content["rows"] if row["variant"] != "int8"]
        content.update(complete=False, variants_missing=["edge-embed/int8"])

    run_a = write_run(tmp_path, "a")
    run_b = write_run(tmp_path, "b", interrupt)
    notes = notes_of(run_a, run_b)
    assert one_sided_rows_note(run_a, run_b) is None
    assert len(notes) == 1
    assert notes[0].startswith("B (b) is an incomplete run (it was interrupted)")


# ----- a run without rows --------------------------------------------------------------------


def test_empty_complete_run_gets_note(tmp_path: Path) -> None:
    run_a = write_run(tmp_path, "a")
    run_b = write_run(tmp_path, "b", lambda content: content.update(rows=[], complete=True))
    notes = notes_of(run_a, run_b)
    expected = ("B (b) has no rows although its results.json marks it complete, so every figure shows as – on "
                "its side.")
    assert notes == [expected]


def test_both_runs_empty_get_two_notes(tmp_path: Path) -> None:
    run_a = write_run(tmp_path, "a", lambda content: content.update(rows=[]))
    run_b = write_run(tmp_path, "b", lambda content: content.update(rows=[]))
    notes = notes_of(run_a, run_b)
    assert len(notes) == 2
    assert notes[0].startswith("A (a) has no rows")
    assert notes[1].startswith("B (b) has no rows")


def test_empty_incomplete_run_has_only_incomplete_note(tmp_path: Path) -> None:
    def interrupt_at_start(content: dict) -> None:
        content.update(rows=[], complete=False, variants_missing=["cloud-raw/original"])

    run_a = write_run(tmp_path, "a")
    run_b = write_run(tmp_path, "b", interrupt_at_start)
    notes = notes_of(run_a, run_b)
    assert len(notes) == 1
    assert notes[0].startswith("B (b) is an incomplete run")


# ----- complete, but with missing variants ---------------------------------------------------


def test_complete_with_missing_variants_gets_note(tmp_path: Path) -> None:
    run_a = write_run(tmp_path, "a", lambda content: content.update(complete=True, variants_missing=["cloud-codec/jpeg-q50"]))
    run_b = write_run(tmp_path, "b")
    notes = notes_of(run_a, run_b)
    assert len(notes) == 1
    assert notes[0].startswith("A (a) is marked complete, but its results.json also lists the variant "
                               "cloud-codec/jpeg-q50 in variants_missing.")
    assert "check whether that run finished" in notes[0]


def test_contradicting_run_rows_left_to_its_note(tmp_path: Path) -> None:
    def drop_and_list(content: dict) -> None:
        content["rows"] = [row for row in content["rows"] if row["variant"] != "jpeg-q50"]
        content.update(complete=True, variants_missing=["cloud-codec/jpeg-q50"])

    run_a = write_run(tmp_path, "a")
    run_b = write_run(tmp_path, "b", drop_and_list)
    notes = notes_of(run_a, run_b)
    assert len(notes) == 1
    assert notes[0].startswith("B (b) is marked complete")


# ----- the notes in the printed table and the Markdown file ----------------------------------


def test_cli_prints_and_writes_new_notes(tmp_path: Path) -> None:
    run_a = write_run(tmp_path, "a", lambda content: content.update(variants_missing=["edge-embed/int8"]))
    run_b = write_run(tmp_path, "b", rename_variant("jpeg-q50", "jpeg-q20"))
    markdown = tmp_path / "comparison.md"
    result = CliRunner().invoke(app, ["compare", str(run_a), str(run_b), "--markdown", str(markdown)])
    assert result.exit_code == 0, result.output
    printed = one_line(result.output)
    assert "note: A (a) is marked complete, but its results.json also lists the variant edge-embed/int8" in printed
    assert "note: 4 rows are only in A (a) and 4 rows are only in B (b)" in printed
    written = markdown.read_text(encoding="utf-8")
    assert "**Note:** A (a) is marked complete" in written
    assert "**Note:** 4 rows are only in A (a) and 4 rows are only in B (b)" in written


def test_markdown_of_empty_runs_keeps_notes(tmp_path: Path) -> None:
    run_a = write_run(tmp_path, "a", lambda content: content.update(rows=[]))
    notes = notes_of(run_a, run_a)
    markdown = render_comparison_markdown(compare_runs(run_a, run_a), notes=notes)
    assert markdown.startswith("**Note:** A (a) has no rows")
    assert markdown.endswith("No differences.\n")
