"""Core audio I/O: decode any libsndfile-readable file to mono float32 at one rate."""

import os

import numpy as np
import soundfile as sf
import soxr

from serkeras.errors import DataError

#: Peak amplitude below which a clip counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4

NORMALIZATIONS = ("peak", "rms", "none")

#: Active speech level estimation (`active_speech_level`), after ITU-T P.56 method B on 20 ms frames: a frame
#: is active when its power is above a threshold, or was within the hangover before it; the threshold sought
#: is the one `LEVEL_MARGIN_DB` below the level of the active frames it selects.
LEVEL_FRAME_SECONDS = 0.02
LEVEL_HANGOVER_SECONDS = 0.2
LEVEL_MARGIN_DB = 15.9
#: Thresholds tried: every 0.25 dB from the loudest frame down to 100 dB below it. Relative to the loudest
#: frame, so a recording scaled by any gain gets the same thresholds, shifted by that gain.
LEVEL_STEP_DB = 0.25
LEVEL_RANGE_DB = 100.0
#: An active level below this (dBFS) is no speech (near 16-bit audio's quantisation noise): refused, not amplified.
LEVEL_FLOOR_DBFS = -90.0


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
    return normalize_amplitude(wave, normalize)


def normalize_amplitude(wave, normalize):
    """`wave` scaled as `load_audio`'s `normalize` says (to peak 1, to RMS 0.1, or not at all), as float32."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if normalize == "peak":
        wave = wave / max(float(np.max(np.abs(wave))), 1e-8)
    elif normalize == "rms":
        wave = wave * (0.1 / max(float(np.sqrt(np.mean(wave**2))), 1e-8))
    return np.ascontiguousarray(wave, dtype=np.float32)


def active_speech_level(wave, sample_rate):
    """Active speech level of `wave` in dB relative to full scale (a full-scale square wave: 0 dBFS).

    The signal's mean power divided by its activity (the share of active
    frames), as ITU-T P.56 method B defines it, with 20 ms frames in place of
    its sample envelope: the threshold is the lowest at which the active level
    is at most 15.9 dB above it (interpolated between the thresholds tried), so
    pauses and the noise between words count neither for nor against the
    level. Scaling `wave` by a gain moves the result by exactly that gain
    (up to rounding): thresholds are tried relative to the loudest frame.

    Parameters
    ----------
    wave : numpy.ndarray, float, shape (n_samples,)
    sample_rate : int

    Returns
    -------
    float

    Raises
    ------
    AudioError
        Shorter than one frame, or no active speech (an active level below `LEVEL_FLOOR_DBFS`).
    """
    frame = max(1, int(round(LEVEL_FRAME_SECONDS * sample_rate)))
    n_frames = len(wave) // frame
    if n_frames == 0:
        raise AudioError(f"too short to measure its level ({len(wave) / sample_rate:.3f} s)")
    power = np.mean(np.square(wave[:n_frames * frame], dtype=np.float64).reshape(n_frames, frame), axis=1)
    mean_power = float(np.mean(power))
    if mean_power == 0.0:
        raise AudioError("silent")
    frame_db = 10.0 * np.log10(np.maximum(power, 1e-30))
    thresholds = frame_db.max() - np.arange(0.0, LEVEL_RANGE_DB + LEVEL_STEP_DB / 2, LEVEL_STEP_DB)[::-1]
    above = np.cumsum(frame_db[None, :] >= thresholds[:, None], axis=1)
    # Active: above the threshold in this frame or in one of the `hangover` frames before it.
    hangover = int(round(LEVEL_HANGOVER_SECONDS / LEVEL_FRAME_SECONDS))
    before = np.pad(above, ((0, 0), (hangover + 1, 0)))[:, :n_frames]
    activity = np.count_nonzero(above - before, axis=1) / n_frames
    active_db = 10.0 * np.log10(mean_power / activity)
    excess = active_db - thresholds  # falls as the threshold rises
    crossing = int(np.argmax(excess <= LEVEL_MARGIN_DB)) if np.any(excess <= LEVEL_MARGIN_DB) else len(excess) - 1
    if crossing == 0 or excess[crossing] > LEVEL_MARGIN_DB:
        level = float(active_db[crossing])
    else:  # interpolate between the last threshold above the margin and the first at or below it
        low, high = crossing - 1, crossing
        share = (excess[low] - LEVEL_MARGIN_DB) / (excess[low] - excess[high])
        level = float(active_db[low] + share * (active_db[high] - active_db[low]))
    if level < LEVEL_FLOOR_DBFS:
        raise AudioError(f"no speech to measure (active level {level:.1f} dBFS, below {LEVEL_FLOOR_DBFS:g})")
    return level


def scale_to_level(wave, sample_rate, level_dbfs):
    """`wave` scaled so that its active speech level (`active_speech_level`) is `level_dbfs`.

    Float samples are not clipped: a loud target can leave peaks above 1.0,
    which the features take as they are.

    Raises
    ------
    AudioError
        As `active_speech_level`.
    """
    gain_db = level_dbfs - active_speech_level(wave, sample_rate)
    return (wave * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)
