"""Predictions in corpus order and the metrics the field reports (from scikit-learn)."""

import weakref

import keras
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from serkeras.errors import DataError
from serkeras.features import eval_order, feature_kinds
from serkeras.onnx_runtime import OnnxModel
from serkeras.pipeline import clip_lengths, make_dataset
from serkeras.speakers import embedding_speaker_stats, speaker_input_arrays


def model_input_names(model):
    """The names of a Keras model's inputs, or of an ONNX export's (`serkeras.onnx_runtime.OnnxModel`)."""
    return model.input_names if isinstance(model, OnnxModel) else tuple(t.name for t in model.inputs)


def predict_features(model, feature_list, length_mode, fixed_frames=None, batch_size=32, speakers=None,
                     reference=None, recordings=None):
    """Class probabilities for each clip, in the order of `feature_list`.

    Variable-length batches are formed in length order (little padding) and
    put back in input order afterwards.

    A model that standardises its embedding by speaker (`serkeras.models.speaker_stages`)
    needs `speakers`, one key per clip: each clip's embedding is standardised with
    the mean and variance of the embeddings of its speaker's clips in `feature_list`,
    or, with `reference` = (feature list, speaker keys), of its speaker's clips there.
    When the clips are windows of longer recordings, `recordings` (one key per clip)
    makes each recording count once in those statistics (`embedding_speaker_stats`).
    """
    if isinstance(model, OnnxModel):  # batched the same way (exports of speaker-standardised models are refused)
        return model.predict(feature_list, batch_size)
    from serkeras.models import speaker_stages

    stages = speaker_stages(model)
    if stages is None:
        return _predict(model, feature_list, length_mode, fixed_frames, batch_size)
    if speakers is None:
        raise ValueError(f"model {model.name!r} standardises by speaker: give each clip's speaker")
    embedder, head = stages
    embeddings = _predict(embedder, feature_list, length_mode, fixed_frames, batch_size)
    if reference is None:
        stats = embedding_speaker_stats(embeddings, speakers, recordings)
    else:
        stats = embedding_speaker_stats(_predict(embedder, reference[0], length_mode, fixed_frames, batch_size),
                                        reference[1])
    return standardized_head_probabilities(head, embeddings, speakers, stats, batch_size)


def standardized_head_probabilities(head, embeddings, speakers, stats, batch_size=32):
    """The `head` of `serkeras.models.speaker_stages` on `embeddings`, each clip's with `stats[its speaker]`
    (as `embedding_speaker_stats` gives them)."""
    statistics = speaker_input_arrays(speakers, stats)
    return np.asarray(head.predict([embeddings, *statistics], batch_size=batch_size, verbose=0))


#: model -> {input signature: its `_batch_predictor` under TensorFlow} (dropped with the model).
_COMPILED = weakref.WeakKeyDictionary()


def _batch_predictor(model, batch_spec, n_batches):
    """A function from a batch of NumPy inputs to `model`'s outputs as NumPy arrays.

    Keras' `predict_on_batch` traces its TensorFlow graph for the first batch's
    exact shape, then again for each new shape until it generalises: three
    traces for batches of varying length and a smaller last batch. For several
    batches under TensorFlow the model is traced here once, for `batch_spec`
    (the dataset's `element_spec`: any batch size, any number of frames). One
    batch keeps Keras' trace of its exact shape, which is faster to make than a
    trace for any shape. JAX compiles per shape anyway, and torch runs eagerly.
    """
    if n_batches < 2 or keras.backend.backend() != "tensorflow" or model.run_eagerly:
        return lambda inputs: keras.tree.map_structure(np.asarray, model.predict_on_batch(inputs))
    import tensorflow as tf

    # One trace per signature: a fixed-length model may be fed clips fitted to another length.
    traces = _COMPILED.setdefault(model, {})
    signature = repr(batch_spec)
    predictor = traces.get(signature)
    if predictor is None:
        reference = weakref.ref(model)  # the cache must not keep the model alive
        # No autograph: Keras layers are written with keras.ops (as Keras' own predict step is traced).
        predictor = tf.function(lambda inputs: reference()(inputs, training=False), input_signature=[batch_spec],
                                autograph=False)
        traces[signature] = predictor
    return lambda inputs: keras.tree.map_structure(np.asarray, predictor(inputs))


