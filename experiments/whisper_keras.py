"""Whisper's pre-trained encoder weights, read from a CTranslate2 model folder into serkeras' Keras port.

The graph is ``serkeras.models.whisper.whisper_encoder`` (plain ``keras.layers``,
every backend); this module only reads CTranslate2's ``model.bin`` (the format
of faster-whisper's folders) and copies its encoder variables onto the layers
of that graph by name. ``pretrained_probe.py embed --engine keras`` uses it to
get the output of every layer (CTranslate2 returns only the last one), and
``pretrained_probe.py ship`` to fill the shipped model's encoder.
"""

import re
import struct
from pathlib import Path

import keras
import numpy as np

#: CTranslate2's type ids (``DataType`` in its ``types.h``) of the dtypes a Whisper model.bin holds.
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2_variables(path, prefix="encoder/"):
    """The variables of a CTranslate2 ``model.bin`` whose names start with `prefix`, as numpy arrays.

    Parameters
    ----------
    path : str or Path
        A ``model.bin`` (binary format version 5 or 6, as CTranslate2 4.x writes).
    prefix : str
        Keep variables whose name starts with this (the decoder is not needed).

    Returns
    -------
    dict of str to numpy.ndarray
    """
    with open(path, "rb") as f:
        def unpack(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string():
            return f.read(unpack("<H"))[:-1].decode("utf-8")  # the length counts a trailing NUL

        version = unpack("<I")
        if version not in (5, 6):
            raise ValueError(f"{path}: CTranslate2 model binary version {version}, expected 5 or 6")
        string(), unpack("<I")  # spec name and revision
        variables = {}
        for _ in range(unpack("<I")):
            name = string()
            shape = [unpack("<I") for _ in range(unpack("<B"))]
            dtype, size = CT2_DTYPES[unpack("<B")], unpack("<I")
            data = f.read(size)
            if name.startswith(prefix):
                variables[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return variables


def encoder_sizes(model_dir):
    """(float32 encoder variables without their "encoder/" prefix, n_mels, dim, heads, layers) of a Whisper folder."""
    variables = {k.removeprefix("encoder/"): w.astype("float32")
                 for k, w in read_ct2_variables(Path(model_dir) / "model.bin").items()}
    dim, n_mels, _ = variables["conv1/weight"].shape
    n_layers = len({k.split("/")[0] for k in variables if re.match(r"layer_\d+/", k)})
    heads = int(variables["num_heads"]) if "num_heads" in variables else dim // 64
    return variables, n_mels, dim, heads, n_layers


def set_whisper_weights(model, variables):
    """Copy Whisper's encoder `variables` (CTranslate2 names) onto the layers of `model` that hold them.

    Layers named as in ``serkeras.models.whisper``: ``conv1``, ``conv2``,
    ``layer{i}_*`` for each encoder layer in `model`, and ``final_norm`` if present.
    """
    names = {layer.name for layer in model.layers}
    dim = variables["conv1/weight"].shape[0]
    for conv in ("conv1", "conv2"):  # CTranslate2 stores (out, in, kernel); Keras wants (kernel, in, out)
        model.get_layer(conv).set_weights([variables[f"{conv}/weight"].transpose(2, 1, 0), variables[f"{conv}/bias"]])
    i = 0
    while f"layer{i}_attention" in names:
        p = f"layer_{i}/"
        attention = model.get_layer(f"layer{i}_attention")
        heads, head_dim = attention.num_heads, attention.key_dim
        # Query, key and value are one fused (3 * dim, dim) matrix; Whisper's key has no bias (zeros here).
        weights = []
        for w, b in zip(np.split(variables[p + "self_attention/linear_0/weight"], 3),
                        np.split(variables[p + "self_attention/linear_0/bias"], 3)):
            weights += [w.T.reshape(dim, heads, head_dim), b.reshape(heads, head_dim)]
        weights += [variables[p + "self_attention/linear_1/weight"].T.reshape(heads, head_dim, dim),
                    variables[p + "self_attention/linear_1/bias"]]
        attention.set_weights(weights)
        for keras_name, ct2_name in (("attention_norm", "self_attention/layer_norm"), ("ffn_norm", "ffn/layer_norm")):
            model.get_layer(f"layer{i}_{keras_name}").set_weights([variables[p + ct2_name + "/gamma"],
                                                                   variables[p + ct2_name + "/beta"]])
        for keras_name, ct2_name in (("ffn_expand", "ffn/linear_0"), ("ffn_project", "ffn/linear_1")):
            model.get_layer(f"layer{i}_{keras_name}").set_weights([variables[p + ct2_name + "/weight"].T,
                                                                   variables[p + ct2_name + "/bias"]])
        i += 1
    if "final_norm" in names:
        model.get_layer("final_norm").set_weights([variables["layer_norm/gamma"], variables["layer_norm/beta"]])


def load_whisper_encoder(model_dir):
    """The whole encoder of the CTranslate2 Whisper folder `model_dir` as a Keras model (float32).

    Input: log-mel frames (batch, frames, n_mels) in Whisper's scale (see
    ``pretrained_probe.whisper_log_mel``). Outputs: every layer's frames, the
    last one after Whisper's final layer normalisation (what its decoder reads).
    """
    from serkeras.models.whisper import whisper_encoder

    variables, n_mels, dim, heads, n_layers = encoder_sizes(model_dir)
    mel = keras.Input((None, n_mels), name="log_mel")
    outputs, _ = whisper_encoder(mel, None, n_layers, dim, heads)
    outputs[-1] = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(outputs[-1])
    model = keras.Model(mel, outputs, name="whisper_encoder")
    set_whisper_weights(model, variables)
    return model
