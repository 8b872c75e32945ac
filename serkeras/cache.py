"""On-disk feature cache: computed once per (clip, settings), in parallel, resumable.

Layout: `<cache_dir>/<settings hash>/<clip name>-<clip hash>.npz`, where the clip
hash covers the settings and the audio file's bytes, so changed settings or
audio never reuse a stale entry, files of the same name in different folders
never share one, and a corpus that is copied, moved or touched (new mtimes) is
still found. Hashing reads each file once per run (about 0.4 s for CREMA-D's
144 MB), far less than decoding it. Each entry is written to a
temporary file and renamed into place, so a killed run leaves only whole
entries and the next run computes just what is missing; temporary files that a
killed run left behind are removed once they are an hour old. Files that cannot be
used are remembered as `.bad` entries with the reason, and reported, not retried.

Each settings folder records its settings in `settings.json`. Reading an entry
refreshes its modification time (at most once a day), so `prune_cache` can
remove entries that no run has used for a while: features of audio that changed
or of settings no longer trained with.
"""

import concurrent.futures
import ctypes
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import threadpoolctl
from tqdm.auto import tqdm

from serkeras.audio import AudioError, load_audio, normalize_amplitude, scale_to_level
from serkeras.corpus import warn_skipped
from serkeras.effects import TEST_TIME_AUGMENTATION, Perturbation, WaveAugmentation, augment_wave
from serkeras.errors import DataError, SerkerasError
from serkeras.features import FEATURE_KINDS, FeatureConfig, extract_features
from serkeras.speakers import speaker_normalized
from serkeras.system import usable_cpus

CACHE_DIR_ENV = "SERKERAS_CACHE_DIR"
DEFAULT_CACHE_DIR = "data/cache"
# Features are stored as float16: half the disk and I/O, error far below feature noise.
_STORE_DTYPE = np.float16
SETTINGS_FILE = "settings.json"
#: A reused entry's modification time is refreshed when older than this: "last used"
#: to within a day, without a write for every read.
_MARK_USED_AFTER = 86400.0


@dataclasses.dataclass
class FeatureSet:
    """Features of the clips that could be used, plus what was skipped and why."""

    features: dict  # clip path -> {"logmel": array, "spectral": array}
    skipped: list  # (clip path, reason)
    computed: int = 0  # clips whose features were computed in this run (skipped ones are counted apart)
    reused: int = 0  # clips whose features were read from the cache
    seconds: float = 0.0

    def of(self, clips):
        """The usable clips among `clips` (order kept) and their features."""
        kept = [c for c in clips if c.path in self.features]
        return kept, [self.features[c.path] for c in kept]

    def all_of(self, clips, what="clips"):
        """Features of every one of `clips`, in order.

        Raises
        ------
        DataError
            When some of them could not be used (`what` names them in the message).
        """
        kept, features = self.of(clips)
        if len(kept) != len(clips):
            raise DataError(f"{len(clips) - len(kept)} {what} could not be computed")
        return features


def resolve_cache_dir(cache_dir=None):
    return Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def clip_key(path, config, augmentation=None, copy=0, kinds=FEATURE_KINDS, perturbation=None):
    """Hash of the feature settings, the file's contents, the augmented copy if any, the feature kinds
    held when they are not all of them (an entry of every kind keeps the key it always had), and the
    perturbation if any."""
    stat = os.stat(path)
    ident = f"{config.extraction_key()}|{_content_digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)}"
    if augmentation is not None:
        ident += f"|{augmentation.key(copy)}"
    if tuple(kinds) != FEATURE_KINDS:
        ident += f"|kinds={','.join(kinds)}"
    if perturbation is not None:
        ident += f"|perturbation={perturbation.key()}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=65536)
def _content_digest(path, size, mtime_ns):
    """Hash of a file's bytes, read once per process for each (path, size, mtime): a training run
    looks its clips up again for every augmented copy."""
    content = hashlib.blake2b()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # hashlib.file_digest needs Python 3.11
            content.update(block)
    return content.hexdigest()


def remove_stale_temporaries(folder, older_than=3600.0):
    """Delete `.tmp-*` files that a killed run left in `folder` (young ones may belong to a live run)."""
    now = time.time()
    for tmp in Path(folder).glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
        except FileNotFoundError:  # another run renamed or removed it meanwhile
            pass


