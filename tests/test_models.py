"""Tests of serkeras.models: layers, registry, sizes, costs and loading, in this process
(TensorFlow unless KERAS_BACKEND says otherwise; every backend: tests/test_backends.py)."""

import importlib.util
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from serkeras.errors import DataError, ModelFileError, SerkerasError
from serkeras.features import FeatureConfig
from serkeras.models import ARCHITECTURES, ModelConfig, build_model, get_builder, load_model, model_metadata
from serkeras.models.cost import flops_per_clip
from serkeras.models.layers import (AttentiveStatisticsPooling, LengthMask, MaskedGlobalAveragePooling,
                                    MaskedGroupNormalization, PooledLengths, TimeMask, UtteranceNormalization)

REPO = Path(__file__).resolve().parents[1]
LABELS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


# --------------------------------------------------------------------------- layers

def _garbage_padded(rng, clips):
    """Stack clips padded with large values, so any leak of padding into a result shows."""
    frames = max(len(c) for c in clips) + 5
    out = np.full((len(clips), frames) + clips[0].shape[1:], 1e3, dtype=np.float32)
    for i, c in enumerate(clips):
        out[i, :len(c)] = c
    return out


def _group_norm_pair(shape, groups, epsilon, seed=0):
    """A MaskedGroupNormalization and a keras GroupNormalization with the same random gamma/beta."""
    rng = np.random.default_rng(seed)
    masked = MaskedGroupNormalization(groups=groups, epsilon=epsilon)
    reference = keras.layers.GroupNormalization(groups=groups, epsilon=epsilon)
    masked.build(shape)
    reference.build(shape)
    gamma = rng.uniform(0.5, 2.0, shape[-1]).astype(np.float32)
    beta = rng.normal(0.0, 1.0, shape[-1]).astype(np.float32)
    masked.gamma.assign(gamma)
    masked.beta.assign(beta)
    reference.gamma.assign(gamma)
    reference.beta.assign(beta)
    return masked, reference


@pytest.mark.parametrize("shape", [(3, 37, 16), (2, 23, 9, 16)], ids=["1d", "2d"])
@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize("epsilon", [1e-5, 1e-3])
def test_masked_group_norm_equals_group_norm_without_lengths(shape, groups, epsilon):
    masked, reference = _group_norm_pair((None,) + shape[1:], groups, epsilon)
    rng = np.random.default_rng(1)
    x = (rng.normal(2.0, 3.0, shape) * rng.uniform(0.1, 5.0, shape[-1])).astype(np.float32)
    got = keras.ops.convert_to_numpy(masked(x))
    want = keras.ops.convert_to_numpy(reference(x))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("tail", [(), (7,)], ids=["1d", "2d"])
@pytest.mark.parametrize("groups", [2, 8])
def test_masked_group_norm_with_lengths_equals_group_norm_on_cropped_clip(tail, groups):
    rng = np.random.default_rng(2)
    # No 1-frame clip: with one channel per group its variance is 0 and both layers just amplify
    # rounding noise by 1/sqrt(epsilon).
    lengths = [41, 6, 2, 23]
    clips = [rng.normal(-1.0, 2.0, (n,) + tail + (8,)).astype(np.float32) for n in lengths]
    masked, reference = _group_norm_pair((None, None) + tail + (8,), groups, 1e-5)
    out = keras.ops.convert_to_numpy(masked(_garbage_padded(rng, clips), np.array(lengths, np.int32)))
    for i, clip in enumerate(clips):
        want = keras.ops.convert_to_numpy(reference(clip[None]))[0]
        np.testing.assert_allclose(out[i, :lengths[i]], want, atol=2e-5, rtol=1e-5, err_msg=f"clip {i}")


def test_masked_group_norm_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="groups"):
        MaskedGroupNormalization(groups=3).build((None, 10, 8))


@pytest.mark.parametrize("tail", [(), (5,)], ids=["1d", "2d"])
def test_masked_global_average_pooling_is_mean_over_real_frames(tail):
    rng = np.random.default_rng(3)
    lengths = [17, 1, 9]
    clips = [rng.normal(0.0, 1.0, (n,) + tail + (6,)).astype(np.float32) for n in lengths]
    pooled = keras.ops.convert_to_numpy(
        MaskedGlobalAveragePooling()(_garbage_padded(rng, clips), np.array(lengths, np.int32)))
    want = np.stack([c.reshape(-1, 6).mean(axis=0) for c in clips])
    np.testing.assert_allclose(pooled, want, atol=1e-5)
    # Without lengths: a plain mean over every axis but batch and channels.
    x = rng.normal(0.0, 1.0, (2, 11) + tail + (6,)).astype(np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(MaskedGlobalAveragePooling()(x)),
                               x.reshape(2, -1, 6).mean(axis=1), atol=1e-5)


