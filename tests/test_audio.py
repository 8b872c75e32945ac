"""load_audio: any libsndfile format to mono float32 at one rate, or one clear AudioError."""

import numpy as np
import pytest
import soundfile as sf

from serkeras.audio import SILENCE_PEAK, AudioError, load_audio
from serkeras.errors import DataError, SerkerasError


def test_real_ogg_is_16k_float32_mono_peak_one(crema_dir, crema_manifest):
    name = "1003_DFA_ANG_XX.ogg"
    wave = load_audio(crema_dir / name)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # The Opus copies decode to exactly the original WAV's sample count (README).
    assert len(wave) == int(crema_manifest[name]["frames"])
    assert np.max(np.abs(wave)) == pytest.approx(1.0, abs=1e-6)
    assert wave.flags["C_CONTIGUOUS"]


def test_real_ogg_unnormalised_matches_soundfile(crema_dir):
    path = crema_dir / "1005_IEO_HAP_HI.ogg"
    raw, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    wave = load_audio(path, normalize="none")
    np.testing.assert_array_equal(wave, raw)
    assert 0 < np.max(np.abs(wave)) <= 1.0
    peak = load_audio(path)
    np.testing.assert_allclose(peak, raw / np.max(np.abs(raw)), rtol=1e-6, atol=1e-7)


def test_stereo_is_averaged_to_mono(tmp_path):
    t = np.arange(8000) / 16000
    left = 0.6 * np.sin(2 * np.pi * 300 * t)
    right = 0.2 * np.sin(2 * np.pi * 500 * t)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1).astype(np.float32), 16000, subtype="FLOAT")
    assert sf.info(str(path)).channels == 2
    wave = load_audio(path, normalize="none")
    assert wave.shape == (8000,)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-6)


def test_44k1_is_resampled_to_16k(make_audio):
    path = make_audio("tone44k.flac", seconds=2.5, sample_rate=44100, freq=440.0, noise=0.0)
    wave = load_audio(path, sample_rate=16000)
    assert wave.dtype == np.float32
    assert len(wave) == 40000  # 2.5 s at 16 kHz
    # The tone keeps its pitch: the spectral peak is at 440 Hz (0.4 Hz bins).
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.fft.rfftfreq(len(wave), 1 / 16000)[np.argmax(spectrum)] == pytest.approx(440.0, abs=1.0)
    assert np.max(np.abs(wave)) == pytest.approx(1.0, abs=1e-6)


def test_other_target_rate(make_audio):
    path = make_audio("tone16k.wav", seconds=1.0, sample_rate=16000)
    assert len(load_audio(path, sample_rate=8000)) == 8000
    assert len(load_audio(path, sample_rate=22050)) == 22050


def test_silent_file_is_refused(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(str(path), np.zeros(16000, np.float32), 16000)
    with pytest.raises(AudioError, match="silent"):
        load_audio(path)
    # Just under the silence threshold is still silent; just over is not.
    sf.write(str(path), np.full(16000, SILENCE_PEAK / 2, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="silent"):
        load_audio(path)
    sf.write(str(path), np.full(16000, SILENCE_PEAK * 2, np.float32), 16000, subtype="FLOAT")
    assert np.max(load_audio(path)) == pytest.approx(1.0)


def test_zero_byte_file_is_refused(tmp_path):
    path = tmp_path / "1001_DFA_ANG_XX.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(path)


def test_wav_with_no_samples_is_refused(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000)
    assert path.stat().st_size > 0
    with pytest.raises(AudioError, match="empty"):
        load_audio(path)


def test_corrupt_bytes_are_refused(tmp_path):
    path = tmp_path / "1001_DFA_ANG_XX.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="unreadable audio") as info:
        load_audio(path)
    assert "\n" not in str(info.value)
    # One user-facing error type: the CLI prints DataError/SerkerasError as one line.
    assert isinstance(info.value, DataError) and isinstance(info.value, SerkerasError)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(tmp_path / "nope.wav")


def test_nan_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    data = np.full(1600, 0.1, np.float32)
    data[100] = np.nan
    sf.write(str(path), data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_too_long_is_refused_before_decoding(make_audio):
    path = make_audio("long.wav", seconds=3.0)
    with pytest.raises(AudioError, match=r"longer than 2 s \(3\.0 s\)"):
        load_audio(path, max_seconds=2)
    assert len(load_audio(path, max_seconds=3.5)) == 48000


def test_rms_normalisation(make_audio):
    path = make_audio("quiet.wav", amplitude=0.01, noise=0.001)
    wave = load_audio(path, normalize="rms")
    assert np.sqrt(np.mean(wave.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-4)
    raw = load_audio(path, normalize="none")
    # A pure gain: the shape of the waveform is unchanged.
    np.testing.assert_allclose(wave / wave.max(), raw / raw.max(), atol=1e-5)


def test_unknown_normalisation_is_a_value_error(make_audio):
    with pytest.raises(ValueError, match="normalize"):
        load_audio(make_audio(), normalize="loudness")
