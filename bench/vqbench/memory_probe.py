"""Child process of the memory measurement: run one half of one pipeline, report its peak RSS.

``vqbench.measure.measure_peak_rss`` starts ``python -m vqbench.memory_probe`` once per half and
writes a pickled request to its stdin. The request names the half, the pipeline kind and
variant, and carries the validated scenario entry, the alignment and teacher settings as plain
dicts, and the inputs (image files for the edge half, payloads for the cloud half). The child
builds that one variant, runs the half on every input and prints ``{"peak_rss_bytes": N}`` on
stdout.

The child imports only the pipeline code and the libraries of the half it runs. It does not
import the scenario schema, the command line or the report code, which a deployed edge or
cloud program would not load either, so the figure is the half's own footprint: interpreter,
libraries, models and working memory. On failure it writes the traceback to stderr, then
the error on one last line, and exits 2.
"""

from __future__ import annotations

import json
import pickle
import resource
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

#: Exit status of a probe that could not run its half.
PROBE_FAILED = 2


def peak_rss_bytes() -> int:
    """Return the peak RSS of this process's current address space, in bytes.

    On Linux, ``ru_maxrss`` of a child starts at the parent's peak, because the kernel carries
    the pre-exec high-water mark over. ``VmHWM`` in /proc/self/status does not.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # NOTE: elsewhere ru_maxrss may include the parent's peak; it is kibibytes on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_half(request: dict) -> int:
    """Build the requested variant, run its half on every input and return the peak RSS in bytes."""
    from vqbench.pipelines.base import Components
    from vqbench.pipelines.registry import build_pipelines

    _check_request(request)
    components = Components(SimpleNamespace(**request["alignment"]), SimpleNamespace(**request["teacher"]))
    requested = (request["kind"], request["variant"])
    built = build_pipelines([SimpleNamespace(**request["pipeline_config"])], components)
    pipeline = next((p for p in built if (p.kind, p.variant) == requested), None)
    if pipeline is None:
        variants = ", ".join(f"{p.kind}/{p.variant}" for p in built)
        raise ProbeRequestError(f"the pipeline config builds {variants}, not {requested[0]}/{requested[1]}")
    for item in request["inputs"]:
        if request["half"] == "edge":
            pipeline.edge(item)
        else:
            pipeline.cloud([item])
    return peak_rss_bytes()


class ProbeRequestError(ValueError):
    """The request on stdin is not one that ``vqbench.measure`` writes."""


def _check_request(request: object) -> None:
    if not isinstance(request, dict):
        raise ProbeRequestError(f"the request is a {type(request).__name__}, not a dict")
    missing = sorted({"half", "kind", "variant", "pipeline_config", "alignment", "teacher", "inputs"} - set(request))
    if missing:
        raise ProbeRequestError(f"the request lacks {', '.join(missing)}")
    if request["half"] not in ("edge", "cloud"):
        raise ProbeRequestError(f"half is {request['half']!r}, not 'edge' or 'cloud'")
    for name in ("pipeline_config", "alignment", "teacher"):
        if not isinstance(request[name], dict):
            raise ProbeRequestError(f"{name} is a {type(request[name]).__name__}, not a dict")
    inputs = request["inputs"]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(item, bytes) for item in inputs):
        raise ProbeRequestError("inputs must be a non-empty list of bytes (image files or payloads)")


def main() -> int:
    try:
        peak = run_half(pickle.load(sys.stdin.buffer))
    except Exception as error:  # noqa: BLE001 - any failure is reported to the parent, which keeps running
        traceback.print_exc(file=sys.stderr)
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return PROBE_FAILED
    print(json.dumps({"peak_rss_bytes": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
