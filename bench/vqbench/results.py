"""The results schema: one row per pipeline variant (and per link and edge device).

Every quantity carries its unit in its name. Energy figures come with a ``*_method`` column
(``measured-rapl``, ``estimated-codecarbon``, ``modeled-device-profile``, ...). A figure that
could not be obtained is ``None`` and the reason is in ``warnings``; it is never 0.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

RESULTS_SCHEMA_VERSION = 1


class ResultRow(BaseModel):
    """One measured pipeline variant."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str
    variant: str
    n_pairs: int
    n_pairs_skipped: int = 0
    folds: list[int] = Field(default_factory=list)

    lfw_accuracy_mean: Optional[float] = None
    lfw_accuracy_std: Optional[float] = None
    tar_at_far_1e_3: Optional[float] = None
    roc_auc: Optional[float] = None
    eer: Optional[float] = None

    payload_bytes_mean: Optional[float] = None
    payload_bytes_p95: Optional[float] = None

    edge_latency_ms_p50: Optional[float] = None
    edge_latency_ms_p95: Optional[float] = None
    cloud_latency_ms_p50: Optional[float] = None
    cloud_latency_ms_p95: Optional[float] = None
    transfer_latency_ms_p50: Optional[float] = None
    transfer_latency_ms_p95: Optional[float] = None
    #: "modeled-link" (a link profile's model, used end to end) or "measured-http" (the requests timed).
    transfer_latency_basis: Optional[str] = None
    transfer_latency_ms_p50_measured: Optional[float] = None
    transfer_latency_ms_p95_measured: Optional[float] = None
    end_to_end_latency_ms_p50: Optional[float] = None
    end_to_end_latency_ms_p95: Optional[float] = None
    end_to_end_latency_ms_p99: Optional[float] = None

    edge_peak_rss_bytes: Optional[int] = None
    cloud_peak_rss_bytes: Optional[int] = None
    edge_model_bytes: Optional[int] = None
    cloud_model_bytes: Optional[int] = None
    edge_params: Optional[int] = None
    cloud_params: Optional[int] = None
    edge_macs: Optional[int] = None
    cloud_macs: Optional[int] = None
    codebook_size: Optional[int] = None
    code_grid: Optional[str] = None

    edge_energy_j_per_inference: Optional[float] = None
    edge_energy_method: Optional[str] = None
    edge_energy_ci95_j: Optional[float] = None
    edge_dynamic_energy_j_per_inference: Optional[float] = None
    edge_energy_j_per_inference_repeats: list[float] = Field(default_factory=list)
    cloud_energy_j_per_inference: Optional[float] = None
    cloud_energy_method: Optional[str] = None
    cloud_energy_ci95_j: Optional[float] = None
    cloud_dynamic_energy_j_per_inference: Optional[float] = None
    cloud_energy_j_per_inference_repeats: list[float] = Field(default_factory=list)
    network_energy_j_per_inference: Optional[float] = None
    network_energy_method: Optional[str] = None
    total_energy_j_per_inference: Optional[float] = None

    co2e_g_per_inference: Optional[float] = None
    embodied_co2e_g_per_inference: Optional[float] = None
    grid_intensity_edge_gco2e_per_kwh: Optional[float] = None
    grid_intensity_cloud_gco2e_per_kwh: Optional[float] = None

    wire_bytes_up_mean: Optional[float] = None
    wire_bytes_down_mean: Optional[float] = None
    wire_payload_bytes_up_mean: Optional[float] = None
    wire_overhead_bytes_up_mean: Optional[float] = None
    transport: str = "local"

    link: Optional[str] = None
    link_feasible: Optional[bool] = None
    link_infeasible_reason: Optional[str] = None
    edge_device: Optional[str] = None
    edge_time_basis: Optional[str] = None
    detection_fallbacks: int = 0


class RunResults(BaseModel):
    """The content of ``results.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = RESULTS_SCHEMA_VERSION
    vqbench_version: str
    scenario_name: str
    scenario_path: str
    created_utc: str
    rows: list[ResultRow]
    warnings: list[str] = Field(default_factory=list)
    assumptions: dict[str, object] = Field(default_factory=dict)
    complete: bool = Field(True, description="False when the run was interrupted before its last variant.")
    variants_missing: list[str] = Field(default_factory=list, description="Variants an interrupted run did not reach.")


#: Column order of results.csv: the schema's field order.
RESULT_COLUMNS: tuple[str, ...] = tuple(ResultRow.model_fields)
