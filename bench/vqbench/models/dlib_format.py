"""Read dlib's binary serialisation of its face recognition ResNet in Python and NumPy.

The file ``dlib_face_recognition_resnet_model_v1.dat`` contains dlib's ``anet_type`` (see
``dlib/examples/dnn_face_recognition_ex.cpp``) as written by ``dlib::serialize``. The facts
below were worked out byte by byte on the shipped file. The special exponent codes are those of
dlib's ``float_details.h``.

- An integer is one header byte, whose low 4 bits give the number of value bytes and whose
  bit 7 marks a negative value, followed by the absolute value in little-endian order.
- A ``float`` or ``double`` outside a tensor is two integers, a mantissa and a 16-bit exponent,
  meaning ``mantissa * 2**exponent``. The exponents 32000, 32001 and 32002 encode +inf, -inf and
  NaN.
- A string is its length as an integer followed by its bytes. A bool is the ASCII byte ``'0'``
  or ``'1'``.
- A tensor (format version 2) is the version, its shape (num_samples, k, nr, nc) as integers,
  then its values as little-endian IEEE float32. An ``alias_tensor`` is version 1 and a shape.
  It views a layer's flat ``params`` tensor, starting where the previous alias ended.
- The network is written from the outside in: the loss layer's version and details, then the
  version of every layer from the output down to the input, because each layer writes its
  version before its sub-network. Then, from the input up, every layer writes its details and
  its training state (3 bools and 3 tensors, plus a sample expansion factor for the layer on
  top of the input layer). Tag and skip layers (version 1) write nothing else, and their ids
  are not stored at all.

``read_dlib_resnet`` returns the layers in forward order, input first and loss last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from vqbench.errors import ModelError

logger = logging.getLogger(__name__)

#: Exponent codes that dlib's ``float_details`` uses for values without a finite mantissa.
_SPECIAL_EXPONENTS = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}

#: Version numbers that dlib writes for each layer wrapper class.
_ADD_LAYER_VERSION = 2
_ADD_LAYER_ON_INPUT_VERSION = 3
_TAG_OR_SKIP_VERSION = 1
_LOSS_LAYER_VERSION = 1
_TENSOR_VERSION = 2
_ALIAS_TENSOR_VERSION = 1

ConfigValue = int | float | str | bool


@dataclass(frozen=True)
class DlibLayer:
    """One layer of a dlib network: its kind, its settings and its parameter arrays.

    ``kind`` is one of ``input_rgb_image_sized``, ``con``, ``affine``, ``relu``, ``max_pool``,
    ``avg_pool``, ``tag``, ``skip``, ``add_prev``, ``fc`` or ``loss_metric``. ``name`` is the
    version string dlib wrote (``"con_4"``), empty for tag and skip layers. ``offset`` is the
    byte offset where the layer's details start in the file. Arrays in ``params`` are read-only.
    """

    kind: str
    name: str
    offset: int
    config: Mapping[str, ConfigValue] = field(default_factory=dict)
    params: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class DlibNetwork:
    """A parsed dlib network: its layers in forward order and the file they came from."""

    path: Path
    size_bytes: int
    layers: tuple[DlibLayer, ...]

    def layers_of_kind(self, kind: str) -> tuple[DlibLayer, ...]:
        """Return the layers of one kind, in forward order."""
        return tuple(layer for layer in self.layers if layer.kind == kind)

    @property
    def param_count(self) -> int:
        """Number of trained values in all layers' parameter arrays."""
        return sum(int(array.size) for layer in self.layers for array in layer.params.values())


