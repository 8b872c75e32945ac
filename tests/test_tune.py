"""`serkeras tune` end to end on real CREMA-D clips: a tiny search, resuming it, and
KerasTuner's distributed mode (a chief and two workers on 127.0.0.1)."""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from serkeras.cli import main
from conftest import run_cli
from serkeras.tuning import ACTIVATION_GRID, LEARNING_RATE_GRID

LABELS = ("anger", "disgust", "fear", "happy", "neutral", "sad")
TINY = ["--split", "actor", "--arch", "1d", "--width", "0.0625", "--head-units", "16", "--batch-size", "16",
        "--tuner", "random", "--max-trials", "2", "--epochs", "1", "--quiet", "--workers", "1"]




def tune_args(crema_subset, workdir, *extra):
    return ["tune", "--data-dir", str(crema_subset), "--cache-dir", str(workdir / "cache"), "--search-name", "tiny",
            *TINY, *extra]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def trial_files(project):
    return {p.parent.name: p.read_bytes() for p in sorted(Path(project).glob("trial_*/trial.json"))}


def hparams_of(trial_log_dir):
    """The HParams session values in a trial's TensorBoard logs, and its validation scalar tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    hparams, validation_tags = None, set()
    for events in Path(trial_log_dir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        tags = acc.Tags()["tensors"]
        if "_hparams_/session_start_info" in tags:
            content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
            info = metadata.parse_session_start_info_plugin_data(content)
            hparams = {k: (v.string_value or v.number_value) for k, v in info.hparams.items()}
        if events.parent.name == "validation":
            validation_tags |= set(tags)
    return hparams, validation_tags


@pytest.fixture(scope="module")
def search(crema_subset, workdir):
    result = run_cli(tune_args(crema_subset, workdir), workdir)
    assert result.exit_code == 0, result.output
    return workdir / "saved_models" / "tiny", result.output


def test_search_writes_ranked_table_best_model_and_logs(search, workdir):
    from serkeras.models import load_model

    search_dir, output = search
    rows = read_rows(search_dir / "trials.csv")
    assert len(rows) == 2
    assert [r["rank"] for r in rows] == ["1", "2"] and len({r["trial_id"] for r in rows}) == 2
    for row in rows:
        assert row["activation"] in ACTIVATION_GRID
        assert float(row["learning_rate"]) in LEARNING_RATE_GRID
        assert row["score"] == row["val_accuracy"] and 0.0 <= float(row["score"]) <= 1.0
    assert float(rows[0]["score"]) >= float(rows[1]["score"])
    markdown = (search_dir / "trials.md").read_text()
    assert "| rank | trial_id | activation | learning_rate |" in markdown
    assert "| rank | trial_id | activation | learning_rate |" in output  # the table is printed as well

    model, meta = load_model(search_dir / "best.keras")
    assert meta.labels == LABELS
    assert meta.model_config.arch == "1d" and meta.model_config.width == 0.0625
    assert meta.model_config.activation == rows[0]["activation"]
    best = json.loads((search_dir / "best.json").read_text())
    assert best["trial_id"] == rows[0]["trial_id"]
    assert best["hyperparameters"]["learning_rate"] == pytest.approx(float(rows[0]["learning_rate"]))
    assert set(best["test"]["per_class"]) == set(LABELS) and 0.0 <= best["test"]["accuracy"] <= 1.0
    assert "confusion matrix" in output and f"best trial {rows[0]['trial_id']}" in output

    # KerasTuner's project lives under the search folder.
    assert sorted(trial_files(search_dir / "tuner")) == sorted(f"trial_{r['trial_id']}" for r in rows)

    # One TensorBoard folder per trial, with the trial's values as HParams and validation curves.
    for row in rows:
        hparams, validation_tags = hparams_of(workdir / "logs" / "tiny" / row["trial_id"])
        assert hparams == {"activation": row["activation"], "learning_rate": pytest.approx(float(row["learning_rate"]))}
        assert {"epoch_accuracy", "epoch_macro_f1", "epoch_loss"} <= validation_tags


def test_rerun_resumes_without_redoing_trials(search, crema_subset, workdir):
    search_dir, _ = search
    before = trial_files(search_dir / "tuner")
    rows_before = read_rows(search_dir / "trials.csv")
    started = time.time()
    result = run_cli(tune_args(crema_subset, workdir), workdir)
    assert result.exit_code == 0, result.output
    assert "resuming search tiny: 2 trials started before, 2 completed (kept)" in result.output
    assert trial_files(search_dir / "tuner") == before, "finished trials were run again"
    assert read_rows(search_dir / "trials.csv") == rows_before
    assert (search_dir / "best.keras").stat().st_mtime >= started  # rewritten from the stored checkpoint

    # A larger --max-trials continues the same search: one new trial, the old ones untouched.
    result = run_cli(tune_args(crema_subset, workdir, "--max-trials", "3"), workdir)
    assert result.exit_code == 0, result.output
    after = trial_files(search_dir / "tuner")
    assert len(after) == 3 and {k: after[k] for k in before} == before
    assert len(read_rows(search_dir / "trials.csv")) == 3


def test_resume_with_other_settings_is_refused(search, crema_subset, workdir):
    result = CliRunner().invoke(main, tune_args(crema_subset, workdir, "--arch", "combined", "--output-dir",
                                                str(workdir / "saved_models")))
    assert result.exit_code == 1
    assert result.output.startswith("error: search tiny exists with other settings (model_config)")
    assert "Traceback" not in result.output


def scalar_values(folder, tag):
    """The values of a scalar summary, by step, from the TensorBoard events under `folder`."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in Path(folder).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        if tag in acc.Tags()["tensors"]:
            values.update({e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)})
    return [values[step] for step in sorted(values)]


