"""Predictions in corpus order and the metrics the field reports (from scikit-learn)."""

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from serkeras.pipeline import clip_lengths, eval_order, make_dataset


def model_input_names(model):
    return tuple(t.name for t in model.inputs)


def predict_features(model, feature_list, length_mode, fixed_frames=None, batch_size=32):
    """Class probabilities for each clip, in the order of `feature_list`.

    Variable-length batches are formed in length order (little padding) and
    put back in input order afterwards.
    """
    n_classes = model.outputs[0].shape[-1]
    ds = make_dataset(feature_list, np.zeros(len(feature_list), np.int32), n_classes, length_mode, fixed_frames,
                      batch_size=batch_size, input_names=model_input_names(model))
    ds = ds.map(lambda x, y: x)
    probabilities = np.concatenate([np.asarray(model.predict_on_batch(x)) for x in ds], axis=0)
    if length_mode == "fixed":
        return probabilities
    out = np.empty_like(probabilities)
    out[eval_order(clip_lengths(feature_list))] = probabilities
    return out


def predict_versions(model, versions, length_mode, fixed_frames=None, batch_size=32):
    """Mean class probabilities over versions of the same clips, such as each clip and its
    test-time augmented copies (`versions`: feature lists, all in one clip order)."""
    return np.mean([predict_features(model, v, length_mode, fixed_frames, batch_size) for v in versions], axis=0)


def classification_report(y_true, y_pred, labels, groups=None):
    """Accuracy, macro/weighted F1, precision, recall, per-class table, confusion matrix.

    Parameters
    ----------
    y_true, y_pred : sequence of int
        Class indices.
    labels : sequence of str
    groups : dict of str -> sequence of str, optional
        Per-clip group values (e.g. {"sex": [...]}) for per-group accuracy.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=classes, average="macro", zero_division=0)
    report = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(labels, precision, recall, f1, support)},
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }
    for name, values in (groups or {}).items():
        values = np.asarray(values)
        report[f"accuracy_by_{name}"] = {str(v): float(accuracy_score(y_true[values == v], y_pred[values == v]))
                                         for v in sorted(set(values)) if v}
    return report


def format_report(report):
    """The report as a plain-text table (for the terminal and logs)."""
    lines = [f"clips {report['n']}  accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
             f"weighted-F1 {report['weighted_f1']:.4f}  macro-precision {report['macro_precision']:.4f}  "
             f"macro-recall {report['macro_recall']:.4f}", "",
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
