"""tf.data pipelines on real features: ragged -> padded batches with lengths, or fixed frames."""

import types
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from serkeras.cache import cached_features  # noqa: E402
from serkeras.corpus import load_crema_d  # noqa: E402
from serkeras.features import PAD_MULTIPLE, FeatureConfig, eval_order, fit_to_length  # noqa: E402
from serkeras.pipeline import (  # noqa: E402
    bucket_boundaries,
    clip_lengths,
    make_dataset,
    mixup,
    padding_overhead,
)
from serkeras.splits import actor_split  # noqa: E402

N_CLASSES = 6


@pytest.fixture(scope="session")
def real_set(crema_dir, crema_manifest, tmp_path_factory):
    """Features of ~200 real clips (every 29th of the corpus), extracted once per session."""
    corpus = load_crema_d(crema_dir)
    clips = corpus.clips[::29][:200]
    result = cached_features(clips, FeatureConfig(), tmp_path_factory.mktemp("cache"), workers=1, progress=False)
    assert result.skipped == []
    kept, features = result.of(clips)
    assert len(kept) == 200
    return types.SimpleNamespace(
        clips=kept, features=features, labels=np.array(corpus.label_indices(kept)),
        lengths=clip_lengths(features), corpus=corpus, manifest=crema_manifest)


def _batches(ds):
    return [({k: v.numpy() for k, v in inputs.items()}, labels.numpy()) for inputs, labels in ds]


def _fingerprint(logmel):
    """Identifies a clip from its (possibly padded) log-mel frames: every clip has > 100 frames."""
    return tuple(np.round(logmel[:10, :4].astype(np.float64).sum(axis=0), 2))


def test_lengths_are_the_real_frame_counts(real_set):
    hop = FeatureConfig().hop_length
    for clip, features, length in zip(real_set.clips, real_set.features, real_set.lengths):
        samples = int(real_set.manifest[Path(clip.path).name]["frames"])
        assert length == len(features["logmel"]) == len(features["spectral"]) == 1 + samples // hop


def test_variable_batches_unshuffled(real_set):
    ds = make_dataset(real_set.features, real_set.labels, N_CLASSES, batch_size=32)
    order = eval_order(real_set.lengths)
    position = 0
    batches = _batches(ds)
    assert [len(b[1]) for b in batches] == [32] * 6 + [8]
    for inputs, one_hot in batches:
        assert set(inputs) == {"logmel", "spectral", "lengths"}
        n, frames = inputs["logmel"].shape[:2]
        assert inputs["logmel"].shape == (n, frames, 64) and inputs["logmel"].dtype == np.float32
        assert inputs["spectral"].shape == (n, frames, FeatureConfig().n_spectral)
        assert inputs["lengths"].shape == (n,) and inputs["lengths"].dtype.kind == "i"
        assert frames % PAD_MULTIPLE == 0
        assert inputs["lengths"].max() <= frames < inputs["lengths"].max() + PAD_MULTIPLE
        # One-hot labels, in eval order.
        assert one_hot.shape == (n, N_CLASSES) and one_hot.dtype == np.float32
        np.testing.assert_array_equal(one_hot.sum(axis=1), 1.0)
        idx = order[position:position + n]
        np.testing.assert_array_equal(one_hot.argmax(axis=1), real_set.labels[idx])
        np.testing.assert_array_equal(inputs["lengths"], real_set.lengths[idx])
        for row, i in enumerate(idx):
            length = real_set.lengths[i]
            for key in ("logmel", "spectral"):
                np.testing.assert_array_equal(inputs[key][row, :length], real_set.features[i][key])
                assert not inputs[key][row, length:].any(), "padding must be zeros"
        position += n
    assert position == 200
    # Unshuffled lengths never decrease (eval order sorts by length, stably).
    assert np.all(np.diff(np.concatenate([b[0]["lengths"] for b in batches])) >= 0)


def test_eval_order_is_a_stable_sort():
    lengths = [5, 3, 5, 1, 3]
    assert list(eval_order(lengths)) == [3, 1, 4, 0, 2]


