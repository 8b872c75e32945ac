"""Multi-device paths on CPU stand-ins: batches shared by replicas, `--mixed-precision` on CPU,
`--distribute` with one device or with TF_CONFIG, two JAX processes training one model
(several machines), `tune --distribute` over two JAX host devices, and two hosts filling one
feature cache at once.

`--distribute` over two devices (MirroredStrategy, DataParallel) trains, saves and predicts in
tests/backend_checks.py (its `distribute` check, run by tests/test_backends.py).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--split", "actor", "--arch", "1d", "--width", "0.0625", "--head-units", "16", "--batch-size", "16",
              "--epochs", "1", "--quiet", "--workers", "1"]
#: Two CPU devices for JAX, with the suite's flags (tests/conftest.py).
TWO_HOST_DEVICES = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
#: Under JAX every batch shape is a compilation: 1-s clips (one shape) keep the JAX runs' tests short.
ONE_SHAPE = ["--length", "fixed", "--seconds", "1"]


def synthetic_features(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [{"logmel": rng.normal(size=(n, 64)).astype(np.float32),
             "spectral": rng.normal(size=(n, 65)).astype(np.float32)} for n in lengths]


def subprocess_env(**extra):
    """The environment of a serkeras process started by a test: this checkout, no proxy (gRPC would use it)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1", TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def run_together(commands, cwd, timeout):
    """Start every (args, env) at once, wait for all (killing their process groups past `timeout` s);
    returns [(exit status, output)]."""
    procs, logs = [], []
    try:
        for i, (args, env) in enumerate(commands):
            logs.append(open(Path(cwd) / f"process{i}.log", "w+"))
            procs.append(subprocess.Popen(args, cwd=cwd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                                          start_new_session=True))
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        results = []
        for proc, log in zip(procs, logs):
            log.seek(0)
            results.append((proc.returncode, log.read()))
            log.close()
    return results


def serkeras(*args):
    return [sys.executable, "-m", "serkeras.cli", *args]


def test_batches_give_every_replica_clips_and_padding_changes_no_prediction():
    import keras

    from serkeras.pipeline import make_dataset

    lengths = (40, 300, 73, 187, 120, 256, 95, 211, 64, 150, 91)  # 11 clips in batches of 4: partial batches
    features, labels = synthetic_features(lengths), np.arange(len(lengths)) % 6
    names = ("logmel", "spectral", "lengths")
    alone = make_dataset(features, labels, 6, batch_size=4, shuffle=True, seed=1, input_names=names)
    assert any(len(y) % 2 for _, y in alone)  # one device takes odd batches: two replicas could not share them
    shared = make_dataset(features, labels, 6, batch_size=4, shuffle=True, seed=1, input_names=names, replicas=2)
    for epoch in range(2):
        sizes = [len(y) for _, y in shared]
        assert sizes and all(size > 0 and size % 2 == 0 for size in sizes), sizes
        assert len(sizes) == int(shared.cardinality())  # Keras sizes epochs from it
        assert sum(sizes) >= len(lengths) - 2 * 2  # at most one clip left out per partial batch

    # Evaluation keeps every clip: batches padded with weight-0 copies, real rows as on one device.
    one = [(x, y) for x, y in make_dataset(features, labels, 6, batch_size=4, input_names=names).as_numpy_iterator()]
    padded = list(make_dataset(features, labels, 6, batch_size=4, input_names=names, replicas=2).as_numpy_iterator())
    assert [len(w) % 2 for _, _, w in padded] == [0] * len(padded)
    for (x, y), (px, py, w) in zip(one, padded):
        real = w == 1
        assert real.sum() == len(y) and np.array_equal(py[real], y)
        assert all(np.array_equal(px[k][real], x[k]) for k in names)

    # A model predicts each real clip of a padded batch as on its own.
    from serkeras.features import FeatureConfig, compute_stats
    from serkeras.models import ModelConfig, build_model

    model = build_model(FeatureConfig(), ModelConfig(arch="1d", width=0.125, head_units=16), list("abcdef"),
                        compute_stats(features))
    x, y, w = padded[-1]
    on_own = np.concatenate([model.predict_on_batch({k: v[i:i + 1] for k, v in x.items()})
                             for i in np.flatnonzero(w == 1)])
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(x))[w == 1], on_own, atol=1e-5)
    keras.backend.clear_session()


