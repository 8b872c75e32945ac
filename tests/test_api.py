"""serkeras.api: the Python functions the commands are made of, called directly, and `train --folds` resumed."""

import json
from pathlib import Path

import pytest

from conftest import run_cli
from serkeras import api
from serkeras.errors import SerkerasError
from serkeras.inference import Prediction

TINY = ["--arch", "1d", "--width", "0.0625", "--head-units", "16", "--batch-size", "16", "--epochs", "1",
        "--quiet", "--workers", "1"]


@pytest.fixture(scope="module")
def twelve_actors(tmp_path_factory, crema_root, crema_dir):
    """One sentence of 12 actors, as symlinks: enough speakers for every fold of a 3-fold split."""
    audio = tmp_path_factory.mktemp("twelve-actors") / "audio"
    audio.mkdir()
    for path in sorted(Path(crema_dir).glob("*_DFA_*.ogg")):
        if int(path.stem[:4]) <= 1012:
            (audio / path.name).symlink_to(path)
    (audio.parent / "VideoDemographics.csv").write_text((Path(crema_root) / "VideoDemographics.csv").read_text())
    return audio


def test_predictions_format_as_a_table_json_and_csv():
    labels = ["anger", "sad"]
    windows = [(0.0, 4.0, "sad", {"anger": 0.4, "sad": 0.6}), (2.0, 5.0, "sad", {"anger": 0.1, "sad": 0.9})]
    predictions = [Prediction("a, b.wav", "sad", {"anger": 0.25, "sad": 0.75}, 5.0, windows),
                   Prediction("c.wav", "anger", {"anger": 0.5, "sad": 0.5}, 1.0, [])]
    table = api.format_predictions(predictions, labels).splitlines()
    assert table[0].split() == ["file", "emotion", "anger", "sad"]
    assert table[1].split() == ["a,", "b.wav", "sad", "0.250", "0.750"] and table[2].split() == ["0.0-", "4.0", "s", "sad"]
    assert len(table) == 5 and table[4].split() == ["c.wav", "anger", "0.500", "0.500"]
    rows = json.loads(api.format_predictions(predictions, labels, "json"))
    assert rows[0]["timeline"][1] == {"start": 2.0, "end": 5.0, "label": "sad", "probabilities": {"anger": 0.1, "sad": 0.9}}
    assert api.format_predictions(predictions, labels, "csv") == ('path,label,anger,sad\n"a, b.wav",sad,0.2500,0.7500\n'
                                                                  'c.wav,anger,0.5000,0.5000\n')
    with pytest.raises(SerkerasError, match="unknown prediction format 'xml'"):
        api.format_predictions(predictions, labels, "xml")


def test_folds_are_summarised_by_mean_and_standard_deviation(tmp_path):
    results = [{"test": {"accuracy": a, "unweighted_average_recall": a - 0.1, "macro_f1": a - 0.2}} for a in (0.6, 0.8)]
    summary = api.summarise_folds(results, tmp_path)
    assert summary["accuracy"]["folds"] == [0.6, 0.8]
    assert (summary["accuracy"]["mean"], summary["accuracy"]["std"]) == pytest.approx((0.7, 0.1))
    assert json.loads((tmp_path / "kfold.json").read_text()) == summary
    assert api.format_fold_summary(summary) == ("2-fold test accuracy 0.7000 ± 0.1000, UA 0.6000 ± 0.1000, "
                                                "macro-F1 0.5000 ± 0.1000")


def test_folds_over_several_corpora_are_also_summarised_per_corpus(tmp_path):
    """Each corpus's test clips of every fold (scored on its classes): a k-fold table within each corpus."""
    def report(accuracy):
        return {"accuracy": accuracy, "unweighted_average_recall": accuracy - 0.05, "macro_f1": accuracy - 0.1}

    results = [{"test": report(a), "test_by_corpus": {"crema-d": report(a - 0.1), "ased": report(b)}}
               for a, b in ((0.6, 0.9), (0.8, 0.7))]
    summary = api.summarise_folds(results, tmp_path)
    assert summary["accuracy"]["folds"] == [0.6, 0.8]
    assert list(summary["by_corpus"]) == ["ased", "crema-d"]
    assert summary["by_corpus"]["ased"]["accuracy"]["folds"] == [0.9, 0.7]
    assert (summary["by_corpus"]["crema-d"]["macro_f1"]["mean"],
            summary["by_corpus"]["crema-d"]["macro_f1"]["std"]) == pytest.approx((0.5, 0.1))
    assert json.loads((tmp_path / "kfold.json").read_text())["by_corpus"] == summary["by_corpus"]
    lines = api.format_fold_summary(summary).splitlines()
    assert lines[0].startswith("2-fold test accuracy 0.7000 ± 0.1000")
    assert lines[2].split() == ["corpus", "folds", "accuracy", "UA", "macro-F1"]
    assert lines[3].split() == ["ased", "2", "0.8000", "±", "0.1000", "0.7500", "±", "0.1000", "0.7000", "±", "0.1000"]
    assert lines[4].split()[:5] == ["crema-d", "2", "0.6000", "±", "0.1000"]
    # A single corpus keeps the one line.
    assert "by_corpus" not in api.summarise_folds([{"test": report(0.5)}])


def test_a_split_is_made_from_its_settings(twelve_actors):
    corpus, split = api.load_split(str(twelve_actors), None, api.SplitSettings("kfold", fold=1, n_folds=3), training=True)
    assert split.description.startswith("kfold") and len(split.train) + len(split.val) + len(split.test) == len(corpus)
    assert {c.speaker for c in split.test}.isdisjoint(c.speaker for c in split.train)
    assert api.SplitSettings("actor").to_dict(fold=2) == {"split": "actor", "fold": 2, "n_folds": 5,
                                                          "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0}


@pytest.mark.slow
def test_every_fold_trains_and_a_resumed_run_keeps_its_finished_folds(twelve_actors, workdir):
    """`train --folds` writes a run per fold and kfold.json; resumed, a finished run does nothing, and a run whose
    summary is missing keeps its folds and summarises them again without training."""
    args = ["train", "--data-dir", str(twelve_actors), "--split", "kfold", "--n-folds", "3", "--folds",
            "--run-name", "folds", "--cache-dir", str(workdir / "cache"), *TINY]
    result = run_cli(args, workdir)
    assert result.exit_code == 0, result.output
    run = workdir / "saved_models" / "folds"
    summary = json.loads((run / "kfold.json").read_text())
    folds = [json.loads((run / f"fold{k}" / "metrics.json").read_text())["test"]["accuracy"] for k in range(3)]
    assert summary["accuracy"]["folds"] == folds
    assert api.format_fold_summary(summary) in result.output.splitlines()
    resume = ["train", "--resume", "--run-name", "folds", "--quiet", "--workers", "1"]
    result = run_cli(resume, workdir)
    assert result.exit_code == 0 and result.output.strip() == "run folds already finished; nothing to resume"
    (run / "kfold.json").unlink()
    resumed = api.resumed_run(run)
    assert resumed.run.all_folds and resumed.finished_folds == [0, 1, 2] and not resumed.finished
    assert resumed.run.split == api.SplitSettings("kfold", n_folds=3) and resumed.run.train_config.epochs == 1
    result = run_cli(resume, workdir)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "resuming folds with its stored settings (finished folds kept: 0, 1, 2)"
    assert json.loads((run / "kfold.json").read_text()) == summary
    with pytest.raises(SerkerasError, match="nothing to resume"):
        api.resumed_run(workdir / "saved_models" / "no-such-run")
