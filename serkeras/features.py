"""Frame-aligned features: log-mel spectrograms (2D path) and spectral descriptors (1D path).

Both come from one STFT with the same hop, so frame `t` of the log-mel and frame
`t` of the spectral features describe the same 10 ms of audio.

The STFT, the mel filter bank and the decibel scale are librosa's, computed here
with NumPy alone (`_power_spectrogram`, `_mel_basis`; tests hold them to librosa's
own): importing librosa costs about 2.5 s of CPU (SciPy's signal and ndimage
modules, numba), most of what a one-file `serkeras predict` from an ONNX export
takes, and a log-mel model needs nothing else of it. librosa is imported where
the spectral descriptors and pitch are computed.
"""

import dataclasses
import functools
import hashlib
import json

import numpy as np

from serkeras.audio import NORMALIZATIONS
from serkeras.config import known_fields

LENGTH_MODES = ("variable", "fixed")
#: The active speech levels (dBFS) that `FeatureConfig.level_dbfs` may ask for.
LEVEL_RANGE_DBFS = (-60.0, -6.0)
FEATURE_KINDS = ("logmel", "spectral")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Everything that turns a waveform into model inputs (serialisable).

    The defaults suit 16 kHz speech: 25 ms windows every 10 ms, 64 mel bands
    from 20 Hz to 8 kHz, 20 MFCCs with deltas. `pitch` adds the log
    fundamental frequency (YIN, 60-500 Hz) and its delta to the spectral
    features: prosody that MFCCs and 40-64 mel bands barely resolve.
    `speaker_norm` removes each speaker's mean features, taken over all of
    that speaker's recordings (`serkeras.speakers.normalize_by_speaker`), before the model sees
    them: the voice's own level goes, how each clip departs from it stays.
    `speaker_scale` also divides by the speaker's standard deviation (speaker
    z-normalisation), so a speaker who acts in a narrow range and one who acts
    in a wide one reach the model alike.
    `level_dbfs`, when set, scales each recording (after `audio_normalization`
    and any augmentation) so that its active speech level
    (`serkeras.audio.active_speech_level`) is this many dB relative to full
    scale, one gain for the whole recording: a recording made louder or quieter
    then gives the same features. None (the default) keeps the level as loaded.
    """

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float = 8000.0
    n_mfcc: int = 20
    pitch: bool = False
    audio_normalization: str = "peak"
    length_mode: str = "variable"
    fixed_seconds: float = 3.0
    min_seconds: float = 0.2
    max_seconds: float = 60.0
    speaker_norm: bool = False
    speaker_scale: bool = False
    level_dbfs: float | None = None

    def __post_init__(self):
        if self.length_mode not in LENGTH_MODES:
            raise ValueError(f"length_mode must be one of {LENGTH_MODES}, got {self.length_mode!r}")
        if self.audio_normalization not in NORMALIZATIONS:
            raise ValueError(f"audio_normalization must be one of {NORMALIZATIONS}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError("need 0 <= fmin < fmax <= sample_rate / 2")
        if self.win_length > self.n_fft:
            raise ValueError("win_length must not exceed n_fft")
        if self.speaker_scale and not self.speaker_norm:
            raise ValueError("speaker_scale needs speaker_norm")
        if self.level_dbfs is not None:
            if not LEVEL_RANGE_DBFS[0] <= self.level_dbfs <= LEVEL_RANGE_DBFS[1]:
                raise ValueError(f"level_dbfs must be in {list(LEVEL_RANGE_DBFS)}, got {self.level_dbfs}")
            object.__setattr__(self, "level_dbfs", float(self.level_dbfs))

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config):
        return known_fields(cls, config)

    def extraction_key(self):
        """Hash of the settings that change each clip's extracted features (not the length mode, nor the
        speaker normalisation applied after extraction). `level_dbfs` counts only when set, so features
        extracted before it existed keep their keys."""
        settings = {k: v for k, v in self.to_dict().items()
                    if k not in ("length_mode", "fixed_seconds", "speaker_norm", "speaker_scale")}
        if self.level_dbfs is None:
            del settings["level_dbfs"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def fixed_frames(self):
        """Frames in a `fixed_seconds` clip (centred frames: 1 + samples // hop)."""
        return 1 + int(round(self.fixed_seconds * self.sample_rate)) // self.hop_length

    @property
    def n_spectral(self):
        return len(spectral_feature_names(self))


def spectral_feature_names(config):
    """Names of the 1D path's per-frame features, in column order."""
    return (
        [f"mfcc_{i}" for i in range(config.n_mfcc)]
        + [f"mfcc_delta_{i}" for i in range(config.n_mfcc)]
        + ["rms", "zcr", "centroid", "bandwidth", "rolloff", "flatness"]
        + [f"contrast_{i}" for i in range(7)]
        + [f"chroma_{i}" for i in range(12)]
        + (["log_f0", "log_f0_delta"] if config.pitch else [])
    )

# Speech F0 range searched by YIN; the frame must hold two periods of PITCH_FMIN.
PITCH_FMIN, PITCH_FMAX = 60.0, 500.0


def feature_kinds(names):
    """The feature kinds (`FEATURE_KINDS`) among `names`, such as a model's input names, in that order."""
    return tuple(kind for kind in FEATURE_KINDS if kind in names)


_MEL_LINEAR_HZ = 200.0 / 3  # Hz per mel below 1 kHz
_MEL_AT_1KHZ = 1000.0 / _MEL_LINEAR_HZ
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz):
    """Slaney's mel scale (librosa's default, `htk=False`): linear below 1 kHz, logarithmic above."""
    hz = np.asanyarray(hz, dtype=np.float64)
    mel = hz / _MEL_LINEAR_HZ
    return np.where(hz >= 1000.0, _MEL_AT_1KHZ + np.log(np.maximum(hz, 1000.0) / 1000.0) / _MEL_LOG_STEP, mel)


