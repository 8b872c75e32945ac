"""experiments/study.py: the runs it plans are the study's grid, and every command is one `serkeras train` accepts."""

import importlib
import shutil
import sys
from pathlib import Path

import click
import numpy as np
import pytest

from serkeras.cli import main
from serkeras.corpus import CREMA_D_LABELS

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    """An experiments/ script as a module, imported as `python -m experiments.NAME` runs it (from the
    repository root)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"experiments.{name}")


def load_study():
    return load_script("study")


def test_every_question_runs_on_both_splits_and_shared_runs_train_once():
    study = load_study()
    runs = {r for q in study.QUESTIONS for s in study.SPLITS for r in study.question_runs(q, s)}
    assert len(runs) == 24  # 18 activation x arch + 4 more learning rates + 2 fixed-length
    for split in study.SPLITS:
        assert {(r.arch, r.activation) for r in study.question_runs("activation", split)} == {
            (a, act) for a in ("1d", "2d", "combined") for act in ("relu", "silu", "elu")}
        assert {r.learning_rate for r in study.question_runs("learning_rate", split)} == {1e-2, 1e-3, 1e-4}
        assert {r.length for r in study.question_runs("length", split)} == {"fixed", "variable"}
    assert len({r.name for r in runs}) == len(runs)


def test_commands_are_valid_train_invocations():
    study = load_study()
    budget = {"width": 0.25, "epochs": 10, "hop_length": 320, "n_mels": 40, "schedule": "cosine", "seed": 0}
    assert study.Run("1d", seed=2).name.endswith("-seed2") and "seed" not in study.Run("1d").name
    for resume in (False, True):
        command = study.train_command(study.Run("combined", "elu", 1e-2, "fixed", "actor", 3), "/data", budget, resume)
        assert command[:2] == ["serkeras", "train"]
        context = main.commands["train"].make_context("train", command[2:])
        assert context.params["arch"] == "combined" and context.params["length_mode"] == "fixed"
        assert context.params["learning_rate"] == 1e-2 and context.params["hop_length"] == 320
        assert context.params["resume"] is resume and context.params["seed"] == 3


def test_accuracy_interval():
    study = load_study()
    assert abs(study.accuracy_interval(0.5, 600) - 0.04) < 1e-3
    assert study.accuracy_interval(1.0, 100) == 0.0


def test_every_accuracy_recipe_is_a_valid_train_invocation(monkeypatch):
    accuracy = load_script("accuracy")
    from serkeras.recipes import recipe_description
    from serkeras.shipped import shipped_models

    # The shipped averages' members are the manifest's, by their names here.
    assert [model.name for model in shipped_models() if model.members] == ["serkeras-crema-d",
                                                                         "serkeras-crema-d-speaker-norm"]
    assert accuracy.shipped_members("serkeras-crema-d") == [("resnet", 0), ("crnn-augmented", 0),
                                                            ("resnet-augmented-mixup", 0)]
    assert accuracy.recipe_argument("resnet") == "crema-d-resnet"
    assert accuracy.recipe_argument("resnet-no-pitch") == "experiments/recipes/resnet-no-pitch.toml"
    monkeypatch.chdir(accuracy.ROOT)  # where runs start: recipe paths are relative to it
    for name in accuracy.RECIPES:
        settings = accuracy.recipe_settings(name)
        assert recipe_description(accuracy.RECIPES[name]), name
        for split, fold in (("actor", None), ("kfold", 3)):
            command = accuracy.train_command(name, split, fold, 0, None, "/data", resume=False)
            params = main.commands["train"].make_context("train", command[2:]).params
            assert params["arch"] == settings["arch"] and params["hop_length"] == 320 and params["n_mels"] == 40
            assert params["epochs"] == params["patience"] == settings["epochs"] and params["split_kind"] == split
            assert params["run_name"] == f"accuracy/{accuracy.run_name(name, split, fold)}"
            assert params["teacher"] == settings.get("teacher", "") and params["seed"] == 0
            if fold is not None:
                assert params["fold"] == 3 and params["n_folds"] == accuracy.N_FOLDS
    assert accuracy.run_name("resnet", "kfold", 2, seed=1) == "resnet-kfold-fold2-seed1"
    # A distilled recipe's teacher heard the actor split's training actors: other splits would leak test actors.
    assert accuracy.recipe_settings("crnn-augmented-distilled")["teacher"] == "serkeras-crema-d-speaker-norm"
    for split in ("kfold", "random"):
        with pytest.raises(click.UsageError, match="actor split"):
            accuracy.train_missing("crnn-augmented-distilled", split, 0, None, "/data", dry_run=True)
    # Another training seed repeats training on the same split (that of seed 0); --epochs sets the patience too.
    params = main.commands["train"].make_context("train", accuracy.train_command("resnet", "actor", None, 2, 3,
                                                                                 None, False)[2:]).params
    assert (params["seed"], params["train_seed"], params["run_name"]) == (0, 2, "accuracy/resnet-actor-seed2")
    assert params["epochs"] == params["patience"] == 3


#: The recipe the accuracy script's tests train, by a name `run` accepts: the mechanics, not the model, are under
#: test, so it stands for the cheapest model that normalises by speaker (as one shipped model does), not for the
#: real recipe (minutes of training).
TINY_RECIPE = "resnet-speaker-norm"


def use_accuracy_script(monkeypatch, root):
    """experiments/accuracy.py as a module working in the project folder `root`, with TINY_RECIPE."""
    accuracy = load_script("accuracy")
    for module in (accuracy, load_script("study")):  # run_logged and load_results live in study.py
        monkeypatch.setattr(module, "ROOT", root)
    monkeypatch.setattr(accuracy, "RESULTS_DIR", root / "results")
    monkeypatch.chdir(root)  # in-process scoring shares the training runs' feature cache (data/cache)
    recipe = root / "tiny.toml"
    recipe.write_text('description = "the cheapest speaker-normalised model"\narch = "1d"\nwidth = 0.25\n'
                      'utterance-norm = "none"\nspeaker-norm = true\nhop-length = 320\nn-mels = 40\n'
                      'pitch = false\nepochs = 1\npatience = 1\n')
    monkeypatch.setitem(accuracy.RECIPES, TINY_RECIPE, recipe)
    return accuracy


@pytest.fixture(scope="module")
def accuracy_project(crema_subset, tmp_path_factory):
    """A project folder in which `accuracy.py run` trained TINY_RECIPE with training seeds 0 and 1 (each a
    `serkeras train` process), and the output of each `run`. Tests work on copies of it."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("accuracy-project")
    outputs = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        accuracy = use_accuracy_script(monkeypatch, root)
        for seed in (0, 1):
            result = CliRunner().invoke(accuracy.cli, ["run", TINY_RECIPE, "--epochs", "1", "--seed", str(seed),
                                                       "--data-dir", str(crema_subset)])
            outputs.append(result.output)
            assert result.exit_code == 0, result.output
    return root, outputs


