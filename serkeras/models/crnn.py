"""`crnn`: a convolutional front end on log-mel, then a bidirectional GRU over time."""

from keras import layers

from serkeras.models.blocks import (classifier, conv_block, finish, frame_inputs, frames_of,
                                    pool_over_time)
from serkeras.models.cnn2d import logmel_image
from serkeras.models.layers import LengthMask
from serkeras.models.registry import register


@register("crnn")
def build_crnn(feature_config, model_config, labels, stats=None):
    """Conv2D blocks (`filters_front`) -> frames, with the spectral features at the same rate -> BiGRU -> pooling.

    Each front-end block halves time and frequency; the spectral features are
    averaged over the same number of frames, so frame `t` of both describes
    the same stretch of audio. The GRU reads real frames only (Keras masking).
    """
    inputs, m, s, lengths = frame_inputs(feature_config, model_config, stats)
    x, pooled = logmel_image(m, feature_config.n_mels), lengths
    filters = model_config.scaled(model_config.filters_front)
    for i, n in enumerate(filters):
        x, pooled = conv_block(x, pooled, n, model_config.kernel_2d, model_config, name=f"front_block{i + 1}")
    # 'valid' average pooling by 2**blocks gives floor(length / 2**blocks) frames, as the blocks do.
    s = layers.AveragePooling1D(2 ** len(filters), padding="valid", name="spectral_pool")(s)
    x = layers.Concatenate(name="frames")([frames_of(x, "front_frames"), s])
    mask = None if pooled is None else LengthMask(name="frame_mask")(x, pooled)
    x = layers.Bidirectional(layers.GRU(model_config.rnn_units, return_sequences=True), name="bigru")(x, mask=mask)
    x = pool_over_time(x, pooled, model_config, name="pool")
    probabilities = classifier(x, len(labels), model_config, normalize=True)
    return finish(inputs, probabilities, labels, feature_config, model_config, name="crnn")
