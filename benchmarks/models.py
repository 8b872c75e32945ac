"""Model size, compute and CPU throughput of the serkeras architectures.

For each architecture (every registered one by default) and width it prints

* parameters: ``model.count_params()``;
* FLOPs per 3-second clip of the forward pass, from
  ``serkeras.models.cost.flops_per_clip`` (TensorFlow's graph profiler, plus
  recurrent layers analytically; a multiply-add is two FLOPs), the same count
  as in ``experiments/results/accuracy.md``;
* training throughput: samples/s of ``train_on_batch`` (Adam, categorical
  cross-entropy, batch 16) on synthetic 3-s inputs, after warm-up steps;
* inference throughput: samples/s of ``predict_on_batch`` at batch 32.

Throughput uses whichever Keras backend is active (TensorFlow unless
KERAS_BACKEND says otherwise; FLOPs then read "n/a") and fixed-length (3 s)
inputs. The features default to the study's (10 ms hop, 64 mels); the
settings of the ``experiments/accuracy.py`` recipes are one option away. Examples::

    python benchmarks/models.py --width 1.0 0.25 --arch 1d 2d combined
    python benchmarks/models.py --width 0.5 --arch resnet crnn conformer \\
        --hop-length 320 --n-mels 40 --pitch --pooling attention --utterance-norm mean
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
from serkeras.models import ARCHITECTURES, POOLINGS, UTTERANCE_NORMS, ModelConfig, build_model  # noqa: E402
from serkeras.models.cost import flops_per_clip  # noqa: E402
from serkeras.system import describe_machine, load_average  # noqa: E402

LABELS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def flops(model, feature_config):
    """FLOPs per clip, or None where the backend cannot count them."""
    if keras.backend.backend() != "tensorflow":
        return None
    return flops_per_clip(model, feature_config, feature_config.fixed_seconds)


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
    parser.add_argument("--arch", nargs="+", default=sorted(ARCHITECTURES), choices=sorted(ARCHITECTURES),
                        help="architectures (default: all)")
    parser.add_argument("--hop-length", type=int, default=FeatureConfig.hop_length, help="samples between frames")
    parser.add_argument("--n-mels", type=int, default=FeatureConfig.n_mels)
    parser.add_argument("--pitch", action="store_true", help="log F0 features as well")
    parser.add_argument("--pooling", choices=POOLINGS, default=ModelConfig.pooling)
    parser.add_argument("--utterance-norm", choices=UTTERANCE_NORMS, default=ModelConfig.utterance_norm)
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
    feature_config = FeatureConfig(length_mode="fixed", fixed_seconds=3.0, hop_length=args.hop_length,
                                   n_mels=args.n_mels, pitch=args.pitch)
    emit("FLOPs: forward pass of one clip, serkeras.models.cost.flops_per_clip (multiply-add = 2)")
    emit(f"inputs: fixed 3 s clips ({feature_config.fixed_frames} frames, {feature_config.n_mels} mels, "
         f"{feature_config.n_spectral} spectral features), synthetic; "
         f"train batch {args.train_batch} (Adam, categorical cross-entropy, train_on_batch), "
         f"inference batch {args.infer_batch} (predict_on_batch); {args.warmup} warm-up steps, "
         f">= {args.steps} timed steps and >= {args.min_seconds:g} s")
    emit()
    header = f"{'arch':<9} {'width':>5} {'params':>11} {'MFLOPs/clip':>11} {'train samples/s':>16} {'infer samples/s':>16}"
    emit(header)
    emit("-" * len(header))
    rng = np.random.default_rng(0)
    details = []
    for width in args.width:
        for arch in args.arch:
            keras.utils.clear_session()
            keras.utils.set_random_seed(0)
            model_config = ModelConfig(arch=arch, width=width, pooling=args.pooling,
                                       utterance_norm=args.utterance_norm)
            model = build_model(feature_config, model_config, LABELS)
            params, cost = model.count_params(), flops(model, feature_config)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy())
            x_train = synthetic_batch(model, feature_config, args.train_batch, rng)
            y_train = np.eye(len(LABELS), dtype=np.float32)[rng.integers(0, len(LABELS), args.train_batch)]
            train, train_steps, train_s = throughput(lambda: model.train_on_batch(x_train, y_train),
                                                     args.train_batch, args.warmup, args.steps, args.min_seconds)
            x_infer = synthetic_batch(model, feature_config, args.infer_batch, rng)
            infer, infer_steps, infer_s = throughput(lambda: model.predict_on_batch(x_infer),
                                                     args.infer_batch, args.warmup, args.steps, args.min_seconds)
            cost = "n/a" if cost is None else f"{cost / 1e6:,.1f}"
            emit(f"{arch:<9} {width:>5g} {params:>11,} {cost:>11} {train:>16.1f} {infer:>16.1f}")
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
