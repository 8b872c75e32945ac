"""Export a serkeras model for serving through Keras' own `Model.export`, and check the export."""

import re
import warnings

import keras
import numpy as np

from serkeras.errors import SerkerasError
from serkeras.models.saving import graph_layers

FORMATS = ("tf_saved_model", "onnx", "litert")
#: File suffix each format's exporter expects ('' for the SavedModel folder).
SUFFIXES = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite"}


def example_inputs(model, frames=300, batch=2, seed=0):
    """A random batch in the model's input layout: features (batch, frames, n) and, if present, lengths and a
    speaker's statistics (mean, positive variance, count)."""
    from serkeras.models import SPEAKER_INPUTS

    mean, variance, count = SPEAKER_INPUTS
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in model.inputs:
        if tensor.name == "lengths":
            inputs["lengths"] = np.linspace(frames, frames // 2, batch).astype("int32")
        elif tensor.name == mean:
            inputs[tensor.name] = rng.standard_normal((batch, tensor.shape[1])).astype("float32")
        elif tensor.name == variance:
            inputs[tensor.name] = rng.uniform(0.5, 2.0, (batch, tensor.shape[1])).astype("float32")
        elif tensor.name == count:
            inputs[tensor.name] = np.linspace(1, 2 * batch, batch).astype("float32")[:, None]
        else:
            steps = tensor.shape[1] or frames
            inputs[tensor.name] = rng.standard_normal((batch, steps, tensor.shape[2])).astype("float32")
    return inputs


def embed_normalization_constants(model):
    """Hold each built `Normalization` layer's mean and variance as NumPy arrays, in place.

    A `Normalization` given its statistics keeps them as eager tensors, which a
    traced function captures from outside; tf2onnx turns captured tensors into
    extra graph inputs, so the ONNX file would ask the caller for the
    statistics. NumPy arrays are written into the traced graph as constants
    instead. The layer computes exactly the same thing either way.
    """
    for layer in graph_layers(model):
        if isinstance(layer, keras.layers.Normalization) and layer.built and layer.input_mean is not None:
            layer.mean = keras.ops.convert_to_numpy(layer.mean)
            layer.variance = keras.ops.convert_to_numpy(layer.variance)
    return model


def export_model(model, path, export_format="tf_saved_model"):
    """Write `model` to `path` in `export_format` with `keras.Model.export`.

    For `onnx`, `model` is first changed in place by `embed_normalization_constants`.

    Raises
    ------
    SerkerasError
        For an unknown format, or when the format's exporter package is not installed.
    """
    if export_format not in FORMATS:
        raise SerkerasError(f"unknown export format {export_format!r}; choose one of {', '.join(FORMATS)}")
    if export_format == "litert" and quantized_layers(model):
        raise SerkerasError("LiteRT's converter cannot convert Keras' int8-quantized layers (here: "
                            f"{', '.join(quantized_layers(model)[:3])}...); export to tf_saved_model or onnx")
    if export_format == "onnx":
        embed_normalization_constants(model)
    # A model fresh from a .keras file has not been called yet; exporters trace a called one.
    model.predict(example_inputs(model), verbose=0)
    try:
        with warnings.catch_warnings():
            # Keras' own numpy-2 patch of tf2onnx probes `np.object`, which warns; nothing to act on.
            warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
            model.export(str(path), format=export_format, verbose=False)
    except ImportError as exc:
        raise SerkerasError(f"exporting to {export_format} needs a package that is not installed: {exc}") from None
    except Exception as exc:  # the exporter or its converter refused the model (many types), or the path
        raise SerkerasError(f"exporting to {export_format} failed: {first_error_line(exc)}") from None
    if export_format == "onnx":
        write_onnx_metadata(model, path)
    return path


def write_onnx_metadata(model, path):
    """Store `model`'s labels, feature settings and model settings in the ONNX file at `path`, as
    `serkeras.onnx_runtime.load_onnx_model` reads them (so `serkeras predict --model FILE.onnx` needs
    nothing else)."""
    import onnx

    from serkeras.models import model_metadata
    from serkeras.onnx_runtime import metadata_entries

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        **metadata_entries(model_metadata(model))})
    onnx.save(proto, str(path))


def first_error_line(exc, limit=300):
    """The line of a converter's error that says what went wrong (the first with "error", else the first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    line = next((line for line in lines if "error" in line.lower()), lines[0])
    return line if len(line) <= limit else line[: limit - 3] + "..."


def quantized_layers(model):
    """Names of the layers of `model` that `Model.quantize` changed (int8 and the like)."""
    return [layer.name for layer in graph_layers(model) if getattr(layer, "quantization_mode", None)]


def export_tolerance(model):
    """Largest difference in probabilities that still counts as the same model after export.

    1e-4; 1e-3 for a quantized model, whose activations are rounded to int8 as
    it runs, and each runtime rounds a few of them the other way.
    """
    return 1e-3 if quantized_layers(model) else 1e-4


class UncheckedExport(SerkerasError):
    """The export was written but cannot be run here to check it (the message says why)."""


def check_export(model, path, export_format="tf_saved_model"):
    """Largest absolute difference between the exported model's and the Keras model's probabilities.

    Raises
    ------
    UncheckedExport
        When the export cannot be run here: `onnx` without onnxruntime, or a LiteRT
        file with TensorFlow ("Flex") ops, such as the loops of recurrent layers,
        which the LiteRT interpreters in pip lack. SavedModels always load with TensorFlow.
    """
    inputs = example_inputs(model)
    expected = model.predict(inputs, verbose=0)
    ordered = [inputs[t.name] for t in model.inputs]
    if export_format == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # keep a reference: its variables die with it
        got = loaded.serve(ordered)
    elif export_format == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise UncheckedExport("onnxruntime is not installed") from None
        try:
            session = onnxruntime.InferenceSession(str(path))
        except Exception as exc:  # onnxruntime raises its own types for graphs it cannot run
            raise SerkerasError(f"onnxruntime cannot run the ONNX export at {path}: {first_error_line(exc)}") from None
        expected_names = [t.name for t in model.inputs]
        names = [i.name for i in session.get_inputs()]
        if names != expected_names:
            raise SerkerasError(f"the ONNX export at {path} asks for inputs {names}, the model for {expected_names}")
        got = session.run(None, dict(zip(names, ordered)))[0]
    else:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow's own (deprecated) copy of the same interpreter
            import tensorflow as tf

            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            Interpreter = tf.lite.Interpreter
        interpreter = Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner()
        try:
            got = next(iter(runner(**{t.name: inputs[t.name] for t in model.inputs}).values()))
        except RuntimeError as exc:
            if "Flex" not in str(exc):
                raise
            ops = sorted(set(re.findall(r"Flex\w+", str(exc))))
            raise UncheckedExport(f"it uses TensorFlow ops ({', '.join(ops)}) that need LiteRT's Flex delegate "
                                  "(select TF ops), which this interpreter lacks; tf_saved_model and onnx "
                                  "exports run without it") from None
    return float(np.max(np.abs(np.asarray(got) - expected)))
