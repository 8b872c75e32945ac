"""The models that ship with serkeras: the manifest that lists them, and finding their files.

``serkeras/shipped_models.toml`` is the one list of shipped models (see its
header). Everything that needs to know what ships reads it through this module:
`serkeras predict` (whose default is the first model), `evaluate`, `export`,
`train --teacher`, the packaging (the install copies exactly these files, a test
checks it) and the scripts that build the models and write their cards.

A shipped model is found by name in the first of these folders that has its file
(`model_folders`): ``saved_models/`` of the working folder, the install's
``<sys.prefix>/share/serkeras/``, and the source checkout's ``saved_models/``.
"""

import dataclasses
import functools
import sys
from pathlib import Path

from serkeras.errors import SerkerasError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The manifest of shipped models, package data beside this module.
MANIFEST = Path(__file__).resolve().with_name("shipped_models.toml")


@dataclasses.dataclass(frozen=True)
class ShippedModel:
    """One model of the manifest.

    Parameters
    ----------
    name : str
        What users type (``--model NAME``).
    file : str
        The model file's name in ``saved_models/`` (and in an install's ``share/serkeras/``).
    card : str
        The model card's file name, beside the model file.
    summary : str
        One line: what the model is, and whether it predicts from one recording or from
        several recordings of each speaker.
    recipe : str, optional
        The shipped recipe that rebuilds it (``serkeras train --recipe RECIPE``); empty for an
        average of models.
    members : tuple of (str, int), optional
        For an average of models (``serkeras ensemble``): the shipped recipe and the training
        seed (``--train-seed``) of each model it averages, in order. Empty otherwise.
    onnx : str, optional
        The file name of its ONNX export (``serkeras export NAME --format onnx``), beside
        `file`, which `serkeras predict` runs in ONNX Runtime, without starting TensorFlow.
        Empty if none ships.
    speaker_model : str, optional
        For a model that predicts from one recording: the shipped model (its name) to use
        instead when there are several recordings of each speaker, which `serkeras predict`
        suggests when it sees them. Empty if none.
    """

    name: str
    file: str
    card: str
    summary: str
    recipe: str = ""
    members: tuple = ()
    onnx: str = ""
    speaker_model: str = ""

    @property
    def files(self):
        """Its files in ``saved_models/``: the model, its ONNX copy if one ships, and its card."""
        return tuple(name for name in (self.file, self.onnx, self.card) if name)


def _members(table, where):
    """A manifest table's ``members`` (a list of ``{recipe = NAME, train-seed = N}``) as (recipe, seed) pairs."""
    members = []
    for member in table.get("members", []):
        if (not isinstance(member, dict) or not isinstance(member.get("recipe"), str)
                or not isinstance(member.get("train-seed", 0), int) or set(member) - {"recipe", "train-seed"}):
            raise SerkerasError(f"{where}: each of its members must be {{recipe = NAME, train-seed = N}}")
        members.append((member["recipe"], member.get("train-seed", 0)))
    if table.get("recipe") and members:
        raise SerkerasError(f"{where}: a recipe rebuilds the model or its members do, not both")
    if len(set(members)) != len(members):
        raise SerkerasError(f"{where}: a member is listed twice")
    return tuple(members)


def read_manifest(path=MANIFEST):
    """The models listed in a manifest, in its order.

    Parameters
    ----------
    path : str or Path, optional
        A TOML file of ``[[model]]`` tables (default: the shipped manifest).

    Returns
    -------
    tuple of ShippedModel

    Raises
    ------
    SerkerasError
        If the file is not valid TOML, lists no model, a table lacks a field or has an unknown
        one, a member is malformed, or two tables share a name.
    """
    try:
        with open(path, "rb") as f:
            tables = tomllib.load(f).get("model", [])
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SerkerasError(f"cannot read the manifest of shipped models {path}: {exc}") from None
    fields = {field.name for field in dataclasses.fields(ShippedModel)}
    required = {field.name for field in dataclasses.fields(ShippedModel) if field.default is dataclasses.MISSING}
    models = []
    for number, table in enumerate(tables, 1):
        unknown, missing = sorted(set(table) - fields), sorted(required - set(table))
        if unknown or missing:
            problem = f"unknown {', '.join(unknown)}" if unknown else f"no {', '.join(missing)}"
            raise SerkerasError(f"model {number} of the manifest {path}: {problem}")
        members = _members(table, f"model {number} of the manifest {path}")
        models.append(ShippedModel(**{**table, "members": members}))
    names = [model.name for model in models]
    if not models or len(set(names)) != len(names):
        raise SerkerasError(f"the manifest {path} must list one or more models, each name once")
    for model in models:
        if model.speaker_model and model.speaker_model not in set(names) - {model.name}:
            raise SerkerasError(f"{model.name} in the manifest {path}: its speaker_model {model.speaker_model} is "
                                "not another model of the manifest")
    return tuple(models)


