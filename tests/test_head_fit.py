"""`--head-fit lbfgs`: a frozen Whisper encoder's classifier fitted as a logistic regression, on real clips and a
tiny random encoder; the saved model reloads and predicts alone."""

import json
import subprocess
import sys

import numpy as np
import pytest

from serkeras.errors import SerkerasError
from conftest import OWN_LABELS
from whisper_checkpoints import random_encoder_weights, write_ctranslate2

DIM, HEADS, LAYERS = 16, 2, 2
TRAIN = ["--split", "kfold", "--fold", "0", "--n-folds", "4", "--quiet", "--workers", "1"]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    weights = random_encoder_weights(np.random.default_rng(11), 80, DIM, LAYERS)
    return write_ctranslate2(tmp_path_factory.mktemp("encoders") / "faster-whisper-tiny", weights, HEADS)


def _fitted_probabilities(run, manifest, cache):
    """What the fitted scikit-learn classifier gives the run's test clips, refitted here from the same embeddings."""
    from serkeras.corpus import load_manifest
    from serkeras.features import FeatureConfig
    from serkeras.head_fit import fit_logistic_head, pooled_embeddings
    from serkeras.models import ModelConfig, build_model, embedding_stages
    from serkeras.splits import make_split
    from serkeras.training import TrainConfig, prepare_split

    config = json.loads((run / "config.json").read_text())
    feature_config = FeatureConfig.from_dict(config["feature_config"])
    model_config = ModelConfig.from_dict(config["model_config"])
    corpus = load_manifest(manifest)
    split = make_split(corpus.clips, "kfold", fold=0, n_folds=4, seed=0)
    data = prepare_split(corpus, split, feature_config, cache, workers=1, progress=False)
    front, pool = embedding_stages(build_model(feature_config, model_config, corpus.labels))
    x = {part: pooled_embeddings(front, pool, data.parts[part][1], cache) for part in data.parts}
    head = fit_logistic_head(x["train"], data.parts["train"][2], x["val"], data.parts["val"][2],
                             TrainConfig().head_c_grid, n_classes=3)
    return head, [c.path for c in data.parts["test"][0]], head.probabilities(x["test"])


def test_lbfgs_head_is_the_fitted_logistic_regression_and_the_saved_model_predicts_it_alone(
        three_class_manifest, tiny_encoder, workdir, tmp_path):
    """The run fits the head by L-BFGS (no epochs), saves an ordinary .keras file, and that file, reloaded in a
    fresh process without scikit-learn's classifier or the checkpoint, gives the fitted classifier's
    probabilities; its reported test accuracy is the file's own."""
    from conftest import run_cli
    from serkeras.models import load_model

    cache = workdir / "cache"
    result = run_cli(["train", "--arch", "whisper", "--encoder", str(tiny_encoder), "--pooling", "stats",
                      "--dropout", "0", "--head-fit", "lbfgs", "--manifest", str(three_class_manifest),
                      "--run-name", "lbfgs",
                      "--cache-dir", str(cache)] + TRAIN, workdir)
    assert result.exit_code == 0, result.output
    assert "classifier fitted by L-BFGS on" in result.output and "Epoch" not in result.output
    run = workdir / "saved_models" / "lbfgs"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["head_fit"]["C"] in metrics["head_fit"]["c_grid"] and metrics["timed_epochs"] == 0
    model, meta = load_model(run / "model.keras")
    assert meta.labels == ("aroused", "calm", "low") and meta.model_config.fine_tune_layers == 0
    assert not any(layer.trainable for layer in model.get_layer("whisper_encoder").layers if layer.weights)

    head, test_paths, fitted = _fitted_probabilities(run, three_class_manifest, cache)
    assert head.c == metrics["head_fit"]["C"]
    assert fitted.argmax(axis=1).tolist() != [0] * len(fitted)  # the test predicts more than one class
    # A fresh process, the encoder checkpoint gone: the .keras file alone.
    moved = tmp_path / "model.keras"
    moved.write_bytes((run / "model.keras").read_bytes())
    gone = tmp_path / "gone"
    tiny_encoder.rename(gone)
    try:
        predicted = subprocess.run(
            [sys.executable, "-m", "serkeras.cli", "predict", "--model", str(moved), *test_paths, "--format", "json",
             "--workers", "1", "--window", "60"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        gone.rename(tiny_encoder)
    assert predicted.returncode == 0, predicted.stderr
    rows = {row["path"]: row for row in json.loads(predicted.stdout)}
    reloaded = np.array([[rows[p]["probabilities"][label] for label in meta.labels] for p in test_paths])
    np.testing.assert_allclose(reloaded, fitted, atol=2e-3)  # frames cached as float16 for the fit
    accuracy = np.mean(reloaded.argmax(axis=1) == np.array(
        [meta.labels.index(OWN_LABELS[p.rsplit("/", 1)[1].split("_")[2]]) for p in test_paths]))
    # Scored from the float16-cached frames: a near tie may fall the other way for one clip at most.
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy, abs=1 / len(test_paths) + 1e-9)


def test_speaker_standardised_head_matches_its_scores_through_evaluate(three_class_manifest, tiny_encoder, workdir):
    """`--speaker-standardization` with `--head-fit lbfgs`, from the shipped recipe, with an int8 encoder: the saved
    model, evaluated by `serkeras evaluate` (speaker statistics over each test speaker's clips), scores what the
    run reported."""
    from conftest import run_cli
    from serkeras.models import SPEAKER_INPUTS, load_model, speaker_stages

    cache = str(workdir / "cache")
    result = run_cli(["train", "--recipe", "crema-d-whisper-speaker-norm", "--encoder", str(tiny_encoder),
                      "--manifest", str(three_class_manifest), "--run-name", "lbfgs-speaker", "--cache-dir", cache,
                      "--quantize", "int8", "--augment-copies", "0"] + TRAIN, workdir)
    assert result.exit_code == 0, result.output
    run = workdir / "saved_models" / "lbfgs-speaker"
    model, meta = load_model(run / "model.keras")
    assert [t.name for t in model.inputs][2:] == list(SPEAKER_INPUTS)
    assert meta.model_config.speaker_standardization and meta.model_config.speaker_prior_clips == 5.0
    # Quantized before the fit: the classifier was fitted on what the int8 encoder computes, and stays float32.
    assert model.get_layer("whisper_encoder").get_layer("layer0_ffn_expand").quantization_mode == "int8"
    assert speaker_stages(model)[1].get_layer("probabilities").quantization_mode is None
    population_mean, population_variance = speaker_stages(model)[1].get_layer("speaker_standardization").get_weights()
    assert np.abs(population_mean).sum() > 0 and (population_variance > 0).all()
    metrics = json.loads((run / "metrics.json").read_text())
    evaluated = run_cli(["evaluate", str(run / "model.keras"), "--manifest", str(three_class_manifest),
                         "--cache-dir", cache, "--split", "kfold", "--fold", "0", "--n-folds", "4"], workdir)
    assert evaluated.exit_code == 0, evaluated.output
    accuracy = float(evaluated.output.split("  accuracy ")[1].split()[0])
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=6e-4)


