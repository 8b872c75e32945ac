"""Length-aware layers built from `keras.ops` only, so they run on every backend.

Variable-length batches are padded; these layers take each clip's real frame
count (`lengths`) so that padded frames never change a clip's output.
"""

import keras
import numpy as np
from keras import ops


def time_mask(lengths, frames, dtype="float32"):
    """(batch, frames) mask: 1 for real frames, 0 for padding."""
    return ops.cast(ops.arange(frames)[None, :] < ops.cast(lengths, "int32")[:, None], dtype)


def _broadcast_mask(mask, ndim):
    """(batch, frames) -> (batch, frames, 1, ...) to multiply a rank-`ndim` tensor."""
    return ops.reshape(mask, ops.shape(mask) + (1,) * (ndim - 2))


def real_frames(x, lengths=None):
    """Float mask of the real frames of channels-last `x`, shaped like `x` with 1 channel.

    (batch, frames, 1) or (batch, frames, freq, 1): summing it counts the real
    positions that a statistic averages over. All ones when `lengths` is None.
    """
    ones = ops.ones_like(x[..., :1])
    if lengths is None:
        return ones
    return _broadcast_mask(time_mask(lengths, ops.shape(x)[1], x.dtype), len(x.shape)) * ones


def masked_mean(x, mask, axis, keepdims=False):
    """Mean of `x` over `axis` where `mask` is 1 (0 where nothing is real)."""
    total = ops.sum(x * mask, axis=axis, keepdims=keepdims)
    return total / ops.maximum(ops.sum(mask, axis=axis, keepdims=keepdims), 1.0)


@keras.saving.register_keras_serializable(package="serkeras")
def gelu(x):
    """Exact GELU, ``x * Phi(x)``, written with ``erf``.

    The same values as ``keras.activations.gelu``, but TensorFlow's own GELU
    uses ``erfc``, which tf2onnx cannot convert, so models that use this one
    export to ONNX.
    """
    return 0.5 * x * (1.0 + ops.erf(x * np.float32(1.0 / np.sqrt(2.0))))


@keras.saving.register_keras_serializable(package="serkeras")
class TimeMask(keras.layers.Layer):
    """Zero the frames past each clip's length (before a convolution reads them)."""

    def call(self, inputs, lengths):
        mask = time_mask(lengths, ops.shape(inputs)[1], inputs.dtype)
        return inputs * _broadcast_mask(mask, len(inputs.shape))


@keras.saving.register_keras_serializable(package="serkeras")
class PooledLengths(keras.layers.Layer):
    """Frame counts after a 'valid' pooling of size `pool_size` along time (at least 1).

    With `ceil`, after a strided convolution that pads its input instead: a
    partial last window still gives a frame.
    """

    def __init__(self, pool_size, ceil=False, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.ceil = bool(ceil)

    def call(self, lengths):
        lengths = ops.cast(lengths, "int32") + (self.pool_size - 1 if self.ceil else 0)
        return ops.maximum(ops.floor_divide(lengths, self.pool_size), 1)

    def compute_output_spec(self, lengths):
        return keras.KerasTensor(lengths.shape, dtype="int32")

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "ceil": self.ceil}


