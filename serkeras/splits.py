"""Deterministic train/validation/test splits, returned as explicit lists of clips.

`random` is the study's protocol (speakers shared across parts); `actor` and
`kfold` are speaker-independent: no speaker appears in two parts.
"""

import dataclasses

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


def random_split(clips, val_fraction=0.1, test_fraction=0.1, seed=0):
    """Split clips at random, stratified by label (80/10/10 by default)."""
    _check_fractions(val_fraction, test_fraction)
    clips = list(clips)
    labels = [c.label for c in clips]
    rest, test = train_test_split(clips, test_size=test_fraction, stratify=labels, random_state=seed)
    rest_labels = [c.label for c in rest]
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=rest_labels, random_state=seed
    )
    return Split(tuple(train), tuple(val), tuple(test), f"random stratified {val_fraction:g}/{test_fraction:g} seed={seed}")


def _speakers(clips):
    speakers = sorted({c.speaker for c in clips})
    if "" in speakers:
        raise DataError("a speaker-independent split needs a speaker for every clip (manifest column 'speaker')")
    if len(speakers) < 3:
        raise DataError(f"a speaker-independent split needs at least 3 speakers, got {len(speakers)}")
    return speakers


def actor_split(clips, val_fraction=0.1, test_fraction=0.1, seed=0):
    """Speaker-disjoint split; speakers of each sex are divided in the same proportions."""
    _check_fractions(val_fraction, test_fraction)
    clips = list(clips)
    _speakers(clips)
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
    parts = {name: tuple(c for c in clips if part_of[c.speaker] == name) for name in ("train", "val", "test")}
    return Split(**parts, description=f"actor-disjoint (balanced by sex) {val_fraction:g}/{test_fraction:g} seed={seed}")


def kfold_split(clips, fold, n_folds=5, val_fraction=0.1, seed=0):
    """Fold `fold` of K speaker-grouped folds, stratified by label.

    The fold is the test part; validation speakers are drawn from the other
    folds, so all three parts are speaker-disjoint.
    """
    clips = list(clips)
    _speakers(clips)
    if not 0 <= fold < n_folds:
        raise DataError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    labels = [c.label for c in clips]
    groups = [c.speaker for c in clips]
    folds = list(StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(clips, labels, groups))
    rest_idx, test_idx = folds[fold]
    rest = [clips[i] for i in rest_idx]
    inner = actor_split(rest, val_fraction=val_fraction, test_fraction=val_fraction, seed=seed + 1 + fold)
    # The inner split's "test" speakers go back to training: only val is held out here.
    val = set(inner.val)
    train = tuple(c for c in rest if c not in val)
    return Split(train, inner.val, tuple(clips[i] for i in test_idx), f"kfold {fold + 1}/{n_folds} by speaker seed={seed}")


def make_split(clips, kind="random", val_fraction=0.1, test_fraction=0.1, fold=0, n_folds=5, seed=0):
    """Dispatch to `random_split`, `actor_split` or `kfold_split` by name."""
    if kind == "random":
        return random_split(clips, val_fraction, test_fraction, seed)
    if kind == "actor":
        return actor_split(clips, val_fraction, test_fraction, seed)
    if kind == "kfold":
        return kfold_split(clips, fold, n_folds, val_fraction, seed)
    raise DataError(f"unknown split {kind!r}; choose one of {', '.join(SPLITS)}")
