"""Corpora as explicit lists of clips: CREMA-D by file name, or any CSV manifest."""

import csv
import dataclasses
import os
import re
import warnings
from pathlib import Path

import numpy as np

from serkeras.audio import BROKEN_LINK, is_broken_link
from serkeras.errors import DataError

#: CREMA-D emotions in the fixed label order every serkeras model uses.
CREMA_D_LABELS = ("anger", "disgust", "fear", "happy", "neutral", "sad")
CREMA_D_CODES = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
_CREMA_D_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")

#: Where the data is when neither --data-dir nor SERKERAS_DATA_DIR says otherwise.
DEFAULT_DATA_DIR = "data/Crema"
DATA_DIR_ENV = "SERKERAS_DATA_DIR"

GET_CREMA_D = (
    "get CREMA-D from https://github.com/CheyneyComputerScience/CREMA-D (AudioWAV/) and "
    f"put the clips in {DEFAULT_DATA_DIR}/, or pass --data-dir / set {DATA_DIR_ENV}"
)

# Files that are never audio; everything else is tried with libsndfile.
_NOT_AUDIO = {".csv", ".txt", ".md", ".json", ".xlsx", ".py", ".npz", ".npy", ".zip", ".tar", ".gz"}


class SkippedFilesWarning(UserWarning):
    """Some files were left out; the message lists them with a count."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One labelled recording.

    `speaker` groups clips for speaker-independent splits; `sex` is "" when unknown;
    `corpus` names the corpus the clip came from when several are read together
    ("" for a single corpus).
    """

    path: str
    label: str
    speaker: str = ""
    sentence: str = ""
    level: str = ""
    sex: str = ""
    corpus: str = ""

    @property
    def name(self):
        return Path(self.path).stem


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The clips of a corpus with its label set (the order fixes class indices).

    A corpus made of several (`combine_corpora`) also lists its parts' label
    sets in `corpus_labels`, `((name, labels), ...)`; each clip's `corpus` names
    its part. A clip's part may lack some of `labels` (ASED has no disgust): the
    clip says nothing about those classes (`label_masks`).
    """

    name: str
    clips: tuple
    labels: tuple
    corpus_labels: tuple = ()

    def __len__(self):
        return len(self.clips)

    def label_indices(self, clips=None):
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[c.label] for c in (self.clips if clips is None else clips)]

    @property
    def corpus_names(self):
        """The names of the corpora this one is made of (its own name alone for a single corpus)."""
        return tuple(name for name, _ in self.corpus_labels) or (self.name,)

    def labels_of(self, corpus_name):
        """The labels that the part `corpus_name` has (all of `labels` for a single corpus)."""
        return dict(self.corpus_labels).get(corpus_name, self.labels)

    def has_missing_labels(self):
        """Whether some part lacks some of the labels (so that its clips need `label_masks`)."""
        return any(set(labels) != set(self.labels) for _, labels in self.corpus_labels)

    def label_masks(self, clips=None):
        """Boolean array (clips, labels): True where the clip's corpus has the class.

        A clip whose corpus has no "disgust" is neither a positive nor a
        negative example of disgust; training renormalises its softmax over the
        classes marked here (`serkeras.losses.PartialLabelCrossentropy`).
        """
        clips = self.clips if clips is None else clips
        rows = {name: np.isin(self.labels, labels) for name, labels in self.corpus_labels}
        every = np.ones(len(self.labels), bool)
        return np.array([rows.get(c.corpus, every) for c in clips], bool).reshape(len(clips), len(self.labels))


def describe_skipped(skipped, shown=20):
    """`(path, reason)` pairs as one line: "name: reason; ..." for the first `shown`, then how many more."""
    listed = "; ".join(f"{Path(p).name}: {why}" for p, why in skipped[:shown])
    return listed + (f"; and {len(skipped) - shown} more" if len(skipped) > shown else "")


def warn_skipped(skipped, what="files"):
    """Emit one warning listing `(path, reason)` pairs with their count."""
    if not skipped:
        return
    warnings.warn(f"skipped {len(skipped)} {what}: {describe_skipped(skipped)}", SkippedFilesWarning, stacklevel=2)


def resolve_data_dir(data_dir=None):
    """`data_dir`, else $SERKERAS_DATA_DIR, else `data/Crema`."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def parse_crema_d_name(stem):
    """Split `Actor_Sentence_Emotion_Level` into its parts, or return None."""
    match = _CREMA_D_NAME.match(stem)
    if not match or match.group(3) not in CREMA_D_CODES:
        return None
    actor, sentence, emotion, level = match.groups()
    return actor, sentence, CREMA_D_CODES[emotion], level


def _read_sexes(folder):
    """Actor id -> sex from VideoDemographics.csv next to or above the audio folder."""
    for candidate in (folder, folder.parent, folder.parent.parent):
        table = candidate / "VideoDemographics.csv"
        if table.is_file():
            with open(table, newline="", encoding="utf-8-sig") as f:
                return {row["ActorID"].strip(): row["Sex"].strip() for row in csv.DictReader(f)}
    return {}


