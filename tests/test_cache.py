"""The on-disk feature cache: compute once, reuse, invalidate, skip bad files, survive kills."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serkeras.cache import (CACHE_DIR_ENV, DEFAULT_CACHE_DIR, cache_folders, cached_features, clip_key, compute_clip,
                            compute_clips, model_features, prune_cache, resolve_cache_dir)
from serkeras.corpus import Clip, SkippedFilesWarning, load_crema_d
from serkeras.errors import DataError
from serkeras.features import FEATURE_KINDS, FeatureConfig

from conftest import copy_clips

# Features are stored as float16: log-mel values (|x| <= 100 dB) keep ~3 significant digits.
F16 = dict(rtol=2e-3, atol=2e-3)


def _run(clips, config, cache_dir, **kwargs):
    kwargs.setdefault("workers", 1)
    return cached_features(clips, config, cache_dir, progress=False, **kwargs)


def _entries(folder, suffix=".npz"):
    """Final cache entries (temporary files are not entries)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix == suffix and not p.name.startswith(".tmp-"))


def _assert_same_features(a, b, **tolerance):
    assert set(a) == set(b)
    for path in a:
        for key in ("logmel", "spectral"):
            assert a[path][key].shape == b[path][key].shape
            if tolerance:
                np.testing.assert_allclose(a[path][key], b[path][key], **tolerance)
            else:
                np.testing.assert_array_equal(a[path][key], b[path][key])


@pytest.fixture
def corpus(real_clips):
    return load_crema_d(real_clips.folder)


def test_computes_then_reuses(corpus, cache_dir):
    config = FeatureConfig()
    first = _run(corpus.clips, config, cache_dir)
    assert (first.computed, first.reused, first.skipped) == (12, 0, [])
    assert set(first.features) == {c.path for c in corpus.clips}
    folder = cache_dir / config.extraction_key()
    assert len(_entries(folder)) == 12
    assert all(name.endswith(".npz") and "_" in name for name in _entries(folder))
    second = _run(corpus.clips, config, cache_dir)
    assert (second.computed, second.reused, second.skipped) == (0, 12, [])
    _assert_same_features(first.features, second.features)
    for features in second.features.values():
        assert all(a.dtype == np.float32 for a in features.values())
    # What comes back equals a fresh extraction (up to float16 storage).
    clip = corpus.clips[3]
    fresh = compute_clip(clip.path, config)
    for key in ("logmel", "spectral"):
        np.testing.assert_allclose(second.features[clip.path][key], fresh[key], **F16)
    # FeatureSet.of keeps the order of the clips asked for.
    wanted = list(reversed(corpus.clips[:5]))
    kept, features = second.of(wanted)
    assert kept == wanted and features[0] is second.features[wanted[0].path]


def test_changed_settings_make_new_entries(corpus, cache_dir):
    base = FeatureConfig()
    _run(corpus.clips, base, cache_dir)
    other = _run(corpus.clips, FeatureConfig(n_mels=40), cache_dir)
    assert (other.computed, other.reused) == (12, 0)
    assert all(f["logmel"].shape[1] == 40 for f in other.features.values())
    assert len(_entries(cache_dir / FeatureConfig(n_mels=40).extraction_key())) == 12
    assert len(_entries(cache_dir / base.extraction_key())) == 12
    # Fitting to a fixed length happens later: same extraction, same entries.
    fixed = _run(corpus.clips, FeatureConfig(length_mode="fixed", fixed_seconds=2.0), cache_dir)
    assert (fixed.computed, fixed.reused) == (0, 12)


