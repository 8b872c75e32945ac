"""Model cards: a Markdown description of a model with its scores on speakers it never heard.

A card's scores are computed from the model file and the corpora it is scored
on; how the model trained (settings, time) is read from the run that trained
it (``config.json``, ``metrics.json``) and cross-validated scores from a
``--split kfold --folds`` run of the same settings (each fold's
``metrics.json``), each checked against the model file. Nothing is typed in,
except an optional ``## Notes`` section a maintainer writes by hand: rewriting
a card keeps it.

    serkeras card saved_models/my-run --output saved_models/my-run/MODEL_CARD.md

The command line is `serkeras card`; `card_for` returns a card's text and
`write_model_card` writes it.
"""

import dataclasses
import datetime
import json
import re
from pathlib import Path

import numpy as np

from serkeras.errors import SerkerasError

#: Bootstrap resamples of whole speakers for a card's 95% intervals.
BOOTSTRAP = 2000
#: The section of a card that is written by hand and kept when the card is rewritten.
NOTES_HEADING = "## Notes"
#: Random subset sizes of a speaker's clips for a speaker-normalised model's card, and draws of each.
SPEAKER_SUBSET_SIZES = (2, 5, 10, 20)
SPEAKER_SUBSET_DRAWS = 3
#: Model settings a run of the same model may differ in: where its encoder's checkpoint was read from.
MACHINE_SETTINGS = ("encoder",)


def speaker_bootstrap(speakers, statistic, draws=BOOTSTRAP, seed=0):
    """95% interval of `statistic(indices)` when whole speakers are resampled with replacement.

    The clips of one speaker are not independent, so resampling speakers (not
    clips) gives an honest interval for a score on new speakers.

    Parameters
    ----------
    speakers : sequence of str
        Each clip's speaker.
    statistic : callable
        Takes an array of clip indices (with repeats) and returns a float.
    draws : int, optional
    seed : int, optional

    Returns
    -------
    ndarray, shape (2,)
        The 2.5th and 97.5th percentiles.
    """
    rng = np.random.default_rng(seed)
    speakers = np.asarray(speakers)
    groups = [np.flatnonzero(speakers == s) for s in np.unique(speakers)]
    values = [statistic(np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))]))
              for _ in range(draws)]
    return np.percentile(values, [2.5, 97.5])


def public_path(path):
    """At most the last two parts of `path` as given (``crema-d/audio``, ``emodb/manifest.csv``): a card names a
    corpus or a run, not a folder of the machine that wrote it."""
    parts = [part for part in Path(path).parts if part not in ("/", ".", "..")]
    return "/".join(parts[-2:])


def card_command(model, run_dir=None, data_dir=(), manifest=(), split=None, kfold_dir=None, perturbations=(),
                 cross_corpus_dir=None):
    """The `serkeras card` command of a card, each path shortened by `public_path`.

    Parameters
    ----------
    model : str
        MODEL as the card shows it.
    run_dir : str or Path, optional
        A run named apart from MODEL (``--run``).
    data_dir, manifest : sequence, optional
        The corpora, when given rather than read from the run.
    split : serkeras.api.SplitSettings, optional
        Every setting that differs from the defaults is written out.
    kfold_dir, perturbations, cross_corpus_dir
        As `card_for` takes them.

    Returns
    -------
    str
    """
    from serkeras.api import SplitSettings

    words = ["serkeras card", str(model)]
    if run_dir is not None:
        words += ["--run", public_path(run_dir)]
    words += [f"--data-dir {public_path(d)}" for d in data_dir]
    words += [f"--manifest {public_path(m)}" for m in manifest]
    if split is not None:
        default = SplitSettings()
        words += [f"--split {split.kind}"]
        for option, field in (("--fold", "fold"), ("--n-folds", "n_folds"), ("--val-fraction", "val_fraction"),
                              ("--test-fraction", "test_fraction"), ("--seed", "seed")):
            if getattr(split, field) != getattr(default, field):
                words += [f"{option} {getattr(split, field):g}"]
    if kfold_dir is not None:
        words += ["--kfold-run", public_path(kfold_dir)]
    if cross_corpus_dir is not None:
        words += ["--cross-corpus-run", public_path(cross_corpus_dir)]
    words += [f"--perturb {p.spec()}" for p in perturbations]
    return " ".join(words)


def _percent(value):
    return f"{100 * value:.1f}%"


