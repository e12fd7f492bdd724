"""Time the teacher per face under dlib, the PyTorch port and the ONNX port, side by side.

Protocol: align ``--chips`` LFW images once. Build every teacher and run one warm-up call per
runtime and batch size. Then, for each of ``--rounds`` rounds and each batch size, time one
sample per runtime, in an order that rotates every round so that no runtime always runs
first. A sample is ``--calls-per-sample`` consecutive ``embed`` calls on the same
``batch_size`` chips, timed together with ``time.perf_counter``. The table gives the median
over rounds of the milliseconds per face, and the fastest round.

Threads: torch and onnxruntime get ``--threads`` intra-op threads. dlib has no thread setting.
OMP_NUM_THREADS and OPENBLAS_NUM_THREADS are set to the same value before dlib loads, which
bounds any BLAS or OpenMP threads that its build uses.

Example: python benchmarks/bench_teacher.py --rounds 5 --json reports/bench_teacher.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RUNTIMES = ("dlib", "torch", "onnxruntime")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time dlib's ResNet teacher per face under three runtimes.")
    parser.add_argument("--lfw-root", type=Path, default=None, help="LFW folder that contains lfw-deepfunneled")
    parser.add_argument("--chips", type=int, default=32, help="number of LFW chips to align (default 32)")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per runtime and batch size (default 5)")
    parser.add_argument(
        "--calls-per-sample", type=int, default=0, help="embed calls per timed sample (0: 8 at batch 1, else 1)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per runtime (default 1)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated runtimes (default all three)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    args.runtimes = args.runtimes.split(",")
    unknown = sorted(set(args.runtimes) - set(RUNTIMES))
    if unknown:
        parser.error(f"unknown runtimes {unknown}; use some of {', '.join(RUNTIMES)}")
    if args.chips < max(args.batch_sizes) or args.rounds < 1:
        parser.error("--chips must be at least the largest batch size, and --rounds at least 1")
    return args


def build_teachers(runtimes: list[str], threads: int, batch_size: int) -> dict:
    import torch

    from vqbench.models.teacher import DlibTeacher
    from vqbench.models.teacher_onnx import OnnxTeacher, TorchTeacher

    torch.set_num_threads(threads)
    factories = {
        "dlib": lambda: DlibTeacher(batch_size=batch_size),
        "torch": lambda: TorchTeacher(batch_size=batch_size),
        "onnxruntime": lambda: OnnxTeacher(batch_size=batch_size, threads=threads),
    }
    return {runtime: factories[runtime]() for runtime in runtimes}


def time_sample_s(teacher, chips, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        teacher.embed(chips)
    return time.perf_counter() - start


def measure(teachers: dict, chips, batch_sizes: list[int], rounds: int, calls_per_sample: int) -> dict:
    """Return ms per face samples keyed by (runtime, batch size), interleaved over runtimes."""
    names = list(teachers)
    samples_ms: dict[tuple[str, int], list[float]] = {(name, size): [] for name in names for size in batch_sizes}
    for size in batch_sizes:
        for name in names:
            teachers[name].embed(chips[:size])  # warm-up
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for size in batch_sizes:
            calls = calls_per_sample or (8 if size == 1 else 1)
            for name in order:
                elapsed_s = time_sample_s(teachers[name], chips[:size], calls)
                samples_ms[(name, size)].append(1000.0 * elapsed_s / (calls * size))
    return samples_ms


def summarise(teachers: dict, samples_ms: dict) -> list[dict]:
    rows = []
    for (name, size), values in samples_ms.items():
        teacher = teachers[name]
        rows.append(
            {
                "runtime": name,
                "batch_size": size,
                "ms_per_face_median": statistics.median(values),
                "ms_per_face_min": min(values),
                "n_rounds": len(values),
                "model_bytes": teacher.model_bytes,
            }
        )
    return sorted(rows, key=lambda row: (row["batch_size"], RUNTIMES.index(row["runtime"])))


def print_table(rows: list[dict]) -> None:
    header = f"{'runtime':<12} {'batch':>5} {'median ms/face':>15} {'min ms/face':>12} {'rounds':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['runtime']:<12} {row['batch_size']:>5} {row['ms_per_face_median']:>15.2f} "
            f"{row['ms_per_face_min']:>12.2f} {row['n_rounds']:>6}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(args.threads)

    from vqbench.models.verify import align_images, default_lfw_root, list_lfw_images, select_evenly

    lfw_root = args.lfw_root or default_lfw_root()
    chips, fallbacks = align_images(select_evenly(list_lfw_images(lfw_root), args.chips))
    teachers = build_teachers(args.runtimes, args.threads, max(args.batch_sizes))
    rows = summarise(teachers, measure(teachers, chips, args.batch_sizes, args.rounds, args.calls_per_sample))

    machine = platform.processor() or platform.machine()
    print(f"{len(chips)} LFW chips ({fallbacks} detection fallbacks), {args.threads} thread(s), {machine}")
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "schema_version": 1,
            "n_chips": len(chips),
            "threads": args.threads,
            "rounds": args.rounds,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "results": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
