"""Waveform augmentation: speed perturbation, time shift, gain and additive noise at a random SNR.

Augmented copies of training clips are computed once and cached like any other
features (see `serkeras.cache.cached_features`), so training costs no extra
decoding; each copy draws its own random settings from a seed, the clip and the
copy number, so a copy is the same every time it is computed.
"""

import dataclasses
import hashlib
import json

import librosa
import numpy as np

from serkeras.config import known_fields


@dataclasses.dataclass(frozen=True)
class WaveAugmentation:
    """How augmented copies of a clip are made (serialisable).

    Attributes
    ----------
    snr_db : tuple of float
        Additive white noise at a signal-to-noise ratio drawn uniformly from this range (dB).
    gain_db : float
        Gain drawn uniformly from [-gain_db, gain_db] (dB), applied after the loader's normalisation.
    shift_seconds : float
        The clip starts up to this much later (leading silence) or earlier (start cut off).
    speed : float
        Speed factor drawn uniformly from [1 - speed, 1 + speed]; tempo and pitch change
        together, as if another, faster or slower, voice said it (0 turns it off).
    seed : int
    """

    snr_db: tuple = (10.0, 30.0)
    gain_db: float = 6.0
    shift_seconds: float = 0.25
    speed: float = 0.0
    seed: int = 0

    def __post_init__(self):
        low, high = self.snr_db
        if low > high:
            raise ValueError(f"snr_db must be (low, high), got {self.snr_db}")
        object.__setattr__(self, "snr_db", (float(low), float(high)))
        if self.gain_db < 0 or self.shift_seconds < 0:
            raise ValueError("gain_db and shift_seconds must be >= 0")
        if not 0 <= self.speed < 1:
            raise ValueError(f"speed must be in [0, 1), got {self.speed}")

    def to_dict(self):
        return {**dataclasses.asdict(self), "snr_db": list(self.snr_db)}

    @classmethod
    def from_dict(cls, config):
        return known_fields(cls, {**config, "snr_db": tuple(config.get("snr_db", cls.snr_db))})

    def key(self, copy):
        """A short hash naming copy number `copy` under these settings (part of the cache key)."""
        settings = self.to_dict()
        if not self.speed:  # copies made before speed existed keep their keys
            del settings["speed"]
        text = json.dumps({**settings, "copy": copy}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def rng(self, clip_id, copy):
        """The random generator of one copy of one clip: fixed by seed, clip and copy."""
        digest = hashlib.sha256(f"{self.seed}|{clip_id}|{copy}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))


#: The copies of test-time augmentation (`evaluate` / `predict --tta-copies`): drawn like the training
#: copies of the augmented recipes (speed 0.9-1.1, time shift up to 0.25 s, gain within 6 dB, noise at
#: 10-30 dB SNR), so they suit models trained on such copies (others can lose accuracy on them).
TEST_TIME_AUGMENTATION = WaveAugmentation(speed=0.1)


def change_speed(wave, factor):
    """Play `wave` `factor` times as fast (resampling: tempo and pitch scale together)."""
    if factor == 1.0:
        return wave
    return librosa.resample(wave, orig_sr=factor, target_sr=1.0).astype(wave.dtype)


def time_shift(wave, samples):
    """Delay `wave` by `samples` (leading zeros) or, if negative, cut that many from its start; length is kept."""
    if samples == 0:
        return wave
    if samples > 0:
        return np.concatenate([np.zeros(min(samples, len(wave)), wave.dtype), wave[:max(len(wave) - samples, 0)]])
    samples = min(-samples, len(wave))
    return np.concatenate([wave[samples:], np.zeros(samples, wave.dtype)])


def apply_gain(wave, gain_db):
    """Scale by `gain_db` decibels."""
    return (wave * 10.0 ** (gain_db / 20.0)).astype(wave.dtype)


def add_noise(wave, snr_db, rng):
    """Add white Gaussian noise at `snr_db` relative to the clip's mean power (silent clips get none)."""
    power = float(np.mean(np.square(wave, dtype=np.float64)))
    if power == 0.0:
        return wave
    noise = rng.standard_normal(len(wave)) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (wave + noise).astype(wave.dtype)


def augment_wave(wave, sample_rate, augmentation, rng):
    """One random augmented copy of `wave`: speed, then shift, then gain, then noise.

    Parameters
    ----------
    wave : ndarray of float32
    sample_rate : int
    augmentation : WaveAugmentation
    rng : numpy.random.Generator
        From `augmentation.rng(clip_id, copy)` for reproducible copies.
    """
    if augmentation.speed:  # drawn only when on, so copies made without speed stay as they were
        wave = change_speed(wave, rng.uniform(1 - augmentation.speed, 1 + augmentation.speed))
    max_shift = int(augmentation.shift_seconds * sample_rate)
    wave = time_shift(wave, int(rng.integers(-max_shift, max_shift + 1)) if max_shift else 0)
    wave = apply_gain(wave, rng.uniform(-augmentation.gain_db, augmentation.gain_db))
    return add_noise(wave, rng.uniform(*augmentation.snr_db), rng)
