"""Check that the ported teacher reproduces dlib's descriptors on real LFW faces.

The images are spread evenly over the sorted list of LFW files, so a run with the same ``n``
always uses the same images. Each one is aligned once by ``DlibAligner`` (HOG detector without
upsampling, 5-point landmarks, 150x150 chip with padding 0.25). Where the detector finds no
face, the aligner places the landmarks in its fixed central box instead, and the image is
counted in ``n_detection_fallbacks``. dlib and the port then embed the same chips, and the
cosine similarity between the two descriptors of each chip is reported.

Run it from the command line with ``python -m vqbench.models.verify --n-images 500``.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqbench.data.dataset import LFW_IMAGE_FOLDER
from vqbench.errors import DataError, ScenarioError

logger = logging.getLogger(__name__)

LFW_ROOT_ENV = "VQBENCH_LFW_ROOT"


@dataclass(frozen=True)
class PortFidelity:
    """Agreement between dlib and the port over ``n_images`` chips."""

    min_cosine: float
    mean_cosine: float
    n_images: int
    max_abs_difference: float
    n_detection_fallbacks: int
    runtime: str


def list_lfw_images(lfw_root: Path) -> list[Path]:
    """Return LFW's JPEG files in sorted order, from ``lfw_root/lfw-deepfunneled`` or ``lfw_root``."""
    lfw_root = Path(lfw_root)
    folder = lfw_root / LFW_IMAGE_FOLDER if (lfw_root / LFW_IMAGE_FOLDER).is_dir() else lfw_root
    images = sorted(folder.glob("*/*.jpg"))
    if not images:
        raise DataError(
            f"no LFW images (<person>/<name>.jpg) found under {folder}; "
            f"pass the folder that holds {LFW_IMAGE_FOLDER}, or set {LFW_ROOT_ENV}"
        )
    return images


def select_evenly(items: list[Path], count: int) -> list[Path]:
    """Pick ``count`` items spread evenly over the list, first and last included."""
    if not 1 <= count <= len(items):
        raise ValueError(f"cannot pick {count} of {len(items)} images; ask for 1 to {len(items)}")
    indices = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in indices]


def align_images(paths: list[Path]) -> tuple[np.ndarray, int]:
    """Align each image to a chip; return the chips (N, 150, 150, 3) and the detector misses."""
    from vqbench.data.align import DlibAligner, decode_image

    aligner = DlibAligner(chip_size_px=150, padding=0.25, upsample=0)
    chips = []
    fallbacks = 0
    for path in paths:
        aligned = aligner.align(decode_image(path.read_bytes(), str(path)))
        chips.append(aligned.chip)
        fallbacks += not aligned.detected
    return np.stack(chips), fallbacks


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the cosine similarity of each row of ``a`` with the same row of ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def create_port(runtime: str, threads: int | None = None):
    """Build the ported teacher for ``torch`` or ``onnxruntime``.

    ``threads`` sets onnxruntime's thread count. PyTorch's is process-wide, so set it with
    ``torch.set_num_threads`` instead.
    """
    from vqbench.models.teacher_onnx import OnnxTeacher, TorchTeacher

    if runtime == "torch":
        return TorchTeacher()
    if runtime == "onnxruntime":
        return OnnxTeacher(threads=threads)
    raise ScenarioError(f"unknown port runtime {runtime!r}; use torch or onnxruntime")


def fidelity_against(reference: np.ndarray, ported: np.ndarray, runtime: str, fallbacks: int = 0) -> PortFidelity:
    """Compare dlib's descriptors with the port's, row by row."""
    cosines = row_cosines(reference, ported)
    return PortFidelity(
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        n_images=len(cosines),
        max_abs_difference=float(np.abs(reference - ported).max()),
        n_detection_fallbacks=fallbacks,
        runtime=runtime,
    )


def _aligned_lfw_chips(n_images: int, lfw_root: Path) -> tuple[np.ndarray, int]:
    paths = select_evenly(list_lfw_images(lfw_root), n_images)
    chips, fallbacks = align_images(paths)
    logger.info("aligned %d LFW images (%d detection fallbacks)", len(chips), fallbacks)
    return chips, fallbacks


def compare_port_with_dlib(n_images: int, lfw_root: Path, runtime: str = "onnxruntime") -> PortFidelity:
    """Embed ``n_images`` aligned LFW chips with dlib and with the port, and compare them."""
    from vqbench.models.teacher import DlibTeacher

    port = create_port(runtime)
    chips, fallbacks = _aligned_lfw_chips(n_images, lfw_root)
    return fidelity_against(DlibTeacher().embed(chips), port.embed(chips), runtime, fallbacks)


def default_lfw_root() -> Path:
    """Return ``$VQBENCH_LFW_ROOT``, else ``shared/data/lfw`` beside the repository checkout."""
    configured = os.environ.get(LFW_ROOT_ENV)
    if configured:
        return Path(configured).expanduser()
    # bench/vqbench/models/verify.py: parents[3] is the repository root in an editable install.
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "lfw"


def main(argv: list[str] | None = None) -> None:
    """Print the fidelity of each port runtime on LFW."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=500, help="number of LFW images to compare (default 500)")
    parser.add_argument(
        "--lfw-root", type=Path, default=default_lfw_root(), help="LFW folder that contains lfw-deepfunneled"
    )
    parser.add_argument(
        "--runtime", choices=("torch", "onnxruntime"), action="append", help="port runtime (repeatable)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vqbench").setLevel(logging.INFO)

    import torch

    torch.set_num_threads(args.threads)
    runtimes = args.runtime or ["torch", "onnxruntime"]
    ports = [create_port(runtime, args.threads) for runtime in runtimes]

    from vqbench.models.teacher import DlibTeacher

    chips, fallbacks = _aligned_lfw_chips(args.n_images, args.lfw_root)
    reference = DlibTeacher().embed(chips)
    for runtime, port in zip(runtimes, ports):
        fidelity = fidelity_against(reference, port.embed(chips), runtime, fallbacks)
        print(
            f"{runtime}: n_images={fidelity.n_images} min_cosine={fidelity.min_cosine:.10f} "
            f"(1 - min = {1.0 - fidelity.min_cosine:.2e}) "
            f"mean_cosine={fidelity.mean_cosine:.10f} max_abs_difference={fidelity.max_abs_difference:.3e} "
            f"detection_fallbacks={fidelity.n_detection_fallbacks}"
        )


if __name__ == "__main__":
    main()
