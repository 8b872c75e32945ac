"""Recording level: active speech level, level normalisation that travels with a model, and the robustness
evaluation (`evaluate --perturb`) that shows what a gain, noise, a telephone band or a room do to a model."""

import json
from pathlib import Path

import numpy as np
import pytest

from serkeras.audio import AudioError, active_speech_level, load_audio, scale_to_level
from serkeras.cache import compute_clip
from serkeras.corpus import CREMA_D_LABELS, load_crema_d
from serkeras.effects import Perturbation, apply_gain
from serkeras.features import FeatureConfig, extract_features

SHIPPED_CREMA_D_WHISPER = Path(__file__).resolve().parents[1] / "saved_models" / "serkeras-crema-d-whisper.keras"


def _tone_with_pauses(seconds_on=0.5, pauses=3, amplitude=0.1, sample_rate=16000, noise=1e-4, pause_factor=1):
    """Bursts of a 200 Hz tone separated by near-silence `pause_factor` times as long."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds_on * sample_rate)) / sample_rate
    burst = amplitude * np.sin(2 * np.pi * 200 * t)
    silence = np.zeros(len(burst) * pause_factor)
    wave = np.concatenate([part for _ in range(pauses) for part in (burst, silence)])
    return (wave + noise * rng.standard_normal(len(wave))).astype(np.float32)


def test_active_level_is_the_level_of_the_speech_not_of_the_pauses():
    wave = _tone_with_pauses(amplitude=0.1)
    sine_level = 20 * np.log10(0.1 / np.sqrt(2))  # -23.0 dBFS
    # Half the clip is near-silence: the mean level is 3 dB lower. Active are the bursts and the 200 ms
    # hangover after each (P.56's): 0.7 of the clip, so the active level is the mean level + 1.5 dB.
    mean_level = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2))
    assert mean_level == pytest.approx(sine_level - 3.0, abs=0.1)
    assert active_speech_level(wave, 16000) == pytest.approx(mean_level - 10 * np.log10(0.7), abs=0.1)
    # Longer pauses do not lower it.
    assert active_speech_level(_tone_with_pauses(amplitude=0.1, pause_factor=4), 16000) == pytest.approx(
        mean_level - 10 * np.log10(0.7), abs=0.1)


@pytest.mark.parametrize("gain_db", [-20.0, 20.0, 37.0])
def test_a_gain_moves_the_active_level_by_exactly_that_gain(gain_db, crema_dir):
    wave = load_audio(crema_dir / "1003_DFA_ANG_XX.ogg", normalize="none")
    level = active_speech_level(wave, 16000)
    assert active_speech_level(apply_gain(wave, gain_db), 16000) == pytest.approx(level + gain_db, abs=1e-3)
    levelled = scale_to_level(apply_gain(wave, gain_db), 16000, -26.0)
    assert active_speech_level(levelled, 16000) == pytest.approx(-26.0, abs=1e-3)
    assert levelled.dtype == np.float32


def test_silent_and_too_short_audio_cannot_be_levelled():
    with pytest.raises(AudioError, match="silent"):
        active_speech_level(np.zeros(16000, np.float32), 16000)
    with pytest.raises(AudioError, match="too short to measure its level"):
        active_speech_level(np.full(100, 0.1, np.float32), 16000)
    with pytest.raises(AudioError, match="no speech to measure"):
        active_speech_level(np.full(16000, 1e-6, np.float32), 16000)


def test_the_setting_keeps_existing_cache_keys_and_round_trips():
    # The keys every feature cache written before the setting existed holds (FeatureConfig's defaults, and
    # Whisper's log-mel as the shipped default model uses it): they must not change.
    assert FeatureConfig().extraction_key() == "c6e6e7a620c192b7"
    old = FeatureConfig().to_dict()
    del old["level_dbfs"]
    assert FeatureConfig.from_dict(old) == FeatureConfig()
    levelled = FeatureConfig(level_dbfs=-26)
    assert levelled.extraction_key() != FeatureConfig().extraction_key()
    assert FeatureConfig.from_dict(json.loads(json.dumps(levelled.to_dict()))) == levelled
    for bad in (-80.0, 3.0):
        with pytest.raises(ValueError, match="level_dbfs"):
            FeatureConfig(level_dbfs=bad)


def test_levelled_features_do_not_change_with_a_gain_of_20_db(crema_dir):
    config = FeatureConfig(audio_normalization="none", level_dbfs=-26.0)
    path = crema_dir / "1003_DFA_ANG_XX.ogg"
    features = compute_clip(path, config, kinds=("logmel",))["logmel"]
    for gain in (-20.0, 20.0):
        perturbed = compute_clip(path, config, kinds=("logmel",), perturbation=Perturbation("gain", gain))["logmel"]
        np.testing.assert_allclose(perturbed, features, atol=1e-3)
    as_recorded = compute_clip(path, FeatureConfig(audio_normalization="none"), kinds=("logmel",))["logmel"]
    louder = compute_clip(path, FeatureConfig(audio_normalization="none"), kinds=("logmel",),
                          perturbation=Perturbation("gain", 20.0))["logmel"]
    np.testing.assert_allclose(louder, as_recorded + 20.0, atol=1e-3)  # without the setting, the level goes through


def test_perturbations_parse_apply_and_refuse_bad_settings():
    assert Perturbation.parse("gain:-20") == Perturbation("gain", -20.0)
    assert Perturbation.parse("telephone") == Perturbation("telephone")
    assert str(Perturbation.parse("noise:10")) == "noise at 10 dB SNR"
    for bad in ("gain", "loud:3", "reverb:0", "telephone:3", "gain:x"):
        with pytest.raises(ValueError):
            Perturbation.parse(bad)
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    low, speech_band = np.sin(2 * np.pi * 100 * t), np.sin(2 * np.pi * 1000 * t)
    telephone = Perturbation("telephone")
    assert np.std(telephone.apply(low, 16000, rng)) < 0.2 * np.std(low)
    assert np.std(telephone.apply(speech_band, 16000, rng)) == pytest.approx(np.std(speech_band), rel=0.05)
    reverb = Perturbation("reverb", 0.5)
    wet = reverb.apply(speech_band.astype(np.float32), 16000, reverb.rng("a.wav"))
    again = reverb.apply(speech_band.astype(np.float32), 16000, reverb.rng("a.wav"))
    assert wet.shape == speech_band.shape and wet.dtype == np.float32
    np.testing.assert_array_equal(wet, again)
    assert not np.allclose(wet, speech_band, atol=0.05)


@pytest.fixture(scope="module")
def levelled_model(tmp_path_factory):
    """An untrained tiny variable-length model on log-mels levelled to -26 dBFS, saved to .keras."""
    from serkeras.models import ModelConfig, build_model

    config = FeatureConfig(audio_normalization="none", n_mels=32, level_dbfs=-26.0)
    path = tmp_path_factory.mktemp("levelled") / "levelled.keras"
    build_model(config, ModelConfig(arch="2d", width=0.0625, head_units=8), CREMA_D_LABELS).save(path)
    return path


def test_a_levelled_model_keeps_its_setting_and_predictions_through_a_gain(levelled_model, real_clips, tmp_path):
    from serkeras.evaluation import robustness_report
    from serkeras.models import load_model

    model, meta = load_model(levelled_model)
    assert meta.feature_config.level_dbfs == -26.0
    corpus = load_crema_d(real_clips.folder)
    clips = corpus.clips[:4]
    perturbations = [Perturbation("gain", -20.0), Perturbation("gain", 20.0), Perturbation("noise", 20.0),
                     Perturbation("telephone"), Perturbation("reverb", 0.4)]
    rows = robustness_report(model, meta, corpus, clips, perturbations, cache_dir=tmp_path / "cache")
    assert [row["condition"] for row in rows] == ["as recorded", "gain -20 dB", "gain +20 dB", "noise at 20 dB SNR",
                                                  "telephone band", "reverb, RT60 0.4 s"]
    assert all(row["n"] == 4 and row["skipped"] == 0 for row in rows)
    assert rows[1]["accuracy"] == rows[2]["accuracy"] == rows[0]["accuracy"]

    from serkeras.evaluation import predict_clips

    _, recorded = predict_clips(model, meta, clips, cache_dir=tmp_path / "cache")
    for gain in (-20.0, 20.0):
        _, scaled = predict_clips(model, meta, clips, cache_dir=tmp_path / "cache",
                                  perturbation=Perturbation("gain", gain))
        np.testing.assert_allclose(scaled, recorded, atol=1e-4)


def test_an_old_model_file_loads_and_predicts_as_before(real_clips, tmp_path):
    """The shipped serkeras-crema-d-whisper was saved before the setting existed: it keeps the level as recorded, its features keep
    their cache key, and it predicts from features computed exactly as before (decode, then log-mel; stored as
    float16 in the cache)."""
    from serkeras.evaluation import predict_clips, predict_features
    from serkeras.models import load_model

    if not SHIPPED_CREMA_D_WHISPER.is_file():
        pytest.skip("no shipped model in this checkout")
    model, meta = load_model(SHIPPED_CREMA_D_WHISPER)
    config = meta.feature_config
    assert config.level_dbfs is None and config.extraction_key() == "226ee6cdd8083258"
    clips = load_crema_d(real_clips.folder).clips[:4]
    _, probabilities = predict_clips(model, meta, clips, cache_dir=tmp_path / "cache")
    before = [extract_features(load_audio(c.path, config.sample_rate, config.audio_normalization), config, ("logmel",))
              for c in clips]
    stored = [{k: v.astype(np.float16).astype(np.float32) for k, v in f.items()} for f in before]  # as cached
    np.testing.assert_allclose(probabilities, predict_features(model, stored, config.length_mode), atol=1e-5)


def test_evaluate_perturb_reports_every_condition_and_refuses_bad_ones(levelled_model, real_clips, tmp_path):
    from click.testing import CliRunner

    from serkeras.cli import main

    runner = CliRunner()
    # Six clips: few enough to be featurised in this process, without a pool of workers to start.
    manifest = tmp_path / "six.csv"
    clips = load_crema_d(real_clips.folder).clips[:6]
    manifest.write_text("path,label,speaker\n" + "".join(f"{c.path},{c.label},{c.speaker}\n" for c in clips))
    args = ["evaluate", str(levelled_model), "--manifest", str(manifest), "--part", "all",
            "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(main, args + ["--perturb", "gain:-20", "--perturb", "telephone",
                                         "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    for condition in ("as recorded", "gain -20 dB", "telephone band"):
        assert condition in result.output
    assert "one prediction per recording" in result.output and "UA" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [c["condition"] for c in report["conditions"]] == ["as recorded", "gain -20 dB", "telephone band"]
    assert all(c["n"] == 6 for c in report["conditions"])
    bad = runner.invoke(main, args + ["--perturb", "gain"])
    assert bad.exit_code != 0 and "gain needs an amount" in bad.output and "Traceback" not in bad.output


def test_train_level_dbfs_is_an_option_with_a_range():
    from click.testing import CliRunner

    from serkeras.cli import main

    result = CliRunner().invoke(main, ["train", "--level-dbfs", "5", "--epochs", "1"])
    assert result.exit_code != 0 and "--level-dbfs" in result.output
    assert "--level-dbfs" in CliRunner().invoke(main, ["train", "--help"]).output


def test_predict_levels_a_long_recording_as_a_whole_and_ignores_its_gain(levelled_model, crema_dir, tmp_path):
    """`predict` levels each file once, before cutting it into windows: every window of a louder or quieter
    copy (float WAV, not clipped) gets the probabilities it got as recorded."""
    import soundfile as sf

    from serkeras.inference import predict_files
    from serkeras.models import load_model

    model, meta = load_model(levelled_model)
    wave = np.concatenate([load_audio(crema_dir / f"1003_DFA_{e}_XX.ogg", normalize="none")
                           for e in ("ANG", "SAD", "HAP", "NEU")])
    paths = []
    for name, gain in (("recorded", 0.0), ("quieter", -20.0), ("louder", 20.0)):
        paths.append(str(tmp_path / f"{name}.wav"))
        sf.write(paths[-1], apply_gain(wave, gain), 16000, subtype="FLOAT")
    predictions, skipped = predict_files(model, meta, paths, workers=1)
    assert not skipped and len(predictions[0].timeline) > 2
    recorded = predictions[0]
    for other in predictions[1:]:
        assert [t[:3] for t in other.timeline] == [t[:3] for t in recorded.timeline]
        np.testing.assert_allclose(list(other.probabilities.values()), list(recorded.probabilities.values()),
                                   atol=1e-4)


def test_gain_augmentation_can_span_plus_and_minus_20_db():
    """The other route to level robustness: augmented copies at gains across ±20 dB (float: not clipped)."""
    from serkeras.effects import WaveAugmentation, augment_wave

    augmentation = WaveAugmentation(snr_db=(200.0, 200.0), gain_db=20.0, shift_seconds=0.0)
    wave = np.full(1600, 0.5, np.float32)
    gains = [20 * np.log10(np.mean(augment_wave(wave, 16000, augmentation, augmentation.rng("a.wav", copy))) / 0.5)
             for copy in range(1, 201)]
    assert -20.0 <= min(gains) < -18.0 and 18.0 < max(gains) <= 20.0
