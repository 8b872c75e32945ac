"""Write the card of a shipped model (saved_models/MODEL_CARD*.md) from its predictions on unseen actors.

Used by ``python -m experiments.accuracy card``; everything in the card is computed
here from the model file, the corpus and the finished runs, nothing is typed in. A checkout
without the members' run folders takes their commands from the runs log and their training
time from the card it rewrites.
"""

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np

from serkeras.shipped import default_model
from experiments.study import format_minutes, markdown_tables, mean_std, training_time

#: CREMA-D's VoiceVote letters (summaryTable.csv) -> serkeras' CREMA-D label names.
VOTE_LABELS = {"A": "anger", "D": "disgust", "F": "fear", "H": "happy", "N": "neutral", "S": "sad"}
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


def per_fold_summary(scores, n_folds, bold=False):
    """'Accuracy per fold: ...; mean ...% ± ... (std); macro-F1 ... ± ...' of `scores`, {fold: test scores};
    'Accuracy on folds 3, 4: ...' when some of the `n_folds` are missing (no mean or spread of one fold)."""
    folds = sorted(scores)
    if len(folds) == 1:
        (k,) = folds
        return f"Accuracy on fold {k}: {100 * scores[k]['accuracy']:.1f}%; macro-F1 {scores[k]['macro_f1']:.3f}"
    (acc, acc_std), (f1, f1_std) = (mean_std([scores[k][key] for k in folds]) for key in ("accuracy", "macro_f1"))
    mark = "**" if bold else ""
    which = ("per fold" if len(folds) == n_folds
             else ("on folds " if len(folds) > 1 else "on fold ") + ", ".join(map(str, folds)))
    return (f"Accuracy {which}: "
            + ", ".join(f"{100 * scores[k]['accuracy']:.1f}%" for k in folds)
            + f"; mean {mark}{100 * acc:.1f}%{mark} ± {100 * acc_std:.1f} (std); macro-F1 {f1:.3f} ± {f1_std:.3f}")


#: How a card's line of a k-fold-scored average starts.
KFOLD_ENSEMBLE_LINE = "- **This model's recipe** (the average of the members' recipes, each trained on the fold)"


def previous_training_cells(lines):
    """({member run: its 'train min' cell}, the 'min of training in all' line) of a card's `lines`.

    A checkout without the members' run folders cannot time their training again, so a card rewritten
    there keeps what the previous card said (empty where there is no previous card).
    """
    cells = {row[0].strip("`"): row[-1] for row in markdown_tables(lines).get("Model", [])}
    return cells, next((line for line in lines if "min of training in all" in line), "")


def part_accuracy(model, meta, corpus, clips):
    """Accuracy of `model` on `clips` of `corpus` (features as `part_probabilities` reads them)."""
    return float((part_probabilities(model, meta, clips).argmax(axis=1)
                  == np.asarray(corpus.label_indices(clips))).mean())


def training_line(members, results, times, previous):
    """The card's '- N min of training in all ..., on: MACHINE.' line: from the members' runs when all are
    here, else the `previous` card's line."""
    if not all(name in results for name in members):
        return previous
    record = results[members[0]].get("record") or {}
    if not record:
        return ""
    return (f"- {format_minutes(sum(t.seconds for t in times), all(t.complete for t in times))} min of training "
            f"in all (wall-clock, with other jobs sharing the machine), on: {'; '.join(record.get('machine', []))}.")


def part_probabilities(model, meta, clips, copies=0, speaker_clips=None):
    """Class probabilities of `model` for `clips` (all of which must have features).

    With `copies` > 0 (test-time augmentation), the probabilities are averaged over each clip
    and its copies 1..`copies` made with serkeras' TEST_TIME_AUGMENTATION, as
    `serkeras evaluate --tta-copies` does. `speaker_clips`: where speaker statistics come
    from, as in `serkeras.cache.model_features` (default: `clips`).
    """
    from serkeras.evaluation import predict_clips

    return predict_clips(model, meta, clips, copies, speaker_clips=speaker_clips, require_all=True)[1]


