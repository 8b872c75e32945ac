"""Splits of the real 73-actor corpus listing: stratified, speaker-disjoint, deterministic."""

from collections import Counter

import pytest

from serkeras.corpus import Clip, load_crema_d
from serkeras.errors import DataError
from serkeras.splits import actor_split, kfold_split, make_split, random_split


@pytest.fixture(scope="module")
def clips(crema_dir):
    # Listing only: cheap even for the whole corpus.
    return load_crema_d(crema_dir).clips


def _paths(part):
    return [c.path for c in part]


def _speakers(part):
    return {c.speaker for c in part}


def _assert_partition(split, clips):
    parts = split.parts()
    assert set(parts) == {"train", "val", "test"}
    all_paths = [p for part in parts.values() for p in _paths(part)]
    assert len(all_paths) == len(set(all_paths)) == len(clips)
    assert set(all_paths) == set(_paths(clips))
    assert all(len(part) > 0 for part in parts.values())


def _assert_speaker_disjoint(split):
    train, val, test = (_speakers(p) for p in (split.train, split.val, split.test))
    assert not train & val and not train & test and not val & test


def test_random_split_is_stratified_with_the_right_fractions(clips):
    split = random_split(clips, val_fraction=0.1, test_fraction=0.1, seed=0)
    _assert_partition(split, clips)
    n = len(clips)
    assert len(split.test) == pytest.approx(0.1 * n, abs=2)
    assert len(split.val) == pytest.approx(0.1 * n, abs=2)
    overall = Counter(c.label for c in clips)
    for part in (split.train, split.val, split.test):
        counts = Counter(c.label for c in part)
        for label, total in overall.items():
            assert counts[label] / len(part) == pytest.approx(total / n, abs=0.005)
    # The study's protocol shares speakers across parts.
    assert _speakers(split.test) & _speakers(split.train)
    assert "random" in split.description and "seed=0" in split.description


def test_random_split_other_fractions(clips):
    split = random_split(clips, val_fraction=0.15, test_fraction=0.25, seed=3)
    _assert_partition(split, clips)
    assert len(split.test) / len(clips) == pytest.approx(0.25, abs=0.002)
    assert len(split.val) / len(clips) == pytest.approx(0.15, abs=0.002)


def test_random_split_is_deterministic_per_seed(clips):
    a, b = random_split(clips, seed=7), random_split(clips, seed=7)
    for name in ("train", "val", "test"):
        assert _paths(a.parts()[name]) == _paths(b.parts()[name])
    c = random_split(clips, seed=8)
    assert set(_paths(c.test)) != set(_paths(a.test))


def test_actor_split_is_speaker_disjoint_and_balanced_by_sex(clips):
    split = actor_split(clips, seed=0)
    _assert_partition(split, clips)
    _assert_speaker_disjoint(split)
    sex_of = {c.speaker: c.sex for c in clips}
    assert set(sex_of.values()) == {"Female", "Male"}
    per_sex = Counter(sex_of.values())  # 34 female, 39 male actors
    for name, part in split.parts().items():
        sexes = Counter(sex_of[s] for s in _speakers(part))
        assert set(sexes) == {"Female", "Male"}, name
        if name != "train":
            # Each sex is divided in the same proportions: 10% of each sex's actors, rounded.
            assert sexes == {sex: round(0.1 * n) for sex, n in per_sex.items()}, (name, sexes)
    n_speakers = len(sex_of)
    assert len(_speakers(split.test)) == pytest.approx(0.1 * n_speakers, abs=2)
    assert len(_speakers(split.val)) == pytest.approx(0.1 * n_speakers, abs=2)
    # Each actor's clips stay together.
    for part in split.parts().values():
        for speaker in _speakers(part):
            assert sum(c.speaker == speaker for c in part) == sum(c.speaker == speaker for c in clips)


def test_actor_split_is_deterministic_per_seed(clips):
    a, b = actor_split(clips, seed=1), actor_split(clips, seed=1)
    for name in ("train", "val", "test"):
        assert _paths(a.parts()[name]) == _paths(b.parts()[name])
    c = actor_split(clips, seed=2)
    assert _speakers(c.test) != _speakers(a.test)


def test_kfold_five_folds_partition_the_actors(clips):
    n_folds = 5
    test_speakers, test_paths = [], []
    for fold in range(n_folds):
        split = kfold_split(clips, fold, n_folds=n_folds, seed=0)
        _assert_partition(split, clips)
        _assert_speaker_disjoint(split)
        assert f"{fold + 1}/{n_folds}" in split.description
        test_speakers.append(_speakers(split.test))
        test_paths.extend(_paths(split.test))
        assert len(split.test) == pytest.approx(len(clips) / n_folds, rel=0.25)
        # Every fold's test part has every emotion (stratified).
        assert {c.label for c in split.test} == {c.label for c in clips}
    # Test folds are disjoint and together cover every actor and every clip exactly once.
    assert sum(len(s) for s in test_speakers) == len(_speakers(clips)) == 73
    assert set().union(*test_speakers) == _speakers(clips)
    assert sorted(test_paths) == sorted(_paths(clips))