@pytest.mark.parametrize("pool_size, lengths, want", [
    (2, [0, 1, 2, 3, 5, 300, 301], [1, 1, 1, 1, 2, 150, 150]),
    (3, [1, 2, 3, 8, 9, 10], [1, 1, 1, 2, 3, 3]),
])
def test_pooled_lengths_floor_divides_with_minimum_one(pool_size, lengths, want):
    layer = PooledLengths(pool_size)
    got = keras.ops.convert_to_numpy(layer(np.array(lengths, np.int32)))
    np.testing.assert_array_equal(got, want)
    assert "int" in str(got.dtype)
    assert PooledLengths.from_config(layer.get_config()).pool_size == pool_size


@pytest.mark.parametrize("tail", [(), (4,)], ids=["1d", "2d"])
def test_time_mask_zeros_padded_frames_only(tail):
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 1.0, (3, 12) + tail + (5,)).astype(np.float32)
    lengths = np.array([12, 4, 1], np.int32)
    out = keras.ops.convert_to_numpy(TimeMask()(x, lengths))
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(out[i, :n], x[i, :n])
        assert not out[i, n:].any(), f"clip {i}: padded frames not zeroed"


@pytest.mark.parametrize("mode", ["mean", "meanvar"])
def test_utterance_normalization_uses_each_clips_real_frames(mode):
    rng = np.random.default_rng(5)
    lengths = [13, 2, 7]
    clips = [rng.normal(4.0, 3.0, (n, 6)).astype(np.float32) for n in lengths]
    layer = UtteranceNormalization(mode)
    out = keras.ops.convert_to_numpy(layer(_garbage_padded(rng, clips), np.array(lengths, np.int32)))
    for i, clip in enumerate(clips):
        want = clip - clip.mean(axis=0)
        if mode == "meanvar":
            want = want / np.sqrt(want.var(axis=0) + layer.epsilon)
        np.testing.assert_allclose(out[i, :len(clip)], want, atol=1e-4)
        assert not out[i, len(clip):].any(), "padding must stay zero"
    assert UtteranceNormalization.from_config(layer.get_config()).mode == mode
    with pytest.raises(ValueError, match="mode"):
        UtteranceNormalization("median")