class _Cursor:
    """A read position in the file's bytes; every read names what it expects for errors."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.offset = 0

    def fail(self, offset: int, message: str) -> ModelError:
        return ModelError(
            f"cannot parse dlib model {self.path} at byte offset {offset}: {message}; "
            "the file is damaged or is not dlib's face recognition ResNet, so reinstall "
            "face_recognition_models"
        )

    def take(self, count: int, what: str, value_offset: int | None = None) -> bytes:
        """Return the next ``count`` bytes; errors name ``value_offset``, where the value starts."""
        start = self.offset
        if count < 0 or start + count > len(self.data):
            raise self.fail(
                start if value_offset is None else value_offset,
                f"expected {count} bytes of {what}, but the file ends after {len(self.data)} bytes",
            )
        self.offset = start + count
        return self.data[start : self.offset]

    def read_int(self, what: str) -> int:
        start = self.offset
        header = self.take(1, what)[0]
        size = header & 0x0F
        if header & 0x70 or size > 8:
            raise self.fail(start, f"expected an integer header byte for {what}, found 0x{header:02x}")
        value = int.from_bytes(self.take(size, what, value_offset=start), "little")
        return -value if header & 0x80 else value

    def read_float(self, what: str) -> float:
        mantissa = self.read_int(f"the mantissa of {what}")
        start = self.offset
        exponent = self.read_int(f"the exponent of {what}")
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        if not -(1 << 15) <= exponent < (1 << 15):
            raise self.fail(start, f"expected a 16-bit exponent for {what}, found {exponent}")
        return float(mantissa) * 2.0**exponent

    def read_bool(self, what: str) -> bool:
        start = self.offset
        byte = self.take(1, what)
        if byte not in (b"0", b"1"):
            raise self.fail(start, f"expected the bool {what} as b'0' or b'1', found {byte!r}")
        return byte == b"1"

    def read_string(self, what: str, max_bytes: int = 256) -> str:
        start = self.offset
        length = self.read_int(f"the length of {what}")
        if not 0 <= length <= max_bytes:
            raise self.fail(start, f"expected {what} of at most {max_bytes} bytes, found length {length}")
        raw = self.take(length, what, value_offset=start)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(start, f"expected {what} as ASCII text, found {raw[:32]!r}") from None

    def expect_int(self, expected: int, what: str) -> None:
        start = self.offset
        value = self.read_int(what)
        if value != expected:
            raise self.fail(start, f"expected {what} {expected}, found {value}")

    def read_shape(self, what: str) -> tuple[int, int, int, int]:
        start = self.offset
        shape = tuple(self.read_int(f"dimension {axis} of {what}") for axis in ("n", "k", "nr", "nc"))
        if any(dim < 0 for dim in shape):
            raise self.fail(start, f"expected non-negative dimensions for {what}, found {shape}")
        return shape  # type: ignore[return-value]

    def read_tensor(self, what: str) -> np.ndarray:
        # NOTE: only tensor format version 2 (raw float32) is read. Files written by older dlib
        # releases with tensor format version 1 are rejected.
        self.expect_int(_TENSOR_VERSION, f"tensor format version of {what}")
        shape = self.read_shape(what)
        count = int(np.prod(shape, dtype=np.int64))
        raw = self.take(4 * count, f"{count} float32 values of {what}")
        array = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
        array.setflags(write=False)
        return array

    def read_alias_shape(self, what: str) -> tuple[int, int, int, int]:
        self.expect_int(_ALIAS_TENSOR_VERSION, f"alias_tensor format version of {what}")
        return self.read_shape(what)


def _split_params(
    cursor: _Cursor, offset: int, params: np.ndarray, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """Cut a layer's flat ``params`` tensor into the alias tensors that view it, in order."""
    flat = params.reshape(-1)
    needed = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes.values())
    if needed != flat.size:
        raise cursor.fail(offset, f"expected {needed} parameters for shapes {dict(shapes)}, found {flat.size}")
    arrays: dict[str, np.ndarray] = {}
    start = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=np.int64))
        array = flat[start : start + size].reshape(shape)
        array.setflags(write=False)
        arrays[name] = array
        start += size
    return arrays


def _read_window(cursor: _Cursor, what: str) -> dict[str, ConfigValue]:
    """Read the window, stride and padding fields that con and pooling layers share."""
    names = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    return {name: cursor.read_int(f"{name} of {what}") for name in names}


def _read_multipliers(cursor: _Cursor, what: str) -> dict[str, ConfigValue]:
    names = (
        "learning_rate_multiplier",
        "weight_decay_multiplier",
        "bias_learning_rate_multiplier",
        "bias_weight_decay_multiplier",
    )
    return {name: cursor.read_float(f"{name} of {what}") for name in names}


