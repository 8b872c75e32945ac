"""Write saved_models/MODEL_CARD.md for a shipped model from its predictions on unseen actors.

Used by ``python experiments/accuracy.py ship``; everything in the card is computed
here from the model file, the corpus and the finished runs, nothing is typed in.
"""

import csv
import json
from pathlib import Path

import numpy as np

#: CREMA-D's VoiceVote letters (summaryTable.csv) -> the corpus's label codes.
VOTE_LABELS = {"A": "ANG", "D": "DIS", "F": "FEA", "H": "HAP", "N": "NEU", "S": "SAD"}
BOOTSTRAP = 2000


def human_votes(summary_csv):
    """{clip name: tuple of labels} of the listeners' audio-only majority vote (ties keep every winner)."""
    with open(summary_csv, newline="") as f:
        return {row["FileName"]: tuple(VOTE_LABELS[v] for v in row["VoiceVote"].split(":"))
                for row in csv.DictReader(f) if row["VoiceVote"]}


def vote_credit(votes, label):
    """1/k if `label` is among the k tied winners, else 0: the accuracy of breaking ties at random."""
    return 1.0 / len(votes) if label in votes else 0.0


def actor_bootstrap(actors, statistic, seed=0):
    """95% interval of `statistic(indices)` when whole actors are resampled with replacement.

    Clips of one actor are not independent, so resampling actors (not clips) gives
    an honest interval for accuracy on new speakers.
    """
    rng = np.random.default_rng(seed)
    actors = np.asarray(actors)
    groups = [np.flatnonzero(actors == a) for a in np.unique(actors)]
    draws = []
    for _ in range(BOOTSTRAP):
        picked = rng.integers(0, len(groups), len(groups))
        draws.append(statistic(np.concatenate([groups[i] for i in picked])))
    return np.percentile(draws, [2.5, 97.5])


def test_predictions(model_path, data_dir):
    """The shipped model's predictions on the test actors of the split it was trained on."""
    from serkeras.cache import cached_features
    from serkeras.corpus import load_corpus
    from serkeras.evaluation import predict_features
    from serkeras.models import load_model
    from serkeras.splits import make_split

    model, meta = load_model(model_path)
    corpus = load_corpus(data_dir, None)
    split = make_split(corpus.clips, "actor", 0.1, 0.1, seed=0)
    kept, features = cached_features(split.test, meta.feature_config).of(split.test)
    config = meta.feature_config
    probabilities = predict_features(model, features, config.length_mode, config.fixed_frames)
    return model, meta, corpus, split, kept, probabilities


