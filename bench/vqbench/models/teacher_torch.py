"""dlib's face recognition ResNet as a PyTorch module, built from the weights in dlib's ``.dat``.

Input contract of ``DlibResNet.forward``: a float32 tensor of shape (N, 3, 150, 150). It
contains the aligned chips that ``dlib.get_face_chip(image, shape, size=150, padding=0.25)``
returns, with channels in R, G, B order. Values are on dlib's 0..255 pixel scale, which means
the uint8 chip cast to float and not rescaled. The module applies the normalisation of dlib's
``input_rgb_image_sized`` itself: ``(pixel - channel_mean) / 256``, with the means stored in
the file (122.782, 117.001, 104.298 for R, G, B). The output is the raw (N, 128) descriptor, not L2-normalised, as from
``dlib.face_recognition_model_v1.compute_face_descriptor``.

Two dlib conventions differ from PyTorch's usual ResNet and are kept here:

- Convolutions and pooling with stride 2 use no padding (dlib's default padding is
  ``(kernel - 1) / 2`` only for stride 1), so sizes run 150, 72, 35, 17, 8, 4, 2.
- ``add_prev`` adds two tensors of different shapes by zero-extending both to the larger size
  in every dimension, aligned at index 0. In the downsampling blocks the 2x2 average-pooled
  shortcut has fewer channels than the main branch, and at 8x8 input it is also larger
  (4x4 against the convolution's 3x3).

The port matches dlib's own descriptors to within 5e-7 per value on 500 LFW chips, which
confirms the normalisation and both conventions (``python -m vqbench.models.verify``).

``load_torch_teacher`` converts the installed ``.dat`` once and caches the state dict under
``$VQBENCH_CACHE_DIR/models`` (default ``~/.cache/vqbench/models``). Weights are never
committed to the repository.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqbench.errors import ModelError
from vqbench.models.dlib_format import DlibLayer, DlibNetwork, read_dlib_resnet
from vqbench.models.files import RECOGNITION_MODEL, dlib_model_path, sha256_file

logger = logging.getLogger(__name__)

#: SHA-256 of ``dlib_face_recognition_resnet_model_v1.dat`` in face_recognition_models 0.3.0.
TEACHER_DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"

CACHE_DIR_ENV = "VQBENCH_CACHE_DIR"
DEFAULT_MODEL_CACHE_DIR = Path("~/.cache/vqbench/models")

#: Layer kinds of anet_type's plain and downsampling residual blocks, stem and head, input side first.
_PLAIN_BLOCK = ("tag", "con", "affine", "relu", "con", "affine", "add_prev", "relu")
_DOWN_BLOCK = ("tag", "con", "affine", "relu", "con", "affine", "tag", "skip", "avg_pool", "add_prev", "relu")
_STEM = ("input_rgb_image_sized", "con", "affine", "relu", "max_pool")
_HEAD = ("avg_pool", "fc", "loss_metric")


@dataclass(frozen=True)
class ConvSpec:
    """One convolution: channels, kernel (rows, columns), stride and zero padding per axis."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class PoolSpec:
    """One pooling window: kernel (rows, columns), stride and zero padding per axis."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class BlockSpec:
    """A residual block: two convolutions, and the shortcut's pooling when it downsamples."""

    conv1: ConvSpec
    conv2: ConvSpec
    shortcut_pool: PoolSpec | None


