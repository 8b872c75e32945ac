"""What a model costs: parameters and floating-point operations per clip.

FLOPs are counted by TensorFlow's graph profiler on the model's forward pass
(a multiply-add counts as two operations), so `flops_per_clip` needs the
TensorFlow backend. The profiler does not look inside loops, so recurrent
layers (GRU, LSTM) are added analytically.
"""

import numpy as np

from serkeras.errors import SerkerasError


def clip_inputs(model, feature_config, seconds):
    """A one-clip input batch in `model`'s layout for a clip of `seconds` (fixed models use their own length)."""
    frames = 1 + int(round(seconds * feature_config.sample_rate)) // feature_config.hop_length
    inputs = {}
    for tensor in model.inputs:
        if tensor.name == "lengths":
            inputs["lengths"] = np.array([frames], "int32")
        elif len(tensor.shape) == 2:  # one vector per clip (a speaker's statistics): any valid value costs the same
            inputs[tensor.name] = np.ones((1, tensor.shape[1]), "float32")
        else:
            inputs[tensor.name] = np.zeros((1, tensor.shape[1] or frames, tensor.shape[2]), "float32")
    return inputs


def flops_per_clip(model, feature_config, seconds=2.5):
    """Forward-pass floating-point operations for one clip of `seconds` (2.5 s: CREMA-D's typical clip).

    Returns
    -------
    int
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SerkerasError("counting FLOPs needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler import model_analyzer, option_builder

    inputs = clip_inputs(model, feature_config, seconds)
    specs = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in inputs.items()}
    forward = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs)
    graph = convert_variables_to_constants_v2(forward).graph
    options = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
    options = options.with_empty_output().build()
    counted = int(model_analyzer.profile(graph=graph, options=options).total_float_ops)
    return counted + recurrent_flops(model, inputs)


def recurrent_flops(model, inputs):
    """Matrix-multiply FLOPs of every GRU / LSTM (bidirectional ones twice) for `inputs`."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            rnns = [layer.forward_layer, layer.backward_layer]
        elif isinstance(layer, (keras.layers.GRU, keras.layers.LSTM)):
            rnns = [layer]
        else:
            continue
        # A layer called with a `mask` lists it after its input.
        sequence = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
        steps = keras.Model(model.inputs, sequence)(inputs).shape[1]
        for rnn in rnns:
            gates = 3 if isinstance(rnn, keras.layers.GRU) else 4
            units, features = rnn.units, sequence.shape[-1]
            total += 2 * gates * (features * units + units * units) * steps
    return total