def test_kfold_is_deterministic_and_seeded(clips):
    a, b = kfold_split(clips, 2, seed=4), kfold_split(clips, 2, seed=4)
    assert _paths(a.test) == _paths(b.test) and _paths(a.val) == _paths(b.val)
    assert _speakers(kfold_split(clips, 2, seed=5).test) != _speakers(a.test)


def test_make_split_dispatches(clips):
    assert _paths(make_split(clips, "random", seed=3).test) == _paths(random_split(clips, seed=3).test)
    assert _paths(make_split(clips, "actor", seed=3).test) == _paths(actor_split(clips, seed=3).test)
    assert _paths(make_split(clips, "kfold", fold=1, seed=3).test) == _paths(kfold_split(clips, 1, seed=3).test)
    with pytest.raises(DataError, match="unknown split 'speaker'"):
        make_split(clips, "speaker")


def _toy(speakers, per_speaker=6, sex=""):
    labels = ("a", "b", "c")
    return [Clip(f"/x/{s}_{i}.wav", labels[i % 3], s, sex=sex) for s in speakers for i in range(per_speaker)]


def test_too_few_speakers(clips):
    two = _toy(["s1", "s2"])
    with pytest.raises(DataError, match="at least 3 speakers, got 2"):
        actor_split(two)
    with pytest.raises(DataError, match="at least 3 speakers, got 2"):
        kfold_split(two, 0)
    # Real clips of only two actors.
    real_two = [c for c in clips if c.speaker in {clips[0].speaker, clips[-1].speaker}]
    with pytest.raises(DataError, match="at least 3 speakers"):
        actor_split(real_two)


def test_missing_speakers():
    clips = _toy(["s1", "s2", "s3", "s4"]) + [Clip("/x/anon.wav", "a")]
    with pytest.raises(DataError, match="speaker for every clip"):
        actor_split(clips)
    with pytest.raises(DataError, match="speaker for every clip"):
        kfold_split(clips, 0)
    # The random split does not need speakers.
    assert len(random_split(_toy(["s1", "s2", "s3", "s4"], per_speaker=10) + [Clip(f"/y/{i}.wav", "abc"[i % 3])
                                                                               for i in range(9)]).test) > 0


def test_bad_fractions_and_folds(clips):
    for val, test in ((0, 0.1), (0.1, 0), (0.5, 0.5), (1.2, 0.1)):
        with pytest.raises(DataError, match="fractions"):
            random_split(clips, val, test)
        with pytest.raises(DataError, match="fractions"):
            actor_split(clips, val, test)
    for fold in (-1, 5):
        with pytest.raises(DataError, match=r"fold must be in 0\.\.4"):
            kfold_split(clips, fold, n_folds=5)


def test_actor_split_without_sex_information():
    clips = _toy([f"s{i}" for i in range(10)])
    split = actor_split(clips, seed=0)
    _assert_partition(split, clips)
    _assert_speaker_disjoint(split)
    assert len(_speakers(split.test)) == 1 and len(_speakers(split.val)) == 1


def _per_label(clips, n):
    """The first `n` real clips of each emotion (by file name), as a small user folder would hold."""
    chosen = []
    for label in sorted({c.label for c in clips}):
        chosen += [c for c in clips if c.label == label][:n]
    return chosen


def test_small_corpus_random_split_says_which_fraction_to_raise(clips):
    small = _per_label(clips, 6)  # 36 clips: 10% is 4 test clips for 6 labels
    with pytest.raises(DataError, match=r"36 clips would give the test part 4 clips for 6 labels.*"
                                        r"raise --test-fraction to 0\.17"):
        random_split(small)
    with pytest.raises(DataError, match=r"validation part 4 clips for 6 labels.*raise --val-fraction to 0\.18"):
        random_split(small, test_fraction=0.17)
    split = random_split(small, val_fraction=0.18, test_fraction=0.17)
    _assert_partition(split, small)
    assert min(len(split.val), len(split.test)) >= 6
    smallest = _per_label(clips, 3)
    with pytest.raises(DataError, match=r"18 clips would give the test part 2 clips.*--test-fraction to 0\.34"):
        random_split(smallest)
    with pytest.raises(DataError, match="18 clips would leave 5 clips for training, fewer than the 6 labels"):
        random_split(smallest, val_fraction=0.34, test_fraction=0.34)


def test_a_label_with_too_few_clips_is_named(clips):
    unbalanced = _per_label(clips, 6)
    lone = next(c for c in clips if c.label == "sad")
    unbalanced = [c for c in unbalanced if c.label != "sad"] + [lone]
    with pytest.raises(DataError, match="label 'sad' has 1 clip: a random split needs at least 3 clips of each label"):
        random_split(unbalanced, val_fraction=0.3, test_fraction=0.3)


def test_speaker_splits_with_too_few_speakers_say_what_they_need():
    two_by_sex = _toy(["f1", "f2"], sex="Female") + _toy(["m1", "m2"], sex="Male")
    with pytest.raises(DataError, match=r"4 speakers \(2 Female, 2 Male\) leaves the val part without a speaker"):
        actor_split(two_by_sex)
    with pytest.raises(DataError, match="5-fold split needs at least 5 speakers.*got 4: lower --n-folds"):
        kfold_split(two_by_sex, 0, n_folds=5)
    with pytest.raises(DataError, match="fold 1/2 leaves 2 speakers.*lower --n-folds"):
        kfold_split(two_by_sex, 0, n_folds=2)
