"""The scenario file schema: what a run measures, on which data, with which meters.

A scenario is a YAML file validated by the pydantic models below; unknown keys are rejected.
``${VAR}`` and ``~`` are expanded in paths, and relative paths resolve against the folder of
the scenario file. ``scenarios/scenario.schema.json`` is generated from these models.
"""

from __future__ import annotations

import collections.abc
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from vqbench.errors import ScenarioError

SCENARIO_SCHEMA_VERSION = 1
DATA_DIR_ENV = "VQBENCH_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/vqbench/data")

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _whole_float_to_int(value: object) -> object:
    """Read a float without a fractional part, such as YAML's `2.0`, as the integer it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer field of a YAML schema. Validation is strict, so YAML's `true` and the quoted "2"
#: are errors rather than 1 and 2, but `2.0` is read as 2, as JSON Schema counts it an integer.
WholeNumber = Annotated[int, BeforeValidator(_whole_float_to_int)]


def _reject_bool(value: object) -> object:
    """Reject true and false, which a Literal[1] would take as 1 because Python counts True as 1."""
    if isinstance(value, bool):
        raise PydanticCustomError("version_type", "Input should be a format version number, not true or false")
    return value


#: The format version field of a YAML file.
FormatVersion = Annotated[Literal[1], BeforeValidator(_reject_bool)]


class _Strict(BaseModel):
    # Strict types: in lax mode pydantic reads `true` as 1, "0.5" as 0.5 and 1 as true, so a
    # typo would pass as a value. Infinity and NaN pass `gt`/`ge` bounds but would stall or
    # break a run (an endless window).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DatasetConfig(_Strict):
    """Data set and pairs to evaluate."""

    kind: Literal["lfw", "folders"] = "lfw"
    root: Optional[str] = Field(
        None,
        description="Folder of the data set. For lfw: the folder holding lfw-deepfunneled/ and "
        "pairs.txt. Default: ${VQBENCH_DATA_DIR}/lfw, else ~/.cache/vqbench/data/lfw.",
    )
    pairs_file: Optional[str] = Field(None, description="Pairs protocol file; default ROOT/pairs.txt.")
    folds: Optional[Annotated[list[WholeNumber], Field(json_schema_extra={"minItems": 2, "uniqueItems": True})]] = Field(
        None, description="1-based folds to evaluate; default all."
    )
    # Bound before the validator, so that the JSON schema writes it as "minimum" inside Optional.
    max_pairs: Optional[Annotated[int, Field(ge=2), BeforeValidator(_whole_float_to_int)]] = Field(
        None,
        description="Keep at most this many pairs per run, split evenly over folds and over matched and "
        "mismatched pairs. Each fold keeps at least one pair of each kind, so a value below twice the "
        "number of folds keeps two pairs per fold.",
    )
    download: bool = Field(False, description="Download LFW on first use when it is missing.")
    folders_pairs_per_fold: WholeNumber = Field(100, ge=2, description="For kind=folders: pairs per fold.")
    folders_n_folds: WholeNumber = Field(10, ge=2, description="For kind=folders: number of folds.")
    seed: WholeNumber = 0

    @field_validator("folds")
    @classmethod
    def _two_distinct_folds(cls, folds: list[int] | None) -> list[int] | None:
        if folds is None:
            return None
        repeated = sorted({fold for fold in folds if folds.count(fold) > 1})
        if repeated:
            raise ValueError(f"folds {repeated} are listed more than once; list each fold once")
        if len(folds) < 2:
            raise ValueError("the verification protocol chooses each fold's threshold on the other folds, so list at least 2 folds")
        return folds


class AlignmentConfig(_Strict):
    """dlib detection and 5-point alignment to the teacher's 150x150 chip."""

    upsample: WholeNumber = Field(
        1, ge=0, le=2, description="dlib detector upsampling steps; 1 finds faces down to about 40 px."
    )
    face_choice: Literal["center", "score"] = Field(
        "center",
        description="Face to align when several are found: the one nearest the image centre (images "
        "framed on their subject, as in LFW) or the detector's most confident one.",
    )
    chip_size_px: WholeNumber = Field(150, ge=32, le=512)
    padding: float = Field(0.25, ge=0.0, le=1.0, description="dlib get_face_chip padding.")


