"""Speaker statistics (serkeras.speakers): feature-level speaker normalisation and the embedding statistics
of a model that standardises by speaker, from one set of per-clip sums."""

import itertools

import numpy as np
import pytest

from serkeras.features import FeatureConfig, compute_stats
from serkeras.speakers import (
    ClipSums,
    clips_by_speaker,
    embedding_speaker_stats,
    embedding_stats,
    normalize_by_speaker,
    normalize_by_speaker_subsets,
    population_stats,
    speaker_input_arrays,
    speaker_normalized,
    speaker_stats,
)


def _clip_features(rng, offsets, frames=(3, 5, 4)):
    return [{"logmel": (rng.normal(size=(n, 4)) + offset).astype(np.float16),
             "spectral": rng.normal(size=(n, 2)).astype(np.float32)} for n, offset in zip(frames, offsets)]


def test_normalize_by_speaker_removes_each_speakers_frame_weighted_mean():
    rng = np.random.default_rng(0)
    features = _clip_features(rng, (0.0, 10.0, 50.0))
    normalised = normalize_by_speaker(features, ["a", "a", "b"])
    for group in (normalised[:2], normalised[2:]):  # over one speaker's frames, every column averages 0
        for key in ("logmel", "spectral"):
            frames = np.concatenate([f[key] for f in group]).astype(np.float64)
            np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=0.05)
    # What tells one speaker's clips apart stays: the second clip is still about 10 above the first
    # (per-utterance normalisation would make both 0).
    gap = normalised[1]["logmel"].astype(np.float64).mean() - normalised[0]["logmel"].astype(np.float64).mean()
    assert gap == pytest.approx(10.0, abs=1.5)
    assert [(f["logmel"].dtype, f["logmel"].shape) for f in normalised] == [(np.float16, (n, 4)) for n in (3, 5, 4)]
    assert features[0]["logmel"].astype(np.float64).mean() != pytest.approx(normalised[0]["logmel"].mean(), abs=1)
    with pytest.raises(ValueError, match="3 clips but 2 speakers"):
        normalize_by_speaker(features, ["a", "a"])


def test_normalize_by_speaker_with_scale_gives_each_speaker_unit_variance():
    rng = np.random.default_rng(3)
    # Speaker b acts in a range ten times wider than speaker a.
    features = [{"spectral": (rng.normal(size=(n, 3)) * spread + offset).astype(np.float32)}
                for n, spread, offset in ((40, 1.0, 0.0), (60, 1.0, 3.0), (50, 10.0, 50.0), (30, 10.0, 20.0))]
    speakers = ["a", "a", "b", "b"]
    scaled = normalize_by_speaker(features, speakers, scale=True)
    for group in (scaled[:2], scaled[2:]):
        frames = np.concatenate([f["spectral"] for f in group]).astype(np.float64)
        np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(frames.std(axis=0), 1.0, rtol=1e-4)
    # Without scale the spreads stay apart; with it, so does the order of a speaker's clips.
    shifted = normalize_by_speaker(features, speakers)
    assert np.concatenate([f["spectral"] for f in shifted[2:]]).std() > 5
    assert scaled[1]["spectral"].mean() > scaled[0]["spectral"].mean()
    assert scaled[2]["spectral"].mean() > scaled[3]["spectral"].mean()
    # The subsets' version with share 0 is the same; with subsets, a one-clip subset is that clip's own z-score.
    for got, expected in zip(normalize_by_speaker_subsets(features, speakers, 0.0, scale=True), scaled):
        np.testing.assert_allclose(got["spectral"], expected["spectral"], atol=1e-4)
    alone = normalize_by_speaker(features, range(4), scale=True)
    for features_alone in alone:
        np.testing.assert_allclose(features_alone["spectral"].std(axis=0), 1.0, rtol=1e-4)


def test_normalize_by_speaker_subsets_removes_the_mean_of_a_subset_that_holds_the_clip():
    # One speaker, one frame per clip, values whose subsets all have different means (0.0007 apart at
    # least): the mean a clip lost names the clips it was taken over.
    values = 10 * np.sqrt([2.0, 3, 5, 7, 11, 13, 17, 19])
    subsets_by_mean = [(np.mean(values[list(s)]), set(s)) for n in range(1, len(values) + 1)
                       for s in itertools.combinations(range(len(values)), n)]
    features = [{"spectral": np.full((1, 1), v, np.float32)} for v in values]
    speakers = ["a"] * len(values)

    def subsets(normalised):
        removed = values - np.array([f["spectral"][0, 0] for f in normalised])
        found = []
        for i, mean in enumerate(removed):
            gap, members = min((abs(mean - m), s) for m, s in subsets_by_mean)
            assert gap < 1e-4 and i in members, (i, members)  # the clip itself and some others
            found.append(len(members))
        return found

    everyone = [len(values)] * len(values)
    assert subsets(normalize_by_speaker_subsets(features, speakers, 0.0)) == everyone
    draws = [subsets(normalize_by_speaker_subsets(features, speakers, 1.0, seed=s)) for s in range(25)]
    sizes = np.concatenate(draws)
    assert sizes.min() == 1 and sizes.max() == len(values)  # from the clip alone to all of them
    assert np.mean(sizes <= 3) > 0.4  # log-uniform: small subsets are common
    assert draws[0] == subsets(normalize_by_speaker_subsets(features, speakers, 1.0, seed=0)) != draws[1]
    # share: the fraction of clips that get a subset; the rest keep the whole speaker's mean.
    half = np.concatenate([subsets(normalize_by_speaker_subsets(features, speakers, 0.5, seed=s))
                           for s in range(25)])
    assert 0.35 < np.mean(half == len(values)) - np.mean(sizes == len(values)) < 0.65


