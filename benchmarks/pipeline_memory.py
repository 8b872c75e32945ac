"""Benchmark: peak memory of `serkeras.pipeline.make_dataset` over many long clips (a frozen encoder's outputs).

    python benchmarks/pipeline_memory.py --clips 6000

Makes `--clips` random clips of 100-149 frames of 512 values (float32, as the
first layers of Whisper base give them), builds the shuffled variable-length
training pipeline over them and reads it twice (two epochs). Prints the size
of the frames, the process's peak resident memory before the pipeline and at
the end, and the time the two epochs took. Run it in a fresh process: the peak
is the process's own.
"""

import argparse
import resource
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=6000)
    args = parser.parse_args(argv)

    from serkeras.pipeline import make_dataset
    from serkeras.system import describe_machine

    rng = np.random.default_rng(0)
    features = [{"frames0": rng.standard_normal((int(rng.integers(100, 150)), 512)).astype(np.float32)}
                for _ in range(args.clips)]
    labels = rng.integers(0, 6, args.clips)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    ds = make_dataset(features, labels, 6, batch_size=32, shuffle=True, seed=0, input_names=("frames0", "lengths"),
                      bucket=False)
    for _ in range(2):
        for _ in ds:
            pass
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    frames = sum(f["frames0"].nbytes for f in features) / 2**30
    print("\n".join([*describe_machine(),
                     f"{args.clips} clips, {frames:.2f} GiB of frames; peak memory {before:.2f} GiB before the "
                     f"pipeline, {after:.2f} GiB after two epochs ({seconds:.1f} s)"]))


if __name__ == "__main__":
    main()