def _read_json(path, what):
    """The JSON file at `path`, or a `SerkerasError` naming it and `what` it should be."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SerkerasError(f"cannot read {path} ({what}): {exc}") from None


def _same_model_settings(config, meta, where):
    """Refuse a run (`config`, its config.json) whose feature or model settings are not those of the model file."""
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig

    try:
        features = FeatureConfig.from_dict(config["feature_config"])
        model = ModelConfig.from_dict(config["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SerkerasError(f"{where} does not hold a run's settings ({exc})") from None
    mine = meta.model_config
    differing = [f.name for f in dataclasses.fields(model) if f.name not in MACHINE_SETTINGS
                 and getattr(model, f.name) != getattr(mine, f.name)]
    if features != meta.feature_config:
        differing.append("feature settings")
    if differing:
        raise SerkerasError(f"{where} is a run of another model than the one carded (it differs in "
                            f"{', '.join(differing)})")


def describe_model(model, meta, path):
    """Sentences on what the model is: architecture, size on disk, parameters and cost per clip."""
    from serkeras.export import quantized_layers
    from serkeras.models.cost import flops_per_clip
    from serkeras.models.ensemble import ensemble_members

    mc = meta.model_config
    if mc.arch == "whisper":
        trained = (f"the top {mc.fine_tune_layers} fine-tuned, the rest frozen as pre-trained"
                   if mc.fine_tune_layers else "frozen as pre-trained")
        pooled = {"stats": "the mean and standard deviation over time", "average": "the mean over time",
                  "attention": "attentive statistics over time"}.get(mc.pooling, f"`{mc.pooling}` pooling")
        what = (f"The first {mc.encoder_layers} layers of the audio encoder of OpenAI's Whisper ({mc.encoder_dim} "
                f"wide, {mc.attention_heads} attention heads; `serkeras.models.whisper`, plain Keras layers), "
                f"{trained}, then {pooled} of the last kept layer"
                + (", standardised by the statistics of all of the speaker's recordings (shrunk towards the "
                   f"training speakers' as if those were {mc.speaker_prior_clips:g} more recordings)"
                   if mc.speaker_standardization else "")
                + " and a softmax classifier.")
    elif mc.arch == "ensemble":
        members = ensemble_members(model)
        what = (f"The average of the class probabilities of {len(members)} models trained separately: "
                + ", ".join(f"`{m.name}`" for m in members) + ".")
    else:
        what = (f"The `{mc.arch}` architecture of `serkeras.models` ({mc.activation} activations, width "
                f"{mc.width:g}, {mc.pooling} pooling, dropout {mc.dropout:g}).")
    quantized = " (some weights stored as int8)" if quantized_layers(model) else ""
    try:
        cost = f", {flops_per_clip(model, meta.feature_config) / 1e6:,.0f} MFLOPs per 2.5 s clip (forward pass)"
    except SerkerasError:  # counted with TensorFlow only
        cost = ""
    return [what + f" {model.count_params():,} parameters, {Path(path).stat().st_size / 2**20:.1f} MiB on disk"
            f"{quantized}{cost}."]


def describe_features(fc, input_names=("logmel",)):
    """One sentence on the features a model computes from audio (all stored in the model file); `input_names`:
    the model's inputs (`serkeras.evaluation.model_input_names`), which say whether it reads spectral columns."""
    level = (f"each recording first scaled to an active speech level of {fc.level_dbfs:g} dBFS, so how loud it was "
             "recorded does not change the prediction" if fc.level_dbfs is not None
             else {"peak": "each recording first scaled to a peak of full scale",
                   "rms": "each recording first scaled to a fixed RMS level"}.get(fc.audio_normalization,
                                                                                  "the level as recorded"))
    length = ("whole recordings (recordings longer than the window `serkeras predict` uses are cut into "
              "overlapping windows whose probabilities are averaged)" if fc.length_mode == "variable"
              else f"{fc.fixed_seconds:g} s cropped or padded")
    by_speaker = (", then normalised by the statistics of the speaker's recordings" if fc.speaker_norm else "")
    spectral = (f" and {fc.n_spectral} spectral columns (MFCCs, deltas, spectral descriptors"
                f"{', log F0 and its delta' if fc.pitch else ''})" if "spectral" in input_names else "")
    return (f"Features (stored in the file): {fc.n_mels} log-mel bands from {fc.fmin:g} to {fc.fmax:g} Hz{spectral} "
            f"every {1000 * fc.hop_length / fc.sample_rate:g} ms at {fc.sample_rate} Hz, {level}; {length}"
            f"{by_speaker}.")


def encoder_line(encoder):
    """Where a Whisper model's pre-trained weights came from: the checkpoint's folder name and, when it is at
    hand, its weights' fingerprint."""
    from serkeras.models.whisper import read_checkpoint

    sentence = f"Encoder weights: OpenAI's Whisper (MIT licence), the checkpoint `{Path(encoder).name}`"
    if Path(encoder).exists():
        sentence += (f" (`serkeras.models.whisper.read_checkpoint(PATH).fingerprint()` is "
                     f"`{read_checkpoint(encoder).fingerprint()[:16]}...`)")
    return sentence + "."