@dataclass(frozen=True)
class ResNetSpec:
    """The architecture read from the ``.dat`` file, enough to rebuild the module without it."""

    input_size_px: tuple[int, int]
    channel_means: tuple[float, float, float]
    stem_conv: ConvSpec
    stem_pool: PoolSpec
    blocks: tuple[BlockSpec, ...]
    fc_inputs: int
    fc_outputs: int
    fc_bias: bool

    def to_dict(self) -> dict:
        """Return the spec as nested dicts of ints, floats and bools (safe for ``torch.load``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ResNetSpec:
        """Rebuild a spec from ``to_dict``'s output."""

        def conv(d: dict) -> ConvSpec:
            return ConvSpec(
                d["in_channels"], d["out_channels"], tuple(d["kernel"]), tuple(d["stride"]), tuple(d["padding"])
            )

        def pool(d: dict | None) -> PoolSpec | None:
            return None if d is None else PoolSpec(tuple(d["kernel"]), tuple(d["stride"]), tuple(d["padding"]))

        return cls(
            input_size_px=tuple(data["input_size_px"]),
            channel_means=tuple(data["channel_means"]),
            stem_conv=conv(data["stem_conv"]),
            stem_pool=pool(data["stem_pool"]),
            blocks=tuple(
                BlockSpec(conv(block["conv1"]), conv(block["conv2"]), pool(block["shortcut_pool"]))
                for block in data["blocks"]
            ),
            fc_inputs=data["fc_inputs"],
            fc_outputs=data["fc_outputs"],
            fc_bias=data["fc_bias"],
        )


class Affine(nn.Module):
    """dlib's ``affine`` layer: a per-channel scale and shift (batch norm folded after training)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def add_zero_extended(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Add two NCHW tensors as dlib's ``add_prev`` does: zero-extend both to the larger shape."""
    channels = max(a.shape[1], b.shape[1])
    height = max(a.shape[2], b.shape[2])
    width = max(a.shape[3], b.shape[3])

    def extend(t: torch.Tensor) -> torch.Tensor:
        pad = (0, width - t.shape[3], 0, height - t.shape[2], 0, channels - t.shape[1])
        return F.pad(t, pad) if any(pad) else t

    return extend(a) + extend(b)


def _conv(spec: ConvSpec) -> nn.Conv2d:
    return nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding, bias=True)


