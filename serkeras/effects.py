"""Waveform augmentation (speed perturbation, time shift, gain and additive noise at a random SNR) and the fixed
perturbations of robustness evaluation (a gain, noise at one SNR, telephone band, room reverberation).

Augmented copies of training clips are computed once and cached like any other
features (see `serkeras.cache.cached_features`), so training costs no extra
decoding; each copy draws its own random settings from a seed, the clip and the
copy number, so a copy is the same every time it is computed.
"""

import dataclasses
import hashlib
import json

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
    reverb : float
        Share of copies played in a synthetic room (`reverberate`), its reverberation time
        drawn uniformly from `REVERB_RT60` (0 turns it off).
    telephone : float
        Share of copies band-limited to the telephone band (`TELEPHONE_BAND`; 0 turns it off).
    """

    snr_db: tuple = (10.0, 30.0)
    gain_db: float = 6.0
    shift_seconds: float = 0.25
    speed: float = 0.0
    seed: int = 0
    reverb: float = 0.0
    telephone: float = 0.0

    def __post_init__(self):
        low, high = self.snr_db
        if low > high:
            raise ValueError(f"snr_db must be (low, high), got {self.snr_db}")
        object.__setattr__(self, "snr_db", (float(low), float(high)))
        if self.gain_db < 0 or self.shift_seconds < 0:
            raise ValueError("gain_db and shift_seconds must be >= 0")
        if not 0 <= self.speed < 1:
            raise ValueError(f"speed must be in [0, 1), got {self.speed}")
        for name in ("reverb", "telephone"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a share of copies, in [0, 1]; got {getattr(self, name)}")

    def to_dict(self):
        return {**dataclasses.asdict(self), "snr_db": list(self.snr_db)}

    @classmethod
    def from_dict(cls, config):
        return known_fields(cls, {**config, "snr_db": tuple(config.get("snr_db", cls.snr_db))})

    def key(self, copy):
        """A short hash naming copy number `copy` under these settings (part of the cache key)."""
        settings = self.to_dict()
        for name in ("speed", "reverb", "telephone"):  # copies made before these existed keep their keys
            if not settings[name]:
                del settings[name]
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
    import librosa  # here, not at the top: the CLI reads this module's defaults before its help

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


#: The reverberation times (s) of the rooms that augmented copies are played in (`WaveAugmentation.reverb`):
#: from a small, damped room to a large, live one.
REVERB_RT60 = (0.2, 1.0)


def augment_wave(wave, sample_rate, augmentation, rng):
    """One random augmented copy of `wave`: speed, shift, room, telephone band, gain, then noise.

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
    # Each condition draws only when it is on, so copies made without it stay as they were.
    if augmentation.reverb and rng.random() < augmentation.reverb:
        wave = reverberate(wave, sample_rate, rng.uniform(*REVERB_RT60), rng)
    if augmentation.telephone and rng.random() < augmentation.telephone:
        wave = band_limit(wave, sample_rate, *TELEPHONE_BAND)
    wave = apply_gain(wave, rng.uniform(-augmentation.gain_db, augmentation.gain_db))
    return add_noise(wave, rng.uniform(*augmentation.snr_db), rng)


