"""Deterministic train/validation/test splits, returned as explicit lists of clips.

`random` is the study's protocol (speakers shared across parts); `actor` and
`kfold` are speaker-independent: no speaker appears in two parts.
"""

import dataclasses
import math
from collections import Counter

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from serkeras.errors import DataError

SPLITS = ("random", "actor", "kfold")


@dataclasses.dataclass(frozen=True)
class Split:
    """Three disjoint tuples of clips plus a description of how they were made."""

    train: tuple
    val: tuple
    test: tuple
    description: str

    def parts(self):
        return {"train": self.train, "val": self.val, "test": self.test}


def _check_fractions(val_fraction, test_fraction):
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("val and test fractions must be in (0, 1) and sum to less than 1")


def _check_stratified_sizes(clips, val_fraction, test_fraction):
    """Refuse, with the numbers, a corpus too small or too unbalanced for `random_split`.

    scikit-learn's own errors ("test_size = 4 should be greater or equal to the
    number of classes = 6") name its arguments, not the options that change them.
    Part sizes are computed as `train_test_split` rounds them.
    """
    counts = Counter(c.label for c in clips)
    fewest = min(sorted(counts), key=counts.get)
    if counts[fewest] < 3:
        raise DataError(f"label {fewest!r} has {counts[fewest]} clip{'s' * (counts[fewest] > 1)}: a random split "
                        "needs at least 3 clips of each label (one for each part); add clips of it or leave it out, "
                        "or use --split actor")
    n, n_labels = len(clips), len(counts)
    n_test = math.ceil(test_fraction * n)
    n_rest = n - n_test
    n_val = math.ceil(val_fraction / (1 - test_fraction) * n_rest)
    # The smallest fraction (in hundredths, the options' precision) that gives a part one clip per label; with
    # 3 clips of each label it is at most about 1/3, within the options' range.
    for part, size, option, least in (("test", n_test, "--test-fraction", n_labels / n),
                                      ("validation", n_val, "--val-fraction", n_labels / n_rest * (1 - test_fraction))):
        if size < n_labels:
            raise DataError(f"a random split of {n} clips would give the {part} part {size} clips for {n_labels} "
                            f"labels, and it needs one clip of each label: raise {option} to "
                            f"{math.ceil(least * 100 - 1e-9) / 100:g}, or use --split actor")
    if n_rest - n_val < n_labels:
        raise DataError(f"a random split of {n} clips would leave {n_rest - n_val} clips for training, fewer than the "
                        f"{n_labels} labels: lower --val-fraction or --test-fraction")


def random_split(clips, val_fraction=0.1, test_fraction=0.1, seed=0):
    """Split clips at random, stratified by label (80/10/10 by default)."""
    _check_fractions(val_fraction, test_fraction)
    clips = list(clips)
    _check_stratified_sizes(clips, val_fraction, test_fraction)
    labels = [c.label for c in clips]
    try:
        rest, test = train_test_split(clips, test_size=test_fraction, stratify=labels, random_state=seed)
        rest_labels = [c.label for c in rest]
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=rest_labels, random_state=seed
        )
    except ValueError as exc:  # a rounding corner the checks above do not foresee: still one line
        raise DataError(f"a random split of {len(clips)} clips is not possible ({exc}): add clips, change "
                        "--val-fraction or --test-fraction, or use --split actor") from None
    return Split(tuple(train), tuple(val), tuple(test), f"random stratified {val_fraction:g}/{test_fraction:g} seed={seed}")


def _speakers(clips):
    speakers = sorted({c.speaker for c in clips})
    if "" in speakers:
        raise DataError("a speaker-independent split needs a speaker for every clip (manifest column 'speaker')")
    if len(speakers) < 3:
        raise DataError(f"a speaker-independent split needs at least 3 speakers, got {len(speakers)}")
    return speakers


def _describe_speakers(clips):
    """'4 speakers (2 Female, 2 Male)': how many speakers of each sex a split has to divide."""
    sex_of = {c.speaker: c.sex or "sex unknown" for c in clips}
    by_sex = Counter(sex_of.values())
    return f"{len(sex_of)} speakers ({', '.join(f'{n} {sex}' for sex, n in sorted(by_sex.items()))})"


def _speaker_parts(clips, val_fraction, test_fraction, seed):
    """Train, val and test clips with speakers of each sex divided in the same proportions (parts may be empty)."""
    sex_of = {c.speaker: c.sex for c in clips}
    rng = np.random.default_rng(seed)
    part_of = {}
    for sex in sorted(set(sex_of.values())):
        group = sorted(s for s, x in sex_of.items() if x == sex)
        rng.shuffle(group)
        n_test = max(1, round(len(group) * test_fraction))
        n_val = max(1, round(len(group) * val_fraction)) if len(group) - n_test > 1 else 0
        for i, speaker in enumerate(group):
            part_of[speaker] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return {name: tuple(c for c in clips if part_of[c.speaker] == name) for name in ("train", "val", "test")}


def actor_split(clips, val_fraction=0.1, test_fraction=0.1, seed=0):
    """Speaker-disjoint split; speakers of each sex are divided in the same proportions."""
    _check_fractions(val_fraction, test_fraction)
    clips = list(clips)
    _speakers(clips)
    parts = _speaker_parts(clips, val_fraction, test_fraction, seed)
    for name, part in parts.items():
        if not part:
            raise DataError(f"an actor split of {_describe_speakers(clips)} leaves the {name} part without a "
                            "speaker: add speakers (3 of one sex suffice), or use --split random")
    return Split(**parts, description=f"actor-disjoint (balanced by sex) {val_fraction:g}/{test_fraction:g} seed={seed}")