# The one-frame clip, pooled alone, is a softmax over one frame: Keras warns, and weight 1 is what we want.
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis 1:UserWarning")
def test_attentive_statistics_pooling_ignores_padding_and_weights_frames():
    rng = np.random.default_rng(6)
    lengths = [11, 1, 6]
    clips = [rng.normal(0.0, 2.0, (n, 4)).astype(np.float32) for n in lengths]
    layer = AttentiveStatisticsPooling(units=8)
    padded = _garbage_padded(rng, clips)
    pooled = keras.ops.convert_to_numpy(layer(padded, np.array(lengths, np.int32)))
    assert pooled.shape == (3, 8)
    for i, clip in enumerate(clips):  # each clip alone, unpadded, gives the same vector
        alone = keras.ops.convert_to_numpy(layer(clip[None], np.array([len(clip)], np.int32)))
        np.testing.assert_allclose(pooled[i], alone[0], atol=1e-5)
    # With a zero scoring layer every real frame weighs the same: plain mean and std.
    layer.score.kernel.assign(np.zeros_like(keras.ops.convert_to_numpy(layer.score.kernel)))
    uniform = keras.ops.convert_to_numpy(layer(padded, np.array(lengths, np.int32)))
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(uniform[i, :4], clip.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(uniform[i, 4:], np.sqrt(np.maximum(clip.var(axis=0), 1e-6)), atol=1e-4)


def test_length_mask_marks_real_frames():
    x = np.zeros((3, 5, 2), np.float32)
    mask = keras.ops.convert_to_numpy(LengthMask()(x, np.array([5, 2, 0], np.int32)))
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert mask.dtype == bool


# --------------------------------------------------------------------------- registry and sizes

def test_registry_has_the_study_and_the_newer_architectures():
    assert {"1d", "2d", "combined", "resnet", "crnn", "conformer"} <= set(ARCHITECTURES)
    for arch in ARCHITECTURES:
        assert callable(get_builder(arch))


@pytest.mark.parametrize("setting", [{"pooling": "max"}, {"utterance_norm": "cmvn"}])
def test_model_config_rejects_unknown_pooling_and_normalisation(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        ModelConfig(**setting)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="FLOPs are counted on TensorFlow graphs")
def test_flops_per_clip_grow_with_width_and_clip_length():
    config = FeatureConfig(hop_length=320, n_mels=40)
    small = build_model(config, ModelConfig(arch="resnet", width=0.125), LABELS)
    large = build_model(config, ModelConfig(arch="resnet", width=0.25), LABELS)
    flops = flops_per_clip(small, config, seconds=2.0)
    # The first residual conv alone: 2 * frames * kernel * channels^2 (32 channels, 101 frames, kernel 3).
    assert flops > 2 * 101 * 3 * 32 * 32
    assert flops_per_clip(small, config, seconds=4.0) > 1.8 * flops
    assert flops_per_clip(large, config, seconds=2.0) > 3 * flops


def test_unknown_architecture_raises_serkeras_error():
    with pytest.raises(SerkerasError, match=r"unknown architecture 'lstm'.*1d.*2d.*combined"):
        get_builder("lstm")
    with pytest.raises(SerkerasError, match="unknown architecture"):
        build_model(FeatureConfig(), ModelConfig(arch="transformer"), LABELS)


@pytest.mark.parametrize("groups", [4, 8])
@pytest.mark.parametrize("width", [0.05, 0.1, 0.125, 0.25, 0.33, 0.5, 1.0, 1.7])
def test_scaled_filters_are_multiples_of_groups(width, groups):
    config = ModelConfig(width=width, groups=groups)
    for filters in (config.filters_1d, config.filters_2d, (10, 100, 1000)):
        scaled = config.scaled(filters)
        assert len(scaled) == len(filters)
        for f, s in zip(filters, scaled):
            assert isinstance(s, int) and s % groups == 0 and s >= groups, (f, s)
            if f * width >= groups:  # rounded to the nearest multiple, not clamped
                assert abs(s - f * width) <= groups / 2, (f, width, s)


def test_scaled_is_identity_at_width_one_for_paper_sizes():
    config = ModelConfig()
    assert config.scaled(config.filters_1d) == (128, 256, 512)
    assert config.scaled(config.filters_2d) == (32, 64, 512, 1024)
    assert ModelConfig(width=0.25).scaled(config.filters_2d) == (8, 16, 128, 256)


@pytest.fixture(scope="module")
def paper_models():
    """The three architectures at the study's default sizes (built, never run)."""
    return {arch: build_model(FeatureConfig(), ModelConfig(arch=arch), LABELS) for arch in ("1d", "2d", "combined")}


def _filters(model, layer_type):
    return [layer.filters for layer in model.layers if type(layer) is layer_type]


def test_paper_1d_model_has_the_study_filter_counts(paper_models):
    model = paper_models["1d"]
    assert _filters(model, keras.layers.Conv1D) == [128, 256, 512]
    assert _filters(model, keras.layers.Conv2D) == []
    assert {layer.kernel_size for layer in model.layers if isinstance(layer, keras.layers.Conv1D)} == {(5,)}
    assert [t.name for t in model.inputs] == ["spectral", "lengths"]


def test_paper_2d_model_has_the_study_filter_counts(paper_models):
    model = paper_models["2d"]
    assert _filters(model, keras.layers.Conv2D) == [32, 64, 512, 1024]
    assert _filters(model, keras.layers.Conv1D) == []
    assert {layer.kernel_size for layer in model.layers if isinstance(layer, keras.layers.Conv2D)} == {(3, 3)}
    assert [t.name for t in model.inputs] == ["logmel", "lengths"]


def test_paper_combined_model_has_both_paths_and_layer_norm(paper_models):
    model = paper_models["combined"]
    assert _filters(model, keras.layers.Conv1D) == [128, 256, 512]
    assert _filters(model, keras.layers.Conv2D) == [32, 64, 512, 1024]
    assert any(isinstance(layer, keras.layers.LayerNormalization) for layer in model.layers)
    assert not any(isinstance(layer, keras.layers.LayerNormalization) for layer in paper_models["2d"].layers)
    assert sorted(t.name for t in model.inputs) == ["lengths", "logmel", "spectral"]


def test_paper_models_parameter_counts_and_outputs(paper_models):
    counts = {arch: model.count_params() for arch, model in paper_models.items()}
    assert all(n > 0 for n in counts.values()), counts
    # The combined model holds both paths (its head differs slightly: wider input, LayerNorm).
    assert counts["combined"] > max(counts["1d"], counts["2d"])
    for arch, model in paper_models.items():
        assert model.outputs[0].shape[-1] == len(LABELS), arch
        assert model_metadata(model).labels == tuple(LABELS)
        assert model_metadata(model).model_config == ModelConfig(arch=arch)


@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - {"whisper"}))  # whisper reads whole clips
def test_fixed_mode_models_have_fixed_frames_and_no_lengths_input(arch):
    """Every architecture builds and predicts in fixed mode (tests/backend_checks.py trains only
    `combined` fixed under every backend: the rest differ from their variable graphs in shape only)."""
    feature_config = FeatureConfig(length_mode="fixed", fixed_seconds=1.0)
    model = build_model(feature_config, ModelConfig(arch=arch, width=0.125, head_units=16), LABELS)
    assert "lengths" not in [t.name for t in model.inputs]
    assert {t.shape[1] for t in model.inputs} == {feature_config.fixed_frames}
    rng = np.random.default_rng(0)
    batch = {t.name: rng.normal(size=(2, *t.shape[1:])).astype("float32") for t in model.inputs}
    probabilities = np.asarray(model.predict_on_batch(batch))
    assert probabilities.shape == (2, len(LABELS))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- loading bad files

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny fixed-mode serkeras model saved to .keras."""
    feature_config = FeatureConfig(length_mode="fixed", fixed_seconds=0.5)
    model = build_model(feature_config, ModelConfig(arch="1d", width=0.0625, head_units=8), LABELS)
    path = tmp_path_factory.mktemp("saved") / "tiny.keras"
    model.save(path)
    return path, model, feature_config


def test_load_model_round_trips_a_saved_model(saved_model):
    path, model, feature_config = saved_model
    loaded, metadata = load_model(path)
    assert metadata.labels == tuple(LABELS)
    assert metadata.feature_config == feature_config
    x = np.random.default_rng(5).normal(size=(2, feature_config.fixed_frames, feature_config.n_spectral))
    np.testing.assert_allclose(loaded.predict_on_batch(x.astype(np.float32)),
                               model.predict_on_batch(x.astype(np.float32)), atol=1e-6)


def test_load_model_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"does not exist"):
        load_model(tmp_path / "absent.keras")


def test_load_model_directory_is_not_a_model(tmp_path):
    (tmp_path / "dir.keras").mkdir()
    with pytest.raises(ModelFileError, match=r"does not exist"):
        load_model(tmp_path / "dir.keras")


def test_load_model_wrong_suffix(tmp_path, saved_model):
    path = tmp_path / "model.h5"
    path.write_bytes(saved_model[0].read_bytes())  # a valid archive, but not named .keras
    with pytest.raises(ModelFileError, match=r"not a \.keras file"):
        load_model(path)


def test_load_model_truncated_file(tmp_path, saved_model):
    data = saved_model[0].read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"corrupt or truncated"):
        load_model(path)


def test_load_model_zip_that_is_not_a_keras_archive(tmp_path):
    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(ModelFileError, match=r"cannot load .*other\.keras"):
        load_model(path)


def test_load_model_plain_keras_model_without_metadata(tmp_path):
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")], name="plain")
    path = tmp_path / "plain.keras"
    plain.save(path)
    with pytest.raises(ModelFileError, match=r"'plain' is not a serkeras model \(no serkeras_metadata layer\)"):
        load_model(path)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="FLOPs are counted on TensorFlow graphs")
def test_flops_per_clip_count_the_gru_inside_its_loop():
    config = FeatureConfig(hop_length=320, n_mels=40)
    small = build_model(config, ModelConfig(arch="crnn", width=0.25, rnn_units=16), LABELS)
    large = build_model(config, ModelConfig(arch="crnn", width=0.25, rnn_units=64), LABELS)
    frames = (1 + 32000 // 320) // 8  # a 2 s clip after three halving blocks
    features = 5 * 32 + config.n_spectral  # 40 mels / 8 x 32 filters, plus the pooled spectral columns
    gru = lambda units: 2 * 2 * 3 * (features * units + units * units) * frames  # noqa: E731 (2 directions)
    difference = flops_per_clip(large, config, seconds=2.0) - flops_per_clip(small, config, seconds=2.0)
    # The GRUs make the difference, plus the attention scorer and first dense layer after them.
    assert difference >= gru(64) - gru(16)
    assert difference < 1.5 * (gru(64) - gru(16))


def test_ensemble_averages_its_members_and_reloads(tmp_path):
    from serkeras.models.ensemble import ensemble_model

    config = FeatureConfig(hop_length=320, n_mels=40)
    members = [build_model(config, ModelConfig(arch=arch, width=0.125, head_units=16), LABELS)
               for arch in ("resnet", "resnet", "crnn")]
    ensemble = ensemble_model(members)
    rng = np.random.default_rng(8)
    inputs = {"logmel": rng.normal(0, 1, (3, 60, 40)).astype(np.float32),
              "spectral": rng.normal(0, 1, (3, 60, config.n_spectral)).astype(np.float32),
              "lengths": np.array([60, 31, 12], np.int32)}
    want = np.mean([np.asarray(m.predict_on_batch(inputs)) for m in members], axis=0)
    np.testing.assert_allclose(np.asarray(ensemble.predict_on_batch(inputs)), want, atol=1e-6)
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded, meta = load_model(path)
    assert meta.labels == tuple(LABELS) and meta.feature_config == config and meta.model_config.arch == "ensemble"
    np.testing.assert_allclose(np.asarray(loaded.predict_on_batch(inputs)), want, atol=1e-6)
    # `serkeras ensemble`: the same average from the members' files.
    from serkeras.api import average_models

    for i, member in enumerate(members):
        member.save(tmp_path / f"m{i}.keras")
    average_models([tmp_path / f"m{i}.keras" for i in range(3)], tmp_path / "average.keras")
    np.testing.assert_allclose(np.asarray(load_model(tmp_path / "average.keras")[0].predict_on_batch(inputs)), want,
                               atol=1e-6)
    with pytest.raises(SerkerasError, match="two or more models"):
        average_models([tmp_path / "m0.keras"], tmp_path / "one.keras")
    with pytest.raises(SerkerasError, match="saved as a .keras file"):
        average_models([tmp_path / "m0.keras", tmp_path / "m1.keras"], tmp_path / "average.h5")
    with pytest.raises(SerkerasError, match="labels"):
        ensemble_model([members[0], build_model(config, ModelConfig(arch="resnet", width=0.125), LABELS[::-1])])
    with pytest.raises(SerkerasError, match="feature settings"):
        ensemble_model([members[0], build_model(FeatureConfig(), ModelConfig(arch="resnet", width=0.125), LABELS)])


def test_an_ensemble_of_an_ensemble_weighs_every_member_alike(tmp_path):
    from serkeras.models.ensemble import ensemble_members, ensemble_model

    config = FeatureConfig(hop_length=320, n_mels=40)
    members = [build_model(config, ModelConfig(arch=arch, width=0.125, head_units=16), LABELS)
               for arch in ("resnet", "crnn", "crnn")]
    pair = ensemble_model(members[:2])
    pair.save(tmp_path / "pair.keras")
    pair = load_model(tmp_path / "pair.keras")[0]
    assert [m.name for m in ensemble_members(pair)] == [f"member1_{members[0].name}", f"member2_{members[1].name}"]
    assert ensemble_members(members[2]) == [members[2]]
    nested = ensemble_model([pair, members[2]])
    assert [layer.name for layer in nested.layers if isinstance(layer, keras.Model)] == [
        f"member{i}_{m.name}" for i, m in enumerate(members, 1)]
    rng = np.random.default_rng(9)
    inputs = {"logmel": rng.normal(0, 1, (2, 50, 40)).astype(np.float32),
              "spectral": rng.normal(0, 1, (2, 50, config.n_spectral)).astype(np.float32),
              "lengths": np.array([50, 20], np.int32)}
    # Equal thirds, not half for the pair and a quarter for each of its members.
    want = np.mean([np.asarray(m.predict_on_batch(inputs)) for m in members], axis=0)
    np.testing.assert_allclose(np.asarray(nested.predict_on_batch(inputs)), want, atol=1e-6)


def test_model_benchmark_reports_cost_and_throughput(tmp_path):
    """benchmarks/models.py runs with the recipes' options and reports the shared FLOP count."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"
    spec = importlib.util.spec_from_file_location("benchmark_models", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    output = tmp_path / "models.txt"
    benchmark.main(["--width", "0.0625", "--arch", "crnn", "1d", "--hop-length", "320", "--n-mels", "40",
                    "--pitch", "--pooling", "attention", "--warmup", "1", "--steps", "1", "--min-seconds", "0",
                    "--output", str(output)])
    table = [line.split() for line in output.read_text().splitlines()]
    rows = {row[0]: row for row in table if len(row) == 6 and row[0] in ARCHITECTURES}
    assert set(rows) == {"crnn", "1d"}
    assert "151 frames, 40 mels, 67 spectral features" in output.read_text()
    config = FeatureConfig(length_mode="fixed", fixed_seconds=3.0, hop_length=320, n_mels=40, pitch=True)
    model = build_model(config, ModelConfig(arch="crnn", width=0.0625, pooling="attention"), LABELS)
    assert float(rows["crnn"][3].replace(",", "")) == pytest.approx(flops_per_clip(model, config, 3.0) / 1e6, abs=0.1)
    assert all(float(row[4]) > 0 and float(row[5]) > 0 for row in rows.values())  # samples/s measured


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="LiteRT export traces TensorFlow graphs")
def test_a_litert_export_with_tensorflow_ops_is_written_but_said_unchecked(tmp_path):
    """The GRU of `crnn` becomes a loop of TensorFlow ops that pip's LiteRT interpreters cannot run."""
    from serkeras.export import UncheckedExport, check_export, export_model

    model = build_model(FeatureConfig(hop_length=320, n_mels=40), ModelConfig(arch="crnn", width=0.0625), LABELS)
    path = export_model(model, tmp_path / "crnn.tflite", "litert")
    assert path.stat().st_size > 0
    with pytest.raises(UncheckedExport, match=r"TensorFlow ops \(FlexTensorList\w+.*\) that need LiteRT's Flex"):
        check_export(model, path, "litert")


