"""vqbench: what face recognition costs on the edge and in the cloud, measured.

The package measures accuracy, bytes, latency, memory, energy and CO2e per face for pipelines
that send images to a cloud model and pipelines that send compact codes from an edge device.

``__version__`` is looked up on first use, so that processes which never ask for it (the memory
probe's children) do not load the package metadata machinery.
"""

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module 'vqbench' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vqbench")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+unknown"
