"""Scenario schema: valid files load, mistakes name the key, paths expand."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from vqbench.errors import ScenarioError
from vqbench.scenario import Scenario, UniqueKeyLoader, expand_path, load_scenario, write_json_schema

REPO_DIR = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(path.name for path in (REPO_DIR / "scenarios").glob("*.yaml")))
def test_shipped_scenarios_load(name):
    scenario = load_scenario(REPO_DIR / "scenarios" / name)
    assert scenario.pipelines


def _write(tmp_path, text):
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-raw}]\nmeasurment: {}\n")
    with pytest.raises(ScenarioError, match="measurment"):
        load_scenario(path)


def test_bad_quality_is_named(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-codec, qualities: [0, 50]}]\n")
    with pytest.raises(ScenarioError, match=r"'pipelines\.0\.qualities'"):
        load_scenario(path)


@pytest.mark.parametrize("value", ['"1"', "1.5", "true"])
def test_type_error_names_fix(tmp_path, value):
    path = _write(tmp_path, f"name: x\npipelines: [{{kind: cloud-raw}}]\ndeployment: {{links: [lte], setup_round_trips: {value}}}\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    message = str(raised.value)
    assert "'deployment.setup_round_trips'" in message
    assert "write a whole number without quotes, such as 2" in message


def test_whole_float_reads_as_integer(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-codec, qualities: [30.0, 75]}]\n"
                  "measurement: {repeats: 2.0}\nalignment: {upsample: 0.0}\ndataset: {max_pairs: 20.0}\n")
    scenario = load_scenario(path)
    assert scenario.measurement.repeats == 2
    assert type(scenario.measurement.repeats) is int
    assert scenario.alignment.upsample == 0
    assert type(scenario.alignment.upsample) is int
    assert scenario.dataset.max_pairs == 20
    assert type(scenario.dataset.max_pairs) is int
    assert scenario.pipelines[0].qualities == [30, 75]
    assert type(scenario.pipelines[0].qualities[0]) is int


@pytest.mark.parametrize("path", sorted(REPO_DIR.glob("scenarios/*.yaml")), ids=lambda path: path.name)
def test_committed_scenario_fits_json_schema(path):
    schema = json.loads((REPO_DIR / "scenarios" / "scenario.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.load(path.read_text(), Loader=UniqueKeyLoader))


def _schema_validator():
    schema = json.loads((REPO_DIR / "scenarios" / "scenario.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


# Each section breaks a rule that load_scenario enforces across fields or inside a string.
LOADER_RULES = {
    "url without host": "transport: {mode: http, url: 'http://'}",
    "url of another scheme": "transport: {mode: http, url: 'ftp://127.0.0.1:8000'}",
    "round trips over LoRa only": "deployment: {links: [lorawan-sf7], setup_round_trips: 1}",
    "round trips without links": "deployment: {setup_round_trips: 2}",
    "host with speed ratio": "deployment: {edge_devices: [{name: host, speed_ratio: 2.0}]}",
    "options for unlisted meter": "meters: {host: [rapl], options: {external: {trace_path: p.csv}}}",
    "options for meter outside default": "meters: {options: {replay: {path: p.csv}}}",
}


@pytest.mark.parametrize("section", LOADER_RULES.values(), ids=LOADER_RULES.keys())
def test_json_schema_enforces_loader_rule(tmp_path, section):
    text = f"name: x\npipelines: [{{kind: cloud-raw}}]\n{section}\n"
    with pytest.raises(ScenarioError):
        load_scenario(_write(tmp_path, text))
    assert not _schema_validator().is_valid(yaml.load(text, Loader=UniqueKeyLoader))


# Sections that load_scenario accepts and the schema must accept too.
ALLOWED_SECTIONS = {
    "round trips with an IP link": "deployment: {links: [lorawan-sf7, wifi], setup_round_trips: 1}",
    "device with speed ratio": "deployment: {edge_devices: [host, {name: raspberry-pi-4, speed_ratio: 6.5}]}",
    "options for a default meter": "meters: {options: {rapl: {root: /sys/class/powercap}}}",
    "options for a listed meter": "meters: {host: [external], options: {external: {trace_path: p.csv}}}",
    "url with port": "transport: {mode: http, url: 'http://127.0.0.1:8000'}",
}


@pytest.mark.parametrize("section", ALLOWED_SECTIONS.values(), ids=ALLOWED_SECTIONS.keys())
def test_json_schema_accepts_what_loader_accepts(tmp_path, section):
    text = f"name: x\npipelines: [{{kind: cloud-raw}}]\n{section}\n"
    load_scenario(_write(tmp_path, text))
    _schema_validator().validate(yaml.load(text, Loader=UniqueKeyLoader))


def test_json_schema_lists_bundled_names():
    from vqbench.devices import load_device_profiles
    from vqbench.meters.registry import METERS
    from vqbench.network.links import load_link_profiles

    validator = _schema_validator()
    for link in load_link_profiles():
        assert validator.is_valid({"name": "x", "pipelines": [{"kind": "cloud-raw"}], "deployment": {"links": [link]}})
    for device in load_device_profiles():
        assert validator.is_valid({"name": "x", "pipelines": [{"kind": "cloud-raw"}], "deployment": {"edge_devices": [device]}})
    for meter in METERS:
        assert validator.is_valid({"name": "x", "pipelines": [{"kind": "cloud-raw"}], "meters": {"host": [meter]}})
    for section in ({"deployment": {"links": ["wlan"]}}, {"deployment": {"edge_devices": ["pi4"]}}, {"meters": {"host": ["rapel"]}}):
        assert not validator.is_valid({"name": "x", "pipelines": [{"kind": "cloud-raw"}], **section})


@pytest.mark.parametrize(
    ("text", "value"),
    [("010", 10), ("0o17", 15), ("0x10", 16), ("1e3", 1000.0), ("1.5e-3", 0.0015), ("-.inf", float("-inf")),
     ("12:30", "12:30"), ("yes", "yes"), ("off", "off"), ("True", True), ("2026-12-05", "2026-12-05"), ("~", None)],
)
def test_plain_scalars_read_as_yaml_1_2(text, value):
    assert yaml.load(f"key: {text}", Loader=UniqueKeyLoader) == {"key": value}


def test_yaml_1_1_forms_in_scenario(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-raw}]\nmeasurement: {repeats: 1e1, warmup: 010}\n")
    scenario = load_scenario(path)
    assert scenario.measurement.repeats == 10
    assert scenario.measurement.warmup == 10
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-raw}]\noutputs: {pdf: no}\n")
    with pytest.raises(ScenarioError, match=re.escape("'outputs.pdf': Input should be a valid boolean (got 'no'); write true or false")):
        load_scenario(path)


def test_schema_version_rejects_boolean(tmp_path):
    path = _write(tmp_path, "schema_version: true\nname: x\npipelines: [{kind: cloud-raw}]\n")
    with pytest.raises(ScenarioError, match="'schema_version': Input should be a format version number, not true or false"):
        load_scenario(path)


def test_training_config_version_rejects_boolean(tmp_path):
    from vqbench.training.config import load_train_config

    path = tmp_path / "train.yaml"
    path.write_text("version: true\nmodel_id: x\n")
    with pytest.raises(ScenarioError, match="'version': Input should be a format version number, not true or false"):
        load_train_config(path)


@pytest.mark.parametrize(
    ("text", "fix"),
    [("dataset: {folds: 9}\n", "write a list, such as [1, 2]"),
     ("dataset: 5\n", "write a mapping of keys to values, such as {key: value}")],
)
def test_container_type_error_names_fix(tmp_path, text, fix):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-raw}]\n" + text)
    with pytest.raises(ScenarioError, match=re.escape(fix)):
        load_scenario(path)


def test_unknown_pipeline_kind(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-magic}]\n")
    with pytest.raises(ScenarioError, match="pipelines.0"):
        load_scenario(path)


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(path)


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "absent.yaml")


def test_wrong_schema_version(tmp_path):
    path = _write(tmp_path, "schema_version: 2\nname: x\npipelines: [{kind: cloud-raw}]\n")
    with pytest.raises(ScenarioError, match="schema_version"):
        load_scenario(path)


def test_expand_path_env_home_and_relative(tmp_path, monkeypatch):
    monkeypatch.setenv("VQ_TEST_ROOT", "/data/x")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_path("${VQ_TEST_ROOT}/lfw", tmp_path) == Path("/data/x/lfw")
    assert expand_path("~/lfw", Path("/elsewhere")) == tmp_path / "lfw"
    assert expand_path("../lfw", tmp_path / "scenarios") == (tmp_path / "lfw").resolve()


def test_expand_path_unset_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("VQ_TEST_UNSET", raising=False)
    with pytest.raises(ScenarioError, match="VQ_TEST_UNSET"):
        expand_path("${VQ_TEST_UNSET}/lfw", tmp_path)


def test_committed_json_schema_is_current(tmp_path):
    fresh = tmp_path / "schema.json"
    write_json_schema(fresh)
    committed = REPO_DIR / "scenarios" / "scenario.schema.json"
    assert committed.read_text() == fresh.read_text(), "run `vqbench schema` to refresh the committed schema"


def test_defaults_fill_sections():
    scenario = Scenario.model_validate({"name": "x", "pipelines": [{"kind": "cloud-raw"}]})
    assert scenario.measurement.repeats >= 1
    assert scenario.dataset.kind == "lfw"


def test_model_paths_resolve_against_scenario(tmp_path):
    folder = tmp_path / "scenarios"
    folder.mkdir()
    path = folder / "s.yaml"
    path.write_text(
        "name: s\n"
        "pipelines:\n"
        "  - {kind: edge-vq-student, model: ../models/mine}\n"
        "  - {kind: edge-vq-recon, model: vq-g14-k256-aug}\n"
    )

    scenario = load_scenario(path)

    assert scenario.pipelines[0].model == str(tmp_path / "models" / "mine")
    assert scenario.pipelines[1].model == "vq-g14-k256-aug"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("measurement: {idle_s: .inf}\n", "finite number"),
        ("measurement: {min_window_s: .nan}\n", "finite number"),
        ("dataset: {folds: [9]}\n", "at least 2 folds"),
        ("dataset: {folds: [9, 9, 10]}\n", "folds [9] are listed more than once"),
        ("deployment: {links: [wifi, wifi]}\n", "links ['wifi'] are listed more than once"),
        ("deployment: {edge_devices: [host, host]}\n", "edge devices ['host'] are listed more than once"),
    ],
)
def test_unusable_values_rejected(tmp_path, text, message):
    path = _write(tmp_path, "name: s\npipelines: [{kind: cloud-raw}]\n" + text)
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario(path)


def test_duplicate_yaml_key_rejected(tmp_path):
    path = _write(tmp_path, "name: s\npipelines: [{kind: cloud-raw}]\nname: t\n")
    with pytest.raises(ScenarioError, match="found the key 'name' twice"):
        load_scenario(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    message = str(raised.value)
    assert str(path) in message
    assert "line 3, column 1" in message
    assert "<unicode string>" not in message


def test_non_utf8_scenario_names_file(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_bytes(b"name: x\npipelines: [{kind: cloud-raw}]\ndescription: caf\xe9\n")
    with pytest.raises(ScenarioError, match=re.escape(f"{path} is not UTF-8 text: byte 0xe9 on line 3")):
        load_scenario(path)


def test_folder_given_as_scenario(tmp_path):
    with pytest.raises(ScenarioError, match="is a folder, not a file"):
        load_scenario(tmp_path)


def test_validator_value_shown_once(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-codec, qualities: [0]}]\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    assert str(raised.value).count("got [0]") == 1


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [("{kind: cloud-codec, qualities: [50, 30, 50]}", "qualities lists 50 more than once, got [50, 30, 50]"),
     ("{kind: cloud-codec, sizes_px: [64, 64]}", "sizes_px lists 64 more than once"),
     ("{kind: edge-embed, model: edge-embed-s, dtypes: [int8, int8]}", "dtypes lists int8 more than once")],
)
def test_repeated_list_value_rejected(tmp_path, pipeline, message):
    text = f"name: x\npipelines: [{pipeline}]\n"
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario(_write(tmp_path, text))
    assert not _schema_validator().is_valid(yaml.load(text, Loader=UniqueKeyLoader))


def test_converted_value_shown_once(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-codec, qualities: [-0.0]}]\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    assert "got [0]" in str(raised.value)
    assert "-0.0" not in str(raised.value)


def test_builtin_check_still_shows_value(tmp_path):
    path = _write(tmp_path, "name: x\npipelines: [{kind: cloud-raw}]\nmeasurement: {min_window_s: 0}\n")
    with pytest.raises(ScenarioError, match=re.escape("greater than 0 (got 0)")):
        load_scenario(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deployment: {edge_devices: [{name: host, speed_ratio: 4.0}]}\n", "the host is the measured machine"),
        ("deployment: {edge_devices: []}\n", "no edge device is listed"),
        ("alignment: {upsample: true}\n", "'alignment.upsample': Input should be a valid integer"),
        ("alignment: {upsample: 1.5}\n", "'alignment.upsample': Input should be a valid integer"),
        ("measurement: {repeats: true}\n", "'measurement.repeats': Input should be a valid integer"),
        ("dataset: {max_pairs: '20'}\n", "'dataset.max_pairs': Input should be a valid integer"),
        ("transport: {timeout_s: '5'}\n", "'transport.timeout_s': Input should be a valid number"),
        ("outputs: {pdf: 0}\n", "'outputs.pdf': Input should be a valid boolean"),
        ("meters: {host: [rapl], options: {wattmeter: {x: 1}}}\n", "options for 'wattmeter', which meters.host does not list"),
        ("meters: {host: [rapl], options: {codecarbon: {measure_power_secs: 2}}}\n", "options for 'codecarbon'"),
    ],
)
def test_contradictory_values_rejected(tmp_path, text, message):
    path = _write(tmp_path, "name: s\npipelines: [{kind: cloud-raw}]\n" + text)
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario(path)


def test_meter_path_options_resolve(tmp_path, monkeypatch):
    from vqbench.scenario import resolve_meter_options

    monkeypatch.setenv("VQ_TEST_TRACES", "/data/traces")
    monkeypatch.setenv("HOME", str(tmp_path))
    base = tmp_path / "scenarios"
    options = {
        "trace_path": "../traces/power.csv", "root": "${VQ_TEST_TRACES}/powercap", "log_path": "~/meter.log",
        "clock_offset_s": 1.5,
    }
    assert resolve_meter_options(options, base) == {
        "trace_path": str(tmp_path / "traces" / "power.csv"),
        "root": "/data/traces/powercap",
        "log_path": str(tmp_path / "meter.log"),
        "clock_offset_s": 1.5,
    }
