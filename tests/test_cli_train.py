"""End to end through the CLI on real CREMA-D clips: train, evaluate, predict, resume a killed run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from serkeras.cli import main
from conftest import run_cli

#: The cheapest model to train: what these tests check does not depend on the architecture.
TINY = ["--arch", "1d", "--width", "0.0625", "--head-units", "16", "--batch-size", "16", "--quiet",
        "--workers", "1"]
#: A model whose predictions, after one epoch, move with the speaker statistics it is given.
TINY_COMBINED = [*TINY[:1], "combined", *TINY[2:]]


@pytest.fixture(scope="module")
def trained(crema_subset, workdir):
    result = run_cli(["train", "--data-dir", str(crema_subset), "--split", "actor", "--epochs", "2",
                      "--run-name", "tiny", "--cache-dir", str(workdir / "cache")] + TINY, workdir)
    assert result.exit_code == 0, result.output
    return workdir / "saved_models" / "tiny", result.output


def test_speaker_statistics_are_refused_for_a_model_without_speaker_norm(trained, crema_subset, workdir):
    run, _ = trained
    result = run_cli(["evaluate", str(run / "model.keras"), "--data-dir", str(crema_subset), "--speaker-stats",
                      "corpus", "--cache-dir", str(workdir / "cache")], workdir)
    assert result.exit_code == 2
    assert "--speaker-stats corpus is for models that normalise by speaker" in result.output


def test_train_writes_run_folder(trained):
    run, output = trained
    for name in ("model.keras", "config.json", "metrics.json", "history.csv", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists(), "a finished run leaves no backup behind"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert set(metrics["test"]["per_class"]) == {"anger", "disgust", "fear", "happy", "neutral", "sad"}
    assert set(metrics["test"]["accuracy_by_sex"]) == {"Female", "Male"}
    assert "confusion matrix" in output
    config = json.loads((run / "config.json").read_text())
    assert config["split"] == "actor" and config["model_config"]["arch"] == "1d"
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 2 and {"val_accuracy", "val_macro_f1", "learning_rate"} <= set(rows[0])


def test_tensorboard_logs(trained, workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = workdir / "logs" / "tiny"
    scalars = set()
    images = set()
    for events in logs.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0, "images": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["tensors"]) | set(acc.Tags()["images"])
    assert {"epoch_loss", "epoch_accuracy", "epoch_macro_f1", "epoch_learning_rate"} <= scalars
    assert "confusion_matrix" in images
    assert "_hparams_/session_start_info" in scalars
    assert "hparams/test_accuracy" in scalars


def test_existing_run_name_is_refused(crema_subset, workdir, trained):
    result = CliRunner().invoke(main, ["train", "--data-dir", str(crema_subset), "--run-name", "tiny",
                                       "--output-dir", str(workdir / "saved_models")])
    assert result.exit_code == 1
    assert result.output.startswith("error: run tiny exists") and "Traceback" not in result.output


def test_evaluate(trained, crema_subset, workdir):
    run, _ = trained
    report_path = workdir / "report.json"
    result = run_cli(["evaluate", str(run / "model.keras"), "--data-dir", str(crema_subset), "--split", "actor",
                      "--cache-dir", str(workdir / "cache"), "--json", str(report_path),
                      "--plot", str(workdir / "cm.png")], workdir)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    # Same model, same split: evaluate reproduces the run's own test metrics.
    assert report["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert report["expected_calibration_error"] == pytest.approx(metrics["test"]["expected_calibration_error"],
                                                                 abs=1e-4)
    assert np.array(report["confusion_matrix"]).sum() == report["n"]
    assert (workdir / "cm.png").stat().st_size > 0


def test_evaluate_on_a_corpus_without_some_of_the_models_classes(trained, crema_subset, workdir, tmp_path):
    """A corpus that lacks a class (ASED has no disgust) is scored on the classes it has; an unknown label is a
    one-line error."""
    run, _ = trained
    codes = {"ANG": "anger", "HAP": "happy", "NEU": "neutral", "SAD": "sad", "FEA": "fear"}
    manifest = tmp_path / "no-disgust.csv"
    rows = [(str(p), codes[p.stem.split("_")[2]], p.stem.split("_")[0]) for p in sorted(crema_subset.glob("*.ogg"))
            if p.stem.split("_")[2] in codes]
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "speaker"), *rows])
    report_path = tmp_path / "report.json"
    result = run_cli(["evaluate", str(run / "model.keras"), "--manifest", str(manifest), "--part", "all",
                      "--cache-dir", str(workdir / "cache"), "--json", str(report_path)], workdir)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["n"] == len(rows) and report["per_class"]["disgust"]["support"] == 0
    recalls = [report["per_class"][label]["recall"] for label in codes.values()]
    assert report["unweighted_average_recall"] == pytest.approx(np.mean(recalls))
    with open(manifest, "a", newline="") as f:
        csv.writer(f).writerow((rows[0][0], "boredom", rows[0][2]))
    result = run_cli(["evaluate", str(run / "model.keras"), "--manifest", str(manifest), "--part", "all",
                      "--cache-dir", str(workdir / "cache")], workdir)
    assert result.exit_code == 1 and "the corpus has labels the model does not predict: boredom" in result.output


def test_predict_formats_and_long_audio(trained, crema_subset, workdir, tmp_path):
    run, _ = trained
    clip = sorted(crema_subset.iterdir())[0]
    wave, rate = sf.read(clip)
    long_path = tmp_path / "long stereo 44k.flac"
    long_wave = np.tile(wave, 5)  # about 12 s
    import soxr

    long_wave = soxr.resample(long_wave, rate, 44100)
    sf.write(long_path, np.stack([long_wave, long_wave], axis=1), 44100)
    result = run_cli(["predict", str(clip), str(long_path), "--model", str(run / "model.keras"), "--format", "json"],
                     workdir)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 2
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    short, long = sorted(rows, key=lambda r: r["seconds"])
    assert short["timeline"] == [] and len(long["timeline"]) >= 3
    assert long["timeline"][-1]["end"] == pytest.approx(long["seconds"], abs=0.05)
    csv_out = run_cli(["predict", str(crema_subset), "--model", str(run / "model.keras"), "--format", "csv"], workdir)
    assert csv_out.exit_code == 0
    assert len(csv_out.output.strip().splitlines()) == 1 + len(list(crema_subset.iterdir()))


@pytest.mark.parametrize("frames, window, hop, want", [
    (300, 400, 200, [0]),                       # shorter than a window
    (1001, 400, 200, [0, 200, 400, 601]),       # 10 s at 100 frames/s: the flush window replaces 600, not beside it
    (1100, 400, 200, [0, 200, 400, 600, 700]),  # the flush window half a hop on: kept as well
    (1210, 400, 400, [0, 400, 800, 810]),       # hop = window: replacing 800 would leave a gap, so it stays
    (405, 400, 200, [0, 5]),                    # one regular window: the flush one is added
])
def test_prediction_windows_cover_the_recording_once(frames, window, hop, want):
    from serkeras.inference import windows

    starts = windows(frames, window, hop)
    assert starts == want
    covered = np.zeros(frames, bool)
    for start in starts:
        covered[start:start + window] = True
    assert covered.all()


def test_predict_reads_recordings_longer_than_training_clips(trained, workdir, make_audio):
    """Training clips stop at 60 s; `predict` reads longer recordings window by window, up to --max-seconds."""
    run, _ = trained
    meeting = make_audio("meeting.wav", seconds=75.0, freq=180.0, noise=0.05)
    args = ["predict", str(meeting), "--model", str(run / "model.keras"), "--workers", "1"]
    result = run_cli(args + ["--format", "json"], workdir)
    assert result.exit_code == 0, result.output
    row, = json.loads(result.output)
    assert row["seconds"] == pytest.approx(75.0, abs=0.05) and len(row["timeline"]) >= 30
    result = run_cli(args + ["--max-seconds", "30"], workdir)
    assert result.exit_code == 1
    assert "longer than 30 s (75.0 s)" in result.output and "none of the 1 files" in result.output


def test_evaluate_and_predict_with_test_time_augmentation(trained, crema_subset, workdir):
    """--tta-copies K: each clip's probabilities are the mean over the clip and its augmented copies 1..K."""
    from serkeras.cache import cached_features, compute_clips
    from serkeras.corpus import load_corpus
    from serkeras.effects import TEST_TIME_AUGMENTATION
    from serkeras.evaluation import predict_features
    from serkeras.inference import predict_files
    from serkeras.models import load_model
    from serkeras.splits import make_split
    from sklearn.metrics import confusion_matrix

    run, _ = trained
    model, meta = load_model(run / "model.keras")
    config = meta.feature_config
    report_path = workdir / "tta.json"
    result = run_cli(["evaluate", str(run / "model.keras"), "--data-dir", str(crema_subset), "--split", "actor",
                      "--cache-dir", str(workdir / "cache"), "--json", str(report_path), "--tta-copies", "2"], workdir)
    assert result.exit_code == 0, result.output
    assert "test-time augmentation: each clip + 2 copies" in result.output
    report = json.loads(report_path.read_text())
    test = make_split(load_corpus(crema_subset, None).clips, "actor", 0.1, 0.1, seed=0).test
    versions = [cached_features(test, config, workdir / "cache", progress=False,
                                augmentation=TEST_TIME_AUGMENTATION if k else None, copy=k).of(test)[1]
                for k in range(3)]
    per_version = [predict_features(model, v, config.length_mode, config.fixed_frames) for v in versions]
    assert not np.allclose(per_version[0], per_version[1])  # the copies are other inputs
    labels = np.array(load_corpus(crema_subset, None).label_indices(test))
    assert report["tta_copies"] == 2 and report["n"] == len(test)
    predicted = np.mean(per_version, axis=0).argmax(1)
    assert report["confusion_matrix"] == confusion_matrix(labels, predicted, labels=range(len(meta.labels))).tolist()

    clips = sorted(crema_subset.iterdir())[:3]
    plain, _ = predict_files(model, meta, [str(c) for c in clips], workers=1)
    augmented, _ = predict_files(model, meta, [str(c) for c in clips], workers=1, tta_copies=1)
    copies = [f for _, f in compute_clips([str(c) for c in clips], config, 1, augmentation=TEST_TIME_AUGMENTATION,
                                          copy=1)]
    on_copies = predict_features(model, copies, config.length_mode, config.fixed_frames)
    for before, after, copy in zip(plain, augmented, on_copies):
        assert after.path == before.path and after.seconds == before.seconds
        expected = (np.array(list(before.probabilities.values())) + copy) / 2
        np.testing.assert_allclose(list(after.probabilities.values()), expected, atol=1e-5)


