"""Building blocks shared by every architecture: inputs, conv blocks, heads, metadata."""

import keras
import numpy as np
from keras import layers

from serkeras.models.saving import METADATA_LAYER
from serkeras.models.layers import (AttentiveStatisticsPooling, MaskedGlobalAveragePooling,
                                    MaskedGroupNormalization, MaskedStatistics, PooledLengths, SerkerasMetadata, SpeakerStandardization,
                                    SpecAugment, TimeMask, UtteranceNormalization)

#: Inputs of a model whose embedding is standardised by speaker (the statistics of the embeddings of the
#: speaker's recordings, and how many there were), the layer whose output they standardise, and the nested
#: model that does it and classifies.
SPEAKER_INPUTS = ("speaker_mean", "speaker_variance", "speaker_count")
EMBEDDING_LAYER = "pool"
SPEAKER_HEAD = "speaker_head"


def feature_input(kind, n_features, feature_config, model_config, stats=None, lengths=None):
    """An `Input` for one feature kind, standardised with training statistics.

    With `model_config.utterance_norm`, each clip's own mean (and variance)
    is removed next, over its real frames (`lengths`). With
    `model_config.spec_augment`, training-only masking follows (frequency
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
    if model_config.utterance_norm != "none":
        x = UtteranceNormalization(model_config.utterance_norm, name=f"{kind}_utterance_norm")(x, lengths)
    if model_config.spec_augment:
        x = SpecAugment(freq_masks=2 if kind == "logmel" else 0, name=f"{kind}_spec_augment")(x)
    return inputs, x


def lengths_input(feature_config):
    """The per-clip frame counts, present only in variable-length mode."""
    if feature_config.length_mode == "fixed":
        return None
    return keras.Input(shape=(), dtype="int32", name="lengths")


def frame_inputs(feature_config, model_config, stats=None):
    """The inputs of a model that reads both feature kinds frame by frame.

    Returns ([logmel, spectral, lengths] inputs, the standardised log-mel and
    spectral tensors, and the lengths input (None in fixed mode)).
    """
    lengths = lengths_input(feature_config)
    logmel, m = feature_input("logmel", feature_config.n_mels, feature_config, model_config, stats, lengths)
    spectral, s = feature_input("spectral", feature_config.n_spectral, feature_config, model_config, stats, lengths)
    return [logmel, spectral, lengths], m, s, lengths


def conv_norm_act(x, lengths, filters, kernel_size, config, name, dilation=1, activation=True):
    """Conv -> GroupNorm [-> activation], length-aware, 1D or 2D; keeps the time axis."""
    two_d = len(x.shape) == 4
    if lengths is not None:
        x = TimeMask(name=f"{name}_mask")(x, lengths)
    conv = layers.Conv2D if two_d else layers.Conv1D
    x = conv(filters, kernel_size, padding="same", dilation_rate=dilation, name=f"{name}_conv")(x)
    x = MaskedGroupNormalization(np.gcd(config.groups, filters), name=f"{name}_norm")(x, lengths)
    if activation:
        x = layers.Activation(config.activation, name=f"{name}_act")(x)
    return x


def conv_block(x, lengths, filters, kernel_size, config, name):
    """Conv -> GroupNorm -> activation -> MaxPool -> Dropout, length-aware.

    Works for 1D (batch, time, channels) and 2D (batch, time, freq, channels)
    input; returns the block output and the lengths after pooling.
    """
    x = conv_norm_act(x, lengths, filters, kernel_size, config, name)
    pool = layers.MaxPool2D if len(x.shape) == 4 else layers.MaxPool1D
    # 'valid' pooling: an output frame mixes real frames only, up to floor(length / 2).
    x = pool(2, padding="valid", name=f"{name}_pool")(x)
    if lengths is not None:
        lengths = PooledLengths(2, name=f"{name}_lengths")(lengths)
    x = layers.Dropout(config.dropout, name=f"{name}_dropout")(x)
    return x, lengths


def residual_block(x, lengths, filters, kernel_size, dilation, config, name):
    """Two dilated Conv1D-GroupNorm layers with an identity (or 1x1 conv) shortcut; keeps the time axis."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv1D(filters, 1, name=f"{name}_project")(x)
    y = conv_norm_act(x, lengths, filters, kernel_size, config, f"{name}_a", dilation=dilation)
    y = layers.Dropout(config.dropout / 2, name=f"{name}_dropout")(y)
    y = conv_norm_act(y, lengths, filters, kernel_size, config, f"{name}_b", dilation=dilation, activation=False)
    x = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation(config.activation, name=f"{name}_act")(x)