def training_lines(config, metrics):
    """What a card says about the run that trained the model, from its `config` (config.json) and `metrics`
    (metrics.json): data, split, settings and time."""
    tc = config.get("train_config", {})
    sources = [*config.get("data_dirs", ()), *config.get("manifests", ())] or [
        config[k] for k in ("data_dir", "manifest") if config.get(k)]
    named = " (" + ", ".join(f"`{public_path(s)}`" for s in sources) + ")" if sources else ""
    lbfgs = tc.get("head_fit") == "lbfgs"
    split = config.get("split", "?") + (f" fold {config.get('fold')} of {config.get('n_folds')}"
                                        if config.get("split") == "kfold" else "")
    lines = [f"- Data: {config.get('corpus', 'the corpus')}{named}, split `{split}`, seed {config.get('seed', 0)}; "
             + ("the validation part chose the classifier's L2 strength" if lbfgs
                else "the validation part chose the checkpoint") + ", and the test part is scored below."]
    if lbfgs:
        settings = ["the classifier fit as a logistic regression by L-BFGS on the pooled embeddings"]
    else:
        settings = [f"{tc.get('optimizer', '?')} at learning rate {tc.get('learning_rate', float('nan')):g}",
                    f"batch {tc.get('batch_size')}", f"up to {tc.get('epochs')} epochs"]
        if tc.get("encoder_learning_rate"):
            settings.append(f"fine-tuned encoder layers at {tc['encoder_learning_rate']:g}")
    if tc.get("augment_copies"):
        conditions = [f"{what} in {100 * tc[key]:g}% of them" for key, what in
                      (("reverb", "a synthetic room"), ("telephone", "the telephone band")) if tc.get(key)]
        changes = [what for key, what in (("noise_snr_db", "noise"), ("gain_db", "gain"), ("shift_seconds", "shift"),
                                          ("speed", "speed")) if tc.get(key)]
        settings.append(f"{tc['augment_copies']} augmented cop{'y' if tc['augment_copies'] == 1 else 'ies'} of "
                        "every training clip (" + ", ".join(changes or ["unchanged"])
                        + (f"; {' and '.join(conditions)}" if conditions else "") + ")")
    if tc.get("class_weight"):
        settings.append("each class weighted by the inverse of its share of the training clips")
    if tc.get("label_smoothing"):
        settings.append(f"label smoothing {tc['label_smoothing']:g}")
    if tc.get("mixup_alpha"):
        settings.append(f"mixup α {tc['mixup_alpha']:g}")
    if tc.get("quantize", "none") != "none":
        settings.append(f"{tc['quantize']} weights after training")
    lines.append("- Training: " + ", ".join(settings) + " (the run's `config.json` holds every setting).")
    if "train_seconds" in metrics:
        epochs = f", {metrics['timed_epochs']} epochs" if metrics.get("timed_epochs") and not lbfgs else ""
        lines.append(f"- Time: {metrics['train_seconds']:.0f} s of training (wall-clock{epochs}; the run's "
                     "`metrics.json`).")
    return lines


def _table(head, rows):
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def _bootstrap_cell(value, speakers, statistic):
    """`value` as a percentage with its speaker-bootstrap 95% interval (none with one speaker)."""
    if len(set(speakers)) < 2:
        return _percent(value)
    low, high = speaker_bootstrap(speakers, statistic)
    return f"{_percent(value)} ({100 * low:.1f}-{100 * high:.1f})"


def results_lines(report, clips, y_true, y_pred, labels, corpus_name="all"):
    """'## Results' of a card: each corpus's and all clips' scores with speaker-bootstrap intervals, per-class
    scores, recall per corpus and the confusion matrix.

    Parameters
    ----------
    report : dict
        `serkeras.api.clips_report` of the clips.
    clips : list of serkeras.corpus.Clip
    y_true, y_pred : ndarray of int
        Each clip's class and predicted class.
    labels : list of str
    corpus_name : str, optional
        The row's name when the clips are of one corpus.

    Returns
    -------
    list of str
    """
    from sklearn.metrics import recall_score

    by_corpus = report.get("by_corpus", {})
    speakers = np.array([c.speaker for c in clips])  # prefixed with the corpus when there are several
    corpora = np.array([c.corpus for c in clips])

    def accuracy(rows):
        return lambda i: float((y_true[rows][i] == y_pred[rows][i]).mean())

    def unweighted_recall(rows, scored):
        def statistic(i):  # over the corpus's classes this resample holds, as the point estimate takes them
            present = sorted(set(y_true[rows][i].tolist()) & scored)
            return float(recall_score(y_true[rows][i], y_pred[rows][i], labels=present, average="macro",
                                      zero_division=0))
        return statistic

    table = []
    for row_name, own in [*by_corpus.items(), ("all" if by_corpus else corpus_name, report)]:
        rows = np.flatnonzero(corpora == row_name) if row_name in by_corpus else np.arange(len(clips))
        scored = set(y_true[rows].tolist())
        table.append([row_name, str(own["n"]), str(len(set(speakers[rows]))),
                      _bootstrap_cell(own["accuracy"], speakers[rows], accuracy(rows)),
                      _bootstrap_cell(own["unweighted_average_recall"], speakers[rows],
                                      unweighted_recall(rows, scored)),
                      f"{own['macro_f1']:.3f}", f"{own.get('expected_calibration_error', float('nan')):.3f}"])
    lines = [*_table(["corpus", "clips", "speakers", "accuracy (95% interval)", "UA (95% interval)", "macro-F1",
                      "ECE"], table),
             "", f"Intervals: {BOOTSTRAP} bootstrap resamples of whole speakers (none for one speaker). UA is the "
                 "unweighted average recall (the mean of the classes' recalls) over the classes each corpus has; "
                 "ECE the expected calibration error of the predicted class's probability (15 bins)."]
    if report.get("accuracy_by_sex"):
        lines += ["", "By sex, where the corpus gives it: "
                  + ", ".join(f"{sex} {_percent(acc)} ({sum(c.sex == sex for c in clips)} clips)"
                              for sex, acc in report["accuracy_by_sex"].items())
                  + ". Few speakers per sex: not a measured bias, nor its absence."]
    lines += ["", "Per class, all clips:", "", *_table(
        ["emotion", "precision", "recall", "F1", "clips"],
        [[label, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])]
         for label, c in report["per_class"].items()])]
    if by_corpus:
        lines += ["", "Recall per corpus (– where the corpus has no such clip):", "", *_table(
            ["corpus", *labels],
            [[row_name, *(f"{own['per_class'][label]['recall']:.3f}" if own["per_class"][label]["support"] else "–"
                          for label in labels)] for row_name, own in by_corpus.items()])]
    lines += ["", "Confusion matrix, all clips (rows: the recording's label; columns: the prediction):", "",
              *_table(["", *labels], [[f"**{label}**", *map(str, row)]
                                      for label, row in zip(labels, report["confusion_matrix"])])]
    return lines