def test_predict_errors(trained, workdir, tmp_path):
    run, _ = trained
    bad = tmp_path / "bad.wav"
    bad.write_bytes(os.urandom(2000))
    empty = tmp_path / "empty"
    (empty / "nested").mkdir(parents=True)
    cases = [
        (["predict", str(bad), "--model", str(run / "model.keras")], "could be used: bad.wav: unreadable audio"),
        (["predict", str(tmp_path / "missing.wav"), "--model", str(run / "model.keras")], "does not exist"),
        (["predict", str(empty), "--model", str(run / "model.keras")], f"folder {empty} holds no files"),
        (["predict", str(tmp_path / "*.flac"), "--model", str(run / "model.keras")], "no files match"),
        # The paths are checked before the model is opened.
        (["predict", str(tmp_path / "*.flac"), "--model", str(tmp_path / "nope.keras")], "no files match"),
        (["predict", str(bad), "--model", str(tmp_path / "nope.keras")], "does not exist"),
        (["predict", str(bad), "--model", str(bad)], "not a .keras file"),
        (["train", "--arch", "nope"], "Invalid value for '--arch'"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0, args
        assert message in result.output, result.output
        assert "Traceback" not in result.output
    # A model where audio belongs is refused before any model is opened, not skipped as unreadable audio.
    for model in (str(run / "model.keras"), "serkeras-crema-d-speaker-norm"):
        result = CliRunner().invoke(main, ["predict", model, str(bad)])
        assert result.exit_code == 2, result.output
        assert f"{model} is a model, not audio: pass it as --model {model}" in result.output
        assert "Traceback" not in result.output


def test_distillation_targets_mix_the_teachers_probabilities_into_the_labels(trained, crema_subset, workdir):
    """Each training clip's target is (1 - w) x its label + w x the teacher's probabilities for that clip, which
    the teacher computes from its own features; the training pipeline then yields these targets."""
    import dataclasses

    from serkeras.api import SplitSettings, load_split
    from serkeras.errors import SerkerasError
    from serkeras.evaluation import predict_features
    from serkeras.features import FeatureConfig
    from serkeras.models import load_model
    from serkeras.training import distillation_targets, prepare_split

    teacher, meta = load_model(trained[0] / "model.keras")
    corpus, split = load_split(str(crema_subset), None, SplitSettings("actor"))
    student = FeatureConfig(hop_length=320, n_mels=40)  # not the teacher's features
    assert student.extraction_key() != meta.feature_config.extraction_key()
    data = prepare_split(corpus, split, student, workdir / "cache", workers=1, progress=False)
    seen = prepare_split(corpus, split, meta.feature_config, workdir / "cache", workers=1, progress=False)
    targets = distillation_targets(data, teacher, seen, 0.25)
    labels = np.asarray(data.parts["train"][2])
    assert targets.shape == (len(labels), len(corpus.labels))
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    for i in (0, len(labels) // 2, len(labels) - 1):  # one clip alone: no batching, no length order
        alone = predict_features(teacher, [seen.parts["train"][1][i]], meta.feature_config.length_mode)[0]
        np.testing.assert_allclose(targets[i], 0.75 * np.eye(len(corpus.labels))[labels[i]] + 0.25 * alone,
                                   atol=1e-5)
    data.targets["train"] = targets
    batches = data.dataset("train", student, 8, ("logmel", "spectral", "lengths"))
    yielded = np.concatenate([y.numpy() for _, y in batches])
    np.testing.assert_allclose(np.sort(yielded, axis=None), np.sort(targets, axis=None), atol=1e-6)
    with pytest.raises(SerkerasError, match="labels"):
        distillation_targets(dataclasses.replace(data, labels=data.labels[::-1]), teacher, seen, 0.25)
    fewer = dataclasses.replace(seen, parts={**seen.parts, "train": tuple(x[1:] for x in seen.parts["train"])})
    with pytest.raises(SerkerasError, match="same training clips"):
        distillation_targets(data, teacher, fewer, 0.25)


def test_train_with_a_teacher(trained, crema_subset, workdir):
    run, _ = trained
    args = ["train", "--data-dir", str(crema_subset), "--split", "actor", "--epochs", "1",
            "--cache-dir", str(workdir / "cache")] + TINY
    result = run_cli(args + ["--run-name", "student", "--teacher", str(run / "model.keras"),
                             "--distill-weight", "0.3"], workdir)
    assert result.exit_code == 0, result.output
    assert f"distilling {run / 'model.keras'} (weight 0.3)" in result.output
    config = json.loads((workdir / "saved_models" / "student" / "config.json").read_text())
    assert config["train_config"]["teacher"] == str(run / "model.keras")
    assert config["train_config"]["distill_weight"] == 0.3
    result = run_cli(args + ["--run-name", "orphan", "--teacher", str(workdir / "nope.keras")], workdir)
    assert result.exit_code == 1 and "nope.keras" in result.output and "Traceback" not in result.output


def test_resume_after_kill(crema_subset, workdir):
    """Kill a run after two epochs; --resume continues from epoch 3, not from the start."""
    args = [sys.executable, "-m", "serkeras.cli", "train", "--data-dir", str(crema_subset), "--split", "actor",
            "--epochs", "40", "--patience", "40", "--run-name", "killed", "--cache-dir", str(workdir / "cache")] + TINY
    history = workdir / "saved_models" / "killed" / "history.csv"
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().strip().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(csv.DictReader(open(history))))
    assert done >= 2
    resumed = subprocess.run(args[:args.index("--epochs")] + ["--run-name", "killed", "--resume",
                                                              "--epochs", str(done + 2)],
                             cwd=workdir, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(history))]
    assert epochs == list(range(done + 2)), epochs
    assert (workdir / "saved_models" / "killed" / "model.keras").is_file()
    # The training time covers the killed session's epochs as well as the resumed ones, each once.
    from serkeras.training import epoch_seconds

    timed = epoch_seconds(workdir / "saved_models" / "killed" / "epoch_seconds.csv")
    metrics = json.loads((workdir / "saved_models" / "killed" / "metrics.json").read_text())
    assert sorted(timed) == list(range(done + 2)) and metrics["timed_epochs"] == done + 2
    assert metrics["train_seconds"] == pytest.approx(sum(timed.values())) and min(timed.values()) > 0


def test_train_with_waveform_augmented_copies_and_mixup(crema_subset, workdir):
    result = run_cli(["train", "--data-dir", str(crema_subset), "--split", "actor", "--epochs", "1",
                      "--run-name", "augmented", "--cache-dir", str(workdir / "cache"), "--augment-copies", "1",
                      "--noise-snr", "5", "20", "--train-seed", "7", "--mixup", "0.2"] + TINY, workdir)
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "saved_models" / "augmented" / "config.json").read_text())
    assert config["train_config"]["augment_copies"] == 1 and config["train_config"]["mixup_alpha"] == 0.2
    assert (config["seed"], config["train_config"]["seed"]) == (0, 7)  # the split's seed, training's seed
    assert config["train_config"]["noise_snr_db"] == [5.0, 20.0]
    assert (workdir / "saved_models" / "augmented" / "model.keras").is_file()