def _batches(model, feature_list, n_classes, length_mode, fixed_frames, batch_size):
    """(NumPy batches of `feature_list`'s inputs to `model`, `_batch_predictor` for them)."""
    ds = make_dataset(feature_list, np.zeros(len(feature_list), np.int32), n_classes, length_mode, fixed_frames,
                      batch_size=batch_size, input_names=model_input_names(model))
    ds = ds.map(lambda x, y: x)
    # NumPy batches: JAX cannot take TensorFlow tensors, and every backend takes NumPy.
    return ds.as_numpy_iterator(), _batch_predictor(model, ds.element_spec, -(-len(feature_list) // batch_size))


def _predict(model, feature_list, length_mode, fixed_frames, batch_size):
    n_classes = model.outputs[0].shape[-1]
    batches, predict = _batches(model, feature_list, n_classes, length_mode, fixed_frames, batch_size)
    probabilities = np.concatenate([predict(x) for x in batches], axis=0)
    if length_mode == "fixed":
        return probabilities
    out = np.empty_like(probabilities)
    out[eval_order(clip_lengths(feature_list))] = probabilities
    return out


def frame_outputs(model, feature_list, batch_size=32, progress=None):
    """Per-clip outputs of a model stage that maps frames to frames (such as the `front` of
    `serkeras.models.frozen_stages`), in the order of `feature_list`.

    `model` takes variable-length features and their ``lengths`` and returns
    frame tensors (batch, frames', dim), then the clips' frame counts after it;
    each clip's real frames are kept, keyed ``frames0``, ``frames1``, ... as the
    next stage's inputs are named. `progress`, if given, is called with the
    number of clips done after each batch.
    """
    batches, predict = _batches(model, feature_list, 1, "variable", None, batch_size)
    order = eval_order(clip_lengths(feature_list))
    out = [None] * len(feature_list)
    done = 0
    for x in batches:
        *frames, lengths = predict(x)
        for row, length in enumerate(lengths):
            out[order[done + row]] = {f"frames{j}": f[row, :length] for j, f in enumerate(frames)}
        done += len(lengths)
        if progress is not None:
            progress(done)
    return out


def predict_versions(model, versions, length_mode, fixed_frames=None, batch_size=32, speakers=None,
                     references=None):
    """Mean class probabilities over versions of the same clips, such as each clip and its
    test-time augmented copies (`versions`: feature lists, all in one clip order).

    `speakers` and `references` (one `reference` per version) as in `predict_features`:
    each version is standardised by the same version of the reference clips.
    """
    references = references or [None] * len(versions)
    return np.mean([predict_features(model, v, length_mode, fixed_frames, batch_size, speakers, r)
                    for v, r in zip(versions, references)], axis=0)


def predict_clips(model, meta, clips, copies=0, cache_dir=None, speaker_clips=None, batch_size=32,
                  require_all=False, perturbation=None):
    """Class probabilities of `model` (with `meta`, its metadata) for corpus `clips`, from the feature cache.

    As `serkeras evaluate` scores them: `copies` test-time augmented copies
    averaged in, and each speaker's statistics (for models that normalise by
    speaker) taken from their clips among `clips`, or among `speaker_clips`
    when given, as in `serkeras.cache.model_features`. Only the feature kinds that the model
    takes are read from the cache or computed. A `perturbation` (`serkeras.effects.Perturbation`)
    changes every recording first.

    Returns
    -------
    (list of the usable clips, array of probabilities (clips, classes))
    """
    from serkeras.cache import model_features

    config = meta.feature_config
    kinds = feature_kinds(model_input_names(model))
    kept, versions = model_features(clips, config, copies, cache_dir, require_all, speaker_clips, kinds, perturbation)
    if not kept:
        return kept, np.zeros((0, len(meta.labels)), np.float32)
    by_speaker = {}
    if meta.standardises_embedding:
        by_speaker["speakers"] = [c.speaker for c in kept]
        if speaker_clips is not None:
            reference, references = model_features(speaker_clips, config, copies, cache_dir, kinds=kinds,
                                                   perturbation=perturbation)
            by_speaker["references"] = [(version, [c.speaker for c in reference]) for version in references]
    return kept, predict_versions(model, versions, config.length_mode, config.fixed_frames, batch_size, **by_speaker)


def model_label_indices(meta, corpus, clips):
    """The true class of each of `clips` (of `corpus`) as an index into the model's labels (`meta.labels`).

    Raises
    ------
    DataError
        When a clip's label is not one the model predicts.
    """
    labels = [corpus.labels[i] for i in corpus.label_indices(clips)]
    check_model_labels(meta, labels)
    model_index = {label: i for i, label in enumerate(meta.labels)}
    return [model_index[label] for label in labels]


def check_model_labels(meta, labels):
    """Raise `DataError` when some of `labels` is not a class the model (`meta`) predicts (a corpus without some
    of the model's classes is fine: it is scored on those it has)."""
    unknown = sorted(set(labels) - set(meta.labels))
    if unknown:
        raise DataError(f"the corpus has labels the model does not predict: {', '.join(unknown)} "
                        f"(the model's: {', '.join(meta.labels)})")


def robustness_report(model, meta, corpus, clips, perturbations, copies=0, cache_dir=None, speaker_clips=None,
                      batch_size=32):
    """How `model` scores the same `clips` as recorded and under each of `perturbations`.

    Each condition is scored as `serkeras evaluate` scores clips (`predict_clips`):
    one prediction per recording, test-time augmented copies and speaker
    statistics as asked, every recording of the condition (those of
    `speaker_clips` too) changed alike. Perturbed features are cached apart
    from the clips' own.

    Parameters
    ----------
    model, meta
        From `serkeras.models.load_model`.
    corpus : serkeras.corpus.Corpus
        Gives each clip's label.
    clips : sequence of Clip
    perturbations : sequence of serkeras.effects.Perturbation
        The conditions besides "as recorded", which always comes first.
    copies, cache_dir, speaker_clips, batch_size
        As in `predict_clips`.

    Returns
    -------
    list of dict
        One per condition: ``condition`` (its name), ``perturbation`` (its settings, None as recorded),
        ``skipped`` (clips that could not be used) and the `classification_report` of the rest.

    Raises
    ------
    DataError
        When no clip can be used in some condition.
    """
    rows = []
    for perturbation in [None, *perturbations]:
        kept, probabilities = predict_clips(model, meta, clips, copies, cache_dir, speaker_clips, batch_size,
                                            perturbation=perturbation)
        condition = str(perturbation) if perturbation is not None else "as recorded"
        if not kept:
            raise DataError(f"no usable clips {condition}")
        report = classification_report(model_label_indices(meta, corpus, kept), probabilities.argmax(axis=1),
                                       meta.labels, probabilities=probabilities)
        rows.append({"condition": condition, "perturbation": perturbation.to_dict() if perturbation else None,
                     "skipped": len(clips) - len(kept), **report})
    return rows


def format_robustness(rows):
    """`robustness_report`'s conditions as a plain-text table, with each one's change from the first."""
    first = rows[0]
    lines = [f"{'condition':<24} {'clips':>6} {'accuracy':>9} {'UA':>7} {'macro-F1':>9} {'Δaccuracy':>10} {'ΔUA':>7}"]
    for row in rows:
        lines.append(f"{row['condition']:<24} {row['n']:>6d} {row['accuracy']:>9.4f} "
                     f"{row['unweighted_average_recall']:>7.4f} {row['macro_f1']:>9.4f} "
                     f"{row['accuracy'] - first['accuracy']:>+10.4f} "
                     f"{row['unweighted_average_recall'] - first['unweighted_average_recall']:>+7.4f}")
    skipped = [f"{row['condition']}: {row['skipped']}" for row in rows if row["skipped"]]
    if skipped:
        lines.append("clips that could not be used: " + ", ".join(skipped))
    return "\n".join(lines)


#: Equal-width confidence bins of `expected_calibration_error` (the customary 15).
CALIBRATION_BINS = 15


def expected_calibration_error(y_true, probabilities, bins=CALIBRATION_BINS):
    """Top-label expected calibration error: how far a model's confidence is from how often it is right.

    Clips are grouped by the probability of their predicted class into `bins` equal-width bins;
    the error is the clip-weighted mean, over the bins, of |accuracy - mean confidence|. 0 is a
    model whose 80%-confident predictions are right 80% of the time; a model that always says
    100% and is right half the time scores 0.5.

    Parameters
    ----------
    y_true : sequence of int
        Class indices.
    probabilities : array, shape (clips, classes)
        The model's class probabilities; the prediction is their argmax.
    bins : int

    Returns
    -------
    float
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # bin b holds [b/bins, (b+1)/bins)
    error = 0.0
    for b in np.unique(which):
        inside = which == b
        error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def classification_report(y_true, y_pred, labels, groups=None, scored=None, probabilities=None):
    """Accuracy, UA, macro/weighted F1, precision, recall, per-class table, confusion matrix.

    The macro averages, and UA (unweighted average recall: the mean of the
    per-class recalls, the field's measure beside accuracy), are taken over the
    classes the clips have (or `scored`), so a corpus without some class (ASED
    has no disgust) is not scored on it; the per-class table lists every class.

    Parameters
    ----------
    y_true, y_pred : sequence of int
        Class indices.
    labels : sequence of str
    groups : dict of str -> sequence of str, optional
        Per-clip group values (e.g. {"sex": [...]}) for per-group accuracy.
    scored : sequence of int, optional
        The classes the macro averages and UA are taken over (default: those in `y_true`),
        such as the classes a corpus has.
    probabilities : array, shape (clips, classes), optional
        The class probabilities `y_pred` was taken from: adds the calibration of the
        model's confidence (`expected_calibration_error`, and ``mean_confidence``, the mean
        probability of the predicted class), over every class the model has.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = list(range(len(labels)))
    present = sorted(set(y_true.tolist())) if scored is None else sorted(int(c) for c in scored)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro", zero_division=0)
    report = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "unweighted_average_recall": float(macro[1]),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(labels, precision, recall, f1, support)},
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }
    if probabilities is not None:
        report["expected_calibration_error"] = expected_calibration_error(y_true, probabilities)
        report["mean_confidence"] = float(np.max(probabilities, axis=1).mean())
    for name, values in (groups or {}).items():
        values = np.asarray(values)
        report[f"accuracy_by_{name}"] = {str(v): float(accuracy_score(y_true[values == v], y_pred[values == v]))
                                         for v in sorted(set(values)) if v}
    return report