def score_test_actors(corpus, split, labels, probabilities):
    """What every card reports about `split.test`, from the model's `probabilities` for those clips.

    Returns a dict: clips, y_true, y_pred, the classification report (per sex too), actors, actors per part,
    bootstrap intervals of accuracy and macro-F1, and the listeners' votes (voted, human, agree, human_ci).
    """
    from sklearn.metrics import accuracy_score, f1_score

    from serkeras.evaluation import classification_report

    clips = list(split.test)
    y_true = np.asarray(corpus.label_indices(clips))
    y_pred = probabilities.argmax(axis=1)
    actors = [c.speaker for c in clips]
    votes = human_votes(Path(clips[0].path).resolve().parent.parent / "summaryTable.csv")
    voted = np.array([c.name in votes for c in clips])
    human = np.array([vote_credit(votes.get(c.name, ()), c.label) for c in clips])
    return {
        "clips": clips, "labels": labels, "y_true": y_true, "y_pred": y_pred, "actors": actors, "votes": votes,
        "report": classification_report(y_true, y_pred, labels, groups={"sex": [c.sex for c in clips]}),
        "n_actors": {part: len({c.speaker for c in clips_}) for part, clips_ in split.parts().items()},
        "acc_ci": actor_bootstrap(actors, lambda i: accuracy_score(y_true[i], y_pred[i])),
        "f1_ci": actor_bootstrap(actors, lambda i: f1_score(y_true[i], y_pred[i], average="macro",
                                                            labels=range(len(labels)), zero_division=0)),
        "voted": voted, "human": human,
        "agree": np.array([vote_credit(votes.get(c.name, ()), labels[p]) for c, p in zip(clips, y_pred)]),
        "human_ci": actor_bootstrap(actors, lambda i: human[i][voted[i]].mean()),
    }