@pytest.mark.parametrize("extra, message", [
    (["--fine-tune-layers", "1"], "--head-fit lbfgs needs a frozen encoder: --fine-tune-layers 1"),
    (["--pooling", "attention"], "attentive pooling needs --head-fit gradient"),
    (["--layer-pooling", "weighted"], "--layer-pooling weighted) needs --head-fit gradient"),
    (["--mixup", "0.2"], "leave out --mixup"),
    (["--arch", "crnn"], "not of --arch crnn"),
    (["--speaker-prior-clips", "3", "--no-speaker-standardization"], "--speaker-prior-clips needs"),
])
def test_settings_lbfgs_cannot_fit_are_one_line_errors(extra, message, three_class_manifest, tiny_encoder, workdir):
    from conftest import run_cli

    result = run_cli(["train", "--recipe", "crema-d-whisper", "--encoder", str(tiny_encoder),
                      "--manifest", str(three_class_manifest)] + TRAIN + extra, workdir)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_binary_fit_and_a_class_without_training_clips_give_softmax_weights():
    from serkeras.head_fit import fit_logistic_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] > 0).astype(int)
    head = fit_logistic_head(x[:40], y[:40], x[40:], y[40:], c_grid=(0.1, 1.0), n_classes=3)
    assert head.kernel.shape == (4, 3) and head.c in (0.1, 1.0)
    probabilities = head.probabilities(x[40:])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert probabilities[:, 2].max() < 1e-6 and np.mean(probabilities.argmax(axis=1) == y[40:]) > 0.8
    with pytest.raises(SerkerasError, match="at least two classes"):
        fit_logistic_head(x, np.zeros(60, int), x, np.zeros(60, int))


def test_copy_numbers_count_each_clips_appearances():
    from types import SimpleNamespace

    from serkeras.head_fit import copy_numbers

    clips = [SimpleNamespace(path=p) for p in ("a", "b", "a", "b", "a")]
    assert copy_numbers(clips).tolist() == [0, 0, 1, 1, 2]


def test_shipped_recipes_parse_and_name_the_shipped_models_settings():
    from serkeras.cli import train
    from serkeras.recipes import option_defaults, read_recipe

    plain = option_defaults(read_recipe("crema-d-whisper"), train.params)
    speaker = option_defaults(read_recipe("crema-d-whisper-speaker-norm"), train.params)
    for recipe in (plain, speaker):
        assert recipe["head_fit"] == "lbfgs" and recipe["fine_tune_layers"] == 0 and recipe["encoder_layers"] == 2
        assert recipe["pooling"] == "stats" and recipe["split_kind"] == "actor"
        # As the shipped files were fitted: beside one augmented copy per clip, on the int8 encoder.
        assert (recipe["augment_copies"], recipe["speed"], recipe["quantize"]) == (1, 0.1, "int8")
    assert "speaker_standardization" not in plain
    assert speaker["speaker_standardization"] is True and speaker["speaker_prior_clips"] == 5.0
