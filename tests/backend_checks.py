"""Model checks under whichever Keras backend is active (not collected by pytest).

Run as::

    KERAS_BACKEND=jax python tests/backend_checks.py [EXPORT_DIR] [--reload-from OTHER_EXPORT_DIR]
    KERAS_BACKEND=tensorflow python tests/backend_checks.py --reload EXPORT_DIR

For every registered architecture at a tiny width in variable-length mode (and
`whisper` at a tiny size, random weights), and
for `combined` (which holds both the 1D and the 2D path) in fixed mode (1 s), it
builds a model on synthetic features and checks (the newer architectures with
attentive pooling and per-utterance normalisation, so those layers run under
every backend too; their fixed-length graphs are built in tests/test_models.py):

* ``padding``  (variable mode) a clip predicted alone equals the same clip in a
  batch padded to a much longer clip (atol 1e-5);
* ``fit``      compile with Adam + CategoricalCrossentropy, fit one epoch (two
  steps) from ``make_dataset(shuffle=True)``; loss finite; ``evaluate`` runs
  (eagerly under TensorFlow, compiled under JAX, as torch always runs);
* ``save``     save to ``.keras``, reload through ``serkeras.models.load_model``,
  identical predictions (atol 1e-6), labels / feature config / model config
  round-trip through ``model_metadata``.

and, once, ``distribute``: `serkeras.training.run_training` with ``distribute=True`` over two CPU
devices (TensorFlow: two logical devices, MirroredStrategy; JAX: two host devices, DataParallel) on
11 clips in batches of 4 (bucketed, partial batches); the saved model loads with finite weights, and
the same weights predict the same under data parallelism (batches padded for the replicas) as on one
device (atol 1e-5). Under torch, ``--distribute`` is refused with a one-line error.

And, once, ``whisper/variable speaker stages``: a tiny `whisper` that standardises
its embedding by speaker predicts through ``predict_features`` (embeddings, then
its nested head with each speaker's statistics) what the whole model predicts
given those statistics, and the same after a save and reload (atol 1e-5).

One line per check; the exit status is non-zero if any check fails.

The trained 1d/variable model, a fixed synthetic batch and its predictions are
written to EXPORT_DIR (argv[1], else $SERKERAS_EXPORT_DIR, else not written) as
``model.keras``, ``inputs.npz``, ``predictions.npy`` and ``manifest.json``.
``--reload EXPORT_DIR`` loads that model under the current backend, predicts the
same batch and compares (atol 1e-5): the cross-backend round trip. ``--reload-from
OTHER_EXPORT_DIR`` does the same at the end of a full run, for the export that a run
under another backend writes there at the same time (waiting until that run has written
it, or has ended without it): every backend's run saves once and reloads once without a
process of its own for the reload (about 10 CPU seconds each, mostly imports).
"""

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Compile time dominates these tiny models under JAX on CPU: a lower XLA optimisation level
# roughly halves it (speed only; every comparison below is within one run or within 1e-5).
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    # Two host devices for the ``distribute`` check (before JAX sets up its devices).
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
elif os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    # Two logical CPU devices for the ``distribute`` check (before TensorFlow sets up its devices).
    import tensorflow as tf

    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)

# Test the checkout this file lives in, even if another copy of serkeras is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import keras  # noqa: E402

from serkeras.features import FeatureConfig, compute_stats, fit_to_length  # noqa: E402
from serkeras.models import (ARCHITECTURES, ModelConfig, build_model, build_whisper, load_model,  # noqa: E402
                             model_metadata)

LABELS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
ARCHS = tuple(sorted(ARCHITECTURES))
#: Architectures checked per length mode: fixed mode differs from variable only in the input
#: shapes and the missing `lengths` input, so one model holding every block type covers it.
MODE_ARCHS = {"variable": ARCHS, "fixed": ("combined",)}
#: Settings beyond the tiny width, per architecture: every optional layer gets built somewhere.
EXTRA = {"resnet": {"pooling": "attention", "utterance_norm": "mean"},
         "crnn": {"pooling": "attention", "utterance_norm": "meanvar", "rnn_units": 8},
         "conformer": {"encoder_layers": 1, "attention_units": 16},
         "whisper": {"encoder_layers": 1, "encoder_dim": 32, "attention_heads": 2}}