def _mel_to_hz(mel):
    """The inverse of `_hz_to_mel`."""
    mel = np.asanyarray(mel, dtype=np.float64)
    hz = _MEL_LINEAR_HZ * mel
    return np.where(mel >= _MEL_AT_1KHZ, 1000.0 * np.exp(_MEL_LOG_STEP * (mel - _MEL_AT_1KHZ)), hz)


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate, n_fft, n_mels, fmin, fmax):
    """The (n_mels, n_fft // 2 + 1) mel filter bank of `librosa.filters.mel` (Slaney's scale and area
    normalisation), float32, built once per setting: building it costs as much as a clip's STFT."""
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, fft_hz)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # Rounded to float32 before the area normalisation, as librosa does: the same bits.
    basis = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    basis *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # each filter's area is the same
    basis.setflags(write=False)
    return basis


@functools.lru_cache(maxsize=8)
def _window(win_length, n_fft):
    """A periodic Hann window of `win_length` centred in `n_fft` samples, as `librosa.stft` builds it
    (`scipy.signal.get_window("hann", win_length, fftbins=True)`, the same arithmetic), float64."""
    window = np.zeros(n_fft)
    start = (n_fft - win_length) // 2
    window[start:start + win_length] = 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, win_length + 1)[:-1])
    window.setflags(write=False)
    return window


