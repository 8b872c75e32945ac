"""Shared fixtures: the real CREMA-D development copy (read in place, never copied into
the repository), small real subsets copied into tmp folders, and synthetic audio."""

import os

# Quiet TensorFlow's C++ start-up chatter before any test module imports it.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
# JAX (in the processes tests start under KERAS_BACKEND=jax) compiles every new shape and step; on test-sized
# models its CPU compiler's optimisations cost more than they save: about half of a one-epoch run's CPU time.
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_TEST_FLAGS}".strip()

import csv  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

#: The corpus lives beside the repository: <parent of repo>/shared/data/crema-d.
CREMA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "crema-d"

EMOTION_CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CODE_TO_LABEL = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}

SUBSET_ACTORS = ("1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008")


@pytest.fixture(scope="session")
def crema_root():
    """The CREMA-D development folder (audio/, manifest.csv, VideoDemographics.csv)."""
    if not (CREMA_ROOT / "audio").is_dir() or not (CREMA_ROOT / "manifest.csv").is_file():
        pytest.skip(f"CREMA-D development copy not found at {CREMA_ROOT} (expected ../shared/data/crema-d)")
    return CREMA_ROOT


@pytest.fixture(scope="session")
def crema_dir(crema_root):
    """The shared folder of real clips (Ogg Opus, 16 kHz)."""
    return crema_root / "audio"