#: CREMA-D's listener-vote letters (``VoiceVote`` of summaryTable.csv) -> serkeras' label names.
CREMA_D_VOTE_LETTERS = {"A": "anger", "D": "disgust", "F": "fear", "H": "happy", "N": "neutral", "S": "sad"}


def listener_votes(summary_csv):
    """{clip name: labels} of CREMA-D's crowd-sourced listeners' majority vote from the audio alone.

    Parameters
    ----------
    summary_csv : str or Path
        CREMA-D's ``summaryTable.csv``.

    Returns
    -------
    dict of str -> tuple of str
        A tie keeps every winner; clips without an audio-only vote are left out.
    """
    with open(summary_csv, newline="", encoding="utf-8-sig") as f:
        return {row["FileName"]: tuple(CREMA_D_VOTE_LETTERS[v] for v in row["VoiceVote"].split(":"))
                for row in csv.DictReader(f) if row.get("VoiceVote")}


def vote_credit(votes, label):
    """1/k when `label` is among the k tied winners of `votes`, else 0: the score of breaking the tie at random."""
    return 1.0 / len(votes) if label in votes else 0.0


def load_crema_d(data_dir=None):
    """List a CREMA-D folder: `AudioWAV/*.wav` as released, or any audio named like it.

    Parameters
    ----------
    data_dir : str or path-like, optional
        The folder holding the clips (or an `AudioWAV/` folder); see `resolve_data_dir`.

    Returns
    -------
    Corpus
        Clips sorted by file name; files whose names do not parse, that are
        empty or broken symbolic links, and a clip's other formats (`x.wav`
        beside `x.ogg`: the first name in sorted order is kept) are skipped
        with one `SkippedFilesWarning`.
    """
    folder = resolve_data_dir(data_dir)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist: {GET_CREMA_D}")
    if (folder / "AudioWAV").is_dir():
        folder = folder / "AudioWAV"
    sexes = _read_sexes(folder)
    clips, skipped, first_of_stem = [], [], {}
    listed = (p for p in folder.iterdir() if (p.is_file() or is_broken_link(p)) and not p.name.startswith("."))
    for path in sorted(listed):
        if path.suffix.lower() in _NOT_AUDIO:
            continue
        parts = parse_crema_d_name(path.stem)
        if parts is None:
            skipped.append((str(path), "name is not Actor_Sentence_Emotion_Level"))
            continue
        if is_broken_link(path):
            skipped.append((str(path), BROKEN_LINK))
            continue
        if path.stat().st_size == 0:
            skipped.append((str(path), "empty file"))
            continue
        # The same recording in two formats would count twice, and could land in training and test.
        if path.stem in first_of_stem:
            skipped.append((str(path), f"another format of {first_of_stem[path.stem]}"))
            continue
        first_of_stem[path.stem] = path.name
        actor, sentence, label, level = parts
        clips.append(Clip(str(path), label, actor, sentence, level, sexes.get(actor, "")))
    warn_skipped(skipped)
    if not clips:
        raise DataError(f"no CREMA-D clips in {folder}: {GET_CREMA_D}")
    return Corpus("crema-d", tuple(clips), CREMA_D_LABELS)


def load_manifest(manifest):
    """Read a generic corpus from a CSV with columns `path,label[,speaker]`.

    Relative paths are taken relative to the CSV's folder. Labels are sorted
    alphabetically to fix class indices.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"manifest {manifest} does not exist")
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or (), list(reader)
    if not {"path", "label"} <= set(header):
        raise DataError(f"manifest {manifest} needs a header with columns path,label[,speaker]")
    if not rows:
        raise DataError(f"manifest {manifest} has no rows, only its header: add one line path,label[,speaker] "
                        "per clip")
    clips, skipped = [], []
    for row in rows:
        path = Path(row["path"])
        path = path if path.is_absolute() else manifest.parent / path
        label = (row.get("label") or "").strip()
        if not label:
            skipped.append((str(path), "no label"))
        elif not path.is_file():
            skipped.append((str(path), "file not found"))
        else:
            clips.append(Clip(str(path), label, (row.get("speaker") or "").strip(), sex=(row.get("sex") or "").strip()))
    warn_skipped(skipped, "manifest rows")
    if not clips:
        raise DataError(f"manifest {manifest} lists no usable clips")
    return Corpus(manifest.stem, tuple(clips), tuple(sorted({c.label for c in clips})))


def check_trainable(corpus):
    """Refuse a corpus whose clips have fewer than two labels.

    A classifier trained on one label has one output, always right: it learns
    nothing and reports an accuracy of 1.0.

    Parameters
    ----------
    corpus : Corpus

    Raises
    ------
    DataError
        When the clips have a single label.
    """
    present = sorted({c.label for c in corpus.clips})
    if len(present) < 2:
        raise DataError(f"the corpus {corpus.name} has clips of one label only ({present[0]!r}): training needs "
                        "at least two labels")


def load_corpus(data_dir=None, manifest=None):
    """A manifest when given, else the CREMA-D folder."""
    return load_manifest(manifest) if manifest else load_crema_d(data_dir)


def _as_list(value):
    """A source option's value as a list: None or "" -> [], a path -> [path], a sequence as it is."""
    if not value:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def source_name(path):
    """The name of the corpus at `path` (a manifest or a folder of clips): the name of the folder holding it.

    `emodb/manifest.csv` is "emodb"; `crema-d/audio` is "crema-d".
    """
    return Path(os.path.abspath(path)).parent.name or Path(os.path.abspath(path)).name