def test_touched_file_is_reused_and_changed_file_recomputed_alone(corpus, cache_dir, make_audio):
    config = FeatureConfig()
    first = _run(corpus.clips, config, cache_dir)
    touched, replaced = corpus.clips[2].path, corpus.clips[7].path
    stat = os.stat(touched)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = _run(corpus.clips, config, cache_dir)
    assert (second.computed, second.reused) == (0, 12)  # same bytes, new mtime: still cached
    # New content under the same name (the mtime may even be restored): recomputed, new features.
    old = os.stat(replaced)
    make_audio(os.path.basename(replaced), folder=os.path.dirname(replaced), seconds=1.5, freq=330.0)
    os.utime(replaced, ns=(old.st_atime_ns, old.st_mtime_ns))
    third = _run(corpus.clips, config, cache_dir)
    assert (third.computed, third.reused) == (1, 11)
    assert third.features[replaced]["logmel"].shape[0] == 1 + 24000 // 160
    assert third.features[replaced]["logmel"].shape != first.features[replaced]["logmel"].shape
    _assert_same_features({touched: first.features[touched]}, {touched: third.features[touched]})


def test_copied_corpus_reuses_the_cache(corpus, cache_dir, tmp_path):
    config = FeatureConfig()
    first = _run(corpus.clips, config, cache_dir)
    copies = []
    for clip in corpus.clips:
        target = tmp_path / "copy" / os.path.basename(clip.path)
        target.parent.mkdir(exist_ok=True)
        shutil.copy(clip.path, target)  # new path and new mtime
        copies.append(dataclasses.replace(clip, path=str(target)))
    again = _run(copies, config, cache_dir)
    assert (again.computed, again.reused) == (0, 12)
    _assert_same_features({c.path: first.features[c.path] for c in corpus.clips},
                          {c.path: again.features[k.path] for c, k in zip(corpus.clips, copies)})


def test_leftover_temporaries_of_a_killed_run_are_removed(corpus, cache_dir):
    config = FeatureConfig()
    folder = cache_dir / config.extraction_key()
    folder.mkdir(parents=True)
    old, young = folder / ".tmp-old.npz", folder / ".tmp-young.npz"
    old.write_bytes(b"partial")
    young.write_bytes(b"being written")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    _run(corpus.clips[:2], config, cache_dir)
    assert not old.exists() and young.exists()


def test_clip_key():
    config = FeatureConfig()
    path = __file__
    assert clip_key(path, config) == clip_key(path, config)
    assert clip_key(path, config) != clip_key(path, FeatureConfig(n_mels=40))
    assert clip_key(path, config) == clip_key(path, FeatureConfig(length_mode="fixed"))
    assert len(clip_key(path, config)) == 16