def test_processes_feed_consecutive_shares_of_the_same_batches():
    from serkeras.pipeline import make_dataset

    lengths = (40, 300, 73, 187, 120, 256, 95, 211, 64, 150, 91)
    features, labels = synthetic_features(lengths), np.arange(len(lengths)) % 6
    names = ("logmel", "spectral", "lengths")
    for shuffle in (True, False):  # training batches, and padded evaluation batches with their weights
        def batches(share=None):
            return list(make_dataset(features, labels, 6, batch_size=4, shuffle=shuffle, seed=1, input_names=names,
                                     replicas=2, process_share=share).as_numpy_iterator())

        whole, first, second = batches(), batches((0, 2)), batches((1, 2))
        assert len(whole) == len(first) == len(second)
        for batch, mine, theirs in zip(whole, first, second):
            for full, a, b in zip(batch, mine, theirs):
                for key in (names if isinstance(full, dict) else [None]):
                    part = (lambda x: x[key]) if key else (lambda x: x)
                    assert len(part(a)) == len(part(b)) == len(part(full)) // 2
                    np.testing.assert_array_equal(np.concatenate([part(a), part(b)]), part(full))


def test_distribute_on_one_device_is_a_one_line_error(crema_subset, workdir):
    result = run_cli(["train", "--data-dir", str(crema_subset), "--cache-dir", str(workdir / "cache"),
                      "--run-name", "one-device", *TINY_TRAIN, "--distribute"], workdir)
    assert result.exit_code == 1
    assert "error: --distribute needs at least two devices, but tensorflow sees only" in result.output, result.output
    assert "Traceback" not in result.output


def test_mixed_precision_on_cpu_trains_in_bfloat16_and_predicts_in_float32(crema_subset, workdir):
    import keras

    from serkeras.models import load_model

    result = run_cli(["train", "--data-dir", str(crema_subset), "--cache-dir", str(workdir / "cache"),
                      "--run-name", "mixed", *TINY_TRAIN, "--mixed-precision"], workdir)
    assert result.exit_code == 0, result.output
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for whatever runs next
    model, meta = load_model(workdir / "saved_models" / "mixed" / "model.keras")
    policies = {layer.dtype_policy.name for layer in model.layers if layer.weights}
    assert "mixed_bfloat16" in policies and model.get_layer("probabilities").dtype_policy.name == "float32"
    assert all(w.dtype == "float32" for w in model.weights)
    metrics = json.loads((workdir / "saved_models" / "mixed" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    from serkeras.evaluation import predict_features

    probabilities = predict_features(model, synthetic_features((50, 120)), meta.feature_config.length_mode)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_tf_config_is_refused_in_one_line(crema_subset, workdir, monkeypatch):
    """Keras 3 cannot fit under MultiWorkerMirroredStrategy: TF_CONFIG with --distribute is refused up front."""
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    result = run_cli(["train", "--data-dir", str(crema_subset), "--cache-dir", str(workdir / "cache"),
                      "--run-name", "several-machines", *TINY_TRAIN, "--distribute"], workdir)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[-1].startswith("error: --distribute cannot use TF_CONFIG")


@pytest.mark.parametrize("settings, message", [
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}, "KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_PROCESS_ID are "
                                                "not set"),
    ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
      "KERAS_DISTRIBUTION_PROCESS_ID": "2"}, "KERAS_DISTRIBUTION_PROCESS_ID is 2, but the 2 processes are numbered"),
    ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234,10.0.0.3:1234",
      "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "0"}, "lists 3 addresses for 2"),
    ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
      "KERAS_DISTRIBUTION_PROCESS_ID": "0"}, "not the host:port of process 0"),
    ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234", "KERAS_DISTRIBUTION_NUM_PROCESSES": "two",
      "KERAS_DISTRIBUTION_PROCESS_ID": "0"}, "must be whole numbers"),
    ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
      "KERAS_DISTRIBUTION_PROCESS_ID": "1"}, "needs the jax backend, not tensorflow"),
])
def test_inconsistent_process_settings_are_one_line_errors(settings, message, crema_subset, workdir, monkeypatch):
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    result = run_cli(["train", "--data-dir", str(crema_subset), "--cache-dir", str(workdir / "cache"),
                      "--run-name", "processes", *TINY_TRAIN, "--distribute"], workdir)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[-1].startswith("error: ") and message in result.output, result.output
    assert not (workdir / "saved_models" / "processes").exists()


