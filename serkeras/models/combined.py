"""`combined`: the 1D and 2D paths in parallel on the same frames, fused by a dense head."""

from keras import layers

from serkeras.models.blocks import classifier, feature_input, finish, lengths_input, pooled_path
from serkeras.models.cnn2d import logmel_image
from serkeras.models.registry import register


@register("combined")
def build_combined(feature_config, model_config, labels, stats=None):
    """Concatenate the pooled 1D and 2D paths; dense head with LayerNorm and Dropout."""
    lengths = lengths_input(feature_config)
    spectral, s = feature_input("spectral", feature_config.n_spectral, feature_config, model_config, stats, lengths)
    logmel, m = feature_input("logmel", feature_config.n_mels, feature_config, model_config, stats, lengths)
    s = pooled_path(s, lengths, model_config.scaled(model_config.filters_1d), model_config.kernel_1d,
                    model_config, prefix="conv1d")
    m = pooled_path(logmel_image(m, feature_config.n_mels), lengths, model_config.scaled(model_config.filters_2d),
                    model_config.kernel_2d, model_config, prefix="conv2d")
    x = layers.Concatenate(name="fusion")([s, m])
    probabilities = classifier(x, len(labels), model_config, normalize=True)
    return finish([logmel, spectral, lengths], probabilities, labels, feature_config, model_config, name="combined")