#: 8 clips, batch 4 -> 2 steps. A 40-frame clip among 289-300-frame ones: the masks matter, yet every
#: batch pads to the same 304 frames (a multiple of 16), so training compiles one step per model.
TRAIN_LENGTHS = (40, 300, 291, 297, 289, 300, 294, 290)
EXPORT_LENGTHS = (48, 131, 203)
PAD_ATOL = 1e-5
SAVE_ATOL = 1e-6
RELOAD_ATOL = 1e-5

FAILURES = []


def report(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} [{keras.backend.backend()}] {name}" + (f": {detail}" if detail else ""),
          flush=True)
    if not ok:
        FAILURES.append(name)


def check(name):
    """`check(name)(fn, *args)`: run `fn` -> (ok, detail) and report it; an exception is a failure."""

    def run(fn, *args):
        try:
            ok, detail = fn(*args)
        except Exception as exc:  # a crash is a failed check, not an aborted run
            traceback.print_exc()
            ok, detail = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        report(name, ok, detail)
        return ok

    return run


def synthetic_clip(rng, frames, feature_config):
    """Features of plausible scale: log-mel in dB around -45, spectral columns of mixed scale."""
    logmel = rng.normal(-45.0, 12.0, size=(frames, feature_config.n_mels))
    scale = rng.uniform(0.05, 30.0, size=feature_config.n_spectral)
    spectral = rng.normal(0.0, 1.0, size=(frames, feature_config.n_spectral)) * scale
    return {"logmel": logmel.astype(np.float32), "spectral": spectral.astype(np.float32)}


def input_names(model):
    return [t.name for t in model.inputs]


def batch_inputs(clips, names, frames=None):
    """Zero-pad clips to `frames` (default: the longest) and stack; add `lengths` if the model takes it."""
    frames = frames or max(len(c["logmel"]) for c in clips)
    out = {}
    for name in names:
        if name == "lengths":
            out[name] = np.array([len(c["logmel"]) for c in clips], dtype=np.int32)
        else:
            out[name] = np.stack([np.pad(c[name], [(0, frames - len(c[name])), (0, 0)]) for c in clips])
    return out


def predict(model, inputs):
    return np.asarray(model.predict_on_batch(inputs))


def probe_inputs(names, clips, feature_config):
    """The batch every prediction check uses: the 40-frame clip and the 300-frame clip.

    Variable mode pads them to 337 frames (beyond the longest clip, as make_dataset pads
    to a multiple of 16); fixed mode crops/pads them to the fixed length. One shape per
    mode keeps the number of compilations (JAX, TF retracing) small.
    """
    pair = clips[:2]
    if feature_config.length_mode == "fixed":
        return batch_inputs([fit_to_length(c, feature_config.fixed_frames) for c in pair], names)
    return batch_inputs(pair, names, frames=len(clips[1]["logmel"]) + 37)


def check_padding(model, clips, feature_config):
    names = input_names(model)
    short, long_ = clips[0], clips[1]  # 40 and 300 frames
    alone = predict(model, batch_inputs([short], names))
    batched = predict(model, probe_inputs(names, clips, feature_config))
    reversed_ = predict(model, batch_inputs([long_, short], names, frames=len(long_["logmel"]) + 37))
    diff = max(np.abs(alone[0] - batched[0]).max(), np.abs(alone[0] - reversed_[1]).max(),
               np.abs(batched[1] - reversed_[0]).max())
    sane = np.allclose(batched.sum(axis=-1), 1.0, atol=1e-5)
    return bool(diff <= PAD_ATOL and sane), f"40-frame clip alone vs in a batch padded to 337: max|diff|={diff:.2e}"


class BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def check_fit(model, clips, labels, feature_config):
    from serkeras.pipeline import make_dataset  # imports TensorFlow: not needed by --reload

    names = input_names(model)
    # Under TensorFlow, `fit` and `evaluate` run eagerly here: tracing each architecture's training graph
    # took over half of this run's time, and what it would check is covered elsewhere (every model here is
    # traced by `predict_on_batch` in the padding and save checks; the 1d, combined and whisper models are
    # trained in graph mode by the in-process CLI tests; eager and traced steps give the same losses).
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  run_eagerly=keras.backend.backend() == "tensorflow")
    train = make_dataset(clips, labels, len(LABELS), length_mode=feature_config.length_mode,
                         fixed_frames=feature_config.fixed_frames, batch_size=4, shuffle=True, seed=1,
                         input_names=tuple(names))
    before = [w.copy() for w in model.get_weights()]
    counter = BatchCounter()
    # Count batches with a callback: under TensorFlow, optimizer.iterations also counts the call
    # that finds a dataset of unknown cardinality exhausted (Keras 3.15), so it reads 3 here.
    history = model.fit(train, epochs=1, verbose=0, callbacks=[counter])
    steps = counter.batches
    loss = history.history["loss"][-1]
    changed = any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # One evaluation batch (a single test-step compilation).
    evaluation = make_dataset(clips[:4], labels[:4], len(LABELS), length_mode=feature_config.length_mode,
                              fixed_frames=feature_config.fixed_frames, batch_size=4, shuffle=False,
                              input_names=tuple(names))
    results = model.evaluate(evaluation, verbose=0, return_dict=True)
    ok = (steps == 2 and np.isfinite(loss) and changed and np.isfinite(results["loss"])
          and 0.0 <= results["accuracy"] <= 1.0)
    return ok, (f"{steps} steps, train loss {loss:.4f}, weights changed={changed}, "
                f"eval loss {results['loss']:.4f} acc {results['accuracy']:.3f}")


def check_save(model, clips, feature_config, model_config, directory):
    names = input_names(model)
    inputs = probe_inputs(names, clips, feature_config)
    path = Path(directory) / f"{model_config.arch}_{feature_config.length_mode}.keras"
    model.save(path)
    loaded, metadata = load_model(path)
    diff = np.abs(predict(model, inputs) - predict(loaded, inputs)).max()
    again = model_metadata(loaded)
    problems = []
    if metadata.labels != tuple(LABELS):
        problems.append(f"labels {metadata.labels}")
    if metadata.feature_config != feature_config:
        problems.append(f"feature_config {metadata.feature_config}")
    if metadata.model_config != model_config:
        problems.append(f"model_config {metadata.model_config}")
    if again != metadata:
        problems.append("model_metadata(loaded) differs from load_model's")
    if input_names(loaded) != names:
        problems.append(f"input names {input_names(loaded)} != {names}")
    ok = diff <= SAVE_ATOL and not problems
    return ok, f"reloaded max|diff|={diff:.2e}" + (f"; mismatched {', '.join(problems)}" if problems else "")


def check_speaker_stages(feature_config, clips, directory):
    """A tiny `whisper` that standardises its embedding by speaker: `predict_features` (embed every clip, then the
    nested head with each speaker's statistics) equals the whole model given those statistics, and again after
    a save and reload."""
    from serkeras.evaluation import predict_features  # imports TensorFlow
    from serkeras.speakers import embedding_speaker_stats, speaker_input_arrays
    from serkeras.models import speaker_stages

    model_config = ModelConfig(arch="whisper", speaker_standardization=True, speaker_prior_clips=2.0,
                               **EXTRA["whisper"])
    model = build_whisper(feature_config, model_config, LABELS)
    embedder, head = speaker_stages(model)
    rng = np.random.default_rng(5)
    dim = embedder.output_shape[-1]
    head.get_layer("speaker_standardization").set_weights([rng.normal(size=dim), rng.uniform(0.5, 2.0, dim)])
    clips = clips[:4]
    speakers = ["a", "b", "a", "a"]
    got = predict_features(model, clips, feature_config.length_mode, speakers=speakers)
    names = input_names(model)
    embeddings = np.concatenate([predict(embedder, batch_inputs([c], names[:2])) for c in clips])
    statistics = speaker_input_arrays(speakers, embedding_speaker_stats(embeddings, speakers))
    whole = np.concatenate([predict(model, {**batch_inputs([c], names[:2]),
                                            **{n: s[i:i + 1] for n, s in zip(names[2:], statistics)}})
                            for i, c in enumerate(clips)])
    path = Path(directory) / "whisper_speaker.keras"
    model.save(path)
    reloaded = predict_features(load_model(path)[0], clips, feature_config.length_mode, speakers=speakers)
    diff = max(np.abs(got - whole).max(), np.abs(got - reloaded).max())
    return bool(diff <= PAD_ATOL), f"two stages vs whole model vs reloaded: max|diff|={diff:.2e}"


