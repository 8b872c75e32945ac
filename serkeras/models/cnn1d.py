"""`1d`: a 1D CNN over frame-level spectral features (MFCCs, deltas, descriptors)."""

from serkeras.models.blocks import classifier, feature_input, finish, lengths_input, pooled_path
from serkeras.models.registry import register


@register("1d")
def build_cnn1d(feature_config, model_config, labels, stats=None):
    """Three Conv1D blocks (128/256/512 filters by default), pooled, dense classifier."""
    lengths = lengths_input(feature_config)
    spectral, x = feature_input("spectral", feature_config.n_spectral, feature_config, model_config, stats, lengths)
    x = pooled_path(x, lengths, model_config.scaled(model_config.filters_1d), model_config.kernel_1d,
                    model_config, prefix="conv1d")
    probabilities = classifier(x, len(labels), model_config)
    return finish([spectral, lengths], probabilities, labels, feature_config, model_config, name="cnn1d")
