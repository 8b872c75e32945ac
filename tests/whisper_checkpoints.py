"""Tiny random Whisper encoders written in each published checkpoint format, and Whisper's encoder in plain
numpy as the reference the Keras port is checked against. Shared by the tests (never real weights)."""

import json
import struct
from math import erf
from pathlib import Path

import numpy as np


def random_encoder_weights(rng, n_mels, dim, n_layers):
    """Random float32 weights in serkeras' layout (`serkeras.models.whisper.convert.EncoderWeights`)."""
    def normal(scale, *shape):
        return rng.normal(0, scale, shape).astype(np.float32)

    w = {"conv1/weight": normal(0.3, dim, n_mels, 3), "conv1/bias": normal(0.1, dim),
         "conv2/weight": normal(0.15, dim, dim, 3), "conv2/bias": normal(0.1, dim),
         "final_norm/gamma": 1 + normal(0.1, dim), "final_norm/beta": normal(0.1, dim)}
    for i in range(n_layers):
        p = f"layer{i}/"
        for part in ("query", "key", "value", "out"):
            w[p + part + "/weight"], w[p + part + "/bias"] = normal(0.25, dim, dim), normal(0.1, dim)
        w[p + "key/bias"] = np.zeros(dim, np.float32)  # Whisper's key projection has no bias
        w |= {p + "ffn_expand/weight": normal(0.25, 4 * dim, dim), p + "ffn_expand/bias": normal(0.1, 4 * dim),
              p + "ffn_project/weight": normal(0.1, dim, 4 * dim), p + "ffn_project/bias": normal(0.1, dim)}
        for norm in ("attention_norm", "ffn_norm"):
            w[p + norm + "/gamma"], w[p + norm + "/beta"] = 1 + normal(0.1, dim), normal(0.1, dim)
    return w


def n_layers_of(w):
    return sum(k.endswith("ffn_expand/bias") for k in w)


def _positions(frames, dim):
    """Whisper's sinusoidal position table (its `sinusoids`), which checkpoints store beside the weights."""
    increment = np.log(10000) / (dim // 2 - 1)
    scaled = np.arange(frames)[:, None] * np.exp(-increment * np.arange(dim // 2))[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def write_ctranslate2(folder, w, heads, quantize_ffn=False):
    """A faster-whisper folder: model.bin (CTranslate2 binary version 6) with the encoder and one decoder variable.

    With `quantize_ffn`, feed-forward weights are stored as int8 with per-row scales, as CTranslate2's
    int8 quantization writes them.
    """
    dim = w["conv1/weight"].shape[0]
    v = {"encoder/conv1/weight": w["conv1/weight"], "encoder/conv1/bias": w["conv1/bias"],
         "encoder/conv2/weight": w["conv2/weight"], "encoder/conv2/bias": w["conv2/bias"],
         "encoder/position_encodings/encodings": _positions(1500, dim), "encoder/num_heads": np.int16(heads),
         "encoder/layer_norm/gamma": w["final_norm/gamma"], "encoder/layer_norm/beta": w["final_norm/beta"],
         "decoder/embeddings/weight": np.ones((5, dim), np.float32)}
    for i in range(n_layers_of(w)):
        p, q = f"encoder/layer_{i}/", f"layer{i}/"
        v[p + "self_attention/linear_0/weight"] = np.concatenate([w[q + s + "/weight"] for s in ("query", "key", "value")])
        v[p + "self_attention/linear_0/bias"] = np.concatenate([w[q + s + "/bias"] for s in ("query", "key", "value")])
        v[p + "self_attention/linear_1/weight"], v[p + "self_attention/linear_1/bias"] = w[q + "out/weight"], w[q + "out/bias"]
        for ours, theirs in (("attention_norm", "self_attention/layer_norm"), ("ffn_norm", "ffn/layer_norm")):
            v[p + theirs + "/gamma"], v[p + theirs + "/beta"] = w[q + ours + "/gamma"], w[q + ours + "/beta"]
        for ours, theirs in (("ffn_expand", "ffn/linear_0"), ("ffn_project", "ffn/linear_1")):
            weight = w[q + ours + "/weight"]
            if quantize_ffn:
                scale = 127.0 / np.abs(weight).max(axis=1)
                v[p + theirs + "/weight"] = np.round(weight * scale[:, None]).astype(np.int8)
                v[p + theirs + "/weight_scale"] = scale.astype(np.float32)
            else:
                v[p + theirs + "/weight"] = weight
            v[p + theirs + "/bias"] = w[q + ours + "/bias"]
    Path(folder).mkdir(parents=True, exist_ok=True)
    Path(folder, "model.bin").write_bytes(_ct2_binary(v))
    return Path(folder)


def _ct2_binary(variables):
    types = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2}

    def string(s):
        data = s.encode() + b"\0"
        return struct.pack("<H", len(data)) + data

    out = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, value in variables.items():
        value = np.asarray(value)
        out += string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape)
        out += struct.pack("<B", types[value.dtype]) + struct.pack("<I", value.nbytes) + value.tobytes()
    return out + struct.pack("<I", 0)  # no aliases


def write_huggingface(folder, w, heads):
    """A Hugging Face WhisperForConditionalGeneration folder: config.json and model.safetensors."""
    from safetensors.numpy import save_file

    dim, n_mels, _ = w["conv1/weight"].shape
    t = {"model.encoder.conv1.weight": w["conv1/weight"], "model.encoder.conv1.bias": w["conv1/bias"],
         "model.encoder.conv2.weight": w["conv2/weight"], "model.encoder.conv2.bias": w["conv2/bias"],
         "model.encoder.embed_positions.weight": _positions(1500, dim),
         "model.encoder.layer_norm.weight": w["final_norm/gamma"], "model.encoder.layer_norm.bias": w["final_norm/beta"],
         "model.decoder.embed_tokens.weight": np.ones((5, dim), np.float32)}
    for i in range(n_layers_of(w)):
        p, q = f"model.encoder.layers.{i}.", f"layer{i}/"
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "out_proj")):
            t[f"{p}self_attn.{theirs}.weight"] = w[q + ours + "/weight"]
            if ours != "key":
                t[f"{p}self_attn.{theirs}.bias"] = w[q + ours + "/bias"]
        for ours, theirs in (("attention_norm", "self_attn_layer_norm"), ("ffn_norm", "final_layer_norm")):
            t[f"{p}{theirs}.weight"], t[f"{p}{theirs}.bias"] = w[q + ours + "/gamma"], w[q + ours + "/beta"]
        for ours, theirs in (("ffn_expand", "fc1"), ("ffn_project", "fc2")):
            t[f"{p}{theirs}.weight"], t[f"{p}{theirs}.bias"] = w[q + ours + "/weight"], w[q + ours + "/bias"]
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(Path(folder, "model.safetensors")))
    Path(folder, "config.json").write_text(json.dumps({
        "model_type": "whisper", "d_model": int(dim), "encoder_layers": n_layers_of(w),
        "encoder_attention_heads": heads, "num_mel_bins": int(n_mels)}))
    return Path(folder)