def pooled_path(x, lengths, filters, kernel_size, config, prefix):
    """A stack of conv blocks followed by length-aware pooling over time."""
    for i, n in enumerate(filters):
        x, lengths = conv_block(x, lengths, n, kernel_size, config, name=f"{prefix}_block{i + 1}")
    return pool_over_time(x, lengths, config, name=f"{prefix}_pool")


def frames_of(x, name):
    """(batch, time, freq, channels) -> (batch, time, freq * channels); 3D input passes through."""
    if len(x.shape) == 3:
        return x
    return layers.Reshape((-1, x.shape[2] * x.shape[3]), name=name)(x)


def pool_over_time(x, lengths, config, name):
    """One vector per clip: `config.pooling` over real frames ("average", "stats": mean and standard deviation,
    or "attention": attentive statistics)."""
    if config.pooling == "attention":
        return AttentiveStatisticsPooling(config.attention_units, name=name)(frames_of(x, f"{name}_frames"), lengths)
    if config.pooling == "stats":
        return MaskedStatistics(name=name)(frames_of(x, f"{name}_frames"), lengths)
    return MaskedGlobalAveragePooling(name=name)(x, lengths)


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

    outputs = SerkerasMetadata(labels=list(labels), feature_config=feature_config.to_dict(),
                               model_config=model_config.to_dict(), version=__version__,
                               name=METADATA_LAYER, dtype="float32")(probabilities)
    return keras.Model(inputs=[i for i in inputs if i is not None], outputs=outputs, name=name)


def speaker_head(dim, n_classes, prior_clips=0.0):
    """[embedding, speaker mean, variance, count] -> class probabilities: `SpeakerStandardization`, then softmax.

    A model of its own, nested in the whole one, so that `speaker_stages` can
    run it alone once every recording of a speaker is embedded. `prior_clips`:
    how many recordings' weight the population's statistics get against the
    speaker's own (see `SpeakerStandardization`).
    """
    embedding = keras.Input(shape=(dim,), name="embedding")
    statistics = speaker_statistics_inputs(dim)
    x = SpeakerStandardization(prior_clips, name="speaker_standardization")(embedding, *statistics)
    probabilities = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model([embedding, *statistics], probabilities, name=SPEAKER_HEAD)


def speaker_statistics_inputs(dim):
    """Inputs for the statistics of a speaker's `dim`-wide embeddings: mean, variance (dim,) and count (1,)."""
    mean, variance, count = SPEAKER_INPUTS
    return [keras.Input(shape=(dim,), name=mean), keras.Input(shape=(dim,), name=variance),
            keras.Input(shape=(1,), name=count)]


def speaker_stages(model):
    """A speaker-standardised `model` in two stages, or None for any other model.

    Returns
    -------
    (embedder, head) : (keras.Model, keras.Model)
        `embedder` maps the model's feature inputs to the embedding of layer
        `EMBEDDING_LAYER`; `head` (`speaker_head`) maps [embedding, speaker mean,
        speaker variance, speaker count] to class probabilities. A speaker's
        statistics are those of the embeddings of their recordings, so every
        recording is embedded first.
    """
    try:
        head = model.get_layer(SPEAKER_HEAD)
    except ValueError:
        return None
    return embedding_model(model), head


def embedding_model(model):
    """`model`'s feature inputs -> the output of its layer `EMBEDDING_LAYER` (the pooled embedding)."""
    features = [t for t in model.inputs if t.name not in SPEAKER_INPUTS]
    return keras.Model(features, model.get_layer(EMBEDDING_LAYER).output)
