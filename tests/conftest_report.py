"""A synthetic but realistic run folder for the report, compare and check tests.

The figures are plausible for a laptop-class cloud host and a Raspberry Pi-class edge device
(modeled), not measurements: a cloud-raw reference, two codec variants, the VQ pipelines and an
edge embedder. Noise comes from a seeded generator, so two seeds give two runs of the same
machine, and ``machine_slowdown`` scales every latency and energy figure as a slower host would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vqbench.results import RESULT_COLUMNS, ResultRow, RunResults

#: (pipeline, variant, accuracy, payload mean bytes, edge J, cloud J, edge ms, cloud ms, edge params, cloud params)
VARIANTS = (
    ("cloud-raw", "original", 0.9938, 8700.0, None, 3.2, 0.02, 160.0, None, 5_600_000),
    ("cloud-codec", "jpeg-q50", 0.9921, 2100.0, 0.9, 2.9, 45.0, 150.0, 0, 5_600_000),
    ("cloud-codec", "webp-q30", 0.9905, 1300.0, 1.0, 3.0, 52.0, 152.0, 0, 5_600_000),
    ("edge-vq-recon", "k512-14x14", 0.9872, 221.0, 1.1, 3.4, 60.0, 175.0, 310_000, 6_100_000),
    ("edge-vq-student", "k512-14x14", 0.9898, 221.0, 1.1, 0.05, 60.0, 2.5, 310_000, 820_000),
    ("edge-embed", "int8", 0.9750, 128.0, 1.6, 0.001, 85.0, 0.05, 1_200_000, 0),
)
EDGE_METHOD = "modeled-device-profile"
CLOUD_METHOD = "measured-rapl"
GRID_EDGE_GCO2E_PER_KWH = 56.0
GRID_CLOUD_GCO2E_PER_KWH = 380.0
#: Link profiles: name -> (fixed J per transfer, J per byte, rate bytes/s, RTT ms, max payload bytes)
LINKS = {
    "wifi": (0.02, 5e-8, 2.5e6, 8.0, None),
    "lte": (0.9, 4e-7, 1.2e6, 45.0, None),
    "lorawan": (0.15, 6e-4, 680.0, 1500.0, 222),
}
DEVICES = {"raspberry-pi-4": 1.0, "jetson-nano": 0.6, "host": 1.0}


@dataclass
class SyntheticRun:
    """The contents of a run folder, editable before ``write``."""

    results: RunResults
    scores: pd.DataFrame
    latency: pd.DataFrame
    energy: pd.DataFrame
    environment: dict
    with_samples: bool = True

    def row(self, pipeline: str, variant: str) -> ResultRow:
        return next(r for r in self.results.rows if r.pipeline == pipeline and r.variant == variant)

    def write(self, run_dir: Path) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(self.results.model_dump_json(indent=2), encoding="utf-8")
        frame = pd.DataFrame([r.model_dump() for r in self.results.rows], columns=list(RESULT_COLUMNS))
        for column in ("folds", "edge_energy_j_per_inference_repeats", "cloud_energy_j_per_inference_repeats"):
            frame[column] = frame[column].map(json.dumps)
        frame.to_csv(run_dir / "results.csv", index=False)
        self.scores.to_parquet(run_dir / "scores.parquet")
        self.latency.to_parquet(run_dir / "latency.parquet")
        self.energy.to_parquet(run_dir / "energy.parquet")
        (run_dir / "environment.json").write_text(json.dumps(self.environment, indent=2), encoding="utf-8")
        if self.with_samples:
            _write_samples(run_dir / "samples")
        return run_dir


def _write_samples(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:48, 0:48]
    for variant in ("k512-14x14",):
        for k in range(3):
            face = ((np.sin(x / (5 + k)) + np.cos(y / 7)) * 60 + 128).clip(0, 255)
            rgb = np.stack([face, face * 0.8, face * 0.7], axis=-1).astype(np.uint8)
            noisy = (rgb + rng.normal(0, 12, rgb.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(folder / f"{variant}-{k}-original.png")
            Image.fromarray(noisy).save(folder / f"{variant}-{k}-reconstruction.png")


def _scores(rng: np.random.Generator, pipeline: str, variant: str, accuracy: float) -> pd.DataFrame:
    pairs_per_fold = 60
    frames = []
    # Two unit-variance normals d' apart give accuracy Phi(d'/2) at the midpoint threshold.
    separation = 2 * _normal_quantile(accuracy)
    for fold in range(1, 11):
        same = np.tile([True, False], pairs_per_fold // 2)
        raw = rng.normal(0.0, 1.0, pairs_per_fold) + np.where(same, separation, 0.0)
        frames.append(pd.DataFrame({
            "pipeline": pipeline, "variant": variant, "fold": fold,
            "pair_index": np.arange(pairs_per_fold), "same": same, "score": np.tanh(raw / 4),
        }))
    return pd.concat(frames, ignore_index=True)


def _normal_quantile(probability: float) -> float:
    # Bisection on the normal CDF: accurate enough for synthetic scores.
    from math import erf, sqrt

    low, high = -10.0, 10.0
    for _ in range(80):
        middle = (low + high) / 2
        if 0.5 * (1 + erf(middle / sqrt(2))) < probability:
            low = middle
        else:
            high = middle
    return low


def _latency(rng, pipeline, variant, edge_ms, cloud_ms, transfer_ms, slowdown, samples=200) -> pd.DataFrame:
    stages = {
        "edge": edge_ms * slowdown * rng.lognormal(0.0, 0.15, samples),
        "cloud": cloud_ms * slowdown * rng.lognormal(0.0, 0.15, samples),
        "transfer": transfer_ms * rng.lognormal(0.0, 0.05, samples),
    }
    stages["end_to_end"] = stages["edge"] + stages["cloud"] + stages["transfer"]
    return pd.concat(
        [pd.DataFrame({"pipeline": pipeline, "variant": variant, "stage": stage,
                       "sample_index": np.arange(samples), "latency_ms": values})
         for stage, values in stages.items()],
        ignore_index=True,
    )


def _repeats(rng, mean_j: float | None, repeats: int) -> list[float]:
    if mean_j is None:
        return []
    return [float(v) for v in mean_j * rng.normal(1.0, 0.03, repeats)]


def _ci95(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return float(1.96 * np.std(values, ddof=1) / np.sqrt(len(values)))


def synthetic_run(
    seed: int = 0,
    *,
    repeats: int = 10,
    machine_slowdown: float = 1.0,
    links: tuple[str, ...] = ("wifi",),
    devices: tuple[str, ...] = ("raspberry-pi-4",),
    with_samples: bool = True,
) -> SyntheticRun:
    """Build a run; every latency and energy figure is multiplied by ``machine_slowdown``."""
    rng = np.random.default_rng(seed)
    rows, scores, latency, energy = [], [], [], []
    for pipeline, variant, accuracy, payload, edge_j, cloud_j, edge_ms, cloud_ms, edge_params, cloud_params in VARIANTS:
        scores.append(_scores(rng, pipeline, variant, accuracy))
        edge_repeats = _repeats(rng, None if edge_j is None else edge_j * machine_slowdown, repeats)
        cloud_repeats = _repeats(rng, cloud_j * machine_slowdown, repeats)
        for stage, values, method in (("edge", edge_repeats, EDGE_METHOD), ("cloud", cloud_repeats, CLOUD_METHOD)):
            energy.extend(
                {"pipeline": pipeline, "variant": variant, "stage": stage, "repeat": i,
                 "energy_j_per_inference": v, "method": method, "idle_power_w": 4.5,
                 "n_inferences": 200, "window_s": 2.0}
                for i, v in enumerate(values)
            )
        first_link = LINKS[links[0]]
        transfer_ms = first_link[3] + payload / first_link[2] * 1e3
        frame = _latency(rng, pipeline, variant, edge_ms, cloud_ms, transfer_ms, machine_slowdown)
        latency.append(frame)
        for link in links:
            for device in devices:
                rows.append(_row(pipeline, variant, accuracy, payload, edge_repeats, cloud_repeats, frame,
                                 link, device, edge_params, cloud_params))
    results = RunResults(
        vqbench_version="0.1.0",
        scenario_name="synthetic",
        scenario_path="scenarios/synthetic.yaml",
        created_utc="2026-12-04T20:00:00Z",
        rows=rows,
        warnings=["codecarbon could not find the cloud region; its grid intensity is the world average."],
        assumptions=_assumptions(links, devices, repeats),
    )
    return SyntheticRun(results, pd.concat(scores, ignore_index=True), pd.concat(latency, ignore_index=True),
                        pd.DataFrame(energy), _environment(), with_samples)


def _row(pipeline, variant, accuracy, payload, edge_repeats, cloud_repeats, latency, link, device,
         edge_params, cloud_params) -> ResultRow:
    fixed_j, per_byte_j, rate_bytes_per_s, rtt_ms, max_payload = LINKS[link]
    device_factor = DEVICES[device]
    edge_mean = float(np.mean(edge_repeats)) * device_factor if edge_repeats else None
    cloud_mean = float(np.mean(cloud_repeats))
    network_j = fixed_j + per_byte_j * payload
    total_j = (edge_mean or 0.0) + cloud_mean + network_j
    edge_kwh = ((edge_mean or 0.0) + network_j) / 3.6e6
    co2e_g = edge_kwh * GRID_EDGE_GCO2E_PER_KWH + cloud_mean / 3.6e6 * GRID_CLOUD_GCO2E_PER_KWH

    def p(stage: str, q: float) -> float:
        return float(np.percentile(latency.loc[latency["stage"] == stage, "latency_ms"], q))

    transfer_ms = rtt_ms + payload / rate_bytes_per_s * 1e3
    is_vq = pipeline.startswith("edge-vq")
    return ResultRow(
        pipeline=pipeline, variant=variant, n_pairs=600, folds=list(range(1, 11)),
        lfw_accuracy_mean=accuracy, lfw_accuracy_std=0.004, tar_at_far_1e_3=accuracy - 0.03,
        roc_auc=min(accuracy + 0.005, 0.9999), eer=1 - accuracy + 0.001,
        payload_bytes_mean=payload, payload_bytes_p95=payload * (1.35 if pipeline.startswith("cloud") else 1.0),
        edge_latency_ms_p50=p("edge", 50), edge_latency_ms_p95=p("edge", 95),
        cloud_latency_ms_p50=p("cloud", 50), cloud_latency_ms_p95=p("cloud", 95),
        transfer_latency_ms_p50=transfer_ms, transfer_latency_ms_p95=transfer_ms * 1.1,
        end_to_end_latency_ms_p50=p("edge", 50) + p("cloud", 50) + transfer_ms,
        end_to_end_latency_ms_p95=p("edge", 95) + p("cloud", 95) + transfer_ms * 1.1,
        end_to_end_latency_ms_p99=p("edge", 99) + p("cloud", 99) + transfer_ms * 1.2,
        edge_peak_rss_bytes=None if edge_params is None else 180_000_000,
        cloud_peak_rss_bytes=420_000_000,
        edge_model_bytes=None if edge_params is None else edge_params * 4 + 9_700_000,
        cloud_model_bytes=cloud_params * 4,
        edge_params=edge_params, cloud_params=cloud_params,
        edge_macs=None if edge_params is None else edge_params * 120,
        cloud_macs=cloud_params * 200,
        codebook_size=512 if is_vq else None, code_grid="14x14" if is_vq else None,
        edge_energy_j_per_inference=edge_mean,
        edge_energy_method=EDGE_METHOD if edge_mean is not None else None,
        edge_energy_ci95_j=_ci95(edge_repeats),
        edge_energy_j_per_inference_repeats=[v * device_factor for v in edge_repeats],
        cloud_energy_j_per_inference=cloud_mean, cloud_energy_method=CLOUD_METHOD,
        cloud_energy_ci95_j=_ci95(cloud_repeats),
        cloud_dynamic_energy_j_per_inference=cloud_mean * 0.7,
        cloud_energy_j_per_inference_repeats=cloud_repeats,
        network_energy_j_per_inference=network_j, network_energy_method="modeled-link",
        total_energy_j_per_inference=total_j, co2e_g_per_inference=co2e_g,
        grid_intensity_edge_gco2e_per_kwh=GRID_EDGE_GCO2E_PER_KWH,
        grid_intensity_cloud_gco2e_per_kwh=GRID_CLOUD_GCO2E_PER_KWH,
        link=link, link_feasible=max_payload is None or payload <= max_payload, edge_device=device,
        detection_fallbacks=3 if pipeline == "cloud-raw" else 0,
    )


def _assumptions(links, devices, repeats) -> dict:
    return {
        "grid_intensity_edge": {"location": "FRA", "gco2e_per_kwh": GRID_EDGE_GCO2E_PER_KWH,
                                "source": "codecarbon 2.3 global_energy_mix.json", "is_world_average": False},
        "grid_intensity_cloud": {"location": "world", "gco2e_per_kwh": GRID_CLOUD_GCO2E_PER_KWH,
                                 "source": "codecarbon 2.3 world average", "is_world_average": True},
        "measurement": {"warmup": 20, "repeats": repeats, "min_window_s": 2.0},
        "links": {name: {"uplink_bytes_per_s": LINKS[name][2], "rtt_ms": LINKS[name][3],
                         "fixed_energy_j": LINKS[name][0], "energy_j_per_byte": LINKS[name][1],
                         "max_payload_bytes": LINKS[name][4], "source": f"synthetic {name} profile"}
                  for name in links},
        "devices": {name: {"active_power_w": 6.4 * DEVICES[name], "idle_power_w": 2.7,
                           "source": "synthetic device profile"} for name in devices},
    }


def _environment() -> dict:
    return {
        "cpu": "Synthetic CPU @ 2.4 GHz (8 cores)",
        "ram_bytes": 16_000_000_000,
        "os": "Linux 6.1",
        "python": "3.11.2",
        "git_revision": "0123456789abcdef",
        "packages": {"torch": "2.13.0", "onnxruntime": "1.17.0", "dlib-bin": "19.24.6"},
        "meters": {
            "rapl": {"available": True, "reason": None},
            "nvml": {"available": False, "reason": "no NVIDIA GPU found"},
            "codecarbon": {"available": True, "reason": None},
        },
    }
