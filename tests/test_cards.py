"""`serkeras card`: a model card computed from the model file, its run and the corpus, its notes kept."""

import json

import numpy as np
import pytest

from conftest import run_cli
from serkeras.cards import (cross_validation_lines, fold_results, held_out_results, previous_notes, public_path,
                            speaker_bootstrap, write_model_card)
from serkeras.corpus import CREMA_D_LABELS, listener_votes, vote_credit
from serkeras.errors import SerkerasError
from whisper_checkpoints import random_encoder_weights, write_ctranslate2


def test_listener_votes_keep_ties_and_speaker_bootstrap_resamples_speakers(crema_root):
    votes = listener_votes(crema_root / "summaryTable.csv")
    assert len(votes) == 5968 and votes["1003_IEO_NEU_XX"] == ("neutral",)
    assert all(set(v) <= set(CREMA_D_LABELS) for v in votes.values())
    assert vote_credit(("neutral", "sad"), "sad") == 0.5 and vote_credit(("anger",), "sad") == 0.0
    # Two speakers, one always right, one always wrong: resampling speakers spans 0 to 1.
    right = np.array([1.0] * 10 + [0.0] * 10)
    low, high = speaker_bootstrap(["a"] * 10 + ["b"] * 10, lambda i: right[i].mean(), draws=200)
    assert low == 0.0 and high == 1.0
    low, high = speaker_bootstrap(["a"] * 10 + ["b"] * 10, lambda i: 0.7, draws=50)
    assert low == high == 0.7


def test_cross_validated_scores_come_from_the_folds(tmp_path):
    for k, (accuracy, ua) in enumerate([(0.6, 0.5), (0.8, 0.7)]):
        fold = tmp_path / f"fold{k}"
        fold.mkdir()
        (fold / "config.json").write_text(json.dumps({"n_folds": 5}))
        (fold / "metrics.json").write_text(json.dumps(
            {"test": {"accuracy": accuracy, "unweighted_average_recall": ua, "macro_f1": 0.5}}))
    lines = "\n".join(cross_validation_lines(fold_results(tmp_path)))
    assert "each of 5 folds" in lines and "2 finished" in lines
    assert "| all | 2 | 70.0 ± 10.0 | 60.0 ± 10.0 | 0.500 |" in lines
    with pytest.raises(SerkerasError, match="no finished fold"):
        fold_results(tmp_path / "fold0")
    (tmp_path / "fold1" / "config.json").unlink()  # a fold cut short: one line naming the file
    with pytest.raises(SerkerasError, match="fold1/config.json"):
        fold_results(tmp_path)


def _held_out_report(folder, seed, corpora=("alpha", "beta"), accuracy=0.5):
    """A `serkeras cross-corpus` report in `folder`, as its runs would leave it."""
    scores = {"clips": 4, "accuracy": accuracy, "UA": accuracy, "macro_f1": accuracy}
    rows = [{"corpus": name, **scores} for name in corpora] + [{"corpus": "mean", **scores}]
    for name in corpora:
        run = folder / f"held-out-{name}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"held_out": name, "corpora": list(corpora), "seed": seed,
                                                     "train_config": {"seed": seed, "class_weight": True}}))
    (folder / "cross-corpus.json").write_text(json.dumps(rows))
    return rows


