"""Several corpora in one run: labels matched by name, speakers by corpus, splits within each corpus, the
partial-label loss for classes a corpus lacks, per-corpus evaluation and leave-one-corpus-out."""

import csv
import json

import keras
import numpy as np
import pytest

from conftest import run_cli
from serkeras.corpus import combine_corpora, load_corpora, load_corpus
from serkeras.errors import DataError
from serkeras.losses import PartialLabelCrossentropy, partial_targets
from serkeras.splits import held_out_corpus_split, make_split
from serkeras.training import class_weights

#: The cheapest model, on clips of one length (every new batch shape is another TensorFlow trace): what is
#: tested here is how corpora are combined, split, trained on and reported, not the model.
TINY = ["--arch", "1d", "--width", "0.0625", "--head-units", "16", "--batch-size", "16", "--quiet",
        "--workers", "1", "--length", "fixed", "--seconds", "0.5", "--epochs", "1"]  # --epochs last: a test changes it

#: Each corpus's labels: they differ, and the speakers' names ("01"...) repeat across corpora.
LABEL_SETS = {"alpha": ("anger", "happy", "sad"), "beta": ("anger", "happy", "neutral"),
              "gamma": ("anger", "neutral", "sad")}
PITCH = {"anger": 300.0, "happy": 420.0, "neutral": 150.0, "sad": 200.0}


def write_manifest(folder, labels, make_audio, speakers=4, clips=2):
    """folder/manifest.csv over short tones, a pitch per label; speakers "01", "02", ..."""
    rows = []
    for s in range(speakers):
        for label in labels:
            for k in range(clips):
                path = make_audio(f"{label}-{s}-{k}.wav", folder=folder / "audio", seconds=0.5,
                                  freq=PITCH.get(label, 500.0) * (1 + 0.05 * s), seed=s * 10 + k)
                rows.append((path.relative_to(folder).as_posix(), label, f"{s + 1:02d}"))
    with open(folder / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "speaker"), *rows])
    return folder / "manifest.csv"


@pytest.fixture
def manifests(tmp_path, make_audio):
    return [write_manifest(tmp_path / name, labels, make_audio) for name, labels in LABEL_SETS.items()]


def test_corpora_are_combined_by_label_name_and_speakers_by_corpus(manifests):
    corpus = load_corpora((), manifests)
    assert corpus.corpus_names == ("alpha", "beta", "gamma")
    assert corpus.labels == ("anger", "happy", "neutral", "sad")
    assert {c.speaker for c in corpus.clips if c.corpus == "beta"} == {"beta/01", "beta/02", "beta/03", "beta/04"}
    assert len({c.speaker for c in corpus.clips}) == 12  # "01" of alpha is not "01" of beta
    masks = corpus.label_masks()
    for clip, row in zip(corpus.clips, masks):
        assert [label for label, known in zip(corpus.labels, row) if known] == sorted(LABEL_SETS[clip.corpus])
    # Two sources of the same folder name get unique names; one source is read as before.
    assert load_corpora((), [manifests[0], manifests[0]]).corpus_names == ("alpha", "alpha-2")
    assert load_corpora((), [manifests[0]]) == load_corpus(None, manifests[0])


def test_a_corpus_sharing_no_label_is_refused(tmp_path, make_audio, manifests):
    other = write_manifest(tmp_path / "other", ("boredom", "joy"), make_audio, speakers=1, clips=1)
    with pytest.raises(DataError, match="the corpus other shares no label with the others"):
        load_corpora((), [manifests[0], manifests[1], other])


@pytest.mark.parametrize("kind", ["random", "actor", "kfold"])
def test_splits_are_drawn_within_each_corpus_and_speaker_disjoint(manifests, kind):
    corpus = load_corpora((), manifests)
    split = make_split(corpus.clips, kind, 0.25, 0.25, fold=1, n_folds=4, seed=0)
    assert sorted(c.path for part in split.parts().values() for c in part) == sorted(c.path for c in corpus.clips)
    for name in corpus.corpus_names:
        own = {part: [c for c in clips if c.corpus == name] for part, clips in split.parts().items()}
        assert all(own.values()), f"{name} is missing from a part"
        if kind != "random":
            speakers = {part: {c.speaker for c in clips} for part, clips in own.items()}
            assert not speakers["train"] & speakers["val"] and not speakers["train"] & speakers["test"]
            assert not speakers["val"] & speakers["test"]
    assert "within each of 3 corpora" in split.description


