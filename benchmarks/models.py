"""Model size, compute and CPU throughput of the serkeras architectures.

For each architecture ("1d", "2d", "combined") and width it prints

* parameters: ``model.count_params()``;
* MACs per 3-second clip: multiply-accumulates of the Conv1D / Conv2D / Dense
  layers, counted analytically from the built model (fixed mode, 301 frames):
  ``prod(output spatial shape) * prod(kernel shape)`` per layer. Bias adds,
  normalisation, activations, pooling and dropout (a few operations per
  activation) are not counted. FLOPs are about twice the MACs;
* training throughput: samples/s of ``train_on_batch`` (Adam, categorical
  cross-entropy, batch 16) on synthetic 3-s inputs, after warm-up steps;
* inference throughput: samples/s of ``predict_on_batch`` at batch 32.

Throughput uses whichever Keras backend is active (TensorFlow unless
KERAS_BACKEND says otherwise) and fixed-length (3 s) inputs. Example::

    python benchmarks/models.py --width 1.0 0.25 --output benchmarks/results_models.txt
"""

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from serkeras.features import FeatureConfig  # noqa: E402
from serkeras.models import ModelConfig, build_model  # noqa: E402
from serkeras.system import describe_machine, load_average  # noqa: E402

LABELS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
COUNTED = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)


def macs(model):
    """Multiply-accumulates per example of the model's Conv1D/Conv2D/Dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, COUNTED):
            positions = int(np.prod(layer.output.shape[1:-1]))  # output frames (x frequencies); 1 for Dense
            total += positions * int(np.prod(layer.kernel.shape))
    return total


def synthetic_batch(model, feature_config, batch, rng):
    """Plausible-scale features for the model's inputs (log-mel in dB, spectral around 0)."""
    frames = feature_config.fixed_frames
    out = {}
    for tensor in model.inputs:
        width = tensor.shape[-1]
        if tensor.name == "logmel":
            out["logmel"] = rng.normal(-45.0, 12.0, (batch, frames, width)).astype(np.float32)
        else:
            out[tensor.name] = rng.normal(0.0, 1.0, (batch, frames, width)).astype(np.float32)
    return out


def throughput(step, batch, warmup, steps, min_seconds):
    """Samples/s of `step()` after `warmup` calls: at least `steps` calls and `min_seconds`."""
    for _ in range(warmup):
        step()
    done, start = 0, time.perf_counter()
    while done < steps or time.perf_counter() - start < min_seconds:
        step()
        done += 1
    elapsed = time.perf_counter() - start
    return done * batch / elapsed, done, elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, nargs="+", default=[1.0],
                        help="filter-count widths to measure (1.0 = the study's paper sizes); default 1.0")
    parser.add_argument("--arch", nargs="+", default=["1d", "2d", "combined"], help="architectures")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing, allocation)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, at least")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="keep timing steps until this long")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)

    lines = []

    def emit(text=""):
        print(text, flush=True)
        lines.append(text)

    emit("# serkeras model benchmark")
    emit("command: python benchmarks/models.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    for line in describe_machine():
        emit(line)
    emit(f"start: {time.strftime('%Y-%m-%d %H:%M:%S')}, {load_average()}")
    emit("MACs: analytic, Conv1D/Conv2D/Dense only: prod(output spatial shape) * prod(kernel shape) per layer")
    emit(f"inputs: fixed 3 s clips (301 frames, 64 mels, 65 spectral features), synthetic; "
         f"train batch {args.train_batch} (Adam, categorical cross-entropy, train_on_batch), "
         f"inference batch {args.infer_batch} (predict_on_batch); {args.warmup} warm-up steps, "
         f">= {args.steps} timed steps and >= {args.min_seconds:g} s")
    emit()
    header = f"{'arch':<9} {'width':>5} {'params':>11} {'MMACs/clip':>11} {'train samples/s':>16} {'infer samples/s':>16}"
    emit(header)
    emit("-" * len(header))
    feature_config = FeatureConfig(length_mode="fixed", fixed_seconds=3.0)
    rng = np.random.default_rng(0)
    details = []
    for width in args.width:
        for arch in args.arch:
            keras.utils.clear_session()
            keras.utils.set_random_seed(0)
            model = build_model(feature_config, ModelConfig(arch=arch, width=width), LABELS)
            params, mac = model.count_params(), macs(model)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy())
            x_train = synthetic_batch(model, feature_config, args.train_batch, rng)
            y_train = np.eye(len(LABELS), dtype=np.float32)[rng.integers(0, len(LABELS), args.train_batch)]
            train, train_steps, train_s = throughput(lambda: model.train_on_batch(x_train, y_train),
                                                     args.train_batch, args.warmup, args.steps, args.min_seconds)
            x_infer = synthetic_batch(model, feature_config, args.infer_batch, rng)
            infer, infer_steps, infer_s = throughput(lambda: model.predict_on_batch(x_infer),
                                                     args.infer_batch, args.warmup, args.steps, args.min_seconds)
            emit(f"{arch:<9} {width:>5g} {params:>11,} {mac / 1e6:>11,.1f} {train:>16.1f} {infer:>16.1f}")
            details.append(f"  {arch} width {width:g}: {train_steps} train steps in {train_s:.2f} s, "
                           f"{infer_steps} inference batches in {infer_s:.2f} s")
    emit()
    emit("timed steps:")
    for line in details:
        emit(line)
    emit(f"end: {time.strftime('%Y-%m-%d %H:%M:%S')}, {load_average()}")
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
