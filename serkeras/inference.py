"""Emotion predictions for arbitrary audio files, with windows for long recordings."""

import collections
import dataclasses
import glob
import os
import warnings
from pathlib import Path

import numpy as np

from serkeras.audio import is_broken_link
from serkeras.cache import compute_clips
from serkeras.corpus import describe_skipped, parse_crema_d_name, warn_skipped
from serkeras.effects import TEST_TIME_AUGMENTATION
from serkeras.errors import DataError
from serkeras.features import feature_kinds
from serkeras.speakers import normalize_by_speaker


@dataclasses.dataclass
class Prediction:
    path: str
    label: str
    probabilities: dict
    seconds: float
    timeline: list  # [(start_s, end_s, label, probabilities)] for windowed recordings


def expand_paths(paths):
    """Files, folders (recursively) and glob patterns -> sorted unique file list.

    A pattern that matches nothing, a path that does not exist and a folder without files raise `DataError`.
    A folder's broken symbolic links are kept, so that reading them reports them as skipped.
    """
    files = []
    for p in paths:
        matches = glob.glob(p, recursive=True) if any(ch in p for ch in "*?[") else [p]
        if not matches:
            raise DataError(f"no files match {p}")
        for m in matches:
            if os.path.isdir(m):
                found = [str(f) for f in sorted(Path(m).rglob("*"))
                         if (f.is_file() or is_broken_link(f)) and not f.name.startswith(".")]
                if not found:
                    raise DataError(f"folder {m} holds no files")
                files += found
            elif os.path.exists(m) or is_broken_link(m):
                files.append(m)
            else:
                raise DataError(f"{m} does not exist")
    return sorted(dict.fromkeys(files))


#: How `speaker_of` tells whose voice a file is, for models trained with speaker normalisation.
SPEAKER_GROUPINGS = {
    "auto": "CREMA-D file names give their actor; other files are grouped by folder",
    "folder": "files in the same folder are one speaker",
    "prefix": "the file name up to its first underscore (CREMA-D: 1001_DFA_ANG_XX.wav is speaker 1001)",
    "all": "every file given is one speaker",
    "file": "each file is its own speaker (the model then sees each file's own mean removed)",
}


def speaker_of(path, grouping="auto"):
    """The speaker key of the file at `path` under `grouping` (one of SPEAKER_GROUPINGS)."""
    if grouping not in SPEAKER_GROUPINGS:
        raise ValueError(f"grouping must be one of {tuple(SPEAKER_GROUPINGS)}, got {grouping!r}")
    path = Path(path)
    if grouping == "auto":
        crema_d = parse_crema_d_name(path.stem)
        return f"crema-d actor {crema_d[0]}" if crema_d else speaker_of(path, "folder")
    return {"folder": lambda: str(path.resolve().parent), "prefix": lambda: path.name.split("_")[0],
            "all": lambda: "", "file": lambda: str(path.resolve())}[grouping]()


def windows(frames, window, hop):
    """Start frames of overlapping windows covering `frames` (last one flush with the end).

    A flush window less than half a hop after the last regular one replaces it,
    where the window before still reaches it, instead of repeating it almost
    exactly (a 10 s recording: 6.0-10.0 s once, not twice).
    """
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, hop))
    flush = frames - window
    if starts[-1] < flush:
        if len(starts) > 1 and flush - starts[-1] < hop / 2 and starts[-2] + window >= flush:
            starts[-1] = flush
        else:
            starts.append(flush)
    return starts