def conditions_lines(rows):
    """'### Under other recording conditions': `serkeras.evaluation.robustness_report`'s rows as a table."""
    first = rows[0]
    return ["", "### Under other recording conditions", "",
            "The same clips with every recording changed (`serkeras evaluate --perturb`):", "", *_table(
                ["condition", "clips", "accuracy", "UA", "Δ accuracy (points)", "Δ UA (points)"],
                [[r["condition"], str(r["n"]), _percent(r["accuracy"]), _percent(r["unweighted_average_recall"]),
                  f"{100 * (r['accuracy'] - first['accuracy']):+.1f}",
                  f"{100 * (r['unweighted_average_recall'] - first['unweighted_average_recall']):+.1f}"]
                 for r in rows])]


def speaker_statistics_rows(model, meta, clips, y_true, cache_dir=None, seed=0):
    """{where each speaker's statistics come from: accuracy} of a model that normalises by speaker.

    Statistics from all of the speaker's `clips` (as `serkeras evaluate` takes them), from a few of them drawn at
    random (`SPEAKER_SUBSET_SIZES`, smaller than every speaker's clips; mean of `SPEAKER_SUBSET_DRAWS` draws), and
    from the clip alone (``serkeras predict --speaker file``).

    Parameters
    ----------
    model, meta
        From `serkeras.models.load_model`; ``meta.normalises_by_speaker`` must be true.
    clips : list of serkeras.corpus.Clip
        Clips with features (in the cache or computable).
    y_true : ndarray of int
        Their classes, in the model's label order.
    cache_dir : optional
        Feature cache.
    seed : int, optional
        Seed of the random subsets.

    Returns
    -------
    dict of str -> float
    """
    from serkeras.cache import cached_features
    from serkeras.evaluation import predict_features, standardized_head_probabilities
    from serkeras.features import compute_stats
    from serkeras.models import speaker_stages
    from serkeras.speakers import embedding_stats, normalize_by_speaker

    config = meta.feature_config
    features = cached_features(clips, config, cache_dir=cache_dir, progress=False).all_of(clips)
    stages = speaker_stages(model)
    if stages:
        embedder, head = stages
        embeddings = predict_features(embedder, features, config.length_mode, config.fixed_frames)

        def stats_of(indices):
            return embedding_stats(embeddings[list(indices)])

        def predicted(keys, stats):
            return standardized_head_probabilities(head, embeddings, keys, stats).argmax(axis=1)
    else:
        def stats_of(indices):
            return compute_stats([features[i] for i in indices])

        def predicted(keys, stats):
            normalised = normalize_by_speaker(features, keys, stats, config.speaker_scale)
            return predict_features(model, normalised, config.length_mode, config.fixed_frames).argmax(axis=1)

    rng = np.random.default_rng(seed)
    speakers = [c.speaker for c in clips]  # prefixed with the corpus when there are several
    members = {s: [i for i, x in enumerate(speakers) if x == s] for s in sorted(set(speakers))}

    def score(chosen):
        stats = {s: stats_of(chosen(indices)) for s, indices in members.items()}
        return float(np.mean(predicted(speakers, stats) == y_true))

    rows = {"all of the speaker's clips (`serkeras evaluate`)": score(lambda idx: idx)}
    fewest = min(len(indices) for indices in members.values())
    for n in (n for n in SPEAKER_SUBSET_SIZES if n < fewest):
        rows[f"{n} of the speaker's clips at random (mean of {SPEAKER_SUBSET_DRAWS} draws)"] = float(np.mean(
            [score(lambda idx: rng.choice(idx, n, replace=False)) for _ in range(SPEAKER_SUBSET_DRAWS)]))
    alone = {c.path: stats_of([i]) for i, c in enumerate(clips)}
    rows["the clip alone (`serkeras predict --speaker file`)"] = float(np.mean(
        predicted([c.path for c in clips], alone) == y_true))
    return rows


def fold_results(kfold_dir):
    """Each finished fold's (config.json, metrics.json) of a `serkeras train --split kfold --folds` run.

    Raises
    ------
    SerkerasError
        When no fold has finished, or a fold's files cannot be read or lack test scores.
    """
    kfold_dir = Path(kfold_dir)
    folds = sorted(path.parent for path in kfold_dir.glob("fold*/metrics.json"))
    if not folds:
        raise SerkerasError(f"{kfold_dir} holds no finished fold (fold*/metrics.json): give a "
                            "`serkeras train --split kfold --folds` run")
    results = []
    for fold in folds:
        config = _read_json(fold / "config.json", "a fold's settings")
        metrics = _read_json(fold / "metrics.json", "a fold's scores")
        if not isinstance(metrics.get("test"), dict):
            raise SerkerasError(f"{fold / 'metrics.json'} has no test scores")
        results.append((config, metrics))
    return results