def _entry(folder, path, key):
    return folder / f"{Path(path).stem}-{key}"


def _atomic_write(target, write):
    """Write through a temporary file in the same folder, then rename into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mark_used(path):
    """Refresh `path`'s modification time if it is older than a day; False when there is no such file."""
    try:
        if time.time() - path.stat().st_mtime > _MARK_USED_AFTER:
            os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:  # a read-only cache: only pruning loses precision
        pass
    return True


def _read_entry(base, config, kinds=FEATURE_KINDS):
    """Cached features of `kinds`, a reason string for a known-bad file, or None if absent/corrupt."""
    bad = base.with_suffix(".bad")
    if _mark_used(bad):
        return bad.read_text(encoding="utf-8").strip() or "unusable"
    npz = base.with_suffix(".npz")
    if not _mark_used(npz):
        return None
    try:
        with np.load(npz, allow_pickle=False) as data:
            features = {k: data[k].astype(np.float32) for k in kinds}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    widths = {"logmel": config.n_mels, "spectral": config.n_spectral}
    frames = len(features[kinds[0]])
    if (frames == 0 or any(a.shape != (frames, widths[k]) for k, a in features.items())
            or not all(np.isfinite(a).all() for a in features.values())):
        return None
    return features


def compute_clip(path, config, augmentation=None, copy=0, kinds=FEATURE_KINDS, perturbation=None):
    """Decode and featurise one file (or its augmented copy `copy`), the feature kinds `kinds` only; raises
    AudioError when it cannot be used.

    A `perturbation` (`serkeras.effects.Perturbation`) changes the recording as decoded, before the
    loader's amplitude normalisation: what a model would get had the recording been made that way.
    """
    if perturbation is None:
        wave = load_audio(path, config.sample_rate, config.audio_normalization, config.max_seconds)
    else:
        wave = load_audio(path, config.sample_rate, "none", config.max_seconds)
        wave = normalize_amplitude(perturbation.apply(wave, config.sample_rate, perturbation.rng(Path(path).name)),
                                   config.audio_normalization)
    if len(wave) < config.min_seconds * config.sample_rate:
        raise AudioError(f"too short ({len(wave) / config.sample_rate:.2f} s < {config.min_seconds:g} s)")
    if augmentation is not None:
        rng = augmentation.rng(Path(path).name, copy)
        wave = augment_wave(wave, config.sample_rate, augmentation, rng)
    if config.level_dbfs is not None:  # last, so that a copy's gain or noise is levelled as a user's recording is
        wave = scale_to_level(wave, config.sample_rate, config.level_dbfs)
    return extract_features(wave, config, kinds)


def _compute_and_store(path, base, config_dict, augmentation_dict=None, copy=0, kinds=FEATURE_KINDS,
                       perturbation_dict=None):
    """Worker: compute one clip and write its cache entry; returns (path, features or reason)."""
    config = FeatureConfig.from_dict(config_dict)
    augmentation = WaveAugmentation.from_dict(augmentation_dict) if augmentation_dict else None
    perturbation = Perturbation.from_dict(perturbation_dict) if perturbation_dict else None
    try:
        features = compute_clip(path, config, augmentation, copy, kinds, perturbation)
    except AudioError as exc:
        reason = str(exc)
        _atomic_write(base.with_suffix(".bad"), lambda f: f.write(reason.encode()))
        return path, reason
    stored = {k: v.astype(_STORE_DTYPE) for k, v in features.items()}
    _atomic_write(base.with_suffix(".npz"), lambda f: np.savez(f, **stored))
    return path, {k: v.astype(np.float32) for k, v in stored.items()}


def _store_item(item, *settings):
    path, base = item
    return _compute_and_store(path, base, *settings)


def _compute_only(path, config_dict, augmentation_dict=None, copy=0, kinds=FEATURE_KINDS, perturbation_dict=None):
    """Worker: compute one file's features without caching; returns (path, features or reason)."""
    augmentation = WaveAugmentation.from_dict(augmentation_dict) if augmentation_dict else None
    perturbation = Perturbation.from_dict(perturbation_dict) if perturbation_dict else None
    try:
        return path, compute_clip(path, FeatureConfig.from_dict(config_dict), augmentation, copy, kinds, perturbation)
    except AudioError as exc:
        return path, str(exc)


