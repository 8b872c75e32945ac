"""The manifest of shipped models (serkeras/shipped_models.toml): what it lists is what the repository holds,
the install copies and the command line finds."""

import configparser
import fnmatch
import subprocess
from pathlib import Path

import pytest

from serkeras import shipped
from serkeras.errors import SerkerasError
from serkeras.recipes import read_recipe, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]
SAVED_MODELS = ROOT / "saved_models"


def test_saved_models_holds_exactly_the_manifests_files_and_cards():
    """Every listed model has its file (at most 20 MiB), its ONNX copy if listed, and its card, and nothing else
    ships beside them: a run saved at the top of saved_models/ would be installed by setup.cfg's patterns."""
    listed = {name for model in shipped.shipped_models() for name in model.files}
    present = {path.name for path in SAVED_MODELS.iterdir() if path.is_file()}
    assert present == listed | {"README.md"}
    for model in shipped.shipped_models():
        assert model.file.endswith(".keras") and (SAVED_MODELS / model.file).stat().st_size <= 20 * 2**20
        assert model.onnx == "" or (model.onnx.endswith(".onnx") and model.onnx.startswith(model.name))
        assert model.summary.startswith(("One recording", "Several recordings per speaker"))
        # What rebuilds it ships too: its recipe, or the recipe of each model it averages.
        assert bool(model.recipe) != bool(model.members)
        assert {model.recipe} - {""} | {recipe for recipe, _ in model.members} <= set(shipped_recipes())
    readme = (SAVED_MODELS / "README.md").read_text()
    assert all(f"`{model.file}`" in readme for model in shipped.shipped_models())