def combine_corpora(corpora, names):
    """One corpus of several: labels matched by name, speakers and clips tagged by corpus.

    Parameters
    ----------
    corpora : sequence of Corpus
    names : sequence of str
        One name per corpus, unique.

    Returns
    -------
    Corpus
        Every clip, its `corpus` set and its speaker prefixed with it (speaker
        "03" of one corpus is not speaker "03" of another); the labels are the
        union, sorted; `corpus_labels` keeps each part's own labels.

    Raises
    ------
    DataError
        When a corpus shares no label with the others: it could not be told
        apart from a corpus with a different label set, and nothing it teaches
        carries over.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"corpus names must be unique, got {list(names)}")
    label_sets = [set(c.labels) for c in corpora]
    for name, labels, others in ((n, s, set().union(*(o for o in label_sets if o is not s)))
                                 for n, s in zip(names, label_sets)):
        if len(corpora) > 1 and not labels & others:
            raise DataError(f"the corpus {name} shares no label with the others ({', '.join(sorted(labels))} vs "
                            f"{', '.join(sorted(others))}): labels are matched by name, so rename them to match")
    clips = tuple(dataclasses.replace(clip, corpus=name, speaker=f"{name}/{clip.speaker}" if clip.speaker else "")
                  for name, corpus in zip(names, corpora) for clip in corpus.clips)
    return Corpus("+".join(names), clips, tuple(sorted(set().union(*label_sets))),
                  tuple((name, tuple(sorted(c.labels))) for name, c in zip(names, corpora)))


def load_corpora(data_dirs=(), manifests=()):
    """Every corpus given, as one: `load_corpus` for a single source, else `combine_corpora`.

    Parameters
    ----------
    data_dirs : sequence of path-like, or one path
        CREMA-D-style folders (none given: with no manifest either, the default folder).
    manifests : sequence of path-like, or one path
        CSV manifests.

    Returns
    -------
    Corpus
        With several sources, each is named after the folder that holds it
        (`source_name`), made unique with "-2", "-3"... in the order given
        (folders first, then manifests).
    """
    data_dirs, manifests = _as_list(data_dirs), _as_list(manifests)
    if len(data_dirs) + len(manifests) <= 1:
        return load_corpus(data_dirs[0] if data_dirs else None, manifests[0] if manifests else None)
    sources = [(path, load_crema_d) for path in data_dirs] + [(path, load_manifest) for path in manifests]
    names, corpora = [], []
    for path, load in sources:
        base = source_name(path)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
        corpora.append(load(path))
    return combine_corpora(corpora, names)


def held_out_corpus(corpus, held_out):
    """`corpus` (of several) for a model trained on all but `held_out` and tested on it.

    Parameters
    ----------
    corpus : Corpus
        Several corpora (`combine_corpora`).
    held_out : str
        The name of the corpus left out of training.

    Returns
    -------
    Corpus
        The same clips; its labels, the model's, are those of the training corpora.

    Raises
    ------
    DataError
        When `held_out` is not one of the corpora, has clips of one label only
        (UA and macro-F1 would be recall and F1 of that one class), or has a
        label that no training corpus has (a model trained on them cannot
        predict it).
    """
    if held_out not in corpus.corpus_names or len(corpus.corpus_names) < 2:
        raise DataError(f"leaving {held_out!r} out needs it among two or more corpora (corpora: "
                        f"{', '.join(corpus.corpus_names)})")
    own = corpus.labels_of(held_out)
    if len(own) < 2:
        raise DataError(f"the held-out corpus {held_out} has clips of one label only ({own[0]!r}): testing on it "
                        "needs at least two labels")
    trained = {label for name, labels in corpus.corpus_labels if name != held_out for label in labels}
    unknown = sorted(set(own) - trained)
    if unknown:
        raise DataError(f"the held-out corpus {held_out} has labels no other corpus has ({', '.join(unknown)}): a "
                        "model trained on the others cannot predict them; leave them out of it")
    return dataclasses.replace(corpus, labels=tuple(sorted(trained)))