def predict_files(model, metadata, paths, window_seconds=None, hop_seconds=None, batch_size=32,
                  workers=None, tta_copies=0, speakers="auto", max_seconds=None):
    """Predict the emotion of every readable file; unreadable ones are skipped with a warning.

    `model` and `metadata` are a Keras model and its metadata (`serkeras.models.load_model`),
    or an ONNX export's (`serkeras.onnx_runtime.load_onnx_model`, no TensorFlow needed).

    Recordings longer than `window_seconds` (default: the model's fixed length,
    or 4 s for variable-length models) are cut into windows `hop_seconds` apart;
    the overall probabilities are the mean over windows. Features are computed in
    `workers` processes (default: as `serkeras.cache.cached_features` decides).
    With `tta_copies` > 0 (test-time augmentation) a file's probabilities are also averaged over that many copies
    made with `TEST_TIME_AUGMENTATION`; a windowed recording's timeline is the file's own.
    A model trained with speaker normalisation gets each file's features less the
    mean over the readable files of its speaker, as `speaker_of(path, speakers)`
    tells them apart; a model that standardises its embedding by speaker gets the
    mean and variance of the embeddings of the speaker's files, each file (the mean
    of its windows' embeddings) counted once, as `serkeras evaluate` counts each clip.
    Speakers heard in one file only are reported in a warning. Only the feature kinds that the model
    takes are computed.
    Files longer than `max_seconds` are skipped (default: the model's own limit
    for training clips, `feature_config.max_seconds`).

    Returns
    -------
    predictions : list of Prediction
    skipped : list of (path, reason)
        The files that could not be used, also reported in one warning.

    Raises
    ------
    DataError
        When no file can be used; the message gives each file's reason.
    """
    config = metadata.feature_config
    if max_seconds is not None:
        config = dataclasses.replace(config, max_seconds=max_seconds)
    frames_per_second = config.sample_rate / config.hop_length
    window_seconds = window_seconds or (config.fixed_seconds if config.length_mode == "fixed" else 4.0)
    hop_seconds = hop_seconds or window_seconds / 2
    window, hop = int(window_seconds * frames_per_second), max(1, int(hop_seconds * frames_per_second))
    from serkeras.onnx_runtime import OnnxModel  # NumPy only

    # An ONNX model (`serkeras.onnx_runtime`) runs without TensorFlow: evaluation (and its tf.data pipeline)
    # is imported for Keras models only.
    onnx = isinstance(model, OnnxModel)
    if not onnx:
        from serkeras.evaluation import model_input_names, predict_features
    kinds = feature_kinds(model.input_names if onnx else model_input_names(model))
    pieces, owners, skipped, durations = [], [], [], {}
    for copy in range(tta_copies + 1):
        augmentation = TEST_TIME_AUGMENTATION if copy else None
        readable = []
        for path, features in compute_clips(list(durations) if copy else paths, config, workers,
                                            augmentation=augmentation, copy=copy, kinds=kinds):
            if isinstance(features, str):  # (a copy of a readable file is readable)
                skipped.append((path, features))
            else:
                readable.append((path, features))
        keys = [speaker_of(path, speakers) for path, _ in readable] if metadata.normalises_by_speaker else []
        if keys and not copy:
            _warn_lone_speakers(keys, speakers)
        if config.speaker_norm and readable:
            paths_read, features_read = zip(*readable)
            readable = list(zip(paths_read, normalize_by_speaker(features_read, keys, scale=config.speaker_scale)))
        for path, features in readable:
            n = len(features[kinds[0]])  # every kind has a row per frame
            if not copy:
                durations[path] = (n - 1) / frames_per_second
            for start in windows(n, window, hop):
                pieces.append({k: v[start:start + window] for k, v in features.items()})
                owners.append((path, copy, start))
    if not pieces:  # one error that says why, rather than a warning before it
        raise DataError(f"none of the {len(skipped)} files could be used: {describe_skipped(skipped)}")
    warn_skipped(skipped, "audio files")
    # A model that standardises its embedding by speaker takes each copy's statistics from the same copy.
    if onnx:
        probabilities = model.predict(pieces, batch_size)
    else:
        piece_speakers = ([(speaker_of(path, speakers), copy) for path, copy, _ in owners]
                          if metadata.standardises_embedding else None)
        probabilities = predict_features(model, pieces, config.length_mode, config.fixed_frames, batch_size,
                                         piece_speakers, recordings=[(path, copy) for path, copy, _ in owners])
    labels = list(metadata.labels)
    results = {}  # path -> copy -> [(start, probabilities)]
    for (path, copy, start), p in zip(owners, probabilities):
        results.setdefault(path, {}).setdefault(copy, []).append((start, p))
    predictions = []
    for path, copies in results.items():
        mean = np.mean([np.mean([p for _, p in parts], axis=0) for parts in copies.values()], axis=0)
        parts, timeline = copies[0], []
        if len(parts) > 1:
            for start, p in parts:
                end = min(start + window, durations[path] * frames_per_second)
                timeline.append((start / frames_per_second, end / frames_per_second, labels[int(np.argmax(p))],
                                 dict(zip(labels, map(float, p)))))
        predictions.append(Prediction(path, labels[int(np.argmax(mean))], dict(zip(labels, map(float, mean))),
                                      durations[path], timeline))
    return predictions, skipped


class LoneSpeakerWarning(UserWarning):
    """Speaker normalisation had a single recording of some speaker to take the mean from."""


def _warn_lone_speakers(keys, grouping):
    counts = collections.Counter(keys)
    lone = sum(n == 1 for n in counts.values())
    if lone:
        warnings.warn(f"the model normalises by speaker and {lone} of {len(counts)} speakers (--speaker {grouping}) "
                      "have one recording only: their statistics are less reliable, so are their predictions",
                      LoneSpeakerWarning, stacklevel=3)
