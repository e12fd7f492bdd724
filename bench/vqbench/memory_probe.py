"""Child process of the memory measurement: run one half of one pipeline, report its peak RSS.

``vqbench.measure.measure_peak_rss`` starts ``python -m vqbench.memory_probe`` once per half and
writes a pickled request to its stdin: the half, the pipeline kind and variant, the validated
scenario entry and alignment and teacher settings as plain dicts, and the inputs (image files
for the edge half, payloads for the cloud half). The child builds that one variant, runs the
half on every input and prints ``{"peak_rss_bytes": N}`` on stdout.

The child imports only the pipeline code and the libraries of the half it runs. It does not
import the scenario schema, the command line or the report code, which a deployed edge or
cloud program would not load either, so the figure is the half's own footprint: interpreter,
libraries, models and working memory. On failure it writes one line to stderr and exits 2.
"""

from __future__ import annotations

import json
import pickle
import resource
import sys
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

    components = Components(SimpleNamespace(**request["alignment"]), SimpleNamespace(**request["teacher"]))
    wanted = (request["kind"], request["variant"])
    pipeline = next(
        p for p in build_pipelines([SimpleNamespace(**request["pipeline_config"])], components) if (p.kind, p.variant) == wanted
    )
    for item in request["inputs"]:
        if request["half"] == "edge":
            pipeline.edge(item)
        else:
            pipeline.cloud([item])
    return peak_rss_bytes()


def main() -> int:
    from vqbench.errors import VqbenchError

    try:
        peak = run_half(pickle.load(sys.stdin.buffer))
    except (VqbenchError, StopIteration, KeyError, pickle.UnpicklingError, EOFError) as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return PROBE_FAILED
    print(json.dumps({"peak_rss_bytes": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