def test_shuffled_is_deterministic_for_a_seed(real_set):
    def epoch(seed, bucket=True):
        ds = make_dataset(real_set.features, real_set.labels, N_CLASSES, batch_size=32, shuffle=True, seed=seed,
                          bucket=bucket)
        return [[_fingerprint(row) for row in inputs["logmel"]] for inputs, _ in _batches(ds)]

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert a == b
    assert a != c
    every = {_fingerprint(f["logmel"]) for f in real_set.features}
    assert len(every) == 200  # the fingerprint identifies a clip
    for run in (a, c, epoch(3, bucket=False)):
        seen = [fp for batch in run for fp in batch]
        assert len(seen) == 200 and set(seen) == every  # every clip once per epoch
        assert all(len(batch) <= 32 for batch in run)
    # Not simply the eval order.
    sorted_fps = [_fingerprint(real_set.features[i]["logmel"]) for i in eval_order(real_set.lengths)]
    assert [fp for batch in a for fp in batch] != sorted_fps


def test_shuffled_buckets_group_similar_lengths(real_set):
    batch_size = 8
    boundaries = bucket_boundaries(real_set.lengths, batch_size)
    assert len(boundaries) >= 2 and boundaries == sorted(boundaries)
    ds = make_dataset(real_set.features, real_set.labels, N_CLASSES, batch_size=batch_size, shuffle=True, seed=1)
    edges = [0] + boundaries + [10**9]
    total = 0
    for inputs, one_hot in _batches(ds):
        lengths = inputs["lengths"]
        bucket = np.searchsorted(boundaries, lengths, side="right")
        assert len(set(bucket)) == 1, (lengths, boundaries)
        b = bucket[0]
        assert (lengths >= edges[b]).all() and (lengths < edges[b + 1]).all()
        assert inputs["logmel"].shape[1] % PAD_MULTIPLE == 0
        assert one_hot.shape == (len(lengths), N_CLASSES)
        total += len(lengths)
    assert total == 200


def test_only_requested_inputs_are_emitted(real_set):
    features, labels = real_set.features[:20], real_set.labels[:20]
    for names in [("logmel", "lengths"), ("spectral",), ("logmel",), ("spectral", "lengths")]:
        for shuffle in (False, True):
            ds = make_dataset(features, labels, N_CLASSES, batch_size=8, shuffle=shuffle, input_names=names)
            for inputs, _ in ds:
                assert set(inputs) == set(names)
                for key in set(names) - {"lengths"}:
                    assert inputs[key].shape[1] % PAD_MULTIPLE == 0
    spec = make_dataset(features, labels, N_CLASSES, batch_size=8, input_names=("spectral",)).element_spec[0]
    assert set(spec) == {"spectral"} and spec["spectral"].shape[-1] == FeatureConfig().n_spectral


def test_fixed_mode(real_set):
    config = FeatureConfig(length_mode="fixed", fixed_seconds=2.0)
    frames = config.fixed_frames
    assert frames == 201
    features, labels = real_set.features[:40], real_set.labels[:40]
    assert min(real_set.lengths[:40]) < frames < max(real_set.lengths[:40])  # both crop and pad happen
    ds = make_dataset(features, labels, N_CLASSES, length_mode="fixed", fixed_frames=frames, batch_size=16,
                      input_names=("logmel", "spectral"))
    batches = _batches(ds)
    assert [len(b[1]) for b in batches] == [16, 16, 8]
    start = 0
    for inputs, one_hot in batches:
        assert set(inputs) == {"logmel", "spectral"}  # no lengths unless asked
        n = len(one_hot)
        assert inputs["logmel"].shape == (n, frames, 64)
        assert inputs["spectral"].shape == (n, frames, FeatureConfig().n_spectral)
        np.testing.assert_array_equal(one_hot.argmax(axis=1), labels[start:start + n])  # input order
        np.testing.assert_array_equal(one_hot.sum(axis=1), 1.0)
        for row in range(n):
            expected = fit_to_length(features[start + row], frames)
            for key in ("logmel", "spectral"):
                np.testing.assert_array_equal(inputs[key][row], expected[key])
        start += n
    with_lengths = _batches(make_dataset(features, labels, N_CLASSES, length_mode="fixed", fixed_frames=frames,
                                         batch_size=40))
    (inputs, _), = with_lengths
    assert set(inputs) == {"logmel", "spectral", "lengths"}
    np.testing.assert_array_equal(inputs["lengths"], np.minimum(real_set.lengths[:40], frames))


def test_fixed_mode_shuffle_is_seeded(real_set):
    def order(seed):
        ds = make_dataset(real_set.features[:40], real_set.labels[:40], N_CLASSES, length_mode="fixed",
                          fixed_frames=101, batch_size=40, shuffle=True, seed=seed, input_names=("logmel",))
        (inputs, _), = _batches(ds)
        return [_fingerprint(row) for row in inputs["logmel"]]

    assert order(5) == order(5) != order(6)
    assert sorted(order(5)) == sorted(_fingerprint(f["logmel"]) for f in real_set.features[:40])


