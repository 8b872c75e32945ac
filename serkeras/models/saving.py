"""Loading `.keras` files safely, with clear errors for files that are not serkeras models."""

import dataclasses
import zipfile
from pathlib import Path

import keras

from serkeras.errors import ModelFileError
from serkeras.features import FeatureConfig
from serkeras.settings import ModelConfig

METADATA_LAYER = "serkeras_metadata"


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    labels: tuple
    feature_config: FeatureConfig
    model_config: ModelConfig
    version: str

    @property
    def normalises_by_speaker(self):
        """Whether the model needs each clip's speaker: its features are normalised by speaker (trained with
        --speaker-norm), or its embedding is standardised by speaker."""
        return self.feature_config.speaker_norm or self.standardises_embedding

    @property
    def standardises_embedding(self):
        """Whether the model standardises its embedding by speaker: it takes each speaker's statistics as inputs."""
        return self.model_config.speaker_standardization


def model_metadata(model):
    """Labels, feature settings and model settings stored in a serkeras model."""
    try:
        layer = model.get_layer(METADATA_LAYER)
    except ValueError:
        raise ModelFileError(f"model {model.name!r} is not a serkeras model (no {METADATA_LAYER} layer)") from None
    return ModelMetadata(tuple(layer.labels), FeatureConfig.from_dict(layer.feature_config),
                         ModelConfig.from_dict(layer.model_config), layer.version)


def load_model(path):
    """Load a serkeras `.keras` file in Keras' safe mode (no arbitrary code).

    Returns
    -------
    (keras.Model, ModelMetadata)

    Raises
    ------
    ModelFileError
        Missing, truncated or foreign files, each with a one-line reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    if path.suffix != ".keras":
        raise ModelFileError(f"model file {path} is not a .keras file")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"model file {path} is corrupt or truncated (not a .keras archive)")
    # The custom layers, and serkeras' losses: a model nested in the file and compiled for training (a
    # speaker-standardised head) is restored with its loss.
    import serkeras.losses  # noqa: F401
    import serkeras.models  # noqa: F401

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for foreign or damaged files.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"cannot load {path}: {reason[:300]}") from None
    return multiply_int8_in_float(model), model_metadata(model)


QUANTIZATIONS = ("none", "int8")


def graph_layers(model):
    """Every layer of `model`'s graph and of the models nested in it (a backbone, ensemble members), in order;
    not the layers that other layers hold inside them."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from graph_layers(layer)


def multiply_int8_in_float(model):
    """Let `model`'s int8 Dense layers multiply their integers in float32; the same products, in place.

    Keras' int8 Dense quantizes its inputs to integers in [-127, 127] and multiplies them by its
    int8 kernel as int8 tensors. On CPUs without fast integer matrix units that product is about
    half as fast as a float32 one (TensorFlow 2.21, 2 AMD EPYC cores), and it is most of a
    Whisper model's work. Here the inputs are still rounded to the same integers, but kept as
    float32, so the product runs as a float32 matrix product of the same integer values (exact
    unless a row's sum exceeds 2**24, and then within float32 rounding) and the outputs are
    rescaled as before. The stored weights and what the model computes are unchanged.
    """
    for layer in graph_layers(model):
        quantizer = getattr(layer, "inputs_quantizer", None)
        if (isinstance(layer, keras.layers.Dense) and getattr(layer, "quantization_mode", None) == "int8"
                and isinstance(quantizer, keras.quantizers.AbsMaxQuantizer) and quantizer.output_dtype == "int8"):
            layer.inputs_quantizer = keras.quantizers.AbsMaxQuantizer(
                axis=quantizer.axis, value_range=quantizer.value_range, epsilon=quantizer.epsilon,
                output_dtype="float32")
    return model


def quantize_dense(model, mode="int8"):
    """Store `model`'s Dense layers' weights as `mode` (Keras' `Model.quantize`), in place; the output layer stays
    float32. The int8 products then run as `multiply_int8_in_float` says.

    Only Dense layers of the model's graphs (its own and its nested models'): Keras 3.15
    cannot reload a `.keras` file whose MultiHeadAttention, or a Dense layer inside another
    layer (such as attentive pooling's), is quantized ("objects could not be loaded").
    """
    import warnings

    if mode == "none":
        return model

    quantized = {id(layer) for layer in graph_layers(model)
                 if isinstance(layer, keras.layers.Dense) and layer.name != "probabilities"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one per layer without weights to quantize
        model.quantize(mode, filters=lambda layer: id(layer) in quantized)
    return multiply_int8_in_float(model)  # for the scores computed before it is saved and reloaded