def results_lines(scored):
    """'## Results on the test actors' of a card: accuracy and macro-F1 with intervals, per sex, per class, confusions."""
    clips, labels, report, n_actors = scored["clips"], scored["labels"], scored["report"], scored["n_actors"]
    acc_ci, f1_ci = scored["acc_ci"], scored["f1_ci"]
    lines = [
        "", "## Results on the test actors (never heard in training)", "",
        f"- Accuracy **{100 * report['accuracy']:.1f}%** (95% CI {100 * acc_ci[0]:.1f}-{100 * acc_ci[1]:.1f}%), "
        f"macro-F1 **{report['macro_f1']:.3f}** (95% CI {f1_ci[0]:.3f}-{f1_ci[1]:.3f}) on {report['n']} clips of "
        f"{n_actors['test']} actors. Intervals: {BOOTSTRAP} bootstrap resamples of whole actors (with only "
        f"{n_actors['test']} actors they are wide).",
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
    return lines


def degraded_lines(model, meta, scored, training_note):
    """'### On degraded audio': the test clips, each replaced by its first augmented copy."""
    from serkeras.cache import model_features
    from serkeras.evaluation import predict_features

    speakers = [c.speaker for c in scored["clips"]] if meta.standardises_embedding else None
    degraded = predict_features(model, model_features(scored["clips"], meta.feature_config, 1, require_all=True)[1][1],
                                meta.feature_config.length_mode, meta.feature_config.fixed_frames,
                                speakers=speakers).argmax(axis=1)
    return ["", "### On degraded audio", "",
            f"The same test clips, each replaced by one augmented copy (speed 0.9-1.1, time shift up to 0.25 s, gain "
            f"within 6 dB, white noise at 10-30 dB SNR): accuracy {100 * (degraded == scored['y_true']).mean():.1f}% "
            f"(clean: {100 * scored['report']['accuracy']:.1f}%). {training_note}"]


def human_lines(scored):
    """'## Compared with human listeners on the same clips' of a card."""
    clips, labels, report, votes = scored["clips"], scored["labels"], scored["report"], scored["votes"]
    voted, human, agree, human_ci = scored["voted"], scored["human"], scored["agree"], scored["human_ci"]
    y_true, y_pred = scored["y_true"], scored["y_pred"]
    lines = [
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
    neutral = np.mean(["neutral" in votes.get(c.name, ()) for c in clips])
    lines += [
        "", f"Listeners' majority said *neutral* (alone or tied) for {100 * neutral:.0f}% of these clips, though "
        "only a sixth are acted neutral. The model was trained on the acted labels, so it is rewarded for hearing "
        "what the actor intended; the listeners judged what they perceived. That makes this a reference point, "
        "not a contest on the same task.", ""]
    return lines


def limitation_lines(scored):
    """'## Limitations' of a card."""
    n_actors = scored["n_actors"]
    return [
        "## Limitations", "",
        "- Acted English speech: 91 actors (ages 20-74) reading 12 fixed sentences, recorded in controlled "
        "conditions. Spontaneous speech, other languages, children, noisy or far-field audio are outside what it "
        "was trained on; expect lower accuracy there.",
        "- Six classes only; there is no *other* or *no emotion detected*: every clip gets one of the six.",
        "- 16 kHz audio: other rates are resampled by `serkeras predict`, narrow-band (8 kHz telephone) audio "
        "loses the upper half of the mel bands the model uses.",
        f"- The test part is {n_actors['test']} actors: the interval above is wide, and the 5-fold numbers "
        "are the better estimate of accuracy on new voices. The 18 held-back actors are the final judge.",
        "- Per-sex results come from few actors per sex and should not be read as a measured bias, nor as its "
        "absence.", ""
    ]


def card_summary(scored):
    """What `write_model_card` returns: test accuracy, macro-F1, the listeners' accuracy, the report as JSON."""
    report = scored["report"]
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "human": float(scored["human"][scored["voted"]].mean()), "json": json.dumps(report)}


def public_command(command):
    """`command` as a card shows it: without `--data-dir DIR`, a folder of the machine that ran it (give yours,
    or set SERKERAS_DATA_DIR)."""
    return re.sub(r" --data-dir(?:=| )\S+", "", command)


def write_model_card(model_path, card_path, data_dir, members, command, results, runs_dir, kfold_scores, n_folds,
                     tta_copies, kfold_ensembles=(), chosen="The members were chosen on the validation actors",
                     listed=None):
    """Write the card of the ensemble at `model_path`, made of the actor-split runs `members`.

    A member whose run folder is not in `runs_dir` (a fresh checkout) is taken from the ensemble file
    itself and scored here; its command comes from `listed` ({run name: record} of the runs log) and its
    training time from the card being replaced.

    `command`: the `serkeras ensemble` command that made the model; `chosen`: how its members were chosen (a sentence);
    `kfold_scores`: {member recipe (RECIPE or RECIPE:SEED): its test scores on each of the `n_folds` k-fold
    folds, None where that fold has not finished};
    `tta_copies`: the test-time augmentation to report beside the plain results;
    `kfold_ensembles`: (TTA copies, [per-fold records]) of the members' recipes averaged on each k-fold fold.
    """
    from sklearn.metrics import accuracy_score, f1_score

    from serkeras.corpus import load_corpus
    from serkeras.errors import SerkerasError
    from serkeras.models import load_model
    from serkeras.models.cost import flops_per_clip
    from serkeras.models.ensemble import ensemble_members
    from serkeras.models.saving import model_metadata
    from serkeras.splits import make_split

    model, meta = load_model(model_path)
    corpus = load_corpus(data_dir, None)
    split = make_split(corpus.clips, "actor", 0.1, 0.1, seed=0)
    clips = list(split.test)
    probabilities = part_probabilities(model, meta, clips)
    y_val = np.asarray(corpus.label_indices(split.val))
    val_accuracy = part_accuracy(model, meta, corpus, list(split.val))
    listed = listed or {}
    # What a checkout without the members' runs keeps from the card this one replaces.
    previous_lines = Path(card_path).read_text().splitlines() if Path(card_path).is_file() else []
    previous_cells, previous_training = previous_training_cells(previous_lines)
    shipped_members = ensemble_members(model)
    if len(shipped_members) != len(members):
        raise SerkerasError(f"{model_path} averages {len(shipped_members)} models, not the {len(members)} "
                            f"members named for it")
    member_rows, mflops, times, commands, augmented = [], 0.0, [], [], 0
    for name, shipped_member in zip(members, shipped_members):
        if name in results:
            member, member_meta = load_model(Path(runs_dir) / name / "model.keras")
            metrics = results[name]["metrics"]
            val_acc, test_acc = metrics["val"]["accuracy"], metrics["test"]["accuracy"]
            times.append(training_time(results[name]))
            minutes = format_minutes(times[-1].seconds, times[-1].complete)
            record = results[name].get("record") or {}
            commands.append(record.get("command"))
            augmented += bool(results[name]["config"]["train_config"].get("augment_copies"))
        else:
            # The member as shipped, scored here on the same parts.
            member, member_meta = shipped_member, model_metadata(shipped_member)
            val_acc, test_acc = (part_accuracy(member, member_meta, corpus, list(part))
                                 for part in (split.val, split.test))
            minutes = previous_cells.get(name, "")
            commands.append(listed.get(name, {}).get("command"))
            augmented += "--augment-copies" in shlex.split(commands[-1] or "")
        member_flops = flops_per_clip(member, member_meta.feature_config) / 1e6
        mflops += member_flops
        member_rows.append(f"| `{name}` | {member_meta.model_config.arch} | {member.count_params():,} | "
                           f"{member_flops:.0f} | {100 * val_acc:.1f} | {100 * test_acc:.1f} | {minutes} |")
    scored = score_test_actors(corpus, split, list(meta.labels), probabilities)
    y_true, actors, n_actors = scored["y_true"], scored["actors"], scored["n_actors"]
    labels = list(meta.labels)
    size = Path(model_path).stat().st_size / 2**20
    fc = meta.feature_config
    name = Path(model_path).stem
    model_option = "" if name == default_model().name else f" --model {name}"
    inputs = "recordings_of_one_speaker/" if fc.speaker_norm else "my_recording.wav"
    lines = [
        f"# Model card: `{name}.keras`", "",
        "Speech emotion recognition for six acted emotions (anger, disgust, fear, happy, neutral, sad) "
        f"from 16 kHz speech. Made by `{command}`; every number below is computed "
        "from the model files and the corpus by `experiments/model_card.py`.", "",
        "## Use", "",
        "```", (f"serkeras predict{model_option} {inputs}   # several recordings per speaker (below)"
                if fc.speaker_norm else f"serkeras predict{model_option} {inputs}"
                + ("        # uses this model when --model is not given" if not model_option else "")),
        *([f"serkeras predict{model_option} {inputs} --tta-copies {tta_copies}   # test-time augmentation "
           "(below)"] if tta_copies else []),
        f"serkeras evaluate {name} --split actor", "```", "",
        "In Python: `model, meta = serkeras.models.load_model(path)`, then "
        "`serkeras.inference.predict_files(model, meta, paths)`; `meta.labels` and `meta.feature_config` "
        "travel with the file.", "",
        "## Model", "",
        f"One Keras functional model that averages the class probabilities of {len(members)} models trained "
        f"separately on the same split ({model.count_params():,} parameters in all, {size:.1f} MiB on disk, "
        f"{mflops:.0f} MFLOPs per 2.5 s clip: the members' sum, forward pass). {chosen}. Together the members "
        f"reach {100 * val_accuracy:.1f}% on the validation actors, each alone the figure in the table.", "",
        "| member run | architecture | parameters | MFLOPs / clip | val acc % | test acc % | train min |",
        "| --- | --- | --- | --- | --- | --- | --- |", *member_rows, "",
        f"Features (stored in the file): {fc.n_mels} log-mel bands and {fc.n_spectral} spectral columns "
        f"(MFCCs, deltas, spectral descriptors{', log F0 and its delta' if fc.pitch else ''}) every "
        f"{1000 * fc.hop_length / fc.sample_rate:.0f} ms at {fc.sample_rate} Hz, whole clips (variable length); "
        "the standardisation statistics of the training actors are inside each member.", "",
        "## Training", "",
        f"- Command: `{command}`, after training each member with the commands below (the recipes are in "
        "`serkeras/recipes/`).",
        *[f"- `{public_command(c)}`" for c in commands if c],
        f"- Data: CREMA-D, its 73 development actors (the 18 held-back actors were "
        f"never used). Split `actor`, seed 0 ({split.description}): train {len(split.train)} clips of "
        f"{n_actors['train']} actors, validation {len(split.val)} clips of {n_actors['val']} actors (checkpoint "
        f"and member choice), test {len(split.test)} clips of {n_actors['test']} actors (below). No actor is in "
        "two parts.",
        training_line(members, results, times, previous_training),
    ]
    lines += results_lines(scored)
    lines += degraded_lines(model, meta, scored, f"Members trained on such copies (`--augment-copies`): "
                                                 f"{augmented} of {len(members)}.")
    if fc.speaker_norm:
        from experiments.speaker_means import speaker_mean_table

        trained_with, loses = (("`--speaker-norm --speaker-scale`", "mean features and is divided by their "
                                "standard deviation, both") if fc.speaker_scale else
                               ("`--speaker-norm`", "mean features,"))
        lines += ["", "### Speaker normalisation: give several recordings of each speaker", "",
                  f"The members were trained with {trained_with}: each clip loses its speaker's {loses} "
                  "taken over all of that speaker's clips (above: the about 80 test clips of each test actor, all "
                  "six emotions). `serkeras predict` groups files by speaker with `--speaker` (default `auto`: "
                  "CREMA-D file names give their actor, other files are grouped by folder), so put each speaker's "
                  "recordings in one folder. With fewer recordings per speaker the statistics are less typical of "
                  "the voice, and with one (`--speaker file`) they are the clip's own. Accuracy on the same actors "
                  "when each speaker's statistics come from:", "",
                  *speaker_mean_table(model, meta, corpus, split)]
    if tta_copies:
        tta_test = part_probabilities(model, meta, clips, tta_copies).argmax(axis=1)
        tta_val = part_probabilities(model, meta, list(split.val), tta_copies).argmax(axis=1)
        tta_ci = actor_bootstrap(actors, lambda i: accuracy_score(y_true[i], tta_test[i]))
        tta_f1 = f1_score(y_true, tta_test, average="macro", labels=range(len(labels)), zero_division=0)
        lines += ["", f"### With test-time augmentation (`serkeras predict --tta-copies {tta_copies}`)", "",
                  f"Each clip's probabilities averaged with those of {tta_copies} augmented copies (speed 0.9-1.1, "
                  "time shift, gain, noise at 10-30 dB SNR, like the augmented members' training copies): "
                  f"accuracy **{100 * (tta_test == y_true).mean():.1f}%** (95% CI {100 * tta_ci[0]:.1f}-"
                  f"{100 * tta_ci[1]:.1f}%), macro-F1 {tta_f1:.3f} on the test actors; "
                  f"{100 * (tta_val == y_val).mean():.1f}% on the validation actors (without: "
                  f"{100 * val_accuracy:.1f}%). It costs {tta_copies + 1} times the forward passes and "
                  f"{tta_copies} more waveform augmentations and feature extractions per clip."]
    lines += ["", "## Other unseen actors: 5-fold cross-validation", "",
              "Each fold trains new models from scratch on ~52 actors and tests them on 14-15 others, so every "
              "development actor is tested once, by models that never heard them.", ""]
    recipes = " ".join(kfold_scores)
    for copies, records in kfold_ensembles:
        tta = f", with {copies} TTA copies" if copies else ""
        lines += [f"{KFOLD_ENSEMBLE_LINE}{tta}: "
                  f"folds scored {len(records)} of {n_folds}. "
                  f"{per_fold_summary({r['fold']: r for r in records}, n_folds, bold=True)} "
                  f"(`python -m experiments.accuracy kfold-ensemble {recipes}"
                  f"{f' --tta-copies {copies}' if copies else ''}`)."]
    # Without the records here (a fresh checkout), the previous card's scores of the same recipes stay.
    kept = [] if kfold_ensembles else [
        line for line in previous_lines
        if line.startswith(KFOLD_ENSEMBLE_LINE) and re.search(rf"kfold-ensemble {re.escape(recipes)}(`| --)", line)]
    lines += kept
    if not kfold_ensembles and not kept:
        lines += [f"- **This model's recipe** (the average of the members' recipes) has no k-fold scores in this "
                  f"checkout's records: `python -m experiments.accuracy kfold-ensemble {recipes}` scores it on the "
                  "folds where every member has finished; `experiments/results/accuracy.md` keeps what earlier "
                  "checkouts scored."]
    lines += ["", "Its members' recipes alone:", ""]
    for label, scores in kfold_scores.items():
        folds = {k: s for k, s in enumerate(scores) if s is not None}
        recipe, _, seed = label.partition(":")
        if folds:
            lines += [f"- `{label}`: folds finished {len(folds)} of {n_folds}. {per_fold_summary(folds, n_folds)} "
                      f"(`python -m experiments.accuracy run {recipe} --split kfold"
                      f"{f' --seed {seed}' if seed else ''}`)."]
        else:
            lines += [f"- `{label}`: no fold finished in this checkout's records."]
    lines += human_lines(scored) + limitation_lines(scored)
    Path(card_path).write_text("\n".join(line for line in lines if line is not None))
    return card_summary(scored)


def run_folds(kfold_dir):
    """{fold: its test scores (accuracy, macro-F1, UA)} of a `serkeras train --split kfold --folds` run folder."""
    folds = {}
    for path in sorted(Path(kfold_dir).glob("fold*/metrics.json")):
        test = json.loads(path.read_text())["test"]
        folds[int(path.parent.name.removeprefix("fold"))] = {
            "accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "ua": test["unweighted_average_recall"]}
    return folds


#: How a Whisper card's line on the encoder's weights starts.
ENCODER_LINE = "- Encoder weights: "


def encoder_provenance(encoder, previous_lines=()):
    """A sentence on the pre-trained encoder a model started from: its folder's name, and its weights' fingerprint
    when the checkpoint is at hand.

    Where the weights came from and how they were cross-checked is not in the run: when the card being rewritten
    (`previous_lines`) describes weights with the same fingerprint, its sentence is kept.
    """
    from serkeras.models.whisper import read_checkpoint

    name = Path(encoder).name
    sentence = f"OpenAI's Whisper (MIT licence), the checkpoint `{name}`, read by `serkeras.models.whisper`"
    if Path(encoder).exists():
        fingerprint = read_checkpoint(encoder).fingerprint()[:16]
        kept = [line for line in previous_lines if line.startswith(ENCODER_LINE) and f"`{fingerprint}...`" in line]
        if kept:
            return kept[0][len(ENCODER_LINE):]
        sentence += f" (`serkeras.models.whisper.read_checkpoint(PATH).fingerprint()` is `{fingerprint}...`)"
    return sentence + "."


def write_whisper_card(run_dir, card_path, data_dir, recipe, kfold_dir=None, model_path=None):
    """Write the card of a Whisper model trained by ``serkeras train --recipe RECIPE`` on the actor split.

    Everything comes from the run: the model (`model_path`, default the run's
    model.keras), its config.json and metrics.json, and, with `kfold_dir`, the
    per-fold metrics of the same recipe run with ``--split kfold --folds``.
    The test actors' numbers are recomputed from the model file and the corpus.
    """
    from serkeras.corpus import load_crema_d
    from serkeras.export import quantized_layers
    from serkeras.models import load_model
    from serkeras.models.cost import flops_per_clip
    from serkeras.splits import make_split

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    previous_lines = Path(card_path).read_text().splitlines() if Path(card_path).is_file() else []
    train_config = config["train_config"]
    model_path = Path(model_path or run_dir / "model.keras")
    model, meta = load_model(model_path)
    corpus = load_crema_d(data_dir)
    split = make_split(corpus.clips, "actor", seed=0)
    scored = score_test_actors(corpus, split, list(meta.labels), part_probabilities(model, meta, list(split.test)))
    n_actors, mc, fc = scored["n_actors"], meta.model_config, meta.feature_config
    name = model_path.stem
    command = f"serkeras train --recipe {recipe} --encoder PATH/{Path(mc.encoder).name}"
    folds = run_folds(kfold_dir) if kfold_dir else {}
    by_speaker = mc.speaker_standardization
    lbfgs = train_config.get("head_fit") == "lbfgs"
    if name == default_model().name:
        use = "serkeras predict my_recording.wav        # uses this model when --model is not given"
    elif by_speaker:
        use = (f"serkeras predict --model {name} recordings_of_one_speaker/   # several recordings per speaker "
               "(below)")
    else:
        use = f"serkeras predict --model {name} my_recording.wav"
    copies = train_config.get("augment_copies", 0)
    augmented = (f"The classifier was also fit on {copies} augmented cop{'y' if copies == 1 else 'ies'} of each "
                 "training clip (`--augment-copies`)." if copies else "Nothing in this recipe saw augmented audio.")
    fit = metrics.get("head_fit")
    how = (f"fits the softmax layer as a logistic regression by L-BFGS (its L2 strength chosen on the validation "
           f"actors from C = {', '.join(f'{c:g}' for c in fit['c_grid'])}: C = {fit['C']:g}) on the training "
           "actors' pooled outputs" if lbfgs and fit else "trains the classifier by gradient descent")
    lines = [
        f"# Model card: `{name}.keras`", "",
        "Speech emotion recognition for six acted emotions (anger, disgust, fear, happy, neutral, sad) from 16 kHz "
        "speech, " + ("from several recordings of each speaker (it standardises a clip by its speaker's other "
                      "recordings; with one or two it still works, less well: below)" if by_speaker else
                      "on one recording at a time")
        + f". Trained by `{command}`; every number below is computed from the model file, the corpus and the "
        "training runs by `experiments/model_card.py`.", "",
        "## Use", "", "```", use, f"serkeras evaluate {name} --split actor", "```", "",
        "In Python: `model, meta = serkeras.models.load_model(path)`, then "
        "`serkeras.inference.predict_files(model, meta, paths)`; `meta.labels` and `meta.feature_config` "
        "travel with the file.", "",
        "## Model", "",
        f"The first {mc.encoder_layers} layers of the audio encoder of OpenAI's Whisper (`{mc.encoder_dim}`-wide, "
        f"{mc.attention_heads} attention heads; `serkeras.models.whisper`, plain Keras layers), frozen as "
        "pre-trained, then the mean and standard deviation over time of the last kept layer"
        + (f", standardised by the mean and variance of the same over all of the speaker's recordings (both shrunk "
           f"towards the training speakers' as if those were {mc.speaker_prior_clips:g} more recordings, so that a "
           "speaker heard a few times is not standardised by noise: `SpeakerStandardization`)," if by_speaker else
           ", standardised,")
        + f" and one softmax layer (a logistic regression). {model.count_params():,} parameters, "
        f"{model_path.stat().st_size / 2**20:.1f} MiB on disk"
        f"{' (feed-forward weights int8)' if quantized_layers(model) else ''}, "
        f"{flops_per_clip(model, fc) / 1e6:,.0f} MFLOPs per 2.5 s clip (forward pass).", "",
        f"{ENCODER_LINE}{encoder_provenance(mc.encoder, previous_lines)}",
        f"- Layers kept: {mc.encoder_layers}, chosen with the per-layer probes of the lab notebook, "
        "`experiments/NOTEBOOK.md`.",
        f"- Features (stored in the file): Whisper's log-mel, {fc.n_mels} bands from {fc.fmin:g} to {fc.fmax:g} Hz, "
        f"{1000 * fc.win_length / fc.sample_rate:.0f} ms windows every {1000 * fc.hop_length / fc.sample_rate:.0f} ms, "
        "the level as recorded (no peak normalisation), scaled inside the model as Whisper expects.", "",
        "## Training", "",
        f"- Command: `{command}` (the recipe is `serkeras/recipes/{recipe}.toml`). It runs the kept encoder layers "
        f"over every clip once (their outputs are cached), {how}"
        + (" standardised by speaker (each training actor's statistics over their training clips; the training "
           "actors' mean statistics are the population's)" if by_speaker else "")
        + ", and writes the fitted standardisation and weights into the model's own layers."
        + (" No gradient training." if lbfgs else ""),
        f"- Data: CREMA-D, its 73 development actors (the 18 held-back actors were "
        f"never used). Split `actor`, seed 0 ({split.description}): train {len(split.train)} clips of "
        f"{n_actors['train']} actors, validation {len(split.val)} clips of {n_actors['val']} actors, test "
        f"{len(split.test)} clips of {n_actors['test']} actors (below). No actor is in two parts.",
        f"- Time (wall-clock): {metrics['train_seconds']:.0f} s for the fit, the encoder's outputs read from "
        "serkeras' cache where present.",
    ]
    lines += results_lines(scored)
    lines += degraded_lines(model, meta, scored, augmented)
    if by_speaker:
        from experiments.speaker_means import speaker_mean_table

        lines += ["", "### Speaker statistics: give several recordings of each speaker", "",
                  "Above, each test clip was standardised with the statistics of all of its speaker's test clips "
                  "(about 80 per actor, all six emotions). `serkeras predict` groups files by speaker with "
                  "`--speaker` (default `auto`: CREMA-D file names give their actor, other files are grouped by "
                  "folder), so put each speaker's recordings in one folder. Accuracy on the same actors when each "
                  "speaker's statistics come from:", "", *speaker_mean_table(model, meta, corpus, split)]
    lines += ["", "## Other unseen actors: 5-fold cross-validation", ""]
    if folds:
        ua, ua_std = mean_std([f["ua"] for f in folds.values()])
        lines += [f"The same recipe on each fold (`{command} --split kfold --folds`): the classifier fit on ~52 "
                  "actors' clips (its strength chosen on the fold's validation actors), tested on the 14-15 "
                  "others, so every development actor is tested once by a model that never heard them. "
                  f"{per_fold_summary(folds, len(folds), bold=True)}; UA {100 * ua:.1f}% ± {100 * ua_std:.1f}."]
    else:
        lines += ["Not scored in the run that wrote this card."]
    lines += human_lines(scored) + limitation_lines(scored)[:-1] + [
        "- `serkeras predict` cuts recordings longer than 4 s into overlapping 4 s windows and averages them, as "
        "for every variable-length model; Whisper itself was trained on windows of up to 30 s.", ""]
    Path(card_path).write_text("\n".join(lines))
    return scored["report"]


if __name__ == "__main__":
    import click

    from serkeras.options import SerkerasGroup

    @click.group(cls=SerkerasGroup)  # user errors as one line, as in the serkeras CLI
    def cli():
        """Write model cards."""

    @cli.command()
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.option("--recipe", required=True, help="The recipe the run was trained with (`serkeras train --recipe`).")
    @click.option("--kfold-run", type=click.Path(exists=True, file_okay=False), default=None,
                  help="The same recipe's `--split kfold --folds` run folder, for the cross-validated numbers.")
    @click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="The model file the card describes (default: the run's model.keras).")
    @click.option("--card", "card_path", type=click.Path(dir_okay=False), required=True)
    @click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                  help="CREMA-D audio folder (default $SERKERAS_DATA_DIR or data/Crema).")
    def whisper(run_dir, recipe, kfold_run, model_path, card_path, data_dir):
        """Write the card of the Whisper model trained in RUN_DIR (actor split) from the run and the corpus."""
        report = write_whisper_card(run_dir, card_path, data_dir, recipe, kfold_run, model_path)
        click.echo(f"wrote {card_path}: test actors {100 * report['accuracy']:.1f}%, "
                   f"UA {100 * report['unweighted_average_recall']:.1f}%, macro-F1 {report['macro_f1']:.3f}")

    cli()