def test_held_out_split_tests_on_every_clip_of_one_corpus(manifests):
    corpus = load_corpora((), manifests)
    split = held_out_corpus_split(corpus.clips, "beta", 0.25, seed=0)
    assert {c.corpus for c in split.test} == {"beta"} and len(split.test) == 24
    assert {c.corpus for c in split.train} == {c.corpus for c in split.val} == {"alpha", "gamma"}
    assert not {c.speaker for c in split.train} & {c.speaker for c in split.val}


def test_partial_label_loss_is_crossentropy_when_every_class_is_known_and_ignores_unknown_classes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 5)).astype(np.float32)
    probabilities = np.asarray(keras.ops.softmax(logits))
    labels = rng.integers(0, 5, size=8)
    one_hot = np.eye(5, dtype=np.float32)[labels]
    for smoothing in (0.0, 0.1):
        plain = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)(one_hot, probabilities)
        partial = PartialLabelCrossentropy(label_smoothing=smoothing)(one_hot, probabilities)
        np.testing.assert_allclose(float(partial), float(plain), rtol=1e-5)
    # Class 4 unknown to every clip (none is labelled 4): the loss is the cross-entropy of the softmax of the
    # other logits, whatever class 4's logit is.
    labels = rng.integers(0, 4, size=8)
    masks = np.ones((8, 5), bool)
    masks[:, 4] = False
    targets = partial_targets(labels, masks)
    assert (targets[:, 4] == -1).all() and (targets[np.arange(8), labels] == 1).all()
    expected = -np.mean(np.log(np.asarray(keras.ops.softmax(logits[:, :4]))[np.arange(8), labels]))
    for shift in (0.0, 5.0, -5.0):
        moved = logits.copy()
        moved[:, 4] += shift
        loss = PartialLabelCrossentropy()(targets, np.asarray(keras.ops.softmax(moved)))
        np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    config = PartialLabelCrossentropy(label_smoothing=0.1).get_config()
    assert keras.losses.deserialize(keras.losses.serialize(PartialLabelCrossentropy(0.1))).get_config() == config


def test_class_weights_do_not_depend_on_how_many_corpora_lack_a_class():
    # Corpus A: classes 0, 1, 2 with 10, 10, 5 clips; corpus B lacks class 2: 10, 10.
    a = [0] * 10 + [1] * 10 + [2] * 5
    a_masks = np.ones((25, 3), bool)
    alone = class_weights(a, 3, a_masks)
    assert alone == pytest.approx(class_weights(a, 3))  # every class known: scikit-learn's "balanced"
    b_masks = np.tile([True, True, False], (20, 1))
    both = class_weights(a + [0] * 10 + [1] * 10, 3, np.concatenate([a_masks, b_masks]))
    assert both[2] == pytest.approx(alone[2])  # class 2 is as rare as it was among the clips that could have it
    assert both[0] == pytest.approx(both[1])


def test_a_single_corpus_trains_as_before(manifests):
    """One corpus: no masks, one-hot targets, plain categorical cross-entropy, the same split as before."""
    from serkeras.training import SplitData, TrainConfig, compile_model

    corpus = load_corpora((), manifests[:1])
    assert not corpus.has_missing_labels() and all(c.corpus == "" for c in corpus.clips)
    features = [{"spectral": np.zeros((4, 2), np.float32)} for _ in corpus.clips]
    data = SplitData(corpus.labels, {"train": (corpus.clips, features, corpus.label_indices())}, None)
    assert not data.partial_labels
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    compile_model(model, TrainConfig(), 1, partial_labels=data.partial_labels)
    assert type(model.loss) is keras.losses.CategoricalCrossentropy
    assert make_split(corpus.clips, "actor", seed=3) == make_split(load_corpus(None, manifests[0]).clips, "actor",
                                                                   seed=3)