class TeacherConfig(_Strict):
    """The cloud's face embedder."""

    runtime: Literal["dlib", "torch", "onnxruntime"] = Field(
        "onnxruntime",
        description="dlib runs the reference; torch and onnxruntime run its port, which matches dlib "
        "to a cosine of 1 - 1e-12 on 500 LFW chips (`vqbench models verify`).",
    )
    batch_size: WholeNumber = Field(32, ge=1)


class CloudRawPipeline(_Strict):
    """Send the camera's image file as it is; the cloud detects, aligns and embeds."""

    kind: Literal["cloud-raw"] = "cloud-raw"


def _reject_repeats(name: str, values: list) -> list:
    """Return ``values``, raising ValueError when one is listed twice: each value gives its own variant."""
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{name} lists {', '.join(map(str, repeated))} more than once, got {values}; "
                         "each value gives its own variant, so list it once")
    return values


class CloudCodecPipeline(_Strict):
    """Align on the edge, compress the chip with an image codec, embed in the cloud."""

    kind: Literal["cloud-codec"] = "cloud-codec"
    codec: Literal["jpeg", "webp", "png"] = "jpeg"
    # The validators below check these bounds with their own messages; json_schema_extra shows
    # them to editors that check the JSON schema.
    qualities: list[WholeNumber] = Field(
        default_factory=lambda: [75],
        json_schema_extra={"minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 1, "maximum": 100}},
    )
    sizes_px: list[WholeNumber] = Field(
        default_factory=lambda: [150],
        description="Side of the square chip sent, in pixels; the cloud upscales it back to 150.",
        json_schema_extra={"minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 16, "maximum": 150}},
    )

    @field_validator("qualities")
    @classmethod
    def _check_qualities(cls, qualities: list[int]) -> list[int]:
        bad = [q for q in qualities if not 1 <= q <= 100]
        if bad or not qualities:
            raise ValueError(f"qualities must be a non-empty list of integers in 1..100, got {qualities}")
        return _reject_repeats("qualities", qualities)

    @field_validator("sizes_px")
    @classmethod
    def _check_sizes(cls, sizes: list[int]) -> list[int]:
        bad = [s for s in sizes if not 16 <= s <= 150]
        if bad or not sizes:
            raise ValueError(f"sizes_px must be a non-empty list of integers in 16..150, got {sizes}")
        return _reject_repeats("sizes_px", sizes)


class _TrainedModelPipeline(_Strict):
    """Fields shared by pipelines that run a trained model folder."""

    model: str = Field(
        ...,
        description="Model id (a folder under models/, or under ${VQBENCH_MODELS_DIR}) or a path to a model folder, "
        "relative to the scenario file.",
    )
    int8: bool = Field(False, description="Run the int8-quantised edge model instead of the fp32 one.")
    threads: WholeNumber = Field(1, ge=1, description="onnxruntime intra-op threads per half.")


class EdgeVQReconPipeline(_TrainedModelPipeline):
    """Encode the chip into VQ codes on the edge; decode a face and run the teacher in the cloud."""

    kind: Literal["edge-vq-recon"] = "edge-vq-recon"
    entropy_coding: bool = Field(True, description="DEFLATE the packed indices when that makes the payload smaller.")


class EdgeVQStudentPipeline(_TrainedModelPipeline):
    """Encode the chip into VQ codes on the edge; map codes to an embedding with the student in the cloud."""

    kind: Literal["edge-vq-student"] = "edge-vq-student"
    entropy_coding: bool = Field(True, description="DEFLATE the packed indices when that makes the payload smaller.")


class EdgeEmbedPipeline(_TrainedModelPipeline):
    """Run a small embedder on the edge and send the embedding (fp16 or int8)."""

    kind: Literal["edge-embed"] = "edge-embed"
    dtypes: list[Literal["fp16", "int8"]] = Field(
        default_factory=lambda: ["fp16"], min_length=1, json_schema_extra={"uniqueItems": True}
    )

    @field_validator("dtypes")
    @classmethod
    def _distinct_dtypes(cls, dtypes: list[str]) -> list[str]:
        return _reject_repeats("dtypes", dtypes)


PipelineConfig = Annotated[
    Union[CloudRawPipeline, CloudCodecPipeline, EdgeVQReconPipeline, EdgeVQStudentPipeline, EdgeEmbedPipeline],
    Field(discriminator="kind"),
]


class TransportConfig(_Strict):
    """Transport of payloads to the cloud half: in process, or posted to `vqbench serve` over HTTP."""

    mode: Literal["local", "http"] = "local"
    url: Optional[str] = Field(
        None,
        description="Base URL of a running `vqbench serve`, for mode http.",
        json_schema_extra={"pattern": r"^https?://[^/?#\s]+"},
    )
    token_file: Optional[str] = Field(None, description="File holding the service's bearer token.")
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout, in seconds.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: Optional[str]) -> Optional[str]:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"transport.url must start with http:// or https://, got {url!r}")
        problem = url_problem(url) if url is not None else ""
        if problem:
            raise ValueError(f"transport.url {url!r} is invalid ({problem}); use http://HOST:PORT")
        return url


