"""Benchmark: `serkeras predict` throughput (clips/s) against the model's FLOPs bound, start-up, memory, peers.

    python benchmarks/predict.py --data-dir ../shared/data/crema-d/audio --model serkeras-crema-d-emodb-ased-whisper
    python benchmarks/predict.py --data-dir ../shared/data/crema-d/audio --arch 2d --width 0.25   # untrained model

It times `serkeras.inference.predict_files` end to end (decode, resample,
features, windows, model, aggregation; the model run as `serkeras predict --runtime`
runs it: a shipped model's ONNX copy in ONNX Runtime where one ships, else the
`.keras` file) over the first `--clips` files after a
warm-up (the steady rate), then the model part alone on the same features, so
the two costs can be told apart. The FLOPs bound is the model's FLOPs per clip
(`serkeras.models.cost`, at the clips' mean length) divided by the float32
matrix-multiply rate NumPy reaches on this machine in the same run (the best of
four measurements, one beside each timed run): no float32 runtime can run the
model faster than that. `--latency` also times `serkeras predict`
on one file (with `--onnx`, through the export too) and `serkeras predict --help`
in fresh processes (median of 3), and the peak memory of `serkeras predict` on
all the clips. Peers, on the same
clips and in the same run: `--onnx` (ONNX Runtime on `serkeras export --format
onnx` of the same model) and `--ctranslate2` (a faster-whisper folder:
CTranslate2's whole Whisper encoder, int8, on the same log-mel lengths; it has
more layers, so it is compared by the FLOP rate it reaches). An untrained model
of the given architecture costs the same as a trained one.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: Repetitions of each timing; the median is reported (other jobs share the machine).
REPEATS = 3


def median_seconds(run, repeats=REPEATS):
    """Median wall time of `repeats` calls of `run`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(size=1024):
    """float32 matrix-multiply rate of NumPy here (GFLOP/s), every core: the machine's dense compute rate."""
    import numpy as np

    a, b = (np.random.default_rng(i).standard_normal((size, size), dtype=np.float32) for i in range(2))
    a @ b
    return 2 * size**3 / median_seconds(lambda: [a @ b for _ in range(10)]) * 10 / 1e9


def whisper_encoder_flops(frames, n_mels=80, dim=512, n_layers=6):
    """Multiply-add FLOPs (2 per multiply-add) of Whisper's encoder on `frames` log-mel frames (for peers)."""
    positions = (frames + 1) // 2
    convs = 2 * 3 * n_mels * dim * frames + 2 * 3 * dim * dim * positions
    per_layer = (2 * 4 * positions * dim * dim  # query, key, value, output projections
                 + 2 * 2 * positions * positions * dim  # scores and weighted values
                 + 2 * 2 * positions * dim * 4 * dim)  # feed-forward
    return convs + n_layers * per_layer


def serkeras_command(*args):
    return [sys.executable, "-m", "serkeras", *args]


def fresh_process_seconds(command):
    """Median wall time of `command` in a new process (imports included), which must succeed."""
    return median_seconds(lambda: subprocess.run(command, check=True, capture_output=True))