def write_model_card(model_path, card_path, data_dir, recipe, command, results, kfold_runs):
    from sklearn.metrics import accuracy_score, f1_score

    from serkeras.evaluation import classification_report
    from serkeras.models.cost import flops_per_clip

    model, meta, corpus, split, clips, probabilities = test_predictions(model_path, data_dir)
    labels = list(meta.labels)
    y_true = np.asarray(corpus.label_indices(clips))
    y_pred = probabilities.argmax(axis=1)
    report = classification_report(y_true, y_pred, labels, groups={"sex": [c.sex for c in clips]})
    actors = [c.speaker for c in clips]
    acc_ci = actor_bootstrap(actors, lambda i: accuracy_score(y_true[i], y_pred[i]))
    f1_ci = actor_bootstrap(actors, lambda i: f1_score(y_true[i], y_pred[i], average="macro",
                                                             labels=range(len(labels)), zero_division=0))
    run = results.get(f"{recipe}-actor", {})
    record = run.get("record") or {}

    # summaryTable.csv sits next to the audio folder in the CREMA-D layout.
    votes = human_votes(Path(clips[0].path).resolve().parent.parent / "summaryTable.csv")
    voted = np.array([c.name in votes for c in clips])
    human = np.array([vote_credit(votes.get(c.name, ()), c.label) for c in clips])
    agree = np.array([vote_credit(votes.get(c.name, ()), labels[p]) for c, p in zip(clips, y_pred)])
    human_ci = actor_bootstrap(actors, lambda i: human[i][voted[i]].mean())

    size = Path(model_path).stat().st_size / 2**20
    mflops = flops_per_clip(model, meta.feature_config) / 1e6
    n_actors = {part: len({c.speaker for c in clips_}) for part, clips_ in split.parts().items()}
    lines = [
        "# Model card: `serkeras-crema-d.keras`", "",
        "Speech emotion recognition for six acted emotions (anger, disgust, fear, happy, neutral, sad) "
        "from 16 kHz speech. Written by `python experiments/accuracy.py ship`; every number below is computed "
        "from the model file and the corpus by `experiments/model_card.py`.", "",
        "## Use", "",
        "```", "serkeras predict my_recording.wav        # uses this model when --model is not given",
        "serkeras evaluate saved_models/serkeras-crema-d.keras --split actor", "```", "",
        "In Python: `model, meta = serkeras.models.load_model(path)`; `meta.labels`, `meta.feature_config` "
        "(features are recomputed by `serkeras.inference.predict_files`).", "",
        "## Model", "",
        f"- Recipe `{recipe}` of `experiments/accuracy.py`: architecture `{meta.model_config.arch}`, "
        f"width {meta.model_config.width:g}, pooling `{meta.model_config.pooling}`, per-utterance normalisation "
        f"`{meta.model_config.utterance_norm}`, activation `{meta.model_config.activation}`.",
        f"- {model.count_params():,} parameters; {size:.1f} MiB on disk; {mflops:.0f} MFLOPs per 2.5 s clip "
        "(forward pass, TensorFlow profiler).",
        f"- Features (stored in the file): {meta.feature_config.n_mels} log-mel bands and "
        f"{meta.feature_config.n_spectral} spectral columns (MFCCs, deltas, spectral descriptors"
        f"{', log F0 and its delta' if meta.feature_config.pitch else ''}) every "
        f"{1000 * meta.feature_config.hop_length / meta.feature_config.sample_rate:.0f} ms at "
        f"{meta.feature_config.sample_rate} Hz, {meta.feature_config.length_mode}-length input; "
        "corpus-level standardisation statistics from the training actors are inside the model.", "",
        "## Training", "",
        f"- Command: `{command}` (it runs `{record.get('command', 'serkeras train ...')}`).",
        f"- Data: CREMA-D, the 73 development actors in `../shared/data/crema-d/` (the 18 held-back actors were "
        f"never used). Split `actor`, seed 0 ({split.description}): train {len(split.train)} clips of "
        f"{n_actors['train']} actors, validation {len(split.val)} clips of {n_actors['val']} actors (checkpoint "
        f"choice), test {len(split.test)} clips of {n_actors['test']} actors (below). No actor is in two parts.",
    ]
    if record:
        lines.append(f"- Trained {record.get('started', '')}, {run['metrics']['train_seconds'] / 60:.0f} min of "
                     f"training on: {'; '.join(record.get('machine', []))}.")
    lines += [
        "", "## Results on the test actors (never heard in training)", "",
        f"- Accuracy **{100 * report['accuracy']:.1f}%** (95% CI {100 * acc_ci[0]:.1f}-{100 * acc_ci[1]:.1f}%), "
        f"macro-F1 **{report['macro_f1']:.3f}** (95% CI {f1_ci[0]:.3f}-{f1_ci[1]:.3f}) on {report['n']} clips of "
        f"{n_actors['test']} actors. Intervals: {BOOTSTRAP} bootstrap resamples of whole actors.",
        "- By sex: " + ", ".join(f"{sex} {100 * acc:.1f}% ({sum(c.sex == sex for c in clips)} clips)"
                                 for sex, acc in report["accuracy_by_sex"].items()) + ".",
        "", "| emotion | precision | recall | F1 | clips |", "| --- | --- | --- | --- | --- |"]
    for label in labels:
        c = report["per_class"][label]
        lines.append(f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    lines += ["", "Confusion matrix (rows: acted emotion; columns: prediction):", "",
              "| | " + " | ".join(labels) + " |", "|" + " --- |" * (len(labels) + 1)]
    for label, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"| **{label}** | " + " | ".join(str(v) for v in row) + " |")
    folds = [results[n]["metrics"]["test"] for n in kfold_runs if n in results]
    lines += ["", "## The same recipe on other unseen actors: 5-fold cross-validation by actor", ""]
    if folds:
        accs = np.array([f["accuracy"] for f in folds])
        f1s = np.array([f["macro_f1"] for f in folds])
        lines += [f"Folds finished: {len(folds)} of {len(kfold_runs)}. Accuracy per fold: "
                  + ", ".join(f"{100 * a:.1f}%" for a in accs)
                  + f"; mean {100 * accs.mean():.1f}% ± {100 * accs.std(ddof=1) if len(accs) > 1 else 0:.1f} (std); "
                  f"macro-F1 {f1s.mean():.3f} ± {f1s.std(ddof=1) if len(f1s) > 1 else 0:.3f}. Each fold trains a "
                  "new model from scratch (`python experiments/accuracy.py run "
                  f"{recipe} --split kfold`); the shipped file is the actor-split model only."]
    else:
        lines += ["Not run yet: `python experiments/accuracy.py run " f"{recipe} --split kfold`."]
    lines += [
        "", "## Compared with human listeners on the same clips", "",
        "CREMA-D's `summaryTable.csv` gives, per clip, the majority emotion chosen by crowd-sourced listeners who "
        "heard the audio only (`VoiceVote`). A tie between k emotions scores 1/k when the acted emotion is among "
        "them (the expected score of breaking the tie at random).", "",
        f"- Listeners' majority vote matches the acted emotion on {100 * human[voted].mean():.1f}% of these "
        f"{int(voted.sum())} test clips (95% CI {100 * human_ci[0]:.1f}-{100 * human_ci[1]:.1f}%); the model on "
        f"{100 * report['accuracy']:.1f}%.",
        f"- The model's prediction equals the listeners' vote on {100 * agree[voted].mean():.1f}% of the clips.",
        "", "| emotion | listeners' recall | model recall |", "| --- | --- | --- |"]
    for i, label in enumerate(labels):
        rows = (y_true == i) & voted
        lines.append(f"| {label} | {100 * human[rows].mean():.1f}% | {100 * (y_pred[rows] == i).mean():.1f}% |")
    lines += [
        "", "Listeners choose *neutral* for most clips acted with a mild emotion; the model was trained on the "
        "acted labels, so it is rewarded for hearing what the actor intended, which is a different task from "
        "the listeners' and makes this a reference point, not a contest.", "",
        "## Limitations", "",
        "- Acted English speech by 91 actors reading 12 fixed sentences in a quiet room; spontaneous speech, other "
        "languages, accents, children, noisy or far-field audio are out of its domain and will score lower.",
        "- Six classes only; there is no *other* or *no emotion detected*: every clip gets one of the six.",
        "- 16 kHz audio: other rates are resampled by `serkeras predict`, narrow-band (8 kHz telephone) audio "
        "loses the upper half of the mel bands the model uses.",
        f"- The test part is {n_actors['test']} actors: the interval above is wide, and the 5-fold numbers are the better estimate "
        "of accuracy on new voices. The 18 held-back actors are the final judge.",
        "- Per-sex results come from few actors per sex and should not be read as a measured bias, nor as its "
        "absence.", ""]
    Path(card_path).write_text("\n".join(lines))
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "human": float(human[voted].mean()),
            "json": json.dumps(report)}
