"""Core audio I/O: decode any libsndfile-readable file to mono float32 at one rate."""

import os

import numpy as np
import soundfile as sf
import soxr

from serkeras.errors import DataError

#: Peak amplitude below which a clip counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4

NORMALIZATIONS = ("peak", "rms", "none")


#: Why a symbolic link whose target is missing is skipped.
BROKEN_LINK = "broken symbolic link (its target does not exist)"


class AudioError(DataError):
    """One audio file cannot be used; the message says why in a few words."""


def is_broken_link(path):
    """Whether `path` is a symbolic link whose target does not exist."""
    return os.path.islink(path) and not os.path.exists(path)


def load_audio(path, sample_rate=16000, normalize="peak", max_seconds=None):
    """Read an audio file as a mono float32 waveform at `sample_rate`.

    Parameters
    ----------
    path : str or path-like
        Any format libsndfile reads (WAV, FLAC, OGG/Opus, MP3).
    sample_rate : int
        Target rate; other rates are resampled with soxr (high quality).
    normalize : {"peak", "rms", "none"}
        Amplitude normalisation: scale to peak 1, to RMS 0.1, or leave as is.
    max_seconds : float, optional
        Refuse files longer than this (guards memory on huge inputs).

    Returns
    -------
    numpy.ndarray of shape (n_samples,), float32

    Raises
    ------
    AudioError
        Unreadable, empty or silent audio, or audio longer than `max_seconds`.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if is_broken_link(path):
        raise AudioError(BROKEN_LINK)
    try:
        info = sf.info(str(path))
        if max_seconds is not None and info.duration > max_seconds:
            raise AudioError(f"longer than {max_seconds:g} s ({info.duration:.1f} s)")
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except sf.LibsndfileError as exc:
        # Its message without "Error opening '<path>'": the reason is cached for every file of the same
        # bytes, so it must not name this one's path.
        raise AudioError(f"unreadable audio ({exc.error_string.rstrip('.')})") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"unreadable audio ({str(exc).splitlines()[0]})") from None
    if data.shape[0] == 0:
        raise AudioError("empty (no samples)")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wave)):
        raise AudioError("contains NaN or infinite samples")
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ")
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        raise AudioError("silent")
    if normalize == "peak":
        wave = wave / peak
    elif normalize == "rms":
        wave = wave * (0.1 / max(float(np.sqrt(np.mean(wave**2))), 1e-8))
    return np.ascontiguousarray(wave, dtype=np.float32)