def test_same_name_in_two_folders_does_not_share_an_entry(tmp_path, make_audio, cache_dir):
    # Manifest corpora often repeat file names across speaker folders; equal length and
    # mtime (e.g. unpacked from one archive) must still not mix the clips up.
    a = make_audio("001.wav", folder=tmp_path / "spk1", seconds=1.0, freq=200.0, seed=1)
    b = make_audio("001.wav", folder=tmp_path / "spk2", seconds=1.0, freq=2000.0, seed=2)
    os.utime(a, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    os.utime(b, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    assert os.path.getsize(a) == os.path.getsize(b)
    clips = [Clip(str(a), "x", "spk1"), Clip(str(b), "y", "spk2")]
    config = FeatureConfig()
    first = _run(clips, config, cache_dir)
    second = _run(clips, config, cache_dir)
    assert second.reused == 2
    assert not np.allclose(second.features[str(a)]["logmel"], second.features[str(b)]["logmel"])
    _assert_same_features(first.features, second.features)


def test_bad_files_are_skipped_with_one_warning_and_remembered(tmp_path, make_audio, cache_dir):
    folder = tmp_path / "mixed"
    good = [make_audio(f"100{i}_DFA_ANG_XX.wav", folder=folder, seconds=0.6, seed=i) for i in range(2)]
    silent = folder / "1002_DFA_SAD_XX.wav"
    sf.write(str(silent), np.zeros(16000, np.float32), 16000)
    corrupt = folder / "1003_DFA_FEA_XX.wav"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    tiny = make_audio("1004_DFA_HAP_XX.flac", folder=folder, seconds=0.05)
    clips = load_crema_d(folder).clips
    assert len(clips) == 5
    config = FeatureConfig()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = _run(clips, config, cache_dir)
    skips = [w for w in record if issubclass(w.category, SkippedFilesWarning)]
    assert len(skips) == 1 and str(skips[0].message).startswith("skipped 3 audio files")
    reasons = dict(first.skipped)
    assert set(reasons) == {str(silent), str(corrupt), str(tiny)}
    assert reasons[str(silent)] == "silent"
    assert reasons[str(corrupt)].startswith("unreadable audio")
    assert reasons[str(tiny)] == "too short (0.05 s < 0.2 s)"
    assert set(first.features) == {str(p) for p in good}
    assert (first.computed, first.reused) == (2, 0)  # the skipped files are counted apart
    cache = cache_dir / config.extraction_key()
    assert len(_entries(cache, ".bad")) == 3 and len(_entries(cache)) == 2
    # Remembered: not retried, still reported.
    with pytest.warns(SkippedFilesWarning, match="skipped 3 audio files.*silent"):
        second = _run(clips, config, cache_dir)
    assert (second.computed, second.reused) == (0, 2)
    assert dict(second.skipped) == reasons
    # Callers that need every clip (test-time copies, the model card) get a one-line error instead.
    assert [f["logmel"].shape for f in second.all_of(clips[:2])] == [f["logmel"].shape for f in second.of(clips)[1]]
    with pytest.raises(DataError, match="^3 clips could not be computed$"):
        second.all_of(clips)
    # A shorter minimum is another extraction: the tiny clip is then usable.
    with pytest.warns(SkippedFilesWarning, match="skipped 2 audio files"):
        relaxed = _run(clips, FeatureConfig(min_seconds=0.01), cache_dir)
    assert relaxed.features[str(tiny)]["logmel"].shape[0] == 1 + 800 // 160


def test_corrupt_or_wrong_entries_are_recomputed(corpus, cache_dir):
    config = FeatureConfig()
    first = _run(corpus.clips, config, cache_dir)
    folder = cache_dir / config.extraction_key()
    names = _entries(folder)
    truncated, garbage, wrong_shape, non_finite = (folder / n for n in names[:4])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(b"not a zip file at all")
    np.savez(wrong_shape, logmel=np.zeros((10, 40), np.float16), spectral=np.zeros((10, config.n_spectral), np.float16))
    with np.load(non_finite) as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["logmel"][3, 3] = np.nan
    np.savez(non_finite, **arrays)
    # A leftover temporary file from a killed run is not an entry.
    (folder / ".tmp-abcdef.npz").write_bytes(b"partial")
    second = _run(corpus.clips, config, cache_dir)
    assert (second.computed, second.reused, second.skipped) == (4, 8, [])
    _assert_same_features(first.features, second.features)
    assert _entries(folder) == names
    third = _run(corpus.clips, config, cache_dir)
    assert (third.computed, third.reused) == (0, 12)


def test_model_features_take_speaker_statistics_from_the_given_clips(corpus, cache_dir):
    """Scoring some of a speaker's clips with the statistics of all of them (`speaker_clips`), as
    `serkeras evaluate --speaker-stats corpus` does, gives each clip what it gets among all of them,
    test-time copies included."""
    config = FeatureConfig(speaker_norm=True)
    _run(corpus.clips, config, cache_dir)
    some = [c for c in corpus.clips if c.label in ("anger", "sad", "neutral")]
    assert len({c.speaker for c in some}) >= 2
    everything, whole = model_features(corpus.clips, config, copies=1, cache_dir=cache_dir)
    kept, pooled = model_features(some, config, copies=1, cache_dir=cache_dir, speaker_clips=corpus.clips)
    _, own = model_features(some, config, copies=1, cache_dir=cache_dir)
    index = {c.path: i for i, c in enumerate(everything)}
    assert kept == some and len(pooled) == 2
    for pooled_version, whole_version, own_version in zip(pooled, whole, own):
        for i, clip in enumerate(kept):
            np.testing.assert_array_equal(pooled_version[i]["logmel"], whole_version[index[clip.path]]["logmel"])
        assert not np.allclose(pooled_version[0]["logmel"].astype(np.float32),
                               own_version[0]["logmel"].astype(np.float32), atol=0.1)
    # Without speaker normalisation the statistics' clips change nothing.
    plain = FeatureConfig()
    _run(corpus.clips, plain, cache_dir)
    _, a = model_features(some, plain, cache_dir=cache_dir, speaker_clips=corpus.clips)
    _, b = model_features(some, plain, cache_dir=cache_dir)
    np.testing.assert_array_equal(a[0][0]["logmel"], b[0][0]["logmel"])


def test_a_cached_reason_names_the_file_asked_for(tmp_path, cache_dir):
    """Files of the same bytes share one cache entry: its reason must not carry the first one's folder."""
    junk = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    first, second = tmp_path / "mix" / "1003_TIE_ANG_XX.ogg", tmp_path / "bad" / "1003_TIE_ANG_XX.ogg"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(junk)
    with pytest.warns(SkippedFilesWarning):
        computed = _run([Clip(str(first), "anger", "1003")], FeatureConfig(), cache_dir)
    with pytest.warns(SkippedFilesWarning) as record:
        reused = _run([Clip(str(second), "anger", "1003")], FeatureConfig(), cache_dir)
    assert reused.computed == reused.reused == 0  # a skipped file counts as neither
    assert len(list(cache_dir.rglob("*.bad"))) == 1  # the second file's reason is the first one's entry
    (path, reason), = reused.skipped
    assert path == str(second) and reason == computed.skipped[0][1] and reason.startswith("unreadable audio")
    assert "mix" not in reason and "mix" not in str(record[0].message)


def test_resolve_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    assert resolve_cache_dir() == resolve_cache_dir(None) == Path(DEFAULT_CACHE_DIR) == Path("data/cache")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "given") == tmp_path / "given"


def test_cache_dir_from_environment(monkeypatch, make_audio, tmp_path):
    clip = Clip(str(make_audio(seconds=0.5)), "anger", "1001")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "envcache"))
    result = _run([clip], FeatureConfig(), None)
    assert result.computed == 1
    assert len(_entries(tmp_path / "envcache" / FeatureConfig().extraction_key())) == 1


