"""`resnet`: a residual 1D CNN over log-mel and spectral frames side by side."""

from keras import layers

from serkeras.models.blocks import (classifier, conv_norm_act, finish, frame_inputs, pool_over_time,
                                    residual_block)
from serkeras.models.registry import register


@register("resnet")
def build_resnet(feature_config, model_config, labels, stats=None):
    """Both feature kinds, concatenated per frame -> stem conv -> residual blocks -> pooling -> classifier.

    The blocks keep the full frame rate and widen their view with dilations
    1, 2, 4, 1, 2, 4, ... (a TDNN-like receptive field of about 0.5 s at a
    10 ms hop and four blocks), so no frame is thrown away before pooling.
    Use with `pooling="attention"` for attentive statistics pooling.
    """
    inputs, m, s, lengths = frame_inputs(feature_config, model_config, stats)
    x = layers.Concatenate(name="frames")([m, s])
    filters = model_config.scaled(model_config.filters_residual)
    x = conv_norm_act(x, lengths, filters[0], model_config.kernel_1d, model_config, name="stem")
    for i, n in enumerate(filters):
        x = residual_block(x, lengths, n, 3, 2 ** (i % 3), model_config, name=f"res{i + 1}")
    x = pool_over_time(x, lengths, model_config, name="pool")
    probabilities = classifier(x, len(labels), model_config, normalize=True)
    return finish(inputs, probabilities, labels, feature_config, model_config, name="resnet")
