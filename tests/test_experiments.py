"""experiments/study.py: the runs it plans are the study's grid, and every command is one `serkeras train` accepts."""

import importlib.util
from pathlib import Path

from serkeras.cli import main

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "study.py"


def load_study():
    spec = importlib.util.spec_from_file_location("study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_question_runs_on_both_splits_and_shared_runs_train_once():
    study = load_study()
    runs = {r for q in study.QUESTIONS for s in study.SPLITS for r in study.question_runs(q, s)}
    assert len(runs) == 24  # 18 activation x arch + 4 more learning rates + 2 fixed-length
    for split in study.SPLITS:
        assert {(r.arch, r.activation) for r in study.question_runs("activation", split)} == {
            (a, act) for a in ("1d", "2d", "combined") for act in ("relu", "silu", "elu")}
        assert {r.learning_rate for r in study.question_runs("learning_rate", split)} == {1e-2, 1e-3, 1e-4}
        assert {r.length for r in study.question_runs("length", split)} == {"fixed", "variable"}
    assert len({r.name for r in runs}) == len(runs)


def test_commands_are_valid_train_invocations():
    study = load_study()
    budget = {"width": 0.25, "epochs": 10, "hop_length": 320, "n_mels": 40, "schedule": "cosine", "seed": 0}
    assert study.Run("1d", seed=2).name.endswith("-seed2") and "seed" not in study.Run("1d").name
    for resume in (False, True):
        command = study.train_command(study.Run("combined", "elu", 1e-2, "fixed", "actor", 3), "/data", budget, resume)
        assert command[:2] == ["serkeras", "train"]
        context = main.commands["train"].make_context("train", command[2:])
        assert context.params["arch"] == "combined" and context.params["length_mode"] == "fixed"
        assert context.params["learning_rate"] == 1e-2 and context.params["hop_length"] == 320
        assert context.params["resume"] is resume and context.params["seed"] == 3


def test_accuracy_interval():
    study = load_study()
    assert abs(study.accuracy_interval(0.5, 600) - 0.04) < 1e-3
    assert study.accuracy_interval(1.0, 100) == 0.0