def peak_memory_mb(command):
    """Largest resident set (MB) of `command` or of any process it started, run once.

    It runs under a fresh Python process, whose own children are only `command`: this
    process's children (the timings before) may have used more.
    """
    script = ("import resource, subprocess, sys\n"
              "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    result = subprocess.run([sys.executable, "-c", script, *command], check=True, capture_output=True, text=True)
    return int(result.stdout.split()[-1]) / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=None,
                        help="A .keras model or a shipped model's name (default: build an untrained --arch/--width).")
    parser.add_argument("--runtime", default="auto", choices=("auto", "keras", "onnx"),
                        help="As `serkeras predict --runtime`: what runs the model (auto: a shipped model's ONNX copy).")
    parser.add_argument("--arch", default="2d")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency", action="store_true",
                        help="Also time one-file predictions and --help in fresh processes, and the peak memory.")
    parser.add_argument("--onnx", default=None, help="An ONNX export of --model, run with ONNX Runtime (a peer).")
    parser.add_argument("--ctranslate2", default=None,
                        help="A faster-whisper (CTranslate2) folder whose encoder is run as a peer.")
    parser.add_argument("--output", default=None, help="Also write the report to this file.")
    args = parser.parse_args(argv)

    import numpy as np

    from serkeras.cache import compute_clip
    from serkeras.corpus import load_crema_d
    from serkeras.evaluation import model_input_names, predict_features
    from serkeras.features import FeatureConfig, feature_kinds
    from serkeras.api import open_prediction_model, prediction_file
    from serkeras.inference import predict_files, speaker_of
    from serkeras.models import ModelConfig, build_model, load_model
    from serkeras.models.cost import flops_per_clip
    from serkeras.pipeline import make_dataset
    from serkeras.system import describe_machine, load_average

    paths = [c.path for c in load_crema_d(args.data_dir).clips[: args.clips]]
    model_path = args.model
    if model_path is None:
        model = build_model(FeatureConfig(), ModelConfig(arch=args.arch, width=args.width),
                            ["anger", "disgust", "fear", "happy", "neutral", "sad"])
        model_path = os.path.join(tempfile.mkdtemp(prefix="serkeras-bench-"), "model.keras")
        model.save(model_path)
    _, source = prediction_file(model_path, args.runtime)
    model, metadata, run_path = open_prediction_model(model_path, args.runtime)
    keras_model, _ = load_model(source or run_path)  # what the FLOPs are counted on (and the peers' batches)
    config = metadata.feature_config
    kinds = feature_kinds(model_input_names(model))

    lines = ["# serkeras predict benchmark", "command: python benchmarks/predict.py " + " ".join(argv or sys.argv[1:]),
             *describe_machine(), f"start: {time.strftime('%Y-%m-%d %H:%M:%S')}, {load_average()}",
             f"model: {args.model or f'untrained {args.arch} width {args.width:g}'} "
             f"({keras_model.count_params():,} parameters, {config.length_mode} length, inputs {', '.join(kinds)}), "
             f"run from {run_path}"]
    predict_files(model, metadata, paths[:8], batch_size=args.batch_size)  # warm-up: graph tracing
    rates, matmul_rates = [], []
    for _ in range(REPEATS):
        lines.append(f"  {load_average()}")
        matmul_rates.append(matmul_gflops())  # beside each run: other machines' load moves it by half
        start = time.perf_counter()
        predictions, skipped = predict_files(model, metadata, paths, batch_size=args.batch_size)
        rates.append(len(predictions) / (time.perf_counter() - start))
    rate = statistics.median(rates)
    audio_seconds = sum(p.seconds for p in predictions)

    # A model that standardises by speaker also needs each clip's speaker (CREMA-D names give the actor).
    speakers = [speaker_of(p) for p in paths] if metadata.standardises_embedding else None
    features = [compute_clip(p, config, kinds=kinds) for p in paths]
    predict_features(model, features[:8], config.length_mode, config.fixed_frames, args.batch_size,
                     speakers and speakers[:8])
    lines.append(f"  {load_average()}")
    model_only = median_seconds(lambda: predict_features(model, features, config.length_mode, config.fixed_frames,
                                                         args.batch_size, speakers))
    mean_seconds = audio_seconds / len(predictions)
    flops = flops_per_clip(keras_model, config, mean_seconds)
    lines.append(f"  {load_average()}")
    matmul_rates.append(matmul_gflops())
    gflops = max(matmul_rates)  # the highest rate seen: the strictest bound
    bound = gflops * 1e9 / flops

    lines += [f"clips: {len(predictions)} predicted, {len(skipped)} skipped, {audio_seconds:.0f} s of audio "
              f"({mean_seconds:.2f} s mean), batch {args.batch_size}",
              f"end to end (steady, median of {REPEATS}): {rate:.1f} clips/s ({rate * mean_seconds:.0f}x real time); "
              f"runs: {', '.join(f'{r:.1f}' for r in rates)}",
              f"model alone: {len(features) / model_only:.1f} clips/s; the rest (decode, features, windows) "
              f"{len(features) / rate - model_only:.2f} s",
              f"FLOPs bound: {flops / 1e9:.2f} GFLOP per {mean_seconds:.2f}-s clip / {gflops:.0f} GFLOP/s (NumPy "
              f"float32 matmul, the best of {', '.join(f'{r:.0f}' for r in matmul_rates)} measured beside the runs) "
              f"= {bound:.1f} clips/s; end to end reaches {rate / bound:.0%} of it, "
              f"the model alone {len(features) / model_only / bound:.0%}"]

    def run_batches(run):
        """`run(inputs)` on the model's own padded, length-sorted batches."""
        dataset = make_dataset(features, np.zeros(len(features), np.int32), 1, config.length_mode,
                               config.fixed_frames, batch_size=args.batch_size,
                               input_names=model_input_names(keras_model)).map(lambda x, y: x)
        batches = list(dataset.as_numpy_iterator())
        run(batches[0])
        return median_seconds(lambda: [run(b) for b in batches])

    if args.onnx:
        import onnxruntime

        session = onnxruntime.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        lines.append(f"  {load_average()}")
        seconds = run_batches(lambda x: session.run(None, {k: x[k] for k in names}))
        lines.append(f"peer, ONNX Runtime {onnxruntime.__version__} on `serkeras export --format onnx` of the model, "
                     f"same batches: {len(features) / seconds:.1f} clips/s "
                     f"({len(features) / seconds / (len(features) / model_only):.2f}x ours)")
    if args.ctranslate2:
        import ctranslate2

        from serkeras.models.whisper import read_checkpoint

        sizes = read_checkpoint(args.ctranslate2).sizes
        whisper = ctranslate2.models.Whisper(args.ctranslate2, device="cpu", compute_type="int8",
                                             intra_threads=os.cpu_count())

        def encode(inputs):
            logmel = np.ascontiguousarray(inputs["logmel"].transpose(0, 2, 1))  # CTranslate2: (batch, mels, frames)
            whisper.encode(ctranslate2.StorageView.from_array(logmel))

        lines.append(f"  {load_average()}")
        seconds = run_batches(encode)
        frames = [len(f["logmel"]) for f in features]
        peer_flops = sum(whisper_encoder_flops(n, sizes.n_mels, sizes.dim, sizes.n_layers) for n in frames) / len(frames)
        ours = len(features) / model_only * flops / 1e9
        peer = len(features) / seconds * peer_flops / 1e9
        lines.append(f"peer, CTranslate2 {ctranslate2.__version__} Whisper encoder (all {sizes.n_layers} "
                     f"layers, int8), same batches: {len(features) / seconds:.1f} clips/s at "
                     f"{peer_flops / 1e9:.2f} GFLOP per clip = {peer:.0f} GFLOP/s; our model alone {ours:.0f} GFLOP/s "
                     f"({ours / peer:.2f}x its rate)")
    if args.latency:
        one = paths[0]
        lines.append(f"  {load_average()}")
        chosen = ("--model", model_path, "--runtime", args.runtime)
        lines.append(f"`serkeras predict ONE_FILE --model MODEL --runtime {args.runtime}` in a fresh process: "
                     f"{fresh_process_seconds(serkeras_command('predict', one, *chosen)):.2f} s "
                     f"(median of {REPEATS})")
        if args.onnx:
            seconds = fresh_process_seconds(serkeras_command("predict", one, "--model", args.onnx))
            lines.append(f"`serkeras predict ONE_FILE --model ONNX_EXPORT` in a fresh process (ONNX Runtime, no "
                         f"TensorFlow): {seconds:.2f} s (median of {REPEATS})")
        lines.append(f"`serkeras predict --help`: {fresh_process_seconds(serkeras_command('predict', '--help')):.2f} s")
        with tempfile.TemporaryDirectory() as folder:
            for path in paths:  # the clips only: a folder of the corpus would hold all of them
                os.symlink(os.path.abspath(path), os.path.join(folder, os.path.basename(path)))
            peak = peak_memory_mb(serkeras_command("predict", folder, *chosen, "--format", "csv"))
        lines.append(f"peak memory of `serkeras predict` on the {len(paths)} clips: {peak:.0f} MB (the largest "
                     "single process)")
    lines.append(f"end: {time.strftime('%Y-%m-%d %H:%M:%S')}, {load_average()}")
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