def test_normalize_by_speaker_subsets_keeps_speakers_apart_and_checks_its_arguments():
    rng = np.random.default_rng(2)
    features = _clip_features(rng, (0.0, 10.0, 50.0, 60.0), frames=(3, 5, 4, 2))
    speakers = ["a", "a", "b", "c"]
    plain = normalize_by_speaker(features, speakers)
    # With share 0 the subsets are every clip of the speaker: normalize_by_speaker's result, frame-weighted.
    for got, expected in zip(normalize_by_speaker_subsets(features, speakers, 0.0), plain):
        assert got["logmel"].dtype == np.float16 and got["logmel"].shape == expected["logmel"].shape
        np.testing.assert_allclose(got["logmel"].astype(np.float32), expected["logmel"].astype(np.float32),
                                   atol=1e-2)
        np.testing.assert_allclose(got["spectral"], expected["spectral"], atol=1e-5)
    # A speaker's subset never takes another speaker's clips: the one-clip speakers lose their own mean.
    for normalised in (normalize_by_speaker_subsets(features, speakers, 1.0, seed=s) for s in range(5)):
        for i in (2, 3):
            np.testing.assert_allclose(normalised[i]["spectral"].mean(axis=0), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="share must be in"):
        normalize_by_speaker_subsets(features, speakers, 1.5)
    with pytest.raises(ValueError, match="4 clips but 3 speakers"):
        normalize_by_speaker_subsets(features, speakers[:3], 0.5)


def test_speaker_normalized_follows_the_config_and_needs_speakers():
    from serkeras.corpus import Clip
    from serkeras.errors import DataError

    features = _clip_features(np.random.default_rng(1), (0.0, 10.0, 50.0))
    clips = [Clip(f"{i}.wav", "anger", speaker) for i, speaker in enumerate(["1001", "1001", "1002"])]
    assert all(a is b for a, b in zip(speaker_normalized(features, clips, FeatureConfig()), features))
    normalised = speaker_normalized(features, clips, FeatureConfig(speaker_norm=True))
    expected = normalize_by_speaker(features, ["1001", "1001", "1002"])
    assert all(np.array_equal(a["logmel"], b["logmel"]) for a, b in zip(normalised, expected))
    subsets = speaker_normalized(features, clips, FeatureConfig(speaker_norm=True), subset_share=1.0, seed=3)
    expected = normalize_by_speaker_subsets(features, ["1001", "1001", "1002"], 1.0, seed=3)
    assert all(np.array_equal(a["logmel"], b["logmel"]) for a, b in zip(subsets, expected))
    scaled = speaker_normalized(features, clips, FeatureConfig(speaker_norm=True, speaker_scale=True))
    expected = normalize_by_speaker(features, ["1001", "1001", "1002"], scale=True)
    assert all(np.array_equal(a["logmel"], b["logmel"]) for a, b in zip(scaled, expected))
    assert not np.array_equal(scaled[0]["logmel"], normalised[0]["logmel"])
    with pytest.raises(DataError, match="1 clips have none"):
        speaker_normalized(features, clips[:2] + [Clip("2.wav", "anger")], FeatureConfig(speaker_norm=True))