def url_problem(url: str) -> str:
    """Return why ``url`` cannot address a service, or "" when it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading the port is what validates it
    except ValueError as error:
        return str(error)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname:
        return "it has no host"
    return ""


class MeasurementConfig(_Strict):
    """Latency samples and energy windows (see vqbench.meters.protocol)."""

    latency_samples: WholeNumber = Field(
        40, ge=5, description="Images whose edge and cloud stages are timed one by one, uncached, in rounds that take "
        "turns with the other variants."
    )
    warmup: WholeNumber = Field(3, ge=0, description="Inferences run before any window.")
    repeats: WholeNumber = Field(3, ge=1, description="Measured energy windows per stage.")
    min_window_s: float = Field(1.0, gt=0, description="Shortest energy window, in seconds.")
    idle_s: float = Field(1.0, ge=0, description="Idle window before measuring, in seconds.")
    memory: bool = Field(True, description="Measure each half's peak RSS in a child process.")


def _device_names() -> list[str]:
    from vqbench.devices import load_device_profiles

    return ["host", *load_device_profiles()]


def _add_device_rules(schema: dict[str, Any]) -> None:
    """Add the device names and the host's lack of a speed ratio to the JSON schema of a device entry."""
    schema["properties"]["name"]["enum"] = _device_names()
    schema["if"] = {"properties": {"name": {"const": "host"}}}
    schema["then"] = {"not": {"required": ["speed_ratio"]}}


class EdgeDeviceChoice(_Strict):
    """An edge device the edge half is modeled on, with how its time is derived."""

    model_config = ConfigDict(json_schema_extra=_add_device_rules)

    name: str = Field(..., description="'host' (measured) or a device profile, e.g. raspberry-pi-4.")
    speed_ratio: Optional[float] = Field(
        None,
        gt=0,
        description="Edge-half time on the device divided by time on this host. Needed when the edge "
        "half's MACs are unknown (dlib alignment); without it the MACs and the profile's throughput are used.",
    )

    @model_validator(mode="after")
    def _host_has_no_ratio(self) -> "EdgeDeviceChoice":
        if self.name == "host" and self.speed_ratio is not None:
            raise ValueError(
                f"the host is the measured machine, so its speed_ratio {self.speed_ratio} would be ignored; "
                "remove speed_ratio from the host entry, or name a device profile such as raspberry-pi-4"
            )
        return self


def _device_name_to_choice(entry: object) -> object:
    """Read a bare device name, such as `host`, as `{name: host}`."""
    return {"name": entry} if isinstance(entry, str) else entry


#: An edge_devices entry: a device name, or a mapping with the name and its settings.
DeviceEntry = Annotated[
    EdgeDeviceChoice, BeforeValidator(_device_name_to_choice, json_schema_input_type=Union[str, EdgeDeviceChoice])
]


