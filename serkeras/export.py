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


def export_model(model, path, export_format="tf_saved_model", source=None):
    """Write `model` to `path` in `export_format` with `keras.Model.export`.

    For `onnx`, `model` is first changed in place by `embed_normalization_constants`;
    the file's weights are then stored compactly (`compact_onnx_weights`), int8
    layers multiply in integers (`integer_matrix_products`) and its metadata says
    what `serkeras predict` needs (`write_onnx_metadata`).

    Parameters
    ----------
    model : keras.Model
    path : str or Path
    export_format : {"tf_saved_model", "onnx", "litert"}
    source : str or Path, optional
        The `.keras` file `model` was loaded from: an ONNX file records its SHA-256, so a
        shipped model's ONNX copy is only used beside the very file it was exported from.

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
        import onnx

        proto = onnx.load(str(path))
        compact_onnx_weights(proto)
        integer_matrix_products(proto)
        write_onnx_metadata(proto, model, source)
        onnx.save(proto, str(path))
    return path


def write_onnx_metadata(proto, model, source=None):
    """Store `model`'s labels, feature settings and model settings (and the SHA-256 of its `source` file) in
    an ONNX model proto, in place, as `serkeras.onnx_runtime.load_onnx_model` reads them (so
    `serkeras predict --model FILE.onnx` needs nothing else)."""
    import onnx

    from serkeras.models import model_metadata
    from serkeras.onnx_runtime import metadata_entries

    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        **metadata_entries(model_metadata(model), source)})


def compact_onnx_weights(proto, min_size=1024):
    """Store an ONNX graph's float32 weights in fewer bytes where no value changes, in place.

    The exporter writes every weight as float32, also an int8-quantized layer's kernel
    (whole numbers in [-127, 127]) and weights that came from float16 checkpoints (such as
    Whisper's). Each such weight is stored as int8 or float16 and cast back to float32 in
    the graph; ONNX Runtime folds the casts when it loads the file, so the model computes
    exactly what it did (the default model's file: 12.9 MiB instead of 33.7).

    Parameters
    ----------
    proto : onnx.ModelProto
    min_size : int
        Weights with fewer values are left as they are.

    Returns
    -------
    int
        How many weights were stored smaller.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph, casts = proto.graph, []
    overridable = {tensor.name for tensor in graph.input}  # a caller may feed these: they stay as they are
    unique = _unique_names(proto)
    for weight in list(graph.initializer):
        if weight.data_type != TensorProto.FLOAT or np.prod(weight.dims) < min_size or weight.name in overridable:
            continue
        values = numpy_helper.to_array(weight)
        if np.all(np.abs(values) <= 127) and np.array_equal(values, np.round(values)):
            smaller = values.astype(np.int8)
        elif np.array_equal(values.astype(np.float16).astype(np.float32), values):
            smaller = values.astype(np.float16)
        else:
            continue
        stored = unique(f"{weight.name}_stored")
        graph.initializer.remove(weight)
        graph.initializer.append(numpy_helper.from_array(smaller, stored))
        casts.append(helper.make_node("Cast", [stored], [weight.name], to=TensorProto.FLOAT,
                                      name=unique(f"{weight.name}_as_float")))
    for cast in reversed(casts):  # first in the graph: ONNX lists nodes in an order that runs
        graph.node.insert(0, cast)
    return len(casts)


#: Nodes that move values without changing them, followed back from a product's input.
_SHAPE_ONLY = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}


def integer_matrix_products(proto):
    """Run an int8 layer's matrix product on integers in an ONNX graph, in place, with the same result.

    Keras' int8 Dense layers round their inputs to whole numbers in [-127, 127] and
    multiply them by an int8 kernel; the export writes that product as a float32
    MatMul. Where a MatMul's kernel is stored as int8 (`compact_onnx_weights`) and its
    input is such rounded and clipped values, it becomes ONNX's MatMulInteger on
    uint8 inputs (the values plus 128, with zero point 128: ONNX Runtime's fast int8
    kernels take unsigned inputs) and int8 kernels, accumulated in int32 and cast to
    float32. The integer sums are exact; float32 sums of the same products are exact
    while they stay below 2**24, which the default model's do (its probabilities are
    the same, bit for bit, either way), so at most a rare sum changes in its last bits.
    ONNX Runtime computes the products about a third faster on CPUs with int8
    dot-product instructions.

    Parameters
    ----------
    proto : onnx.ModelProto

    Returns
    -------
    int
        How many products were changed.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    weights = {w.name: w for w in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    unique = _unique_names(proto)

    def constant(name):
        if name in weights:
            return numpy_helper.to_array(weights[name])
        node = producer.get(name)
        return numpy_helper.to_array(node.attribute[0].t) if node is not None and node.op_type == "Constant" else None

    def int8_kernel(name):
        node = producer.get(name)
        if (node is not None and node.op_type == "Cast" and node.input[0] in weights
                and weights[node.input[0]].data_type == TensorProto.INT8):
            return node.input[0]
        return None

    def rounded_and_clipped(name):
        node = producer.get(name)
        while node is not None and node.op_type in _SHAPE_ONLY:
            node = producer.get(node.input[0])
        # Any chain of Min and Max with whole-number bounds in [-128, 127], holding at least one of each,
        # keeps whole numbers in that range.
        bounds = {"Max": [], "Min": []}
        while node is not None and node.op_type in bounds and len(node.input) == 2:
            bound = constant(node.input[1])
            if bound is None or bound.size != 1:
                return False
            bounds[node.op_type].append(float(bound.reshape(())))
            node = producer.get(node.input[0])
        every = bounds["Max"] + bounds["Min"]
        return (node is not None and node.op_type == "Round" and bool(bounds["Max"]) and bool(bounds["Min"])
                and all(b == round(b) and -128 <= b <= 127 for b in every))

    changed = 0
    for node in list(graph.node):
        if node.op_type != "MatMul":
            continue
        kernel = int8_kernel(node.input[1])
        if kernel is None or not rounded_and_clipped(node.input[0]):
            continue
        base, values = node.name or node.output[0], node.input[0]
        shift, zero_point, shifted, as_uint8, as_int32 = (unique(f"{base}_{part}") for part in
                                                          ("shift", "zero_point", "shifted", "uint8", "int32"))
        graph.initializer.extend([numpy_helper.from_array(np.array(128, np.float32), shift),
                                  numpy_helper.from_array(np.array(128, np.uint8), zero_point)])
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate([
                helper.make_node("Add", [values, shift], [shifted], name=unique(f"{base}_add_128")),
                helper.make_node("Cast", [shifted], [as_uint8], to=TensorProto.UINT8, name=unique(f"{base}_to_uint8")),
                helper.make_node("MatMulInteger", [as_uint8, kernel, zero_point], [as_int32],
                                 name=unique(f"{base}_integer")),
                helper.make_node("Cast", [as_int32], [node.output[0]], to=TensorProto.FLOAT,
                                 name=unique(f"{base}_to_float"))]):
            graph.node.insert(position + offset, new)
        changed += 1
    # The float32 copies of kernels that only those products read are not needed any more.
    read = _names_read(graph) | {output.name for output in graph.output}
    for node in list(graph.node):
        if node.op_type == "Cast" and int8_kernel(node.output[0]) and node.output[0] not in read:
            graph.node.remove(node)
    return changed


def _unique_names(proto):
    """A function giving names unused in `proto`'s graph (values, nodes, initializers) and by earlier calls."""
    graph = proto.graph
    taken = ({n.name for n in graph.node} | {o for n in graph.node for o in n.output} | _names_read(graph)
             | {t.name for t in graph.initializer} | {t.name for t in (*graph.input, *graph.output)})

    def unique(name):
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            candidate = f"{name}_{number}"
        taken.add(candidate)
        return candidate

    return unique


def _names_read(graph):
    """Every value name a node of `graph` reads, in its subgraphs (If, Loop, Scan bodies) too."""
    from onnx import AttributeProto

    read = set()
    for node in graph.node:
        read.update(node.input)
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                read |= _names_read(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    read |= _names_read(subgraph)
    return read


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
