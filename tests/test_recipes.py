"""Recipes: settings as TOML files that `train --recipe` and `tune --recipe` start from."""

import pytest

from serkeras.errors import SerkerasError
from serkeras.recipes import option_defaults, read_recipe, shipped_recipes


def test_every_shipped_recipe_is_a_valid_train_invocation():
    from serkeras.cli import train

    assert "crema-d-whisper-base" in shipped_recipes()
    for name in shipped_recipes():
        defaults = option_defaults(read_recipe(name), train.params)
        assert defaults, name


def test_recipe_keys_are_option_names_and_the_negative_flag_means_false():
    from serkeras.cli import train

    got = option_defaults({"batch-size": 8, "lr": 0.01, "no-augment": True, "pitch": True, "split_kind": "actor"},
                          train.params)
    assert got == {"batch_size": 8, "learning_rate": 0.01, "spec_augment": False, "pitch": True,
                   "split_kind": "actor"}
    with pytest.raises(SerkerasError, match="the recipe sets colour, epoch"):
        option_defaults({"epoch": 3, "colour": "red"}, train.params)


def test_train_starts_from_the_recipe_and_the_command_line_wins(crema_subset, workdir, tmp_path):
    import json

    from conftest import run_cli

    recipe = tmp_path / "tiny.toml"
    recipe.write_text('arch = "resnet"\nwidth = 0.0625\nhead-units = 16\nepochs = 3\nsplit = "actor"\n'
                      'batch-size = 16\nquiet = true\nworkers = 1\n')
    result = run_cli(["train", "--recipe", str(recipe), "--data-dir", str(crema_subset), "--epochs", "1",
                      "--run-name", "from-recipe", "--cache-dir", str(workdir / "cache")], workdir)
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "saved_models" / "from-recipe" / "config.json").read_text())
    assert config["model_config"]["arch"] == "resnet" and config["model_config"]["width"] == 0.0625
    assert config["train_config"]["epochs"] == 1 and config["split"] == "actor"
    bad = tmp_path / "bad.toml"
    bad.write_text("arch = \n")
    result = run_cli(["train", "--recipe", str(bad)], workdir)
    assert result.exit_code == 2 and "is not valid TOML" in result.output
    result = run_cli(["train", "--recipe", "no-such-recipe"], workdir)
    assert result.exit_code == 2 and "neither a file nor a shipped recipe" in result.output


def test_the_three_corpus_recipe_is_the_base_recipe_levelled_with_noisy_room_and_telephone_copies_in_int8_class_weighted():
    from serkeras.cli import train

    base = option_defaults(read_recipe("crema-d-whisper-base"), train.params)
    three = option_defaults(read_recipe("crema-d-emodb-ased-whisper"), train.params)
    assert three.pop("level_dbfs") == -26.0
    assert (three.pop("augment_copies"), three.pop("speed")) == (1, 0.1)
    assert (three.pop("reverb"), three.pop("telephone")) == (0.5, 0.5)
    assert "reverb" not in base and "telephone" not in base
    assert three.pop("quantize") == "int8" and "quantize" not in base
    assert three.pop("class_weight") is True and "class_weight" not in base
    assert three == base and three["split_kind"] == "actor"


def test_the_three_corpus_speaker_norm_recipe_is_the_default_recipe_with_speaker_standardisation():
    from serkeras.cli import train

    default = option_defaults(read_recipe("crema-d-emodb-ased-whisper"), train.params)
    speakers = option_defaults(read_recipe("crema-d-emodb-ased-whisper-speaker-norm"), train.params)
    assert speakers.pop("speaker_standardization") is True and speakers.pop("speaker_prior_clips") == 5.0
    assert speakers == default


@pytest.mark.parametrize("command", ["train", "tune", "cross-corpus", "evaluate", "features"])
def test_every_option_defaults_to_its_settings_default(command):
    """An option named like a field of the settings it builds defaults to that field's default: each default is
    written once, in the dataclass (tune's epochs, patience and objective are its own)."""
    import dataclasses

    from serkeras.api import SplitSettings
    from serkeras.cli import main
    from serkeras.settings import ModelConfig, TrainConfig
    from serkeras.features import FeatureConfig

    own = {"tune": {"epochs", "patience"}}.get(command, set())
    defaults = {}
    for cls in (SplitSettings, TrainConfig, ModelConfig, FeatureConfig):
        defaults.update({field.name: field.default for field in dataclasses.fields(cls)})
    defaults.update(split_kind=SplitSettings.kind, encoder=None)  # no encoder: None on the command line
    checked = 0
    for param in main.commands[command].params:
        if param.name in defaults and param.name not in own:
            assert param.default == defaults[param.name], (command, param.name)
            checked += 1
    assert checked >= {"train": 55, "tune": 45, "cross-corpus": 50, "evaluate": 5, "features": 15}[command]
