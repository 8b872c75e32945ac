"""Frame-aligned log-mel and spectral features, fixed-length fitting, statistics, config."""

import json

import librosa
import numpy as np
import pytest

from serkeras.audio import load_audio
from serkeras.features import FeatureConfig, FeatureStats, compute_stats, extract_features, fit_to_length, spectral_feature_names


@pytest.fixture(scope="module")
def real_wave(crema_dir):
    return load_audio(crema_dir / "1003_DFA_ANG_XX.ogg")


@pytest.fixture(scope="module")
def real_features(real_wave):
    return extract_features(real_wave, FeatureConfig())


def test_real_clip_shapes_are_frame_aligned(real_wave, real_features):
    config = FeatureConfig()
    frames = 1 + len(real_wave) // config.hop_length
    assert set(real_features) == {"logmel", "spectral"}
    assert real_features["logmel"].shape == (frames, config.n_mels)
    assert real_features["spectral"].shape == (frames, config.n_spectral)
    for array in real_features.values():
        assert array.dtype == np.float32 and array.flags["C_CONTIGUOUS"]
        assert np.isfinite(array).all()


def test_feature_names_match_columns(real_features):
    config = FeatureConfig()
    names = spectral_feature_names(config)
    assert len(names) == config.n_spectral == real_features["spectral"].shape[1] == 2 * 20 + 6 + 7 + 12
    assert len(set(names)) == len(names)
    assert names[:2] == ["mfcc_0", "mfcc_1"] and names[-1] == "chroma_11"
    assert len(spectral_feature_names(FeatureConfig(n_mfcc=13))) == 2 * 13 + 25


def test_real_features_are_plausible(real_wave, real_features):
    config = FeatureConfig()
    logmel, spectral = real_features["logmel"], real_features["spectral"]
    names = spectral_feature_names(config)
    # Log-mel power in dB with a fixed reference: peak-normalised speech stays in (-100, +60] dB.
    assert logmel.min() >= -100.0 - 1e-3 and logmel.max() < 60.0
    assert logmel.std() > 5.0  # not constant
    # MFCC 0 is a (scaled) sum of the log-mel bands: it tracks frame loudness.
    assert np.corrcoef(spectral[:, names.index("mfcc_0")], logmel.mean(axis=1))[0, 1] > 0.99
    rms = spectral[:, names.index("rms")]
    assert (rms >= 0).all() and rms.max() < 1.0
    flatness = spectral[:, names.index("flatness")]
    assert (flatness >= 0).all() and (flatness <= 1).all()
    chroma = spectral[:, names.index("chroma_0"):]
    assert chroma.shape[1] == 12 and (chroma >= 0).all() and (chroma <= 1 + 1e-5).all()
    # Spectral descriptors in kHz, within the band.
    for name in ("centroid", "rolloff", "bandwidth"):
        column = spectral[:, names.index(name)]
        assert (column >= 0).all() and column.max() <= 8.0 + 1e-3


@pytest.mark.parametrize("sample_rate, n_fft, n_mels, fmin, fmax", [
    (16000, 512, 64, 20.0, 8000.0), (16000, 400, 80, 0.0, 8000.0), (16000, 1024, 128, 0.0, 8000.0),
    (22050, 2048, 40, 50.0, 11025.0), (8000, 256, 40, 20.0, 3400.0)])
def test_mel_filter_bank_is_librosas(sample_rate, n_fft, n_mels, fmin, fmax):
    from serkeras.features import _mel_basis

    ours = _mel_basis(sample_rate, n_fft, n_mels, fmin, fmax)
    theirs = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n_fft, hop_length, win_length", [(512, 160, 400), (400, 160, 400), (1024, 320, 1024),
                                                           (512, 128, 256)])
