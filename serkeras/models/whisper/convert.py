"""Whisper encoder checkpoints in their published formats, read into one layout.

Three formats hold Whisper's weights:

- a CTranslate2 folder (faster-whisper's: ``model.bin``, float32, float16 or int8),
- a Hugging Face folder (``config.json`` and ``model.safetensors``, or shards listed
  in ``model.safetensors.index.json``), read with the ``safetensors`` package,
- OpenAI's original ``.pt`` checkpoint (needs PyTorch).

`read_checkpoint` recognises the format and returns the encoder's sizes and its
weights under one set of names (`EncoderWeights`), which
`serkeras.models.whisper.set_encoder_weights` copies onto the Keras layers. Every
size works (tiny to large-v3): dimensions, heads, layers and mel bands are read from
the checkpoint. The decoder is never read.
"""

import dataclasses
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np

from serkeras.errors import SerkerasError

#: CTranslate2's type ids (``DataType`` in its ``types.h``) of the dtypes a Whisper model.bin holds.
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
FORMATS = ("ctranslate2", "huggingface", "openai")


@dataclasses.dataclass(frozen=True)
class EncoderSizes:
    """What the encoder's graph needs: mel bands, width, attention heads, layers."""

    n_mels: int
    dim: int
    heads: int
    n_layers: int


@dataclasses.dataclass
class EncoderWeights:
    """A Whisper encoder's sizes and float32 weights in serkeras' layout.

    Names (matrices as ``(out, in)``, convolutions as ``(out, in, kernel)``):
    ``conv{1,2}/{weight,bias}``; for each layer ``i``:
    ``layer{i}/{query,key,value,out}/{weight,bias}`` (Whisper's key has no bias:
    zeros), ``layer{i}/{attention_norm,ffn_norm}/{gamma,beta}``,
    ``layer{i}/{ffn_expand,ffn_project}/{weight,bias}``; ``final_norm/{gamma,beta}``.
    """

    sizes: EncoderSizes
    weights: dict
    source: str
    format: str

    def fingerprint(self):
        """sha256 of the weights of the whole encoder (for cache keys): the same for a checkpoint in any format."""
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(self.sizes), sort_keys=True).encode())
        for name in sorted(self.weights):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.weights[name], np.float32).tobytes())
        return digest.hexdigest()


def checkpoint_format(path):
    """'ctranslate2', 'huggingface' or 'openai' for the checkpoint at `path`; a one-line error otherwise."""
    path = Path(path)
    if not path.exists():
        raise SerkerasError(f"Whisper checkpoint {path} does not exist")
    if path.is_file():
        if path.suffix in (".pt", ".pth"):
            return "openai"
        raise SerkerasError(f"{path} is not a Whisper checkpoint: expected an OpenAI .pt file, a faster-whisper "
                            "folder (model.bin) or a Hugging Face folder (config.json + model.safetensors)")
    if (path / "model.bin").is_file():
        return "ctranslate2"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "huggingface"
    raise SerkerasError(f"{path} holds no Whisper checkpoint: expected model.bin (faster-whisper / CTranslate2) "
                        "or config.json with model.safetensors (Hugging Face)")


def read_checkpoint(path):
    """The encoder of the Whisper checkpoint at `path`, in any supported format.

    Parameters
    ----------
    path : str or Path
        A faster-whisper / CTranslate2 folder, a Hugging Face ``openai/whisper-*``
        folder, or an OpenAI ``.pt`` file.

    Returns
    -------
    EncoderWeights

    Raises
    ------
    SerkerasError
        For a missing, truncated, unreadable or incomplete checkpoint, naming what is wrong.
    """
    kind = checkpoint_format(path)
    reader = {"ctranslate2": _read_ctranslate2, "huggingface": _read_huggingface, "openai": _read_openai}[kind]
    try:
        sizes, weights = reader(Path(path))
    except KeyError as exc:
        raise SerkerasError(f"Whisper checkpoint {path} ({kind}) lacks the weight {exc.args[0]}") from None
    _check_complete(sizes, weights, path)
    return EncoderWeights(sizes, weights, str(path), kind)


def _check_complete(sizes, weights, path):
    expected = {"conv1/weight": (sizes.dim, sizes.n_mels, 3), "conv2/weight": (sizes.dim, sizes.dim, 3),
                "final_norm/gamma": (sizes.dim,)}
    for i in range(sizes.n_layers):
        expected |= {f"layer{i}/{p}/weight": (sizes.dim, sizes.dim) for p in ("query", "key", "value", "out")}
        expected |= {f"layer{i}/ffn_expand/weight": (4 * sizes.dim, sizes.dim),
                     f"layer{i}/ffn_project/weight": (sizes.dim, 4 * sizes.dim)}
    for name, shape in expected.items():
        if name not in weights:
            raise SerkerasError(f"Whisper checkpoint {path} lacks the encoder weight {name}")
        if tuple(weights[name].shape) != shape:
            raise SerkerasError(f"Whisper checkpoint {path}: {name} has shape {tuple(weights[name].shape)}, "
                                f"expected {shape}")
    if sizes.dim % sizes.heads:
        raise SerkerasError(f"Whisper checkpoint {path}: width {sizes.dim} does not split into {sizes.heads} heads")