@functools.cache
def shipped_models():
    """The shipped models, in the manifest's order (the first is `predict`'s default).

    Returns
    -------
    tuple of ShippedModel
    """
    return read_manifest()


def model_names():
    """The names of the shipped models, in the manifest's order.

    Returns
    -------
    tuple of str
    """
    return tuple(model.name for model in shipped_models())


def default_model():
    """The model `serkeras predict` uses when no ``--model`` is given: the manifest's first.

    Returns
    -------
    ShippedModel
    """
    return shipped_models()[0]


def find_model(name):
    """The shipped model called `name` (with or without ``.keras``), or None.

    Parameters
    ----------
    name : str

    Returns
    -------
    ShippedModel or None
    """
    bare = name.removesuffix(".keras")
    return next((model for model in shipped_models() if bare == model.name or name == model.file), None)


def shipped_model(name):
    """The shipped model called `name` (with or without ``.keras``).

    Raises
    ------
    SerkerasError
        If no shipped model has that name.
    """
    model = find_model(name)
    if model is None:
        raise SerkerasError(f"{name} is not a shipped model (shipped: {', '.join(model_names())})")
    return model


def model_folders():
    """Where shipped models are looked for, in order.

    Returns
    -------
    list of Path
        ``saved_models/`` of the working folder (a project's own copy comes first), the
        install's ``<sys.prefix>/share/serkeras/``, and the source checkout's ``saved_models/``.
    """
    return [Path.cwd() / "saved_models", Path(sys.prefix) / "share" / "serkeras",
            Path(__file__).resolve().parent.parent / "saved_models"]


def model_path(name):
    """The file of the shipped model `name` in the first of `model_folders` that has it.

    Parameters
    ----------
    name : str
        A shipped model's name, with or without ``.keras``.

    Returns
    -------
    Path

    Raises
    ------
    SerkerasError
        If `name` is not a shipped model, or no folder has its file.
    """
    file_name = shipped_model(name).file
    for folder in model_folders():
        if (folder / file_name).is_file():
            return folder / file_name
    raise SerkerasError(f"no shipped model saved_models/{file_name} found: train one with `serkeras train` "
                        "and pass --model saved_models/<run>/model.keras")


def listed_model(value):
    """The shipped model that `value` names, or None: a name, a path to a file named as a shipped
    model's file, or None for the default."""
    if value is None:
        return default_model()
    return find_model(str(value)) or find_model(Path(value).name)


def onnx_copy(value):
    """The shipped ONNX export of the model `value` names, if it ships one and it lies beside the model's file.

    Parameters
    ----------
    value : str, Path or None
        As for `resolve_model`: a shipped model's name, or a path to a file named as a shipped
        model's file (``saved_models/serkeras-crema-d-emodb-ased-whisper.keras``).

    Returns
    -------
    (Path, Path) or None
        The ONNX file and the `.keras` file it must have been exported from.
    """
    keras_file = resolve_model(value)
    # A name, or a path to a file of the shipped model's name (its copy is checked against it when opened).
    listed = listed_model(value) or find_model(keras_file.name)
    if listed is None or not listed.onnx or keras_file.name != listed.file:
        return None
    copy = keras_file.parent / listed.onnx
    return (copy, keras_file) if copy.is_file() else None


def resolve_model(value):
    """The model file that `value` names: a path, a shipped model's name, or None for the default.

    An existing file wins over a shipped model of the same name; any other value that is not
    a shipped model's name is returned as a path (loading it says if it is missing).

    Parameters
    ----------
    value : str, Path or None

    Returns
    -------
    Path
    """
    if value is None:
        return model_path(default_model().name)
    if Path(value).is_file() or find_model(str(value)) is None:
        return Path(value)
    return model_path(str(value))
