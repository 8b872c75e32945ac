"""Waveform augmentation: the effects themselves, reproducible cached copies, and the training part they feed."""

import hashlib
import json

import numpy as np
import pytest

from serkeras.cache import cached_features
from serkeras.corpus import load_crema_d
from serkeras.effects import WaveAugmentation, add_noise, apply_gain, augment_wave, change_speed, time_shift
from serkeras.features import FeatureConfig
from serkeras.splits import make_split
from serkeras.training import TrainConfig, prepare_split


def test_time_shift_delays_or_advances_and_keeps_length():
    wave = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(time_shift(wave, 3), [0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(time_shift(wave, -3), [4, 5, 6, 7, 8, 9, 10, 0, 0, 0])
    assert time_shift(wave, 0) is wave
    np.testing.assert_array_equal(time_shift(wave, 50), np.zeros(10))


def test_gain_in_decibels():
    wave = np.full(100, 0.1, dtype=np.float32)
    np.testing.assert_allclose(apply_gain(wave, 20.0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(apply_gain(wave, -6.0206), 0.05, rtol=1e-4)
    assert apply_gain(wave, 3.0).dtype == np.float32


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_noise_reaches_the_requested_snr(snr_db):
    rng = np.random.default_rng(0)
    t = np.arange(160_000) / 16_000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    noisy = add_noise(wave, snr_db, rng)
    measured = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave).astype(np.float64) ** 2))
    assert abs(measured - snr_db) < 0.1
    assert noisy.dtype == np.float32
    silent = np.zeros(1000, np.float32)
    np.testing.assert_array_equal(add_noise(silent, 10.0, rng), silent)


def test_copies_are_reproducible_and_differ_from_each_other():
    augmentation = WaveAugmentation(seed=4)
    wave = np.random.default_rng(1).standard_normal(16_000).astype(np.float32) * 0.1
    first = augment_wave(wave, 16_000, augmentation, augmentation.rng("a.wav", 1))
    again = augment_wave(wave, 16_000, augmentation, augmentation.rng("a.wav", 1))
    other = augment_wave(wave, 16_000, augmentation, augmentation.rng("a.wav", 2))
    np.testing.assert_array_equal(first, again)
    assert len(first) == len(wave) and not np.allclose(first, other) and not np.allclose(first, wave)
    assert augmentation.key(1) != augmentation.key(2) != WaveAugmentation(seed=5).key(2)


def test_settings_round_trip_and_validation():
    augmentation = WaveAugmentation(snr_db=(5, 20), gain_db=3.0, shift_seconds=0.1, seed=2)
    assert WaveAugmentation.from_dict(augmentation.to_dict()) == augmentation
    with pytest.raises(ValueError):
        WaveAugmentation(snr_db=(30, 10))
    with pytest.raises(ValueError):
        WaveAugmentation(gain_db=-1)
    with pytest.raises(ValueError, match="speed"):
        WaveAugmentation(speed=1.5)
    config = TrainConfig(augment_copies=2, noise_snr_db=(5.0, 15.0), seed=7)
    assert TrainConfig.from_dict(config.to_dict()).wave_augmentation() == WaveAugmentation((5.0, 15.0), 6.0, 0.25, seed=7)
    assert TrainConfig().wave_augmentation() is None


def test_augmented_copies_of_real_clips_are_cached_apart_from_the_originals(crema_subset, tmp_path):
    clips = load_crema_d(crema_subset).clips[:6]
    config = FeatureConfig()
    augmentation = WaveAugmentation(seed=0)
    original = cached_features(clips, config, tmp_path, workers=1, progress=False)
    copy1 = cached_features(clips, config, tmp_path, workers=1, progress=False, augmentation=augmentation, copy=1)
    assert copy1.computed == len(clips)
    again = cached_features(clips, config, tmp_path, workers=1, progress=False, augmentation=augmentation, copy=1)
    assert again.computed == 0 and again.reused == len(clips)
    for clip in clips:
        a, b = original.features[clip.path]["logmel"], copy1.features[clip.path]["logmel"]
        assert a.shape == b.shape  # shift and gain keep the clip's length
        assert not np.allclose(a, b, atol=0.5)
        np.testing.assert_array_equal(b, again.features[clip.path]["logmel"])


def test_training_part_grows_by_its_copies_and_nothing_else_does(crema_subset, tmp_path):
    corpus = load_crema_d(crema_subset)
    split = make_split(corpus.clips, "actor", 0.25, 0.25, seed=0)
    plain = prepare_split(corpus, split, FeatureConfig(), tmp_path, workers=1, progress=False)
    augmented = prepare_split(corpus, split, FeatureConfig(), tmp_path, workers=1, progress=False,
                              augmentation=WaveAugmentation(), copies=2)
    n_train = len(plain.parts["train"][0])
    assert len(augmented.parts["train"][0]) == len(augmented.parts["train"][1]) == 3 * n_train
    assert list(augmented.parts["train"][2]) == 3 * list(plain.parts["train"][2])
    for part in ("val", "test"):
        assert augmented.parts[part][0] == plain.parts[part][0]
    # Standardisation statistics come from the original clips only.
    np.testing.assert_array_equal(augmented.stats.mean["logmel"], plain.stats.mean["logmel"])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_change_speed_scales_duration_and_pitch(factor):
    sr = 16000
    t = np.arange(sr) / sr
    wave = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    faster = change_speed(wave, factor)
    assert faster.dtype == np.float32
    assert abs(len(faster) - len(wave) / factor) <= 2
    spectrum = np.abs(np.fft.rfft(faster))
    peak_hz = np.argmax(spectrum) * sr / len(faster)
    assert peak_hz == pytest.approx(200 * factor, abs=3)
    assert change_speed(wave, 1.0) is wave


def test_speed_perturbation_is_reproducible_and_leaves_old_keys_alone():
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    augmentation = WaveAugmentation(speed=0.1, seed=3)
    first = augment_wave(wave, 16000, augmentation, augmentation.rng("clip", 1))
    again = augment_wave(wave, 16000, augmentation, augmentation.rng("clip", 1))
    np.testing.assert_array_equal(first, again)
    assert 16000 / 1.1 - 2 <= len(first) <= 16000 / 0.9 + 2 and len(first) != 16000
    # Without speed, the key is that of the settings before speed existed (cached copies stay valid).
    assert WaveAugmentation(seed=3).key(1) != augmentation.key(1)
    before = {"snr_db": [10.0, 30.0], "gain_db": 6.0, "shift_seconds": 0.25, "seed": 3, "copy": 1}
    assert WaveAugmentation(seed=3).key(1) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]