def cross_validation_lines(results):
    """'## Cross-validated by speaker' of a card: the mean and spread of `fold_results`' test scores."""
    from serkeras.api import FOLD_METRICS, summarise_folds

    summary = summarise_folds([metrics for _, metrics in results])
    accuracy, ua, f1 = FOLD_METRICS

    def cells(scores):
        return [f"{100 * scores[m]['mean']:.1f} ± {100 * scores[m]['std']:.1f}" for m in (accuracy, ua)] + [
            f"{scores[f1]['mean']:.3f}"]

    rows = [[name, str(len(s[accuracy]["folds"])), *cells(s)] for name, s in summary.get("by_corpus", {}).items()]
    rows.append(["all", str(len(results)), *cells(summary)])
    return ["", "## Cross-validated by speaker", "",
            f"The same settings trained anew on each of {results[0][0].get('n_folds', '?')} folds of speakers (drawn "
            f"within each corpus; {len(results)} finished), each fold's model tested on speakers it never heard, so "
            "every speaker is tested once. Mean ± standard deviation over the folds, in %, read from each fold's "
            "`metrics.json`:", "", *_table(["corpus", "folds", "accuracy", "UA", "macro-F1"], rows)]


def held_out_results(cross_corpus_dir):
    """The reports of a `serkeras cross-corpus` run (one seed, or ``--seeds N``), and its runs' settings.

    Parameters
    ----------
    cross_corpus_dir : str or Path
        The folder that `serkeras cross-corpus` wrote (``cross-corpus.json``, or ``seed<N>/cross-corpus.json``
        for each seed), with a ``held-out-<corpus>/config.json`` beside each report.

    Returns
    -------
    list of (int, list of dict, list of dict)
        Per training seed, in order: the seed, the report's rows (`serkeras.evaluation.cross_corpus_rows`)
        and the config.json of each held-out run. Every report holds the same corpora.

    Raises
    ------
    SerkerasError
        When the folder holds no finished report, a report or its runs' settings cannot be read or do not
        belong together (other corpora, the same training seed twice).
    """
    from serkeras.evaluation import CROSS_CORPUS_SCORES

    folder = Path(cross_corpus_dir)
    numbered = [(int(match.group(1)), path) for path in folder.glob("seed*/cross-corpus.json")
                if (match := re.fullmatch(r"seed(-?\d+)", path.parent.name))]
    reports = [path for _, path in sorted(numbered)] or [p for p in [folder / "cross-corpus.json"] if p.is_file()]
    if not reports:
        raise SerkerasError(f"{folder} holds no finished report (cross-corpus.json): give a `serkeras cross-corpus` "
                            "run's folder")
    results = []
    for report in reports:
        rows = _read_json(report, "a leave-one-corpus-out report")
        needed = ("corpus", "clips", *CROSS_CORPUS_SCORES)
        if not isinstance(rows, list) or len(rows) < 2 or not all(
                isinstance(r, dict) and all(k in r for k in needed) for r in rows):
            raise SerkerasError(f"{report} is not a leave-one-corpus-out report")
        configs = []
        for row in rows[:-1]:  # the last row is the mean
            path = report.parent / f"held-out-{row['corpus']}" / "config.json"
            config = _read_json(path, "a held-out run's settings")
            if not (isinstance(config, dict) and config.get("held_out") == row["corpus"]
                    and isinstance(config.get("corpora"), list) and isinstance(config.get("train_config"), dict)):
                raise SerkerasError(f"{path} is not the settings of the run that held out {row['corpus']}")
            configs.append(config)
        seed = configs[0]["train_config"].get("seed")
        if any(seed == other for other, _, _ in results):
            raise SerkerasError(f"{folder} holds two reports trained with seed {seed}")
        if results and [r["corpus"] for r in rows] != [r["corpus"] for r in results[0][1]]:
            raise SerkerasError(f"{report} holds other corpora than {reports[0]}")
        results.append((seed, rows, configs))
    return results


#: Training settings that may differ between runs of the same recipe: how the machine ran it, and the seed.
MACHINE_TRAINING_SETTINGS = ("seed", "distribute", "mixed_precision")


def _same_training(config, run_config, where):
    """Refuse a run (`config`) whose training settings are not those of the run that trained the model."""
    mine, theirs = run_config.get("train_config", {}), config.get("train_config", {})
    differing = sorted(key for key in set(mine) | set(theirs)
                       if key not in MACHINE_TRAINING_SETTINGS and mine.get(key) != theirs.get(key))
    if differing:
        raise SerkerasError(f"{where} was trained otherwise than the model's run (it differs in "
                            f"{', '.join(differing)}): give a run of the same recipe")