def _apply_chunk(one, chunk, *settings):
    return [one(item, *settings) for item in chunk]


def warm_up(config_dict, augmentation_dict=None, copy=0, kinds=FEATURE_KINDS, perturbation_dict=None):
    """Featurise a second of noise here, so that librosa's numba kernels are compiled and cached by
    this process alone before workers start.

    numba writes each kernel's cache files without a lock: workers compiling the same gufunc at once
    can leave a mismatched pair behind, and every later process that loads it crashes with a
    segmentation fault (numba issue #10128). With the cache filled here, workers only read it.
    A perturbation (`perturbation_dict`) uses no numba kernel, so it is not applied here.
    """
    config = FeatureConfig.from_dict(config_dict)
    wave = np.random.default_rng(0).normal(0.0, 0.1, config.sample_rate).astype(np.float32)
    if augmentation_dict:
        augmentation = WaveAugmentation.from_dict(augmentation_dict)
        wave = augment_wave(wave, config.sample_rate, augmentation, augmentation.rng("warm-up", copy))
    extract_features(wave, config, kinds)


def _worker_init(parent_pid, made_by_main_thread):
    # One BLAS thread per process: the pool already uses every core. (Setting OMP_NUM_THREADS here came too
    # late: unpickling this function had imported NumPy, whose BLAS had started its threads.)
    threadpoolctl.threadpool_limits(1)
    exit_with_parent(parent_pid, made_by_main_thread)


#: How often a worker's watchdog looks whether its parent is still alive (seconds).
_PARENT_CHECK_SECONDS = 0.5


def exit_with_parent(parent_pid, by_signal=True):
    """End this process when the process `parent_pid` that started it dies (even by SIGKILL).

    A pool's idle workers wait on a queue that the dead parent can no longer
    close, so without this they would outlive it, holding their memory. On Linux,
    with `by_signal`, the kernel sends SIGTERM when the parent dies
    (`prctl(PR_SET_PDEATHSIG)`); it tracks the parent's *thread* that started
    this process, so pass `by_signal=False` when that was not the main thread.
    Everywhere, a daemon thread also checks every half second that the parent
    is still this process's parent, and exits the process when it is not.

    Parameters
    ----------
    parent_pid : int
        The process id of the parent, as the parent saw it (`os.getpid()` there).
    by_signal : bool
        Also ask the kernel for a signal on the parent's death (Linux only).
    """
    if by_signal and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # no libc prctl: the watchdog below still works
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_CHECK_SECONDS)
        os._exit(1)

    # Started after prctl, so a parent that died before it took effect is seen here.
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


#: prctl's option that sets the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def cached_features(clips, config, cache_dir=None, workers=None, progress=True, augmentation=None, copy=0,
                    kinds=FEATURE_KINDS, perturbation=None):
    """Features for `clips`, from the cache where present, computed (in parallel) otherwise.

    Parameters
    ----------
    clips : sequence of Clip
    config : FeatureConfig
    cache_dir : path-like, optional
        Root of the cache (default $SERKERAS_CACHE_DIR or `data/cache`).
    workers : int, optional
        Processes for extraction. By default this process extracts alone while the work left would
        take less time than starting worker processes (about 4 s: each imports librosa), then
        shares the rest with a pool over every core; a number starts that many at once.
    progress : bool
        Show a progress bar while extracting.
    augmentation : serkeras.effects.WaveAugmentation, optional
        Featurise augmented copy number `copy` of each clip instead of the clip itself.
    copy : int
    kinds : sequence of str
        The feature kinds to read or compute (`serkeras.features.feature_kinds`); entries that hold
        only some kinds are kept apart from those that hold all.
    perturbation : serkeras.effects.Perturbation, optional
        Featurise each clip as changed by it (see `compute_clip`); kept apart from the clip's own features.

    Returns
    -------
    FeatureSet
        Unusable files are in `skipped` and reported in one warning.
    """
    start = time.perf_counter()
    folder = resolve_cache_dir(cache_dir) / config.extraction_key()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / SETTINGS_FILE).is_file():
        settings = json.dumps(config.to_dict(), indent=2, sort_keys=True).encode()
        _atomic_write(folder / SETTINGS_FILE, lambda f: f.write(settings))
    remove_stale_temporaries(folder)
    features, skipped, todo = {}, [], []
    for clip in clips:
        base = _entry(folder, clip.path, clip_key(clip.path, config, augmentation, copy, kinds, perturbation))
        found = _read_entry(base, config, kinds)
        if isinstance(found, dict):
            features[clip.path] = found
        elif isinstance(found, str):
            skipped.append((clip.path, found))
        else:
            todo.append((clip.path, base))
    reused = len(features)
    if todo:
        desc = f"augmented copy {copy}" if augmentation is not None else "features"
        bar = tqdm(total=len(todo), desc=desc, unit="clip", disable=not progress, leave=False)
        settings = _worker_settings(config, augmentation, copy, kinds, perturbation)
        results = _parallel(_store_item, todo, settings, workers, bar)
        bar.close()
        for path, result in results:
            if isinstance(result, str):
                skipped.append((path, result))
            else:
                features[path] = result
    warn_skipped(skipped, "audio files")
    return FeatureSet(features, skipped, computed=len(features) - reused, reused=reused,
                      seconds=time.perf_counter() - start)


