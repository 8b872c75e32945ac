"""`whisper`: the first layers of Whisper's audio encoder, pooled, and a linear classifier.

The encoder is Whisper's (Radford et al., 2022): two GELU convolutions, the second
halving time, fixed sinusoidal positions, then pre-norm transformer layers. It
is only useful with Whisper's pre-trained weights, which serkeras does not
ship as a dependency: ``experiments/pretrained_probe.py ship`` loads them, keeps
the layers that carry emotion best, fits the classifier on pooled outputs and
saves a self-contained ``.keras`` file. Length-aware throughout: padded frames
are zeroed before each convolution and masked out of attention and pooling.
"""

import keras
from keras import layers

from serkeras.models.blocks import EMBEDDING_LAYER, finish, lengths_input, speaker_head, speaker_statistics_inputs
from serkeras.models.layers import (LengthMask, MaskedStatistics, PooledLengths, SinusoidalPositions, TimeMask,
                                    WhisperScaling, gelu)


def encoder_layer(x, mask, dim, heads, name):
    """Pre-norm self-attention and GELU feed-forward (4 x `dim`), each residual; LayerNorm epsilon as Whisper's."""
    y = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_attention_norm")(x)
    y = layers.MultiHeadAttention(heads, dim // heads, name=f"{name}_attention")(y, y, query_mask=mask, value_mask=mask)
    x = layers.Add(name=f"{name}_attention_add")([x, y])
    y = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ffn_norm")(x)
    y = layers.Dense(4 * dim, activation=gelu, name=f"{name}_ffn_expand")(y)
    y = layers.Dense(dim, name=f"{name}_ffn_project")(y)
    return layers.Add(name=f"{name}_ffn_add")([x, y])


def whisper_encoder(x, lengths, n_layers, dim, heads):
    """Whisper's encoder on log-mel frames already in Whisper's scale, up to layer `n_layers`.

    Returns the output of every layer (a list) and the frame counts after the
    second convolution halves time (None when `lengths` is None).
    """
    for i, stride in enumerate((1, 2), start=1):
        if lengths is not None:
            x = TimeMask(name=f"conv{i}_mask")(x, lengths)
        # One frame of zeros each side, as Whisper pads; "same" would pad only the end at stride 2.
        x = layers.ZeroPadding1D(1, name=f"conv{i}_pad")(x)
        x = layers.Conv1D(dim, 3, strides=stride, activation=gelu, name=f"conv{i}")(x)
    if lengths is not None:
        lengths = PooledLengths(2, ceil=True, name="conv2_lengths")(lengths)
    x = SinusoidalPositions(name="positions")(x)
    mask = None if lengths is None else LengthMask(name="frame_mask")(x, lengths)
    outputs = []
    for i in range(n_layers):
        x = encoder_layer(x, mask, dim, heads, name=f"layer{i}")
        outputs.append(x)
    return outputs, lengths


def build_whisper(feature_config, model_config, labels, stats=None):
    """Whisper encoder layers (`encoder_layers`, `encoder_dim`, `attention_heads`) -> mean and std over time -> softmax.

    `feature_config` must describe Whisper's log-mel (80 bands from 0 to 8 kHz,
    25 ms windows every 10 ms, no peak normalisation); `stats` is not used:
    Whisper's own scaling replaces the corpus standardisation. With
    `model_config.speaker_standardization`, the pooled statistics are
    standardised by the speaker's and classified in a nested model (see
    `serkeras.models.blocks.speaker_head`).
    """
    frames = feature_config.fixed_frames if feature_config.length_mode == "fixed" else None
    lengths = lengths_input(feature_config)
    logmel = keras.Input(shape=(frames, feature_config.n_mels), name="logmel")
    x = WhisperScaling(name="whisper_scaling")(logmel, lengths)
    outputs, pooled_lengths = whisper_encoder(x, lengths, model_config.encoder_layers, model_config.encoder_dim,
                                              model_config.attention_heads)
    x = MaskedStatistics(name=EMBEDDING_LAYER)(outputs[-1], pooled_lengths)
    speaker = []
    if model_config.speaker_standardization:
        speaker = speaker_statistics_inputs(x.shape[-1])
        probabilities = speaker_head(x.shape[-1], len(labels), model_config.speaker_prior_clips)([x, *speaker])
    else:
        probabilities = layers.Dense(len(labels), activation="softmax", dtype="float32", name="probabilities")(x)
    return finish([logmel, lengths, *speaker], probabilities, labels, feature_config, model_config, name="whisper")