def test_search_trains_like_train_with_the_recipe_options(crema_subset, workdir):
    """Model and optimiser options of `train` reach every trial: the shipped recipe can be tuned."""
    from serkeras.models import load_model

    recipe = ["--arch", "resnet", "--width", "0.125", "--pooling", "attention", "--utterance-norm", "mean",
              "--augment", "--optimizer", "adamw", "--schedule", "cosine", "--warmup-epochs", "1",
              "--label-smoothing", "0.1", "--ema-momentum", "0.5", "--augment-copies", "1", "--speed", "0.1",
              "--class-weight", "--mixup", "0.2"]
    args = ["tune", "--data-dir", str(crema_subset), "--cache-dir", str(workdir / "cache"), "--search-name", "recipe",
            *TINY, "--max-trials", "1", "--epochs", "2", *recipe]
    result = run_cli(args, workdir)
    assert result.exit_code == 0, result.output
    search_dir = workdir / "saved_models" / "recipe"
    _, meta = load_model(search_dir / "best.keras")
    config = meta.model_config
    assert (config.arch, config.pooling, config.utterance_norm, config.spec_augment) == ("resnet", "attention", "mean",
                                                                                          True)
    training = json.loads((search_dir / "search.json").read_text())["settings"]["train_config"]
    assert (training["optimizer"], training["schedule"], training["warmup_epochs"]) == ("adamw", "cosine", 1)
    assert training["label_smoothing"] == 0.1 and "learning_rate" not in training  # searched, not fixed
    assert (training["ema_momentum"], training["augment_copies"], training["speed"], training["class_weight"],
            training["mixup_alpha"]) == (0.5, 1, 0.1, True, 0.2)
    copies = re.search(r"training part: (\d+) clips, of which (\d+) augmented copies", result.output)
    assert copies and int(copies.group(1)) == 2 * int(copies.group(2)) > 0, result.output

    # Warm-up to the searched rate in epoch 1, cosine decay towards 0 by the end of epoch 2.
    trial_id = read_rows(search_dir / "trials.csv")[0]["trial_id"]
    rates = scalar_values(workdir / "logs" / "recipe" / trial_id, "epoch_learning_rate")
    best = json.loads((search_dir / "best.json").read_text())["hyperparameters"]["learning_rate"]
    assert len(rates) == 2 and rates[0] == pytest.approx(best, rel=0.05) and rates[1] < 0.01 * best

    # Another schedule is another search: resuming it is refused and says why.
    result = CliRunner().invoke(main, args + ["--schedule", "plateau", "--output-dir", str(workdir / "saved_models")])
    assert result.exit_code == 1 and "exists with other settings (train_config)" in result.output, result.output


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def event_pids(folder):
    """Process ids in the names of TensorBoard event files (events.out.tfevents.<time>.<host>.<pid>.<n>.v2)."""
    return {int(p.name.split(".")[-3]) for p in Path(folder).rglob("events.out.tfevents.*")}