# --------------------------------------------------------------------------- whisper

WHISPER_FEATURES = FeatureConfig(n_mels=12, n_fft=400, win_length=400, fmin=0.0, audio_normalization="none")


def test_pooled_lengths_with_ceil_counts_a_partial_last_window():
    layer = PooledLengths(2, ceil=True)
    got = keras.ops.convert_to_numpy(layer(np.array([1, 2, 3, 300, 301], np.int32)))
    np.testing.assert_array_equal(got, [1, 1, 2, 150, 151])
    assert PooledLengths.from_config(layer.get_config()).ceil


def test_whisper_scaling_floors_eight_decades_below_each_clips_own_peak():
    from serkeras.models.layers import WhisperScaling

    rng = np.random.default_rng(0)
    clips = [rng.uniform(-120, -20, (9, 4)).astype(np.float32), rng.uniform(-90, -30, (6, 4)).astype(np.float32)]
    got = keras.ops.convert_to_numpy(WhisperScaling()(_garbage_padded(rng, clips), np.array([9, 6], np.int32)))
    for i, clip in enumerate(clips):
        decades = clip / 10.0
        np.testing.assert_allclose(got[i, :len(clip)], (np.maximum(decades, decades.max() - 8.0) + 4.0) / 4.0, rtol=1e-6)