def _read_con(cursor: _Cursor, name: str, offset: int) -> DlibLayer:
    params = cursor.read_tensor("con params")
    config: dict[str, ConfigValue] = {"num_filters": cursor.read_int("num_filters of con")}
    config.update(_read_window(cursor, "con"))
    shapes = {"filters": cursor.read_alias_shape("con filters"), "biases": cursor.read_alias_shape("con biases")}
    config.update(_read_multipliers(cursor, "con"))
    return DlibLayer("con", name, offset, config, _split_params(cursor, offset, params, shapes))


def _read_affine(cursor: _Cursor, name: str, offset: int) -> DlibLayer:
    params = cursor.read_tensor("affine params")
    shapes = {"gamma": cursor.read_alias_shape("affine gamma"), "beta": cursor.read_alias_shape("affine beta")}
    mode_offset = cursor.offset
    mode = cursor.read_int("affine mode")
    if mode not in (0, 1):
        raise cursor.fail(mode_offset, f"expected affine mode 0 (CONV_MODE) or 1 (FC_MODE), found {mode}")
    config: dict[str, ConfigValue] = {"mode": "conv" if mode == 0 else "fc"}
    return DlibLayer("affine", name, offset, config, _split_params(cursor, offset, params, shapes))


def _read_pool(kind: str) -> Callable[[_Cursor, str, int], DlibLayer]:
    def read(cursor: _Cursor, name: str, offset: int) -> DlibLayer:
        return DlibLayer(kind, name, offset, _read_window(cursor, kind))

    return read


def _read_fc(cursor: _Cursor, name: str, offset: int) -> DlibLayer:
    config: dict[str, ConfigValue] = {
        "num_outputs": cursor.read_int("num_outputs of fc"),
        "num_inputs": cursor.read_int("num_inputs of fc"),
    }
    params = cursor.read_tensor("fc params")
    shapes = {"weights": cursor.read_alias_shape("fc weights"), "biases": cursor.read_alias_shape("fc biases")}
    mode_offset = cursor.offset
    bias_mode = cursor.read_int("fc bias mode")
    if bias_mode not in (0, 1):
        raise cursor.fail(mode_offset, f"expected fc bias mode 0 (FC_HAS_BIAS) or 1 (FC_NO_BIAS), found {bias_mode}")
    config["has_bias"] = bias_mode == 0
    config.update(_read_multipliers(cursor, "fc"))
    arrays = _split_params(cursor, offset, params, shapes)
    if not config["has_bias"]:
        del arrays["biases"]
    return DlibLayer("fc", name, offset, config, arrays)


def _read_no_fields(kind: str) -> Callable[[_Cursor, str, int], DlibLayer]:
    def read(cursor: _Cursor, name: str, offset: int) -> DlibLayer:
        return DlibLayer(kind, name, offset)

    return read


#: Readers of each layer's details, by the version string dlib writes first.
_LAYER_READERS: dict[str, Callable[[_Cursor, str, int], DlibLayer]] = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "relu_": _read_no_fields("relu"),
    "max_pool_2": _read_pool("max_pool"),
    "avg_pool_2": _read_pool("avg_pool"),
    "add_prev_": _read_no_fields("add_prev"),
    "fc_2": _read_fc,
}


def _read_layer_details(cursor: _Cursor) -> DlibLayer:
    offset = cursor.offset
    name = cursor.read_string("a layer's version string")
    reader = _LAYER_READERS.get(name)
    if reader is None:
        known = ", ".join(sorted(_LAYER_READERS))
        raise cursor.fail(offset, f"expected one of the layer names {known}, found unknown layer {name!r}")
    return reader(cursor, name, offset)


def _skip_training_state(cursor: _Cursor, on_input: bool) -> None:
    """Read past the state a layer keeps for training: 3 bools, 3 tensors and more."""
    for flag in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        cursor.read_bool(flag)
    for tensor in ("x_grad", "cached_output", "grad_final" if on_input else "params_grad"):
        cursor.read_tensor(tensor)
    if on_input:
        cursor.read_int("sample_expansion_factor")