def check_distribute(feature_config, clips, labels, directory):
    from serkeras.corpus import Clip
    from serkeras.errors import SerkerasError
    from serkeras.pipeline import make_dataset
    from serkeras.training import SplitData, TrainConfig, data_parallel, run_training

    if keras.backend.backend() == "torch":
        try:
            with data_parallel(True):
                pass
        except SerkerasError as exc:
            return "jax and tensorflow" in str(exc), f"refused: {exc}"
        return False, "--distribute was not refused under torch"
    rng = np.random.default_rng(3)
    features = list(clips) + [synthetic_clip(rng, n, feature_config) for n in (296, 292, 299)]  # 11: partial batches
    targets = list(labels) + list(rng.integers(0, len(LABELS), size=3))
    described = [Clip(path=f"clip{i}.wav", label=LABELS[target], speaker=f"s{i % 4}", sex=("female", "male")[i % 2])
                 for i, target in enumerate(targets)]
    parts = {"train": (described, features, targets), "val": (described[:5], features[:5], targets[:5]),
             "test": (described[5:], features[5:], targets[5:])}
    data = SplitData(tuple(LABELS), parts, compute_stats(features))
    model_config = ModelConfig(arch="1d", width=0.125, head_units=32)  # the cheapest to compile: the path is the point
    run_dir = Path(directory) / "distributed"
    metrics = run_training(data, feature_config, model_config, TrainConfig(epochs=1, batch_size=4, distribute=True),
                           run_dir, Path(directory) / "distributed-logs", verbose=0)
    trained, _ = load_model(run_dir / "model.keras")
    finite = all(np.isfinite(w).all() for w in trained.get_weights())
    names = tuple(input_names(trained))
    with data_parallel(True) as replicas:
        distributed = build_model(feature_config, model_config, LABELS, data.stats)
        distributed.set_weights(trained.get_weights())
        padded = make_dataset(features, targets, len(LABELS), batch_size=4, input_names=names, replicas=replicas)
        real = np.concatenate([np.asarray(weights) for _, _, weights in padded]) == 1
        together = distributed.predict(padded, verbose=0)[real]
    alone = trained.predict(make_dataset(features, targets, len(LABELS), batch_size=4, input_names=names), verbose=0)
    diff = np.abs(together - alone).max() if together.shape == alone.shape else np.inf
    scores = [metrics[part]["accuracy"] for part in ("val", "test")]
    ok = replicas == 2 and finite and diff <= PAD_ATOL and all(0.0 <= s <= 1.0 for s in scores)
    return ok, (f"{replicas} replicas, weights finite={finite}, val/test accuracy {scores}; predictions over "
                f"the replicas vs one device: max|diff|={diff:.2e} over {alone.shape}")