def test_speaker_of_each_grouping(tmp_path):
    from serkeras.inference import speaker_of

    crema, other = tmp_path / "a" / "1001_DFA_ANG_XX.ogg", tmp_path / "b" / "rec_1.wav"
    assert speaker_of(crema) == speaker_of(tmp_path / "z" / "1001_IEO_SAD_HI.wav") != speaker_of(
        tmp_path / "a" / "1002_DFA_ANG_XX.ogg")
    assert speaker_of(other) == speaker_of(other, "folder") == str(tmp_path / "b")
    assert speaker_of(crema, "folder") == str(tmp_path / "a") and speaker_of(other, "prefix") == "rec"
    assert speaker_of(crema, "all") == speaker_of(other, "all")
    assert speaker_of(crema, "file") != speaker_of(tmp_path / "a" / "1001_IEO_SAD_HI.ogg", "file")
    with pytest.raises(ValueError, match="grouping must be one of"):
        speaker_of(crema, "voice")


def test_speaker_normalised_model_is_evaluated_and_predicts_with_its_speakers_means(crema_subset, workdir, tmp_path):
    """--speaker-norm: the saved model says so, and evaluate and predict remove each speaker's mean (and, with
    --speaker-scale, divide by each speaker's deviation) as training did (with --speaker-subsets, which changes
    the training part only)."""
    from serkeras.corpus import load_corpus
    from serkeras.splits import make_split

    result = run_cli(["train", "--data-dir", str(crema_subset), "--split", "actor", "--epochs", "1",
                      "--run-name", "by-speaker", "--cache-dir", str(workdir / "cache"), "--speaker-norm",
                      "--speaker-scale", "--utterance-norm", "none", "--speaker-subsets", "0.5"] + TINY_COMBINED, workdir)
    assert result.exit_code == 0, result.output
    run = workdir / "saved_models" / "by-speaker"
    config = json.loads((run / "config.json").read_text())
    assert config["feature_config"]["speaker_norm"] is config["feature_config"]["speaker_scale"] is True
    assert config["train_config"]["speaker_subsets"] == 0.5
    for option, value in (("--speaker-subsets", "0.5"), ("--speaker-scale", None)):
        refused = CliRunner().invoke(main, ["train", "--data-dir", str(crema_subset), option, *([value] * bool(value)),
                                            "--output-dir", str(tmp_path / "none")])
        assert refused.exit_code == 2 and f"{option} needs --speaker-norm" in refused.output
    report_path = tmp_path / "report.json"
    result = run_cli(["evaluate", str(run / "model.keras"), "--data-dir", str(crema_subset), "--split", "actor",
                      "--cache-dir", str(workdir / "cache"), "--json", str(report_path)], workdir)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["confusion_matrix"] == metrics["test"]["confusion_matrix"]  # normalised as in training
    assert report["speaker_stats"] == "part" and "speaker statistics from the whole corpus" not in result.output
    # The actor split's test actors have all their clips in the test part: statistics from the whole corpus
    # are the same ones. On a random split they are not, and every clip of the evaluated part is scored.
    for split_kind, same in (("actor", True), ("random", False)):
        scores = {"part": report} if split_kind == "actor" else {}  # the default: just evaluated
        for stats in ("part", "corpus"):
            if stats in scores:
                continue
            result = run_cli(["evaluate", str(run / "model.keras"), "--data-dir", str(crema_subset), "--split",
                              split_kind, "--cache-dir", str(workdir / "cache"), "--json", str(report_path),
                              "--speaker-stats", stats], workdir)
            assert result.exit_code == 0, result.output
            assert ("speaker statistics from the whole corpus" in result.output) is (stats == "corpus")
            scores[stats] = json.loads(report_path.read_text())
            assert scores[stats]["speaker_stats"] == stats
        assert scores["part"]["n"] == scores["corpus"]["n"]
        assert (scores["part"]["confusion_matrix"] == scores["corpus"]["confusion_matrix"]) is same, split_kind

    # predict on the test actors' files: grouped by name prefix (CREMA-D's actor), it sees what evaluate saw.
    corpus = load_corpus(crema_subset, None)
    test = make_split(corpus.clips, "actor", 0.1, 0.1, seed=0).test
    for clip in test:
        (tmp_path / "test").mkdir(exist_ok=True)
        (tmp_path / "test" / os.path.basename(clip.path)).symlink_to(clip.path)

    def predicted(grouping):
        result = run_cli(["predict", str(tmp_path / "test"), "--model", str(run / "model.keras"), "--format",
                          "json", "--speaker", grouping], workdir)
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output[result.output.index("[\n"):])  # after any warning line
        return result.output, {os.path.basename(r["path"]): list(r["probabilities"].values()) for r in rows}

    _, by_prefix = predicted("prefix")
    labels = np.array(corpus.label_indices(test))
    guesses = np.array([np.argmax(by_prefix[os.path.basename(c.path)]) for c in test])
    assert np.mean(guesses == labels) == pytest.approx(metrics["test"]["accuracy"])
    # The default finds CREMA-D's actors in the names too; 'all' pools the test actors into one speaker,
    # 'file' makes every file its own: other inputs.
    _, by_default = predicted("auto")
    assert all(np.allclose(by_default[name], by_prefix[name], atol=1e-6) for name in by_prefix)
    assert len({c.speaker for c in test}) >= 2
    for grouping in ("all", "file"):
        output, found = predicted(grouping)
        assert sorted(found) == sorted(by_prefix)
        assert any(not np.allclose(found[name], by_prefix[name], atol=1e-4) for name in found), grouping
        assert ("have one recording only" in output) is (grouping == "file")