def test_a_leave_one_corpus_out_run_is_read_per_seed_and_a_broken_one_is_one_line(tmp_path):
    from serkeras.cards import _same_training, held_out_lines

    with pytest.raises(SerkerasError, match="holds no finished report"):
        held_out_results(tmp_path)
    rows = _held_out_report(tmp_path / "seed4", 4, accuracy=0.6)
    _held_out_report(tmp_path / "seed3", 3, accuracy=0.4)
    (tmp_path / "seeds").mkdir()  # not a seed's folder: ignored
    results = held_out_results(tmp_path)
    assert [seed for seed, _, _ in results] == [3, 4] and results[1][1] == rows
    lines = "\n".join(held_out_lines(results, ["anger"]))
    assert "over 2 training seeds (3, 4)" in lines and "alpha held out: beta" in lines
    assert "| alpha | 4 | 50.0 ± 10.0 | 50.0 ± 10.0 | 0.500 ± 0.100 |" in lines
    with pytest.raises(SerkerasError, match="differs in class_weight"):
        _same_training(results[0][2][0], {"train_config": {"seed": 0, "class_weight": False}}, "loco")
    _same_training(results[0][2][0], {"train_config": {"seed": 9, "class_weight": True}}, "loco")  # seeds may differ

    (tmp_path / "seed4" / "held-out-beta" / "config.json").write_text(json.dumps({"seed": 4}))
    with pytest.raises(SerkerasError, match="not the settings of the run that held out beta"):
        held_out_results(tmp_path)
    (tmp_path / "seed4" / "held-out-beta" / "config.json").unlink()
    with pytest.raises(SerkerasError, match="seed4/held-out-beta/config.json"):
        held_out_results(tmp_path)
    (tmp_path / "seed4" / "cross-corpus.json").write_text("{}")
    with pytest.raises(SerkerasError, match="is not a leave-one-corpus-out report"):
        held_out_results(tmp_path)
    _held_out_report(tmp_path / "seed5", 3)  # the same training seed twice
    (tmp_path / "seed4" / "cross-corpus.json").unlink()
    with pytest.raises(SerkerasError, match="two reports trained with seed 3"):
        held_out_results(tmp_path)
    _held_out_report(tmp_path / "seed6", 6, corpora=("alpha", "gamma"))
    (tmp_path / "seed5" / "cross-corpus.json").unlink()
    with pytest.raises(SerkerasError, match="holds other corpora than"):
        held_out_results(tmp_path)


def test_the_training_line_says_what_the_copies_and_the_loss_did():
    from serkeras.cards import training_lines

    config = {"corpus": "x", "split": "actor", "train_config": {
        "optimizer": "adam", "learning_rate": 1e-3, "batch_size": 32, "epochs": 30, "augment_copies": 1,
        "noise_snr_db": [10, 30], "gain_db": 0.0, "shift_seconds": 0.25, "speed": 0.0, "reverb": 0.5,
        "class_weight": True, "label_smoothing": 0.1}}
    line = training_lines(config, {})[1]
    assert "1 augmented copy of every training clip (noise, shift; a synthetic room in 50% of them)" in line
    assert "each class weighted by the inverse of its share" in line and "label smoothing 0.1" in line
    config["train_config"].update(augment_copies=0, class_weight=False, label_smoothing=0.0)
    line = training_lines(config, {})[1]
    assert "cop" not in line and "weighted" not in line and "smoothing" not in line


def test_the_unweighted_recall_interval_is_over_the_classes_each_resample_has():
    """A perfect model has UA 1 in every resample, even one that misses some class."""
    from serkeras.cards import results_lines
    from serkeras.corpus import Clip

    clips = [Clip(f"{s}-{k}.wav", "anger", speaker=s) for s, k in zip("abcd", range(4))]
    y = np.array([0, 1, 2, 3])
    report = {"n": 4, "accuracy": 1.0, "unweighted_average_recall": 1.0, "macro_f1": 1.0,
              "per_class": {l: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for l in "wxyz"},
              "confusion_matrix": np.eye(4, dtype=int).tolist()}
    lines = "\n".join(results_lines(report, clips, y, y, list("wxyz"), "toy"))
    assert "| toy | 4 | 4 | 100.0% (100.0-100.0) | 100.0% (100.0-100.0) |" in lines


