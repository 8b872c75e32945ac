"""tf.data pipelines: ragged variable-length features, bucketed and padded, or fixed-size.

Batches are `(inputs, one_hot_labels)` where `inputs` is a dict keyed by model
input name: `logmel` (batch, frames, n_mels), `spectral` (batch, frames,
n_spectral) and, in variable mode, `lengths` (batch,) with each clip's real
frame count. Keras 3 layers take dense tensors, so ragged features are padded
per batch; bucketing by length keeps that padding small.
"""

import weakref

import numpy as np
import tensorflow as tf

from serkeras.features import FEATURE_KINDS, eval_order, fit_to_length, padded_length


def clip_lengths(feature_list):
    """Each clip's frames: the length of its frame-aligned arrays (`logmel`, or the first it has)."""
    return np.array([len(f["logmel"] if "logmel" in f else next(iter(f.values()))) for f in feature_list],
                    dtype=np.int32)


def bucket_boundaries(lengths, batch_size, max_buckets=24):
    """Length quantiles that give every bucket several batches' worth of clips."""
    n_buckets = int(np.clip(len(lengths) // (4 * batch_size), 1, max_buckets))
    if n_buckets == 1:
        return []
    edges = np.quantile(lengths, np.linspace(0, 1, n_buckets + 1)[1:-1])
    return sorted({int(e) + 1 for e in edges})


def bucketed_batches(lengths, boundaries, batch_size, replicas=1):
    """Batches per epoch of `bucket_by_sequence_length`: each bucket's clips, batched, last batch partial.

    With `replicas` > 1 a partial batch of fewer clips than replicas is dropped (`whole_replica_batches`).
    """
    buckets = np.searchsorted(np.asarray(boundaries), np.asarray(lengths), side="right")
    return batch_count(np.bincount(buckets, minlength=len(boundaries) + 1), batch_size, replicas)


def batch_count(clips, batch_size, replicas=1):
    """Batches of `clips` (a count, or an array of counts summed over) with a partial last batch
    kept unless it has fewer clips than `replicas` (`whole_replica_batches`)."""
    full, rest = np.divmod(np.asarray(clips), batch_size)
    return int(np.sum(full + (rest >= replicas)))


def whole_replica_batches(dataset, replicas):
    """Training batches cut to a multiple of `replicas` clips; a batch left empty is dropped.

    Data-parallel training splits each batch between the replicas: a replica given no clip
    turns BatchNormalization's statistics into NaN (tf.distribute), and JAX refuses a batch
    that does not divide evenly. The clips left out differ from epoch to epoch (shuffled).
    """
    def cut(inputs, targets):
        keep = tf.shape(targets)[0] // replicas * replicas
        return {k: v[:keep] for k, v in inputs.items()}, targets[:keep]

    return dataset.map(cut).filter(lambda inputs, targets: tf.shape(targets)[0] > 0)


def replica_padded_batches(dataset, replicas):
    """Evaluation batches of `(inputs, targets, sample_weight)`, each padded to a multiple of `replicas`.

    The padding repeats the batch's first clips with weight 0, so every clip is evaluated once and
    the metrics count real clips only (the mean loss is divided by the padded count, at most
    `replicas - 1` extra clips per pass since only an unshuffled pipeline's last batch is partial).
    """
    def pad(inputs, targets):
        n = tf.shape(targets)[0]
        padded = (n + replicas - 1) // replicas * replicas
        rows = tf.range(padded) % n
        weights = tf.cast(tf.range(padded) < n, targets.dtype)
        return {k: tf.gather(v, rows) for k, v in inputs.items()}, tf.gather(targets, rows), weights

    return dataset.map(pad)


class _Clips:
    """What a batch reader reads: the clips' features, targets and the order of positions into them."""

    def __init__(self, feature_list, targets, order):
        self.feature_list, self.targets, self.order = feature_list, targets, order


def _batch_reader(clips, kinds):
    """A tf.data map from a batch of positions in `clips.order` to those clips' ({kind: frames zero-padded to the
    batch's longest, "lengths"}, targets), read from the lists (as `padded_batch` would have made them).

    The reader holds `clips` weakly and the dataset strongly (`_holding`): TensorFlow keeps every function given to
    `tf.numpy_function` alive for as long as the process, so a strong reference would keep every dataset's
    features too (gigabytes when a model stage is applied chunk by chunk).
    """
    first = clips.feature_list[clips.order[0]]
    # What every batch has in common, taken here so that the reader (kept for good) holds no clip.
    frame_shapes = {k: first[k].shape[1:] for k in kinds}
    frame_dtypes = {k: first[k].dtype for k in kinds}
    dtypes = [tf.as_dtype(frame_dtypes[k]) for k in kinds] + [tf.int32, tf.float32]
    shapes = [(None, None, *frame_shapes[k]) for k in kinds] + [(None,), (None, *clips.targets.shape[1:])]
    del first
    held = weakref.ref(clips)

    def read(positions):
        source = held()
        if source is None:
            raise RuntimeError("the clips of this tf.data pipeline were released with it")
        rows = source.order[positions]
        chosen = [source.feature_list[i] for i in rows]
        lengths = np.array([len(clip[kinds[0]]) for clip in chosen], np.int32)
        arrays = []
        for k in kinds:
            batch = np.zeros((len(chosen), lengths.max(), *frame_shapes[k]), frame_dtypes[k])
            for row, clip in enumerate(chosen):
                batch[row, :len(clip[k])] = clip[k]
            arrays.append(batch)
        return (*arrays, lengths, source.targets[rows])

    def batch(positions):
        *frames, lengths, target = tf.numpy_function(read, [positions], dtypes, stateful=False)
        for tensor, shape in zip((*frames, lengths, target), shapes):
            tensor.set_shape(shape)
        return {**dict(zip(kinds, frames)), "lengths": lengths}, target

    return batch


def _holding(dataset, value):
    """`dataset`, holding `value` for as long as it (or any dataset or iterator made from it) lives."""
    dataset._serkeras_held = value
    return dataset


def _pad_to_multiple(inputs, labels):
    frames = tf.reduce_max([tf.shape(v)[1] for k, v in inputs.items() if k != "lengths"])
    target = padded_length(frames)
    padded = {k: v if k == "lengths" else tf.pad(v, [[0, 0], [0, target - frames], [0, 0]]) for k, v in inputs.items()}
    return padded, labels


def mixup(dataset, alpha, seed=0):
    """Mix every batch of `(inputs, one_hot_labels)` with a shuffled copy of itself (mixup).

    Clip `i` becomes `lam * x[i] + (1 - lam) * x[j]` for a random partner `j` of
    the same batch, its label the same mix of the two one-hot labels (Zhang et
    al., 2018, "mixup: Beyond Empirical Risk Minimization"). `lam` is drawn per
    clip from Beta(alpha, alpha) and folded to `lam >= 0.5`, so each clip stays
    mostly itself. A mixed clip's length is the shorter of the two: frames
    where one of them is padding are masked, not mixed. Draws are seeded and
    differ from epoch to epoch.

    Parameters
    ----------
    dataset : tf.data.Dataset
        Batches from `make_dataset`, before any key is dropped.
    alpha : float
        Beta distribution parameter; small values (0.2-0.4) mix lightly.
    seed : int
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def mix(batch, pair):
        inputs, labels = batch
        partner_seed, gamma_seed, other_seed = tf.unstack(tf.random.experimental.stateless_split(pair, 3))
        n = tf.shape(labels)[0]
        partner = tf.argsort(tf.random.stateless_uniform([n], partner_seed))
        a = tf.random.stateless_gamma([n], gamma_seed, alpha=alpha)
        b = tf.random.stateless_gamma([n], other_seed, alpha=alpha)
        lam = a / tf.maximum(a + b, 1e-12)
        lam = tf.maximum(lam, 1.0 - lam)
        mixed = {}
        for key, value in inputs.items():
            other = tf.gather(value, partner)
            if key == "lengths":
                mixed[key] = tf.minimum(value, other)
            else:
                weight = tf.reshape(tf.cast(lam, value.dtype), [-1, 1, 1])
                mixed[key] = weight * value + (1 - weight) * other
        weight = tf.cast(lam, labels.dtype)[:, None]
        partner_labels = tf.gather(labels, partner)
        # Partial targets (`serkeras.losses.partial_targets`) mark a class that a clip's corpus lacks with -1:
        # the mix knows a class that either clip knows. For ordinary targets this is the plain mix.
        known = (labels >= 0) | (partner_labels >= 0)
        mixed_labels = weight * tf.maximum(labels, 0) + (1 - weight) * tf.maximum(partner_labels, 0)
        return mixed, tf.where(known, mixed_labels, tf.constant(-1, labels.dtype))

    return tf.data.Dataset.zip((dataset, seeds)).map(mix, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(feature_list, labels, n_classes, length_mode="variable", fixed_frames=None,
                 batch_size=32, shuffle=False, seed=0, input_names=FEATURE_KINDS + ("lengths",), bucket=True,
                 mixup_alpha=0.0, replicas=1, process_share=None):
    """Build a batched `tf.data.Dataset` of `(inputs, one_hot_labels)`.

    Parameters
    ----------
    feature_list : sequence of dict
        Per-clip features from `serkeras.cache.cached_features`, or a model
        stage's inputs; inputs that are one vector per clip (and no ``lengths``)
        are batched as they are, in input order, whatever `length_mode`.
    labels : sequence of int, or array of shape (clips, n_classes)
        Class index per clip, or per-clip target probabilities (soft targets,
        such as a teacher's in distillation), used as they are.
    n_classes : int
    length_mode : {"variable", "fixed"}
        `variable` keeps every frame (ragged, bucketed, padded per batch, with
        lengths); `fixed` crops/pads every clip to `fixed_frames`.
    batch_size : int
    shuffle : bool
        Shuffle (seeded, reshuffled each epoch). Unshuffled variable-length
        pipelines emit clips in `eval_order(lengths)`; fixed ones in input order.
    input_names : tuple of str
        The model's input names; only these keys are emitted.
    bucket : bool
        Bucket shuffled variable-length clips by length (else plain padded batches).
    mixup_alpha : float
        With a positive value, `mixup` the batches (training pipelines only: labels become soft).
    replicas : int
        Devices a data-parallel model splits each batch between (1: not distributed). Shuffled
        (training) batches are cut to a multiple of it (`whole_replica_batches`, `batch_size`
        should be one); unshuffled ones are padded to one and carry sample weights
        (`replica_padded_batches`).
    process_share : (int, int), optional
        ``(index, count)`` of this process among several that train one model: every process
        builds the same batches and emits its ``index``-th of ``count`` equal, consecutive
        slices of each (`replicas`, the devices of every process, must be a multiple of ``count``).
    """
    labels = np.asarray(labels)
    targets = labels.astype(np.float32) if labels.ndim == 2 else np.eye(n_classes, dtype=np.float32)[labels]
    kinds = [k for k in input_names if k != "lengths"]  # the feature kinds, or a model stage's frame inputs
    # One vector per clip and input (a pooled embedding and its speaker's statistics): no time axis to fit.
    vectors = "lengths" not in input_names and all(np.ndim(feature_list[0][k]) == 1 for k in kinds)
    if length_mode == "fixed" or vectors:
        if vectors:
            inputs = {k: np.stack([f[k] for f in feature_list]) for k in kinds}
        else:
            fitted = [fit_to_length({k: f[k] for k in kinds}, fixed_frames) for f in feature_list]
            inputs = {k: np.stack([f[k] for f in fitted]) for k in kinds}
        if "lengths" in input_names:
            inputs["lengths"] = np.minimum(clip_lengths(feature_list), fixed_frames)
        ds = tf.data.Dataset.from_tensor_slices((inputs, targets))
        if shuffle:
            ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
        return _for_replicas(ds, shuffle, replicas, batch_count(len(labels), batch_size, replicas), mixup_alpha,
                             seed, process_share).prefetch(tf.data.AUTOTUNE)

    lengths = clip_lengths(feature_list)
    order = np.arange(len(lengths)) if shuffle else eval_order(lengths)
    # The pipeline shuffles and batches clip indices, then reads each batch's clips from `feature_list`, so the
    # frames are held once: a tensor of all of them and a shuffle buffer of clips each held another copy
    # (gigabytes for a frozen encoder's outputs on several corpora). The batches are the same.
    ordered_lengths = tf.constant(lengths[order], tf.int32)
    ds = tf.data.Dataset.range(len(order))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if shuffle and bucket:
        boundaries = bucket_boundaries(lengths, batch_size)
        ds = ds.bucket_by_sequence_length(
            element_length_func=lambda i: tf.gather(ordered_lengths, i),
            bucket_boundaries=boundaries,
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        )
        # A clip's bucket depends on its length only, so the batch count is the
        # same every epoch; stating it lets Keras size epochs and progress bars.
        batches = bucketed_batches(lengths, boundaries, batch_size, replicas)
    else:
        ds = ds.batch(batch_size)
        batches = batch_count(len(labels), batch_size, replicas)
    clips = _Clips(feature_list, targets, order)
    ds = _holding(ds.map(_batch_reader(clips, kinds)), clips)
    ds = ds.map(_pad_to_multiple, num_parallel_calls=tf.data.AUTOTUNE)
    if "lengths" not in input_names:
        ds = ds.map(lambda x, y: ({k: v for k, v in x.items() if k != "lengths"}, y))
    return _for_replicas(ds, shuffle, replicas, batches, mixup_alpha, seed, process_share).prefetch(tf.data.AUTOTUNE)


def _for_replicas(ds, shuffle, replicas, batches, mixup_alpha, seed, process_share=None):
    """The last steps of `make_dataset`: batches fitted to `replicas`, `batches` of them per epoch
    when shuffled; then mixup; then this process's share of each batch."""
    if shuffle:
        if replicas > 1:
            ds = whole_replica_batches(ds, replicas)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    elif replicas > 1:
        ds = replica_padded_batches(ds, replicas)
    if mixup_alpha:
        ds = mixup(ds, mixup_alpha, seed)
    if process_share is not None:
        ds = ds.map(lambda *batch: process_slice(batch, *process_share))
    return ds


def process_slice(batch, index, count):
    """The `index`-th of `count` equal, consecutive slices of every array of `batch` (its rows).

    Consecutive, as a data-parallel mesh of several processes' devices (process 0's first) splits a
    global batch: each process feeds the rows its own devices hold.
    """
    def share(array):
        rows = tf.shape(array)[0] // count
        return array[index * rows:(index + 1) * rows]

    return tf.nest.map_structure(share, batch)


def padding_overhead(dataset):
    """Padded frames / real frames - 1 over one pass of a variable-length dataset."""
    padded = real = 0
    for inputs, _ in dataset:
        frames = next(v for k, v in inputs.items() if k != "lengths").shape
        padded += frames[0] * frames[1]
        real += int(tf.reduce_sum(inputs["lengths"]))
    return padded / max(real, 1) - 1.0
