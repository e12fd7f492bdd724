"""Alignment settings: the service lists them in ``/v1/pipelines``, and the load test uses
the service's settings or stops, naming both, instead of counting correct responses as wrong."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    # starlette 1.x warns at import that its TestClient will move from httpx to httpx2.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from test_service import CodesPipeline, FakeAligner, FakeComponents, FakeTeacher, running_server
from vqbench.data.align import FILE_IMAGE_FIX, AlignedChip, decode_image
from vqbench.errors import ScenarioError
from vqbench.network.loadtest import check_alignment, loadtest_command, service_alignment
from vqbench.network.service import create_app
from vqbench.pipelines.base import Components, Pipeline
from vqbench.pipelines.cloud import CloudRawPipeline
from vqbench.scenario import AlignmentConfig, TeacherConfig


class UpsampleCroppingAligner(FakeAligner):
    """FakeAligner that first crops 20 px per upsampling step, so the settings change the chip."""

    def __init__(self, upsample: int) -> None:
        self.upsample = upsample

    def align_bytes(self, data: bytes, source: str = "<bytes>", fix: str = FILE_IMAGE_FIX) -> AlignedChip:
        pixels = decode_image(data, source, fix)
        border_px = 20 * self.upsample
        cropped = pixels[border_px : pixels.shape[0] - border_px, border_px : pixels.shape[1] - border_px]
        chip = np.asarray(Image.fromarray(cropped).resize((150, 150)), dtype=np.uint8)
        return AlignedChip(chip=chip, detected=True)


class AlignedFakeComponents(Components):
    """Fake models whose aligner follows ``alignment.upsample``."""

    def __init__(self, alignment: AlignmentConfig) -> None:
        super().__init__(alignment, TeacherConfig())
        self.aligner = UpsampleCroppingAligner(alignment.upsample)  # type: ignore[misc]
        self.teacher = FakeTeacher()  # type: ignore[misc]


def _fake_build_pipelines(configs: list, components: Components) -> list[Pipeline]:
    """Stand-in for the pipeline registry: cloud-raw only, on fake models with the same alignment."""
    fake = AlignedFakeComponents(components.alignment_config)
    return [CloudRawPipeline(fake) for config in configs if config.kind == "cloud-raw"]


@pytest.fixture()
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vqbench.pipelines.registry.build_pipelines", _fake_build_pipelines)


@pytest.fixture()
def upsample0_service() -> Iterator[str]:
    app = create_app([CloudRawPipeline(AlignedFakeComponents(AlignmentConfig(upsample=0)))], None)
    with running_server(app) as (url, _server):
        yield url


def _entry(aligned_on: str, alignment: dict | None, kind: str = "cloud-raw", variant: str = "original") -> dict:
    return {"pipeline": kind, "variant": variant, "aligned_on": aligned_on, "alignment": alignment}


# ---------------------------------------------------------------------------------------------
# What the service lists.


def test_pipelines_list_alignment_settings() -> None:
    components = AlignedFakeComponents(AlignmentConfig(upsample=0, face_choice="score"))
    app = create_app([CloudRawPipeline(components), CodesPipeline()], None)
    with TestClient(app) as test_client:
        entries = {entry["pipeline"]: entry for entry in test_client.get("/v1/pipelines").json()["pipelines"]}
    assert entries["cloud-raw"]["alignment"] == {"upsample": 0, "face_choice": "score", "chip_size_px": 150, "padding": 0.25}
    assert entries["test-codes"]["alignment"] is None


# ---------------------------------------------------------------------------------------------
# The load test against a service started with other settings.


def test_loadtest_without_scenario_adopts_service_alignment(fake_registry: None, upsample0_service: str) -> None:
    # The defaults align with upsample=1; the service uses 0, as scenarios/quickstart.yaml does.
    report = loadtest_command(upsample0_service, clients=1, duration_s=0.5, scenario=None, token_file=None, n_images=3)
    assert report.requests > 0
    assert report.wrong_embeddings == 0
    assert report.all_correct, report.summary_lines()


def test_loadtest_scenario_mismatch_names_both(fake_registry: None, upsample0_service: str, tmp_path: Path) -> None:
    scenario = tmp_path / "other.yaml"
    scenario.write_text("name: other\nalignment: {upsample: 1}\npipelines: [{kind: cloud-raw}]\n")
    with pytest.raises(ScenarioError) as caught:
        loadtest_command(upsample0_service, clients=1, duration_s=0.5, scenario=scenario, token_file=None, n_images=2)
    message = str(caught.value)
    assert "aligns cloud-raw/original with upsample=0" in message
    assert "with upsample=1" in message
    assert f"--scenario {scenario}" in message
    assert "pass --scenario with the scenario file the service was started with" in message


def test_loadtest_matching_scenario_passes(fake_registry: None, upsample0_service: str, tmp_path: Path) -> None:
    scenario = tmp_path / "same.yaml"
    scenario.write_text("name: same\nalignment: {upsample: 0}\npipelines: [{kind: cloud-raw}]\n")
    report = loadtest_command(upsample0_service, clients=1, duration_s=0.5, scenario=scenario, token_file=None, n_images=2)
    assert report.all_correct, report.summary_lines()


# ---------------------------------------------------------------------------------------------
# The comparison itself.


def test_service_alignment_from_cloud_aligned_entries() -> None:
    listed = AlignmentConfig(upsample=0).model_dump()
    entries = [_entry("cloud", listed), _entry("edge", None, "cloud-codec", "jpeg-q50")]
    assert service_alignment(entries, "http://127.0.0.1:1") == AlignmentConfig(upsample=0)


@pytest.mark.parametrize(
    "entries",
    [
        [_entry("cloud", None)],
        [{"pipeline": "cloud-raw", "variant": "original", "aligned_on": "cloud"}],
        [_entry("edge", AlignmentConfig(upsample=0).model_dump(), "cloud-codec", "jpeg-q50")],
        [_entry("cloud", {"upsample": 0}, variant="a"), _entry("cloud", {"upsample": 2}, variant="b")],
    ],
    ids=["null", "older-service", "edge-aligned-only", "inconsistent"],
)
def test_service_alignment_none_when_not_usable(entries: list[dict]) -> None:
    assert service_alignment(entries, "http://127.0.0.1:1") is None


def test_service_alignment_unknown_key_rejected() -> None:
    listed = {**AlignmentConfig().model_dump(), "rotate": True}
    with pytest.raises(ScenarioError, match="rotate=True.*pass --scenario"):
        service_alignment([_entry("cloud", listed)], "http://127.0.0.1:1")


def test_check_alignment_ignores_edge_aligned() -> None:
    # The edge half runs here, so the service's settings do not change the expected embedding.
    local = CloudRawPipeline(FakeComponents())
    entries = [_entry("edge", AlignmentConfig(upsample=0).model_dump())]
    check_alignment([local], entries, "http://127.0.0.1:1", "the default settings")


def test_check_alignment_names_every_differing_key() -> None:
    local = CloudRawPipeline(FakeComponents())
    listed = AlignmentConfig(upsample=0, face_choice="score").model_dump()
    with pytest.raises(ScenarioError) as caught:
        check_alignment([local], [_entry("cloud", listed)], "http://127.0.0.1:1", "the default settings")
    message = str(caught.value)
    assert "face_choice=score, upsample=0" in message
    assert "face_choice=center, upsample=1" in message
    assert "from the default settings" in message
