"""`2d`: a 2D CNN over log-mel spectrograms (the study's best model)."""

from keras import layers

from serkeras.models.blocks import classifier, feature_input, finish, lengths_input, pooled_path
from serkeras.models.registry import register


def logmel_image(x, n_mels):
    """(batch, frames, mels) -> (batch, frames, mels, 1) for Conv2D."""
    return layers.Reshape((-1, n_mels, 1), name="logmel_image")(x)


@register("2d")
def build_cnn2d(feature_config, model_config, labels, stats=None):
    """Four Conv2D blocks (32/64/512/1024 filters by default), pooled, dense classifier."""
    lengths = lengths_input(feature_config)
    logmel, x = feature_input("logmel", feature_config.n_mels, feature_config, model_config, stats, lengths)
    x = pooled_path(logmel_image(x, feature_config.n_mels), lengths, model_config.scaled(model_config.filters_2d),
                    model_config.kernel_2d, model_config, prefix="conv2d")
    probabilities = classifier(x, len(labels), model_config)
    return finish([logmel, lengths], probabilities, labels, feature_config, model_config, name="cnn2d")