def _features_run_with_a_first_entry(data, cache_dir, folder):
    """`serkeras features --workers 2` in its own session (so a kill of its group reaches the workers too),
    with SIGINT handled as in a terminal; returned once its first cache entry is written."""
    command = [sys.executable, "-m", "serkeras.cli", "features", "--data-dir", str(data),
               "--cache-dir", str(cache_dir), "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (folder.is_dir() and _entries(folder)):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no cache entry while it ran (120 s at most): {proc.communicate()[0].decode()}")
        time.sleep(0.01)
    return proc


def test_resume_after_kill(tmp_path, crema_dir, crema_manifest, cache_dir):
    """SIGKILL `serkeras features` mid-run: the next run computes only what is missing."""
    rows = sorted(crema_manifest.values(), key=lambda r: r["file"])[::149][:40]
    data = tmp_path / "crema"
    copy_clips(crema_dir, rows, data)
    clips = load_crema_d(data).clips
    total = len(clips)
    assert total == 40
    config = FeatureConfig()
    folder = cache_dir / config.extraction_key()
    proc = _features_run_with_a_first_entry(data, cache_dir, folder)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # (then the assertion below says it ended on its own)
        pass
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.2)
    done = len(_entries(folder))
    assert 0 < done < total, done
    # Whatever the kill left behind in temporary files must not count as entries.
    (folder / ".tmp-killed.npz").write_bytes(b"PK\x03\x04 half an entry")

    survivors = set(_entries(folder))
    resumed = _run(clips, config, cache_dir)
    assert (resumed.computed, resumed.reused, resumed.skipped) == (total - done, done, [])
    assert len(resumed.features) == total
    entry_of = {c.path: f"{os.path.splitext(os.path.basename(c.path))[0]}-{clip_key(c.path, config)}.npz"
                for c in clips}
    assert set(_entries(folder)) == set(entry_of.values())
    # The entries the killed process pool wrote are whole and right.
    pool_made = [c for c in clips if entry_of[c.path] in survivors]
    assert len(pool_made) == done
    for clip in pool_made + [clips[-1]]:
        fresh = compute_clip(clip.path, config)
        for key in ("logmel", "spectral"):
            np.testing.assert_allclose(resumed.features[clip.path][key], fresh[key], **F16)
    again = _run(clips, config, cache_dir)
    assert (again.computed, again.reused) == (0, total)


