"""`serkeras card`: a model card computed from the model file, its run and the corpus, its notes kept."""

import json

import numpy as np
import pytest

from conftest import run_cli
from serkeras.cards import cross_validation_lines, previous_notes, public_path, speaker_bootstrap
from serkeras.corpus import CREMA_D_LABELS, listener_votes, vote_credit
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
    lines = "\n".join(cross_validation_lines(tmp_path))
    assert "each of 5 folds" in lines and "2 finished" in lines
    assert "| all | 2 | 70.0 ± 10.0 | 60.0 ± 10.0 | 0.500 |" in lines
    with pytest.raises(Exception, match="no finished fold"):
        cross_validation_lines(tmp_path / "fold0")


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
    assert "`serkeras card card-sn --split actor`" in card.replace("saved_models/card-sn", "card-sn")
    assert "serkeras predict --model saved_models/card-sn/model.keras recordings_of_one_speaker/" in card
    assert "the classifier fit by L-BFGS" in card and "as if those were 5 more recordings" in card
    metrics = json.loads((workdir / "saved_models" / "card-sn" / "metrics.json").read_text())["test"]
    assert f"| crema-d | {metrics['n']} | " in card  # one CREMA-D folder
    assert f"| {100 * metrics['accuracy']:.1f}% (" in card  # the model file, rescored, says what the run said
    assert "| the clip alone (`serkeras predict --speaker file`) |" in card
    assert "## Compared with human listeners" in card
    assert str(crema_subset) not in card and str(workdir) not in card and str(tmp_path) not in card

    card_path.write_text(card + "\n## Notes\n\nWritten by hand.\n")
    assert previous_notes(card_path) == ["", "## Notes", "", "Written by hand."]
    rewritten = run_cli(["card", "saved_models/card-sn", "--output", str(card_path)], workdir)
    assert rewritten.exit_code == 0, rewritten.output
    again = card_path.read_text()
    assert again.count("## Notes") == 1 and again.endswith("## Notes\n\nWritten by hand.\n")
    assert again.split("## Notes")[0].rstrip() == card.rstrip()


def test_card_errors_are_one_line(workdir, tmp_path):
    missing = run_cli(["card", str(tmp_path / "missing.keras"), "--output", str(tmp_path / "card.md")], workdir)
    assert missing.exit_code != 0 and "Traceback" not in missing.output
    assert not (tmp_path / "card.md").exists()
    no_run = tmp_path / "empty-run"
    no_run.mkdir()
    result = run_cli(["card", str(no_run), "--output", str(tmp_path / "card.md")], workdir)
    assert result.exit_code != 0 and "config.json" in result.output and "Traceback" not in result.output


def test_public_path_keeps_the_last_two_parts():
    assert public_path("/home/someone/data/emodb/manifest.csv") == "emodb/manifest.csv"