def _worker_settings(config, augmentation, copy, kinds, perturbation):
    """The settings after the path that `compute_clip`'s workers take, as plain data."""
    return (config.to_dict(), augmentation.to_dict() if augmentation is not None else None, copy, kinds,
            perturbation.to_dict() if perturbation is not None else None)


def copy_features(clips, config, copies, augmentation=TEST_TIME_AUGMENTATION, cache_dir=None, kinds=FEATURE_KINDS,
                  perturbation=None):
    """Features (of `kinds`) of augmented copies 1..`copies` of every clip (cached like training copies),
    each clip perturbed first by `perturbation` if given.

    For test-time augmentation: one feature list per copy, each in the order of `clips`.

    Raises
    ------
    DataError
        When some copy cannot be computed (`clips` should be clips whose own features could).
    """
    return [cached_features(clips, config, cache_dir, augmentation=augmentation, copy=copy, kinds=kinds,
                            perturbation=perturbation).all_of(clips, "test-time augmented copies")
            for copy in range(1, copies + 1)]


def model_features(clips, config, copies=0, cache_dir=None, require_all=False, speaker_clips=None,
                   kinds=FEATURE_KINDS, perturbation=None):
    """What a model made with `config` is given for `clips`: cached features, speaker-normalised where
    `config` asks, of each usable clip and of its `copies` test-time augmented copies.

    With `require_all`, a clip without features raises `DataError` instead of being left out.
    Speaker statistics come from each speaker's clips among `clips`, or, with
    `speaker_clips`, among the usable clips of `speaker_clips` (such as every
    recording of the corpus; each copy is normalised by the same copy of them).
    `kinds`: the feature kinds the model takes (`serkeras.features.feature_kinds`). A `perturbation`
    changes every clip, those of `speaker_clips` too (as recordings made in those conditions).

    Returns
    -------
    kept : list of Clip
        The usable clips among `clips`, in order.
    versions : list of list of dict
        The clips' own features, then one list per copy; each in the order of `kept`.
    """
    found = cached_features(clips, config, cache_dir, kinds=kinds, perturbation=perturbation)
    kept, features = (list(clips), found.all_of(clips)) if require_all else found.of(clips)
    versions = [features] + copy_features(kept, config, copies, cache_dir=cache_dir, kinds=kinds,
                                          perturbation=perturbation)
    if speaker_clips is None or not config.speaker_norm:
        return kept, [speaker_normalized(version, kept, config) for version in versions]
    reference, reference_features = cached_features(speaker_clips, config, cache_dir, kinds=kinds,
                                                    perturbation=perturbation).of(speaker_clips)
    references = [reference_features] + copy_features(reference, config, copies, cache_dir=cache_dir, kinds=kinds,
                                                      perturbation=perturbation)
    return kept, [speaker_normalized(version, kept, config, reference=(reference_version, reference))
                  for version, reference_version in zip(versions, references)]


