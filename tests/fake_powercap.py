"""Fake powercap sysfs trees for RAPL tests, and a process that advances their counters.

``make_powercap_tree(root)`` writes an Intel or AMD style tree under ``root``.
``start_advancer(root, watts)`` starts ``python tests/fake_powercap.py ROOT --watts W``, which
advances every package counter as if the package drew ``W`` watts, wrapping at
``max_energy_range_uj`` like the kernel. The counter is a function of wall time
(``watts x elapsed``), rewritten every ``--interval-s``, so a reader that samples it at two times
reads ``watts x (t1 - t0)``, give or take one update interval at each end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MAX_ENERGY_RANGE_UJ = 262_143_328_850
_READY_FILE = ".advancer-ready"


def write_counter(path: Path, value_uj: int) -> None:
    """Replace a counter file atomically, so a concurrent reader never sees a partial value."""
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text(f"{value_uj}\n")
    os.replace(tmp_path, path)


def _make_zone(zone: Path, name: str, energy_uj: int, max_energy_range_uj: int) -> Path:
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text(name + "\n")
    (zone / "max_energy_range_uj").write_text(f"{max_energy_range_uj}\n")
    write_counter(zone / "energy_uj", energy_uj)
    return zone / "energy_uj"


def make_powercap_tree(
    root: Path,
    layout: str = "intel",
    packages: int = 1,
    energy_uj: int = 1_000_000,
    max_energy_range_uj: int = DEFAULT_MAX_ENERGY_RANGE_UJ,
) -> dict[str, Path]:
    """Write a fake tree and return the energy_uj path of each zone, keyed by zone name.

    ``layout="intel"`` gives each package core, uncore and dram subzones, plus a psys zone.
    ``layout="amd"`` gives each package only a core subzone, as on AMD family 17h and later.
    """
    if layout not in ("intel", "amd"):
        raise ValueError(f"layout must be 'intel' or 'amd', not {layout!r}")
    root = Path(root)
    paths = {}
    for index in range(packages):
        zone = root / f"intel-rapl:{index}"
        package = f"package-{index}"
        paths[package] = _make_zone(zone, package, energy_uj, max_energy_range_uj)
        subzones = ["core", "uncore", "dram"] if layout == "intel" else ["core"]
        for sub_index, sub_name in enumerate(subzones):
            sub_zone = zone / f"intel-rapl:{index}:{sub_index}"
            paths[f"{package}/{sub_name}"] = _make_zone(
                sub_zone, sub_name, energy_uj, max_energy_range_uj
            )
    if layout == "intel":
        paths["psys"] = _make_zone(
            root / f"intel-rapl:{packages}", "psys", energy_uj, max_energy_range_uj
        )
    return paths


def package_counters(root: Path) -> list[Path]:
    """Return the energy_uj files of the package zones under ``root``."""
    return [
        zone / "energy_uj"
        for zone in sorted(Path(root).glob("intel-rapl:*"))
        if (zone / "name").read_text().strip().startswith("package")
    ]


def advance_counters(root: Path, watts: float, interval_s: float, duration_s: float | None) -> None:
    """Advance each package counter at ``watts`` until ``duration_s`` passes (None: forever)."""
    counters = package_counters(root)
    starts_uj = [int(path.read_text()) for path in counters]
    ranges_uj = [int((path.parent / "max_energy_range_uj").read_text()) for path in counters]
    (Path(root) / _READY_FILE).write_text("ready\n")
    t0_s = time.time()
    while duration_s is None or time.time() - t0_s < duration_s:
        advanced_uj = int(watts * (time.time() - t0_s) * 1e6)
        for path, start_uj, range_uj in zip(counters, starts_uj, ranges_uj):
            write_counter(path, (start_uj + advanced_uj) % range_uj)
        time.sleep(interval_s)


def start_advancer(root: Path, watts: float, interval_s: float = 0.001) -> subprocess.Popen:
    """Start the advancer process on an existing tree and wait until it runs."""
    ready = Path(root) / _READY_FILE
    ready.unlink(missing_ok=True)
    command = [sys.executable, __file__, str(root), "--watts", str(watts)]
    command += ["--interval-s", str(interval_s), "--no-create"]
    process = subprocess.Popen(command)
    deadline_s = time.time() + 10.0
    while not ready.exists():
        if process.poll() is not None or time.time() > deadline_s:
            process.kill()
            raise RuntimeError(f"fake powercap advancer did not start (exit {process.poll()})")
        time.sleep(0.01)
    return process


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="powercap root to create (if absent) and advance")
    parser.add_argument("--watts", type=float, required=True, help="package power to simulate, W")
    parser.add_argument("--layout", choices=["intel", "amd"], default="intel")
    parser.add_argument("--packages", type=int, default=1)
    parser.add_argument("--interval-s", type=float, default=0.001, help="update period, s")
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this, s")
    parser.add_argument("--no-create", action="store_true", help="advance an existing tree only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if not args.no_create and not any(args.root.glob("intel-rapl:*")):
        make_powercap_tree(args.root, layout=args.layout, packages=args.packages)
    advance_counters(args.root, args.watts, args.interval_s, args.duration_s)


if __name__ == "__main__":
    main()
