"""Fitting the classifier of a frozen encoder in closed form: a logistic regression, by L-BFGS (``--head-fit lbfgs``).

When nothing below the classifier trains (a Whisper encoder with
``--fine-tune-layers 0`` and mean or mean-and-std pooling), the model is a
fixed embedding followed by a linear softmax layer, and the softmax layer is
a multinomial logistic regression. Fitting it as one (scikit-learn's
`LogisticRegression`, full-batch L-BFGS to convergence, its L2 strength
chosen on the validation speakers) needs no learning rate, epochs or early
stopping, and on CREMA-D scores several points above training the same layer
with Adam for a few epochs (see docs/training.md). The fitted standardisation
and weights are written into the model's own layers, so the saved `.keras`
file is an ordinary serkeras model: it loads and predicts without
scikit-learn.

A model whose embedding is standardised by speaker (``--speaker-standardization``)
is fitted the same way on the standardised embeddings; its population
statistics (the training speakers' mean statistics) become the weights of its
`SpeakerStandardization` layer.
"""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from serkeras.errors import SerkerasError

HEAD_FITS = ("gradient", "lbfgs")
#: Inverse L2 strengths (scikit-learn's C) tried by ``--head-fit lbfgs``; the validation speakers pick one.
HEAD_C_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: L-BFGS iterations allowed per fit (CREMA-D's Whisper embeddings converge in a few hundred).
MAX_ITERATIONS = 3000


@dataclasses.dataclass(frozen=True)
class LogisticHead:
    """A fitted standardisation and multinomial logistic regression on embeddings.

    Attributes
    ----------
    mean, scale : ndarray of shape (dim,)
        The training embeddings' mean and standard deviation (1 where it is 0).
    kernel : ndarray of shape (dim, classes)
        Weights on the standardised embedding.
    bias : ndarray of shape (classes,)
    c : float
        The inverse L2 strength chosen.
    val_accuracy : float
        Its accuracy on the validation embeddings.
    """

    mean: np.ndarray
    scale: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    c: float
    val_accuracy: float

    def probabilities(self, embeddings):
        """Class probabilities of `embeddings` (clips, dim), computed as scikit-learn's `predict_proba`."""
        logits = ((np.asarray(embeddings, np.float64) - self.mean) / self.scale) @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def check_head_fit(model_config, train_config):
    """Refuse, in one line, settings that `--head-fit lbfgs` cannot fit.

    Raises
    ------
    SerkerasError
    """
    if train_config.head_fit == "gradient":
        return
    if model_config.arch != "whisper":
        raise SerkerasError(f"--head-fit lbfgs fits the classifier of a frozen pre-trained encoder (--arch whisper), "
                            f"not of --arch {model_config.arch}")
    if model_config.fine_tune_layers:
        raise SerkerasError(f"--head-fit lbfgs needs a frozen encoder: --fine-tune-layers "
                            f"{model_config.fine_tune_layers} trains encoder layers (use --head-fit gradient)")
    if model_config.layer_pooling != "last":
        raise SerkerasError("--head-fit lbfgs pools the last kept layer: a learnt weighted sum of layers "
                            "(--layer-pooling weighted) needs --head-fit gradient")
    if model_config.pooling == "attention":
        raise SerkerasError("--head-fit lbfgs needs a pooling without weights (--pooling stats or average): "
                            "attentive pooling needs --head-fit gradient")
    for value, option in ((train_config.mixup_alpha, "--mixup"), (train_config.teacher, "--teacher"),
                          (train_config.label_smoothing, "--label-smoothing"),
                          (train_config.distribute, "--distribute")):
        if value:
            raise SerkerasError(f"--head-fit lbfgs fits hard labels in one process: leave out {option} "
                                "(or use --head-fit gradient)")


def fit_logistic_head(x_train, y_train, x_val, y_val, c_grid=HEAD_C_GRID, class_weight=None, n_classes=None):
    """Standardise, then fit a multinomial logistic regression for each C of `c_grid`; keep the best on validation.

    Parameters
    ----------
    x_train, x_val : ndarray of shape (clips, dim)
        Embeddings of the training and validation clips.
    y_train, y_val : array-like of int
        Their class indices.
    c_grid : sequence of float
        Inverse L2 strengths to try; ties on validation go to the strongest penalty (the smallest C).
    class_weight : dict or None
        Per-class loss weights (`serkeras.training.class_weights`), or None.
    n_classes : int, optional
        The model's classes (default: the highest class index seen, plus one); a class without training
        clips gets a logit that never wins.

    Returns
    -------
    LogisticHead
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        raise SerkerasError("--head-fit lbfgs needs training clips of at least two classes")
    scaler = StandardScaler().fit(x_train)
    standardized_train, standardized_val = scaler.transform(x_train), scaler.transform(x_val)
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    best = None
    # One regression refitted from strong to weak penalties, each fit starting from the previous solution
    # (the same optima, in a fraction of the L-BFGS iterations).
    regression = LogisticRegression(max_iter=MAX_ITERATIONS, class_weight=class_weight, warm_start=True)
    for c in sorted(c_grid):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # at MAX_ITERATIONS the fit is kept as it is
            regression.set_params(C=c).fit(standardized_train, y_train)
        accuracy = float(np.mean(regression.predict(standardized_val) == y_val))
        if best is None or accuracy > best[1]:
            best = ((regression.classes_, regression.coef_.copy(), regression.intercept_.copy()), accuracy, c)
    (columns, coef, intercept), accuracy, c = best
    # A class missing from the training part gets no column from scikit-learn: give it a logit that never wins.
    n_classes = n_classes or int(max(y_train.max(), y_val.max() if len(y_val) else 0)) + 1
    kernel = np.zeros((x_train.shape[1], n_classes))
    bias = np.full(n_classes, -1e4)
    if len(columns) == 2:  # scikit-learn's binary model: one row for the second class against the first
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    kernel[:, columns], bias[columns] = coef.T, intercept
    return LogisticHead(scaler.mean_, scaler.scale_, kernel, bias, float(c), accuracy)


def write_head(model, head, population=None):
    """Write a fitted `LogisticHead` into a whisper `model`'s own layers, in place.

    Without speaker standardisation, the standardisation goes into the
    ``embedding_norm`` batch normalisation (its moving statistics, and a gamma
    that cancels its epsilon) and the regression into the ``probabilities``
    layer. With it, both are folded into the speaker head's ``probabilities``
    layer and `population` ([mean, variance] of the training speakers'
    statistics) into its ``speaker_standardization`` layer.
    """
    from serkeras.models import speaker_stages

    stages = speaker_stages(model)
    if stages is None:
        norm = model.get_layer("embedding_norm")
        variance = head.scale ** 2
        gamma = np.sqrt(variance + norm.epsilon) / head.scale  # (x - mean) / sqrt(variance + eps) * gamma
        norm.set_weights([gamma.astype("float32"), np.zeros_like(variance, "float32"),
                          head.mean.astype("float32"), variance.astype("float32")])
        model.get_layer("probabilities").set_weights([head.kernel.astype("float32"), head.bias.astype("float32")])
        return model
    classifier = stages[1]
    kernel = head.kernel / head.scale[:, None]
    bias = head.bias - (head.mean / head.scale) @ head.kernel
    classifier.get_layer("probabilities").set_weights([kernel.astype("float32"), bias.astype("float32")])
    if population is None:
        raise ValueError("a speaker-standardised model needs its population statistics")
    classifier.get_layer("speaker_standardization").set_weights([np.asarray(p, "float32") for p in population])
    return model


def pooled_embeddings(front, pool, feature_list, cache_dir=None, batch_size=32, progress=None):
    """The pooled embedding of every clip: `front` through the stage cache, pooled by `pool` a chunk of clips at a
    time as they are read (`serkeras.training.stage_outputs`), so the frames of a whole corpus are never all held.

    `front` and `pool` are `serkeras.models.embedding_stages`' two stages. `progress`, if given, is called with
    the number of clips done since its last call.

    Returns
    -------
    ndarray of shape (clips, dim), float32, in the order of `feature_list`.
    """
    from serkeras.training import stage_outputs

    done = [0]

    def advance(n):
        progress(n - done[0])
        done[0] = n

    pooled = stage_outputs(front, feature_list, cache_dir, batch_size, progress=advance if progress else None,
                           then=pool)
    if not pooled:
        return np.zeros((0, pool.outputs[0].shape[-1]), np.float32)
    return np.stack([item["embedding"] for item in pooled]).astype(np.float32)


def copy_numbers(clips):
    """For each clip of a training part that holds originals then augmented copies: 0 for the original, k for
    its k-th copy (the k-th time the clip appears)."""
    seen = {}
    numbers = []
    for clip in clips:
        numbers.append(seen.get(clip.path, 0))
        seen[clip.path] = numbers[-1] + 1
    return np.asarray(numbers)


def speaker_standardized(embeddings, speakers, numbers, standardization):
    """`embeddings` standardised by `standardization` (a `SpeakerStandardization` layer) with each speaker's
    statistics over the clips of the same copy number (`numbers`): originals by originals, each set of augmented
    copies by the same copies of the speaker's clips, as `prepare_split` normalises features."""
    from serkeras.speakers import embedding_speaker_stats, speaker_input_arrays

    out = np.empty_like(embeddings)
    for number in np.unique(numbers):
        rows = np.flatnonzero(numbers == number)
        keys = [speakers[i] for i in rows]
        stats = embedding_speaker_stats(embeddings[rows], keys)
        out[rows] = np.asarray(standardization(embeddings[rows], *speaker_input_arrays(keys, stats)))
    return out


def fit_head(model, data, train_config, progress=True):
    """Fit `model`'s classifier on `data` (a `serkeras.training.SplitData`) in closed form, in place.

    The frozen encoder's outputs come from the stage cache; the embeddings of
    the training part (augmented copies included) fit a `LogisticHead` for
    each C of `train_config.head_c_grid`, the validation part picks one, and
    it is written into the model (`write_head`).

    Returns
    -------
    (LogisticHead, dict)
        The head, and each part's embeddings: {part: ndarray (clips, dim)}.
    """
    from tqdm.auto import tqdm

    from serkeras.speakers import embedding_speaker_stats, population_stats
    from serkeras.models import embedding_stages, speaker_stages
    from serkeras.training import fit_class_weight

    front, pool = embedding_stages(model)
    total = sum(len(data.parts[part][1]) for part in data.parts)
    embeddings = {}
    with tqdm(total=total, desc="frozen layers", unit="clip", disable=not progress) as bar:
        for part, (_, features, _) in data.parts.items():
            embeddings[part] = pooled_embeddings(front, pool, features, data.cache_dir, train_config.batch_size,
                                                 progress=bar.update)
    inputs = dict(embeddings)
    population = None
    stages = speaker_stages(model)
    if stages is not None:
        standardization = stages[1].get_layer("speaker_standardization")
        clips = data.parts["train"][0]
        numbers = copy_numbers(clips)
        originals = numbers == 0
        population = population_stats(embedding_speaker_stats(embeddings["train"][originals],
                                                               [c.speaker for c, o in zip(clips, originals) if o]))
        standardization.set_weights([np.asarray(p, "float32") for p in population])
        for part, (part_clips, _, _) in data.parts.items():
            numbers = copy_numbers(part_clips) if part == "train" else np.zeros(len(part_clips), int)
            inputs[part] = speaker_standardized(embeddings[part], [c.speaker for c in part_clips], numbers,
                                                standardization)
    head = fit_logistic_head(inputs["train"], data.parts["train"][2], inputs["val"], data.parts["val"][2],
                             train_config.head_c_grid, fit_class_weight(data, train_config), len(data.labels))
    write_head(model, head, population)
    return head, embeddings


def embedding_probabilities(model, embeddings, speakers=None, batch_size=32):
    """Class probabilities of `model`'s layers after its pooled embedding, for `embeddings` (clips, dim).

    Those of a model standardised by speaker standardise each clip with the
    statistics of its speaker's clips among `embeddings` (one key per clip in
    `speakers`), as `serkeras.evaluation.predict_features` does with features.
    """
    import keras

    from serkeras.evaluation import standardized_head_probabilities
    from serkeras.speakers import embedding_speaker_stats
    from serkeras.models import speaker_stages

    stages = speaker_stages(model)
    if stages is not None:
        return standardized_head_probabilities(stages[1], embeddings, speakers,
                                               embedding_speaker_stats(embeddings, speakers), batch_size)
    x = inputs = keras.Input(shape=(embeddings.shape[1],), name="embedding")
    for name in ("embedding_norm", "head_dropout", "probabilities"):
        if name in {layer.name for layer in model.layers}:
            x = model.get_layer(name)(x)
    return np.asarray(keras.Model(inputs, x).predict(embeddings, batch_size=batch_size, verbose=0))


def run_head_fit(data, feature_config, model_config, train_config, run_dir, describe=None, verbose=1):
    """`serkeras.training.run_training` for ``--head-fit lbfgs``: build, fit the head, save, score.

    The run folder gets what a trained run's gets (model.keras, config.json,
    metrics.json, confusion_matrix.png), without epochs: no history.csv or
    TensorBoard logs. With `train_config.quantize`, the encoder is quantized
    before the fit, so the head is fitted on what the saved model computes.
    Validation and test are scored from the frozen layers' cached outputs
    through the saved model's own layers (`embedding_probabilities`).

    Returns
    -------
    dict
        The metrics written to metrics.json; ``head_fit`` holds the chosen C, its
        validation accuracy and the C grid.
    """
    import keras

    from serkeras.evaluation import classification_report, save_confusion_matrix
    from serkeras.models import build_model
    from serkeras.models.saving import quantize_dense
    from serkeras.training import replacing, write_text_atomically

    if data.partial_labels:
        # A logistic regression has no way to leave a clip's missing classes out of its likelihood.
        raise SerkerasError("--head-fit lbfgs needs every training corpus to have every class; some lack one: "
                            "use --head-fit gradient, whose loss leaves each clip's missing classes out")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"feature_config": feature_config.to_dict(), "model_config": model_config.to_dict(),
              "train_config": train_config.to_dict(), **(describe or {})}
    write_text_atomically(run_dir / "config.json", json.dumps(config, indent=2))
    start = time.perf_counter()
    keras.utils.set_random_seed(train_config.seed)
    model = build_model(feature_config, model_config, data.labels, data.stats)
    quantize_dense(model, train_config.quantize)  # the classifier itself stays float32
    head, embeddings = fit_head(model, data, train_config, progress=verbose > 0)
    with replacing(run_dir / "model.keras") as tmp:
        model.save(tmp)
    metrics = {"train_seconds": round(time.perf_counter() - start, 1), "timed_epochs": 0,
               "parameters": int(model.count_params()),
               "head_fit": {"method": "lbfgs", "C": head.c, "val_accuracy": head.val_accuracy,
                            "c_grid": list(train_config.head_c_grid),
                            "training_clips": len(data.parts["train"][0])}}
    for part in ("val", "test"):
        clips, _, labels = data.parts[part]
        probabilities = embedding_probabilities(model, embeddings[part], [c.speaker for c in clips],
                                                train_config.batch_size)
        metrics[part] = classification_report(labels, probabilities.argmax(axis=1), data.labels,
                                              groups={"sex": [c.sex for c in clips]}, probabilities=probabilities)
    save_confusion_matrix(metrics["test"]["confusion_matrix"], data.labels, run_dir / "confusion_matrix.png",
                          f"test ({describe.get('split', '') if describe else ''})")
    write_text_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