#: The kinds of `Perturbation`, with what their amount means.
PERTURBATIONS = {
    "gain": "dB added to the level (float samples: not clipped at full scale)",
    "noise": "signal-to-noise ratio in dB of added white noise",
    "telephone": "no amount: band-limited to 300-3400 Hz",
    "reverb": "reverberation time RT60 in seconds of a synthetic room",
}
#: The telephone band (Hz), as narrowband telephony passes it.
TELEPHONE_BAND = (300.0, 3400.0)


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """One fixed change to every recording, to see how a model's accuracy moves with recording conditions
    (`serkeras.evaluation.robustness_report`; serialisable).

    Attributes
    ----------
    kind : str
        One of `PERTURBATIONS`.
    amount : float
        What `PERTURBATIONS[kind]` says (0 for "telephone").
    seed : int
        Seed of the noise and of the room responses, drawn per clip (see `rng`).
    """

    kind: str
    amount: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.kind not in PERTURBATIONS:
            raise ValueError(f"perturbation kind must be one of {tuple(PERTURBATIONS)}, got {self.kind!r}")
        object.__setattr__(self, "amount", float(self.amount))
        if self.kind == "reverb" and not 0 < self.amount <= 5:
            raise ValueError(f"reverb needs an RT60 in (0, 5] seconds, got {self.amount:g}")
        if self.kind == "telephone" and self.amount:
            raise ValueError("telephone takes no amount")

    @classmethod
    def parse(cls, text):
        """From ``KIND[:AMOUNT]``, e.g. ``gain:-20``, ``noise:10``, ``telephone``, ``reverb:0.6``."""
        kind, _, amount = text.strip().partition(":")
        if kind != "telephone" and not amount:
            raise ValueError(f"{text!r}: {kind} needs an amount ({kind}:AMOUNT)")
        try:
            return cls(kind, float(amount) if amount else 0.0)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None

    def spec(self):
        """The ``KIND[:AMOUNT]`` text `parse` reads (``--perturb``'s value)."""
        return self.kind if self.kind == "telephone" else f"{self.kind}:{self.amount:.15g}"

    def __str__(self):
        return {"gain": f"gain {self.amount:+g} dB", "noise": f"noise at {self.amount:g} dB SNR",
                "telephone": "telephone band", "reverb": f"reverb, RT60 {self.amount:g} s"}[self.kind]

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config):
        return known_fields(cls, config)

    def key(self):
        """A short hash naming this perturbation (part of the cache key of a perturbed clip's features)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def rng(self, clip_id):
        """The random generator of this perturbation for one clip: fixed by seed, kind, amount and clip."""
        digest = hashlib.sha256(f"{self.seed}|{self.kind}|{self.amount!r}|{clip_id}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def apply(self, wave, sample_rate, rng):
        """`wave` perturbed; `rng` from `self.rng(clip_id)`. Same length and dtype."""
        if self.kind == "gain":
            return apply_gain(wave, self.amount)
        if self.kind == "noise":
            return add_noise(wave, self.amount, rng)
        if self.kind == "telephone":
            return band_limit(wave, sample_rate, *TELEPHONE_BAND)
        return reverberate(wave, sample_rate, self.amount, rng)


def band_limit(wave, sample_rate, low_hz, high_hz):
    """`wave` through a 4th-order Butterworth band-pass from `low_hz` to `high_hz` (zero phase)."""
    high_hz = min(high_hz, 0.45 * sample_rate)
    import scipy.signal

    sos = scipy.signal.butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")
    return scipy.signal.sosfiltfilt(sos, wave).astype(wave.dtype)


def room_response(sample_rate, rt60, rng):
    """A synthetic room impulse response: the direct sound, then Gaussian noise decaying by 60 dB in `rt60`
    seconds (exponential decay, as in a diffuse field), starting 2.5 ms after it."""
    length = int(rt60 * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)  # ln(1000): 60 dB of amplitude decay
    tail[: int(0.0025 * sample_rate)] = 0.0
    # Reverberant energy about equal to the direct sound's (a speaker a few metres from the microphone).
    tail /= np.sqrt(np.sum(tail**2)) or 1.0
    response = np.concatenate([[1.0], tail])
    return response / np.sqrt(np.sum(response**2))


def reverberate(wave, sample_rate, rt60, rng):
    """`wave` convolved with a `room_response` of reverberation time `rt60` (the tail beyond its end cut)."""
    response = room_response(sample_rate, rt60, rng)
    import scipy.signal

    return scipy.signal.fftconvolve(wave.astype(np.float64), response)[: len(wave)].astype(wave.dtype)
