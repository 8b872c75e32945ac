"""Whisper's audio encoder as a Keras backbone, length-aware, and the copying of checkpoint weights onto it.

The encoder is Whisper's (Radford et al., 2022): two GELU convolutions, the second
halving time, fixed sinusoidal positions, then pre-norm transformer layers. Unlike
the reference implementations it runs at each clip's own length (no padding to
30 s): padded frames are zeroed before each convolution and masked out of
attention, so a clip gives the same output alone or padded in a batch.
"""

import keras
import numpy as np
from keras import layers

from serkeras.errors import SerkerasError
from serkeras.models.layers import LengthMask, PooledLengths, SinusoidalPositions, TimeMask, WhisperScaling, gelu
from serkeras.models.saving import graph_layers
from serkeras.models.whisper.convert import read_checkpoint

#: The paths of the variables of the encoder's transformer layers (``layer0_attention/query/kernel``, ...), the
#: ones that fine-tuning trains (`freeze_lower_layers` keeps the convolutions frozen): a pattern for Keras'
#: `OptimizerMap`, which gives them a learning rate of their own.
ENCODER_VARIABLES = r"layer\d+_[a-z_]+/.+"


def encoder_layer(x, mask, dim, heads, name, reuse=None):
    """Pre-norm self-attention and GELU feed-forward (4 x `dim`), each residual; LayerNorm epsilon as Whisper's.

    `reuse` ({name: layer}) applies the existing layers of that name instead of new ones, with their weights.
    """
    def layer(make, suffix):
        return reuse[f"{name}_{suffix}"] if reuse is not None else make(name=f"{name}_{suffix}")

    y = layer(lambda **kw: layers.LayerNormalization(epsilon=1e-5, **kw), "attention_norm")(x)
    y = layer(lambda **kw: layers.MultiHeadAttention(heads, dim // heads, **kw), "attention")(
        y, y, query_mask=mask, value_mask=mask)
    x = layer(layers.Add, "attention_add")([x, y])
    y = layer(lambda **kw: layers.LayerNormalization(epsilon=1e-5, **kw), "ffn_norm")(x)
    y = layer(lambda **kw: layers.Dense(4 * dim, activation=gelu, **kw), "ffn_expand")(y)
    y = layer(lambda **kw: layers.Dense(dim, **kw), "ffn_project")(y)
    return layer(layers.Add, "ffn_add")([x, y])


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


def whisper_backbone(n_mels=80, dim=512, heads=8, n_layers=6, name="whisper_encoder"):
    """The first `n_layers` layers of Whisper's audio encoder, as a functional model (the backbone).

    Inputs: ``logmel`` (batch, frames, n_mels), a log-mel spectrogram in dB as
    `serkeras.features.extract_features` computes it with Whisper's settings
    (see `serkeras.models.whisper.whisper_feature_config`; rescaled to Whisper's
    range inside), and ``lengths`` (batch,), each clip's real frames. Outputs:
    each layer's frames (batch, ceil(frames / 2), dim), then the halved lengths.

    A plain functional model, so that its layers' own settings (frozen or not,
    int8 or float) travel with it in a ``.keras`` file. Build it empty from sizes
    and fill it with `set_encoder_weights`, or from a checkpoint with
    `load_whisper_backbone`.

    Examples
    --------
    >>> backbone = load_whisper_backbone("faster-whisper-base", n_layers=2)  # doctest: +SKIP
    >>> *frames, lengths = backbone([logmel, lengths])  # doctest: +SKIP
    """
    logmel = keras.Input(shape=(None, n_mels), name="logmel")
    lengths = keras.Input(shape=(), dtype="int32", name="lengths")
    x = WhisperScaling(name="whisper_scaling")(logmel, lengths)
    outputs, pooled_lengths = whisper_encoder(x, lengths, n_layers, dim, heads)
    return keras.Model(inputs=[logmel, lengths], outputs=[*outputs, pooled_lengths], name=name)


def load_whisper_backbone(path, n_layers=None, name="whisper_encoder"):
    """`whisper_backbone` holding the Whisper checkpoint `path` (any format of `read_checkpoint`), its first
    `n_layers` layers (default: all)."""
    checkpoint = read_checkpoint(path)
    sizes = checkpoint.sizes
    n_layers = sizes.n_layers if n_layers is None else n_layers
    if not 1 <= n_layers <= sizes.n_layers:
        raise SerkerasError(f"the encoder in {path} has {sizes.n_layers} layers; cannot keep {n_layers}")
    backbone = whisper_backbone(sizes.n_mels, sizes.dim, sizes.heads, n_layers, name=name)
    set_encoder_weights(backbone, checkpoint.weights)
    return backbone


def backbone_layers(backbone):
    """How many transformer layers `backbone` (a `whisper_backbone`) keeps."""
    return len(backbone.outputs) - 1


def freeze_lower_layers(backbone, trainable_layers):
    """Freeze `backbone`'s convolutions and all but its top `trainable_layers` transformer layers.

    0 freezes the whole encoder (a frozen feature extractor); all of its layers
    trains every transformer layer (the convolutions stay frozen).
    """
    n_layers = backbone_layers(backbone)
    if not 0 <= trainable_layers <= n_layers:
        raise SerkerasError(f"cannot fine-tune {trainable_layers} layers of an encoder that keeps {n_layers}")
    first_trained = n_layers - trainable_layers
    for layer in backbone.layers:
        index = _layer_index(layer.name)
        layer.trainable = index is not None and index >= first_trained


def set_encoder_weights(model, weights):
    """Copy encoder `weights` (the layout of `serkeras.models.whisper.convert.EncoderWeights`) onto `model`.

    `model` holds the layers of `whisper_encoder` (``conv1``, ``conv2``,
    ``layer{i}_*``), itself or in a nested model such as `whisper_backbone`;
    every encoder layer it has is filled, and ``final_norm`` if present.
    """
    found = layers_by_name(model)
    for conv in ("conv1", "conv2"):  # checkpoints store (out, in, kernel); Keras wants (kernel, in, out)
        found[conv].set_weights([weights[f"{conv}/weight"].transpose(2, 1, 0), weights[f"{conv}/bias"]])
    i = 0
    while f"layer{i}_attention" in found:
        p = f"layer{i}/"
        attention = found[f"layer{i}_attention"]
        heads, head_dim = attention.num_heads, attention.key_dim
        dim = heads * head_dim
        arrays = []
        for part in ("query", "key", "value"):
            arrays += [weights[p + part + "/weight"].T.reshape(dim, heads, head_dim),
                       weights[p + part + "/bias"].reshape(heads, head_dim)]
        arrays += [weights[p + "out/weight"].T.reshape(heads, head_dim, dim), weights[p + "out/bias"]]
        attention.set_weights(arrays)
        for norm in ("attention_norm", "ffn_norm"):
            found[f"layer{i}_{norm}"].set_weights([weights[f"{p}{norm}/gamma"], weights[f"{p}{norm}/beta"]])
        for dense in ("ffn_expand", "ffn_project"):
            found[f"layer{i}_{dense}"].set_weights([weights[f"{p}{dense}/weight"].T, weights[f"{p}{dense}/bias"]])
        i += 1
    if "final_norm" in found:
        found["final_norm"].set_weights([weights["final_norm/gamma"], weights["final_norm/beta"]])


def layers_by_name(model):
    """Every layer of `model` and of the models nested in it, by name."""
    return {layer.name: layer for layer in graph_layers(model)}


def _layer_index(name):
    """i for a layer named ``layer{i}_...``, else None."""
    if not name.startswith("layer"):
        return None
    digits = name[5:].split("_", 1)[0]
    return int(digits) if digits.isdigit() else None


def encoder_parameters(encoder):
    """(trainable, frozen) parameter counts of `encoder`."""
    trainable = int(sum(np.prod(w.shape) for w in encoder.trainable_weights))
    return trainable, int(encoder.count_params()) - trainable
