"""A description of the machine and software that produced a run (``environment.json``)."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

#: Packages whose versions change measurements or results.
TRACKED_PACKAGES = (
    "vqbench", "numpy", "torch", "dlib-bin", "face_recognition_models", "onnxruntime", "onnx",
    "pillow", "codecarbon", "pandas", "pyarrow", "pydantic", "matplotlib",
)


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision(folder: Path) -> str | None:
    """Return the git commit of ``folder`` (with ``-dirty`` if modified), or None outside git."""
    try:
        revision = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{revision}-dirty" if dirty else revision


def busy_host_warning() -> tuple[float, str | None]:
    """Return the 1-minute load average and, when it exceeds the CPU count, a warning about timings.

    With more runnable processes than CPUs, the process being timed waits for a core part of
    the time, so its latency and energy per inference come out high.
    """
    load_1min = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load_1min <= cpus:
        return load_1min, None
    return load_1min, (
        f"the host was busy while timing (1-minute load average {load_1min:.1f} on {cpus} CPUs), so latency and "
        "energy figures are inflated; rerun on a quiet machine for figures to compare"
    )


class HostLoadMonitor:
    """The host's 1-minute load average, sampled before each timing, with one warning per monitor when busy."""

    def __init__(self) -> None:
        self.max_load_1min = 0.0
        self._warned = False

    def sample(self) -> tuple[float, str | None]:
        """Return the load average, and the busy-host warning the first time it applies (logged then)."""
        load_1min, warning = busy_host_warning()
        self.max_load_1min = max(self.max_load_1min, load_1min)
        if warning is None or self._warned:
            return load_1min, None
        logger.warning("%s", warning)
        self._warned = True
        return load_1min, warning


#: The folder above the package's source root: the git checkout when vqbench runs from one.
PROJECT_DIR = Path(__file__).resolve().parents[2]


def collect_environment(meters: dict[str, Any] | None = None, project_dir: Path | None = None) -> dict[str, Any]:
    """Gather CPU, memory, OS, Python, package versions, meter availability and git revision."""
    memory = psutil.virtual_memory()
    return {
        "cpu_model": _cpu_model(),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": memory.total,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "packages": _package_versions(),
        "torch_threads": _torch_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "meters": meters or {},
        "git_revision": git_revision(project_dir) if project_dir else None,
    }


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return int(sys.modules["torch"].get_num_threads())
