"""Building blocks shared by every architecture: inputs, conv blocks, heads, metadata."""

import keras
import numpy as np
from keras import layers

from serkeras.models.layers import (MaskedGlobalAveragePooling, MaskedGroupNormalization, PooledLengths,
                                    SerkerasMetadata, SpecAugment, TimeMask)


def feature_input(kind, n_features, feature_config, model_config, stats=None):
    """An `Input` for one feature kind, standardised with training statistics.

    With `model_config.spec_augment`, training-only masking follows (frequency
    masks on log-mel only: spectral columns are different descriptors).

    Returns the Input and the standardised tensor (batch, frames, n_features).
    Frames are `None` in variable mode and fixed otherwise.
    """
    frames = feature_config.fixed_frames if feature_config.length_mode == "fixed" else None
    inputs = keras.Input(shape=(frames, n_features), name=kind)
    if stats is not None:
        mean, variance = stats.mean[kind], stats.variance[kind]
    else:
        mean, variance = np.zeros(n_features), np.ones(n_features)
    x = layers.Normalization(mean=np.asarray(mean).tolist(), variance=np.asarray(variance).tolist(),
                             name=f"{kind}_standardize")(inputs)
    if model_config.spec_augment:
        x = SpecAugment(freq_masks=2 if kind == "logmel" else 0, name=f"{kind}_spec_augment")(x)
    return inputs, x


def lengths_input(feature_config):
    """The per-clip frame counts, present only in variable-length mode."""
    if feature_config.length_mode == "fixed":
        return None
    return keras.Input(shape=(), dtype="int32", name="lengths")


def conv_block(x, lengths, filters, kernel_size, config, name):
    """Conv -> GroupNorm -> activation -> MaxPool -> Dropout, length-aware.

    Works for 1D (batch, time, channels) and 2D (batch, time, freq, channels)
    input; returns the block output and the lengths after pooling.
    """
    two_d = len(x.shape) == 4
    if lengths is not None:
        x = TimeMask(name=f"{name}_mask")(x, lengths)
    conv = layers.Conv2D if two_d else layers.Conv1D
    pool = layers.MaxPool2D if two_d else layers.MaxPool1D
    x = conv(filters, kernel_size, padding="same", name=f"{name}_conv")(x)
    x = MaskedGroupNormalization(np.gcd(config.groups, filters), name=f"{name}_norm")(x, lengths)
    x = layers.Activation(config.activation, name=f"{name}_act")(x)
    # 'valid' pooling: an output frame mixes real frames only, up to floor(length / 2).
    x = pool(2, padding="valid", name=f"{name}_pool")(x)
    if lengths is not None:
        lengths = PooledLengths(2, name=f"{name}_lengths")(lengths)
    x = layers.Dropout(config.dropout, name=f"{name}_dropout")(x)
    return x, lengths


def pooled_path(x, lengths, filters, kernel_size, config, prefix):
    """A stack of conv blocks followed by length-aware global average pooling."""
    for i, n in enumerate(filters):
        x, lengths = conv_block(x, lengths, n, kernel_size, config, name=f"{prefix}_block{i + 1}")
    return MaskedGlobalAveragePooling(name=f"{prefix}_pool")(x, lengths)


def classifier(x, n_classes, config, normalize=False, name="head"):
    """Dense -> [LayerNorm] -> activation -> Dropout -> softmax (kept in float32)."""
    x = layers.Dense(config.head_units, name=f"{name}_dense")(x)
    if normalize:
        x = layers.LayerNormalization(name=f"{name}_norm")(x)
    x = layers.Activation(config.activation, name=f"{name}_act")(x)
    x = layers.Dropout(config.dropout, name=f"{name}_dropout")(x)
    return layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def finish(inputs, probabilities, labels, feature_config, model_config, name):
    """Attach the metadata layer and return the functional model."""
    from serkeras import __version__

    outputs = SerkerasMetadata(labels=labels, feature_config=feature_config.to_dict(),
                               model_config=model_config.to_dict(), version=__version__,
                               name="serkeras_metadata", dtype="float32")(probabilities)
    return keras.Model(inputs=[i for i in inputs if i is not None], outputs=outputs, name=name)