def test_masked_statistics_are_mean_and_std_over_real_frames():
    from serkeras.models.layers import MaskedStatistics

    rng = np.random.default_rng(1)
    clips = [rng.normal(size=(n, 3)).astype(np.float32) for n in (7, 2, 1)]
    got = keras.ops.convert_to_numpy(MaskedStatistics()(_garbage_padded(rng, clips), np.array([7, 2, 1], np.int32)))
    want = [np.concatenate([c.mean(axis=0), c.std(axis=0)]) for c in clips]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sinusoidal_positions_are_whispers_table():
    from serkeras.models.layers import SinusoidalPositions

    layer = SinusoidalPositions()
    out = keras.ops.convert_to_numpy(layer(np.zeros((1, 3, 8), np.float32)))[0]
    np.testing.assert_allclose(out[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    # Frequencies fall geometrically from 1 to 1/10000 over the four sine channels.
    np.testing.assert_allclose(out[2, :4], np.sin(2 * 10000.0 ** (-np.arange(4) / 3)), rtol=1e-6)
    np.testing.assert_allclose(out[2, 4:], np.cos(2 * 10000.0 ** (-np.arange(4) / 3)), rtol=1e-6)


def test_whisper_model_ignores_padding_and_round_trips_through_a_keras_file(tmp_path):
    from serkeras.models import build_whisper

    config = ModelConfig(arch="whisper", encoder_layers=2, encoder_dim=16, attention_heads=2, pooling="stats")
    model = build_whisper(WHISPER_FEATURES, config, LABELS)
    assert [i.name for i in model.inputs] == ["logmel", "lengths"] and model.output_shape == (None, len(LABELS))
    rng = np.random.default_rng(2)
    clips = [rng.uniform(-100, -20, (n, 12)).astype(np.float32) for n in (21, 8, 5)]
    lengths = np.array([len(c) for c in clips], np.int32)
    batch = keras.ops.convert_to_numpy(model([_garbage_padded(rng, clips), lengths]))
    alone = [keras.ops.convert_to_numpy(model([c[None], lengths[i:i + 1]]))[0] for i, c in enumerate(clips)]
    np.testing.assert_allclose(batch, alone, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "whisper.keras")
    loaded, metadata = load_model(tmp_path / "whisper.keras")
    assert metadata.model_config == config and metadata.feature_config.fmin == 0.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded([_garbage_padded(rng, clips), lengths])), batch, rtol=1e-5)