def export(model, feature_config, directory):
    """Save the model, a fixed synthetic batch and its predictions for another backend to reload."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    clips = [synthetic_clip(rng, n, feature_config) for n in EXPORT_LENGTHS]
    inputs = batch_inputs(clips, input_names(model))
    predictions = predict(model, inputs)
    model_path = directory / "model.keras"
    model.save(model_path)
    np.savez(directory / "inputs.npz", **inputs)
    np.save(directory / "predictions.npy", predictions)
    manifest = {"backend": keras.backend.backend(), "model": str(model_path.resolve()),
                "inputs": str((directory / "inputs.npz").resolve()),
                "predictions": str((directory / "predictions.npy").resolve())}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return True, f"saved {model_path} and predictions {predictions.shape} for reloading elsewhere"


def reload(directory):
    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    model, metadata = load_model(manifest["model"])
    with np.load(manifest["inputs"]) as data:
        inputs = {k: data[k] for k in data.files}
    expected = np.load(manifest["predictions"])
    got = predict(model, inputs)
    diff = np.abs(got - expected).max() if got.shape == expected.shape else np.inf
    ok = diff <= RELOAD_ATOL and metadata.labels == tuple(LABELS)
    return ok, f"model saved under {manifest['backend']}: max|diff|={diff:.2e} over {expected.shape}"


#: Written into EXPORT_DIR when a run ends, exported or not: a run reloading from it stops waiting.
ENDED = "ended"


def wait_for_export(directory, timeout):
    """Wait until the run exporting to `directory` has written its model (True) or ended without it (False)."""
    directory = Path(directory)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (directory / "manifest.json").is_file():
            return True
        if (directory / ENDED).exists():
            return (directory / "manifest.json").is_file()
        time.sleep(0.5)
    return False


def reload_when_exported(directory, timeout=900):
    if not wait_for_export(directory, timeout):
        return False, (f"no model to reload: the run exporting to {directory} ended without one "
                       f"(or took over {timeout} s)")
    return reload(directory)


def main(argv):
    keras.utils.set_random_seed(0)
    if argv[:1] == ["--reload"]:
        if len(argv) != 2:
            print("usage: backend_checks.py --reload EXPORT_DIR", file=sys.stderr)
            return 2
        check("reload")(reload, argv[1])
        return 1 if FAILURES else 0
    reload_from = None
    if "--reload-from" in argv:
        at = argv.index("--reload-from")
        reload_from, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    export_dir = argv[0] if argv else os.environ.get("SERKERAS_EXPORT_DIR")
    try:
        run_checks(export_dir)
    finally:
        if export_dir:
            Path(export_dir).mkdir(parents=True, exist_ok=True)
            (Path(export_dir) / ENDED).touch()
    if reload_from:
        check("reload")(reload_when_exported, reload_from)
    print(f"{len(FAILURES)} failed" + (f": {', '.join(FAILURES)}" if FAILURES else ""), flush=True)
    return 1 if FAILURES else 0


def run_checks(export_dir):
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}", flush=True)
    labels_rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        for length_mode in ("variable", "fixed"):
            feature_config = FeatureConfig(length_mode=length_mode, fixed_seconds=1.0)
            rng = np.random.default_rng(0)
            clips = [synthetic_clip(rng, n, feature_config) for n in TRAIN_LENGTHS]
            labels = labels_rng.integers(0, len(LABELS), size=len(clips))
            stats = compute_stats(clips)
            for arch in MODE_ARCHS[length_mode]:
                start = time.perf_counter()
                tag = f"{arch}/{length_mode}"
                model_config = ModelConfig(arch=arch, width=0.125, head_units=32, **EXTRA.get(arch, {}))
                try:
                    builder = build_whisper if arch == "whisper" else build_model
                    model = builder(feature_config, model_config, LABELS, stats)
                except Exception as exc:
                    traceback.print_exc()
                    report(f"{tag} build", False, f"{type(exc).__name__}: {exc}")
                    continue
                report(f"{tag} build", True, f"{model.count_params()} parameters, inputs {input_names(model)}")
                if length_mode == "variable":
                    check(f"{tag} padding")(check_padding, model, clips, feature_config)
                check(f"{tag} fit")(check_fit, model, clips, labels, feature_config)
                check(f"{tag} save")(check_save, model, clips, feature_config, model_config, tmp)
                if export_dir and arch == "1d" and length_mode == "variable":
                    check(f"{tag} export")(export, model, feature_config, export_dir)
                print(f"     {tag} took {time.perf_counter() - start:.1f} s", flush=True)
            if length_mode == "variable":
                check("whisper/variable speaker stages")(check_speaker_stages, feature_config, clips, tmp)
                start = time.perf_counter()
                check("distribute")(check_distribute, feature_config, clips, labels, tmp)
                print(f"     distribute took {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