def corpus_reports(y_true, y_pred, labels, corpora, label_masks=None, groups=None, probabilities=None):
    """`classification_report` of the clips of every corpus apart, and of all of them together.

    Parameters
    ----------
    y_true, y_pred : sequence of int
        Class indices.
    labels : sequence of str
    corpora : sequence of str
        Each clip's corpus name.
    label_masks : array of bool, shape (clips, classes), optional
        Which classes each clip's corpus has (`serkeras.corpus.Corpus.label_masks`): a corpus's
        UA and macro averages are taken over its classes, and the whole's over every class
        some corpus has. Without it, over the classes its clips have.
    groups : dict of str -> sequence of str, optional
        Per-clip group values, as for `classification_report`.
    probabilities : array, shape (clips, classes), optional
        As for `classification_report`.

    Returns
    -------
    dict
        ``{"all": report, name: report, ...}``, corpora in sorted order.
    """
    y_true, y_pred, corpora = np.asarray(y_true), np.asarray(y_pred), np.asarray(corpora)
    probabilities = None if probabilities is None else np.asarray(probabilities)
    masks = None if label_masks is None else np.asarray(label_masks, bool)
    groups = {k: np.asarray(v) for k, v in (groups or {}).items()}

    def report(rows):
        scored = None if masks is None else np.flatnonzero(masks[rows].any(axis=0))
        return classification_report(y_true[rows], y_pred[rows], labels, {k: v[rows] for k, v in groups.items()},
                                     scored, None if probabilities is None else probabilities[rows])

    reports = {"all": report(np.arange(len(y_true)))}
    for name in sorted(set(corpora.tolist())):
        reports[name] = report(np.flatnonzero(corpora == name))
    return reports