def test_speaker_standardization_shrinks_a_speakers_statistics_towards_the_population():
    from serkeras.models.layers import SpeakerStandardization

    rng = np.random.default_rng(3)
    x, mean = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    variance = rng.uniform(0.5, 2, (3, 4)).astype(np.float32)
    count = np.array([[1.0], [4.0], [400.0]], np.float32)
    population = [rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)]
    layer = SpeakerStandardization(prior_clips=4)
    layer.build(x.shape)
    layer.set_weights(population)
    got = keras.ops.convert_to_numpy(layer(x, mean, variance, count))
    shrunk_mean = (count * mean + 4 * population[0]) / (count + 4)
    shrunk_variance = (count * variance + 4 * population[1]) / (count + 4)
    np.testing.assert_allclose(got, (x - shrunk_mean) / np.sqrt(shrunk_variance), rtol=1e-5)
    # Without a prior it is each speaker's own z-score; a lone recording's own statistics leave nothing.
    plain = SpeakerStandardization()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x, mean, variance, count)),
                               (x - mean) / np.sqrt(variance), rtol=1e-5)
    assert SpeakerStandardization.from_config(layer.get_config()).prior_clips == 4
    with pytest.raises(ValueError, match="prior_clips"):
        SpeakerStandardization(-1)


def test_a_speaker_standardised_whisper_model_predicts_in_two_stages_and_reloads(tmp_path):
    """`predict_features` embeds every clip, takes each speaker's statistics over their clips (or over reference
    clips) and runs the head: the same as the whole model given those statistics, before and after reloading."""
    from serkeras.evaluation import predict_features
    from serkeras.speakers import embedding_speaker_stats, speaker_input_arrays
    from serkeras.models import SPEAKER_INPUTS, build_whisper, speaker_stages

    config = ModelConfig(arch="whisper", encoder_layers=1, encoder_dim=16, attention_heads=2, pooling="stats",
                         speaker_standardization=True, speaker_prior_clips=2)
    model = build_whisper(WHISPER_FEATURES, config, LABELS)
    assert [i.name for i in model.inputs] == ["logmel", "lengths", *SPEAKER_INPUTS]
    rng = np.random.default_rng(4)
    embedder, head = speaker_stages(model)
    head.get_layer("speaker_standardization").set_weights([rng.normal(size=32), rng.uniform(0.5, 2, 32)])
    head.get_layer("probabilities").set_weights([rng.normal(size=(32, 6)), rng.normal(size=6)])
    clips = [{"logmel": rng.uniform(-100, -20, (n, 12)).astype(np.float32)} for n in (21, 8, 5, 13)]
    speakers = ["a", "b", "a", "a"]
    embeddings = keras.ops.convert_to_numpy(embedder.predict(
        [_garbage_padded(rng, [c["logmel"] for c in clips]), np.array([21, 8, 5, 13], np.int32)], verbose=0))
    stats = embedding_speaker_stats(embeddings, speakers)
    assert stats["a"][2] == 3 and stats["b"][2] == 1
    np.testing.assert_allclose(stats["a"][0], embeddings[[0, 2, 3]].mean(axis=0), rtol=1e-5)
    whole = [keras.ops.convert_to_numpy(model.predict(
        [c["logmel"][None], np.array([len(c["logmel"])], np.int32), *speaker_input_arrays([s], stats)], verbose=0))[0]
        for c, s in zip(clips, speakers)]
    got = predict_features(model, clips, "variable", speakers=speakers)
    np.testing.assert_allclose(got, whole, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="standardises by speaker"):
        predict_features(model, clips, "variable")
    # Statistics from reference clips: speaker "a" from its first clip alone.
    alone = predict_features(model, clips, "variable", speakers=speakers, reference=(clips[:2], ["a", "b"]))
    np.testing.assert_allclose(alone[1], got[1], rtol=1e-5)
    assert not np.allclose(alone[3], got[3], atol=1e-4)
    with pytest.raises(DataError, match="no reference recordings of 1 speakers"):
        predict_features(model, clips, "variable", speakers=speakers, reference=(clips[:1], ["a"]))
    model.save(tmp_path / "speaker.keras")
    loaded, metadata = load_model(tmp_path / "speaker.keras")
    assert metadata.model_config == config
    np.testing.assert_allclose(predict_features(loaded, clips, "variable", speakers=speakers), got, rtol=1e-5)
    assert speaker_stages(build_whisper(WHISPER_FEATURES, ModelConfig(arch="whisper", encoder_layers=1, encoder_dim=16,
                                                                      attention_heads=2), LABELS)) is None


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports trace TensorFlow graphs")
def test_whisper_model_with_int8_feed_forward_exports_to_onnx_and_says_why_litert_fails(tmp_path):
    """The shipped Whisper model's kind of graph: GELU through erf (tf2onnx has no erfc) and int8 Dense layers."""
    import warnings

    pytest.importorskip("onnxruntime")
    from serkeras.export import check_export, export_model, export_tolerance, quantized_layers
    from serkeras.models import build_whisper

    model = build_whisper(WHISPER_FEATURES, ModelConfig(arch="whisper", encoder_layers=1, encoder_dim=16,
                                                        attention_heads=2), LABELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.quantize("int8", filters=lambda layer: isinstance(layer, keras.layers.Dense)
                       and layer.name != "probabilities")
    assert export_tolerance(model) == 1e-3 and quantized_layers(model) == ["layer0_ffn_expand", "layer0_ffn_project"]
    for export_format, name in (("onnx", "w.onnx"), ("tf_saved_model", "w_saved_model")):
        path = export_model(model, tmp_path / name, export_format)
        assert check_export(model, path, export_format) < export_tolerance(model)
    # The int8 kernels stay int8 in the ONNX file (the exporter writes them as float32): a smaller file, same values.
    import onnx

    stored = onnx.load(str(tmp_path / "w.onnx")).graph.initializer
    int8 = [t.name for t in stored if t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) == 16 * 64]
    assert len(int8) == 2 and all("ffn" in name for name in int8), int8
    # ... and they multiply integers (`integer_matrix_products`): check_export above found the same probabilities.
    assert [n.op_type for n in onnx.load(str(tmp_path / "w.onnx")).graph.node].count("MatMulInteger") == 2
    # LiteRT's converter has no fully-connected op for Keras' int8 activations: said before trying, in one line.
    with pytest.raises(SerkerasError, match=r"^LiteRT's converter cannot convert Keras' int8-quantized layers"):
        export_model(model, tmp_path / "w.tflite", "litert")