def _add_deployment_rules(schema: dict[str, Any]) -> None:
    """Add the link and device names, and the IP link that setup_round_trips needs, to the deployment's JSON schema."""
    from vqbench.network.links import load_link_profiles

    profiles = load_link_profiles()
    schema["properties"]["links"]["items"]["enum"] = list(profiles)
    bare_name, _ = schema["properties"]["edge_devices"]["items"]["anyOf"]
    bare_name["enum"] = _device_names()
    ip_links = [name for name, profile in profiles.items() if profile.lora is None]
    schema["if"] = {"properties": {"setup_round_trips": {"minimum": 1}}, "required": ["setup_round_trips"]}
    schema["then"] = {"properties": {"links": {"contains": {"enum": ip_links}}}, "required": ["links"]}


class DeploymentConfig(_Strict):
    """Links and edge devices to model; each (variant, link, device) combination is a results row."""

    model_config = ConfigDict(json_schema_extra=_add_deployment_rules)

    links: list[str] = Field(
        default_factory=list, description="Link profiles, e.g. wifi, lte, lorawan-sf7.", json_schema_extra={"uniqueItems": True}
    )
    edge_devices: list[DeviceEntry] = Field(
        default_factory=lambda: [EdgeDeviceChoice(name="host")], json_schema_extra={"minItems": 1}
    )

    @field_validator("links")
    @classmethod
    def _distinct_links(cls, links: list[str]) -> list[str]:
        repeated = sorted({link for link in links if links.count(link) > 1})
        if repeated:
            raise ValueError(f"links {repeated} are listed more than once; each link gives its own results rows, so list it once")
        return links
    downlink_bytes: WholeNumber = Field(
        0, ge=0, description="Bytes the cloud returns per face over a modeled link, such as a match decision; "
        "with transport http the service's own responses are measured in the wire_* columns instead."
    )
    setup_round_trips: WholeNumber = Field(
        0, ge=0, le=3, description="Round trips spent opening a connection before each transfer's data on "
        "an IP link: 0 on a kept-alive connection, 1 for a new TCP connection, 2 for TCP and TLS 1.3. Each adds the "
        "link's RTT to the modeled latency and to the radio's active time (the handshake's own bytes are not modeled). "
        "LoRa links open no connection, so it needs at least one IP link."
    )
    # The lower bound equals vqbench.devices.MIN_INFERENCES_PER_DAY; a test checks that the two agree.
    transfers_per_day: Optional[float] = Field(
        None, ge=0.001, description="Faces sent per day, at least 0.001, for duty-cycle limits and for spreading a "
        "device's embodied CO2e over its lifetime; default: the device profile's figure."
    )

    @model_validator(mode="after")
    def _round_trips_need_ip_link(self) -> "DeploymentConfig":
        if self.setup_round_trips == 0:
            return self
        from vqbench.network.links import load_link_profiles

        profiles = load_link_profiles()
        if not any(link in profiles and profiles[link].lora is None for link in self.links):
            raise ValueError(
                f"setup_round_trips is {self.setup_round_trips}, but no listed link opens a connection (links: {self.links}), "
                "so it would change nothing; list an IP link such as wifi or lte, or remove setup_round_trips"
            )
        return self

    @field_validator("edge_devices")
    @classmethod
    def _distinct_devices(cls, devices: list[EdgeDeviceChoice]) -> list[EdgeDeviceChoice]:
        if not devices:
            raise ValueError(
                "no edge device is listed, so the run would write no results rows; list at least one, "
                "such as [host] for this machine, or leave edge_devices out to use host"
            )
        names = [device.name for device in devices]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"edge devices {repeated} are listed more than once; results rows are named by device, so list each once")
        return devices


#: Meters tried when a scenario lists none.
DEFAULT_HOST_METERS = ("rapl", "codecarbon")