def compute_clips(paths, config, workers=None, progress=False, augmentation=None, copy=0, kinds=FEATURE_KINDS):
    """Features of many files, computed in parallel and not cached (for one-off audio such as `predict` inputs).

    `workers`, `augmentation`, `copy` and `kinds` as in `cached_features`.

    Returns
    -------
    list of (path, features or reason)
        In the order of `paths`; a reason string for a file that cannot be used.
    """
    bar = tqdm(total=len(paths), desc="features", unit="file", disable=not progress, leave=False)
    settings = _worker_settings(config, augmentation, copy, kinds, None)
    results = dict(_parallel(_compute_only, list(paths), settings, workers, bar))
    bar.close()
    return [(path, results[path]) for path in paths]


@dataclasses.dataclass
class CacheFolder:
    """One settings folder of the cache: what it holds and when it was last used."""

    path: Path
    settings: dict  # FeatureConfig.to_dict(), or {} when not recorded
    entries: int  # feature files
    unusable: int  # `.bad` entries
    size: int  # bytes
    last_used: float  # newest entry's modification time (0 when empty)


def _entries(folder):
    return [p for p in folder.iterdir() if p.suffix in (".npz", ".bad") and not p.name.startswith(".tmp-")]


def cache_folders(cache_dir=None):
    """The settings folders of the cache, largest first.

    Raises
    ------
    DataError
        When there is no cache folder at `cache_dir`.
    """
    root = resolve_cache_dir(cache_dir)
    if not root.is_dir():
        raise DataError(f"no feature cache at {root}")
    folders = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        stats = [(p.suffix, p.stat()) for p in _entries(folder)]
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            settings = {}
        folders.append(CacheFolder(folder, settings, sum(s == ".npz" for s, _ in stats),
                                   sum(s == ".bad" for s, _ in stats), sum(st.st_size for _, st in stats),
                                   max((st.st_mtime for _, st in stats), default=0.0)))
    return sorted(folders, key=lambda f: -f.size)


def prune_cache(unused_days, cache_dir=None):
    """Delete the entries that no run has read or written for `unused_days` days.

    Settings folders left without entries go too, as do temporary files that
    killed runs left behind.

    Returns
    -------
    (int, int)
        Entries removed and the bytes they took.
    """
    cutoff = time.time() - unused_days * 86400.0
    removed = freed = 0
    for folder in cache_folders(cache_dir):
        remove_stale_temporaries(folder.path)
        kept = 0
        for entry in _entries(folder.path):
            stat = entry.stat()
            if stat.st_mtime < cutoff:
                entry.unlink(missing_ok=True)
                removed, freed = removed + 1, freed + stat.st_size
            else:
                kept += 1
        if not kept and not any(folder.path.glob(".tmp-*")):
            (folder.path / SETTINGS_FILE).unlink(missing_ok=True)
            try:
                folder.path.rmdir()
            except OSError:  # something else lives there: leave it
                pass
    return removed, freed


#: Wall time for a pool's workers to start and import what featurising needs (librosa, SciPy: about 4 s and
#: 4 CPU-seconds each on 2 cores of an AMD EPYC), against 20-30 ms to featurise a 2.5-s clip in a warm process:
#: unless told how many workers to use, work this process finishes sooner alone is not handed to a pool.
POOL_START_SECONDS = 4.0
#: Fewer items than this are never worth a pool, whatever `workers` says.
POOL_MIN_ITEMS = 8