def test_same_seed_trains_the_same_and_weight_averaging_is_what_is_validated_and_saved(crema_subset, workdir,
                                                                                       trained):
    result = run_cli(["train", "--data-dir", str(crema_subset), "--split", "actor", "--epochs", "2",
                      "--run-name", "tiny-ema", "--cache-dir", str(workdir / "cache"), "--ema-momentum", "0.5"]
                     + TINY, workdir)
    assert result.exit_code == 0, result.output
    run = workdir / "saved_models" / "tiny-ema"
    assert json.loads((run / "config.json").read_text())["train_config"]["ema_momentum"] == 0.5
    history = list(csv.DictReader(open(run / "history.csv")))
    plain = list(csv.DictReader(open(trained[0] / "history.csv")))
    # The `tiny` run's settings and seed: the first epoch trains identically on CPU (the averaged weights
    # only come in at its end) ...
    training = ("loss", "accuracy", "macro_f1")
    assert [history[0][k] for k in training] == [plain[0][k] for k in training]
    # ... and so do the later ones, up to rounding (TensorFlow swaps the weights in and out by addition);
    # only the averaged weights make validation differ.
    assert [float(r["loss"]) for r in history] == pytest.approx([float(r["loss"]) for r in plain], rel=1e-3)
    assert [r["val_loss"] for r in history] != [r["val_loss"] for r in plain]
    # The checkpoint holds the weights that were validated: reloaded, it scores the best epoch's accuracy.
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in history), abs=1e-6)