def test_room_and_telephone_copies_are_drawn_by_their_share_and_leave_other_copies_alone():
    """`reverb` and `telephone` are shares of copies: at 1 every copy is played in a room or band-limited, at 0
    the copies (and their cache keys) are those made before the two existed."""
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    wave = (0.1 * np.sin(2 * np.pi * 100 * t) + 0.1 * np.sin(2 * np.pi * 1000 * t)
            + 0.01 * rng.standard_normal(16000)).astype(np.float32)
    plain = WaveAugmentation(snr_db=(60.0, 60.0), gain_db=0.0, shift_seconds=0.0, seed=2)
    copy = augment_wave(wave, 16000, plain, plain.rng("clip", 0))
    telephone = WaveAugmentation(snr_db=(60.0, 60.0), gain_db=0.0, shift_seconds=0.0, seed=2, telephone=1.0)
    band = augment_wave(wave, 16000, telephone, telephone.rng("clip", 0))
    spectrum = lambda x: np.abs(np.fft.rfft(x))  # noqa: E731  (1 Hz bins)
    assert spectrum(band)[100] < 0.2 * spectrum(copy)[100] and spectrum(band)[1000] > 0.8 * spectrum(copy)[1000]
    room = WaveAugmentation(snr_db=(60.0, 60.0), gain_db=0.0, shift_seconds=0.0, seed=2, reverb=1.0)
    reverberant = augment_wave(wave, 16000, room, room.rng("clip", 0))
    assert reverberant.shape == wave.shape and reverberant.dtype == wave.dtype
    assert np.abs(reverberant - copy).max() > 0.01
    np.testing.assert_array_equal(reverberant, augment_wave(wave, 16000, room, room.rng("clip", 0)))
    # About half the copies at a share of 0.5.
    half = WaveAugmentation(snr_db=(60.0, 60.0), gain_db=0.0, shift_seconds=0.0, telephone=0.5)
    low = [spectrum(augment_wave(wave, 16000, half, half.rng("clip", k)))[100] for k in range(40)]
    assert 10 <= sum(value < 0.2 * spectrum(copy)[100] for value in low) <= 30
    # Off, they change neither the copies nor their keys.
    assert WaveAugmentation(seed=3).key(1) == WaveAugmentation(seed=3, reverb=0.0, telephone=0.0).key(1)
    assert WaveAugmentation(seed=3, reverb=0.5).key(1) != WaveAugmentation(seed=3).key(1)
    assert TrainConfig(augment_copies=1, reverb=0.3, telephone=0.2).wave_augmentation() == WaveAugmentation(
        reverb=0.3, telephone=0.2)
    with pytest.raises(ValueError, match="reverb is a share of copies"):
        WaveAugmentation(reverb=1.5)


def test_a_perturbation_prints_as_the_option_that_made_it():
    from serkeras.effects import Perturbation

    for text in ("gain:-20", "noise:12.3456789", "telephone", "reverb:0.6"):
        assert Perturbation.parse(text).spec() == text and Perturbation.parse(Perturbation.parse(text).spec()) == \
            Perturbation.parse(text)