def copy_project(accuracy_project, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(accuracy_project[0], root, symlinks=True)
    return root


def test_accuracy_script_runs_resumes_ensembles_and_reports(accuracy_project, crema_subset, tmp_path, monkeypatch):
    """`run` trains a recipe once per seed (a second call skips it), `ensemble` scores their average on the
    same split, `report` lists the recipe, its seeds and the ensemble."""
    import json

    from click.testing import CliRunner

    tmp_path = copy_project(accuracy_project, tmp_path)
    accuracy = use_accuracy_script(monkeypatch, tmp_path)
    runner = CliRunner()
    runs = tmp_path / "saved_models" / "accuracy"
    first, second = f"{TINY_RECIPE}-actor", f"{TINY_RECIPE}-actor-seed1"
    records = [json.loads(line) for line in (runs / "runs.jsonl").read_text().splitlines()]
    assert [r["run"] for r in records] == [first, second]
    assert "--recipe tiny.toml" in records[1]["command"] and "--train-seed 1" in records[1]["command"]
    assert records[1]["machine"]
    assert all(f"--run-name accuracy/{r['run']}" in output for r, output in zip(records, accuracy_project[1]))
    args = ["run", TINY_RECIPE, "--epochs", "1", "--seed", "1", "--data-dir", str(crema_subset)]
    again = runner.invoke(accuracy.cli, args)
    assert again.exit_code == 0 and f"{second}: done" in again.output

    result = runner.invoke(accuracy.cli, ["ensemble", first, second, "--data-dir", str(crema_subset)])
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "results" / "accuracy_ensembles.jsonl").read_text().splitlines()[-1])
    member = json.loads((runs / second / "metrics.json").read_text())
    assert scored["runs"] == [first, second] and scored["n"] == member["test"]["n"]
    assert 0.0 <= scored["accuracy"] <= 1.0 and 0.0 <= scored["val_accuracy"] <= 1.0
    unfinished = runner.invoke(accuracy.cli, ["ensemble", first, "resnet-actor", "--data-dir", str(crema_subset)])
    assert unfinished.exit_code == 2 and "not finished: resnet-actor" in unfinished.output
    # One run with test-time augmentation: each val/test clip's first augmented copy is featurised too.
    copies = len(list((tmp_path / "data" / "cache").rglob("*.npz")))
    result = runner.invoke(accuracy.cli, ["ensemble", first, "--tta-copies", "1", "--data-dir", str(crema_subset)])
    assert result.exit_code == 0, result.output
    tta = json.loads((tmp_path / "results" / "accuracy_ensembles.jsonl").read_text().splitlines()[-1])
    assert (tta["runs"], tta["tta_copies"], tta["n"]) == ([first], 1, scored["n"])
    assert len(list((tmp_path / "data" / "cache").rglob("*.npz"))) - copies == scored["n"] + member["val"]["n"]

    result = runner.invoke(accuracy.cli, ["report"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "results" / "accuracy.md").read_text()
    assert f"| {TINY_RECIPE} | actor |" in report and f"| {TINY_RECIPE} | 0, 1 |" in report
    assert f"| {first} + {second} | actor | {100 * scored['accuracy']:.1f}" in report
    assert f"| {first}, TTA: clip + 1 augmented copies | actor | {100 * tta['accuracy']:.1f}" in report
    # A checkout without one of the runs the report listed (a fresh clone) carries its rows over.
    listed = (tmp_path / "results" / "accuracy_runs.jsonl").read_text()
    (runs / second).rename(tmp_path / "elsewhere")
    carried = runner.invoke(accuracy.cli, ["report"])
    assert carried.exit_code == 0 and "1 runs not here carried over" in carried.output
    assert (tmp_path / "results" / "accuracy.md").read_text() == report
    assert (tmp_path / "results" / "accuracy_runs.jsonl").read_text() == listed
    assert runner.invoke(accuracy.cli, ["report", "--drop-missing"]).exit_code == 0
    assert f"| {TINY_RECIPE} | 0, 1 |" not in (tmp_path / "results" / "accuracy.md").read_text()
    assert second not in (tmp_path / "results" / "accuracy_runs.jsonl").read_text()
    (tmp_path / "elsewhere").rename(runs / second)
    # No k-fold run has finished: every fold is skipped, nothing is scored.
    result = runner.invoke(accuracy.cli, ["kfold-ensemble", TINY_RECIPE, "--data-dir", str(crema_subset)])
    assert result.exit_code == 0 and result.output.count("skipped") == accuracy.N_FOLDS
    assert len((tmp_path / "results" / "accuracy_ensembles.jsonl").read_text().splitlines()) == 2
    # Records that checkouts kept beside the runs, before the log moved into git, still count.
    legacy = {"runs": ["old-actor"], "split": "actor", "accuracy": 0.5, "macro_f1": 0.5, "n": 10}
    (runs / "ensembles.jsonl").write_text(json.dumps(legacy) + "\n")
    assert accuracy.latest_ensembles()[("old-actor",), 0, "part"] == legacy


def test_a_shipped_average_is_made_by_serkeras_ensemble_and_carded(accuracy_project, crema_subset, tmp_path,
                                                                  monkeypatch):
    """`serkeras ensemble` averages the members' runs into saved_models/NAME.keras and `serkeras card` writes its
    card, here for a speaker-normalised model (the card then has its table of where speaker statistics come
    from); `ensemble` scores an average with statistics from the part or the whole corpus."""
    from click.testing import CliRunner

    from conftest import run_cli
    from serkeras.models import load_model

    tmp_path = copy_project(accuracy_project, tmp_path)
    accuracy = use_accuracy_script(monkeypatch, tmp_path)
    name = "serkeras-crema-d-speaker-norm"  # the name of a shipped model, made of a tiny recipe here
    command = (f"serkeras ensemble saved_models/accuracy/{TINY_RECIPE}-actor/model.keras "
               f"saved_models/accuracy/{TINY_RECIPE}-actor-seed1/model.keras --output saved_models/{name}.keras")
    result = run_cli(command.split()[1:], tmp_path)
    assert result.exit_code == 0 and f"wrote saved_models/{name}.keras: the average of 2 models" in result.output
    model, meta = load_model(tmp_path / "saved_models" / f"{name}.keras")
    assert meta.feature_config.speaker_norm and model.name == name.replace("-", "_")
    result = run_cli(["card", f"saved_models/{name}.keras", "--data-dir", str(crema_subset), "--output",
                      "CARD.md"], tmp_path)
    assert result.exit_code == 0, result.output
    card = (tmp_path / "CARD.md").read_text()
    assert card.startswith(f"# Model card: `{name}`") and "The average of the class probabilities of 2 models" in card
    assert f"serkeras predict --model saved_models/{name}.keras recordings_of_one_speaker/" in card
    assert "| the clip alone (`serkeras predict --speaker file`) |" in card
    assert "| 20 of the speaker's clips at random" in card  # each subset actor has 22 clips
    assert str(crema_subset) not in card and f"--data-dir {crema_subset.parent.name}/audio" in card  # no machine's folder
    # Statistics over each speaker's clips in the whole corpus: on the actor split every test actor's clips
    # are in the test part, so they score as each part's statistics do; the record and the report say which.
    run = f"{TINY_RECIPE}-actor"
    for stats in ("part", "corpus"):
        result = CliRunner().invoke(accuracy.cli, ["ensemble", run, "--speaker-stats", stats, "--data-dir",
                                                   str(crema_subset)])
        assert result.exit_code == 0, result.output
        assert ("speaker statistics from the whole corpus" in result.output) is (stats == "corpus")
    scored = accuracy.latest_ensembles()
    part, corpus = (scored[((run,), 0, stats)] for stats in ("part", "corpus"))
    assert corpus["speaker_stats"] == "corpus" and "speaker_stats" not in part
    assert (part["accuracy"], part["val_accuracy"]) == (corpus["accuracy"], corpus["val_accuracy"])
    result = CliRunner().invoke(accuracy.cli, ["report"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "results" / "accuracy.md").read_text()
    assert f"| {run}, speaker statistics from all of a speaker's clips | actor |" in report
    assert f"| {run} | actor | {100 * part['accuracy']:.1f}" in report


def test_cross_validated_ensembles_are_grouped_by_recipes_and_tta():
    accuracy = load_script("accuracy")

    def record(fold, acc, tta=0, recipes=("resnet", "crnn")):
        runs = tuple(f"{r}-kfold-fold{fold}" for r in recipes)
        return (runs, tta, "part"), {"runs": list(runs), "split": "kfold", "fold": fold, "accuracy": acc, "macro_f1": acc - 0.1,
                             "n": 1000, "val_accuracy": 0.5, **({"tta_copies": tta} if tta else {})}

    ensembles = dict([record(1, 0.60), record(0, 0.50), record(0, 0.70, tta=2), record(0, 0.4, recipes=("crnn",))])
    ensembles[("resnet-actor",), 0, "part"] = {"runs": ["resnet-actor"], "split": "actor", "accuracy": 0.9}
    # The same folds scored with the whole corpus's speaker statistics (`ensemble --speaker-stats corpus`)
    # are not a cross-validated row of their own.
    ensembles[(("resnet-kfold-fold1", "crnn-kfold-fold1"), 0, "corpus")] = {**record(1, 0.3)[1], "speaker_stats": "corpus"}
    rows = accuracy.kfold_ensemble_rows(ensembles)
    assert rows[0] == ["resnet + crnn", "0", "2/5", "50.0, 60.0", "55.0 ± 7.1", "0.450 ± 0.071", "50.0"]
    assert [row[:4] for row in rows[1:]] == [["resnet + crnn", "2", "1/5", "70.0"], ["crnn", "0", "1/5", "40.0"]]
    # Seeds of one recipe (`kfold-ensemble crnn crnn:1`) stay apart in the row's name.
    runs = ("crnn-kfold-fold3", "crnn-kfold-fold3-seed1")
    seeds = {(runs, 0, "part"): {"runs": list(runs), "split": "kfold", "fold": 3, "accuracy": 0.6, "macro_f1": 0.5,
                         "val_accuracy": 0.5}}
    assert accuracy.kfold_ensemble_rows(seeds)[0][:2] == ["crnn + crnn-seed1", "0"]
    assert accuracy.recipe_and_seed(None, None, ("crnn", "resnet:2")) == [("crnn", 0), ("resnet", 2)]
    for wrong in ("crnn:x", "no-such-recipe:1"):
        with pytest.raises(click.BadParameter, match="is not RECIPE or RECIPE:SEED"):
            accuracy.recipe_and_seed(None, None, (wrong,))



def test_report_carries_over_rows_it_cannot_rebuild(tmp_path):
    """A row built here replaces the previous report's, but some folds do not replace all of them, and rows
    of runs trained elsewhere stay, read back cell for cell."""
    accuracy = load_script("accuracy")
    path = tmp_path / "accuracy.md"
    path.write_text("# t\n\n| recipe | split | acc |\n| --- | --- | --- |\n| crnn | kfold | 57.2 ± 2.4 |\n"
                    "| resnet | actor |  |\n\n## Baselines\n\n| what | acc |\n| --- | --- |\n| study | 64.1 |\n")
    before = accuracy.previous_tables(path)
    assert before == {"": [["crnn", "kfold", "57.2 ± 2.4"], ["resnet", "actor", ""]],
                      "Baselines": [["study", "64.1"]]}
    partial = lambda row: "folds)" in row[2]  # noqa: E731
    some_folds = [["crnn", "kfold", "60.0 ± 1.0 (3/5 folds)"], ["crnn", "actor", "56.7"]]
    rows = accuracy.merge_rows(some_folds, before[""], 2, partial=partial, order=accuracy.recipe_order)
    # Recipes by name, each recipe's splits in SPLITS' order.
    assert rows == [["crnn", "actor", "56.7"], ["crnn", "kfold", "57.2 ± 2.4"], ["resnet", "actor", ""]]
    every_fold = [["crnn", "kfold", "58.0 ± 1.0"]]
    assert accuracy.merge_rows(every_fold, before[""], 2, partial=partial)[0] == ["crnn", "kfold", "58.0 ± 1.0"]
    lines = ["| what | acc |", "| --- | --- |", "| study | 64.1 |"]
    assert accuracy.table(["what", "acc"], before["Baselines"]) == lines


def test_kfold_rows_join_folds_trained_here_to_those_listed_before(monkeypatch):
    """Folds trained again in this checkout replace their listed scores and join the other folds' (a fresh
    clone keeps only the listed scores)."""
    accuracy = load_script("accuracy")
    monkeypatch.setattr(accuracy, "model_cost", lambda config: (12_000, 3.0))  # builds no model
    monkeypatch.setattr(accuracy, "time_cells", lambda runs: [str(len(runs)), "20", "30"])
    listed = {f"crnn-kfold-fold{k}": {"run": f"crnn-kfold-fold{k}", "test_accuracy": 0.5, "test_macro_f1": 0.4,
                                      "test_clips": 100} for k in range(accuracy.N_FOLDS)}
    results = {"crnn-kfold-fold3": {"config": {}, "metrics": {"test": {"accuracy": 0.6, "macro_f1": 0.5, "n": 100}}}}
    scores = accuracy.finished_test_scores(results, listed)
    assert scores["crnn-kfold-fold3"]["accuracy"] == 0.6 and scores["crnn-kfold-fold4"]["accuracy"] == 0.5
    # Mean 52.0 with sample std 4.5 over all five folds; cost and time of the one run here.
    assert accuracy.recipe_rows(results, scores) == [["crnn", "kfold", "52.0 ± 4.5", "0.420 ± 0.045", "12 k", "3",
                                                      "1", "20", "30"]]
    # The previous report's time cells covered all five folds; the one run here would give a fifth of them.
    previous = [["crnn", "kfold", "50.0 ± 0.0", "0.400 ± 0.000", "12 k", "3", "79", "20", "114"]]
    assert accuracy.recipe_rows(results, scores, previous)[0][-3:] == ["79", "20", "114"]
    assert accuracy.recipe_rows({}, scores) == []  # nothing here: the previous report's row is carried over
    some = accuracy.recipe_rows(results, accuracy.finished_test_scores(results, {}))
    assert some[0][2] == "60.0 ± 0.0 (1/5 folds)"



def test_member_agreement_counts_equal_predictions_pairwise():
    import keras
    import numpy as np

    from serkeras.evaluation import predict_features
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_model

    agreement = load_script("member_agreement")
    config = FeatureConfig(hop_length=320, n_mels=40)
    models = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        models.append(build_model(config, ModelConfig(arch="crnn", width=0.125, head_units=16), CREMA_D_LABELS))
    rng = np.random.default_rng(3)
    features = [{"logmel": rng.normal(0, 1, (n, 40)).astype(np.float32),
                 "spectral": rng.normal(0, 1, (n, config.n_spectral)).astype(np.float32)} for n in (30, 50, 80, 40)]
    labels = np.array([0, 1, 2, 3])
    a, b = (predict_features(m, features, "variable").argmax(axis=1) for m in models)
    same, accuracies = agreement.agreement_row([models[0], models[0]], features, labels, "variable")
    assert same == 1.0 and accuracies == [np.mean(a == labels)] * 2
    # Pairs (1, 2) and (2, 3) cross the two models; (1, 3) is one model with itself.
    pairs, accuracies = agreement.agreement_row([models[0], models[1], models[0]], features, labels, "variable")
    assert pairs == pytest.approx((2 * np.mean(a == b) + 1) / 3)
    assert accuracies == [np.mean(a == labels), np.mean(b == labels), np.mean(a == labels)]


def test_whisper_log_mel_has_whispers_frames_range_and_even_length():
    probe = load_script("pretrained_probe")
    t = np.arange(16000 + 160) / 16000  # 1.01 s: 101 frames, padded to 102
    mel = probe.whisper_log_mel((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert mel.shape == (80, 102) and mel.dtype == np.float32
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # clipped 8 decades below the peak, then divided by 4
    assert np.argmax(mel.mean(axis=1)) == np.argmax(probe.whisper_log_mel(
        (0.5 * np.sin(2 * np.pi * 440 * t[:8000])).astype(np.float32)).mean(axis=1))


def test_probe_speaker_zscore_removes_each_speakers_offset(tmp_path):
    """Embeddings = a weak emotion direction + a large per-speaker offset: z-normalising by speaker recovers the
    emotion on unseen speakers, a plain probe cannot."""
    from serkeras.corpus import Clip
    from serkeras.splits import make_split

    probe = load_script("pretrained_probe")
    rng = np.random.default_rng(0)
    labels = CREMA_D_LABELS
    clips, embeddings = [], {}
    for s in range(30):
        offset = rng.normal(0, 6, 8)
        for i in range(24):
            label = i % len(labels)
            clip = Clip(f"{1001 + s}_X_{i}.wav", labels[label], speaker=str(1001 + s))
            clips.append(clip)
            embeddings[clip.name] = offset + np.eye(8)[label] * 1.5 + rng.normal(0, 0.3, 8)
    split = make_split(clips, "actor", seed=0)
    plain = probe.fitted_probe_split(embeddings, split, labels, speaker_scale=False)[1]
    zscored = probe.fitted_probe_split(embeddings, split, labels, speaker_scale=True)[1]
    assert zscored["test_accuracy"] > 0.9 > plain["test_accuracy"] + 0.2
    assert zscored["test_clips"] == len(split.test) and zscored["C"] in probe.C_GRID
    # A clip z-scored by its own statistics is all zeros: one class for every clip. Three clips of the speaker
    # already remove most of the offset.
    assert zscored["test_accuracy_clip_alone"] < 0.3 < zscored["test_accuracy_3_clips"]
    assert "test_accuracy_clip_alone" not in plain


def test_probe_embeddings_save_atomically_and_resume(tmp_path):
    probe = load_script("pretrained_probe")
    path = tmp_path / "e.npz"
    assert probe.load_embeddings(path) == {}
    probe.save_embeddings(path, {"a": np.ones(4, np.float32), "b": np.zeros(4, np.float32)})
    loaded = probe.load_embeddings(path)
    assert sorted(loaded) == ["a", "b"] and loaded["a"].tolist() == [1, 1, 1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]


def test_probe_score_without_embeddings_is_a_one_line_error(tmp_path, monkeypatch):
    from click.testing import CliRunner

    probe = load_script("pretrained_probe")
    monkeypatch.setattr(probe, "EMBEDDINGS_DIR", tmp_path)
    result = CliRunner().invoke(probe.cli, ["score", "nothing-here"])
    assert result.exit_code != 0 and "run embed first" in result.output and "Traceback" not in result.output


def test_probe_rows_of_the_accuracy_report_carry_the_encoders_cost(tmp_path):
    """accuracy.md lists every logged probe with the size and cost of the encoder layers it used: from the recipe
    for `ship` rows, from the embeddings' names otherwise (blank when a name does not say)."""
    import json

    probe = load_script("pretrained_probe")
    fold = {"C": 0.01, "val_accuracy": 0.7, "test_accuracy": 0.65, "test_macro_f1": 0.64, "test_clips": 568}
    machine = ["machine: 2 CPUs (AMD EPYC), no GPU", "software: ..."]
    rows = [{"embeddings": "whisper-base-keras-layer1", "speaker_zscore": False, "split": "actor", "machine": machine,
             "folds": [fold]},
            {"embeddings": "shipped recipe", "speaker_zscore": True, "split": "actor", "machine": machine,
             "folds": [fold], "recipe": {"layers": 1, "seconds": {"features": 30.0, "encoder": 60.0}}},
            {"embeddings": "other-encoder", "speaker_zscore": False, "split": "kfold", "machine": machine,
             "folds": [fold, {**fold, "test_accuracy": 0.75}]}]
    log = tmp_path / "pretrained_probe.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert probe.encoder_layers({"embeddings": "whisper-base"}) == probe.BASE_LAYERS
    assert probe.encoder_layers({"embeddings": "whisper-base-keras-layer1+whisper-base-keras-layer3"}) == 3
    assert probe.encoder_layers({"embeddings": "whisper-base-keras-layer2, speaker statistics with a prior of 5 clips"}) == 2
    plain, shipped, other = probe.cost_rows(log)
    params, mflops = probe.encoder_cost(1)
    assert plain[:6] == ["whisper-base-keras-layer1", "one recording", "actor", "65.0 ± 3.9", "0.640", "1"]
    assert plain[6:9] == [f"{params / 1e6:.1f} M", f"{mflops:,.0f}", ""] and plain[9] == "2 CPUs (AMD EPYC), no GPU"
    assert shipped[1] == "several recordings per speaker" and shipped[8] == "1.5"
    assert other[3].startswith("70.0 ± 7.1") and other[5:9] == ["", "", "", ""]
    assert 3e6 < params < 5e6 and 500 < mflops < 1500  # one layer of Whisper base: 4.1 M, about 1,058 MFLOPs
    assert probe.cost_rows(tmp_path / "missing.jsonl") == []