def test_setup_cfg_installs_the_manifests_files_and_git_keeps_them():
    """setup.cfg's data-file patterns match each listed file and card and nothing else in saved_models/, and
    none of them is git-ignored."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    patterns = setup["options.data_files"]["share/serkeras"].split()
    assert "shipped_models.toml" in setup["options.package_data"]["serkeras"]
    listed = [f"saved_models/{name}" for model in shipped.shipped_models() for name in model.files]
    present = [f"saved_models/{path.name}" for path in SAVED_MODELS.iterdir() if path.is_file()]
    installed = {path for path in present if any(fnmatch.fnmatch(path, pattern) for pattern in patterns)}
    assert installed == set(listed)
    ignored = subprocess.run(["git", "check-ignore", *listed], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout == ""


def test_names_resolve_to_files_in_the_first_folder_that_has_them(tmp_path, monkeypatch):
    names = shipped.model_names()
    default = shipped.default_model()
    assert names[0] == default.name and shipped.shipped_model(f"{default.name}.keras") == default
    assert shipped.find_model("serkeras-no-such") is None
    monkeypatch.chdir(tmp_path)
    assert shipped.resolve_model(None) == shipped.model_path(default.name)
    assert shipped.resolve_model("elsewhere/model.keras") == Path("elsewhere/model.keras")
    own = tmp_path / "saved_models" / default.file
    own.parent.mkdir()
    own.write_bytes(b"a project's own copy")  # the working folder's saved_models/ comes first
    assert shipped.resolve_model(default.name) == own == shipped.resolve_model(default.file)
    (tmp_path / default.name).write_bytes(b"a file of that name")  # an existing file wins over the name
    assert shipped.resolve_model(default.name) == Path(default.name)
    monkeypatch.setattr(shipped, "model_folders", lambda: [tmp_path / "nowhere"])
    with pytest.raises(SerkerasError, match=f"no shipped model saved_models/{default.file} found"):
        shipped.model_path(default.name)


def test_the_members_of_a_shipped_average_are_trained_on_the_same_features_and_split():
    """`serkeras ensemble` needs members with one feature setting: their recipes must agree on every feature
    option (speaker normalisation included) and on the split, or the shipped average cannot be rebuilt."""
    from serkeras.cli import train
    from serkeras.recipes import option_defaults

    feature_options = {param.name for param in train.params if param.name in (
        "hop_length", "n_mels", "pitch", "utterance_norm", "speaker_norm", "speaker_scale", "level_dbfs")}
    averages = [model for model in shipped.shipped_models() if model.members]
    assert averages
    for model in averages:
        settings = [option_defaults(read_recipe(recipe), train.params) for recipe, _ in model.members]
        features = {tuple(sorted((k, v) for k, v in s.items() if k in feature_options)) for s in settings}
        assert len(features) == 1 and {s["split_kind"] for s in settings} == {"actor"}, model.name
        assert len(model.members) >= 2


MODEL = "[[model]]\nname = 'a'\nfile = 'a.keras'\ncard = 'A.md'\nsummary = 's'\n"


@pytest.mark.parametrize("text, message", [
    ("[[model]]\nname = 'a'\nfile = 'a.keras'\ncard = 'A.md'\n", "model 1 of the manifest .*: no summary"),
    (MODEL + "members = ['r']\n", r"each of its members must be \{recipe = NAME, train-seed = N\}"),
    (MODEL + "members = [{recipe = 'r', train-seed = 'one'}]\n", "each of its members must be"),
    (MODEL + "recipe = 'r'\nmembers = [{recipe = 'r'}, {recipe = 'q'}]\n", "its members do, not both"),
    (MODEL + "members = [{recipe = 'r'}, {recipe = 'r', train-seed = 0}]\n", "a member is listed twice"),
    ("[[model]]\nname = 'a'\nfile = 'a.keras'\ncard = 'A.md'\nsummary = 's'\nsize = 3\n", ": unknown size"),
    ("[[model]]\nname = 'a'\nfile = 'a.keras'\ncard = 'A.md'\nsummary = 's'\n" * 2, "each name once"),
    ("", "one or more models"),
    (MODEL + "speaker_model = 'a'\n", "its speaker_model a is not another model of the manifest"),
    (MODEL + "speaker_model = 'b'\n", "its speaker_model b is not another model"),
    ("[[model]\n", "cannot read the manifest"),
])
def test_a_broken_manifest_is_one_clear_error(text, message, tmp_path):
    path = tmp_path / "shipped_models.toml"
    path.write_text(text)
    with pytest.raises(SerkerasError, match=message):
        shipped.read_manifest(path)


def test_predict_suggests_the_speaker_model_when_speakers_have_several_recordings(tmp_path, monkeypatch):
    """The hint names the listed speaker model when `min_recordings` files share a speaker under the grouping,
    and stays silent for a model without one, for lone recordings and for --speaker file."""
    from serkeras import api

    path = tmp_path / "shipped_models.toml"
    path.write_text(MODEL + "speaker_model = 'b'\n" + MODEL.replace("'a", "'b").replace("'A", "'B"))
    monkeypatch.setattr(shipped, "shipped_models", lambda: shipped.read_manifest(path))
    one = [str(tmp_path / "one" / f"{i}.wav") for i in range(5)]
    lone = [str(tmp_path / f"s{i}" / "x.wav") for i in range(6)]
    hint = api.speaker_model_hint(None, one + lone)
    assert hint.startswith("5 of these 11 recordings share a speaker with 4 or more others under --speaker auto")
    assert "--model b --speaker auto" in hint
    assert api.speaker_model_hint("a", one) == hint.replace("5 of these 11", "5 of these 5")
    assert api.speaker_model_hint(str(tmp_path / "a.keras"), one) is not None  # a path to its file
    assert api.speaker_model_hint(None, one[:4] + lone) is None
    assert api.speaker_model_hint(None, one, grouping="file") is None
    assert "--speaker all" in api.speaker_model_hint(None, lone, grouping="all")
    assert api.speaker_model_hint("b", one) is None and api.speaker_model_hint("own.keras", one) is None
