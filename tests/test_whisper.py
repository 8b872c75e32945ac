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