def test_int8_layers_multiply_their_integers_in_float_and_predict_as_keras_int8_does(tmp_path):
    """`load_model` (and `quantize_dense`) run an int8 Dense layer's product on float32 copies of the same integers,
    the fast product on CPUs: the file is unchanged and the probabilities are Keras' int8 ones."""
    from serkeras.models import build_whisper, load_model
    from serkeras.models.saving import graph_layers, quantize_dense

    model = build_whisper(WHISPER_FEATURES, ModelConfig(arch="whisper", encoder_layers=1, encoder_dim=16,
                                                        attention_heads=2), LABELS)
    quantize_dense(model)
    model.save(tmp_path / "int8.keras")
    as_keras = keras.saving.load_model(tmp_path / "int8.keras", compile=False, safe_mode=True)
    ours, _ = load_model(tmp_path / "int8.keras")

    def quantizer_dtypes(m):
        return [layer.inputs_quantizer.output_dtype for layer in graph_layers(m)
                if getattr(layer, "quantization_mode", None) == "int8"]

    assert quantizer_dtypes(as_keras) == ["int8", "int8"] and quantizer_dtypes(ours) == quantizer_dtypes(model) == [
        "float32", "float32"]
    rng = np.random.default_rng(0)
    inputs = {"logmel": rng.normal(-0.5, 0.4, (3, 96, WHISPER_FEATURES.n_mels)).astype("float32"),
              "lengths": np.array([96, 60, 17], np.int32)}
    expected = np.asarray(as_keras.predict_on_batch(inputs))
    np.testing.assert_allclose(np.asarray(ours.predict_on_batch(inputs)), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(inputs)), expected, atol=1e-6)
    model.save(tmp_path / "again.keras")  # what is saved is Keras' int8 layer, as before
    again = keras.saving.load_model(tmp_path / "again.keras", compile=False, safe_mode=True)
    assert quantizer_dtypes(again) == ["int8", "int8"]


