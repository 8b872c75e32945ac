"""Speaker statistics: which clips share a speaker, and the mean and variance of each speaker's features or
embeddings, all computed one way.

Two kinds of model use them. A model trained with ``--speaker-norm`` takes each
clip's features minus its speaker's mean (divided by the speaker's standard
deviation with ``--speaker-scale``): `speaker_normalized`, applied before the
model by training, `evaluate` and `predict`. A Whisper model with
``--speaker-standardization`` takes its speaker's embedding statistics as inputs
and standardises inside the graph (`serkeras.models.speaker_stages`):
`embedding_speaker_stats`, `speaker_input_arrays` and `population_stats` make
those inputs and the population prior.

Every statistic here comes from per-clip sums, sums of squares and frame counts
in float64 (`serkeras.features.ClipSums`), so a speaker's statistics, a random subset's and an
embedding speaker's are the same arithmetic; variances are floored at
`serkeras.features.VARIANCE_FLOOR`, as the training part's are.
"""

import numpy as np

from serkeras.errors import DataError
from serkeras.features import ClipSums


def clips_by_speaker(speakers):
    """{speaker: [clip indices]}, speakers in order of first appearance: the one answer to "which clips share
    a speaker".

    Parameters
    ----------
    speakers : sequence of hashable
        One entry per clip.

    Returns
    -------
    dict
    """
    groups = {}
    for i, speaker in enumerate(speakers):
        groups.setdefault(speaker, []).append(i)
    return groups


def speaker_stats(feature_list, speakers):
    """Mean and variance of each speaker's features, over every frame of that speaker's clips.

    Parameters
    ----------
    feature_list : sequence of dict
        Outputs of `serkeras.features.extract_features`.
    speakers : sequence of hashable
        One entry per clip.

    Returns
    -------
    dict
        {speaker: FeatureStats}, for `normalize_by_speaker`'s `stats`.
    """
    _check_speakers(feature_list, speakers)
    sums = ClipSums(feature_list)
    return {speaker: sums.stats(indices) for speaker, indices in clips_by_speaker(speakers).items()}


def normalize_by_speaker(feature_list, speakers, stats=None, scale=False):
    """Remove each speaker's mean from the features of that speaker's clips (and, with `scale`, divide
    them by that speaker's standard deviation).

    The statistics are taken over every frame of every clip with the same entry in
    `speakers`, so `feature_list` should hold several recordings of each speaker,
    ideally across emotions: with one clip they are that clip's own.

    Parameters
    ----------
    feature_list : sequence of dict
        Outputs of `serkeras.features.extract_features`.
    speakers : sequence of hashable
        One entry per clip. Clips that differ in conditions (such as the
        augmented copies of a training set) should get separate entries.
    stats : dict, optional
        {speaker: FeatureStats} (see `speaker_stats`) to use instead of the statistics over
        `feature_list`; it must hold every speaker in `speakers`.
    scale : bool
        Also divide by each speaker's standard deviation (per feature).

    Returns
    -------
    list of dict
        New arrays with the same shapes and dtypes, in the order of `feature_list`.
    """
    _check_speakers(feature_list, speakers)
    if stats is None:
        stats = speaker_stats(feature_list, speakers)
    missing = sorted(map(str, set(speakers) - set(stats)))
    if missing:
        raise DataError(f"no statistics for {len(missing)} speakers, e.g. {missing[0]}")
    return _standardize(feature_list, [stats[speaker] for speaker in speakers], scale)


def normalize_by_speaker_subsets(feature_list, speakers, share, seed=0, scale=False):
    """`normalize_by_speaker` where a random `share` of the clips each lose the mean of a random
    subset of their speaker's clips instead: a training-time augmentation.

    A subset holds the clip itself and `n - 1` other clips of its speaker, with
    `n` drawn log-uniformly from 1 to all of them, so a model trained on the
    result has seen means from one recording (the clip's own), a few, and many,
    as users will give it.

    Parameters
    ----------
    feature_list, speakers, scale
        As in `normalize_by_speaker` (with `scale`, the subset's standard deviation is used too).
    share : float in [0, 1]
        Fraction of clips that get a subset mean (0: exactly `normalize_by_speaker`).
    seed : int
        Seed of the draws.
    """
    _check_speakers(feature_list, speakers)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    sums = ClipSums(feature_list)
    clip_stats = [None] * len(feature_list)
    for indices in clips_by_speaker(speakers).values():  # the draws follow the order of `feature_list`
        indices = np.asarray(indices)
        whole = sums.stats(indices)
        for i in indices:
            clip_stats[i] = whole
            if rng.random() < share:
                n = int(round(np.exp(rng.uniform(0.0, np.log(len(indices))))))
                others = indices[indices != i]
                clip_stats[i] = sums.stats(np.concatenate([[i], rng.choice(others, n - 1, replace=False)]))
    return _standardize(feature_list, clip_stats, scale)


