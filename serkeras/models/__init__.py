"""Model builders (a registry of functional Keras models) and loading of saved models."""

from serkeras.models import cnn1d, cnn2d, combined, conformer, crnn, resnet, whisper  # noqa: F401  (register them)
from serkeras.models.blocks import SPEAKER_INPUTS, speaker_stages
from serkeras.models.layers import SerkerasMetadata
from serkeras.models.registry import ARCHITECTURES, configure, get_builder, register
from serkeras.models.saving import load_model, model_metadata
from serkeras.models.whisper import (build_whisper, embedding_stages, fixed_embedding_stages, frozen_stages,
                                     load_whisper_backbone, whisper_backbone)
from serkeras.settings import ACTIVATIONS, LAYER_POOLINGS, POOLINGS, UTTERANCE_NORMS, ModelConfig


def build_model(feature_config, model_config, labels, stats=None):
    """Build the functional model named by `model_config.arch`.

    Parameters
    ----------
    feature_config : serkeras.features.FeatureConfig
        Feature sizes and length mode (fixed mode gives a fixed time axis and no `lengths` input).
    model_config : ModelConfig
    labels : sequence of str
        Class names, in output order.
    stats : serkeras.features.FeatureStats, optional
        Training-part statistics; stored in the model's standardisation layers.
    """
    return get_builder(model_config.arch)(feature_config, model_config, list(labels), stats)


__all__ = ["ACTIVATIONS", "ARCHITECTURES", "LAYER_POOLINGS", "ModelConfig", "POOLINGS", "SPEAKER_INPUTS",
           "UTTERANCE_NORMS", "SerkerasMetadata", "build_model", "build_whisper", "configure",
           "embedding_stages", "fixed_embedding_stages",
           "frozen_stages", "get_builder",
           "load_model", "load_whisper_backbone", "model_metadata", "register", "speaker_stages", "whisper_backbone"]