def test_logmel_is_librosas_melspectrogram_in_decibels(real_wave, n_fft, hop_length, win_length):
    """On a real clip, a clip shorter than one window and noise of an odd length: librosa's STFT magnitude,
    and its mel power spectrogram in dB (the definition the shipped models were trained on)."""
    from serkeras.features import _power_spectrogram

    config = FeatureConfig(n_fft=n_fft, hop_length=hop_length, win_length=win_length)
    noise = np.random.default_rng(0).normal(0.0, 0.1, 16007).astype(np.float32)
    for wave in (real_wave, real_wave[:300], noise):
        magnitude, power = _power_spectrogram(wave, n_fft, hop_length, win_length)
        with np.testing.suppress_warnings() as sup:
            sup.filter(UserWarning)  # librosa warns that n_fft exceeds the 300-sample clip
            stft = librosa.stft(wave, n_fft=n_fft, hop_length=hop_length, win_length=win_length, center=True)
            mel = librosa.feature.melspectrogram(y=wave, sr=config.sample_rate, n_fft=n_fft, hop_length=hop_length,
                                                 win_length=win_length, n_mels=config.n_mels, fmin=config.fmin,
                                                 fmax=config.fmax)
        np.testing.assert_allclose(magnitude, np.abs(stft), rtol=1e-5, atol=1e-6 * np.abs(stft).max())
        np.testing.assert_allclose(power, np.abs(stft) ** 2, rtol=1e-5, atol=1e-6 * np.abs(stft).max() ** 2)
        expected = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T
        np.testing.assert_allclose(extract_features(wave, config, ("logmel",))["logmel"], expected, atol=1e-3)