def _add_meter_rules(schema: dict[str, Any]) -> None:
    """Add the meter names, and options only for listed meters, to the JSON schema of the meters section."""
    from vqbench.meters.registry import METERS

    names = sorted(METERS)
    schema["properties"]["host"]["items"]["enum"] = names
    schema["properties"]["options"]["propertyNames"] = {"enum": names}
    rules = []
    for name in names:
        listed = {"properties": {"host": {"contains": {"const": name}}}, "required": ["host"]}
        # A section without host uses the default list, which already lists its meters.
        if name in DEFAULT_HOST_METERS:
            listed = {"anyOf": [listed, {"not": {"required": ["host"]}}]}
        rules.append(
            {"if": {"properties": {"options": {"required": [name]}}, "required": ["options"]}, "then": listed}
        )
    schema["allOf"] = rules


class MetersConfig(_Strict):
    """Energy meters, tried in order; the first available one measures the host."""

    model_config = ConfigDict(json_schema_extra=_add_meter_rules)

    host: list[str] = Field(default_factory=lambda: list(DEFAULT_HOST_METERS))
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Constructor options per meter, e.g. {external: {trace_path: power.csv, clock_offset_s: 0.0}}. "
        "Options named root or ending in _path are paths: ${VAR} and ~ expand, and relative paths resolve "
        "against the scenario file's folder.",
    )

    @model_validator(mode="after")
    def _options_for_listed_meters(self) -> "MetersConfig":
        unlisted = [name for name in self.options if name not in self.host]
        if unlisted:
            listed = ", ".join(self.host) or "no meter"
            raise ValueError(
                f"meters.options sets options for {', '.join(repr(name) for name in unlisted)}, which meters.host "
                f"does not list (it lists {listed}); add the meter to meters.host or remove its options"
            )
        return self


class CarbonConfig(_Strict):
    """Grid locations of the edge device and the cloud."""

    edge_location: str = Field("world", description="ISO 3166 alpha-3 country, or 'world'.")
    cloud_location: str = Field(
        "world", description="ISO alpha-3 country, a cloud region as 'provider:region', or 'world'."
    )
    edge_hourly_csv: Optional[str] = Field(
        None, description="CSV (timestamp_utc, gco2e_per_kwh) whose value at the run's start replaces edge_location's."
    )
    cloud_hourly_csv: Optional[str] = Field(
        None, description="CSV (timestamp_utc, gco2e_per_kwh) whose value at the run's start replaces cloud_location's."
    )


class OutputsConfig(_Strict):
    """Optional outputs besides results.csv, results.json and environment.json."""

    html: bool = True
    pdf: bool = True
    parquet: bool = True


