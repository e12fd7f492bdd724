"""Build pipeline variants from scenario entries; one builder per pipeline kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from vqbench.errors import ScenarioError
from vqbench.pipelines.base import Components, Pipeline
from vqbench.pipelines.cloud import CloudCodecPipeline, CloudRawPipeline

PipelineBuilder = Callable[[object, Components], Iterator[Pipeline]]


def _build_cloud_raw(config: object, components: Components) -> Iterator[Pipeline]:
    yield CloudRawPipeline(components)


def _build_cloud_codec(config: object, components: Components) -> Iterator[Pipeline]:
    for size_px in config.sizes_px:  # type: ignore[attr-defined]
        for quality in config.qualities:  # type: ignore[attr-defined]
            yield CloudCodecPipeline(components, config.codec, quality, size_px)  # type: ignore[attr-defined]


def _build_edge_vq_recon(config: object, components: Components) -> Iterator[Pipeline]:
    from vqbench.pipelines.edge_vq import EdgeVQReconPipeline

    yield EdgeVQReconPipeline(
        components, config.model, config.int8, config.entropy_coding, config.threads  # type: ignore[attr-defined]
    )


def _build_edge_vq_student(config: object, components: Components) -> Iterator[Pipeline]:
    from vqbench.pipelines.edge_vq import EdgeVQStudentPipeline

    yield EdgeVQStudentPipeline(
        components, config.model, config.int8, config.entropy_coding, config.threads  # type: ignore[attr-defined]
    )


def _build_edge_embed(config: object, components: Components) -> Iterator[Pipeline]:
    from vqbench.pipelines.edge_vq import EdgeEmbedPipeline

    for dtype in config.dtypes:  # type: ignore[attr-defined]
        yield EdgeEmbedPipeline(components, config.model, dtype, config.int8, config.threads)  # type: ignore[attr-defined]


BUILDERS: dict[str, PipelineBuilder] = {
    "cloud-raw": _build_cloud_raw,
    "cloud-codec": _build_cloud_codec,
    "edge-vq-recon": _build_edge_vq_recon,
    "edge-vq-student": _build_edge_vq_student,
    "edge-embed": _build_edge_embed,
}


def build_pipelines(configs: list[object], components: Components) -> list[Pipeline]:
    """Expand every scenario pipeline entry into its variants."""
    pipelines: list[Pipeline] = []
    sources: dict[tuple[str, str], str] = {}
    for position, config in enumerate(configs):
        kind = config.kind  # type: ignore[attr-defined]
        if kind not in BUILDERS:
            raise ScenarioError(f"unknown pipeline kind {kind!r}; known kinds: {', '.join(sorted(BUILDERS))}")
        model = getattr(config, "model", None)
        source = f"pipelines[{position}]" + (f" (model {model})" if model else "")
        for pipeline in BUILDERS[kind](config, components):
            key = (pipeline.kind, pipeline.variant)
            if key in sources:
                named_by = " A model's variant name comes from its card's id." if model else ""
                raise ScenarioError(
                    f"pipeline variant {pipeline.kind}/{pipeline.variant} appears twice, from {sources[key]} and "
                    f"{source}.{named_by} Remove one entry, or list each setting once"
                )
            sources[key] = source
            pipelines.append(pipeline)
    return pipelines