def kfold_split(clips, fold, n_folds=5, val_fraction=0.1, seed=0):
    """Fold `fold` of K speaker-grouped folds, stratified by label.

    The fold is the test part; validation speakers are drawn from the other
    folds, so all three parts are speaker-disjoint.
    """
    _check_fractions(val_fraction, val_fraction)
    clips = list(clips)
    speakers = _speakers(clips)
    if not 0 <= fold < n_folds:
        raise DataError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    if len(speakers) < n_folds:
        raise DataError(f"a {n_folds}-fold split needs at least {n_folds} speakers (one per fold), got "
                        f"{len(speakers)}: lower --n-folds, or use --split random")
    labels = [c.label for c in clips]
    groups = [c.speaker for c in clips]
    folds = list(StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(clips, labels, groups))
    rest_idx, test_idx = folds[fold]
    rest = [clips[i] for i in rest_idx]
    train, val = _train_and_val_speakers(rest, val_fraction, seed + 1 + fold,
                                         f"fold {fold + 1}/{n_folds} leaves",
                                         "lower --n-folds, add speakers, or use --split random")
    return Split(train, val, tuple(clips[i] for i in test_idx), f"kfold {fold + 1}/{n_folds} by speaker seed={seed}")


def _train_and_val_speakers(clips, val_fraction, seed, leaves, remedy):
    """`clips` divided into training and validation clips by speaker (balanced by sex), nothing held out.

    `leaves` and `remedy` word the error when there are too few speakers.
    """
    inner = _speaker_parts(clips, val_fraction, val_fraction, seed)
    # The inner split's "test" speakers go back to training: only val is held out here.
    val = set(inner["val"])
    train = tuple(c for c in clips if c not in val)
    if not val or not train:
        raise DataError(f"{leaves} {_describe_speakers(clips)} for training and validation, too few to give each a "
                        f"speaker of its own (3 of one sex suffice): {remedy}")
    return train, inner["val"]


def make_split(clips, kind="random", val_fraction=0.1, test_fraction=0.1, fold=0, n_folds=5, seed=0):
    """Dispatch to `random_split`, `actor_split` or `kfold_split` by name.

    Clips of several corpora (`serkeras.corpus.combine_corpora`) are split
    within each corpus and the parts joined, so every part keeps the corpus
    mix and each corpus gives validation and test speakers in proportion.
    """
    corpora = sorted({c.corpus for c in clips})
    if len(corpora) > 1:
        return _split_each_corpus(clips, corpora, kind, val_fraction, test_fraction, fold, n_folds, seed)
    if kind == "random":
        return random_split(clips, val_fraction, test_fraction, seed)
    if kind == "actor":
        return actor_split(clips, val_fraction, test_fraction, seed)
    if kind == "kfold":
        return kfold_split(clips, fold, n_folds, val_fraction, seed)
    raise DataError(f"unknown split {kind!r}; choose one of {', '.join(SPLITS)}")


def _split_each_corpus(clips, corpora, kind, val_fraction, test_fraction, fold, n_folds, seed):
    """`make_split` of each corpus's clips alone, the parts joined (in the order of `corpora`)."""
    splits = []
    for name in corpora:
        try:
            splits.append(make_split([c for c in clips if c.corpus == name], kind, val_fraction, test_fraction, fold,
                                     n_folds, seed))
        except DataError as exc:
            raise DataError(f"corpus {name}: {exc}") from None
    joined = {part: tuple(c for s in splits for c in s.parts()[part]) for part in ("train", "val", "test")}
    return Split(**joined, description=f"{splits[0].description}, within each of {len(corpora)} corpora")


def held_out_corpus_split(clips, held_out, val_fraction=0.1, seed=0):
    """Leave one corpus out: test on every clip of `held_out`, train and validate on the other corpora.

    Validation speakers are drawn within each training corpus (balanced by
    sex, as `actor_split` draws them), so validation keeps the corpus mix and
    shares no speaker with training.

    Parameters
    ----------
    clips : sequence of Clip
        Clips of several corpora (`serkeras.corpus.combine_corpora`).
    held_out : str
        The corpus whose clips are the test part.
    val_fraction : float
    seed : int

    Returns
    -------
    Split
    """
    _check_fractions(val_fraction, val_fraction)
    corpora = sorted({c.corpus for c in clips} - {held_out})
    test = tuple(c for c in clips if c.corpus == held_out)
    if not test or not corpora:
        raise DataError(f"leaving corpus {held_out!r} out needs its clips and at least one other corpus")
    train, val = [], []
    for name in corpora:
        own = [c for c in clips if c.corpus == name]
        try:
            _speakers(own)
            part_train, part_val = _train_and_val_speakers(own, val_fraction, seed, "it has",
                                                             "add speakers to it, or leave it out")
        except DataError as exc:
            raise DataError(f"corpus {name}: {exc}") from None
        train += part_train
        val += part_val
    return Split(tuple(train), tuple(val), test,
                 f"{held_out} held out; speaker-disjoint validation {val_fraction:g} within {', '.join(corpora)} "
                 f"seed={seed}")
