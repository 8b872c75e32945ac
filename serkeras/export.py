"""Export a serkeras model for serving through Keras' own `Model.export`, and check the export."""

import numpy as np

from serkeras.errors import SerkerasError

FORMATS = ("tf_saved_model", "onnx", "litert")
#: File suffix each format's exporter expects ('' for the SavedModel folder).
SUFFIXES = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite"}


def example_inputs(model, frames=300, batch=2, seed=0):
    """A random batch in the model's input layout: features (batch, frames, n) and, if present, lengths."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in model.inputs:
        if tensor.name == "lengths":
            inputs["lengths"] = np.linspace(frames, frames // 2, batch).astype("int32")
        else:
            steps = tensor.shape[1] or frames
            inputs[tensor.name] = rng.standard_normal((batch, steps, tensor.shape[2])).astype("float32")
    return inputs


def export_model(model, path, export_format="tf_saved_model"):
    """Write `model` to `path` in `export_format` with `keras.Model.export`.

    Raises
    ------
    SerkerasError
        For an unknown format, or when the format's exporter package is not installed.
    """
    if export_format not in FORMATS:
        raise SerkerasError(f"unknown export format {export_format!r}; choose one of {', '.join(FORMATS)}")
    # A model fresh from a .keras file has not been called yet; exporters trace a called one.
    model.predict(example_inputs(model), verbose=0)
    try:
        model.export(str(path), format=export_format, verbose=False)
    except ImportError as exc:
        raise SerkerasError(f"exporting to {export_format} needs a package that is not installed: {exc}") from None
    except ValueError as exc:  # the exporter refused the model or the path
        raise SerkerasError(f"exporting to {export_format} failed: {str(exc).splitlines()[0]}") from None
    return path


def check_export(model, path, export_format="tf_saved_model"):
    """Largest absolute difference between the exported model's and the Keras model's probabilities.

    Returns None when the runtime needed to load the export is not installed
    (`onnx` needs onnxruntime; SavedModel and LiteRT files load with TensorFlow).
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
            return None
        session = onnxruntime.InferenceSession(str(path))
        got = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), ordered)})[0]
    else:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow's own (deprecated) copy of the same interpreter
            import warnings

            import tensorflow as tf

            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            Interpreter = tf.lite.Interpreter
        interpreter = Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner()
        got = next(iter(runner(**{t.name: inputs[t.name] for t in model.inputs}).values()))
    return float(np.max(np.abs(np.asarray(got) - expected)))