def format_corpus_table(reports):
    """One line per corpus (and one for all of them) of `corpus_reports`: clips, accuracy, UA, macro-F1."""
    width = max(len(name) for name in reports) + 1
    lines = [f"{'corpus':<{width}} {'clips':>6} {'accuracy':>9} {'UA':>7} {'macro-F1':>9}"]
    for name, report in reports.items():
        lines.append(f"{name:<{width}} {report['n']:>6d} {report['accuracy']:>9.4f} "
                     f"{report['unweighted_average_recall']:>7.4f} {report['macro_f1']:>9.4f}")
    return "\n".join(lines)


def format_report(report):
    """The report as a plain-text table (for the terminal and logs)."""
    lines = [f"clips {report['n']}  accuracy {report['accuracy']:.4f}  UA {report['unweighted_average_recall']:.4f}  "
             f"macro-F1 {report['macro_f1']:.4f}  "
             f"weighted-F1 {report['weighted_f1']:.4f}  macro-precision {report['macro_precision']:.4f}  "
             f"macro-recall {report['macro_recall']:.4f}"
             + (f"  ECE {report['expected_calibration_error']:.4f}" if "expected_calibration_error" in report else ""),
             "",
             f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for label, row in report["per_class"].items():
        lines.append(f"{label:<10} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>7.3f} {row['support']:>8d}")
    for key in (k for k in report if k.startswith("accuracy_by_")):
        lines.append("")
        lines.append(f"{key.replace('_', ' ')}: " + ", ".join(f"{g} {a:.4f}" for g, a in report[key].items()))
    labels = report["labels"]
    width = max(7, *(len(label) for label in labels)) + 1
    lines += ["", "confusion matrix (rows: true, columns: predicted)", " " * width + "".join(f"{x[:6]:>7}" for x in labels)]
    for label, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"{label:<{width}}" + "".join(f"{v:>7d}" for v in row))
    return "\n".join(lines)


