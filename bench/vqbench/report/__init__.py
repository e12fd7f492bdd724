"""Plots, HTML and PDF rendering of run results.

``render_reports(run_dir)`` reads only the files a run wrote (results.json, the Parquet files,
environment.json and samples/) and writes ``report.html`` and ``report.pdf`` beside them
(either may be switched off).
"""

from __future__ import annotations

import logging
from pathlib import Path

from vqbench.io import write_path_atomic
from vqbench.report.html import render_html
from vqbench.report.loader import load_run
from vqbench.report.pdf import write_pdf
from vqbench.report.plots import build_figures

logger = logging.getLogger(__name__)

HTML_FILE = "report.html"
PDF_FILE = "report.pdf"

__all__ = ["render_reports", "HTML_FILE", "PDF_FILE"]


def render_reports(run_dir: Path, html: bool = True, pdf: bool = True) -> tuple[Path | None, Path | None]:
    """Write ``report.html`` and ``report.pdf`` (each unless switched off) into ``run_dir``; return their paths.

    Raises DataError when results.json is missing or invalid; other missing files leave a note
    in the reports instead.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    logger.info("rendering reports for %s (%d rows)", run_dir, len(run.rows))
    plots = build_figures(run)

    html_path = pdf_path = None
    if html:
        html_path = run_dir / HTML_FILE
        page = render_html(run, plots)
        write_path_atomic(html_path, lambda temporary: temporary.write_text(page, encoding="utf-8"))
        logger.info("wrote %s", html_path)
    if pdf:
        pdf_path = run_dir / PDF_FILE
        write_path_atomic(pdf_path, lambda temporary: write_pdf(run, plots, temporary))
        logger.info("wrote %s", pdf_path)
    return html_path, pdf_path