@pytest.mark.parametrize("extra, message", [
    ([], "add --distribute to train over them"),
    (["--distribute", "--resume"], "--resume continues a run in one process"),
])
def test_processes_train_with_distribute_and_not_resumed(extra, message, crema_subset, workdir, monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "0")
    result = run_cli(["train", "--data-dir", str(crema_subset), "--cache-dir", str(workdir / "cache"),
                      "--run-name", "processes", *TINY_TRAIN, *extra], workdir)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[-1].startswith("error: ") and message in result.output, result.output


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_one_model_as_one_process_over_two_devices(crema_subset, shared_cache, tmp_path):
    """Two JAX processes (one CPU device each, as two machines with one GPU each) train the model one
    process trains over two devices: the same batches, the same steps, so the same weights; process 1
    writes nothing."""
    pytest.importorskip("jax")
    from serkeras.models import load_model

    def train_args(folder):
        return serkeras("train", "--data-dir", str(crema_subset), "--cache-dir", str(shared_cache),
                        "--output-dir", str(folder / "saved_models"), "--log-dir", str(folder / "logs"),
                        "--run-name", "run", *TINY_TRAIN, *ONE_SHAPE, "--distribute")

    one = tmp_path / "one-process"
    [(status, output)] = run_together([(train_args(one), subprocess_env(
        KERAS_BACKEND="jax", XLA_FLAGS=TWO_HOST_DEVICES))], tmp_path, timeout=300)
    assert status == 0, output[-3000:]

    two = [tmp_path / "process0", tmp_path / "process1"]
    cluster = {"KERAS_BACKEND": "jax", "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{free_port()}",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    results = run_together([(train_args(folder), subprocess_env(**cluster, KERAS_DISTRIBUTION_PROCESS_ID=str(i)))
                            for i, folder in enumerate(two)], tmp_path, timeout=300)
    for status, output in results:
        assert status == 0, output[-3000:]
    assert "best model:" in results[0][1] and "best model:" not in results[1][1]
    assert "process 1 of 2 trained its share; process 0 writes the run" in results[1][1]
    assert (two[0] / "saved_models" / "run" / "metrics.json").is_file()
    assert not (two[1] / "saved_models").exists() and not (two[1] / "logs").exists()
    alone, _ = load_model(one / "saved_models" / "run" / "model.keras")
    together, _ = load_model(two[0] / "saved_models" / "run" / "model.keras")
    # Each step sums the same two devices' gradients, whichever process holds the devices: equal, not close.
    for a, b in zip(alone.get_weights(), together.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    history = [(folder / "saved_models" / "run" / "history.csv").read_text() for folder in (one, two[0])]
    assert history[0] == history[1] and len(history[0].splitlines()) == 2


def test_tune_distribute_over_two_jax_host_devices(crema_subset, shared_cache, tmp_path):
    pytest.importorskip("jax")
    args = serkeras("tune", "--data-dir", str(crema_subset), "--cache-dir", str(shared_cache), *ONE_SHAPE,
                    "--search-name", "two-devices", "--split", "actor", "--arch", "1d", "--width", "0.0625",
                    "--head-units", "16", "--batch-size", "16", "--tuner", "random", "--max-trials", "2",
                    "--epochs", "1", "--quiet", "--workers", "1", "--distribute")
    env = subprocess_env(KERAS_BACKEND="jax", XLA_FLAGS=TWO_HOST_DEVICES)
    [(status, output)] = run_together([(args, env)], tmp_path, timeout=300)
    assert status == 0, output[-3000:]
    assert "2 completed trials, best first" in output
    search_dir = tmp_path / "saved_models" / "two-devices"
    assert (search_dir / "best.keras").is_file()
    assert json.loads((search_dir / "search.json").read_text())["settings"]["train_config"]["mixed_precision"] is False


def test_two_hosts_fill_one_feature_cache_at_once(real_clips, tmp_path):
    """Cache entries are per clip and written atomically: two `features` runs on one folder at once."""
    cache = tmp_path / "shared-cache"
    args = serkeras("features", "--data-dir", str(real_clips.folder), "--cache-dir", str(cache), "--workers", "1")
    results = run_together([(args, subprocess_env()), (args, subprocess_env())], tmp_path, timeout=240)
    counts = []
    for status, output in results:
        assert status == 0, output[-3000:]
        found = re.search(r"12 with features, 0 skipped; computed (\d+), reused (\d+)", output)
        assert found, output[-2000:]
        counts.append(int(found.group(1)) + int(found.group(2)))
    assert counts == [12, 12]
    status, output = run_together([(args, subprocess_env())], tmp_path, timeout=120)[0]
    assert status == 0 and "computed 0, reused 12" in output, output[-2000:]