def speaker_normalized(feature_list, clips, config, subset_share=0.0, seed=0, reference=None):
    """The features of `clips` as a model made with `config` takes them.

    With `config.speaker_norm`, each clip loses the mean of its speaker's clips
    among `clips` (`normalize_by_speaker`), or, for a `subset_share` of them,
    of a random subset of those clips (`normalize_by_speaker_subsets`, for
    training), and is divided by their standard deviation with
    `config.speaker_scale`; otherwise they are returned as they are.

    `reference`, a pair (features, clips), takes each speaker's statistics from
    those clips instead, such as all of a speaker's recordings when only some
    of them are to be scored (`subset_share` must then be 0).

    Raises
    ------
    DataError
        With `config.speaker_norm`, when some clip has no speaker, or when
        `reference` has no clip of some clip's speaker.
    """
    if not config.speaker_norm:
        return list(feature_list)
    speakers = _speakers_of(clips)
    if reference is None:
        if subset_share:
            return normalize_by_speaker_subsets(feature_list, speakers, subset_share, seed, config.speaker_scale)
        return normalize_by_speaker(feature_list, speakers, scale=config.speaker_scale)
    if subset_share:
        raise ValueError("subset means are drawn from `clips` themselves; give no `reference` with them")
    reference_features, reference_clips = reference
    stats = speaker_stats(reference_features, _speakers_of(reference_clips))
    return normalize_by_speaker(feature_list, speakers, stats, config.speaker_scale)


def embedding_speaker_stats(embeddings, speakers, recordings=None):
    """{speaker: (mean, variance, count)} of pooled `embeddings` (clips, dim): what the head of
    `serkeras.models.speaker_stages` takes (`speaker_input_arrays`).

    Parameters
    ----------
    embeddings : array, shape (rows, dim)
    speakers : sequence of hashable
        Each row's speaker.
    recordings : sequence of hashable, optional
        Each row's recording, where rows are windows of longer recordings (`serkeras predict`): a
        recording's windows are averaged into one row first, so each recording counts once, however
        long, in its speaker's statistics and count, as each clip does in training and
        `serkeras evaluate`. Default: every row is a recording.
    """
    _check_speakers(embeddings, speakers)
    if recordings is not None:
        if len(recordings) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(recordings)} recordings")
        embeddings = np.asarray(embeddings)
        rows = list(clips_by_speaker(recordings).values())  # the one grouping rule, here by recording
        embeddings = np.stack([embeddings[r].mean(axis=0) for r in rows])
        speakers = [speakers[r[0]] for r in rows]
    rows = [{"embedding": np.asarray(row)[None]} for row in embeddings]  # an embedding is one frame
    sums = ClipSums(rows)
    return {speaker: _embedding_triple(sums.stats(indices), len(indices))
            for speaker, indices in clips_by_speaker(speakers).items()}


def embedding_stats(embeddings):
    """(mean, variance, count) of the rows of `embeddings`, as `embedding_speaker_stats` gives for one speaker."""
    if not len(embeddings):
        raise ValueError("no embeddings to compute statistics from")
    return embedding_speaker_stats(embeddings, [0] * len(embeddings))[0]


def speaker_input_arrays(speakers, stats):
    """[mean, variance, count] arrays for clips of `speakers`, from `stats` (see `embedding_speaker_stats`): the
    speaker-statistics inputs of a model that standardises by speaker, one row per clip.

    Raises `DataError` for a speaker without statistics.
    """
    missing = sorted(map(str, set(speakers) - set(stats)))
    if missing:
        raise DataError(f"no reference recordings of {len(missing)} speakers, e.g. {missing[0]}")
    mean, variance, count = (np.stack([np.asarray(stats[s][i], np.float32) for s in speakers]) for i in range(3))
    return [mean, variance, count[:, None]]


def population_stats(stats):
    """[mean, variance] of a population of speakers (`embedding_speaker_stats`): the mean of the speakers' means
    and of their variances, each speaker counted once; the population weights of `SpeakerStandardization`."""
    return [np.mean([m for m, _, _ in stats.values()], axis=0), np.mean([v for _, v, _ in stats.values()], axis=0)]


def _embedding_triple(stats, count):
    return stats.mean["embedding"], stats.variance["embedding"], count


def _check_speakers(feature_list, speakers):
    if len(feature_list) != len(speakers):
        raise ValueError(f"{len(feature_list)} clips but {len(speakers)} speakers")


def _standardize(feature_list, clip_stats, scale):
    """Each clip minus its entry of `clip_stats`' means, divided by its standard deviations with `scale`."""
    out = []
    for features, stats in zip(feature_list, clip_stats):
        out.append({key: ((array - stats.mean[key]) / (np.sqrt(stats.variance[key]) if scale else 1.0))
                    .astype(array.dtype) for key, array in features.items()})
    return out


def _speakers_of(clips):
    unknown = sum(not clip.speaker for clip in clips)
    if unknown:
        raise DataError(f"speaker normalisation needs each clip's speaker; {unknown} clips have none")
    return [clip.speaker for clip in clips]