def export_checked(run, workdir, export_format, out):
    """Export a run's model through the CLI (which checks the export itself).

    Returns the Keras model and a batch of another length than the command's check uses.
    """
    from serkeras.export import example_inputs
    from serkeras.models import load_model

    result = run_cli(["export", str(run / "model.keras"), "--format", export_format, "--output", str(out)], workdir)
    assert result.exit_code == 0, result.output
    assert "same probabilities" in result.output
    model, _ = load_model(run / "model.keras")
    return model, example_inputs(model, frames=123, seed=5)


def test_export_tf_saved_model_predicts_like_the_keras_file(trained, workdir):
    import tensorflow as tf

    run, _ = trained
    out = workdir / "exported"
    model, inputs = export_checked(run, workdir, "tf_saved_model", out)
    # Independently of the command's own check: real-length inputs through the reloaded SavedModel.
    loaded = tf.saved_model.load(str(out))
    served = loaded.serve([inputs[t.name] for t in model.inputs])
    np.testing.assert_allclose(np.asarray(served), model.predict(inputs, verbose=0), atol=1e-5)


def test_export_errors_are_one_line(trained, workdir, tmp_path):
    run, _ = trained
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    result = run_cli(["export", str(bad)], workdir)
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_export_onnx_without_its_packages_is_one_line(trained, workdir, tmp_path, monkeypatch):
    run, _ = trained
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if `pip install serkeras[export]` was not run
    result = run_cli(["export", str(run / "model.keras"), "--format", "onnx", "--output", str(tmp_path / "m.onnx")],
                     workdir)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().startswith("error: exporting to onnx needs a package that is not installed")