class Scenario(_Strict):
    """A complete scenario file."""

    schema_version: FormatVersion = SCENARIO_SCHEMA_VERSION
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    alignment: AlignmentConfig = Field(default_factory=AlignmentConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    pipelines: list[PipelineConfig] = Field(..., min_length=1)
    measurement: MeasurementConfig = Field(default_factory=MeasurementConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    meters: MetersConfig = Field(default_factory=MetersConfig)
    carbon: CarbonConfig = Field(default_factory=CarbonConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    cache_dir: Optional[str] = Field(
        None, description="Cache of aligned chips and embeddings; default ~/.cache/vqbench/cache."
    )


def expand_path(value: str, base_dir: Path) -> Path:
    """Expand ``${VAR}`` and ``~`` in a path, then resolve it against ``base_dir``."""

    def substitute(match: re.Match[str]) -> str:
        variable = match.group(1)
        if variable not in os.environ:
            raise ScenarioError(f"path {value!r} uses ${{{variable}}}, which is not set; export it or edit the path")
        return os.environ[variable]

    expanded = Path(_ENV_PATTERN.sub(substitute, value)).expanduser()
    return expanded if expanded.is_absolute() else (base_dir / expanded).resolve()


def is_meter_path_option(option: str) -> bool:
    """Return whether a meter option is a path: ``root`` or a name ending in ``_path``."""
    return option == "root" or option.endswith("_path")


def resolve_meter_options(options: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Return a meter's options with each path option expanded and resolved against ``base_dir``.

    A path option that is not a string is passed on unchanged, for the meter's option checks to
    reject. An empty path raises ScenarioError, because it would resolve to ``base_dir`` itself.
    """
    for option, value in options.items():
        if is_meter_path_option(option) and isinstance(value, str) and not value.strip():
            raise ScenarioError(f"meter option {option} is empty; give the path of a file, relative to the scenario's folder "
                                "or absolute")
    return {
        option: str(expand_path(value, base_dir)) if is_meter_path_option(option) and isinstance(value, str) else value
        for option, value in options.items()
    }


def default_data_dir() -> Path:
    """Return ``${VQBENCH_DATA_DIR}``, else ``~/.cache/vqbench/data``."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_DATA_DIR.expanduser()


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file, raising ScenarioError with the offending key.

    Model folders given as paths are resolved against the scenario's folder, like every other
    path in the file. Bare model ids stay as they are.
    """
    scenario = load_yaml_model(
        path,
        Scenario,
        noun="scenario",
        missing_hint="pass the path of a .yaml file (see scenarios/)",
        required_keys="'name' and 'pipelines'",
        schema_hint="the schema is scenarios/scenario.schema.json in the vqbench repository, "
        "or run `vqbench schema --out FILE`",
    )
    base_dir = Path(path).resolve().parent
    for pipeline in scenario.pipelines:
        model = getattr(pipeline, "model", None)
        if model is not None and _is_model_path(model):
            pipeline.model = str(expand_path(model, base_dir))
    return scenario


def _is_model_path(model: str) -> bool:
    """Tell a model folder path (``../models/x``, ``~/x``, ``${VAR}/x``) from a bare model id."""
    return len(Path(model).parts) > 1 or model.startswith(("~", "$", "."))


ModelT = TypeVar("ModelT", bound=BaseModel)


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that reads plain scalars as YAML 1.2 does and rejects a mapping key given twice.

    PyYAML follows YAML 1.1, which reads `010` as 8, `12:30` as 750, `yes` and `off` as booleans
    and `1e3` as text, where YAML 1.2 (and so an editor checking the JSON schema) reads 10, text,
    text and 1000. Plain YAML also keeps the last of two equal keys silently.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                continue  # SafeLoader itself rejects an unhashable key, with its own message.
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice; keep one of them", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text.startswith(("0o", "0x")) else int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    return math.nan if text == ".nan" else float(text)


# The YAML 1.2 core schema's plain scalars. Dates and `=` stay text, as in YAML 1.2.
_YAML_1_1_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp", "value")}
UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _YAML_1_1_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def load_yaml_model(
    path: Path, model: type[ModelT], noun: str, missing_hint: str, required_keys: str, schema_hint: str
) -> ModelT:
    """Read a YAML file into a pydantic model; every failure is a ScenarioError naming the file, key and value."""
    if path.is_dir():
        raise ScenarioError(f"{noun} {path} is a folder, not a file; {missing_hint}")
    if not path.is_file():
        raise ScenarioError(f"{noun} file not found: {path}; {missing_hint}")
    text = _read_utf8(path, noun)
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ScenarioError(f"{noun} {path} is not valid YAML: {describe_yaml_error(error)}") from error
    if not isinstance(raw, dict):
        raise ScenarioError(f"{noun} {path} must be a YAML mapping with at least {required_keys}")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = [_describe_problem(problem) for problem in error.errors()[:MAX_REPORTED_PROBLEMS]]
        more = error.error_count() - len(problems)
        suffix = f"; and {more} more" if more > 0 else ""
        raise ScenarioError(f"{noun} {path} is invalid: {'; '.join(problems)}{suffix} ({schema_hint})") from error


def _read_utf8(path: Path, noun: str) -> str:
    """Return the file's text; raise ScenarioError naming the file when it is unreadable or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ScenarioError(f"cannot read {noun} {path}: {error.strerror or error}; check its permissions") from error
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ScenarioError(
            f"{noun} {path} is not UTF-8 text: byte 0x{data[error.start]:02x} on line {line} cannot be decoded; "
            "save the file as UTF-8"
        ) from error


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """Describe a YAML parse error on one line, with the line and column of the problem.

    PyYAML's own text names the input "<unicode string>" and draws a caret under the line,
    which cannot be read once flattened, so the caller names the file instead.
    """
    if not isinstance(error, yaml.MarkedYAMLError):
        return str(error).replace("\n", " ")
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = where + (error.problem or "syntax error")
    if error.context:
        context_mark = error.context_mark
        text += f" ({error.context}" + (f" at line {context_mark.line + 1})" if context_mark is not None else ")")
    return text


#: Validation problems listed in one error message.
MAX_REPORTED_PROBLEMS = 5


#: The fix appended to pydantic's type errors, which name the expected type but not how to write it in YAML.
_TYPE_FIXES = {
    "int_type": "write a whole number without quotes, such as 2",
    "int_from_float": "write a whole number without quotes, such as 2",
    "int_parsing": "write a whole number without quotes, such as 2",
    "float_type": "write a number without quotes, such as 0.5",
    "float_parsing": "write a number without quotes, such as 0.5",
    "bool_type": "write true or false without quotes",
    "bool_parsing": "write true or false without quotes",
    "string_type": "write text, in quotes if YAML would read it as a number or a boolean",
    "list_type": "write a list, such as [1, 2], or one '- item' line per entry",
    "dict_type": "write a mapping of keys to values, such as {key: value}, or one indented 'key: value' line per entry",
    "model_type": "write a mapping of keys to values, such as {key: value}, or one indented 'key: value' line per entry",
}


def _describe_problem(problem: dict) -> str:
    """Render one pydantic problem as "'key.path': message (got value)", with the fix for a type error.

    The value is left out when a validator of this module already put it in the message,
    which it may show converted (the YAML ``-0.0`` is shown as the integer 0).
    """
    parts = list(problem["loc"])
    # pydantic puts a pipeline's kind, the tag of its union, into the path, though the file has
    # no such key: pipelines.0.cloud-codec.qualities is written pipelines.0.qualities.
    if len(parts) > 2 and parts[0] == "pipelines" and isinstance(parts[1], int) and parts[2] in _PIPELINE_KINDS:
        del parts[2]
    location = ".".join(str(part) for part in parts) or "(top level)"
    message = problem["msg"]
    text = f"'{location}': {message}"
    if problem["type"] != "missing" and "input" in problem and not isinstance(problem["input"], dict):
        value = problem["input"]
        in_message = problem["type"] == "value_error" and (
            ", got " in message or repr(value) in message or str(value) in message
        )
        if not in_message:
            text += f" (got {value!r})"
    fix = _TYPE_FIXES.get(problem["type"])
    if fix is not None:
        text += f"; {fix}"
    return text


#: The ``kind`` of each pipeline model, which pydantic adds to the path of a problem inside it.
_PIPELINE_KINDS = {
    model.model_fields["kind"].default
    for model in (CloudRawPipeline, CloudCodecPipeline, EdgeVQReconPipeline, EdgeVQStudentPipeline, EdgeEmbedPipeline)
}

SCHEMA_TITLE = "vqbench scenario"


def write_json_schema(path: Path) -> None:
    """Write the scenario JSON Schema (used by editors and by scenarios/scenario.schema.json).

    An existing file is replaced only when it is an earlier scenario schema, so a mistyped
    path cannot overwrite a run's results.json or any other file. Any other existing file
    raises ScenarioError.
    """
    import json

    from vqbench.io import write_text_atomic

    if path.is_dir():
        raise ScenarioError(f"--out {path} is a folder; give a file path, such as {path / 'scenario.schema.json'}")
    if path.exists() and not _is_scenario_schema(path):
        raise ScenarioError(f"--out {path} already exists and is not a vqbench scenario schema, so it is not "
                            "replaced; choose another path, or delete that file first")
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = SCHEMA_TITLE
    write_text_atomic(path, json.dumps(schema, indent=2) + "\n")


def _is_scenario_schema(path: Path) -> bool:
    import json

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(document, dict) and document.get("title") == SCHEMA_TITLE