def test_mixup_of_partial_targets_knows_what_either_clip_knows():
    import tensorflow as tf

    from serkeras.pipeline import mixup

    targets = np.array([[1, 0, -1], [0, -1, 1]], np.float32)
    inputs = {"spectral": np.ones((2, 3, 1), np.float32), "lengths": np.array([3, 3], np.int32)}
    batch = tf.data.Dataset.from_tensors((inputs, targets))
    mixed_pairs = 0
    for _, mixed in mixup(batch.repeat(20), 0.4, seed=1).as_numpy_iterator():  # each batch draws a new partner
        known = mixed >= 0
        assert known[targets >= 0].all()  # a class the clip knows stays known; its partner's become known
        np.testing.assert_allclose(np.where(known, mixed, 0).sum(axis=1), 1.0, rtol=1e-6)
        mixed_pairs += bool(known.all())  # the two clips drew each other: every class is known to one of them
    assert mixed_pairs  # (and otherwise each drew itself: 2**-20 for every batch)


def test_train_evaluate_and_cross_corpus_on_three_corpora(manifests, tmp_path):
    sources = [arg for m in manifests for arg in ("--manifest", str(m))]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    result = run_cli(["train", *sources, "--split", "actor", "--val-fraction", "0.25", "--test-fraction", "0.25",
                      "--run-name", "mixed", *cache, "--class-weight", "--label-smoothing", "0.1", *TINY], tmp_path)
    assert result.exit_code == 0, result.output
    run = tmp_path / "saved_models" / "mixed"
    config = json.loads((run / "config.json").read_text())
    assert config["manifests"] == [str(m) for m in manifests] and config["corpus"] == "alpha+beta+gamma"
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["test_by_corpus"]) == ["alpha", "beta", "gamma"]
    assert metrics["test_by_corpus"]["alpha"]["per_class"]["neutral"]["support"] == 0

    # --resume finds every corpus in the run's settings (no --manifest given): metrics.json removed, the run
    # counts as unfinished and trains again.
    (run / "metrics.json").unlink()
    result = run_cli(["train", "--resume", "--run-name", "mixed", "--quiet"], tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(json.loads((run / "metrics.json").read_text())["test_by_corpus"]) == ["alpha", "beta", "gamma"]

    from serkeras.models import load_model

    model, meta = load_model(run / "model.keras")  # compile=False: the partial-label loss is not needed
    assert meta.labels == ("anger", "happy", "neutral", "sad") and model.outputs[0].shape[-1] == 4

    report = tmp_path / "report.json"
    result = run_cli(["evaluate", str(run / "model.keras"), *sources, "--part", "all", *cache, "--json",
                      str(report)], tmp_path)
    assert result.exit_code == 0, result.output
    assert "alpha: 24 clips, scored on its classes" in result.output and "all corpora together" in result.output
    by_corpus = json.loads(report.read_text())["by_corpus"]
    beta = by_corpus["beta"]
    recalls = [beta["per_class"][label]["recall"] for label in LABEL_SETS["beta"]]
    assert beta["n"] == 24 and beta["unweighted_average_recall"] == pytest.approx(np.mean(recalls))
    assert 0.0 <= beta["expected_calibration_error"] <= 1.0 and "expected_calibration_error" in metrics["test"]

    # Two seeds: one report per seed in its own folder, and their mean and spread.
    args = ["cross-corpus", *sources, "--val-fraction", "0.25", "--run-name", "loco", "--seed", "3", "--seeds", "2",
            "--class-weight", "--label-smoothing", "0.1", *cache, *TINY]  # trained as the "mixed" run above
    result = run_cli(args, tmp_path)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "saved_models" / "loco"
    by_seed = {k: json.loads((folder / f"seed{k}" / "cross-corpus.json").read_text()) for k in (3, 4)}
    rows = by_seed[3]
    assert [r["corpus"] for r in rows] == ["alpha", "beta", "gamma", "mean"]
    assert rows[0]["clips"] == 24 and rows[0]["recall_neutral"] is None
    assert (folder / "seed3" / "cross-corpus.md").read_text().startswith("| held-out corpus | clips | accuracy | UA |")
    assert (folder / "seed4" / "held-out-beta" / "model.keras").is_file()
    assert json.loads((folder / "seed4" / "held-out-beta" / "config.json").read_text())["train_config"]["seed"] == 4
    with open(folder / "seed3" / "cross-corpus.csv", newline="") as f:
        assert [r["corpus"] for r in csv.DictReader(f)] == ["alpha", "beta", "gamma", "mean"]
    summary = json.loads((folder / "cross-corpus-seeds.json").read_text())
    assert [r["corpus"] for r in summary] == ["alpha", "beta", "gamma", "mean"] and summary[0]["seeds"] == [3, 4]
    for i, row in enumerate(summary):
        values = [by_seed[k][i]["UA"] for k in (3, 4)]
        assert row["UA"]["by_seed"] == values and row["UA"]["mean"] == pytest.approx(np.mean(values))
        assert row["UA"]["std"] == pytest.approx(np.std(values))
    assert "over 2 seeds" in result.output and (folder / "cross-corpus-seeds.md").read_text().startswith(
        "| held-out corpus | clips | seeds | accuracy | UA |")
    again = run_cli(args, tmp_path)  # finished runs are read back, not trained again
    assert again.exit_code == 0, again.output
    assert again.output.count("finished before") == 6 and "train " not in again.output
    assert json.loads((folder / "seed3" / "cross-corpus.json").read_text()) == rows
    changed = run_cli(args[:-2] + ["--epochs", "2"], tmp_path)
    assert changed.exit_code == 1 and "holds a run with other settings (train_config)" in changed.output

    # The run's card scores the run's own test part (its stored corpora and split), each corpus apart, and reads
    # the same settings' leave-one-corpus-out scores over both seeds.
    result = run_cli(["card", "saved_models/mixed", "--output", "CARD.md", "--perturb", "gain:-10",
                      "--cross-corpus-run", "saved_models/loco", *cache], tmp_path)
    assert result.exit_code == 0, result.output
    card = (tmp_path / "CARD.md").read_text()
    for name, own in metrics["test_by_corpus"].items():
        assert f"| {name} | {own['n']} | 1 | {100 * own['accuracy']:.1f}% | " in card  # one test speaker each
    assert f"| all | {metrics['test']['n']} | 3 | {100 * metrics['test']['accuracy']:.1f}% (" in card
    assert "Recall per corpus" in card and "| alpha | " in card and "| gain -10 dB |" in card
    assert "alpha/manifest.csv" in card and "--perturb gain:-10" in card and str(tmp_path) not in card
    assert "## On corpora never heard in training" in card and "--cross-corpus-run saved_models/loco" in card
    beta = summary[[r["corpus"] for r in summary].index("beta")]
    assert (f"| beta | 24 | {100 * beta['accuracy']['mean']:.1f} ± {100 * beta['accuracy']['std']:.1f} | "
            f"{100 * beta['UA']['mean']:.1f} ± {100 * beta['UA']['std']:.1f} |") in card
    assert "over 2 training seeds (3, 4)" in card and "beta held out: alpha + gamma" in card


def test_cross_corpus_refuses_a_held_out_corpus_of_one_class(manifests, tmp_path, make_audio):
    one = write_manifest(tmp_path / "one", ("anger",), make_audio, speakers=3, clips=1)
    result = run_cli(["cross-corpus", "--manifest", str(one), "--manifest", str(manifests[0]), *TINY], tmp_path)
    assert result.exit_code == 1
    assert result.output.strip() == ("error: the held-out corpus one has clips of one label only ('anger'): testing "
                                     "on it needs at least two labels")
    result = run_cli(["cross-corpus", "--manifest", str(manifests[0]), *TINY], tmp_path)
    assert result.exit_code == 1 and "needs two or more corpora" in result.output


def test_features_of_several_corpora(manifests, tmp_path):
    sources = [arg for m in manifests[:2] for arg in ("--manifest", str(m))]
    result = run_cli(["features", *sources, "--cache-dir", str(tmp_path / "cache"), "--workers", "1"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "alpha+beta: 48 clips, 48 with features, 0 skipped" in result.output
