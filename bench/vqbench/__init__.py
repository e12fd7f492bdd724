"""vqbench: what face recognition costs on the edge and in the cloud, measured.

The package measures accuracy, bytes, latency, memory, energy and CO2e per face for pipelines
that send images to a cloud model and pipelines that send compact codes from an edge device.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vqbench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
