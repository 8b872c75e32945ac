"""Benchmark: `serkeras predict` throughput (clips/s) on real CREMA-D clips.

    python benchmarks/predict.py --data-dir ../shared/data/crema-d/audio --model saved_models/<run>/model.keras
    python benchmarks/predict.py --data-dir ../shared/data/crema-d/audio --arch 2d --width 0.25   # untrained model

It times `serkeras.inference.predict_files` end to end (decode, resample,
features, windows, model, aggregation) over the first `--clips` files, then the
model part alone on the same features, so the two costs can be told apart. An
untrained model of the given architecture costs the same as a trained one.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=None, help="A .keras model (default: build an untrained --arch/--width).")
    parser.add_argument("--arch", default="2d")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=None, help="Also write the report to this file.")
    args = parser.parse_args(argv)

    from serkeras.cache import compute_clip
    from serkeras.corpus import load_crema_d
    from serkeras.evaluation import predict_features
    from serkeras.features import FeatureConfig
    from serkeras.inference import predict_files, speaker_of
    from serkeras.models import ModelConfig, build_model, load_model
    from serkeras.system import describe_machine, load_average

    paths = [c.path for c in load_crema_d(args.data_dir).clips[: args.clips]]
    model_path = args.model
    if model_path is None:
        model = build_model(FeatureConfig(), ModelConfig(arch=args.arch, width=args.width),
                            ["anger", "disgust", "fear", "happy", "neutral", "sad"])
        model_path = os.path.join(tempfile.mkdtemp(prefix="serkeras-bench-"), "model.keras")
        model.save(model_path)
    model, metadata = load_model(model_path)
    config = metadata.feature_config

    lines = ["# serkeras predict benchmark", "command: python benchmarks/predict.py " + " ".join(argv or sys.argv[1:]),
             *describe_machine(), f"start: {time.strftime('%Y-%m-%d %H:%M:%S')}, {load_average()}",
             f"model: {args.model or f'untrained {args.arch} width {args.width:g}'} "
             f"({model.count_params():,} parameters, {config.length_mode} length)"]
    predict_files(model, metadata, paths[:8], batch_size=args.batch_size)  # warm-up: graph tracing
    start = time.perf_counter()
    predictions, skipped = predict_files(model, metadata, paths, batch_size=args.batch_size)
    total = time.perf_counter() - start
    audio_seconds = sum(p.seconds for p in predictions)

    # A model that standardises by speaker also needs each clip's speaker (CREMA-D names give the actor).
    speakers = [speaker_of(p) for p in paths] if metadata.model_config.speaker_standardization else None
    features = [compute_clip(p, config) for p in paths[:8]]
    predict_features(model, features, config.length_mode, config.fixed_frames, args.batch_size,
                     speakers and speakers[:8])
    features = [compute_clip(p, config) for p in paths]
    start = time.perf_counter()
    predict_features(model, features, config.length_mode, config.fixed_frames, args.batch_size, speakers)
    model_only = time.perf_counter() - start

    lines += [f"clips: {len(predictions)} predicted, {len(skipped)} skipped, {audio_seconds:.0f} s of audio, "
              f"batch {args.batch_size}",
              f"end to end: {total:.2f} s = {len(predictions) / total:.1f} clips/s "
              f"({audio_seconds / total:.0f}x real time)",
              f"model alone: {model_only:.2f} s = {len(features) / model_only:.1f} clips/s; "
              f"the rest (decode, features, windows) {total - model_only:.2f} s",
              f"end: {time.strftime('%Y-%m-%d %H:%M:%S')}, {load_average()}"]
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
