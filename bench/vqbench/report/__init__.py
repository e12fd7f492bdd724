"""Plots, HTML and PDF rendering of run results.

``render_reports(run_dir)`` reads only the files a run wrote (results.json, the Parquet files,
environment.json and samples/) and writes ``report.html`` and ``report.pdf`` beside them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from vqbench.report.html import render_html
from vqbench.report.loader import load_run
from vqbench.report.pdf import write_pdf
from vqbench.report.plots import build_figures

logger = logging.getLogger(__name__)

HTML_FILE = "report.html"
PDF_FILE = "report.pdf"

__all__ = ["render_reports", "HTML_FILE", "PDF_FILE"]


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it onto ``path``."""
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        temporary.chmod(0o644)  # mkstemp creates the file readable by its owner only
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def render_reports(run_dir: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.pdf`` into ``run_dir`` and return their paths.

    Raises DataError when results.json is missing or invalid; other missing files leave a note
    in the reports instead.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    logger.info("rendering reports for %s (%d rows)", run_dir, len(run.rows))
    plots = build_figures(run)

    html_path = run_dir / HTML_FILE
    page = render_html(run, plots)
    write_atomically(html_path, lambda temporary: temporary.write_text(page, encoding="utf-8"))

    pdf_path = run_dir / PDF_FILE
    write_atomically(pdf_path, lambda temporary: write_pdf(run, plots, temporary))
    logger.info("wrote %s and %s", html_path, pdf_path)
    return html_path, pdf_path