def _children(pid):
    """Process ids whose parent is `pid` (from /proc: psutil may not be installed)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _running(pid):
    """Whether `pid` is a process that has not ended (a zombie that nobody reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")
def test_kill_9_of_the_parent_ends_its_worker_processes(tmp_path, crema_dir, crema_manifest, cache_dir):
    """SIGKILL to `serkeras features` alone (not its group): its workers notice and exit within seconds,
    instead of waiting forever, with their memory, for work from a dead parent."""
    rows = sorted(crema_manifest.values(), key=lambda r: r["file"])[::149][:40]
    data = tmp_path / "crema"
    copy_clips(crema_dir, rows, data)
    folder = cache_dir / FeatureConfig().extraction_key()
    proc = _features_run_with_a_first_entry(data, cache_dir, folder)
    try:
        workers = [pid for pid in _children(proc.pid) if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) >= 2, workers  # the two workers (and maybe multiprocessing's resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _running(pid)], "worker processes outlived their parent"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its session
        except ProcessLookupError:
            pass


def test_without_a_death_signal_the_watchdog_ends_an_orphaned_worker(tmp_path):
    """The portable half of `exit_with_parent` (no prctl): a process whose parent is SIGKILLed exits by itself."""
    child = ("import os, time\n"
             "from serkeras.cache import exit_with_parent\n"
             "exit_with_parent(os.getppid(), by_signal=False)\n"
             "print('watching', flush=True)\n"
             "time.sleep(120)\n")
    parent = ("import subprocess, sys, time\n"
              f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE)\n"
              "print(child.pid, child.stdout.readline().decode().strip(), flush=True)\n"
              "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, start_new_session=True)
    try:
        pid, state = proc.stdout.readline().decode().split()
        assert state == "watching"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _running(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(int(pid)), "the orphaned process is still running"
    finally:
        proc.stdout.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_interrupt_stops_the_pool_without_finishing_the_queue(tmp_path, crema_dir, crema_manifest, cache_dir):
    """SIGINT to `serkeras features` alone (as `kill -INT` or `timeout -s INT` send it; a terminal's Ctrl-C
    also reaches the workers): the queued clips are dropped, not computed before it exits."""
    rows = sorted(crema_manifest.values(), key=lambda r: r["file"])[::14][:400]
    data = tmp_path / "crema"
    copy_clips(crema_dir, rows, data)
    config = FeatureConfig()
    folder = cache_dir / config.extraction_key()
    proc = _features_run_with_a_first_entry(data, cache_dir, folder)
    try:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "interrupted: work finished so far is kept" in output
    assert "Traceback" not in output
    done = len(_entries(folder))
    assert 0 < done < len(rows), done  # the chunks already running finished, the queue did not
    resumed = _run(load_crema_d(data).clips, config, cache_dir)
    assert (resumed.reused, resumed.computed) == (done, len(rows) - done)


def _write_long_tone(path, seconds, rate):
    n = int(seconds * rate)
    t = np.arange(n, dtype=np.float32) / rate
    wave = 0.3 * np.sin(2 * np.pi * 180.0 * t) + 0.01 * np.random.default_rng(0).standard_normal(n).astype(np.float32)
    sf.write(str(path), wave, rate, subtype="PCM_16")
    return path


def test_ten_minute_clip_refused_or_processed(tmp_path, cache_dir):
    path = _write_long_tone(tmp_path / "1001_DFA_NEU_XX.wav", 600, 8000)
    clip = Clip(str(path), "neutral", "1001")
    # Default: longer than max_seconds (60 s) is refused before decoding, and remembered.
    with pytest.warns(SkippedFilesWarning, match=r"longer than 60 s \(600\.0 s\)"):
        refused = _run([clip], FeatureConfig(), cache_dir)
    assert refused.skipped == [(str(path), "longer than 60 s (600.0 s)")] and not refused.features
    # Allowed: decoded and featurised whole (a coarse hop keeps this quick).
    config = FeatureConfig(sample_rate=8000, fmax=4000.0, n_fft=2048, win_length=2048, hop_length=800,
                           max_seconds=900.0)
    result = _run([clip], config, cache_dir)
    assert result.skipped == [] and result.computed == 1
    features = result.features[str(path)]
    assert features["logmel"].shape == (1 + 600 * 8000 // 800, 64)
    assert features["spectral"].shape == (6001, config.n_spectral)
    assert all(np.isfinite(a).all() for a in features.values())


def test_compute_clips_in_parallel_matches_one_by_one_and_reports_bad_files(real_clips, tmp_path):
    good = sorted(str(p) for p in real_clips.paths)[:9]
    bad = tmp_path / "1001_DFA_ANG_XX.wav"
    bad.write_bytes(b"not audio at all")
    paths = good[:4] + [str(bad)] + good[4:]
    config = FeatureConfig()
    results = compute_clips(paths, config, workers=2)
    assert [p for p, _ in results] == paths
    assert isinstance(results[4][1], str)
    for path, features in results[:4] + results[5:]:
        expected = compute_clip(path, config)
        np.testing.assert_allclose(features["logmel"], expected["logmel"], rtol=1e-5, atol=1e-4)


def test_parallel_runs_compile_librosas_kernels_here_before_workers_start(real_clips, tmp_path, monkeypatch):
    """numba writes its cache without a lock (numba issue #10128): workers compiling one gufunc at once
    can leave a pair of files that crashes every later process, so the parent fills the cache first."""
    config = FeatureConfig(pitch=True)
    fresh = tmp_path / "numba-cache"
    script = "from serkeras.cache import warm_up; from serkeras.features import FeatureConfig; " \
             "warm_up(FeatureConfig(pitch=True).to_dict(), {'speed': 0.1})"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                   env={**os.environ, "NUMBA_CACHE_DIR": str(fresh)})
    cached = {p.name.split("-")[1].split(".py")[0] for p in fresh.rglob("guf-*.nbc")}
    assert "pitch._pi_wrapper" in cached, cached  # yin's gufunc, the one seen crashing
    import serkeras.cache

    calls = []
    monkeypatch.setattr(serkeras.cache, "warm_up", lambda *settings: calls.append(settings))
    paths = sorted(str(p) for p in real_clips.paths)[:8]
    compute_clips(paths, config, workers=2)
    assert calls == [(config.to_dict(), None, 0, FEATURE_KINDS, None)]  # no augmentation, copy 0, no perturbation
    compute_clips(paths[:2], config, workers=2)  # too few for a pool: this process computes them
    assert len(calls) == 1


def _die(item, *settings):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_that_dies_is_a_one_line_error_not_a_traceback():
    from serkeras.cache import _parallel
    from serkeras.errors import SerkerasError

    class Bar:
        def update(self, n=1):
            pass

    with pytest.raises(SerkerasError, match=r"a feature process died abruptly .* after 0 of 8 clips.*--workers 1"):
        _parallel(_die, list(range(8)), (FeatureConfig().to_dict(), None, 0), 2, Bar())


class _Bar:
    def update(self, n=1):
        pass


def test_by_default_a_pool_starts_only_for_work_that_outlasts_starting_it(monkeypatch):
    """Unless told how many workers to use, this process computes the items while what is left would take it less
    time than starting workers does; past that point a pool over every core takes the rest."""
    import serkeras.cache

    pools = []
    # `warm_up` runs just before a pool starts (it compiles librosa's kernels here first).
    monkeypatch.setattr(serkeras.cache, "warm_up", lambda *settings: pools.append(settings))
    monkeypatch.setattr(serkeras.cache, "usable_cpus", lambda: 2)
    items = list(range(20))
    # Twenty items of microseconds each: far below a pool's start-up, computed here, in order.
    assert serkeras.cache._parallel(max, items, (5,), None, _Bar()) == [max(i, 5) for i in items]
    assert pools == []
    # Work that would outlast starting a pool: after two items (the first one's time is not taken as typical),
    # the other eighteen go to the workers.
    monkeypatch.setattr(serkeras.cache, "POOL_START_SECONDS", 0.0)
    out = serkeras.cache._parallel(max, items, (5,), None, _Bar())
    assert pools == [(5,)] and out[:2] == [5, 5] and sorted(out) == [max(i, 5) for i in items]
    # Told the number of workers, it starts them at once; told 1, it never does.
    assert sorted(serkeras.cache._parallel(max, items, (5,), 2, _Bar())) == [max(i, 5) for i in items]
    assert len(pools) == 2
    serkeras.cache._parallel(max, items, (5,), 1, _Bar())
    assert len(pools) == 2


def test_inventory_and_pruning_keep_what_runs_use(corpus, cache_dir):
    config, other = FeatureConfig(), FeatureConfig(n_mels=40)
    _run(corpus.clips, config, cache_dir)
    _run(corpus.clips[:3], other, cache_dir)
    folders = cache_folders(cache_dir)
    assert [f.path.name for f in folders] == [config.extraction_key(), other.extraction_key()]  # largest first
    main, small = folders
    assert (main.entries, main.unusable, small.entries) == (12, 0, 3)
    assert main.settings == config.to_dict() and small.settings["n_mels"] == 40
    assert main.size == sum(p.stat().st_size for p in main.path.glob("*.npz"))
    # Nothing used for 40 days; then a run reads 4 of the entries again: only those are kept.
    old = time.time() - 40 * 86400
    for entry in cache_dir.rglob("*.npz"):
        os.utime(entry, (old, old))
    assert max(f.last_used for f in cache_folders(cache_dir)) == pytest.approx(old)
    assert _run(corpus.clips[:4], config, cache_dir).reused == 4
    assert cache_folders(cache_dir)[0].last_used > time.time() - 60
    removed, freed = prune_cache(30, cache_dir)
    assert removed == 8 + 3 and freed > 0
    assert len(_entries(main.path)) == 4
    assert not small.path.exists()  # a settings folder left empty goes too
    assert prune_cache(30, cache_dir) == (0, 0)
    again = _run(corpus.clips, config, cache_dir)
    assert (again.computed, again.reused) == (8, 4)


def test_inventory_of_a_missing_cache_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no feature cache at"):
        cache_folders(tmp_path / "none")


def test_entries_of_some_feature_kinds_are_kept_apart_from_entries_of_all(corpus, tmp_path):
    config = FeatureConfig()
    path = corpus.clips[0].path
    assert clip_key(path, config, kinds=("logmel",)) != clip_key(path, config)
    assert clip_key(path, config, kinds=FEATURE_KINDS) == clip_key(path, config)  # older entries stay valid
    clips = corpus.clips[:2]
    logmel_only = cached_features(clips, config, tmp_path, workers=1, progress=False, kinds=("logmel",))
    assert logmel_only.computed == 2 and all(list(f) == ["logmel"] for f in logmel_only.features.values())
    every_kind = cached_features(clips, config, tmp_path, workers=1, progress=False)
    assert every_kind.computed == 2 and all(list(f) == list(FEATURE_KINDS) for f in every_kind.features.values())
    again = cached_features(clips, config, tmp_path, workers=1, progress=False, kinds=("logmel",))
    assert again.reused == 2
    for clip in clips:
        np.testing.assert_array_equal(again.features[clip.path]["logmel"], every_kind.features[clip.path]["logmel"])