def test_a_log_mel_is_computed_without_importing_librosa(crema_dir):
    """What a log-mel model's prediction computes (decoding, the level, the log-mel) loads neither librosa nor
    SciPy's signal module: they cost seconds of a one-file prediction."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from serkeras.cache import compute_clips\n"
              "from serkeras.features import FeatureConfig\n"
              "config = FeatureConfig(n_fft=400, n_mels=80, fmin=0.0, audio_normalization='none', level_dbfs=-26)\n"
              f"[(path, features)] = compute_clips([{str(crema_dir / '1003_DFA_ANG_XX.ogg')!r}], config, "
              "workers=1, kinds=('logmel',))\n"
              "print(features['logmel'].shape, [m for m in ('librosa', 'scipy.signal', 'numba') if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("80) []"), result.stdout


def test_tone_energy_lands_in_its_mel_band():
    config = FeatureConfig()
    t = np.arange(16000) / 16000
    wave = (0.8 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    logmel = extract_features(wave, config)["logmel"]
    centres = librosa.mel_frequencies(config.n_mels + 2, fmin=config.fmin, fmax=config.fmax)[1:-1]
    band = int(np.argmax(logmel[5:-5].mean(axis=0)))
    assert abs(centres[band] - 1000) < 80
    names = spectral_feature_names(config)
    centroid_khz = extract_features(wave, config)["spectral"][5:-5, names.index("centroid")]
    assert np.median(centroid_khz) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("f0", [110.0, 220.0, 330.0])
def test_pitch_tracks_a_harmonic_tone(f0):
    config = FeatureConfig(hop_length=320, n_mels=40, pitch=True)
    t = np.arange(16000) / 16000
    # Harmonics as in a voice, so the fundamental is what YIN must find.
    wave = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5)).astype(np.float32)
    features = extract_features(wave, config)
    names = spectral_feature_names(config)
    assert names[-2:] == ["log_f0", "log_f0_delta"] and config.n_spectral == len(names) == 67
    assert features["spectral"].shape == (len(features["logmel"]), 67)
    log_f0 = features["spectral"][5:-5, names.index("log_f0")]
    np.testing.assert_allclose(log_f0, np.log2(f0 / 100.0), atol=0.03)
    assert np.abs(features["spectral"][5:-5, names.index("log_f0_delta")]).max() < 0.02


def test_pitch_changes_the_extraction_key_and_survives_tiny_clips():
    assert FeatureConfig(pitch=True).extraction_key() != FeatureConfig().extraction_key()
    config = FeatureConfig(pitch=True)
    features = extract_features(np.random.default_rng(0).normal(0, 0.1, 3200).astype(np.float32), config)
    assert features["spectral"].shape == (21, config.n_spectral) and np.isfinite(features["spectral"]).all()


@pytest.mark.parametrize("n_samples,hop,n_mels", [(3200, 160, 64), (3201, 160, 40), (16000, 256, 32), (4000, 100, 80)])
def test_frame_count_for_other_settings(n_samples, hop, n_mels):
    config = FeatureConfig(hop_length=hop, n_mels=n_mels)
    wave = (np.random.default_rng(1).standard_normal(n_samples) * 0.1).astype(np.float32)
    features = extract_features(wave, config)
    frames = 1 + n_samples // hop
    assert features["logmel"].shape == (frames, n_mels)
    assert features["spectral"].shape == (frames, config.n_spectral)
    assert all(np.isfinite(a).all() for a in features.values())


@pytest.mark.filterwarnings("ignore:n_fft=512 is too large")
def test_very_short_wave_still_aligned():
    # 3 frames: the delta width must shrink to fit.
    wave = (np.random.default_rng(2).standard_normal(400) * 0.1).astype(np.float32)
    features = extract_features(wave, FeatureConfig())
    assert features["logmel"].shape[0] == features["spectral"].shape[0] == 3


def test_other_sample_rate():
    config = FeatureConfig(sample_rate=8000, fmax=4000.0, hop_length=80, n_fft=256, win_length=200, n_mels=40)
    wave = (np.random.default_rng(3).standard_normal(8000) * 0.1).astype(np.float32)
    features = extract_features(wave, config)
    assert features["logmel"].shape == (101, 40)
    assert features["spectral"].shape == (101, config.n_spectral)
    assert all(np.isfinite(a).all() for a in features.values())


def test_fit_to_length_crops_and_pads():
    features = {"logmel": np.arange(50, dtype=np.float32).reshape(10, 5) + 1,
                "spectral": np.ones((10, 3), np.float32)}
    cropped = fit_to_length(features, 4)
    assert cropped["logmel"].shape == (4, 5) and cropped["spectral"].shape == (4, 3)
    np.testing.assert_array_equal(cropped["logmel"], features["logmel"][:4])
    padded = fit_to_length(features, 16)
    assert padded["logmel"].shape == (16, 5) and padded["spectral"].shape == (16, 3)
    np.testing.assert_array_equal(padded["logmel"][:10], features["logmel"])
    assert not padded["logmel"][10:].any() and not padded["spectral"][10:].any()
    assert padded["logmel"].dtype == np.float32
    same = fit_to_length(features, 10)
    np.testing.assert_array_equal(same["logmel"], features["logmel"])
    # The input is left alone.
    assert features["logmel"].shape == (10, 5)


def test_fixed_frames():
    assert FeatureConfig().fixed_frames == 301  # 3 s at 16 kHz, hop 160, centred frames
    assert FeatureConfig(fixed_seconds=2.5, hop_length=256).fixed_frames == 1 + 40000 // 256
    # A fixed-length clip has exactly fixed_frames frames.
    config = FeatureConfig(fixed_seconds=1.0)
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    assert len(extract_features(wave, config)["logmel"]) == config.fixed_frames


def test_compute_stats_matches_numpy():
    rng = np.random.default_rng(0)
    clips = [{"logmel": (rng.standard_normal((n, 4)) * 3 + 10).astype(np.float32),
              "spectral": rng.uniform(-1, 5, (n, 2)).astype(np.float32)} for n in (7, 30, 1, 12)]
    for c in clips:
        c["spectral"][:, 1] = 2.0  # a constant column
    stats = compute_stats(clips)
    for key in ("logmel", "spectral"):
        frames = np.concatenate([c[key].astype(np.float64) for c in clips])
        assert frames.shape[0] == 50
        np.testing.assert_allclose(stats.mean[key], frames.mean(axis=0), rtol=1e-5, atol=1e-5)
        expected = np.maximum(frames.var(axis=0), 1e-6)
        np.testing.assert_allclose(stats.variance[key], expected, rtol=1e-4, atol=1e-6)
        assert stats.mean[key].dtype == np.float32 and stats.variance[key].dtype == np.float32
    # A constant feature gets the variance floor, never 0 (it is divided by later).
    assert stats.variance["spectral"][1] == pytest.approx(1e-6)
    assert stats.mean["spectral"][1] == pytest.approx(2.0)


def test_compute_stats_on_real_features(real_features):
    stats = compute_stats([real_features, fit_to_length(real_features, 50)])
    frames = np.concatenate([real_features["logmel"], real_features["logmel"][:50]]).astype(np.float64)
    np.testing.assert_allclose(stats.mean["logmel"], frames.mean(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(stats.variance["logmel"], frames.var(axis=0), rtol=1e-4, atol=1e-3)


def test_compute_stats_needs_features():
    with pytest.raises(ValueError, match="no features"):
        compute_stats([])


def test_feature_stats_round_trip():
    stats = FeatureStats({"logmel": np.array([1.5, -2.0], np.float32)}, {"logmel": np.array([0.25, 4.0], np.float32)})
    d = json.loads(json.dumps(stats.to_dict()))
    back = FeatureStats.from_dict(d)
    np.testing.assert_array_equal(back.mean["logmel"], stats.mean["logmel"])
    np.testing.assert_array_equal(back.variance["logmel"], stats.variance["logmel"])
    assert back.mean["logmel"].dtype == np.float32


def test_config_round_trip():
    config = FeatureConfig(n_mels=40, length_mode="fixed", fixed_seconds=2.5, audio_normalization="rms", fmax=7600.0)
    d = json.loads(json.dumps(config.to_dict()))
    assert FeatureConfig.from_dict(d) == config
    assert FeatureConfig.from_dict({**d, "from_a_newer_version": 1}) == config
    assert FeatureConfig.from_dict({}) == FeatureConfig()


def test_extraction_key():
    base = FeatureConfig()
    assert base.extraction_key() == FeatureConfig().extraction_key()
    assert len(base.extraction_key()) == 16
    # Settings that change the extracted features change the key ...
    for change in ({"n_mels": 40}, {"hop_length": 128}, {"sample_rate": 22050, "fmax": 8000.0}, {"n_mfcc": 13},
                   {"audio_normalization": "rms"}, {"fmin": 50.0}, {"max_seconds": 30.0}):
        assert FeatureConfig(**change).extraction_key() != base.extraction_key(), change
    # ... how clips are fitted to a length afterwards does not.
    assert FeatureConfig(length_mode="fixed").extraction_key() == base.extraction_key()
    assert FeatureConfig(length_mode="fixed", fixed_seconds=4.0).extraction_key() == base.extraction_key()
    assert FeatureConfig(speaker_norm=True).extraction_key() == base.extraction_key()
    assert FeatureConfig(speaker_norm=True, speaker_scale=True).extraction_key() == base.extraction_key()
    with pytest.raises(ValueError, match="speaker_scale needs speaker_norm"):
        FeatureConfig(speaker_scale=True)


@pytest.mark.parametrize("bad", [
    {"length_mode": "ragged"},
    {"audio_normalization": "loud"},
    {"fmin": -1.0},
    {"fmin": 9000.0},
    {"fmax": 9000.0},
    {"fmin": 4000.0, "fmax": 3000.0},
    {"sample_rate": 8000},  # fmax 8 kHz is above its Nyquist frequency
    {"win_length": 1024},
])
def test_invalid_config_raises(bad):
    with pytest.raises(ValueError):
        FeatureConfig(**bad)