def _power_spectrogram(wave, n_fft, hop_length, win_length):
    """The (n_fft // 2 + 1, frames) magnitude and power of `librosa.stft(wave, n_fft, hop_length,
    win_length, center=True)` (frames centred on every `hop_length`-th sample, the signal padded with
    zeros by n_fft // 2 at both ends), float32."""
    padded = np.pad(np.asarray(wave, dtype=np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    # float64 windowing and FFT rounded to complex64, as librosa does for float32 audio.
    spectrum = np.fft.rfft(frames * _window(win_length, n_fft), axis=-1).astype(np.complex64).T
    magnitude = np.abs(spectrum)
    return magnitude, magnitude**2


def extract_features(wave, config, kinds=FEATURE_KINDS):
    """Compute the feature kinds `kinds` for one waveform.

    Parameters
    ----------
    wave : numpy.ndarray, float32, shape (n_samples,)
        Mono audio at `config.sample_rate` (see `serkeras.audio.load_audio`).
    config : FeatureConfig
    kinds : sequence of str
        Which of `FEATURE_KINDS` to compute: a model needs only those it takes as
        inputs (`feature_kinds` of its input names), and the spectral
        descriptors cost as much again as the log-mel.

    Returns
    -------
    dict
        `logmel`: (frames, n_mels) log-mel power in dB; `spectral`:
        (frames, n_spectral) MFCCs, deltas and spectral descriptors. float32.
        Only the keys in `kinds`.
    """
    unknown = set(kinds) - set(FEATURE_KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be some of {FEATURE_KINDS}, got {tuple(kinds)}")
    c = config
    magnitude, power = _power_spectrogram(wave, c.n_fft, c.hop_length, c.win_length)
    # As librosa.feature.melspectrogram(S=power, ...), with the filter bank built once.
    mel = _mel_basis(c.sample_rate, c.n_fft, c.n_mels, c.fmin, c.fmax) @ power
    # librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None): a fixed reference (not the clip's
    # maximum) so that loudness differences survive, and a floor at -100 dB.
    logmel = 10.0 * np.log10(np.maximum(mel, 1e-10))
    features = {}
    if "logmel" in kinds:
        features["logmel"] = np.ascontiguousarray(logmel.T, dtype=np.float32)
    if "spectral" in kinds:
        features["spectral"] = _spectral_features(wave, magnitude, power, logmel, c)
    return features


def _spectral_features(wave, magnitude, power, logmel, config):
    """The (frames, n_spectral) columns of `spectral_feature_names`, from one STFT's `magnitude` and `power`."""
    import librosa  # here: a log-mel model never needs it (see the module's docstring)

    c = config
    mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=c.n_mfcc)
    delta = librosa.feature.delta(mfcc, width=min(9, _odd_at_most(mfcc.shape[1])), mode="nearest")
    spectral_kwargs = dict(S=magnitude, sr=c.sample_rate, n_fft=c.n_fft)
    rows = [
        mfcc,
        delta,
        librosa.feature.rms(S=magnitude, frame_length=c.n_fft),
        librosa.feature.zero_crossing_rate(wave, frame_length=c.n_fft, hop_length=c.hop_length, center=True),
        librosa.feature.spectral_centroid(**spectral_kwargs) / 1000.0,
        librosa.feature.spectral_bandwidth(**spectral_kwargs) / 1000.0,
        librosa.feature.spectral_rolloff(**spectral_kwargs) / 1000.0,
        librosa.feature.spectral_flatness(S=magnitude),
        librosa.feature.spectral_contrast(**spectral_kwargs, fmin=min(200.0, c.fmax / 64)),
        librosa.feature.chroma_stft(S=power, sr=c.sample_rate, n_fft=c.n_fft, tuning=0.0),
    ]
    frames = logmel.shape[1]
    if c.pitch:
        rows += list(_log_f0(wave, c, frames))
    spectral = np.concatenate([r[:, :frames] for r in rows], axis=0)
    return np.ascontiguousarray(np.nan_to_num(spectral.T), dtype=np.float32)


def _log_f0(wave, config, frames):
    """Log2 F0 (octaves above 100 Hz) and its delta, one value per STFT frame."""
    import librosa

    frame_length = max(config.n_fft, 2 ** int(np.ceil(np.log2(2.2 * config.sample_rate / PITCH_FMIN))))
    f0 = librosa.yin(np.pad(wave, (0, max(0, frame_length - len(wave)))), fmin=PITCH_FMIN,
                     fmax=min(PITCH_FMAX, config.sample_rate / 4), sr=config.sample_rate,
                     frame_length=frame_length, hop_length=config.hop_length, center=True)
    log_f0 = np.log2(f0[:frames] / 100.0)
    log_f0 = np.pad(log_f0, (0, frames - len(log_f0)), mode="edge")[None, :]
    delta = librosa.feature.delta(log_f0, width=min(9, _odd_at_most(frames)), mode="nearest")
    return log_f0, delta


def _odd_at_most(n):
    """librosa.feature.delta needs an odd width >= 3 no larger than the frame count."""
    return max(3, n if n % 2 else n - 1)


#: Batches of variable-length clips are padded to a multiple of this many frames (`serkeras.pipeline`,
#: `serkeras.onnx_runtime`), bounding the number of distinct batch shapes (each a recompilation under JAX).
PAD_MULTIPLE = 16


def padded_length(frames):
    """`frames` rounded up to a multiple of `PAD_MULTIPLE` (an int, or a tensor: plain arithmetic)."""
    return (frames + PAD_MULTIPLE - 1) // PAD_MULTIPLE * PAD_MULTIPLE


def eval_order(lengths):
    """The order in which clips are batched for evaluation and prediction: by length, stable."""
    return np.argsort(np.asarray(lengths), kind="stable")


def fit_to_length(features, frames):
    """Crop or zero-pad every feature array to exactly `frames` frames (fixed mode)."""
    out = {}
    for key, array in features.items():
        if len(array) >= frames:
            out[key] = array[:frames]
        else:
            out[key] = np.pad(array, [(0, frames - len(array))] + [(0, 0)] * (array.ndim - 1))
    return out


#: Smallest variance a statistic reports: a constant feature is then divided by 1e-3, not by zero.
VARIANCE_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and variance of the training part, for each feature kind."""

    mean: dict
    variance: dict

    def to_dict(self):
        return {"mean": {k: list(map(float, v)) for k, v in self.mean.items()},
                "variance": {k: list(map(float, v)) for k, v in self.variance.items()}}

    @classmethod
    def from_dict(cls, d):
        return cls({k: np.asarray(v, np.float32) for k, v in d["mean"].items()},
                   {k: np.asarray(v, np.float32) for k, v in d["variance"].items()})


class ClipSums:
    """Per-clip sums, sums of squares and frame counts of every feature kind, in float64.

    The statistics of any set of clips are then sums of rows (`stats`), so a
    speaker's, a subset of a speaker's, or an embedding speaker's come out of the
    same arithmetic as the training part's (`compute_stats`).

    Parameters
    ----------
    feature_list : sequence of dict
        {kind: (frames, features) array} per clip; an embedding is one frame.
    """

    def __init__(self, feature_list):
        self.kinds = list(feature_list[0]) if len(feature_list) else []
        self.sums = {k: np.stack([f[k].sum(axis=0, dtype=np.float64) for f in feature_list]) for k in self.kinds}
        self.squares = {k: np.stack([np.square(f[k], dtype=np.float64).sum(axis=0) for f in feature_list])
                        for k in self.kinds}
        self.frames = {k: np.array([len(f[k]) for f in feature_list], np.float64) for k in self.kinds}

    def stats(self, picked):
        """FeatureStats over every frame of the clips at indices `picked`."""
        picked = np.asarray(picked)
        n = {k: self.frames[k][picked].sum() for k in self.kinds}
        mean = {k: self.sums[k][picked].sum(axis=0) / n[k] for k in self.kinds}
        variance = {k: self.squares[k][picked].sum(axis=0) / n[k] - mean[k] ** 2 for k in self.kinds}
        return FeatureStats({k: mean[k].astype(np.float32) for k in self.kinds},
                            {k: np.maximum(variance[k], VARIANCE_FLOOR).astype(np.float32) for k in self.kinds})


def compute_stats(feature_list):
    """Mean and variance over every real frame of every clip (float64 accumulation).

    Parameters
    ----------
    feature_list : iterable of dict
        Outputs of `extract_features` for the training clips only.
    """
    feature_list = list(feature_list)
    if not feature_list:
        raise ValueError("no features to compute statistics from")
    return ClipSums(feature_list).stats(np.arange(len(feature_list)))