@pytest.mark.parametrize("upper, rewritten", [(127.0, True), (200.0, False), (126.5, False)])
def test_int8_products_run_on_integers_only_where_the_inputs_are_clipped_whole_numbers(upper, rewritten):
    """`integer_matrix_products` on a hand-made graph: Round, Min(upper), Max(-127), MatMul by int8-valued weights
    becomes MatMulInteger with the same result; bounds outside [-128, 127] or not whole leave the MatMul alone."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from serkeras.export import compact_onnx_weights, integer_matrix_products

    rng = np.random.default_rng(0)
    kernel = rng.integers(-127, 128, (64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Round", ["x"], ["rounded"]), helper.make_node("Min", ["rounded", "upper"], ["low"]),
         helper.make_node("Max", ["low", "lower"], ["clipped"]), helper.make_node("MatMul", ["clipped", "kernel"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
        [numpy_helper.from_array(np.array(upper, np.float32), "upper"),
         numpy_helper.from_array(np.array(-127.0, np.float32), "lower"), numpy_helper.from_array(kernel, "kernel")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.standard_normal((8, 64)) * 80).astype(np.float32)

    def run(model):
        onnx.checker.check_model(model)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    expected = run(proto)
    assert compact_onnx_weights(proto) == 1
    assert integer_matrix_products(proto) == int(rewritten)
    assert ("MatMulInteger" in [n.op_type for n in proto.graph.node]) == rewritten
    np.testing.assert_array_equal(run(proto), expected)
