"""Model cards of trained VQ models (``models/<model-id>/card.json``) and the leakage check.

A card lists every file of the model with its SHA-256, the payload layout, the architecture
and the footprint counted from the graph. It also records the training data: the View 2 folds
and the people trained on, listed one name per line in ``training_people.txt``, whose SHA-256
is also in the card. ``load_vq_card`` verifies all of it, and checks the card's ``payload``
block against its ``architecture`` block and the people file against ``training``, so a model
folder whose files or card were changed or swapped is rejected instead of silently measured.
A folder directly in a models folder must be named after its card's ``model_id``.
``verify_model_folder`` runs the same checks, plus each file's byte count and the graphs that
read the payload, and lists every problem instead of raising at the first.
``check_index_graphs`` checks the graphs that read the payload against the payload block.
``allowed_folds`` names the folds a model may be scored on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vqbench.data.pairs import Pair, people_in_folds
from vqbench.errors import ModelError
from vqbench.models.card_fields import file_field, json_type_name, require_field
from vqbench.models.cards import CARD_FILE, MODELS_DIR
from vqbench.pipelines.payload import bits_for

PEOPLE_FILE = "training_people.txt"
CARD_FORMAT = 1
#: A model id is also a file-name prefix, so it must be one plain name without path separators.
MODEL_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
MODELS_DIR_ENV = "VQBENCH_MODELS_DIR"
#: Values of a card's ``kind``: a VQ-VAE with its student, or an edge embedder.
MODEL_KINDS = ("vq", "edge-embed")
#: The graphs of a VQ model that read the payload's code indices.
INDEX_GRAPH_ROLES = ("student", "decoder")


def default_models_dir() -> Path:
    """Return ``$VQBENCH_MODELS_DIR``, else the repository's ``models/`` folder."""
    configured = os.environ.get(MODELS_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return MODELS_DIR


def resolve_model_folder(model: str) -> Path:
    """Return the folder of a model given by id (under the models folder) or by path."""
    candidate = Path(model).expanduser()
    folder = candidate if candidate.is_absolute() or len(candidate.parts) > 1 else default_models_dir() / model
    if not (folder / CARD_FILE).is_file():
        raise ModelError(
            f"model {model!r} not found: {folder / CARD_FILE} does not exist; name a folder under "
            f"{default_models_dir()} (or set {MODELS_DIR_ENV}) or train it with `vqbench train`"
        )
    return folder


def model_folders(models_dir: Path) -> list[Path]:
    """Return the folders under ``models_dir`` that contain a card, sorted by name.

    A folder without a card (a training still running) is skipped. Raises ModelError when
    ``models_dir`` is not a folder or contains no card at all.
    """
    if not models_dir.is_dir():
        raise ModelError(
            f"models folder {models_dir} does not exist or is not a folder; set {MODELS_DIR_ENV} to the folder "
            "that contains the model folders, or pass model folders as arguments"
        )
    folders = [folder for folder in sorted(models_dir.iterdir()) if (folder / CARD_FILE).is_file()]
    if not folders:
        raise ModelError(
            f"no model folder with a {CARD_FILE} under {models_dir}; set {MODELS_DIR_ENV} to the folder that contains "
            "the model folders, or train one with `vqbench train`"
        )
    return folders


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VQModelCard:
    """A verified model card: where the model lives, what it sends and whom it was trained on."""

    model_id: str
    kind: str
    folder: Path
    grid: tuple[int, int]
    codebook_size: int
    train_folds: tuple[int, ...]
    training_people: frozenset[str]
    data: dict

    def file(self, role: str) -> Path:
        """Return the path of a model file by role (``edge_encoder``, ``decoder``, ``student``, ...)."""
        name = self.data["onnx"].get(role)
        if name is None:
            raise ModelError(f"model {self.model_id} has no {role} file; its card lists {sorted(self.data['onnx'])}")
        return self.folder / name


def load_vq_card(folder: Path) -> VQModelCard:
    """Read ``card.json`` in ``folder`` and verify every file's SHA-256, the model id and the people list.

    The files' byte counts are not compared here, because a matching SHA-256 already proves the
    file. ``verify_model_folder`` compares them too, to catch a card whose ``bytes`` is wrong.
    """
    card_path = folder / CARD_FILE
    data = _read_card_data(card_path)
    problems = _file_problems(folder, card_path, require_field(data, card_path, "files", kind=dict), check_sizes=False)
    if problems:
        more = f" (and {len(problems) - 1} more; `vqbench models verify {folder}` lists them all)" if len(problems) > 1 else ""
        raise ModelError(problems[0] + more)
    card = _card_from_data(folder, card_path, data)
    name_problem = _folder_name_problem(folder, card_path, card.model_id)
    if name_problem is not None:
        raise ModelError(name_problem)
    return card


def verify_model_folder(folder: Path) -> tuple[int, list[str]]:
    """Check a model folder as ``vqbench models verify`` does, and return the number of files checked and every problem.

    Unlike ``load_vq_card``, which raises at the first problem, this collects one message per
    problem: per file a missing file, a wrong size or a wrong SHA-256, then the folder name, the
    rest of the card and each graph that reads the payload. An empty list means the folder matches
    its card.
    """
    card_path = folder / CARD_FILE
    try:
        data = _read_card_data(card_path)
        files = require_field(data, card_path, "files", kind=dict)
    except ModelError as error:
        return 0, [str(error)]
    problems = _file_problems(folder, card_path, files, check_sizes=True)
    try:
        card = _card_from_data(folder, card_path, data)
    except ModelError as error:
        return len(files), [*problems, str(error)]
    name_problem = _folder_name_problem(folder, card_path, card.model_id)
    if name_problem is not None:
        problems.append(name_problem)
    for role in INDEX_GRAPH_ROLES:
        name = card.data["onnx"].get(role)
        # A missing graph is already reported by the file checks.
        if name is None or not (folder / name).is_file():
            continue
        try:
            check_index_graphs(card, (role,))
        except ModelError as error:
            problems.append(str(error))
    return len(files), problems


def _read_card_data(card_path: Path) -> dict:
    """Read a card's JSON object and check its ``card_format``."""
    if not card_path.is_file():
        raise ModelError(
            f"model card not found: {card_path}; pass a model folder such as models/vq-g14-k256-aug, "
            "or train one with `vqbench train models/<id>/train.yaml`"
        )
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read model card {card_path}: {error}; restore it from the repository") from error
    if not isinstance(data, dict):
        raise ModelError(f"model card {card_path} must contain a JSON object, found {type(data).__name__}; restore it from the repository")
    if data.get("card_format") != CARD_FORMAT:
        raise ModelError(f"model card {card_path} has card_format {data.get('card_format')!r}, expected {CARD_FORMAT}; retrain or update vqbench")
    return data


def _file_problems(folder: Path, card_path: Path, files: dict, check_sizes: bool) -> list[str]:
    """Check every file the card lists, returning one message per problem (none when all match).

    Each file must be a plain name in ``folder``, exist and have the card's SHA-256, and with
    ``check_sizes`` also the card's ``bytes``.
    """
    problems = []
    for name, entry in files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            problems.append(f"model card {card_path} lists the file {name!r}, which is not a plain file name of the model folder; restore the card")
            continue
        path = folder / name
        try:
            if not isinstance(entry, dict):
                raise ModelError(
                    f"model card {card_path} has files[{name!r}] as {json_type_name(entry)}, expected an object with "
                    "'sha256' and 'bytes'; restore the card from the repository or retrain"
                )
            expected_sha256 = file_field(entry, card_path, name, "sha256", str)
            expected_bytes = file_field(entry, card_path, name, "bytes", int) if check_sizes else None
        except ModelError as error:
            problems.append(str(error))
            continue
        if not re.fullmatch(r"[0-9a-f]{64}", expected_sha256):
            problems.append(f"model card {card_path} lists {name!r} with SHA-256 {expected_sha256!r}, which is not a "
                            "SHA-256 (64 lower-case hex digits); restore the card from the repository or retrain")
            continue
        if not path.is_file():
            problems.append(f"model file {path} listed in {card_path} is missing; restore the model folder")
            continue
        size = path.stat().st_size
        if expected_bytes is not None and size != expected_bytes:
            problems.append(
                f"model file {path} is {size} bytes, but {card_path} lists {expected_bytes} bytes; restore the file "
                "or the card from the repository, or retrain"
            )
        found = sha256_of(path)
        if found != expected_sha256:
            problems.append(f"model file {path} has SHA-256 {found[:12]}..., expected {expected_sha256[:12]}... from the card; restore it or retrain")
    return problems


def _check_graph_entries(card_path: Path, graphs: dict, files: dict) -> None:
    """Reject an ``onnx`` entry that is not a plain file name listed, with its SHA-256, under ``files``.

    Runs load the graphs that ``onnx`` names, so a graph outside the folder or left out of
    ``files`` would run unverified.
    """
    for role, name in graphs.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ModelError(
                f"model card {card_path} names the {role} graph {name!r}, which is not a plain file name of the model "
                "folder; restore the card from the repository or retrain"
            )
        if name not in files:
            raise ModelError(
                f"model card {card_path} names the {role} graph {name!r}, but its files list does not, so the graph's "
                "SHA-256 cannot be checked; restore the card from the repository or retrain"
            )


def _folder_name_problem(folder: Path, card_path: Path, model_id: str) -> str | None:
    """Describe a folder in a models folder whose name is not its card's ``model_id``, else return None.

    A scenario names a model by id and the model is looked up as ``<models folder>/<id>``, while
    result rows are labelled with the card's ``model_id``. In a models folder the two must agree,
    or rows would carry another model's id. A folder elsewhere, such as a training
    ``output_dir`` or a renamed copy, may have any name.
    """
    if folder.name == model_id:
        return None
    models_dirs = {MODELS_DIR.resolve(), default_models_dir().resolve()}
    if folder.resolve().parent not in models_dirs:
        return None
    return (
        f"model folder {folder} is named {folder.name!r}, but its card {card_path} has model_id {model_id!r}; "
        f"a model in the models folder is looked up by its folder name, so rename the folder to {model_id!r} "
        "or restore the card from the repository"
    )


def _card_from_data(folder: Path, card_path: Path, data: dict) -> VQModelCard:
    """Check the model id, kind, training people and payload block, then build the card.

    The listed files are checked by ``_file_problems`` beforehand. A field of the wrong type that
    the named checks miss raises ModelError here too, instead of a traceback.
    """
    try:
        return _build_card(folder, card_path, data)
    except (TypeError, ValueError, AttributeError) as error:
        raise ModelError(
            f"model card {card_path} has a field of the wrong type or value ({error}); restore the card from the "
            "repository or retrain"
        ) from error


def _build_card(folder: Path, card_path: Path, data: dict) -> VQModelCard:
    model_id = require_field(data, card_path, "model_id")
    if not isinstance(model_id, str) or not re.fullmatch(MODEL_ID_PATTERN, model_id):
        raise ModelError(
            f"model card {card_path} has model_id {model_id!r}, which is not a plain name of lower-case letters, "
            "digits, '.', '_' and '-'; restore the card from the repository"
        )
    kind = require_field(data, card_path, "kind")
    if kind not in MODEL_KINDS:
        raise ModelError(f"model card {card_path} has kind {kind!r}, expected one of {list(MODEL_KINDS)}; restore the card from the repository or retrain")
    training = require_field(data, card_path, "training", kind=dict)
    train_folds = require_field(data, card_path, "training.train_folds", kind=list)
    people = _read_training_people(folder, card_path, training)
    payload = require_field(data, card_path, "payload", kind=dict)
    _check_graph_entries(card_path, require_field(data, card_path, "onnx", kind=dict), data["files"])
    if kind == "vq":
        _check_payload_matches_architecture(card_path, data)
    return VQModelCard(
        model_id=model_id,
        kind=kind,
        folder=folder,
        grid=tuple(int(side) for side in payload.get("grid", (0, 0))),  # type: ignore[arg-type]
        codebook_size=int(payload.get("codebook_size", 0)),
        train_folds=tuple(int(fold) for fold in train_folds),
        training_people=people,
        data=data,
    )


def _read_training_people(folder: Path, card_path: Path, training: dict) -> frozenset[str]:
    """Read ``training_people.txt`` and check it against the card's ``training`` block.

    The check does not rely on the card's ``files`` entry for the people file, because the fold
    guard trusts this list. An emptied file whose ``files`` entry was also removed must not
    switch the guard off.
    """
    path = folder / PEOPLE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = "it is not UTF-8 text" if isinstance(error, UnicodeDecodeError) else error.strerror or str(error)
        raise ModelError(
            f"people file {path} of model card {card_path} cannot be read ({reason}); the fold guard "
            "needs the list of training people, so restore the model folder or retrain"
        ) from error
    people = frozenset(line for line in text.splitlines() if line)
    expected_count = training.get("people")
    if expected_count is not None and len(people) != expected_count:
        raise ModelError(
            f"people file {path} lists {len(people)} people, but training.people in {card_path} is {expected_count}; "
            "restore the model folder or retrain"
        )
    expected_sha256 = training.get("people_sha256")
    found_sha256 = _people_sha256(people)
    if expected_sha256 is not None and found_sha256 != expected_sha256:
        raise ModelError(
            f"people file {path} has people SHA-256 {found_sha256[:12]}..., but training.people_sha256 in {card_path} "
            f"is {str(expected_sha256)[:12]}...; restore the model folder or retrain"
        )
    return people


def _people_sha256(people: Iterable[str]) -> str:
    """Return the SHA-256 of the sorted names, one per line: the card's ``training.people_sha256``."""
    return hashlib.sha256("".join(f"{name}\n" for name in sorted(people)).encode()).hexdigest()


def _check_payload_matches_architecture(card_path: Path, data: dict) -> None:
    """Reject a card whose ``payload`` block disagrees with the ``architecture.vq`` the graphs were built from.

    The payload format, and so the bytes a run reports, follows ``payload``, while the ONNX graphs
    follow the architecture.
    """
    payload = require_field(data, card_path, "payload", kind=dict)
    codebook_size = int(require_field(data, card_path, "architecture.vq.codebook_size"))
    grid = int(require_field(data, card_path, "architecture.vq.grid"))
    expected = {
        "codebook_size": codebook_size,
        "bits_per_index": bits_for(codebook_size),
        "grid": [grid, grid],
    }
    for key, value in expected.items():
        found = payload.get(key)
        if found != value:
            raise ModelError(
                f"model card {card_path} has payload.{key} {found!r}, but its architecture.vq gives {value!r}; "
                "restore the card from the repository or retrain"
            )


def check_index_graphs(card: VQModelCard, roles: Iterable[str] = INDEX_GRAPH_ROLES) -> None:
    """Check the graphs of ``roles`` that a VQ card lists against its payload block.

    ``load_vq_card`` leaves this out because it needs the ``onnx`` package, about 11 MB of
    memory that the edge half, which only runs the encoder, does not otherwise load. The cloud
    half calls it before opening a graph, and ``vqbench models verify`` for every model.
    """
    if card.kind != "vq":
        return
    for role in roles:
        name = card.data["onnx"].get(role)
        if name is not None:
            _check_index_graph(card.folder / name, card.folder / CARD_FILE, card.data["payload"], role)


#: Per graph role: the rank of its output and the sizes known in advance (None: any size).
_OUTPUT_SHAPES: dict[str, tuple[int | None, ...]] = {
    "student": (None, 128),  # a batch of embeddings in the teacher's 128-d space
    "decoder": (None, None, None, None),  # a batch of chips: channels, height, width
}


def _check_index_graph(path: Path, card_path: Path, payload: dict, role: str) -> None:
    """Reject a graph whose ``indices`` input or output does not fit its role and the payload.

    The graph reads the indices through a Gather from its codebook, so the codebook's row count
    is the index range it accepts. An index past that range would fail inside onnxruntime with
    a message about Gather, and a larger codebook would accept indices the encoder never sends.
    The output's rank distinguishes a student (embeddings) from a decoder (chips), so files
    swapped between the two roles are caught here rather than inside the pipeline.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (OSError, DecodeError) as error:
        raise ModelError(f"cannot read ONNX graph {path}: {error}; restore the model folder or retrain") from error
    inputs = {value.name: value for value in graph.input}
    if "indices" not in inputs:
        raise ModelError(
            f"ONNX graph {path} has no input named 'indices' (inputs: {sorted(inputs)}), so it cannot read the "
            f"payloads of model card {card_path}; restore the model folder or retrain"
        )
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in inputs["indices"].type.tensor_type.shape.dim]
    grid = [int(side) for side in payload["grid"]]
    if len(dims) != 3 or any(found is not None and found != side for found, side in zip(dims[1:], grid)):
        shape = ["?" if dim is None else dim for dim in dims]
        raise ModelError(
            f"ONNX graph {path} takes indices of shape {shape}, but the payload.grid of {card_path} is {grid}; "
            "restore the model folder or retrain"
        )
    _check_output(graph, path, role)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    gathers = [node for node in graph.node if node.op_type == "Gather" and node.input[1] == "indices" and node.input[0] in initializers]
    if not gathers:
        raise ModelError(
            f"ONNX graph {path} does not look up its 'indices' input in a codebook, so its index range cannot be "
            f"checked against {card_path}; restore the model folder or retrain"
        )
    rows = int(initializers[gathers[0].input[0]].dims[0])
    if rows != int(payload["codebook_size"]):
        raise ModelError(
            f"ONNX graph {path} looks up indices in a codebook of {rows} rows, but the payload.codebook_size of "
            f"{card_path} is {payload['codebook_size']}; restore the model folder or retrain"
        )


def _check_output(graph, path: Path, role: str) -> None:
    expected = _OUTPUT_SHAPES[role]
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in graph.output[0].type.tensor_type.shape.dim]
    fits = len(dims) == len(expected) and all(
        want is None or found is None or found == want for found, want in zip(dims, expected)
    )
    if not fits:
        shape = ["?" if dim is None else dim for dim in dims]
        role_shape = ["?" if dim is None else dim for dim in expected]
        raise ModelError(
            f"ONNX graph {path}, the model's {role}, returns shape {shape}, but a {role} returns {role_shape}; "
            "was it swapped with another file of the folder? Restore the model folder or retrain"
        )


def allowed_folds(card: VQModelCard, pairs_all: Iterable[Pair]) -> list[int]:
    """Return the folds of ``pairs_all`` that contain none of the card's training people."""
    by_fold: dict[int, list[Pair]] = {}
    for pair in pairs_all:
        by_fold.setdefault(pair.fold, []).append(pair)
    return sorted(fold for fold, pairs in by_fold.items() if not (people_in_folds(pairs) & card.training_people))