class ResidualBlock(nn.Module):
    """dlib's ``ares`` block, or ``ares_down`` when the shortcut is pooled."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.conv1 = _conv(spec.conv1)
        self.affine1 = Affine(spec.conv1.out_channels)
        self.conv2 = _conv(spec.conv2)
        self.affine2 = Affine(spec.conv2.out_channels)
        self.shortcut_pool = spec.shortcut_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.affine1(self.conv1(x)))
        y = self.affine2(self.conv2(y))
        shortcut = x
        if self.shortcut_pool is not None:
            pool = self.shortcut_pool
            shortcut = F.avg_pool2d(x, pool.kernel, pool.stride, pool.padding)
        return F.relu(add_zero_extended(y, shortcut))


class DlibResNet(nn.Module):
    """dlib's ResNet face descriptor: (N, 3, 150, 150) RGB on the 0..255 scale to (N, 128)."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("channel_means", torch.tensor(spec.channel_means, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv = _conv(spec.stem_conv)
        self.affine = Affine(spec.stem_conv.out_channels)
        self.blocks = nn.ModuleList(ResidualBlock(block) for block in spec.blocks)
        self.fc = nn.Linear(spec.fc_inputs, spec.fc_outputs, bias=spec.fc_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # dlib's input_rgb_image_sized: (pixel - channel mean) / 256.
        x = (x - self.channel_means) / 256.0
        x = F.relu(self.affine(self.conv(x)))
        pool = self.spec.stem_pool
        x = F.max_pool2d(x, pool.kernel, pool.stride, pool.padding)
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))
        return self.fc(x)

    def stage_output(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """Run the chips up to the last residual block with ``channels`` output channels and return its map.

        With dlib's network and 150x150 chips, 128 channels give an (N, 128, 8, 8) map.
        """
        last = max((index for index, block in enumerate(self.spec.blocks) if block.conv2.out_channels == channels), default=None)
        if last is None:
            present = sorted({block.conv2.out_channels for block in self.spec.blocks})
            raise ValueError(f"the teacher has no residual block with {channels} output channels; choose one of {present}")
        x = (x - self.channel_means) / 256.0
        x = F.relu(self.affine(self.conv(x)))
        pool = self.spec.stem_pool
        x = F.max_pool2d(x, pool.kernel, pool.stride, pool.padding)
        for block in self.blocks[: last + 1]:
            x = block(x)
        return x


def _kinds(layers: tuple[DlibLayer, ...]) -> tuple[str, ...]:
    return tuple(layer.kind for layer in layers)


def _split_blocks(network: DlibNetwork) -> list[tuple[DlibLayer, ...]]:
    """Cut the layers between stem and head into anet_type's residual blocks."""
    layers = network.layers
    if _kinds(layers[: len(_STEM)]) != _STEM or _kinds(layers[-len(_HEAD) :]) != _HEAD:
        raise ModelError(
            f"{network.path} does not start with the layers {_STEM} and end with {_HEAD}; "
            "only dlib's face recognition ResNet (anet_type) can be ported"
        )
    blocks = []
    index = len(_STEM)
    end = len(layers) - len(_HEAD)
    while index < end:
        for pattern in (_DOWN_BLOCK, _PLAIN_BLOCK):
            if _kinds(layers[index : index + len(pattern)]) == pattern:
                blocks.append(layers[index : index + len(pattern)])
                index += len(pattern)
                break
        else:
            raise ModelError(
                f"{network.path}: layer {index} ({layers[index].kind}, byte offset {layers[index].offset}) "
                "does not start a residual block of dlib's anet_type, so this model cannot be ported"
            )
    return blocks


def _pair(config: dict, first: str, second: str) -> tuple[int, int]:
    return int(config[first]), int(config[second])


def _conv_spec(layer: DlibLayer) -> ConvSpec:
    config = dict(layer.config)
    return ConvSpec(
        in_channels=int(layer.params["filters"].shape[1]),
        out_channels=int(config["num_filters"]),
        kernel=_pair(config, "nr", "nc"),
        stride=_pair(config, "stride_y", "stride_x"),
        padding=_pair(config, "padding_y", "padding_x"),
    )


def _pool_spec(layer: DlibLayer) -> PoolSpec:
    config = dict(layer.config)
    return PoolSpec(
        kernel=_pair(config, "nr", "nc"),
        stride=_pair(config, "stride_y", "stride_x"),
        padding=_pair(config, "padding_y", "padding_x"),
    )


def _block_spec(block: tuple[DlibLayer, ...]) -> BlockSpec:
    shortcut_pool = _pool_spec(block[8]) if len(block) == len(_DOWN_BLOCK) else None
    return BlockSpec(_conv_spec(block[1]), _conv_spec(block[4]), shortcut_pool)


def spec_from_network(network: DlibNetwork) -> ResNetSpec:
    """Read the architecture of a parsed anet_type network."""
    blocks = _split_blocks(network)
    source, stem_conv, _, _, stem_pool = network.layers[: len(_STEM)]
    global_pool, fc, _ = network.layers[-len(_HEAD) :]

    # avg_pool_everything is dlib's avg_pool with a 0x0 window, meaning the whole input.
    if (global_pool.config["nr"], global_pool.config["nc"]) != (0, 0):
        raise ModelError(f"{network.path}: expected a global average pool before fc, found {dict(global_pool.config)}")

    return ResNetSpec(
        input_size_px=_pair(dict(source.config), "nr", "nc"),
        channel_means=tuple(float(source.config[name]) for name in ("avg_red", "avg_green", "avg_blue")),
        stem_conv=_conv_spec(stem_conv),
        stem_pool=_pool_spec(stem_pool),
        blocks=tuple(_block_spec(block) for block in blocks),
        fc_inputs=int(fc.config["num_inputs"]),
        fc_outputs=int(fc.config["num_outputs"]),
        fc_bias=bool(fc.config["has_bias"]),
    )


def _tensor(array: np.ndarray, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    values = np.array(array, dtype=np.float32)
    return torch.from_numpy(values.reshape(shape) if shape else values)


def _conv_affine_state(conv: DlibLayer, affine: DlibLayer, conv_key: str, affine_key: str) -> dict[str, torch.Tensor]:
    channels = conv.params["filters"].shape[0]
    return {
        f"{conv_key}.weight": _tensor(conv.params["filters"]),
        f"{conv_key}.bias": _tensor(conv.params["biases"], (channels,)),
        f"{affine_key}.weight": _tensor(affine.params["gamma"], (channels,)),
        f"{affine_key}.bias": _tensor(affine.params["beta"], (channels,)),
    }


def state_dict_from_network(network: DlibNetwork) -> dict[str, torch.Tensor]:
    """Convert the parsed dlib parameters to a ``DlibResNet`` state dict."""
    spec = spec_from_network(network)
    state = {"channel_means": torch.tensor(spec.channel_means, dtype=torch.float32).view(1, 3, 1, 1)}
    state.update(_conv_affine_state(network.layers[1], network.layers[2], "conv", "affine"))
    for index, block in enumerate(_split_blocks(network)):
        state.update(_conv_affine_state(block[1], block[2], f"blocks.{index}.conv1", f"blocks.{index}.affine1"))
        state.update(_conv_affine_state(block[4], block[5], f"blocks.{index}.conv2", f"blocks.{index}.affine2"))

    # dlib's fc computes input @ weights, with weights stored as (num_inputs, num_outputs).
    fc = network.layers[-2]
    weights = fc.params["weights"].reshape(spec.fc_inputs, spec.fc_outputs)
    state["fc.weight"] = _tensor(weights.T)
    if spec.fc_bias:
        state["fc.bias"] = _tensor(fc.params["biases"], (spec.fc_outputs,))
    return state


def build_torch_teacher(network: DlibNetwork) -> DlibResNet:
    """Build the port, in eval mode, from a parsed network."""
    model = DlibResNet(spec_from_network(network))
    model.load_state_dict(state_dict_from_network(network), strict=True)
    return model.eval()


def default_model_cache_dir() -> Path:
    """Return ``$VQBENCH_CACHE_DIR/models``, else ``~/.cache/vqbench/models``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() / "models" if configured else DEFAULT_MODEL_CACHE_DIR.expanduser()


def teacher_cache_path(cache_dir: Path | None = None) -> Path:
    """Return the file that caches the converted teacher for the pinned ``.dat``."""
    return Path(cache_dir or default_model_cache_dir()) / f"teacher-{TEACHER_DAT_SHA256[:12]}.pt"


def verified_dat_path() -> Path:
    """Return the installed ``.dat`` file, raising ModelError if its SHA-256 is not the pinned one."""
    path = dlib_model_path(RECOGNITION_MODEL)
    found = sha256_file(path)
    if found != TEACHER_DAT_SHA256:
        raise ModelError(
            f"{path} has SHA-256 {found}, expected {TEACHER_DAT_SHA256}; "
            "reinstall face_recognition_models 0.3.0, the release this port was verified against"
        )
    return path


_CACHE_FORMAT = 1
_CACHE_LOAD_ERRORS = (
    OSError,
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def _load_cached(path: Path) -> DlibResNet | None:
    """Rebuild the port from a cache file; return None if the file is missing or damaged."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if entry["format"] != _CACHE_FORMAT or entry["source_sha256"] != TEACHER_DAT_SHA256:
            raise ValueError(f"cache format {entry['format']} for {entry['source_sha256'][:12]}")
        model = DlibResNet(ResNetSpec.from_dict(entry["spec"]))
        model.load_state_dict(entry["state_dict"], strict=True)
    except _CACHE_LOAD_ERRORS as error:
        logger.warning("cached teacher %s is damaged (%s); converting %s again", path, error, RECOGNITION_MODEL)
        return None
    return model.eval()


def _save_cached(path: Path, model: DlibResNet) -> None:
    entry = {
        "format": _CACHE_FORMAT,
        "source_sha256": TEACHER_DAT_SHA256,
        "spec": model.spec.to_dict(),
        "state_dict": model.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(entry, temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def load_torch_teacher(cache_dir: Path | None = None) -> DlibResNet:
    """Return the PyTorch port in eval mode, converting the installed ``.dat`` on first use.

    The ``.dat`` file's SHA-256 is checked on every call, cached or not. A cache file that fails
    to load, or that was made for another format or source file, is converted again and replaced.
    """
    dat_path = verified_dat_path()
    cache_path = teacher_cache_path(cache_dir)
    model = _load_cached(cache_path)
    if model is None:
        model = build_torch_teacher(read_dlib_resnet(dat_path))
        _save_cached(cache_path, model)
        logger.info("converted %s to %s", dat_path, cache_path)
    return model