def held_out_lines(results, labels, by_speaker=False):
    """'## On corpora never heard in training' of a card: `held_out_results` as mean ± spread over the seeds.

    Parameters
    ----------
    results : list of (int, list of dict, list of dict)
        From `held_out_results`.
    labels : list of str
        The model's classes, for the per-class recalls.
    by_speaker : bool, optional
        Whether the runs' models standardise by speaker (`serkeras cross-corpus` then takes each held-out
        speaker's statistics from all of their recordings).

    Returns
    -------
    list of str
    """
    from serkeras.evaluation import cross_corpus_seed_rows

    summary = cross_corpus_seed_rows({seed: rows for seed, rows, _ in results})
    by_name = {name: [row for _, rows, _ in results for row in rows if row["corpus"] == name]
               for name in (row["corpus"] for row in summary)}
    several = len(results) > 1

    def score(row, key, scale=100, digits=1):
        cell = f"{scale * row[key]['mean']:.{digits}f}"
        return cell + (f" ± {scale * row[key]['std']:.{digits}f}" if several else "")

    table = []
    for row in summary:
        recalls = []
        for label in labels:
            values = [r.get(f"recall_{label}") for r in by_name[row["corpus"]]]
            recalls.append("" if row["corpus"] == "mean" else "–" if any(v is None for v in values)
                           else f"{100 * np.mean(values):.1f}")
        table.append([row["corpus"], str(row["clips"]), score(row, "accuracy"), score(row, "UA"),
                      score(row, "macro_f1", 1, 3), *recalls])
    trained_on = {c["held_out"]: [n for n in c["corpora"] if n != c["held_out"]] for c in results[0][2]}
    seeds = ", ".join(str(seed) for seed, _, _ in results)
    return ["", "## On corpora never heard in training", "",
            "Leave one corpus out (`serkeras cross-corpus`): the same settings trained on the other corpora ("
            + "; ".join(f"{name} held out: {' + '.join(others)}" for name, others in trained_on.items())
            + "), then tested on every recording of the corpus left out, one prediction per recording"
            + (", each speaker's statistics from all of their recordings there" if by_speaker else "")
            + ", on the classes it has. This is the better guide to recordings unlike any the model heard. "
            + (f"Mean ± standard deviation over {len(results)} training seeds ({seeds})"
               if several else f"One training seed ({seeds})")
            + ", in % (macro-F1 as a fraction; recalls are means over the seeds), read from the runs' reports; "
            "the last row averages the held-out corpora:", "",
            *_table(["held-out corpus", "clips", "accuracy", "UA", "macro-F1"] + [f"recall {x}" for x in labels],
                    table)]


def listener_lines(clips, y_true, y_pred, labels):
    """'## Compared with human listeners' of a card, for the clips among `clips` whose corpus is CREMA-D as
    released, with its listeners' votes (``summaryTable.csv``) beside the audio folder; [] when there are none.

    Parameters
    ----------
    clips : list of serkeras.corpus.Clip
    y_true, y_pred : ndarray of int
        Each clip's class and predicted class.
    labels : list of str

    Returns
    -------
    list of str
    """
    from serkeras.corpus import listener_votes, vote_credit

    tables = {}  # one summaryTable.csv per audio folder, read once
    chosen, votes = [], []
    for i, clip in enumerate(clips):
        table = Path(clip.path).resolve().parent.parent / "summaryTable.csv"
        if table not in tables:
            tables[table] = listener_votes(table) if table.is_file() else {}
        if clip.name in tables[table]:
            chosen.append(i)
            votes.append(tables[table][clip.name])
    if not chosen:
        return []
    human = np.array([vote_credit(v, clips[i].label) for i, v in zip(chosen, votes)])
    agree = np.array([vote_credit(v, labels[y_pred[i]]) for i, v in zip(chosen, votes)])
    truth, predicted = y_true[chosen], y_pred[chosen]
    interval = speaker_bootstrap([clips[i].speaker for i in chosen], lambda k: float(human[k].mean()))
    neutral = np.mean(["neutral" in v for v in votes])
    return ["", "## Compared with human listeners", "",
            "CREMA-D's `summaryTable.csv` gives, per clip, the emotion most of its crowd-sourced listeners chose "
            "from the audio alone; a tie between k emotions scores 1/k when the acted one is among them.", "",
            f"- On these {len(chosen)} CREMA-D test clips the listeners' majority names the acted emotion "
            f"{_percent(human.mean())} of the time (95% interval {100 * interval[0]:.1f}-{100 * interval[1]:.1f}%), "
            f"the model {_percent(float((truth == predicted).mean()))}; the model agrees with the listeners on "
            f"{_percent(agree.mean())}.",
            f"- The listeners said *neutral* (alone or tied) for {100 * neutral:.0f}% of these clips. The model "
            "learnt what the actors intended; the listeners judged what they heard: a reference point, not the "
            "same task.", "",
            *_table(["emotion", "listeners' recall", "model recall"],
                    [[label, _percent(human[truth == k].mean()), _percent(float((predicted[truth == k] == k).mean()))]
                     for k, label in enumerate(labels) if (truth == k).any()])]


def limitation_lines(meta, corpora, clips):
    """'## Limitations' of a card; `corpora`: the names of the corpora scored."""
    speakers = len({c.speaker for c in clips})
    return ["", "## Limitations", "",
            f"- {len(meta.labels)} classes only ({', '.join(meta.labels)}): every recording gets one of them; there "
            "is no *other* or *no emotion*.",
            f"- Scored on new speakers of {', '.join(corpora)}. Other recordings (another speaking style, language, "
            "microphone or room) may score lower: a corpus never heard in training usually scores far lower than "
            "new speakers of the corpora trained on.",
            f"- {speakers} test speakers: the intervals above say how much the numbers could move on others.",
            *(["- It needs several recordings of each speaker to do as well as above (see where each speaker's "
               "statistics come from, above)."] if meta.normalises_by_speaker else [])]


def previous_notes(card_path):
    """The hand-written ``## Notes`` section of the card at `card_path` (to its end), or []."""
    if not Path(card_path).is_file():
        return []
    lines = Path(card_path).read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip() == NOTES_HEADING]
    return [""] + lines[starts[0]:] if starts else []