def write_openai(path, w, heads):
    """OpenAI's .pt checkpoint: {"dims": ..., "model_state_dict": ...}, as `whisper.load_model` reads it."""
    import torch

    dim, n_mels, _ = w["conv1/weight"].shape
    t = {"encoder.conv1.weight": w["conv1/weight"], "encoder.conv1.bias": w["conv1/bias"],
         "encoder.conv2.weight": w["conv2/weight"], "encoder.conv2.bias": w["conv2/bias"],
         "encoder.positional_embedding": _positions(1500, dim),
         "encoder.ln_post.weight": w["final_norm/gamma"], "encoder.ln_post.bias": w["final_norm/beta"],
         "decoder.token_embedding.weight": np.ones((5, dim), np.float32)}
    for i in range(n_layers_of(w)):
        p, q = f"encoder.blocks.{i}.", f"layer{i}/"
        for part in ("query", "key", "value", "out"):
            t[f"{p}attn.{part}.weight"] = w[q + part + "/weight"]
            if part != "key":
                t[f"{p}attn.{part}.bias"] = w[q + part + "/bias"]
        for ours, theirs in (("attention_norm", "attn_ln"), ("ffn_norm", "mlp_ln")):
            t[f"{p}{theirs}.weight"], t[f"{p}{theirs}.bias"] = w[q + ours + "/gamma"], w[q + ours + "/beta"]
        for ours, theirs in (("ffn_expand", "mlp.0"), ("ffn_project", "mlp.2")):
            t[f"{p}{theirs}.weight"], t[f"{p}{theirs}.bias"] = w[q + ours + "/weight"], w[q + ours + "/bias"]
    dims = {"n_mels": int(n_mels), "n_audio_ctx": 1500, "n_audio_state": int(dim), "n_audio_head": heads,
            "n_audio_layer": n_layers_of(w), "n_vocab": 5, "n_text_ctx": 448, "n_text_state": int(dim),
            "n_text_head": heads, "n_text_layer": 1}
    torch.save({"dims": dims, "model_state_dict": {k: torch.from_numpy(np.array(v)) for k, v in t.items()}}, path)
    return Path(path)


def numpy_whisper_encoder(mel, w, heads, n_layers=None):
    """Whisper's encoder written out from its definition (float64): every layer's output, the last one also
    after the final LayerNorm. `mel` (time, n_mels) is already in Whisper's scale."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    gelu = np.vectorize(lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))))

    def conv(x, weight, b, stride):  # x (time, in), weight (out, in, 3), padding 1 each side
        x = np.pad(x, ((1, 1), (0, 0)))
        return np.stack([np.einsum("ki,oik->o", x[t:t + 3], weight) + b for t in range(0, len(x) - 2, stride)])

    def norm(x, p):
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w[p + "/gamma"] + w[p + "/beta"]

    x = gelu(conv(mel, w["conv1/weight"], w["conv1/bias"], 1))
    x = gelu(conv(x, w["conv2/weight"], w["conv2/bias"], 2))
    dim = x.shape[1]
    x = x + _positions(len(x), dim)
    outputs = []
    for i in range(n_layers or n_layers_of(w)):
        p = f"layer{i}/"
        y = norm(x, p + "attention_norm")
        q, k, v = (y @ w[p + s + "/weight"].T + w[p + s + "/bias"] for s in ("query", "key", "value"))
        heads_out = []
        for h in np.split(np.arange(dim), heads):
            scores = q[:, h] @ k[:, h].T / np.sqrt(len(h))
            weights = np.exp(scores - scores.max(1, keepdims=True))
            heads_out.append(weights / weights.sum(1, keepdims=True) @ v[:, h])
        x = x + np.concatenate(heads_out, 1) @ w[p + "out/weight"].T + w[p + "out/bias"]
        y = gelu(norm(x, p + "ffn_norm") @ w[p + "ffn_expand/weight"].T + w[p + "ffn_expand/bias"])
        x = x + y @ w[p + "ffn_project/weight"].T + w[p + "ffn_project/bias"]
        outputs.append(x)
    return outputs, norm(x, "final_norm")
