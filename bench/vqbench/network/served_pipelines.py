"""The pipeline variants ``vqbench serve`` builds and warms up before it accepts requests."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from vqbench.errors import VqbenchError
from vqbench.pipelines.base import Components, Pipeline

if TYPE_CHECKING:
    from vqbench.scenario import AlignmentConfig, Scenario

logger = logging.getLogger(__name__)

#: Default pipelines served without a scenario: cloud-raw, and cloud-codec at JPEG quality 50.
DEFAULT_PIPELINE_CONFIGS: tuple[dict[str, Any], ...] = (
    {"kind": "cloud-raw"},
    {"kind": "cloud-codec", "codec": "jpeg", "qualities": [50]},
)

#: The committed ~200 B operating point, served by default. An entry whose model files are
#: missing is skipped with a warning.
DEFAULT_VQ_MODEL = "vq-g14-k256-aug"
DEFAULT_VQ_PIPELINE_CONFIGS: tuple[dict[str, Any], ...] = (
    {"kind": "edge-vq-recon", "model": DEFAULT_VQ_MODEL},
    {"kind": "edge-vq-student", "model": DEFAULT_VQ_MODEL},
)


def build_served_pipelines(scenario: "Scenario | None", alignment: "AlignmentConfig | None" = None) -> list[Pipeline]:
    """Build the scenario's pipeline variants, or the defaults when ``scenario`` is None.

    The defaults are ``DEFAULT_PIPELINE_CONFIGS`` plus each ``DEFAULT_VQ_PIPELINE_CONFIGS``
    entry that this build can construct (its kind is in the scenario schema, its models exist).
    They align with ``alignment``, or with the scenario schema's default alignment when it is
    None. ``alignment`` must be None when ``scenario`` is given, which has its own.
    """
    from pydantic import TypeAdapter, ValidationError

    from vqbench.pipelines.registry import build_pipelines
    from vqbench.scenario import AlignmentConfig, PipelineConfig, TeacherConfig

    if scenario is not None:
        if alignment is not None:
            raise ValueError("pass either a scenario or an alignment for the default pipelines, not both")
        components = Components(scenario.alignment, scenario.teacher)
        return build_pipelines(list(scenario.pipelines), components)

    components = Components(alignment or AlignmentConfig(), TeacherConfig())
    adapter = TypeAdapter(PipelineConfig)
    pipelines = build_pipelines([adapter.validate_python(raw) for raw in DEFAULT_PIPELINE_CONFIGS], components)
    for raw in DEFAULT_VQ_PIPELINE_CONFIGS:
        try:
            config = adapter.validate_python(raw)
            pipelines.extend(build_pipelines([config], components))
        except ValidationError:
            logger.info("pipeline kind %s is not in this build's scenario schema; not served", raw["kind"])
        except VqbenchError as error:
            logger.warning("default pipeline %s is not served: %s", raw["kind"], error)
    return pipelines


def warm_up(pipelines: list[Pipeline]) -> dict[str, str | None]:
    """Load every pipeline's models by running one synthetic payload through both halves.

    Returns ``kind/variant`` -> None on success or the error message; a VqbenchError is logged
    and kept, any other exception propagates because it is a bug.
    """
    from PIL import Image

    gray_chip = np.full((150, 150, 3), 128, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.full((250, 250, 3), 128, dtype=np.uint8)).save(buffer, format="JPEG")
    gray_image = buffer.getvalue()
    errors: dict[str, str | None] = {}
    for pipeline in pipelines:
        label = f"{pipeline.kind}/{pipeline.variant}"
        try:
            payload = pipeline.edge_from_chip(gray_chip) if pipeline.edge_aligns else pipeline.edge(gray_image).payload
            pipeline.cloud([payload])
            errors[label] = None
        except VqbenchError as error:
            logger.warning("warm-up of %s failed: %s", label, error)
            errors[label] = str(error)
    return errors
