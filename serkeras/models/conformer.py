"""`conformer`: a small Conformer-style encoder (self-attention + convolution) over subsampled frames."""

from keras import layers

from serkeras.models.blocks import classifier, conv_block, finish, frame_inputs, pool_over_time
from serkeras.models.layers import LengthMask, TimeMask
from serkeras.models.registry import register


def encoder_layer(x, lengths, mask, config, name):
    """Pre-norm self-attention, depthwise-convolution and feed-forward modules, each residual.

    The convolution module gives the encoder its sense of order, so no
    positional embedding is needed and any clip length works.
    """
    dim = x.shape[-1]
    y = layers.LayerNormalization(name=f"{name}_attention_norm")(x)
    y = layers.MultiHeadAttention(config.attention_heads, max(1, dim // config.attention_heads),
                                  dropout=config.dropout / 2, name=f"{name}_attention")(
        y, y, query_mask=mask, value_mask=mask)
    x = layers.Add(name=f"{name}_attention_add")([x, layers.Dropout(config.dropout, name=f"{name}_attention_dropout")(y)])
    y = layers.LayerNormalization(name=f"{name}_conv_norm")(x)
    if lengths is not None:
        y = TimeMask(name=f"{name}_conv_mask")(y, lengths)
    y = layers.DepthwiseConv1D(7, padding="same", name=f"{name}_depthwise")(y)
    y = layers.Activation(config.activation, name=f"{name}_conv_act")(y)
    y = layers.Dense(dim, name=f"{name}_pointwise")(y)
    x = layers.Add(name=f"{name}_conv_add")([x, layers.Dropout(config.dropout, name=f"{name}_conv_dropout")(y)])
    y = layers.LayerNormalization(name=f"{name}_ff_norm")(x)
    y = layers.Dense(2 * dim, activation=config.activation, name=f"{name}_ff_expand")(y)
    y = layers.Dense(dim, name=f"{name}_ff_project")(y)
    return layers.Add(name=f"{name}_ff_add")([x, layers.Dropout(config.dropout, name=f"{name}_ff_dropout")(y)])


@register("conformer")
def build_conformer(feature_config, model_config, labels, stats=None):
    """Both feature kinds per frame -> Conv1D blocks (`filters_front`, each halving time) -> encoder layers -> pooling."""
    inputs, m, s, lengths = frame_inputs(feature_config, model_config, stats)
    x, pooled = layers.Concatenate(name="frames")([m, s]), lengths
    for i, n in enumerate(model_config.scaled(model_config.filters_front)):
        x, pooled = conv_block(x, pooled, n, model_config.kernel_1d, model_config, name=f"front_block{i + 1}")
    mask = None if pooled is None else LengthMask(name="frame_mask")(x, pooled)
    for i in range(model_config.encoder_layers):
        x = encoder_layer(x, pooled, mask, model_config, name=f"encoder{i + 1}")
    x = pool_over_time(layers.LayerNormalization(name="encoder_norm")(x), pooled, model_config, name="pool")
    probabilities = classifier(x, len(labels), model_config)
    return finish(inputs, probabilities, labels, feature_config, model_config, name="conformer")
