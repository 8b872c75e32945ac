"""Corpora as explicit lists of clips: CREMA-D by file name, or any CSV manifest."""

import csv
import dataclasses
import os
import re
import warnings
from pathlib import Path

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

    `speaker` groups clips for speaker-independent splits; `sex` is "" when unknown.
    """

    path: str
    label: str
    speaker: str = ""
    sentence: str = ""
    level: str = ""
    sex: str = ""

    @property
    def name(self):
        return Path(self.path).stem


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The clips of a corpus with its label set (the order fixes class indices)."""

    name: str
    clips: tuple
    labels: tuple

    def __len__(self):
        return len(self.clips)

    def label_indices(self, clips=None):
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[c.label] for c in (self.clips if clips is None else clips)]


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