def test_speaker_normalized_with_a_reference_takes_each_speakers_statistics_from_it():
    from serkeras.corpus import Clip
    from serkeras.errors import DataError

    rng = np.random.default_rng(4)
    features = _clip_features(rng, (0.0, 10.0, 50.0, 60.0, 5.0), frames=(3, 5, 4, 2, 6))
    speakers = ["1001", "1001", "1002", "1002", "1001"]
    clips = [Clip(f"{i}.wav", "anger", speaker) for i, speaker in enumerate(speakers)]
    stats = speaker_stats(features, speakers)
    assert sorted(stats) == ["1001", "1002"]
    np.testing.assert_allclose(stats["1002"].mean["spectral"],
                               np.concatenate([f["spectral"] for f in features[2:4]]).mean(axis=0), rtol=1e-5)
    for config in (FeatureConfig(speaker_norm=True), FeatureConfig(speaker_norm=True, speaker_scale=True)):
        whole = speaker_normalized(features, clips, config)
        # Scoring clips 1 and 3 with the statistics of every clip gives what they get among all of them,
        # not their own statistics (with which each would lose its own mean).
        scored = speaker_normalized([features[1], features[3]], [clips[1], clips[3]], config,
                                    reference=(features, clips))
        own = speaker_normalized([features[1], features[3]], [clips[1], clips[3]], config)
        for got, expected, alone in zip(scored, [whole[1], whole[3]], own):
            np.testing.assert_array_equal(got["spectral"], expected["spectral"])
            assert not np.allclose(got["spectral"], alone["spectral"], atol=0.1)
    with pytest.raises(DataError, match="no statistics for 1 speakers, e.g. 1002"):
        speaker_normalized(features, clips, FeatureConfig(speaker_norm=True), reference=(features[:2], clips[:2]))
    with pytest.raises(ValueError, match="give no `reference`"):
        speaker_normalized(features, clips, FeatureConfig(speaker_norm=True), 0.5, reference=(features, clips))
    # Without speaker normalisation the reference changes nothing.
    assert all(a is b for a, b in zip(speaker_normalized(features, clips, FeatureConfig(),
                                                         reference=(features[:1], clips[:1])), features))


def test_every_statistic_is_compute_stats_over_the_same_clips():
    """A speaker's statistics, any subset's and an embedding speaker's are the training part's arithmetic
    (`compute_stats`) over those clips: one mechanism, whatever is standardised."""
    rng = np.random.default_rng(4)
    features = _clip_features(rng, [0.0, 1.0, -2.0, 3.0], frames=(3, 5, 4, 6))
    speakers = ["b", "a", "b", "a"]
    assert clips_by_speaker(speakers) == {"b": [0, 2], "a": [1, 3]}
    for speaker, stats in speaker_stats(features, speakers).items():
        want = compute_stats([features[i] for i in clips_by_speaker(speakers)[speaker]])
        for kind in want.mean:
            np.testing.assert_allclose(stats.mean[kind], want.mean[kind], rtol=1e-6)
            np.testing.assert_allclose(stats.variance[kind], want.variance[kind], rtol=1e-5)
    subset = ClipSums(features).stats([0, 3])
    want = compute_stats([features[0], features[3]])
    np.testing.assert_allclose(subset.mean["logmel"], want.mean["logmel"], rtol=1e-6)
    # Embeddings: one row per clip, each a frame.
    embeddings = rng.normal(size=(5, 3)).astype(np.float32)
    stats = embedding_speaker_stats(embeddings, ["x", "y", "x", "x", "y"])
    mean, variance, count = stats["x"]
    np.testing.assert_allclose(mean, embeddings[[0, 2, 3]].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(variance, embeddings[[0, 2, 3]].var(axis=0), rtol=1e-4)
    assert count == 3 and stats["y"][2] == 2
    np.testing.assert_allclose(embedding_stats(embeddings)[0], embeddings.mean(axis=0), rtol=1e-5)
    arrays = speaker_input_arrays(["y", "x"], stats)
    assert [a.shape for a in arrays] == [(2, 3), (2, 3), (2, 1)] and arrays[2][:, 0].tolist() == [2, 3]
    np.testing.assert_allclose(population_stats(stats)[0], (stats["x"][0] + stats["y"][0]) / 2, rtol=1e-6)
    with pytest.raises(Exception, match="no reference recordings of 1 speakers"):
        speaker_input_arrays(["z"], stats)
    with pytest.raises(ValueError, match="no embeddings"):
        embedding_stats(embeddings[:0])


def test_a_long_recordings_windows_count_once_in_its_speakers_embedding_statistics():
    """`serkeras predict` cuts long recordings into windows; each recording counts once in its speaker's statistics
    (the mean of its windows' embeddings), as each clip does in training and `serkeras evaluate`."""
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(6, 4))  # speaker a: recording x (3 windows) and y (1); speaker b: z (2)
    speakers, recordings = ["a", "a", "a", "a", "b", "b"], ["x", "x", "x", "y", "z", "z"]
    pooled = embedding_speaker_stats(windows, speakers, recordings)
    once = embedding_speaker_stats(np.stack([windows[:3].mean(0), windows[3], windows[4:].mean(0)]), ["a", "a", "b"])
    for speaker in ("a", "b"):
        np.testing.assert_allclose(pooled[speaker][0], once[speaker][0], rtol=1e-6)
        np.testing.assert_allclose(pooled[speaker][1], once[speaker][1], rtol=1e-6)
    assert pooled["a"][2] == 2 and pooled["b"][2] == 1
    by_window = embedding_speaker_stats(windows, speakers)
    assert by_window["a"][2] == 4 and not np.allclose(by_window["a"][0], pooled["a"][0])
    with pytest.raises(ValueError):
        embedding_speaker_stats(windows, speakers, recordings[:-1])