@pytest.fixture(scope="session")
def crema_manifest(crema_root):
    """manifest.csv rows (file, actor, sentence, emotion, intensity, sex, frames, ...) keyed by file name."""
    with open(crema_root / "manifest.csv", newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def _pick(rows, actor, emotion, sentence, level=None):
    for row in rows:
        if (row["actor"], row["emotion"], row["sentence"]) == (actor, emotion, sentence) and (
                level is None or row["intensity"] == level):
            return row
    raise LookupError(f"no clip {actor}_{sentence}_{emotion}_{level}")


@pytest.fixture(scope="session")
def real_selection(crema_manifest):
    """12 real clips: every emotion twice, 4 actors (2 female, 2 male), two sentences, several levels."""
    rows = sorted(crema_manifest.values(), key=lambda r: r["file"])
    sex_of = {}
    for row in rows:
        sex_of.setdefault(row["actor"], row["sex"])
    actors = [a for a in sex_of if sex_of[a] == "Female"][:2] + [a for a in sex_of if sex_of[a] == "Male"][:2]
    levels = ("HI", "MD", "LO")
    chosen = []
    for i, emotion in enumerate(EMOTION_CODES):
        chosen.append(_pick(rows, actors[i % 4], emotion, "DFA"))
        level = "XX" if emotion == "NEU" else levels[i % 3]
        chosen.append(_pick(rows, actors[(i + 1) % 4], emotion, "IEO", level))
    return tuple(chosen)


def copy_clips(crema_dir, rows, dest):
    """Copy real clips (not symlinks: tests may touch them) into `dest`; returns their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in rows:
        target = dest / row["file"]
        shutil.copyfile(crema_dir / row["file"], target)
        paths.append(target)
    return paths


@pytest.fixture
def real_clips(tmp_path, crema_root, crema_dir, real_selection):
    """A tmp CREMA-D-style folder with 12 real clips and a copy of VideoDemographics.csv."""
    folder = tmp_path / "crema"
    paths = copy_clips(crema_dir, real_selection, folder)
    shutil.copyfile(crema_root / "VideoDemographics.csv", folder / "VideoDemographics.csv")
    return types.SimpleNamespace(folder=folder, paths=paths, rows=real_selection)


def write_audio(path, seconds=1.0, sample_rate=16000, channels=1, freq=220.0, amplitude=0.5, noise=0.01,
                subtype=None, seed=0):
    """Write a tone with a little noise (any format soundfile writes, chosen by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = amplitude * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(len(t))
    if channels > 1:
        wave = np.stack([wave * (1.0 - 0.5 * c / channels) for c in range(channels)], axis=1)
    sf.write(str(path), wave.astype(np.float32), sample_rate, subtype=subtype)
    return path


@pytest.fixture
def make_audio(tmp_path):
    """Factory: make_audio(name="1001_DFA_ANG_XX.wav", folder=None, **write_audio options) -> path."""
    default = tmp_path / "synth"

    def make(name="1001_DFA_ANG_XX.wav", folder=None, **options):
        return write_audio(Path(folder or default) / name, **options)

    return make


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def crema_subset(tmp_path_factory, crema_root, crema_dir):
    """Real clips of 8 actors (both sexes), 2 sentences each, as symlinks plus demographics.

    Enough for end-to-end training on an `actor` split in seconds.
    """
    root = tmp_path_factory.mktemp("crema-subset")
    audio = root / "audio"
    audio.mkdir()
    for path in sorted(Path(crema_dir).glob("*.ogg")):
        actor, sentence = path.stem.split("_")[:2]
        if actor in SUBSET_ACTORS and sentence in ("DFA", "IEO"):
            (audio / path.name).symlink_to(path)
    (root / "VideoDemographics.csv").write_text((Path(crema_root) / "VideoDemographics.csv").read_text())
    (root / "summaryTable.csv").symlink_to(Path(crema_root) / "summaryTable.csv")  # listeners' votes
    return audio


#: `three_class_manifest`'s labels of its own for CREMA-D's emotion codes.
OWN_LABELS = {"ANG": "aroused", "NEU": "calm", "SAD": "low"}


@pytest.fixture(scope="session")
def three_class_manifest(crema_subset, tmp_path_factory):
    """A manifest corpus with its own three labels (real CREMA-D clips of 8 actors), speakers given."""
    import csv

    path = tmp_path_factory.mktemp("manifest") / "corpus.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "speaker"])
        for clip in sorted(crema_subset.glob("*.ogg")):
            actor, _, code, _ = clip.stem.split("_")
            if code in OWN_LABELS:
                writer.writerow([str(clip), OWN_LABELS[code], actor])
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One feature cache for the whole run, shared by the pytest-xdist workers too.

    Entries are keyed per clip and settings and written atomically, so concurrent
    writers are safe (tests/test_distribute.py checks it): every test module that
    trains on the same clips computes their features once per run, not once per module.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder = root / "shared-feature-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_cache):
    """A working folder standing in for a user's project folder (saved_models/, logs/); its cache/ is the
    run's shared feature cache."""
    work = tmp_path_factory.mktemp("work")
    (work / "cache").symlink_to(shared_cache, target_is_directory=True)
    return work


def run_cli(args, cwd):
    """Invoke the CLI in-process from `cwd`, as a user would from their project folder."""
    from click.testing import CliRunner

    from serkeras.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(old)


#: The order in which test modules start, for `-n 2 --dist loadfile`: first the module that starts long background
#: work (the other backends' runs), so that it overlaps with the rest; then the modules that cost the most CPU time
#: (measured per test, most first), so that no long module starts last while the other worker idles. Modules not
#: named follow in collection order. Only how soon the suite ends depends on this list.
FIRST = ("test_backends.py",)
LONGEST = ("test_cli_train.py", "test_whisper.py", "test_distribute.py", "test_tune.py", "test_cli_features.py",
           "test_models.py", "test_experiments.py", "test_cache.py", "test_multicorpus.py")


def pytest_configure(config):
    # pytest-xdist would otherwise hand out modules by their number of tests, most first, which started the
    # backend runs near the end of the suite instead of at its start.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _start_order(item):
    name = item.path.name
    return (0, 0) if name in FIRST else (1, LONGEST.index(name)) if name in LONGEST else (2, 0)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_start_order)  # stable: the order within each module is kept


def pytest_sessionfinish(session):
    # At exit pytest runs gc.collect() five times to find unraisable exceptions. A pytest-xdist worker
    # holding many TensorFlow graphs (and JAX's gc callback, which TensorFlow imports) needs longer than
    # the 5 s execnet gives it to shut down, and execnet then SIGINTs it: "Exception ignored in
    # _xla_gc_callback ... KeyboardInterrupt". Collect once here, while the run still waits for this worker,
    # and freeze what survives, so those exit-time collections scan only objects made after this point.
    gc.collect()
    gc.freeze()
