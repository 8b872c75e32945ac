"""Predicting from an ONNX export of a serkeras model with ONNX Runtime, without TensorFlow or Keras.

`serkeras export MODEL --format onnx` writes the model's labels, feature settings
and model settings into the ONNX file's metadata. `load_onnx_model` reads them
back, so that `serkeras predict --model model.onnx` (and
`serkeras.inference.predict_files`) compute the same features, batch them as
`serkeras.pipeline.make_dataset` does for evaluation and run the graph in ONNX
Runtime: nothing imports TensorFlow, which takes seconds to start, and ONNX
Runtime runs the Whisper models' graph faster than TensorFlow on CPUs.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from serkeras.errors import ModelFileError
from serkeras.features import FeatureConfig, eval_order, fit_to_length, padded_length

#: The ONNX metadata keys `serkeras.export` writes: what `load_onnx_model` needs besides the graph.
METADATA_KEYS = {"labels": "serkeras.labels", "feature_config": "serkeras.feature_config",
                 "model_config": "serkeras.model_config", "version": "serkeras.version"}
#: The SHA-256 of the `.keras` file an export was made from (absent when it was not made from a file).
SOURCE_KEY = "serkeras.source_sha256"


@dataclasses.dataclass(frozen=True)
class OnnxMetadata:
    """What `serkeras.models.ModelMetadata` holds, read from an ONNX file (the model settings as a dict, since
    `serkeras.models.ModelConfig` lives with the Keras models)."""

    labels: tuple
    feature_config: FeatureConfig
    model_config: dict
    version: str
    source_sha256: str = ""

    @property
    def normalises_by_speaker(self):
        return self.feature_config.speaker_norm

    @property
    def standardises_embedding(self):
        """Whether the model standardises its embedding by speaker (never for a file `load_onnx_model` opens:
        exports of such models are refused)."""
        return bool(self.model_config.get("speaker_standardization"))


def metadata_entries(metadata, source=None):
    """ONNX metadata entries (key -> text) for a model's `serkeras.models.ModelMetadata`, and the SHA-256 of
    the `.keras` file `source` it was exported from, if given."""
    entries = {METADATA_KEYS["labels"]: json.dumps(list(metadata.labels)),
               METADATA_KEYS["feature_config"]: json.dumps(metadata.feature_config.to_dict()),
               METADATA_KEYS["model_config"]: json.dumps(metadata.model_config.to_dict()),
               METADATA_KEYS["version"]: str(metadata.version)}
    if source is not None:
        entries[SOURCE_KEY] = file_sha256(source)
    return entries


def file_sha256(path):
    """The SHA-256 of a file, as hexadecimal text."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxModel:
    """An ONNX Runtime session over a serkeras model's graph, predicting class probabilities from features."""

    def __init__(self, session, metadata):
        self.session = session
        self.metadata = metadata
        self.input_names = tuple(i.name for i in session.get_inputs())

    def predict(self, feature_list, batch_size=32):
        """Class probabilities for each clip's features, in the order of `feature_list`.

        Batches as `serkeras.pipeline.make_dataset` forms them for evaluation: clips in
        length order, zero-padded to the batch's longest rounded up to a multiple of 16
        frames (fixed-length models: each clip cropped or padded to the model's length).
        """
        config = self.metadata.feature_config
        kinds = [name for name in self.input_names if name != "lengths"]
        lengths = np.array([len(f[kinds[0]]) for f in feature_list], dtype=np.int32)
        order = eval_order(lengths)
        out = np.empty((len(feature_list), len(self.metadata.labels)), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            frames = config.fixed_frames if config.length_mode == "fixed" else padded_length(int(lengths[rows].max()))
            clips = [fit_to_length({k: feature_list[i][k] for k in kinds}, frames) for i in rows]
            inputs = {k: np.stack([c[k] for c in clips]).astype(np.float32) for k in kinds}
            if "lengths" in self.input_names:
                inputs["lengths"] = np.minimum(lengths[rows], frames).astype(np.int32)
            out[rows] = self.session.run(None, inputs)[0]
        return out


def load_onnx_model(path):
    """Open an ONNX file written by `serkeras export --format onnx` in ONNX Runtime.

    Returns
    -------
    (OnnxModel, OnnxMetadata)

    Raises
    ------
    ModelFileError
        A missing or unreadable file, onnxruntime not installed, an ONNX file without
        serkeras' metadata, or a model that takes its speakers' statistics as inputs;
        each with a one-line reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        import onnxruntime
    except ImportError:
        raise ModelFileError(f"{path} is an ONNX file: predicting from it needs onnxruntime "
                             "(pip install onnxruntime), or give the .keras file") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimisation notes are not the user's business
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for files it cannot read
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"cannot load {path}: {reason[:300]}") from None
    stored = session.get_modelmeta().custom_metadata_map
    missing = [key for key in METADATA_KEYS.values() if key not in stored]
    if missing:
        raise ModelFileError(f"{path} has no serkeras metadata ({missing[0]}): export it with "
                             "`serkeras export MODEL --format onnx`")
    model_config = json.loads(stored[METADATA_KEYS["model_config"]])
    if model_config.get("speaker_standardization"):
        raise ModelFileError(f"{path} standardises by speaker, which the ONNX path does not do: "
                             "predict with the .keras file")
    metadata = OnnxMetadata(tuple(json.loads(stored[METADATA_KEYS["labels"]])),
                            FeatureConfig.from_dict(json.loads(stored[METADATA_KEYS["feature_config"]])),
                            model_config, stored[METADATA_KEYS["version"]], stored.get(SOURCE_KEY, ""))
    return OnnxModel(session, metadata), metadata
