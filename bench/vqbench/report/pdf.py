"""Render ``report.pdf`` with matplotlib: a title page, table pages, then one plot per page.

Pages are A4 landscape. Wide tables are split into column groups (the key columns repeat on
each) and long tables into row groups, so every cell stays readable.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from vqbench.report.findings import collect_warnings, key_findings
from vqbench.report.loader import RunData
from vqbench.report.plots import PlotItem, add_figure_to_pdf, plot_style, titled_for_pdf
from vqbench.report.tables import Table, assumption_tables, environment_tables, key_column_count, report_tables

A4_LANDSCAPE_IN = (11.69, 8.27)
#: Data columns per table page besides the repeated key columns, and rows per page.
COLUMNS_PER_PAGE = 8
ROWS_PER_PAGE = 24
_WRAP_CHARACTERS = 150


def _page():
    from matplotlib.figure import Figure

    return Figure(figsize=A4_LANDSCAPE_IN)


def _wrapped(lines: list[str], bullet: str = "- ") -> list[str]:
    out = []
    for line in lines:
        out.extend(textwrap.wrap(line, _WRAP_CHARACTERS, initial_indent=bullet, subsequent_indent="  "))
    return out


def _text_pages(title: str, subtitle: str, sections: list[tuple[str, list[str]]]):
    """Yield pages of headed, wrapped text, starting a new page when one is full."""
    lines_per_page = 46
    page_lines: list[tuple[str, str]] = [("title", title), ("meta", subtitle), ("blank", "")]
    for heading, body in sections:
        page_lines.append(("heading", heading))
        page_lines.extend(("body", line) for line in (_wrapped(body) or ["(none)"]))
        page_lines.append(("blank", ""))
    for start in range(0, len(page_lines), lines_per_page):
        figure = _page()
        y = 0.95
        for kind, text in page_lines[start : start + lines_per_page]:
            size = {"title": 16, "heading": 12, "meta": 8}.get(kind, 8.5)
            weight = "bold" if kind in ("title", "heading") else "normal"
            figure.text(0.05, y, text, fontsize=size, fontweight=weight, va="top", family="DejaVu Sans")
            y -= 0.03 if kind in ("title", "heading") else 0.019
        yield figure


def _table_pages(table: Table, key_columns: int):
    """Yield pages that each show a block of rows and columns of ``table``."""
    data_columns = list(range(key_columns, len(table.headers)))
    column_groups = [data_columns[i : i + COLUMNS_PER_PAGE] for i in range(0, len(data_columns), COLUMNS_PER_PAGE)]
    column_groups = column_groups or [[]]
    for group_number, group in enumerate(column_groups, start=1):
        chosen = list(range(key_columns)) + group
        for start in range(0, max(len(table.rows), 1), ROWS_PER_PAGE):
            figure = _page()
            title = table.title
            if len(column_groups) > 1:
                title += f" (columns {group_number} of {len(column_groups)})"
            figure.suptitle(title, x=0.05, ha="left", fontsize=12, fontweight="bold")
            ax = figure.add_axes((0.03, 0.03, 0.94, 0.88))
            ax.axis("off")
            rows = [[row[i] for i in chosen] for row in table.rows[start : start + ROWS_PER_PAGE]]
            headers = ["\n".join(textwrap.wrap(table.headers[i], 16)) for i in chosen]
            if rows:
                _draw_table(ax, headers, rows, 0.032 / 1.4)
            yield figure


#: Characters per line in a PDF table cell; longer text wraps onto more lines.
CELL_WRAP_CHARACTERS = 60
#: Data columns per block in the stacked assumption and environment tables (the name column repeats).
STACKED_COLUMNS_PER_BLOCK = 7
#: Text lines that fit on one page of stacked tables.
_LINES_PER_PAGE = 52


def _wrap_cell(text: str, width: int = CELL_WRAP_CHARACTERS) -> str:
    lines = []
    for paragraph in text.split("\n"):
        lines.extend(textwrap.wrap(paragraph, width, break_long_words=True, break_on_hyphens=False) or [""])
    return "\n".join(lines)


def _line_count(cells: list[str]) -> int:
    return max((cell.count("\n") + 1 for cell in cells), default=1)


def _draw_table(ax, headers: list[str], rows: list[list[str]], line_height: float) -> None:
    """Draw a table at the top left of ``ax``, each row as tall as its most wrapped cell.

    ``line_height`` is the height of one text line as a fraction of the axes height.
    """
    rows = [[_wrap_cell(cell) for cell in row] for row in rows]
    drawn = ax.table(cellText=rows, colLabels=headers, loc="upper left", cellLoc="left")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(7)
    drawn.auto_set_column_width(list(range(len(headers))))
    heights = [_line_count(headers) + 0.4] + [_line_count(row) + 0.4 for row in rows]
    for (row_index, _), cell in drawn.get_celld().items():
        cell.set_height(line_height * heights[row_index])
        if row_index == 0:
            cell.set_facecolor("#eef0f3")


def _table_blocks(table: Table) -> list[tuple[str, list[str], list[list[str]], int]]:
    """Split a table into blocks of columns (name column repeated) and of rows that fit a page.

    Returns (title, headers, rows, line count) per block.
    """
    data_columns = list(range(1, len(table.headers)))
    # Balanced groups: 15 columns split 5 + 5 + 5 rather than 7 + 7 + 1.
    group_count = max(1, -(-len(data_columns) // STACKED_COLUMNS_PER_BLOCK))
    size = max(1, -(-len(data_columns) // group_count))
    groups = [data_columns[i : i + size] for i in range(0, len(data_columns), size)] or [[]]
    blocks = []
    for number, group in enumerate(groups, start=1):
        chosen = [0, *group]
        headers = ["\n".join(textwrap.wrap(table.headers[i], 18)) for i in chosen]
        title = table.title + (f" (columns {number} of {len(groups)})" if len(groups) > 1 else "")
        rows = [[_wrap_cell(row[i]) for i in chosen] for row in table.rows]
        header_lines = _line_count(headers) + 0.4
        chunk: list[list[str]] = []
        lines = header_lines
        for row in rows:
            row_lines = _line_count(row) + 0.4
            if chunk and lines + row_lines > _LINES_PER_PAGE - 4:
                blocks.append((title + " (continued)" if blocks and blocks[-1][0].startswith(title) else title,
                               headers, chunk, lines))
                chunk, lines = [], header_lines
            chunk.append(row)
            lines += row_lines
        if chunk:
            continued = any(block[0].startswith(title) for block in blocks)
            blocks.append((title + " (continued)" if continued else title, headers, chunk, lines))
    return blocks


def _stacked_table_pages(tables: list[Table]):
    """Yield pages holding several tables each, one under another; wide or long tables are split."""
    line_height, title_height, gap = 0.016, 0.035, 0.025
    figure, top = None, 0.0
    for table in tables:
        for title, headers, rows, lines in _table_blocks(table):
            height = title_height + line_height * lines
            if figure is None or top - height < 0.03:
                if figure is not None:
                    yield figure
                figure, top = _page(), 0.96
            figure.text(0.05, top, title, fontsize=11, fontweight="bold", va="top")
            ax = figure.add_axes((0.05, top - height, 0.9, height - title_height))
            ax.axis("off")
            _draw_table(ax, headers, rows, line_height / (height - title_height))
            top -= height + gap
    if figure is not None:
        yield figure


def write_pdf(run: RunData, plots: list[PlotItem], path: Path) -> None:
    """Write the PDF report for a loaded run to ``path``."""
    from matplotlib.backends.backend_pdf import PdfPages

    results = run.results
    subtitle = (
        f"Scenario {results.scenario_path}, run created {results.created_utc}, "
        f"vqbench {results.vqbench_version}, results schema {results.schema_version}"
    )
    missing_plots = [f"{item.title}: not drawn because {item.missing_reason}." for item in plots if item.figure is None]
    sections = [
        ("Key findings", key_findings(run.rows)),
        ("Warnings", collect_warnings(run) + missing_plots),
    ]
    tables = report_tables(run.rows)
    key_columns = key_column_count(tables[0])
    metadata = {"Title": f"vqbench report: {results.scenario_name}", "Creator": f"vqbench {results.vqbench_version}"}
    # The PDF file reads the font embedding setting when it opens, so the style must be active here.
    with plot_style(), PdfPages(path, metadata=metadata) as pdf:
        for page in _text_pages(f"vqbench report: {results.scenario_name}", subtitle, sections):
            add_figure_to_pdf(pdf, page)
        for table in tables:
            for page in _table_pages(table, key_columns):
                add_figure_to_pdf(pdf, page)
        for item in plots:
            if item.figure is not None:
                add_figure_to_pdf(pdf, titled_for_pdf(item))
        for page in _stacked_table_pages(assumption_tables(results.assumptions) + environment_tables(run.environment)):
            add_figure_to_pdf(pdf, page)
