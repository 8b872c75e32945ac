"""Benchmark: cold feature extraction, warm cache load, tf.data throughput and padding overhead.

    python benchmarks/pipeline.py --data-dir ../shared/data/crema-d/audio [--cold] [--limit N]

--cold extracts into a fresh temporary cache (the whole corpus takes minutes);
without it the default cache (data/cache) is used and must be warm for the
"warm load" number to mean anything.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--cold", action="store_true", help="Extract into a fresh temporary cache first.")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N clips.")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from serkeras.cache import cached_features
    from serkeras.corpus import load_crema_d
    from serkeras.features import FeatureConfig
    from serkeras.pipeline import make_dataset, padding_overhead

    corpus = load_crema_d(args.data_dir)
    clips = corpus.clips[: args.limit] if args.limit else corpus.clips
    config = FeatureConfig()
    from serkeras.system import describe_machine, load_average

    print("\n".join(describe_machine()))
    print(f"{len(clips)} clips; {load_average()}")
    cache_dir = args.cache_dir
    if args.cold:
        cache_dir = tempfile.mkdtemp(prefix="serkeras-bench-")
        result = cached_features(clips, config, cache_dir, progress=False)
        print(f"cold extraction: {result.seconds:.1f} s, {result.computed / result.seconds:.1f} clips/s")
    start = time.perf_counter()
    result = cached_features(clips, config, cache_dir, progress=False)
    warm = time.perf_counter() - start
    print(f"warm cache load: {warm:.2f} s ({result.reused} clips reused, {result.computed} computed)")

    kept, features = result.of(clips)
    labels = corpus.label_indices(kept)
    for mode, shuffle in (("variable", True), ("variable", False), ("fixed", True)):
        ds = make_dataset(features, labels, len(corpus.labels), mode, config.fixed_frames, args.batch_size,
                          shuffle=shuffle, seed=0)
        start = time.perf_counter()
        batches = sum(1 for _ in ds)
        seconds = time.perf_counter() - start
        line = f"pipeline {mode:<8} {'bucketed' if shuffle and mode == 'variable' else 'sorted  ' if mode == 'variable' else '        '}" \
               f" {batches} batches in {seconds:.2f} s = {batches / seconds:.0f} batches/s"
        if mode == "variable":
            line += f", padding overhead {padding_overhead(ds):.1%}"
        print(line)


if __name__ == "__main__":
    main()