def test_distributed_chief_and_two_workers(crema_subset, workdir):
    """KerasTuner's own distribution on loopback: the chief serves the oracle, the workers run the trials."""
    port = free_port()
    args = [sys.executable, "-m", "serkeras.cli", *tune_args(crema_subset, workdir), "--search-name", "dist",
            "--output-dir", str(workdir / "dist_models"), "--log-dir", str(workdir / "dist_logs")]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # gRPC would honour a proxy
    env.update(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port), NO_PROXY="127.0.0.1",
               no_proxy="127.0.0.1", TF_CPP_MIN_LOG_LEVEL="3")
    procs, logs = {}, {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            logs[tuner_id] = open(workdir / f"{tuner_id}.log", "w+")
            procs[tuner_id] = subprocess.Popen(args, cwd=workdir, env={**env, "KERASTUNER_TUNER_ID": tuner_id},
                                               stdout=logs[tuner_id], stderr=subprocess.STDOUT,
                                               start_new_session=True)
        deadline = time.time() + 420
        for tuner_id, proc in procs.items():
            proc.wait(timeout=max(1, deadline - time.time()))
        outputs = {}
        for tuner_id, f in logs.items():
            f.seek(0)
            outputs[tuner_id] = f.read()
        for tuner_id, proc in procs.items():
            assert proc.returncode == 0, f"{tuner_id} exited {proc.returncode}:\n{outputs[tuner_id][-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in logs.values():
            f.close()

    search_dir = workdir / "dist_models" / "dist"
    rows = read_rows(search_dir / "trials.csv")
    assert len(rows) == 2
    statuses = [json.loads(v)["status"] for v in trial_files(search_dir / "tuner").values()]
    assert statuses == ["COMPLETED", "COMPLETED"]
    assert "2 completed trials, best first" in outputs["chief"] and (search_dir / "best.keras").is_file()
    for worker in ("tuner0", "tuner1"):
        assert "no trials left; the chief writes the results" in outputs[worker]
        assert "completed trials, best first" not in outputs[worker]
    # The trials were trained by the workers: their TensorBoard files carry the workers' process ids.
    workers = {procs["tuner0"].pid, procs["tuner1"].pid}
    for row in rows:
        pids = event_pids(workdir / "dist_logs" / "dist" / row["trial_id"])
        assert pids and pids <= workers, (pids, workers, procs["chief"].pid)


def test_a_search_stored_before_a_setting_existed_resumes_with_its_default(tmp_path):
    from serkeras import tuning
    from serkeras.errors import SerkerasError
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig
    from serkeras.training import TrainConfig

    def settings(**training):
        return tuning.search_settings(FeatureConfig(), ModelConfig(arch="resnet"), TrainConfig(**training),
                                      {"split": "actor", "seed": 0}, "random", "val_accuracy", False, False)

    stored = json.loads(json.dumps(settings()))
    del stored["train_config"]["ema_momentum"], stored["model_config"]["pooling"]  # as an older serkeras wrote it
    (tmp_path / "search.json").write_text(json.dumps({"settings": stored}))
    assert tuning.check_resumable(tmp_path, settings())
    with pytest.raises(SerkerasError, match=r"other settings \(train_config\)"):
        tuning.check_resumable(tmp_path, settings(ema_momentum=0.9))
    with pytest.raises(SerkerasError, match=r"other settings \(train_config\)"):
        tuning.check_resumable(tmp_path, settings(label_smoothing=0.1))