def model_card(model_path, corpus, clips, split_description, *, run=None, folds=None, held_out=None,
               perturbations=(), cache_dir=None, command="", batch_size=32, name=None, reference=None, loaded=None):
    """The Markdown card of the model at `model_path`, scored on `clips` (one recording per prediction).

    Parameters
    ----------
    model_path : str or Path
        A `.keras` file.
    corpus : serkeras.corpus.Corpus
        Where `clips` come from.
    clips : list of serkeras.corpus.Clip
        Speakers the model never heard (a speaker-disjoint split's test part).
    split_description : str
        How the clips were chosen.
    run : (dict, dict), optional
        The config.json and metrics.json of the run that trained the model.
    folds : list of (dict, dict), optional
        `fold_results` of a ``--split kfold --folds`` run of the same settings.
    held_out : list, optional
        `held_out_results` of a `serkeras cross-corpus` run of the same settings.
    perturbations : sequence of serkeras.effects.Perturbation, optional
        Recording conditions to score the same clips under.
    cache_dir : optional
        Feature cache.
    command : str, optional
        The command that wrote the card, quoted in it.
    batch_size : int, optional
    name, reference : str, optional
        The model's name in the card's title (default: its file's) and how a user names it to
        `serkeras predict --model` (default: the name).
    loaded : (keras.Model, ModelMetadata), optional
        The model at `model_path`, already loaded (default: loaded here).

    Returns
    -------
    str
    """
    from serkeras import __version__
    from serkeras.api import clips_report, open_model
    from serkeras.evaluation import (check_model_labels, model_input_names, model_label_indices, predict_clips,
                                     robustness_report)
    from serkeras.shipped import default_model

    model, meta = loaded or open_model(model_path)
    check_model_labels(meta, corpus.labels)
    name, labels = name or Path(model_path).stem, list(meta.labels)
    reference = reference or name
    kept, probabilities = predict_clips(model, meta, clips, 0, cache_dir, None, batch_size)
    if not kept:
        raise SerkerasError("no usable clips to score the model on")
    report = clips_report(meta, corpus, kept, probabilities)
    y_true = np.asarray(model_label_indices(meta, corpus, kept))
    y_pred = probabilities.argmax(axis=1)
    by_speaker = meta.normalises_by_speaker
    model_option = "" if reference == default_model().name else f" --model {reference}"
    predict = (f"serkeras predict{model_option} recordings_of_one_speaker/   # several recordings of each speaker"
               if by_speaker else f"serkeras predict{model_option} my_recording.wav")
    read = [what for what, given in (("how it trained", run), ("the cross-validated scores", folds),
                                     ("the scores on corpora left out of training", held_out)) if given]
    lines = [
        f"# Model card: `{name}`", "",
        f"Speech emotion recognition of {len(labels)} classes ({', '.join(labels)}) from "
        f"{meta.feature_config.sample_rate / 1000:g} kHz speech, "
        + ("from several recordings of each speaker: it standardises each recording by the speaker's others."
           if by_speaker else "from one recording at a time.")
        + f" Written by `{command}` (serkeras {__version__}, {datetime.date.today().isoformat()}): every score "
          "below was computed from the model file and the corpora named"
        + (f"; {' and '.join(read)} {'is' if len(read) == 1 else 'are'} read from the runs' files, as each "
           "section says" if read else "") + ".", "",
        "## Use", "", "```", predict, "```", "",
        f"In Python: `model, meta = serkeras.api.open_model({reference!r})`, then "
        "`serkeras.inference.predict_files(model, meta, paths)`; `meta.labels` and `meta.feature_config` travel with "
        "the file.", "",
        "## Model", "", *describe_model(model, meta, model_path), "",
        *([f"- {encoder_line(meta.model_config.encoder)}"] if meta.model_config.arch == "whisper" else []),
        f"- {describe_features(meta.feature_config, model_input_names(model))}"]
    if run is not None:
        lines += ["", "## Training", "", *training_lines(*run)]
    skipped = len(clips) - len(kept)
    lines += ["", "## Results on speakers never heard in training", "",
              f"{len(kept)} recordings ({split_description}), one prediction per recording"
              + (", each speaker's statistics from all of their recordings here" if by_speaker else "")
              + (f"; {skipped} could not be read and are left out" if skipped else "") + ".", "",
              *results_lines(report, kept, y_true, y_pred, labels, corpus.name)]
    if perturbations:
        lines += conditions_lines(robustness_report(model, meta, corpus, kept, perturbations, 0, cache_dir, None,
                                                    batch_size))
    if by_speaker:
        rows = speaker_statistics_rows(model, meta, kept, y_true, cache_dir)
        lines += ["", "### Where each speaker's statistics come from", "",
                  "`serkeras predict` groups recordings by speaker (`--speaker`); accuracy on the same clips when "
                  "each speaker's statistics come from:", "",
                  *_table(["statistics from", "accuracy"], [[k, _percent(v)] for k, v in rows.items()])]
    if folds:
        lines += cross_validation_lines(folds)
    if held_out:
        lines += held_out_lines(held_out, labels, by_speaker)
    lines += listener_lines(kept, y_true, y_pred, labels)
    lines += limitation_lines(meta, corpus.corpus_names, kept)
    return "\n".join(lines) + "\n"


def write_model_card(card_path, text):
    """Write `text` (a card) to `card_path` atomically, keeping the ``## Notes`` section of the card it replaces.

    Parameters
    ----------
    card_path : str or Path
    text : str
        From `card_for` or `model_card`.

    Returns
    -------
    Path
    """
    from serkeras.training import write_text_atomically

    notes = previous_notes(card_path)
    card_path = Path(card_path)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(card_path, text + ("\n".join(notes) + "\n" if notes else ""))
    return card_path