def _parallel(one, items, settings, workers, bar):
    """`one(item, *settings)` for every item, in this process or (in chunks) in worker processes.

    `workers` None: this process computes the items one by one while what is left would take it less time
    than a pool needs to start (`POOL_START_SECONDS`, judged from the items done, the first apart: it pays
    for one-off compilation), and a pool over every core takes the rest as soon as it would not.
    A number: a pool of that many from the start (this process alone if it is 1).
    """
    limit = max(1, min((usable_cpus() or 1) if workers is None else workers, len(items)))
    out = []
    if workers is None or limit == 1 or len(items) < POOL_MIN_ITEMS:
        # One BLAS thread, as in the workers: a clip's small matrix products run slower split between threads.
        may_pool = limit > 1 and len(items) >= POOL_MIN_ITEMS
        with threadpoolctl.threadpool_limits(1):
            timed = []
            for item in items:
                if may_pool and len(timed) >= 2:
                    typical = float(np.mean(timed[1:]))
                    if (len(items) - len(out)) * typical * (1 - 1 / limit) > POOL_START_SECONDS:
                        break
                started = time.perf_counter()
                out.append(one(item, *settings))
                timed.append(time.perf_counter() - started)
                bar.update()
        items = items[len(out):]
        if not items:
            return out
    workers = max(1, min(limit, len(items)))
    warm_up(*settings)  # every `one` takes compute_clip's settings
    # spawn: safe even after TensorFlow / JAX / torch have started their threads.
    context = multiprocessing.get_context("spawn")
    # Workers start from this thread (on submit), which PR_SET_PDEATHSIG tracks; see exit_with_parent.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init,
        initargs=(os.getpid(), threading.current_thread() is threading.main_thread()))
    # Chunks amortise inter-process overhead; small enough to keep the bar moving.
    size = max(1, min(32, len(items) // (workers * 4)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    try:
        futures = [pool.submit(_apply_chunk, one, chunk, *settings) for chunk in chunks]
        for future in concurrent.futures.as_completed(futures):
            done = future.result()
            out.extend(done)
            bar.update(len(done))
    except concurrent.futures.process.BrokenProcessPool:
        raise SerkerasError(f"a feature process died abruptly (a crash in native code, or out of memory) after "
                            f"{len(out)} of {len(out) + len(items)} clips; what was finished is kept in the cache. "
                            "Run again with --workers 1 to see which clip") from None
    finally:
        # On an interrupt, drop the queued chunks: waiting for them (the `with` default) kept a stopped run
        # alive until every clip was done. Chunks already running finish and are cached.
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def cached_arrays(folder, keys, compute, chunk=256, progress=None, transform=None):
    """Per-item arrays kept in `folder`, one entry per key; the missing ones computed and stored.

    For what a model stage makes of cached features (a frozen encoder's frames):
    entries are float16 `.npz` files named by key, written atomically, in chunks
    of `chunk` items, so an interrupted run keeps what it computed and the next
    one computes only the rest. A corrupt entry is computed again.

    Parameters
    ----------
    folder : Path
        One folder per producer of the arrays (its settings and weights in the name).
    keys : sequence of str
        One per item: what identifies its inputs.
    compute : callable
        ``compute(indices) -> list of dict of arrays``, for the items at `indices`.
    progress : callable, optional
        Called with the number of items done (read or computed) so far.
    transform : callable, optional
        ``transform(list of dict of arrays) -> list of dict of arrays``, applied to
        `chunk` items at a time as they are read or computed (what is stored is
        untransformed): only the transformed items are held, not every entry.

    Returns
    -------
    list of dict of float32 arrays, in the order of `keys` (transformed, if asked).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    out = [None] * len(keys)
    ready = []  # items read or computed and not yet transformed

    def finish(flush=False):
        if transform is not None and ready and (flush or len(ready) >= chunk):
            for i, arrays in zip(ready, transform([out[i] for i in ready]), strict=True):
                out[i] = arrays
            ready.clear()

    done = 0
    for i, key in enumerate(keys):
        entry = folder / f"{key}.npz"
        if _mark_used(entry):
            try:
                with np.load(entry, allow_pickle=False) as data:
                    out[i] = {k: data[k].astype(np.float32) for k in data.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile):
                continue
            done += 1
            ready.append(i)
            finish()
            if progress is not None and done % chunk == 0:
                progress(done)
    finish(flush=True)
    if progress is not None:
        progress(done)
    missing = [i for i, o in enumerate(out) if o is None]
    for start in range(0, len(missing), chunk):
        indices = missing[start:start + chunk]
        for i, arrays in zip(indices, compute(indices)):
            stored = {k: np.asarray(v).astype(_STORE_DTYPE) for k, v in arrays.items()}
            _atomic_write(folder / f"{keys[i]}.npz", lambda f: np.savez(f, **stored))
            out[i] = {k: v.astype(np.float32) for k, v in stored.items()}
        ready.extend(indices)
        finish(flush=True)
        done += len(indices)
        if progress is not None:
            progress(done)
    return out
