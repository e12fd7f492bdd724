"""Face detection and 5-point alignment to the teacher's chip, with dlib.

dlib's frontal (HOG) face detector finds the face, the 5-point shape predictor places the eye
corners and the nose, and ``dlib.get_face_chip`` warps the face to a square chip (150x150 with
padding 0.25 is what dlib's ResNet was trained on).

When the detector finds no face, the shape predictor runs on a fixed box instead: the central
square of side ``min(width, height) / 2.2``. LFW was cut this way (its README: the Viola-Jones
box enlarged 2.2 times in each dimension, scaled to 250x250), so on LFW that box is the
original detection. Such images are counted as ``detection_fallbacks``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqbench.errors import DataError
from vqbench.models.files import SHAPE_PREDICTOR_5, dlib_model_path, sha256_file

logger = logging.getLogger(__name__)

#: Ratio between an LFW image's side and the detector box it was cut around.
LFW_CROP_ENLARGEMENT = 2.2


class CorruptImageError(DataError):
    """An image file cannot be decoded."""


@dataclass(frozen=True)
class AlignedChip:
    """An aligned RGB face chip and whether the detector found the face."""

    chip: np.ndarray
    detected: bool


#: The fix for an image file that does not decode.
FILE_IMAGE_FIX = "replace or remove the file"
#: The fix for an image that does not decode, when it came as a payload rather than from a file.
PAYLOAD_IMAGE_FIX = "send a complete image file"


def decode_image(data: bytes, source: str = "<bytes>", fix: str = FILE_IMAGE_FIX) -> np.ndarray:
    """Decode image file bytes to an RGB uint8 array, raising CorruptImageError on failure.

    ``fix`` ends the error message; payloads pass ``PAYLOAD_IMAGE_FIX``, since their sender has
    no file to replace.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError as error:
        raise CorruptImageError(f"cannot decode image {source}: not a known image format; {fix}") from error
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        raise CorruptImageError(f"cannot decode image {source}: {error}; {fix}") from error


def fallback_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Return the fixed face box (left, top, right, bottom) used when detection fails."""
    side = min(width, height) / LFW_CROP_ENLARGEMENT
    left = (width - side) / 2
    top = (height - side) / 2
    return round(left), round(top), round(left + side), round(top + side)


class DlibAligner:
    """Detect, place 5 landmarks and cut the aligned chip."""

    def __init__(
        self, chip_size_px: int = 150, padding: float = 0.25, upsample: int = 1, face_choice: str = "score"
    ) -> None:
        import dlib

        self._dlib = dlib
        self.chip_size_px = chip_size_px
        self.padding = padding
        self.upsample = upsample
        self.face_choice = face_choice
        self.predictor_path: Path = dlib_model_path(SHAPE_PREDICTOR_5)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(self.predictor_path))
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        """Hash everything that changes the chip: predictor file, settings, dlib version."""
        parts = [
            sha256_file(self.predictor_path),
            str(self.chip_size_px),
            repr(self.padding),
            str(self.upsample),
            self.face_choice,
            self._dlib.__version__,
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    @property
    def model_bytes(self) -> int:
        """Bytes of the landmark model file (the HOG detector is compiled into dlib)."""
        return self.predictor_path.stat().st_size

    def align(self, image_rgb: np.ndarray) -> AlignedChip:
        """Return the aligned chip of the most confident face, or of the fallback box."""
        dlib = self._dlib
        detections, scores, _ = self._detector.run(image_rgb, self.upsample)
        if len(detections):
            box = detections[self._choose(detections, scores, image_rgb.shape)]
            detected = True
        else:
            height, width = image_rgb.shape[:2]
            box = dlib.rectangle(*fallback_box(width, height))
            detected = False
        shape = self._predictor(image_rgb, box)
        chip = dlib.get_face_chip(image_rgb, shape, size=self.chip_size_px, padding=self.padding)
        return AlignedChip(chip=np.asarray(chip, dtype=np.uint8), detected=detected)

    def _choose(self, detections: object, scores: list[float], shape: tuple[int, ...]) -> int:
        """Index of the detection to align: nearest the image centre, or the highest score."""
        if self.face_choice == "score":
            return int(np.argmax(scores))
        centre_y, centre_x = shape[0] / 2, shape[1] / 2
        distances = [(box.center().x - centre_x) ** 2 + (box.center().y - centre_y) ** 2 for box in detections]
        return int(np.argmin(distances))

    def align_bytes(self, data: bytes, source: str = "<bytes>", fix: str = FILE_IMAGE_FIX) -> AlignedChip:
        """Decode image file bytes and align the face in them; ``fix`` ends a decoding error."""
        return self.align(decode_image(data, source, fix))