def card_for(model_value=None, run_dir=None, data_dir=(), manifest=(), split=None, kfold_dir=None, perturbations=(),
             cache_dir=None, batch_size=32, cross_corpus_dir=None):
    """A model's card, its data and split resolved as `serkeras card` resolves them.

    Parameters
    ----------
    model_value : str or Path, optional
        A `.keras` file, a shipped model's name, or a run folder (its ``model.keras``, trained by that
        run); None for the default shipped model.
    run_dir : str or Path, optional
        The run that trained the model (default: MODEL's folder when it is a run folder): the card
        says how it trained, and its corpora and split are the defaults.
    data_dir, manifest : sequence, optional
        The corpora to score on (`serkeras.corpus.load_corpora`); default the run's.
    split : dict, optional
        `serkeras.api.SplitSettings` fields to change from the run's split, or from the ``actor``
        split without a run. The card scores the split's test part; a ``random`` split, or another
        split than the run's, is refused, since its test part may hold speakers the model heard.
    kfold_dir : str or Path, optional
        A ``--split kfold --folds`` run of the same settings, for cross-validated scores.
    perturbations, cache_dir, batch_size
        As `model_card` takes them.
    cross_corpus_dir : str or Path, optional
        A `serkeras cross-corpus` run (one seed or several) of the same settings, for scores on corpora left
        out of training.

    Returns
    -------
    str

    Raises
    ------
    SerkerasError
        For a missing or unreadable model or run, a run or k-fold run of another model, or a split whose
        test part the model may have heard.
    """
    from serkeras.api import SplitSettings, evaluation_part, resumed_run, source_list
    from serkeras.corpus import load_corpora
    from serkeras.models import load_model
    from serkeras.shipped import default_model, resolve_model

    model_folder = Path(model_value) if model_value is not None and Path(model_value).is_dir() else None
    model_path = model_folder / "model.keras" if model_folder is not None else resolve_model(model_value)
    model, meta = load_model(model_path)  # a wrong file fails here, before any scoring
    run_dir = run_dir if run_dir is not None else model_folder
    run = stored = None
    if run_dir is not None:
        config = _read_json(Path(run_dir) / "config.json", "the run's settings")
        _same_model_settings(config, meta, Path(run_dir) / "config.json")
        metrics_path = Path(run_dir) / "metrics.json"
        run = (config, _read_json(metrics_path, "the run's scores") if metrics_path.is_file() else {})
        stored = resumed_run(run_dir).run
    folds = fold_results(kfold_dir) if kfold_dir is not None else None
    for config, _ in folds or ():
        _same_model_settings(config, meta, Path(kfold_dir))
        if run is not None:
            _same_training(config, run[0], Path(kfold_dir))
    held_out = held_out_results(cross_corpus_dir) if cross_corpus_dir is not None else None
    for _, _, configs in held_out or ():
        for config in configs:
            _same_model_settings(config, meta, Path(cross_corpus_dir))
            if run is not None:
                _same_training(config, run[0], Path(cross_corpus_dir))
    base = stored.split if stored is not None else SplitSettings("actor")
    chosen = dataclasses.replace(base, **(split or {}))
    if chosen.kind == "random":
        raise SerkerasError("a card scores speakers the model never heard: use a speaker-disjoint split "
                            "(--split actor or kfold), not random")
    if stored is not None and chosen != stored.split:
        raise SerkerasError(f"{run_dir} was trained on another split ({stored.split}); its card scores that "
                            "split's test part: give no split options")
    explicit_data = bool(data_dir or manifest)
    if not explicit_data and stored is not None:
        data_dir, manifest = stored.data_dir, stored.manifest
    if cache_dir is None and stored is not None:
        cache_dir = stored.cache_dir
    data_dir, manifest = source_list(data_dir), source_list(manifest)
    corpus = load_corpora(data_dir, manifest)
    for _, _, configs in held_out or ():
        if set(configs[0]["corpora"]) != set(corpus.corpus_names):
            raise SerkerasError(f"{cross_corpus_dir} left out each of {', '.join(configs[0]['corpora'])} in turn, "
                                f"not of the corpora carded ({', '.join(corpus.corpus_names)})")
    clips, described = evaluation_part(corpus, chosen, "test")
    if model_folder is not None:
        shown, name = public_path(model_folder), model_folder.name
        reference = f"{shown}/model.keras"
    elif model_value is None:
        shown = name = reference = default_model().name
    else:
        shown = public_path(model_value) if Path(model_value).exists() else str(model_value)
        in_run = run_dir is not None and Path(model_path).resolve().parent == Path(run_dir).resolve()
        name, reference = Path(run_dir).name if in_run else Path(shown).stem, shown
    named_run = run_dir if run_dir is not None and (model_folder is None or Path(run_dir) != model_folder) else None
    command = card_command(shown, named_run, data_dir if explicit_data or stored is None else (),
                           manifest if explicit_data or stored is None else (), chosen, kfold_dir, perturbations,
                           cross_corpus_dir)
    return model_card(model_path, corpus, clips, described, run=run, folds=folds, held_out=held_out,
                      perturbations=perturbations, cache_dir=cache_dir, command=command, batch_size=batch_size,
                      name=name, reference=reference, loaded=(model, meta))