def _layer_count(names, pattern):
    return len({m.group(1) for m in map(re.compile(pattern).match, names) if m})


def _sizes(weights, heads=None, n_layers=None):
    dim, n_mels, _ = weights["conv1/weight"].shape
    n_layers = n_layers if n_layers is not None else _layer_count(weights, r"layer(\d+)/")
    # Every published Whisper has 64-wide heads (tiny 6, base 8, small 12, medium 16, large 20).
    return EncoderSizes(int(n_mels), int(dim), int(heads or dim // 64), int(n_layers))


def _float32(array):
    return np.asarray(array, dtype=np.float32)


# --- CTranslate2 (faster-whisper) ------------------------------------------------------------------------------


def read_ct2_variables(path, prefix="encoder/"):
    """The variables of a CTranslate2 ``model.bin`` whose names start with `prefix`, as numpy arrays.

    Reads binary format versions 5 and 6 (what CTranslate2 4.x writes); a
    truncated or foreign file is a one-line error.
    """
    path = Path(path)
    with open(path, "rb") as f:
        def read(n):
            data = f.read(n)
            if len(data) < n:
                raise SerkerasError(f"{path} is truncated (ends at byte {f.tell()}): download the model again")
            return data

        def unpack(fmt):
            return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

        def string():
            return read(unpack("<H"))[:-1].decode("utf-8", errors="replace")  # the length counts a trailing NUL

        version = unpack("<I")
        if version not in (5, 6):
            raise SerkerasError(f"{path}: CTranslate2 model binary version {version}, expected 5 or 6")
        string(), unpack("<I")  # spec name and revision
        variables = {}
        for _ in range(unpack("<I")):
            name = string()
            shape = [unpack("<I") for _ in range(unpack("<B"))]
            type_id, size = unpack("<B"), unpack("<I")
            if type_id not in CT2_DTYPES:
                raise SerkerasError(f"{path}: variable {name} has unknown CTranslate2 type {type_id}")
            data = read(size)
            if name.startswith(prefix):
                variables[name] = np.frombuffer(data, dtype=CT2_DTYPES[type_id]).reshape(shape)
    return variables


def _dequantized(variables, name):
    """A CTranslate2 weight in float32; int8 weights carry a per-row `weight_scale` (int8 = float x scale)."""
    weight = variables[name]
    scale = variables.get(name + "_scale")
    if weight.dtype == np.int8 and scale is not None:
        return weight.astype(np.float32) / np.asarray(scale, np.float32).reshape(-1, *([1] * (weight.ndim - 1)))
    return _float32(weight)


def _read_ct2(path):
    """`read_ct2_variables` of a folder's model.bin, encoder prefix removed."""
    raw = read_ct2_variables(path / "model.bin")
    return {k.removeprefix("encoder/"): v for k, v in raw.items()}


def _read_ctranslate2(path):
    v = _read_ct2(path)
    if "conv1/weight" not in v:
        raise SerkerasError(f"{path / 'model.bin'} holds no Whisper encoder (no encoder/conv1/weight)")
    w = {f"{c}/{p}": _dequantized(v, f"{c}/{p}") for c in ("conv1", "conv2") for p in ("weight", "bias")}
    w |= {"final_norm/gamma": _float32(v["layer_norm/gamma"]), "final_norm/beta": _float32(v["layer_norm/beta"])}
    n_layers = _layer_count(v, r"layer_(\d+)/")
    for i in range(n_layers):
        p, q = f"layer_{i}/", f"layer{i}/"
        # Query, key and value are one fused (3 * dim, dim) matrix.
        fused, bias = _dequantized(v, p + "self_attention/linear_0/weight"), v[p + "self_attention/linear_0/bias"]
        for part, weight, b in zip(("query", "key", "value"), np.split(fused, 3), np.split(_float32(bias), 3)):
            w[f"{q}{part}/weight"], w[f"{q}{part}/bias"] = weight, b
        w[f"{q}out/weight"] = _dequantized(v, p + "self_attention/linear_1/weight")
        w[f"{q}out/bias"] = _float32(v[p + "self_attention/linear_1/bias"])
        for ours, theirs in (("attention_norm", "self_attention/layer_norm"), ("ffn_norm", "ffn/layer_norm")):
            w[f"{q}{ours}/gamma"], w[f"{q}{ours}/beta"] = (_float32(v[f"{p}{theirs}/{g}"]) for g in ("gamma", "beta"))
        for ours, theirs in (("ffn_expand", "ffn/linear_0"), ("ffn_project", "ffn/linear_1")):
            w[f"{q}{ours}/weight"] = _dequantized(v, f"{p}{theirs}/weight")
            w[f"{q}{ours}/bias"] = _float32(v[f"{p}{theirs}/bias"])
    heads = int(v["num_heads"]) if "num_heads" in v else None
    return _sizes(w, heads, n_layers), w


# --- PyTorch module names (Hugging Face and OpenAI) ------------------------------------------------------------

#: Where each of our names is in a PyTorch state dict's encoder: its layers' prefix, the final norm, and each
#: layer's modules (``<module>.weight`` / ``<module>.bias``; a norm's weight is our gamma, its bias our beta).
HUGGINGFACE_NAMES = {"layers": "layers", "final_norm": "layer_norm", "query": "self_attn.q_proj",
                     "key": "self_attn.k_proj", "value": "self_attn.v_proj", "out": "self_attn.out_proj",
                     "attention_norm": "self_attn_layer_norm", "ffn_norm": "final_layer_norm", "ffn_expand": "fc1",
                     "ffn_project": "fc2"}
OPENAI_NAMES = {"layers": "blocks", "final_norm": "ln_post", "query": "attn.query", "key": "attn.key",
                "value": "attn.value", "out": "attn.out", "attention_norm": "attn_ln", "ffn_norm": "mlp_ln",
                "ffn_expand": "mlp.0", "ffn_project": "mlp.2"}


def _from_module_names(v, names):
    """Encoder tensors `v` (PyTorch names, without the encoder's prefix) in our layout; returns (weights, layers)."""
    def norm(module):
        return v[f"{module}.weight"], v[f"{module}.bias"]

    w = {f"{c}/{p}": v[f"{c}.{p}"] for c in ("conv1", "conv2") for p in ("weight", "bias")}
    w["final_norm/gamma"], w["final_norm/beta"] = norm(names["final_norm"])
    n_layers = _layer_count(v, re.escape(names["layers"]) + r"\.(\d+)\.")
    for i in range(n_layers):
        p, q = f"{names['layers']}.{i}.", f"layer{i}/"
        for ours in ("query", "key", "value", "out", "ffn_expand", "ffn_project"):
            weight = w[f"{q}{ours}/weight"] = v[f"{p}{names[ours]}.weight"]
            # Whisper's key projection has no bias.
            w[f"{q}{ours}/bias"] = v.get(f"{p}{names[ours]}.bias", np.zeros(len(weight), np.float32))
        for ours in ("attention_norm", "ffn_norm"):
            w[f"{q}{ours}/gamma"], w[f"{q}{ours}/beta"] = norm(p + names[ours])
    return w, n_layers


# --- Hugging Face (transformers' WhisperModel / WhisperForConditionalGeneration) ------------------------------


def _safetensors_files(path):
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    return sorted(path.glob("*.safetensors"))


def _load_safetensors(file):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys() if ".encoder." in f".{k}"}
    except SafetensorError as exc:
        raise SerkerasError(f"{file} is not a readable safetensors file ({exc})") from None
    except TypeError as exc:  # bfloat16 has no numpy dtype
        raise SerkerasError(f"{file}: {exc}; convert it to float16 or float32 first") from None


def _read_huggingface(path):
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise SerkerasError(f"{path / 'config.json'} is not valid JSON ({exc})") from None
    tensors = {}
    for file in _safetensors_files(path):
        if not file.is_file():
            raise SerkerasError(f"{file} is missing (listed in model.safetensors.index.json)")
        tensors |= _load_safetensors(file)
    # WhisperForConditionalGeneration prefixes "model."; WhisperModel does not.
    v = {re.sub(r"^(model\.)?encoder\.", "", k): _float32(t) for k, t in tensors.items()}
    if "conv1.weight" not in v:
        raise SerkerasError(f"{path} holds no Whisper encoder (no encoder.conv1.weight)")
    w, n_layers = _from_module_names(v, HUGGINGFACE_NAMES)
    sizes = _sizes(w, config.get("encoder_attention_heads"), n_layers)
    if config.get("num_mel_bins", sizes.n_mels) != sizes.n_mels:
        raise SerkerasError(f"{path}: config.json says {config['num_mel_bins']} mel bands, the weights "
                            f"{sizes.n_mels}")
    return sizes, w


# --- OpenAI's original .pt ---------------------------------------------------------------------------------------


def _read_openai(path):
    try:
        import torch
    except ImportError:
        raise SerkerasError(f"reading {path} (an OpenAI .pt checkpoint) needs PyTorch: pip install torch") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a truncated or foreign file
        raise SerkerasError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise SerkerasError(f"{path} is not an OpenAI Whisper checkpoint (no model_state_dict)")
    dims = checkpoint.get("dims", {})
    v = {k.removeprefix("encoder."): _float32(t.float().numpy())
         for k, t in checkpoint["model_state_dict"].items() if k.startswith("encoder.")}
    if "conv1.weight" not in v:
        raise SerkerasError(f"{path} holds no Whisper encoder (no encoder.conv1.weight)")
    w, n_layers = _from_module_names(v, OPENAI_NAMES)
    return _sizes(w, dims.get("n_audio_head"), n_layers), w
