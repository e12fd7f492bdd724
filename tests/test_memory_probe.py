"""The memory probe: one half per fresh child process, with none of the benchmark's own modules."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vqbench.data.dataset import ImageRecord
from vqbench.measure import measure_peak_rss
from vqbench.memory_probe import PROBE_FAILED
from vqbench.pipelines.base import Components
from vqbench.pipelines.registry import build_pipelines
from vqbench.scenario import Scenario

HARNESS_MODULES = ("pydantic", "vqbench.scenario", "vqbench.cli", "typer", "rich", "pandas", "vqbench.report")


def _images(sample_lfw: Path, count: int = 2) -> list[ImageRecord]:
    paths = sorted(sample_lfw.rglob("*.jpg"))[:count]
    return [ImageRecord(index, path, path.read_bytes()) for index, path in enumerate(paths)]


def _variant(entry: dict) -> tuple[Scenario, object, dict]:
    scenario = Scenario.model_validate({"name": "probe", "pipelines": [entry]})
    config = scenario.pipelines[0]
    pipeline = build_pipelines([config], Components(scenario.alignment, scenario.teacher))[0]
    return scenario, pipeline, config.model_dump()


def test_probe_measures_each_half(sample_lfw):
    scenario, pipeline, config = _variant({"kind": "cloud-codec", "codec": "jpeg", "qualities": [30]})
    images = _images(sample_lfw)
    payloads = [pipeline.edge(image.data).payload for image in images]

    edge_bytes, cloud_bytes, failures = measure_peak_rss(pipeline, config, scenario.alignment, scenario.teacher, images, payloads)

    # The edge child loads dlib and its landmark model, and the cloud child also loads the teacher.
    assert failures == []
    assert 20_000_000 < edge_bytes < cloud_bytes


def test_child_loads_no_harness_modules(sample_lfw):
    scenario, pipeline, config = _variant({"kind": "cloud-codec", "codec": "jpeg", "qualities": [30]})
    request = {
        "half": "edge", "kind": pipeline.kind, "variant": pipeline.variant, "pipeline_config": config,
        "alignment": scenario.alignment.model_dump(), "teacher": scenario.teacher.model_dump(),
        "inputs": [image.data for image in _images(sample_lfw, 1)],
    }
    script = (
        "import pickle, sys\n"
        "from vqbench.memory_probe import run_half\n"
        "assert run_half(pickle.load(sys.stdin.buffer)) > 0\n"
        f"print(sorted(m for m in sys.modules if m.startswith({HARNESS_MODULES!r})))\n"
    )
    child = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(request), capture_output=True, check=True)

    assert child.stdout.decode().strip() == "[]"


def test_probe_failure_names_variant(sample_lfw, tmp_path):
    scenario, pipeline, config = _variant({"kind": "cloud-codec", "codec": "jpeg", "qualities": [30]})
    # The model folder is gone, so the child cannot build the variant.
    config = {**config, "kind": "edge-vq-student", "model": str(tmp_path / "gone"), "int8": False,
              "entropy_coding": False, "threads": 1}

    edge_bytes, cloud_bytes, failures = measure_peak_rss(
        pipeline, config, scenario.alignment, scenario.teacher, _images(sample_lfw, 1), [b"x"]
    )

    assert edge_bytes is None
    assert cloud_bytes is None
    assert len(failures) == 2
    assert re.match(r"memory probe of the cloud-codec/jpeg-q30 edge half failed: ModelError: .*gone", failures[0])
    assert failures[1].startswith("memory probe of the cloud-codec/jpeg-q30 cloud half failed")


@pytest.mark.parametrize(
    ("request_object", "message"),
    [
        (["not", "a", "dict"], "ProbeRequestError: the request is a list, not a dict"),
        ({"half": "edge"}, "ProbeRequestError: the request lacks alignment, inputs, kind, pipeline_config, teacher, variant"),
        (
            {"half": "middle", "kind": "cloud-raw", "variant": "original", "pipeline_config": {"kind": "cloud-raw"},
             "alignment": {}, "teacher": {}, "inputs": [b"x"]},
            "ProbeRequestError: half is 'middle', not 'edge' or 'cloud'",
        ),
        (
            {"half": "edge", "kind": "cloud-raw", "variant": "original", "pipeline_config": {"kind": "cloud-raw"},
             "alignment": [], "teacher": {}, "inputs": [b"x"]},
            "ProbeRequestError: alignment is a list, not a dict",
        ),
        (
            {"half": "edge", "kind": "cloud-raw", "variant": "original", "pipeline_config": {"kind": "cloud-raw"},
             "alignment": {}, "teacher": {}, "inputs": []},
            "ProbeRequestError: inputs must be a non-empty list of bytes (image files or payloads)",
        ),
        (
            {"half": "edge", "kind": "cloud-raw", "variant": "webp-q5", "pipeline_config": {"kind": "cloud-raw"},
             "alignment": {}, "teacher": {}, "inputs": [b"x"]},
            "ProbeRequestError: the pipeline config builds cloud-raw/original, not cloud-raw/webp-q5",
        ),
    ],
)
def test_probe_rejects_malformed_request(request_object, message):
    child = subprocess.run(
        [sys.executable, "-m", "vqbench.memory_probe"], input=pickle.dumps(request_object), capture_output=True, check=False
    )

    assert child.returncode == PROBE_FAILED
    assert child.stderr.decode().strip().splitlines()[-1] == message


def test_probe_rejects_garbage_request():
    child = subprocess.run(
        [sys.executable, "-m", "vqbench.memory_probe"], input=b"not a pickle", capture_output=True, check=False
    )

    assert child.returncode == PROBE_FAILED
    assert child.stderr.decode().strip().splitlines()[-1].startswith("UnpicklingError")
