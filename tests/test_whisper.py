"""The Whisper backbone and its checkpoint converters, on tiny random encoders written in every format."""

import numpy as np
import pytest

from serkeras.errors import SerkerasError
from serkeras.models.whisper import load_whisper_backbone, read_checkpoint, whisper_backbone
from serkeras.models.whisper.convert import checkpoint_format
from conftest import OWN_LABELS
from whisper_checkpoints import (numpy_whisper_encoder, random_encoder_weights, write_ctranslate2, write_huggingface,
                                 write_openai)

N_MELS, DIM, HEADS, LAYERS = 6, 16, 2, 3


@pytest.fixture(scope="module")
def weights():
    return random_encoder_weights(np.random.default_rng(0), N_MELS, DIM, LAYERS)


@pytest.fixture(scope="module")
def checkpoints(weights, tmp_path_factory):
    """The same encoder in each format: {format: path}."""
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {"ctranslate2": write_ctranslate2(root / "faster-whisper-tiny", weights, HEADS),
             "huggingface": write_huggingface(root / "whisper-tiny", weights, HEADS)}
    pytest.importorskip("torch")
    paths["openai"] = write_openai(root / "tiny.pt", weights, HEADS)
    return paths


@pytest.mark.parametrize("kind", ["ctranslate2", "huggingface", "openai"])
def test_every_format_reads_into_the_same_weights_and_sizes(kind, checkpoints, weights):
    checkpoint = read_checkpoint(checkpoints[kind])
    assert checkpoint.format == kind == checkpoint_format(checkpoints[kind])
    sizes = checkpoint.sizes
    assert (sizes.n_mels, sizes.dim, sizes.heads, sizes.n_layers) == (N_MELS, DIM, HEADS, LAYERS)
    assert set(checkpoint.weights) == set(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(checkpoint.weights[name], value, err_msg=name)
    assert not any(name.startswith("decoder") for name in checkpoint.weights)


def test_fingerprint_names_the_weights_not_the_format(checkpoints):
    prints = {kind: read_checkpoint(path).fingerprint() for kind, path in checkpoints.items()}
    assert len(set(prints.values())) == 1


def test_ctranslate2_int8_weights_are_dequantized_with_their_scales(weights, tmp_path):
    checkpoint = read_checkpoint(write_ctranslate2(tmp_path / "int8", weights, HEADS, quantize_ffn=True))
    got, expected = checkpoint.weights["layer1/ffn_expand/weight"], weights["layer1/ffn_expand/weight"]
    assert got.dtype == np.float32
    # int8 rounding: within half a step of each row's scale
    np.testing.assert_allclose(got, expected, atol=0.51 * np.abs(expected).max() / 127)


@pytest.mark.parametrize("kind", ["ctranslate2", "huggingface", "openai"])
def test_the_keras_encoder_matches_whispers_definition(kind, checkpoints, weights):
    """Every transpose, the attention split, the strided convolution's padding and the positions, checked end to
    end against a plain-numpy encoder, at the clip's own length and padded in a batch."""
    encoder = load_whisper_backbone(checkpoints[kind], n_layers=2)
    assert len(encoder.outputs) == 3
    rng = np.random.default_rng(1)
    db = rng.uniform(-20, 20, (13, N_MELS)).astype(np.float32)  # odd length: the strided conv's last frame
    expected, _ = numpy_whisper_encoder((db / 10 + 4) / 4, weights, HEADS, n_layers=2)
    padded = np.concatenate([db, rng.normal(0, 50, (9, N_MELS)).astype(np.float32)])
    batch = np.stack([padded, padded])
    *frames, lengths = encoder([batch, np.array([13, 22], np.int32)])
    assert np.asarray(lengths).tolist() == [7, 11]
    got = np.asarray(frames[-1])[0, :7]
    np.testing.assert_allclose(got, expected[-1], atol=2e-4)
    np.testing.assert_allclose(np.asarray(frames[0])[0, :7], expected[0], atol=2e-4)


def test_a_frozen_int8_backbone_round_trips_through_a_keras_file(checkpoints, tmp_path):
    """Its layers' settings travel with it: which layers train, and int8 feed-forward weights."""
    import warnings

    import keras

    from serkeras.models.whisper import freeze_lower_layers

    encoder = load_whisper_backbone(checkpoints["ctranslate2"], n_layers=2)
    freeze_lower_layers(encoder, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        encoder.quantize("int8", filters=lambda layer: isinstance(layer, keras.layers.Dense))
    top_layer = {"layer1_attention_norm", "layer1_attention", "layer1_ffn_norm", "layer1_ffn_expand",
                 "layer1_ffn_project"}
    assert {w.path.split("/")[0] for w in encoder.trainable_weights} == top_layer
    encoder.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras")
    # Reloaded, every layer keeps its flag (Keras 3.15 still lists a frozen MultiHeadAttention's weights as
    # trainable: its sub-layers are built after the flag is restored).
    assert not loaded.get_layer("layer0_attention").trainable and not loaded.get_layer("layer0_ffn_norm").trainable
    assert loaded.get_layer("layer1_attention").trainable
    assert loaded.get_layer("layer0_ffn_expand").quantization_mode == "int8"
    x = np.random.default_rng(2).normal(0, 10, (1, 8, N_MELS)).astype(np.float32)
    lengths = np.array([8], np.int32)
    np.testing.assert_allclose(np.asarray(loaded([x, lengths])[1]), np.asarray(encoder([x, lengths])[1]), atol=1e-6)
    with pytest.raises(SerkerasError, match="cannot fine-tune 3 layers"):
        freeze_lower_layers(whisper_backbone(N_MELS, DIM, HEADS, 2), 3)


def test_bad_checkpoints_are_one_line_errors(checkpoints, weights, tmp_path):
    with pytest.raises(SerkerasError, match="does not exist"):
        read_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SerkerasError, match="holds no Whisper checkpoint"):
        read_checkpoint(tmp_path / "empty")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (checkpoints["ctranslate2"] / "model.bin").read_bytes()
    (truncated / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(SerkerasError, match="truncated"):
        read_checkpoint(truncated)
    from safetensors.numpy import load_file, save_file

    incomplete = write_huggingface(tmp_path / "incomplete", weights, HEADS)
    tensors = load_file(str(incomplete / "model.safetensors"))
    del tensors["model.encoder.layers.1.fc2.weight"]
    save_file(tensors, str(incomplete / "model.safetensors"))
    with pytest.raises(SerkerasError, match="lacks the weight layers.1.fc2.weight"):
        read_checkpoint(incomplete)
    (tmp_path / "broken.pt").write_bytes(b"not a zip file")
    pytest.importorskip("torch")
    with pytest.raises(SerkerasError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "broken.pt")
    with pytest.raises(SerkerasError, match="cannot keep 5"):
        load_whisper_backbone(checkpoints["ctranslate2"], n_layers=5)


# --------------------------------------------------------------------------- --arch whisper from the command line


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A tiny random Whisper (80 mel bands, as the real ones) as a faster-whisper folder."""
    weights = random_encoder_weights(np.random.default_rng(7), 80, DIM, LAYERS)
    return write_ctranslate2(tmp_path_factory.mktemp("encoders") / "faster-whisper-tiny", weights, HEADS)


WHISPER_TRAIN = ["--split", "kfold", "--fold", "0", "--n-folds", "4", "--batch-size", "16", "--quiet", "--workers", "1"]


def test_whisper_trains_frozen_and_fine_tuned_on_a_manifest_and_predicts_from_its_file_alone(
        three_class_manifest, tiny_encoder, workdir, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import run_cli
    from serkeras.models import load_model

    cache = str(workdir / "cache")
    frozen = run_cli(["train", "--arch", "whisper", "--encoder", str(tiny_encoder), "--pooling", "stats",
                      "--manifest", str(three_class_manifest), "--epochs", "2", "--run-name", "whisper-frozen",
                      "--cache-dir", cache] + WHISPER_TRAIN, workdir)
    assert frozen.exit_code == 0, frozen.output
    assert "--arch whisper sets the features" in frozen.output and "n_mels=80" in frozen.output
    run = workdir / "saved_models" / "whisper-frozen"
    model, meta = load_model(run / "model.keras")
    assert meta.labels == ("aroused", "calm", "low") and meta.model_config.encoder_layers == 2
    assert (meta.feature_config.n_fft, meta.feature_config.fmin, meta.feature_config.n_mels) == (400, 0.0, 80)
    encoder = model.get_layer("whisper_encoder")
    assert not any(layer.trainable for layer in encoder.layers if layer.weights)  # only the classifier trained
    # The frozen encoder kept the checkpoint's weights, as the checkpoint alone gives them.
    reference = load_whisper_backbone(tiny_encoder, n_layers=2)
    for got, want in zip(encoder.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0

    tuned = run_cli(["train", "--arch", "whisper", "--encoder", str(tiny_encoder), "--encoder-layers", "3",
                     "--fine-tune-layers", "1", "--layer-pooling", "weighted", "--pooling", "attention",
                     "--quantize", "int8",
                     "--manifest", str(three_class_manifest), "--epochs", "1", "--run-name", "whisper-tuned",
                     "--cache-dir", cache] + WHISPER_TRAIN, workdir)
    assert tuned.exit_code == 0, tuned.output
    tuned_model, _ = load_model(workdir / "saved_models" / "whisper-tuned" / "model.keras")
    tuned_encoder = tuned_model.get_layer("whisper_encoder")
    reference = load_whisper_backbone(tiny_encoder, n_layers=3)
    before = {w.path: np.asarray(w) for w in reference.weights}
    after = {w.path: np.asarray(w) for w in tuned_encoder.weights}
    # Float weights compared (the int8 feed-forward kernels are stored otherwise now).
    changed = {path.split("/")[0] for path, w in after.items()
               if path in before and w.dtype == before[path].dtype and not np.array_equal(w, before[path])}
    assert changed and all(name.startswith("layer2_") for name in changed), changed  # the top layer alone
    assert tuned_encoder.get_layer("layer2_ffn_expand").quantization_mode == "int8"  # and stored as int8
    assert tuned_model.get_layer("probabilities").quantization_mode is None
    assert tuned_model.get_layer("layer_sum").weights

    # The .keras file alone predicts in a fresh process: no checkpoint, no CTranslate2.
    audio = sorted(_manifest_paths(three_class_manifest))[0]
    moved = tmp_path / "model.keras"
    moved.write_bytes((run / "model.keras").read_bytes())
    tiny_encoder_moved = tmp_path / "gone"
    tiny_encoder.rename(tiny_encoder_moved)
    try:
        result = subprocess.run([sys.executable, "-m", "serkeras.cli", "predict", "--model", str(moved), audio,
                                 "--format", "json", "--workers", "1"], capture_output=True, text=True, timeout=300,
                                cwd=tmp_path)
    finally:
        tiny_encoder_moved.rename(tiny_encoder)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["label"] in OWN_LABELS.values()


def _manifest_paths(manifest):
    import csv

    with open(manifest, newline="") as f:
        return [row["path"] for row in csv.DictReader(f)]


def test_whisper_settings_errors_are_one_line(three_class_manifest, tiny_encoder, workdir):
    from conftest import run_cli

    base = ["train", "--arch", "whisper", "--manifest", str(three_class_manifest)] + WHISPER_TRAIN
    result = run_cli(base, workdir)
    assert result.exit_code != 0 and "--arch whisper needs --encoder PATH" in result.output
    result = run_cli(base + ["--encoder", str(tiny_encoder), "--encoder-layers", "4"], workdir)
    assert result.exit_code != 0 and f"has {LAYERS}" in result.output
    result = run_cli(base + ["--encoder", str(tiny_encoder), "--fine-tune-layers", "3"], workdir)
    assert result.exit_code != 0 and "fine_tune_layers must be between 0 and encoder_layers" in result.output


@pytest.mark.parametrize("fine_tune, layer_pooling, pooling", [(0, "last", "stats"), (1, "weighted", "attention"),
                                                               (3, "weighted", "average"), (2, "last", "stats")])
def test_frozen_stages_compute_what_the_whole_model_does_and_train_its_layers(fine_tune, layer_pooling, pooling):
    """The front (frozen layers, run once per clip) and the trained part, run one after the other, give the whole
    model's probabilities; the trained part holds the whole model's trainable layers themselves."""
    import keras

    from serkeras.evaluation import frame_outputs, predict_features
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_whisper, frozen_stages

    config = ModelConfig(arch="whisper", encoder_layers=3, encoder_dim=DIM, attention_heads=HEADS, pooling=pooling,
                         fine_tune_layers=fine_tune, layer_pooling=layer_pooling, dropout=0.2)
    model = build_whisper(FeatureConfig(n_mels=N_MELS, fmin=0.0, n_fft=400), config, ["a", "b", "c"])
    front, trained = frozen_stages(model)
    rng = np.random.default_rng(3)
    clips = [{"logmel": rng.uniform(-80, -20, (n, N_MELS)).astype(np.float32)} for n in (17, 6, 30, 9)]
    staged = frame_outputs(front, clips, batch_size=3)
    assert [len(s["frames0"]) for s in staged] == [9, 3, 15, 5]  # halved, rounded up
    expected_inputs = (3 - fine_tune) if layer_pooling == "weighted" and fine_tune < 3 else 1
    assert len(staged[0]) == expected_inputs
    whole = predict_features(model, clips, "variable")
    np.testing.assert_allclose(predict_features(trained, staged, "variable"), whole, atol=1e-5)
    assert {id(w) for w in trained.trainable_weights} == {id(w) for w in model.trainable_weights}
    trained.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    batch = {f"frames{j}": np.stack([np.pad(s[f"frames{j}"], ((0, 15 - len(s[f"frames{j}"])), (0, 0)))
                                     for s in staged]) for j in range(expected_inputs)}
    trained.train_on_batch({**batch, "lengths": np.array([9, 3, 15, 5], np.int32)}, labels)
    assert not np.allclose(predict_features(model, clips, "variable"), whole, atol=1e-6)  # the whole model learnt


@pytest.mark.parametrize("fine_tune, layer_pooling, pooling, fixed", [
    (0, "last", "stats", True), (0, "last", "average", True), (1, "last", "stats", False),
    (0, "weighted", "stats", False), (0, "last", "attention", False)])
def test_a_fixed_embedding_is_computed_once_and_the_classifier_trained_on_it(
        fine_tune, layer_pooling, pooling, fixed, tmp_path):
    """With nothing trainable below the pooled embedding, the model splits into front, pooling and classifier
    whose chain gives the whole model's probabilities; the classifier holds every trainable weight; training
    reads embeddings (vectors), not frames. Anything trainable below the embedding keeps the frames."""
    from serkeras.evaluation import frame_outputs, predict_features
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_whisper, fixed_embedding_stages
    from serkeras.training import SplitData, trained_part

    config = ModelConfig(arch="whisper", encoder_layers=2, encoder_dim=DIM, attention_heads=HEADS, pooling=pooling,
                         fine_tune_layers=fine_tune, layer_pooling=layer_pooling, dropout=0.2)
    model = build_whisper(FeatureConfig(n_mels=N_MELS, fmin=0.0, n_fft=400), config, ["a", "b", "c"])
    rng = np.random.default_rng(4)
    clips = [{"logmel": rng.uniform(-80, -20, (n, N_MELS)).astype(np.float32)} for n in (17, 6, 30, 9, 12)]
    stages = fixed_embedding_stages(model)
    assert (stages is not None) == fixed
    data = SplitData(("a", "b", "c"), {"train": (list(range(3)), clips[:3], np.array([0, 1, 2])),
                                       "val": (list(range(2)), clips[3:], np.array([2, 0]))}, None,
                     cache_dir=tmp_path)
    trained, staged = trained_part(model, data, batch_size=2, progress=False)
    if not fixed:
        assert "embedding" not in staged.parts["train"][1][0]
        return
    front, pool, head = stages
    embeddings = predict_features(pool, frame_outputs(front, clips), "variable")
    assert embeddings.shape == (5, 2 * DIM if pooling == "stats" else DIM)
    whole = predict_features(model, clips, "variable")
    np.testing.assert_allclose(predict_features(head, [{"embedding": e} for e in embeddings], "variable"), whole,
                               atol=1e-5)
    assert {id(w) for w in head.trainable_weights} == {id(w) for w in model.trainable_weights}
    # Through the cache (frames stored as float16), each clip is one embedding, in clip order.
    assert [list(f) for f in staged.parts["train"][1]] == [["embedding"]] * 3
    got = np.stack([f["embedding"] for part in ("train", "val") for f in staged.parts[part][1]])
    np.testing.assert_allclose(got, embeddings, rtol=5e-3, atol=5e-3)
    assert trained.input_shape == (None, embeddings.shape[1])
    # Mixup mixes frames, which pooling does not commute with: it trains on them.
    _, framed = trained_part(model, data, batch_size=2, mixup_alpha=0.2, progress=False)
    assert "frames0" in framed.parts["train"][1][0]


def test_a_speaker_standardised_classifier_keeps_the_corpora_missing_classes(tmp_path):
    """Its training data keep each part's label masks (partial labels for a corpus that lacks a class) and
    mixup, which mixes frames, is refused."""
    import collections

    from serkeras.errors import SerkerasError
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_whisper
    from serkeras.training import SplitData, trained_part

    config = ModelConfig(arch="whisper", encoder_layers=1, encoder_dim=DIM, attention_heads=HEADS, pooling="stats",
                         speaker_standardization=True)
    model = build_whisper(FeatureConfig(n_mels=N_MELS, fmin=0.0, n_fft=400), config, ["a", "b", "c"])
    Clip = collections.namedtuple("Clip", "speaker")
    rng = np.random.default_rng(6)
    clips = [{"logmel": rng.uniform(-80, -20, (n, N_MELS)).astype(np.float32)} for n in (17, 6, 30, 9)]
    masks = {"train": np.array([[True, True, True], [True, False, True]]), "val": np.ones((2, 3), bool)}
    data = SplitData(("a", "b", "c"), {"train": ([Clip("s1"), Clip("s2")], clips[:2], np.array([0, 2])),
                                       "val": ([Clip("s3"), Clip("s3")], clips[2:], np.array([1, 0]))}, None,
                     cache_dir=tmp_path, label_masks=masks)
    _, staged = trained_part(model, data, batch_size=2, progress=False)
    assert staged.partial_labels and all(np.array_equal(staged.label_masks[k], masks[k]) for k in masks)
    with pytest.raises(SerkerasError, match="--mixup mixes frames"):
        trained_part(model, data, mixup_alpha=0.2, progress=False)


def test_cached_arrays_transform_each_chunk_read_or_computed(tmp_path):
    """A transform sees at most `chunk` items at a time, read or computed; what is stored stays untransformed."""
    from serkeras.cache import cached_arrays

    def compute(indices):
        return [{"x": np.full((3, 2), i, np.float32)} for i in indices]

    seen = []

    def pooled(items):
        seen.append(len(items))
        return [{"mean": item["x"].mean(axis=0)} for item in items]

    keys = [f"k{i}" for i in range(7)]
    cached_arrays(tmp_path, keys[:3], compute, chunk=2)  # three stored
    out = cached_arrays(tmp_path, keys, lambda idx: compute([i for i in idx]), chunk=2, transform=pooled)
    assert [o["mean"].tolist() for o in out] == [[i, i] for i in range(7)]
    assert max(seen) <= 2 and sum(seen) == 7
    again = cached_arrays(tmp_path, keys, compute, chunk=2)
    assert all(o["x"].shape == (3, 2) for o in again)


def test_stage_outputs_are_cached_per_clip_and_stage_and_recomputed_when_corrupt(tmp_path, monkeypatch):
    from serkeras import evaluation, training
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_whisper, frozen_stages

    config = ModelConfig(arch="whisper", encoder_layers=2, encoder_dim=DIM, attention_heads=HEADS, pooling="stats")
    front, _ = frozen_stages(build_whisper(FeatureConfig(n_mels=N_MELS, fmin=0.0, n_fft=400), config, ["a", "b"]))
    rng = np.random.default_rng(5)
    clips = [{"logmel": rng.uniform(-80, -20, (n, N_MELS)).astype(np.float32)} for n in (11, 4, 20)]
    direct = evaluation.frame_outputs(front, clips)
    first = training.stage_outputs(front, clips, tmp_path)
    for got, want in zip(first, direct):
        np.testing.assert_allclose(got["frames0"], want["frames0"], rtol=2e-3, atol=2e-3)  # stored as float16
    entries = sorted((tmp_path).glob("stage-*/*.npz"))
    assert len(entries) == 3
    calls = []
    monkeypatch.setattr(training, "frame_outputs", lambda stage, features, batch_size: calls.append(len(features))
                        or evaluation.frame_outputs(stage, features, batch_size))
    again = training.stage_outputs(front, clips, tmp_path)
    assert calls == [] and all(np.array_equal(a["frames0"], b["frames0"]) for a, b in zip(again, first))
    entries[0].write_bytes(b"cut short")
    training.stage_outputs(front, clips, tmp_path)
    assert calls == [1]
    other = [{"logmel": c["logmel"] + 1.0} for c in clips[:1]]  # other features: another entry
    training.stage_outputs(front, other, tmp_path)
    assert calls == [1, 1] and len(list(tmp_path.glob("stage-*/*.npz"))) == 4


# --------------------------------------------------------------------------- fine-tuned layers' own learning rate

def test_fine_tuned_encoder_layers_step_at_their_own_learning_rate():
    """Adam's first step moves every weight by about its learning rate: the encoder's by --encoder-lr, the
    classifier's by --lr. Both rates, and the optimisers' state, come back from a saved training state."""
    import keras

    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_whisper, frozen_stages
    from serkeras.training import LearningRateLogger, TrainConfig, compile_model

    def trained_part():
        config = ModelConfig(arch="whisper", encoder_layers=2, encoder_dim=DIM, attention_heads=HEADS,
                             pooling="stats", fine_tune_layers=1, dropout=0.0)
        model = build_whisper(FeatureConfig(n_mels=N_MELS, fmin=0.0, n_fft=400), config, ["a", "b", "c"])
        return compile_model(frozen_stages(model)[1], TrainConfig(learning_rate=1e-2, encoder_learning_rate=1e-4),
                             steps_per_epoch=4)

    trained = trained_part()
    rng = np.random.default_rng(0)
    batch = {"frames0": rng.normal(size=(4, 9, DIM)).astype(np.float32), "lengths": np.array([9, 5, 7, 3], np.int32)}
    before = {v.path: keras.ops.convert_to_numpy(v) for v in trained.trainable_variables}
    trained.train_on_batch(batch, np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])
    step = {path: np.abs(keras.ops.convert_to_numpy(v) - before[path]).max()
            for path, v in ((v.path, v) for v in trained.trainable_variables)}
    encoder = {path: s for path, s in step.items() if path.startswith("layer1_")}
    head = {path: s for path, s in step.items() if not path.startswith("layer1_")}
    assert encoder and head and set(head) >= {"probabilities/kernel", "embedding_norm/gamma"}
    assert max(encoder.values()) == pytest.approx(1e-4, rel=0.01)
    assert min(head.values()) == pytest.approx(1e-2, rel=0.01)
    logs = {}
    logger = LearningRateLogger()
    logger.set_model(trained)
    logger.on_epoch_end(0, logs)
    assert logs["learning_rate_encoder"] == pytest.approx(1e-4) and logs["learning_rate"] == pytest.approx(1e-2)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        trained.save_weights(Path(folder) / "state.weights.h5")
        again = trained_part()
        again.optimizer.build(again.trainable_variables)
        again.load_weights(Path(folder) / "state.weights.h5")
    for saved, restored in zip(trained.optimizer.variables, again.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored), keras.ops.convert_to_numpy(saved),
                                      err_msg=saved.path)


def test_encoder_lr_is_stored_and_kept_by_resume(three_class_manifest, tiny_encoder, workdir, monkeypatch):
    import csv
    import json

    from conftest import run_cli
    from serkeras import training

    base = ["train", "--arch", "whisper", "--encoder", str(tiny_encoder), "--pooling", "stats",
            "--fine-tune-layers", "1", "--manifest", str(three_class_manifest), "--cache-dir", str(workdir / "cache"),
            "--lr", "2e-3", "--epochs", "2"] + WHISPER_TRAIN

    def stop_before_the_second_epoch(self, epoch, logs=None):  # as Ctrl-C during it would
        if epoch == 1:
            raise training.TrainingInterrupted(self.backup.epochs_done)

    with monkeypatch.context() as patched:
        patched.setattr(training.StopOnInterrupt, "on_epoch_begin", stop_before_the_second_epoch)
        result = run_cli(base + ["--encoder-lr", "5e-5", "--run-name", "encoder-lr"], workdir)
    assert result.exit_code == 130, result.output
    run = workdir / "saved_models" / "encoder-lr"
    assert json.loads((run / "config.json").read_text())["train_config"]["encoder_learning_rate"] == 5e-5
    result = run_cli(["train", "--resume", "--run-name", "encoder-lr", "--quiet"], workdir)
    assert result.exit_code == 0, result.output
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]  # the second epoch trained after the resume
    assert [float(r["learning_rate_encoder"]) for r in rows] == pytest.approx([5e-5, 5e-5])
    assert [float(r["learning_rate_head"]) for r in rows] == pytest.approx([2e-3, 2e-3])

    # Without --encoder-lr: a tenth of --lr, stored as such.
    result = run_cli(base + ["--run-name", "encoder-lr-default"], workdir)
    assert result.exit_code == 0, result.output
    stored = json.loads((workdir / "saved_models" / "encoder-lr-default" / "config.json").read_text())
    assert stored["train_config"]["encoder_learning_rate"] == pytest.approx(2e-4)
    result = run_cli(base + ["--fine-tune-layers", "0", "--encoder-lr", "1e-4"], workdir)
    assert result.exit_code != 0 and "give --fine-tune-layers too" in result.output


# --------------------------------------------------------------------------- serkeras tune --arch whisper

def test_tune_searches_an_encoder_model_on_cached_frozen_outputs(three_class_manifest, tiny_encoder, workdir,
                                                                 monkeypatch):
    import csv
    import json

    from conftest import run_cli
    from serkeras import evaluation, training
    from serkeras.models import LAYER_POOLINGS, POOLINGS, load_model
    from serkeras.tuning import ENCODER_DROPOUT_GRID, ENCODER_LEARNING_RATE_GRID, FINE_TUNE_GRID
    from test_tune import hparams_of

    def tune(name, *extra):
        return run_cli(["tune", "--arch", "whisper", "--encoder", str(tiny_encoder), "--encoder-layers", "2",
                        "--manifest", str(three_class_manifest), "--cache-dir", str(workdir / "cache"),
                        "--max-trials", "3", "--epochs", "1", "--search-fine-tune", "--search-name", name, *extra]
                       + WHISPER_TRAIN, workdir)

    result = tune("whisper-search")
    assert result.exit_code == 0, result.output
    search = workdir / "saved_models" / "whisper-search"
    with open(search / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        assert float(row["learning_rate"]) in ENCODER_LEARNING_RATE_GRID
        assert float(row["dropout"]) in ENCODER_DROPOUT_GRID and int(row["encoder_layers"]) in (1, 2)
        assert row["layer_pooling"] in LAYER_POOLINGS and row["pooling"] in POOLINGS
        assert int(row["fine_tune_layers"]) in FINE_TUNE_GRID and "activation" not in row
        hparams, _ = hparams_of(workdir / "logs" / "whisper-search" / row["trial_id"])
        assert hparams["encoder_layers"] == int(row["encoder_layers"]) and hparams["pooling"] == row["pooling"]
    # The best trial's whole model (encoder included) at its best epoch, with the searched settings.
    model, meta = load_model(search / "best.keras")
    best = json.loads((search / "best.json").read_text())["hyperparameters"]
    assert (meta.model_config.encoder_layers, meta.model_config.pooling, meta.model_config.layer_pooling,
            meta.model_config.fine_tune_layers) == (best["encoder_layers"], best["pooling"], best["layer_pooling"],
                                                    best["fine_tune_layers"])
    assert model.get_layer("whisper_encoder") is not None

    # The same first trial in a new search reads every frozen layer's output from the cache; a resumed search
    # runs none.
    computed = []
    monkeypatch.setattr(training, "frame_outputs", lambda stage, features, batch_size: computed.append(len(features))
                        or evaluation.frame_outputs(stage, features, batch_size))
    result = tune("whisper-search-again", "--max-trials", "1")
    assert result.exit_code == 0, result.output
    assert computed == []
    searched = ("trial_id", "learning_rate", "dropout", "encoder_layers", "fine_tune_layers", "layer_pooling",
                "pooling")
    with open(workdir / "saved_models" / "whisper-search-again" / "trials.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert [tuple(r[k] for k in searched) for r in again] == [tuple(r[k] for k in searched) for r in rows
                                                               if r["trial_id"] == again[0]["trial_id"]]
    result = tune("whisper-search")
    assert result.exit_code == 0 and "3 completed (kept)" in result.output, result.output
    result = tune("whisper-search", "--search-width")
    assert result.exit_code != 0 and "no width to search" in result.output


# --------------------------------------------------------------------------- export

@pytest.fixture(scope="module")
def whisper_runs(three_class_manifest, tiny_encoder, workdir):
    """{"frozen": run folder, "fine-tuned": run folder} of two one-epoch Whisper runs on the tiny encoder."""
    from conftest import run_cli

    settings = {"frozen": ["--pooling", "stats"],
                "fine-tuned": ["--encoder-layers", "3", "--fine-tune-layers", "1", "--layer-pooling", "weighted",
                               "--pooling", "attention"]}
    runs = {}
    for kind, options in settings.items():
        name = f"whisper-export-{kind}"
        result = run_cli(["train", "--arch", "whisper", "--encoder", str(tiny_encoder), *options, "--manifest",
                          str(three_class_manifest), "--epochs", "1", "--run-name", name, "--cache-dir",
                          str(workdir / "cache")] + WHISPER_TRAIN, workdir)
        assert result.exit_code == 0, result.output
        runs[kind] = workdir / "saved_models" / name
    return runs


# Each model and each format once: the model with more kinds of layer (weighted layers, attentive pooling)
# goes through ONNX, whose converter is the one that misses ops.
@pytest.mark.parametrize("kind, export_format", [("frozen", "tf_saved_model"), ("fine-tuned", "onnx")])
def test_a_trained_whisper_model_exports_and_predicts_like_its_keras_file(whisper_runs, kind, export_format,
                                                                          workdir, tmp_path):
    """The command checks the export on its own batch; here, another: clips of other lengths, padded."""
    if export_format == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
    from conftest import run_cli
    from serkeras.export import example_inputs
    from serkeras.models import load_model

    out = tmp_path / ("whisper.onnx" if export_format == "onnx" else "whisper")
    result = run_cli(["export", str(whisper_runs[kind] / "model.keras"), "--format", export_format, "--output",
                      str(out)], workdir)
    assert result.exit_code == 0, result.output
    assert "same probabilities" in result.output
    model, _ = load_model(whisper_runs[kind] / "model.keras")
    assert [t.name for t in model.inputs] == ["logmel", "lengths"]
    inputs = example_inputs(model, frames=123, batch=3, seed=5)
    inputs["logmel"] = inputs["logmel"] * 20 - 50  # log-mel in dB, as the features give it
    ordered = [inputs[t.name] for t in model.inputs]
    if export_format == "onnx":
        session = onnxruntime.InferenceSession(str(out))
        got = session.run(None, dict(zip([i.name for i in session.get_inputs()], ordered)))[0]
    else:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(out))  # kept: its variables die with it
        got = loaded.serve(ordered)
    np.testing.assert_allclose(np.asarray(got), model.predict(inputs, verbose=0), atol=1e-4)


# --------------------------------------------------------------------------- --speaker-standardization

def test_speaker_standardization_trains_on_cached_embeddings_and_predicts_with_speakers(
        three_class_manifest, tiny_encoder, workdir):
    """Trained from the command line (frozen encoder, the classifier on fixed embeddings); the saved model
    scores the same on evaluate, and predict standardises each file by its speaker's recordings."""
    import json
    import subprocess
    import sys

    from conftest import run_cli
    from serkeras.models import load_model

    base = ["train", "--arch", "whisper", "--encoder", str(tiny_encoder), "--speaker-standardization",
            "--manifest", str(three_class_manifest), "--cache-dir", str(workdir / "cache"), "--epochs", "2"]
    result = run_cli(base + ["--pooling", "stats", "--speaker-prior-clips", "2", "--run-name", "speaker-std"]
                     + WHISPER_TRAIN, workdir)
    assert result.exit_code == 0, result.output
    run = workdir / "saved_models" / "speaker-std"
    model, meta = load_model(run / "model.keras")
    assert meta.model_config.speaker_standardization and meta.model_config.speaker_prior_clips == 2
    assert meta.normalises_by_speaker
    population_mean, population_variance = model.get_layer("speaker_head").get_layer(
        "speaker_standardization").get_weights()
    assert np.abs(population_mean).max() > 0 and not np.allclose(population_variance, 1.0)  # the training speakers'
    # The nested head was compiled for training, with serkeras' partial-label loss when corpora lack classes, and
    # the file keeps that: a fresh interpreter that imports nothing else loads it.
    head = model.get_layer("speaker_head")
    from serkeras.losses import PartialLabelCrossentropy

    head.compile(optimizer="adam", loss=PartialLabelCrossentropy())
    model.save(workdir / "compiled-head.keras")
    script = ("from serkeras.models import load_model\n"
              f"model, meta = load_model({str(workdir / 'compiled-head.keras')!r})\nprint('loaded', meta.labels)")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert loaded.stdout.startswith("loaded"), loaded.stderr[-1500:]

    evaluated = run_cli(["evaluate", str(run / "model.keras"), "--manifest", str(three_class_manifest), "--cache-dir",
                         str(workdir / "cache"), "--json", str(workdir / "speaker-std.json")] + WHISPER_TRAIN[:6],
                        workdir)
    assert evaluated.exit_code == 0, evaluated.output
    stored = json.loads((run / "metrics.json").read_text())["test"]
    assert json.loads((workdir / "speaker-std.json").read_text())["accuracy"] == pytest.approx(stored["accuracy"])

    paths = [p for p in sorted(_manifest_paths(three_class_manifest)) if "/1003_" in p or "/1004_" in p]
    predicted = {}
    for grouping in ("prefix", "file"):
        result = run_cli(["predict", "--model", str(run / "model.keras"), *paths, "--speaker", grouping, "--format",
                          "json", "--workers", "1"], workdir)
        assert result.exit_code == 0, result.output
        predicted[grouping] = json.loads(result.output[result.output.index("["):])
        assert [p["label"] in meta.labels for p in predicted[grouping]] == [True] * len(paths)
    # A speaker's statistics from all their files, or from each file alone: other probabilities.
    assert predicted["prefix"][0]["probabilities"] != predicted["file"][0]["probabilities"]

    result = run_cli(base + ["--pooling", "attention", "--run-name", "speaker-std-attention"] + WHISPER_TRAIN, workdir)
    assert result.exit_code != 0 and "trains the classifier on fixed embeddings" in result.output
    result = run_cli(["train", "--arch", "1d", "--speaker-standardization", "--manifest", str(three_class_manifest)],
                     workdir)
    assert result.exit_code != 0 and "use it with --arch whisper" in result.output