def test_labels_one_hot():
    features = [{"logmel": np.ones((n, 2), np.float32), "spectral": np.ones((n, 3), np.float32)} for n in (4, 2, 3)]
    ds = make_dataset(features, [2, 0, 1], 3, batch_size=3)
    (inputs, one_hot), = _batches(ds)
    # Eval order: lengths 2, 3, 4 -> clips 1, 2, 0.
    np.testing.assert_array_equal(one_hot, np.eye(3, dtype=np.float32)[[0, 1, 2]])
    np.testing.assert_array_equal(inputs["lengths"], [2, 3, 4])
    assert inputs["logmel"].shape == (3, 16, 2)


def test_padding_overhead_exact():
    features = [{"logmel": np.ones((n, 2), np.float32), "spectral": np.ones((n, 1), np.float32)} for n in (3, 5)]
    ds = make_dataset(features, [0, 1], 2, batch_size=2)
    assert padding_overhead(ds) == pytest.approx(2 * 16 / 8 - 1)


def _expected_overhead(lengths, batches):
    padded = sum(len(b) * (-(-max(b) // PAD_MULTIPLE) * PAD_MULTIPLE) for b in batches)
    return padded / sum(lengths) - 1


def test_padding_overhead_on_real_features(real_set):
    lengths = real_set.lengths
    eval_ds = make_dataset(real_set.features, real_set.labels, N_CLASSES, batch_size=32)
    sorted_lengths = lengths[eval_order(lengths)]
    expected = _expected_overhead(lengths, [sorted_lengths[i:i + 32] for i in range(0, 200, 32)])
    overhead = padding_overhead(eval_ds)
    assert overhead == pytest.approx(expected, rel=1e-9)
    assert overhead < 0.15
    unbucketed = padding_overhead(make_dataset(real_set.features, real_set.labels, N_CLASSES, batch_size=32,
                                               shuffle=True, seed=0, bucket=False))
    assert unbucketed > 2 * overhead
    # Smaller batches bucket this set finely: padding stays small while shuffled.
    bucketed = padding_overhead(make_dataset(real_set.features, real_set.labels, N_CLASSES, batch_size=8,
                                             shuffle=True, seed=0))
    assert bucketed < 0.10


def test_padding_overhead_bucketed_on_real_training_lengths(real_set):
    """Batch 32 over the real lengths of a 73-actor training part (~4,700 clips): bucketing keeps padding < 10%.

    Lengths come from the manifest's sample counts, checked against real features above;
    the feature values do not affect padding, so one column stands in for them.
    """
    hop = FeatureConfig().hop_length
    train = actor_split(real_set.corpus.clips, seed=0).train
    lengths = [1 + int(real_set.manifest[Path(c.path).name]["frames"]) // hop for c in train]
    assert len(lengths) > 4000
    features = [{"logmel": np.ones((n, 1), np.float32), "spectral": np.ones((n, 1), np.float32)} for n in lengths]
    labels = real_set.corpus.label_indices(train)
    names = ("logmel", "lengths")
    bucketed = padding_overhead(make_dataset(features, labels, N_CLASSES, batch_size=32, shuffle=True, seed=0,
                                             input_names=names))
    unbucketed = padding_overhead(make_dataset(features, labels, N_CLASSES, batch_size=32, shuffle=True, seed=0,
                                               input_names=names, bucket=False))
    assert bucketed < 0.10
    assert unbucketed > 0.25
    assert set(labels) == set(range(N_CLASSES))


def test_bucketed_dataset_states_its_exact_batch_count():
    # Keras sizes epochs from the cardinality; it must match what a pass yields, every epoch.
    rng = np.random.default_rng(3)
    lengths = rng.integers(20, 400, size=300)
    features = [{"logmel": np.zeros((n, 4), np.float32), "spectral": np.zeros((n, 3), np.float32)} for n in lengths]
    ds = make_dataset(features, rng.integers(0, 6, size=300), 6, shuffle=True, batch_size=16, seed=1)
    stated = int(ds.cardinality())
    assert stated > 300 // 16  # buckets end in partial batches
    for _ in range(2):
        assert sum(1 for _ in ds) == stated


def _labelled_constant_clips(n):
    """Clip k: label k, length 20 + 3k, every log-mel value 10k and every spectral value -k."""
    return [{"logmel": np.full((20 + 3 * k, 2), 10.0 * k, np.float32),
             "spectral": np.full((20 + 3 * k, 3), -float(k), np.float32)} for k in range(n)]


@pytest.mark.parametrize("length_mode", ["variable", "fixed"])
def test_mixup_mixes_inputs_and_labels_with_one_weight_and_masks_padding(length_mode):
    n = 12
    features = _labelled_constant_clips(n)
    ds = make_dataset(features, np.arange(n), n, length_mode=length_mode, fixed_frames=64, batch_size=n,
                      shuffle=True, seed=3, bucket=False, mixup_alpha=1.0)
    assert int(ds.cardinality()) == 1
    epochs = [_batches(ds) for _ in range(2)]
    mixed_rows = 0
    for (inputs, labels), in epochs:
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
        assert (labels.max(axis=1) >= 0.5 - 1e-6).all()  # each clip stays mostly itself
        for row, label in enumerate(labels):
            present = np.flatnonzero(label > 1e-6)
            assert 1 <= len(present) <= 2
            mixed_rows += len(present) == 2
            # The inputs are the same mix of the same clips as the labels.
            length = inputs["lengths"][row]
            assert length == min(20 + 3 * k for k in present)
            np.testing.assert_allclose(inputs["logmel"][row, :length], label @ (10.0 * np.arange(n)), rtol=1e-5)
            np.testing.assert_allclose(inputs["spectral"][row, :length], -(label @ np.arange(n)), rtol=1e-5,
                                       atol=1e-5)
    assert mixed_rows > n  # most clips get a partner
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])  # new draws every epoch
    again = _batches(make_dataset(features, np.arange(n), n, length_mode=length_mode, fixed_frames=64,
                                  batch_size=n, shuffle=True, seed=3, bucket=False, mixup_alpha=1.0))
    np.testing.assert_array_equal(again[0][1], epochs[0][0][1])  # seeded


def test_mixup_keeps_the_bucketed_batch_count_and_drops_lengths_after_mixing():
    features = _labelled_constant_clips(40)
    plain = make_dataset(features, np.arange(40) % 6, 6, batch_size=8, shuffle=True, seed=0)
    mixed = make_dataset(features, np.arange(40) % 6, 6, batch_size=8, shuffle=True, seed=0, mixup_alpha=0.2,
                         input_names=("logmel",))
    assert int(mixed.cardinality()) == int(plain.cardinality()) == sum(1 for _ in mixed)
    inputs, labels = next(iter(mixed))
    assert set(inputs) == {"logmel"} and labels.shape[1] == 6
    with pytest.raises(ValueError, match="alpha must be positive"):
        mixup(plain, -1.0)


def test_variable_length_clips_are_read_from_the_list_not_copied():
    """A variable-length pipeline reads each clip from the caller's list as it goes (the frames are held once,
    not also as one tensor and a shuffle buffer of copies): a clip changed after the dataset is made is seen."""
    rng = np.random.default_rng(0)
    feature_list = [{"frames0": rng.standard_normal((n, 4)).astype(np.float32)} for n in (5, 9, 7, 3)]
    for shuffle in (False, True):
        ds = make_dataset(feature_list, [0, 1, 0, 1], 2, batch_size=4, shuffle=shuffle, seed=0,
                          input_names=("frames0", "lengths"), bucket=False)
        feature_list[2]["frames0"][:] = 42.0
        inputs, _ = next(iter(ds))
        row = list(inputs["lengths"].numpy()).index(7)
        assert np.all(inputs["frames0"].numpy()[row, :7] == 42.0)
        feature_list[2]["frames0"][:] = rng.standard_normal((7, 4))


def test_a_variable_length_pipeline_releases_its_clips_with_it():
    """TensorFlow keeps every `tf.numpy_function`'s function for the life of the process; the clips it reads
    must not be kept with it, or each pipeline made (one per chunk of clips when a frozen encoder's frames are
    pooled) holds its frames for good. An iterator keeps them while it is used."""
    import gc
    import weakref

    class Clips(list):
        pass

    class Features(dict):
        pass

    rng = np.random.default_rng(1)
    clips = Clips(Features(frames0=rng.standard_normal((n, 4)).astype(np.float32)) for n in (5, 9, 7, 3))
    alive = [weakref.ref(clips)] + [weakref.ref(clip) for clip in clips]
    iterator = iter(make_dataset(clips, [0, 1, 0, 1], 2, batch_size=2, shuffle=True, seed=0,
                                 input_names=("frames0", "lengths")))
    del clips
    gc.collect()
    assert sum(len(targets) for _, targets in iterator) == 4 and all(ref() is not None for ref in alive)
    del iterator
    gc.collect()
    assert [ref() for ref in alive] == [None] * 5
