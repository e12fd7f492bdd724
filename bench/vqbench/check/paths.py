"""Output paths of ``vqbench check``: their checks and atomic writes.

``check_output_path`` keeps an output from replacing a run file or an input file, and
``write_output_text`` writes a file atomically and raises DataError when that fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vqbench.errors import DataError
from vqbench.io import write_text_atomic


#: Example file names for the options that write a file, used when a folder is given instead.
_EXAMPLE_OUTPUT_NAMES = {
    "--write-baseline": "baseline.json", "--junit": "check-junit.xml", "--markdown": "check.md",
    "--benchmark-json": "benchmark.json",
}


def check_output_path(results_dir: Path, path: Path, option: str,
                      inputs: Mapping[str, Path | None] | None = None) -> None:
    """Raise DataError when ``path`` is a folder, a file that a run writes, or an input file.

    A run file is rejected in ``results_dir`` and in any folder that contains a ``results.json``.

    ``inputs`` maps an option name (``--baseline``) to the file it reads.
    """
    # The runner module loads the measuring code, so it is imported only when an output is written.
    from vqbench.runner import RUN_FILES, SAMPLES_DIR

    path = Path(path)
    if path.is_dir():
        example_name = _EXAMPLE_OUTPUT_NAMES.get(option, "output.txt")
        # A run folder is no place for check outputs, so suggest a file beside it.
        is_run = (path / "results.json").is_file()
        example = path.parent / f"{path.name}-{example_name}" if is_run else path / example_name
        raise DataError(f"{option} {path} is a folder; give a file path, such as {example}")
    target, run_dir = path.resolve(), Path(results_dir).resolve()
    if target.is_relative_to(run_dir / SAMPLES_DIR):
        raise DataError(
            f"{option} {path} would replace {target.name} of the run folder {results_dir}; "
            "write it outside the run folder or under another name"
        )
    if target.name in RUN_FILES and (target.parent == run_dir or (target.parent / "results.json").is_file()):
        folder = results_dir if target.parent == run_dir else target.parent
        raise DataError(
            f"{option} {path} would replace {target.name} of the run folder {folder}; "
            "write it outside the run folder or under another name"
        )
    for input_option, input_path in (inputs or {}).items():
        if input_path is not None and target == Path(input_path).resolve():
            raise DataError(f"{option} {path} is the file given to {input_option}, which this check reads; "
                            "write it elsewhere")


def write_output_text(path: Path, text: str, option: str) -> Path:
    """Write ``text`` to ``path`` atomically, raising DataError that names ``option`` when that fails."""
    try:
        return write_text_atomic(Path(path), text)
    except OSError as error:
        raise DataError(
            f"{option} {path} could not be written ({error.strerror or error}); choose a writable file path"
        ) from error