@keras.saving.register_keras_serializable(package="serkeras")
class MaskedGroupNormalization(keras.layers.Layer):
    """Group normalisation whose statistics use real frames only.

    Like `keras.layers.GroupNormalization` on channels-last input of rank 3
    (batch, time, channels) or 4 (batch, time, freq, channels), but with
    `lengths` the mean and variance of each group ignore padded frames.
    """

    def __init__(self, groups=8, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(f"{channels} channels do not split into {self.groups} groups")
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def _group_mean(self, values, mask, count):
        """Per-channel mean over the real frames of each group, shape (batch, channels)."""
        axes = tuple(range(1, len(values.shape) - 1))
        channels = values.shape[-1]
        per_channel = ops.sum(values * mask, axis=axes)
        per_group = ops.sum(ops.reshape(per_channel, (-1, self.groups, channels // self.groups)), axis=-1)
        mean = per_group / (count * (channels // self.groups))
        return ops.repeat(mean, channels // self.groups, axis=1)

    def call(self, inputs, lengths=None):
        x = ops.cast(inputs, "float32")
        ndim = len(x.shape)
        mask = real_frames(x, lengths)
        count = ops.sum(mask, axis=tuple(range(1, ndim)))[:, None]
        expand = (slice(None),) + (None,) * (ndim - 2) + (slice(None),)
        mean = self._group_mean(x, mask, count)[expand]
        centered = x - mean
        variance = self._group_mean(centered**2, mask, count)[expand]
        out = centered * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, inputs_shape, lengths_shape=None):
        return inputs_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="serkeras")
class MaskedGlobalAveragePooling(keras.layers.Layer):
    """Average over every axis but batch and channels, counting real frames only."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Lengths carry the padding; a Keras mask from an RNN upstream is accepted and ends here.
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, inputs, lengths=None):
        x = ops.cast(inputs, "float32")
        pooled = masked_mean(x, real_frames(x, lengths), axis=tuple(range(1, len(x.shape) - 1)))
        return ops.cast(pooled, self.compute_dtype)

    def compute_output_shape(self, inputs_shape, lengths_shape=None):
        return (inputs_shape[0], inputs_shape[-1])


@keras.saving.register_keras_serializable(package="serkeras")
class SerkerasMetadata(keras.layers.Layer):
    """Passes its input through unchanged; its config carries what inference needs.

    A `.keras` file holds the model's config, so keeping the label names, the
    feature settings and the model settings here makes the file self-contained.
    """

    def __init__(self, labels=(), feature_config=None, model_config=None, version="", **kwargs):
        super().__init__(**kwargs)
        self.labels = list(labels)
        self.feature_config = dict(feature_config or {})
        self.model_config = dict(model_config or {})
        self.version = version

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "labels": self.labels, "feature_config": self.feature_config,
                "model_config": self.model_config, "version": self.version}


@keras.saving.register_keras_serializable(package="serkeras")
class SpecAugment(keras.layers.Layer):
    """SpecAugment-style masking of standardised features, active in training only.

    Sets `time_masks` random spans of up to `max_time` frames (and, on log-mel
    input, `freq_masks` spans of up to `max_freq` bins) to 0, the training mean.
    """

    def __init__(self, time_masks=2, max_time=20, freq_masks=2, max_freq=8, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.time_masks, self.max_time = int(time_masks), int(max_time)
        self.freq_masks, self.max_freq = int(freq_masks), int(max_freq)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _spans(self, batch, size, count, max_width):
        """(batch, size) mask that is 0 inside `count` random spans per row."""
        positions = ops.arange(size)[None, :]
        keep = ops.ones((batch, size))
        for _ in range(count):
            width = keras.random.randint((batch, 1), 0, max_width + 1, seed=self.seed_generator)
            start = keras.random.randint((batch, 1), 0, ops.maximum(size, 1), seed=self.seed_generator)
            inside = ops.logical_and(positions >= start, positions < start + width)
            keep = keep * (1.0 - ops.cast(inside, "float32"))
        return keep

    def call(self, inputs, training=False):
        if not training:
            return inputs
        shape = ops.shape(inputs)
        keep = self._spans(shape[0], shape[1], self.time_masks, self.max_time)[:, :, None]
        if self.freq_masks:
            keep = keep * self._spans(shape[0], inputs.shape[2], self.freq_masks, self.max_freq)[:, None, :]
        return inputs * ops.cast(keep, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "time_masks": self.time_masks, "max_time": self.max_time,
                "freq_masks": self.freq_masks, "max_freq": self.max_freq, "seed": self.seed}


@keras.saving.register_keras_serializable(package="serkeras")
class UtteranceNormalization(keras.layers.Layer):
    """Per-clip normalisation of each feature over the clip's real frames.

    `mode="mean"` removes each clip's mean (cepstral mean normalisation: the
    channel and much of the speaker's timbre); `"meanvar"` also divides by the
    clip's standard deviation. Input (batch, frames, features).
    """

    def __init__(self, mode="mean", epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("mean", "meanvar"):
            raise ValueError(f"mode must be 'mean' or 'meanvar', got {mode!r}")
        self.mode = mode
        self.epsilon = float(epsilon)

    def call(self, inputs, lengths=None):
        x = ops.cast(inputs, "float32")
        mask = real_frames(x, lengths)
        out = x - masked_mean(x, mask, axis=1, keepdims=True)
        if self.mode == "meanvar":
            out = out * ops.rsqrt(masked_mean(out**2, mask, axis=1, keepdims=True) + self.epsilon)
        # Padding stays zero so later length-aware layers see the same clip.
        return ops.cast(out * mask, self.compute_dtype)

    def compute_output_shape(self, inputs_shape, lengths_shape=None):
        return inputs_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="serkeras")
class AttentiveStatisticsPooling(keras.layers.Layer):
    """Attention-weighted mean and standard deviation over time (real frames only).

    A small scoring network (`Dense(units, tanh) -> Dense(1)`) weighs each
    frame; the weights are a softmax over the clip's real frames. Input
    (batch, frames, channels); output (batch, 2 * channels).
    """

    def __init__(self, units=128, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        # Lengths carry the padding; a Keras mask from an RNN upstream is accepted and ends here.
        self.supports_masking = True
        self.hidden = keras.layers.Dense(self.units, activation="tanh", name="hidden")
        self.score = keras.layers.Dense(1, name="score")

    def build(self, inputs_shape, lengths_shape=None):
        self.hidden.build(inputs_shape)
        self.score.build(tuple(inputs_shape[:-1]) + (self.units,))

    def call(self, inputs, lengths=None):
        x = ops.cast(inputs, "float32")
        scores = ops.cast(self.score(self.hidden(x))[..., 0], "float32")
        if lengths is not None:
            real = time_mask(lengths, ops.shape(x)[1]) > 0
            scores = ops.where(real, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=1)[..., None]
        mean = ops.sum(weights * x, axis=1)
        variance = ops.sum(weights * x**2, axis=1) - mean**2
        std = ops.sqrt(ops.maximum(variance, 1e-6))
        return ops.cast(ops.concatenate([mean, std], axis=-1), self.compute_dtype)

    def compute_output_shape(self, inputs_shape, lengths_shape=None):
        return (inputs_shape[0], 2 * inputs_shape[-1])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="serkeras")
class LengthMask(keras.layers.Layer):
    """Boolean (batch, frames) mask of real frames, for Keras' own masked layers (RNNs, attention)."""

    def call(self, inputs, lengths):
        return time_mask(lengths, ops.shape(inputs)[1]) > 0

    def compute_output_spec(self, inputs, lengths):
        return keras.KerasTensor(tuple(inputs.shape[:2]), dtype="bool")


@keras.saving.register_keras_serializable(package="serkeras")
class MaskedStatistics(keras.layers.Layer):
    """Mean and standard deviation over time of each channel, real frames only: (batch, 2 * channels)."""

    def call(self, inputs, lengths=None):
        x = ops.cast(inputs, "float32")
        mask = real_frames(x, lengths)
        mean = masked_mean(x, mask, axis=1)
        variance = masked_mean(ops.square(x - mean[:, None, :]), mask, axis=1)
        # The floor keeps the gradient finite for a clip of one frame (zero variance).
        std = ops.sqrt(ops.maximum(variance, 1e-12))
        return ops.cast(ops.concatenate([mean, std], axis=-1), self.compute_dtype)

    def compute_output_shape(self, inputs_shape, lengths_shape=None):
        return (inputs_shape[0], 2 * inputs_shape[-1])


@keras.saving.register_keras_serializable(package="serkeras")
class SinusoidalPositions(keras.layers.Layer):
    """Adds Whisper's fixed sinusoidal position embedding to its (batch, frames, channels) input.

    Computed for each input's length, not stored: the first half of the
    channels is ``sin(t * f)``, the second ``cos(t * f)``, for frequencies
    ``f`` spaced geometrically from 1 down to 1/10000. (Whisper was trained
    on up to 1500 positions, 30 s of audio; longer inputs still work.)
    """

    def call(self, inputs):
        half = inputs.shape[-1] // 2
        rates = np.exp(-np.log(10000.0) / (half - 1) * np.arange(half)).astype("float32")
        angles = ops.arange(ops.shape(inputs)[1], dtype="float32")[:, None] * rates[None, :]
        table = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
        return inputs + ops.cast(table, inputs.dtype)[None]


@keras.saving.register_keras_serializable(package="serkeras")
class WhisperScaling(keras.layers.Layer):
    """Log-mel power in dB -> Whisper's input scale: log10, floored 8 decades below the clip's peak, (x + 4) / 4.

    The peak is taken over each clip's real frames, so padding never moves it.
    """

    def call(self, inputs, lengths=None):
        x = ops.cast(inputs, "float32") / 10.0
        real = real_frames(x, lengths) > 0
        peak = ops.max(ops.where(real, x, ops.full_like(x, -1e9)), axis=(1, 2), keepdims=True)
        return ops.cast((ops.maximum(x, peak - 8.0) + 4.0) / 4.0, self.compute_dtype)

    def compute_output_shape(self, inputs_shape, lengths_shape=None):
        return inputs_shape


@keras.saving.register_keras_serializable(package="serkeras")
class SpeakerStandardization(keras.layers.Layer):
    """Standardises each clip's features by its speaker's mean and variance, shrunk towards the population's.

    Called as ``layer(x, mean, variance, count)``: the statistics of the
    speaker's recordings (``count`` of them, shape (batch, 1)), which one clip
    cannot provide. The mean used is ``(count * mean + k * population_mean) /
    (count + k)`` with ``k = prior_clips``, and likewise the variance, so a
    speaker heard once is standardised mostly with the population's statistics
    and one heard often with their own (``prior_clips=0``: their own only).
    The population statistics (mean of the training speakers' means and of
    their variances) are weights, set after training.
    """

    def __init__(self, prior_clips=0.0, **kwargs):
        super().__init__(**kwargs)
        if prior_clips < 0:
            raise ValueError(f"prior_clips must be >= 0, got {prior_clips}")
        self.prior_clips = float(prior_clips)

    def build(self, inputs_shape, *statistics_shapes):
        dim = inputs_shape[-1]
        self.population_mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False,
                                               name="population_mean")
        self.population_variance = self.add_weight(shape=(dim,), initializer="ones", trainable=False,
                                                   name="population_variance")

    def call(self, inputs, mean, variance, count):
        count = ops.cast(count, inputs.dtype)
        k = ops.cast(self.prior_clips, inputs.dtype)
        shrunk_mean = (count * mean + k * self.population_mean) / (count + k)
        shrunk_variance = (count * variance + k * self.population_variance) / (count + k)
        return (inputs - shrunk_mean) * ops.rsqrt(ops.maximum(shrunk_variance, 1e-6))

    def compute_output_shape(self, inputs_shape, *statistics_shapes):
        return inputs_shape

    def get_config(self):
        return {**super().get_config(), "prior_clips": self.prior_clips}


@keras.saving.register_keras_serializable(package="serkeras")
class WeightedLayerSum(keras.layers.Layer):
    """A learnt softmax-weighted sum of several layers' outputs of the same shape (as SUPERB pools an encoder).

    Input: a list of tensors (batch, frames, channels); output: one such tensor. The
    weights start equal, so training starts from the layers' mean.
    """

    def build(self, inputs_shape):
        self.logits = self.add_weight(shape=(len(inputs_shape),), initializer="zeros", name="logits")

    def call(self, inputs):
        # The softmax written out: Keras' own warns about a softmax over one layer, which is only the identity.
        logits = ops.cast(self.logits, inputs[0].dtype)
        exp = ops.exp(logits - ops.max(logits))
        weights = exp / ops.sum(exp)
        return sum(weights[i] * x for i, x in enumerate(inputs))

    def compute_output_shape(self, inputs_shape):
        return inputs_shape[0]