def _read_loss(cursor: _Cursor) -> DlibLayer:
    cursor.expect_int(_LOSS_LAYER_VERSION, "add_loss_layer format version")
    offset = cursor.offset
    name = cursor.read_string("the loss layer's version string")
    if name != "loss_metric_2":
        raise cursor.fail(offset, f"expected the loss layer 'loss_metric_2', found {name!r}")
    config = {"margin": cursor.read_float("loss margin"), "distance_threshold": cursor.read_float("loss dist_thresh")}
    return DlibLayer("loss_metric", name, offset, config)


def _read_input(cursor: _Cursor) -> DlibLayer:
    offset = cursor.offset
    name = cursor.read_string("the input layer's version string")
    if name != "input_rgb_image_sized":
        raise cursor.fail(offset, f"expected the input layer 'input_rgb_image_sized', found {name!r}")
    config = {
        "avg_red": cursor.read_float("avg_red"),
        "avg_green": cursor.read_float("avg_green"),
        "avg_blue": cursor.read_float("avg_blue"),
        "nr": cursor.read_int("input rows"),
        "nc": cursor.read_int("input columns"),
    }
    return DlibLayer("input_rgb_image_sized", name, offset, config)


def _read_layer_versions(cursor: _Cursor) -> list[int]:
    """Read the run of layer versions, output side first, up to the layer on the input."""
    versions: list[int] = []
    while True:
        offset = cursor.offset
        version = cursor.read_int("a layer format version")
        if version not in (_TAG_OR_SKIP_VERSION, _ADD_LAYER_VERSION, _ADD_LAYER_ON_INPUT_VERSION):
            raise cursor.fail(offset, f"expected a layer format version 1, 2 or 3, found {version}")
        versions.append(version)
        if version == _ADD_LAYER_ON_INPUT_VERSION:
            return versions


def _tag_or_skip(versions_upward: list[int], index: int, offset: int) -> DlibLayer:
    # dlib stores neither the kind nor the id of these layers. In anet_type a skip layer always
    # sits directly on a tag layer (residual_down: tag2 then skip1), and a tag never does.
    below_is_tag_or_skip = index > 0 and versions_upward[index - 1] == _TAG_OR_SKIP_VERSION
    return DlibLayer("skip" if below_is_tag_or_skip else "tag", "", offset)


def _read_layers(cursor: _Cursor) -> list[DlibLayer]:
    loss = _read_loss(cursor)
    versions_upward = _read_layer_versions(cursor)[::-1]
    layers = [_read_input(cursor)]
    for index, version in enumerate(versions_upward):
        if version == _TAG_OR_SKIP_VERSION:
            layers.append(_tag_or_skip(versions_upward, index, cursor.offset))
            continue
        offset = cursor.offset
        if (version == _ADD_LAYER_ON_INPUT_VERSION) != (index == 0):
            raise cursor.fail(offset, "expected format version 3 only for the layer on the input layer")
        layers.append(_read_layer_details(cursor))
        _skip_training_state(cursor, on_input=index == 0)
    layers.append(loss)
    return layers


def _freeze(layer: DlibLayer) -> DlibLayer:
    return DlibLayer(
        layer.kind, layer.name, layer.offset, MappingProxyType(dict(layer.config)), MappingProxyType(dict(layer.params))
    )


def parse_dlib_network(data: bytes, path: Path) -> DlibNetwork:
    """Parse a serialised dlib network from bytes; ``path`` only names it in errors."""
    cursor = _Cursor(data, path)
    layers = _read_layers(cursor)
    if cursor.offset != len(data):
        raise cursor.fail(cursor.offset, f"expected the end of the file, found {len(data) - cursor.offset} more bytes")
    return DlibNetwork(path=path, size_bytes=len(data), layers=tuple(_freeze(layer) for layer in layers))


def read_dlib_resnet(path: Path) -> DlibNetwork:
    """Read dlib's face recognition ResNet from its ``.dat`` file, raising ModelError if it does not parse."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read dlib model {path}: {error}; check that the file exists") from error
    network = parse_dlib_network(data, path)
    logger.debug("parsed %d layers with %d parameters from %s", len(network.layers), network.param_count, path)
    return network