def confusion_matrix_figure(matrix, labels, title="confusion matrix"):
    """A matplotlib figure of a row-normalised confusion matrix with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5.2), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({matrix[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def save_confusion_matrix(matrix, labels, path, title="confusion matrix"):
    import matplotlib.pyplot as plt

    fig = confusion_matrix_figure(matrix, labels, title)
    fig.savefig(path)
    plt.close(fig)


def cross_corpus_rows(reports):
    """One row per held-out corpus (and their mean) of a leave-one-corpus-out report.

    Parameters
    ----------
    reports : dict of str -> dict
        Held-out corpus name -> `classification_report` of every clip of it (scored on its classes).

    Returns
    -------
    list of dict
        ``corpus, clips, accuracy, UA, macro_f1``, ``recall_<label>`` for every label (None where the
        corpus lacks the class) and ``confusion_matrix`` (rows: true, columns: predicted); the last
        row, "mean", averages accuracy, UA and macro-F1 over the held-out corpora, each counted once.
    """
    labels = sorted({label for report in reports.values() for label in report["labels"]})
    rows = []
    for name, report in reports.items():
        row = {"corpus": name, "clips": report["n"], "accuracy": report["accuracy"],
               "UA": report["unweighted_average_recall"], "macro_f1": report["macro_f1"]}
        for label in labels:
            per_class = report["per_class"].get(label)
            row[f"recall_{label}"] = per_class["recall"] if per_class and per_class["support"] else None
        row["confusion_matrix"] = {"labels": report["labels"], "counts": report["confusion_matrix"]}
        rows.append(row)
    mean = {"corpus": "mean", "clips": sum(r["clips"] for r in rows)}
    mean.update({m: float(np.mean([r[m] for r in rows])) for m in ("accuracy", "UA", "macro_f1")})
    return rows + [mean]


def format_cross_corpus_markdown(rows):
    """`cross_corpus_rows` as markdown: the scores and per-class recalls, then each held-out corpus's confusion
    matrix."""
    labels = [k.removeprefix("recall_") for k in rows[0] if k.startswith("recall_")]
    head = ["held-out corpus", "clips", "accuracy", "UA", "macro-F1"] + [f"recall {x}" for x in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def cell(value):
        return "–" if value is None else f"{100 * value:.1f}%"

    for row in rows:
        recalls = [cell(row.get(f"recall_{x}")) if row["corpus"] != "mean" else "" for x in labels]
        lines.append("| " + " | ".join([row["corpus"], str(row["clips"]), cell(row["accuracy"]), cell(row["UA"]),
                                        f"{row['macro_f1']:.3f}"] + recalls) + " |")
    for row in rows:
        if "confusion_matrix" not in row:
            continue
        matrix = row["confusion_matrix"]
        lines += ["", f"{row['corpus']} (rows: true, columns: predicted)", "",
                  "| true \\ predicted | " + " | ".join(matrix["labels"]) + " |",
                  "|" + " --- |" * (len(matrix["labels"]) + 1)]
        lines += [f"| {label} | " + " | ".join(map(str, counts)) + " |"
                  for label, counts in zip(matrix["labels"], matrix["counts"]) if sum(counts)]
    return "\n".join(lines) + "\n"


def mean_and_std(reports, scores, values_key):
    """Mean and population standard deviation of each score over several reports of the same kind.

    Parameters
    ----------
    reports : list of dict
        Each holds every name in `scores` (e.g. the test scores of each fold, or of each seed).
    scores : sequence of str
        The keys to summarise.
    values_key : str
        Under which key each summary keeps the reports' values, in order (e.g. ``"folds"``).

    Returns
    -------
    dict
        {score: {"mean": float, "std": float, values_key: list}}.
    """
    return {score: {"mean": float(np.mean([r[score] for r in reports])),
                    "std": float(np.std([r[score] for r in reports])),
                    values_key: [r[score] for r in reports]} for score in scores}


#: The scores of a `cross_corpus_rows` row that `cross_corpus_seed_rows` summarises over seeds.
CROSS_CORPUS_SCORES = ("accuracy", "UA", "macro_f1")


def cross_corpus_seed_rows(rows_by_seed):
    """Mean and standard deviation over seeds of `cross_corpus_rows` reports of the same corpora.

    Parameters
    ----------
    rows_by_seed : dict of int -> list of dict
        Seed -> `cross_corpus_rows` of the report trained with it.

    Returns
    -------
    list of dict
        One per held-out corpus and "mean", in the reports' order: ``corpus``, ``clips``, ``seeds`` and,
        for each of `CROSS_CORPUS_SCORES`, ``{"mean", "std", "by_seed"}`` (`mean_and_std`).
    """
    reports = list(rows_by_seed.values())
    names = [row["corpus"] for row in reports[0]]
    summary = []
    for i, name in enumerate(names):
        same = [rows[i] for rows in reports]
        if any(row["corpus"] != name for row in same):
            raise ValueError("the reports hold other corpora")
        summary.append({"corpus": name, "clips": same[0]["clips"], "seeds": list(rows_by_seed),
                        **mean_and_std(same, CROSS_CORPUS_SCORES, "by_seed")})
    return summary


def format_cross_corpus_seeds_markdown(rows):
    """`cross_corpus_seed_rows` as markdown: mean ± standard deviation over the seeds, and each seed's value."""
    lines = ["| held-out corpus | clips | seeds | accuracy | UA | macro-F1 | accuracy by seed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = [f"{100 * row[m]['mean']:.1f} ± {100 * row[m]['std']:.1f}%" for m in ("accuracy", "UA")]
        lines.append(f"| {row['corpus']} | {row['clips']} | {len(row['seeds'])} | {' | '.join(cells)} | "
                     f"{row['macro_f1']['mean']:.3f} ± {row['macro_f1']['std']:.3f} | "
                     + ", ".join(f"{100 * v:.1f}%" for v in row["accuracy"]["by_seed"]) + " |")
    return "\n".join(lines) + "\n"


def write_cross_corpus_report(rows, folder):
    """Write `cross_corpus_rows` as cross-corpus.md, .csv (confusion matrices as JSON cells) and .json in `folder`.

    Returns
    -------
    list of Path
        The files written.
    """
    import csv
    import io
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"cross-corpus.{suffix}" for suffix in ("md", "csv", "json")]
    paths[0].write_text(format_cross_corpus_markdown(rows))
    table = io.StringIO()
    fields = list(rows[0])
    writer = csv.DictWriter(table, fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if k == "confusion_matrix" else ("" if v is None else v)
                         for k, v in row.items()})
    paths[1].write_text(table.getvalue())
    paths[2].write_text(json.dumps(rows, indent=2))
    return paths