@pytest.fixture(scope="module")
def tiny_onnx(trained, workdir):
    """The trained run's model exported to ONNX through the CLI: (path, Keras model, a batch of other lengths)."""
    pytest.importorskip("onnxruntime")  # installed by the test extra, so CI runs these
    run, _ = trained
    out = workdir / "tiny.onnx"
    model, inputs = export_checked(run, workdir, "onnx", out)
    return out, model, inputs


def test_export_onnx_is_self_contained_and_checked(tiny_onnx):
    import onnxruntime

    out, model, inputs = tiny_onnx
    # Independently of the command's own check: the file asks only for the model's inputs (the
    # standardisation statistics are inside it), and other lengths than the check's give the same.
    session = onnxruntime.InferenceSession(str(out))
    assert [i.name for i in session.get_inputs()] == [t.name for t in model.inputs]
    got = session.run(None, {t.name: inputs[t.name] for t in model.inputs})[0]
    np.testing.assert_allclose(got, model.predict(inputs, verbose=0), atol=1e-5)


def test_predict_runs_an_onnx_export_without_tensorflow_and_predicts_like_the_keras_file(tiny_onnx, trained,
                                                                                         crema_subset, workdir,
                                                                                         tmp_path):
    """`serkeras predict --model FILE.onnx`: the export carries labels and feature settings, ONNX Runtime runs it
    in a process that never imports TensorFlow or Keras, and the probabilities are the .keras file's."""
    import onnx

    from serkeras.inference import predict_files
    from serkeras.models import load_model

    out, model, _ = tiny_onnx
    run, _ = trained
    clips = [str(c) for c in sorted(crema_subset.iterdir())[:5]]
    script = ("import json, sys\n"
              "from serkeras.cli import main\n"
              "try:\n"
              f"    main(['predict', *{clips!r}, '--model', {str(out)!r}, '--format', 'json', '--workers', '1'],\n"
              "         standalone_mode=False)\n"
              "except SystemExit:\n"
              "    pass\n"
              "print('loaded', [m for m in ('tensorflow', 'keras') if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.rstrip().endswith("loaded []"), result.stdout[-500:]
    rows = json.loads(result.stdout[result.stdout.index("["):result.stdout.rindex("loaded")])
    _, meta = load_model(run / "model.keras")
    expected, _ = predict_files(model, meta, clips, workers=1)
    assert [r["path"] for r in rows] == [p.path for p in expected]
    for row, prediction in zip(rows, expected):
        assert row["label"] == prediction.label
        assert row["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-5)

    # An ONNX file that does not say what it predicts (another exporter's, or ours stripped) is refused in one line.
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    refused = run_cli(["predict", clips[0], "--model", str(tmp_path / "bare.onnx")], workdir)
    assert refused.exit_code == 1 and "has no serkeras metadata" in refused.output
    assert "Traceback" not in refused.output
    misplaced = run_cli(["predict", str(out), clips[0]], workdir)
    assert misplaced.exit_code == 2 and "is a model, not audio" in misplaced.output
    # `evaluate` scores the export as it scores the .keras file.
    evaluated = [run_cli(["evaluate", str(m), "--data-dir", str(crema_subset), "--part", "all", "--json",
                          str(tmp_path / f"{i}.json")], workdir) for i, m in enumerate((out, run / "model.keras"))]
    assert all(e.exit_code == 0 for e in evaluated), evaluated[0].output
    reports = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert reports[0]["file"] == str(out) and reports[0]["confusion_matrix"] == reports[1]["confusion_matrix"]


def test_export_litert_is_checked_against_the_keras_model(trained, workdir):
    run, _ = trained
    export_checked(run, workdir, "litert", workdir / "tiny")
    assert (workdir / "tiny.tflite").is_file()  # the exporter's suffix is added


def _tiny_fitted_model(epochs, backup):
    """A two-class dense model fitted for `epochs` with `backup` (an EpochBackup) among its callbacks."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((16, 4)).astype("float32")
    if epochs:
        model.fit(x, np.eye(2)[np.arange(16) % 2], epochs=epochs, verbose=0, callbacks=[backup])
    return model


def test_a_kill_while_the_backup_is_written_leaves_the_last_one_whole(tmp_path):
    """Each epoch's state is written under a temporary name and renamed: a kill mid-write (here the write
    is cut short, then the process "dies") leaves the previous state to resume from."""
    from serkeras.training import EpochBackup

    backup = EpochBackup(tmp_path / "backup")
    model = _tiny_fitted_model(2, backup)
    saved = [w.copy() for w in model.get_weights()]
    real_save = model.save_weights

    def killed_during_write(path, **kwargs):
        real_save(path, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    model.save_weights = killed_during_write
    model.set_weights([w + 1 for w in saved])
    with pytest.raises(KeyboardInterrupt):
        backup.on_epoch_end(2)
    fresh = _tiny_fitted_model(0, None)
    assert EpochBackup(tmp_path / "backup").restore(fresh) == 2
    for got, want in zip(fresh.get_weights(), saved):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "epoch-0001.weights.h5", "epoch-0002.weights.h5", "training_metadata.json"]


def test_an_unreadable_backup_falls_back_to_the_epoch_before_or_says_what_to_do(tmp_path):
    from serkeras.errors import SerkerasError
    from serkeras.training import EpochBackup

    folder = tmp_path / "run" / "backup"
    _tiny_fitted_model(3, EpochBackup(folder))
    latest = folder / "epoch-0003.weights.h5"
    with open(latest, "r+b") as f:
        f.truncate(1000)
    with pytest.warns(UserWarning, match=r"epoch-0003.weights.h5 is unreadable .*state after epoch 2 instead"):
        assert EpochBackup(folder).restore(_tiny_fitted_model(0, None)) == 2
    # A backup written by Keras' BackupAndRestore, cut short: nothing earlier to fall back to.
    cut_short = latest.read_bytes()
    for path in folder.iterdir():
        path.unlink()
    (folder / "latest.weights.h5").write_bytes(cut_short)
    (folder / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    with pytest.raises(SerkerasError, match=r"latest.weights.h5 is unreadable .* no earlier epoch's state is kept; "
                                            r"delete .*run to train the run again"):
        EpochBackup(folder).restore(_tiny_fitted_model(0, None))


def test_one_label_manifest_and_too_small_corpus_are_refused_in_one_line(tmp_path, make_audio, crema_dir,
                                                                         crema_manifest):
    from conftest import copy_clips

    for name in ("a.wav", "b.wav", "c.wav"):
        make_audio(name, folder=tmp_path, seconds=0.5)
    (tmp_path / "one.csv").write_text("path,label\na.wav,joy\nb.wav,joy\nc.wav,joy\n")
    result = run_cli(["train", "--manifest", str(tmp_path / "one.csv")] + TINY, tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "one label only ('joy'): training needs at least two labels" in result.output
    # 36 real clips, 6 of each emotion: 10% is 4 test clips for 6 emotions.
    rows = sorted(crema_manifest.values(), key=lambda r: r["file"])
    chosen = []
    for emotion in sorted({r["emotion"] for r in rows}):
        chosen += [r for r in rows if r["emotion"] == emotion][:6]
    copy_clips(crema_dir, chosen, tmp_path / "small")
    result = run_cli(["train", "--data-dir", str(tmp_path / "small")] + TINY, tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: a random split of 36 clips would give the test part 4 clips for 6 labels, and it needs one clip of "
        "each label: raise --test-fraction to 0.17, or use --split actor")


def test_resuming_a_finished_run_touches_nothing(trained, workdir):
    run, _ = trained
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    result = run_cli(["train", "--resume", "--run-name", "tiny"], workdir)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "run tiny already finished; nothing to resume"
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()} == before


@pytest.fixture(scope="module")
def interrupted(crema_subset, workdir):
    """A run stopped by Ctrl-C (SIGINT) after two finished epochs, its standard output a terminal."""
    import pty
    import shutil
    import threading

    args = [sys.executable, "-m", "serkeras.cli", "train", "--data-dir", str(crema_subset), "--split", "actor",
            "--epochs", "40", "--patience", "40", "--run-name", "ctrl-c", "--cache-dir", str(workdir / "cache")]
    args += [a for a in TINY if a != "--quiet"]
    run = workdir / "saved_models" / "ctrl-c"
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, cwd=workdir, stdout=follower, stderr=subprocess.PIPE, text=True)
    os.close(follower)
    shown = []
    reader = threading.Thread(target=lambda: shown.extend(iter(lambda: _read_pty(leader), b"")), daemon=True)
    reader.start()
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run / "history.csv").is_file() and len((run / "history.csv").read_text().strip().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    reader.join(timeout=5)
    os.close(leader)
    backup = json.loads((run / "backup" / "training_metadata.json").read_text())
    state = types.SimpleNamespace(returncode=proc.returncode, stderr=stderr, epochs=backup["epoch"],
                                  stdout=b"".join(shown).decode(errors="replace"),
                                  history=(run / "history.csv").read_text(), finished=(run / "metrics.json").exists())
    # A copy to damage, before the original is resumed.
    shutil.copytree(run, workdir / "saved_models" / "ctrl-c-damaged")
    return state


def _read_pty(fd):
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal closed with the process
        return b""


def test_ctrl_c_stops_training_keeps_the_finished_epochs_and_exits_130(interrupted):
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    last = interrupted.stderr.strip().splitlines()[-1]
    assert last == (f"interrupted: run ctrl-c: training stopped after {interrupted.epochs} finished epochs "
                    f"(kept in saved_models/ctrl-c/backup); continue it with "
                    f"`serkeras train --resume --run-name ctrl-c`")
    assert "Traceback" not in interrupted.stderr and not interrupted.finished
    # The backup is of the last epoch in the history: the one interrupted left no trace.
    assert interrupted.epochs == len(interrupted.history.strip().splitlines()) - 1 >= 2
    # On a terminal, the epoch shows a progress bar with the time left, not one line at its end.
    assert "━" in interrupted.stdout and "/step" in interrupted.stdout


def test_resume_finds_the_stored_data_and_continues(interrupted, workdir):
    """--resume without --data-dir or --cache-dir: the run's config.json says where its clips are."""
    run = workdir / "saved_models" / "ctrl-c"
    done = interrupted.epochs
    result = run_cli(["train", "--resume", "--run-name", "ctrl-c", "--epochs", str(done + 1), "--quiet"],
                     workdir)
    assert result.exit_code == 0, result.output
    assert [int(row["epoch"]) for row in csv.DictReader(open(run / "history.csv"))] == list(range(done + 1))
    assert (run / "metrics.json").is_file() and not (run / "backup").exists()
    config = json.loads((run / "config.json").read_text())
    assert os.path.isabs(config["data_dir"]) and os.path.isabs(config["cache_dir"])


def test_resume_falls_back_to_the_epoch_before_a_damaged_backup(interrupted, workdir, crema_subset):
    run = workdir / "saved_models" / "ctrl-c-damaged"
    done = interrupted.epochs
    newest = run / "backup" / f"epoch-{done:04d}.weights.h5"
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size // 3)
    result = run_cli(["train", "--resume", "--run-name", "ctrl-c-damaged", "--epochs", str(done + 1),
                      "--data-dir", str(crema_subset), "--quiet"], workdir)
    assert result.exit_code == 0, result.output
    assert f"epoch-{done:04d}.weights.h5 is unreadable" in result.output
    assert f"resuming from the state after epoch {done - 1} instead" in result.output
    # The epoch whose state was lost is trained again, and in the history once.
    assert [int(row["epoch"]) for row in csv.DictReader(open(run / "history.csv"))] == list(range(done + 1))
    assert (run / "metrics.json").is_file()