def test_a_card_of_a_trained_run_is_its_test_scores_with_its_notes_kept(crema_subset, workdir, tmp_path):
    """The card of a Whisper model trained by the speaker-norm recipe on real clips (tiny random encoder): the
    run's data and split are found from the run folder, its test accuracy is the run's own, the speaker statistics
    table and the CREMA-D listeners' comparison are there, no machine path is, and a hand-written Notes section
    survives rewriting the card."""
    encoder = tmp_path / "tiny-whisper"
    encoder.mkdir()
    write_ctranslate2(encoder, random_encoder_weights(np.random.default_rng(5), 80, 16, 2), heads=2)
    trained = run_cli(["train", "--recipe", "crema-d-whisper-speaker-norm", "--encoder", str(encoder), "--data-dir",
                       str(crema_subset), "--run-name", "card-sn", "--quiet", "--workers", "1"], workdir)
    assert trained.exit_code == 0, trained.output
    card_path = tmp_path / "MODEL_CARD.md"
    written = run_cli(["card", "saved_models/card-sn", "--output", str(card_path)], workdir)
    assert written.exit_code == 0, written.output
    card = card_path.read_text()
    assert card.startswith("# Model card: `card-sn`")
    assert "`serkeras card saved_models/card-sn --split actor`" in card
    assert "serkeras predict --model saved_models/card-sn/model.keras recordings_of_one_speaker/" in card
    assert "the classifier fit as a logistic regression by L-BFGS" in card
    assert "chose the classifier's L2 strength" in card
    assert "as if those were 5 more recordings" in card
    metrics = json.loads((workdir / "saved_models" / "card-sn" / "metrics.json").read_text())["test"]
    assert f"| crema-d | {metrics['n']} | " in card  # one CREMA-D folder
    assert f"| {100 * metrics['accuracy']:.1f}% (" in card  # the model file, rescored, says what the run said
    assert "| the clip alone (`serkeras predict --speaker file`) |" in card
    assert "## Compared with human listeners" in card
    assert str(crema_subset) not in card and str(workdir) not in card and str(tmp_path) not in card

    # Only the run's own split: another split's test part may hold speakers the model was trained on.
    for options, message in ((["--seed", "1"], "trained on another split"), (["--split", "random"], "not random")):
        refused = run_cli(["card", "saved_models/card-sn", "--output", str(tmp_path / "x.md"), *options], workdir)
        assert refused.exit_code == 1 and message in refused.output and "Traceback" not in refused.output
    # A run of the same settings elsewhere is named apart; a run of another model is refused before any scoring.
    other = tmp_path / "other-run"
    other.mkdir()
    config = json.loads((workdir / "saved_models" / "card-sn" / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config))
    named = run_cli(["card", "saved_models/card-sn", "--run", str(other), "--output", str(tmp_path / "y.md")],
                    workdir)
    assert named.exit_code == 0, named.output
    titled = (tmp_path / "y.md").read_text()
    assert titled.startswith("# Model card: `card-sn`") and f"--run {tmp_path.name}/other-run" in titled
    config["model_config"]["dropout"] = 0.5
    (other / "config.json").write_text(json.dumps(config))
    refused = run_cli(["card", "saved_models/card-sn/model.keras", "--run", str(other), "--output",
                       str(tmp_path / "z.md")], workdir)
    assert refused.exit_code == 1 and "run of another model" in refused.output and "dropout" in refused.output
    assert not (tmp_path / "z.md").exists()

    # Rewriting the card (`serkeras card` ends with `write_model_card`) keeps what was written by hand.
    card_path.write_text(card + "\n## Notes \n\nWritten by hand.\n")
    assert previous_notes(card_path) == ["", "## Notes ", "", "Written by hand."]
    write_model_card(card_path, card)
    again = card_path.read_text()
    assert again.count("## Notes") == 1 and again.endswith("## Notes \n\nWritten by hand.\n")
    assert again.split("## Notes")[0].rstrip() == card.rstrip()


def test_card_errors_are_one_line(workdir, tmp_path):
    missing = run_cli(["card", str(tmp_path / "missing.keras"), "--output", str(tmp_path / "card.md")], workdir)
    assert missing.exit_code != 0 and "Traceback" not in missing.output
    assert not (tmp_path / "card.md").exists()
    no_run = tmp_path / "empty-run"
    no_run.mkdir()
    result = run_cli(["card", str(no_run), "--output", str(tmp_path / "card.md")], workdir)
    assert result.exit_code != 0 and "model.keras does not exist" in result.output and "Traceback" not in result.output


def test_public_path_keeps_at_most_the_last_two_parts_as_given():
    assert public_path("/home/someone/data/emodb/manifest.csv") == "emodb/manifest.csv"
    assert public_path("model.keras") == "model.keras" and public_path("/x.keras") == "x.keras"
    assert public_path("../shared/data/crema-d/audio") == "crema-d/audio"
