"""Training runs: data for a split, compile, callbacks (TensorBoard, checkpoints, resume), final metrics.

A run writes `saved_models/<run>/` (model.keras, config.json, metrics.json,
confusion_matrix.png, history.csv, backup/ while in progress) and
`logs/<run>/` for TensorBoard.
"""

import contextlib
import csv
import dataclasses
import gc
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from serkeras.cache import cached_features
from serkeras.settings import TrainConfig  # noqa: F401  (this stage's settings; defined without Keras)
from serkeras.errors import SerkerasError
from serkeras.evaluation import (classification_report, confusion_matrix_figure, corpus_reports, frame_outputs,
                                 model_input_names, predict_features, save_confusion_matrix)
from serkeras.features import compute_stats, eval_order
from serkeras.models import build_model, embedding_stages, fixed_embedding_stages, frozen_stages, speaker_stages
from serkeras.pipeline import clip_lengths, make_dataset
from serkeras.speakers import speaker_normalized

#: Per-epoch wall-clock seconds in a run folder, kept across resumed sessions (EpochTimer).
EPOCH_SECONDS = "epoch_seconds.csv"


@dataclasses.dataclass
class SplitData:
    """Clips, features and label indices of each part of a split, plus training statistics.

    `targets` optionally gives a part soft targets (clips x classes) that its
    dataset uses instead of one-hot labels (`distillation_targets`).
    `label_masks` gives, for clips of several corpora of which some lack some
    classes, each part's (clips x classes) booleans: True where the clip's
    corpus has the class (`serkeras.corpus.Corpus.label_masks`); its datasets
    then carry `serkeras.losses.partial_targets`. Empty otherwise.
    """

    labels: tuple
    parts: dict  # name -> (clips, feature_list, label_indices)
    stats: object
    targets: dict = dataclasses.field(default_factory=dict)
    cache_dir: object = None  # the feature cache the features came from (and stage outputs go to)
    label_masks: dict = dataclasses.field(default_factory=dict)

    @property
    def partial_labels(self):
        """Whether some clips' corpora lack some classes (train with `serkeras.losses.PartialLabelCrossentropy`)."""
        return bool(self.label_masks)

    def through(self, stage, parts=("train", "val"), batch_size=32, progress=True, then=None):
        """These `parts` of the split with each clip's features replaced by what `stage` makes of them.

        For training the layers after a frozen stage (see `serkeras.models.frozen_stages`):
        the stage runs once per clip, not once per clip and epoch, and its outputs are
        cached (`stage_outputs`), so another run with the same frozen layers reuses them.
        `then`, a model without weights that maps the stage's outputs to one vector per
        clip (`serkeras.models.fixed_embedding_stages`' pooling), is applied a chunk of
        clips at a time as they are read, so only its vectors (``embedding``) are held.
        """
        from tqdm.auto import tqdm

        total = sum(len(self.parts[part][1]) for part in parts)
        with tqdm(total=total, desc="frozen layers", unit="clip", disable=not progress) as bar:
            def outputs(features):
                done = bar.n
                return stage_outputs(stage, features, self.cache_dir, batch_size,
                                     progress=lambda n: bar.update(done + n - bar.n), then=then)

            staged = {part: (clips, outputs(features), labels)
                      for part, (clips, features, labels) in self.parts.items() if part in parts}
        return SplitData(self.labels, staged, self.stats, dict(self.targets), self.cache_dir, dict(self.label_masks))

    def dataset(self, part, feature_config, batch_size, input_names, shuffle=False, seed=0, mixup_alpha=0.0,
                replicas=1, bucket=True, process_share=None):
        """`serkeras.pipeline.make_dataset` of one part; `bucket`: shuffled batches of clips of similar length."""
        clips, features, labels = self.parts[part]
        labels = self.targets.get(part, labels)
        if part in self.label_masks:
            from serkeras.losses import partial_targets

            labels = partial_targets(labels, self.label_masks[part])
        return make_dataset(features, labels, len(self.labels), feature_config.length_mode,
                            feature_config.fixed_frames, batch_size, shuffle=shuffle, seed=seed,
                            input_names=input_names, mixup_alpha=mixup_alpha, replicas=replicas, bucket=bucket,
                            process_share=process_share)


def speaker_head_data(model, data, batch_size=32, progress=True):
    """The classifier of a model that standardises its embedding by speaker, and `data` as it takes them.

    The embedding must be fixed (frozen encoder, pooling without weights), so
    that a speaker's statistics do not change as training goes on: each clip of
    the train and val parts is embedded once, through the cached outputs of the
    frozen layers (`SplitData.through`), and each speaker's statistics come from
    their clips in the same part, as `serkeras evaluate` takes them. The
    classifier's population statistics (`SpeakerStandardization`, used with
    ``speaker_prior_clips``) are set from the training speakers.

    Returns
    -------
    (head, SplitData)
        `head` maps ``embedding``, ``speaker_mean``, ``speaker_variance`` and
        ``speaker_count`` to class probabilities (training it trains `model`);
        the data's clips carry those four arrays.
    """
    from serkeras.speakers import embedding_speaker_stats, population_stats, speaker_input_arrays
    from serkeras.models import SPEAKER_INPUTS

    front, pooling = embedding_stages(model)
    if pooling.trainable_weights:
        raise SerkerasError("--speaker-standardization trains the classifier on fixed embeddings: use it with "
                            "--fine-tune-layers 0, --layer-pooling last and --pooling stats or average")
    if not all(c.speaker for clips, _, _ in data.parts.values() for c in clips):
        raise SerkerasError("--speaker-standardization needs each clip's speaker (a speaker column in the manifest)")
    staged = data.through(front, batch_size=batch_size, progress=progress, then=pooling)
    head = speaker_stages(model)[1]
    parts, train_stats = {}, None
    for part, (clips, features, labels) in staged.parts.items():
        speakers = [c.speaker for c in clips]
        embeddings = np.stack([f["embedding"] for f in features])
        stats = embedding_speaker_stats(embeddings, speakers)
        train_stats = stats if part == "train" else train_stats
        statistics = speaker_input_arrays(speakers, stats)
        parts[part] = (clips, [{"embedding": e, **{name: s[i] for name, s in zip(SPEAKER_INPUTS, statistics)}}
                               for i, e in enumerate(embeddings)], labels)
    head.get_layer("speaker_standardization").set_weights(population_stats(train_stats))
    return head, SplitData(data.labels, parts, data.stats, dict(data.targets), data.cache_dir,
                           dict(data.label_masks))


def trained_part(model, data, batch_size=32, mixup_alpha=0.0, progress=True):
    """The part of `model` that training steps, and `data` (a `SplitData`'s train and val parts) as it takes them.

    Layers above frozen ones (`serkeras.models.frozen_stages`) train on the
    frozen layers' cached outputs. When nothing below the pooled embedding
    trains (`serkeras.models.fixed_embedding_stages`), the classifier trains on
    each clip's embedding alone, so the frames of every clip (gigabytes on
    several corpora) are never held at once; with mixup, which mixes frames and
    does not commute with pooling, it trains on the frames. A model standardised
    by speaker trains its classifier as `speaker_head_data` says. Training the
    returned model trains `model`: they share their layers.

    Returns
    -------
    (keras.Model, SplitData)
    """
    if speaker_stages(model) is not None:
        if mixup_alpha:
            raise SerkerasError("--mixup mixes frames, and a speaker-standardised classifier trains on fixed "
                                "embeddings: use one or the other")
        return speaker_head_data(model, data, batch_size, progress=progress)
    embedded = None if mixup_alpha else fixed_embedding_stages(model)
    if embedded is not None:
        front, pooling, head = embedded
        return head, data.through(front, batch_size=batch_size, progress=progress, then=pooling)
    stages = frozen_stages(model)
    if stages is None:
        return model, data
    front, trained = stages
    return trained, data.through(front, batch_size=batch_size, progress=progress)


def prepare_split(corpus, split, feature_config, cache_dir=None, workers=None, progress=True, augmentation=None,
                  copies=0, speaker_subsets=0.0, seed=0):
    """Cached features for every part of `split`; statistics from the training part only.

    With `augmentation` (a `serkeras.effects.WaveAugmentation`), the training part
    also gets `copies` augmented copies of each of its clips; validation and test
    parts never do, and the statistics come from the original clips. With
    `feature_config.speaker_norm`, each part's clips lose their speaker's mean
    over that part (each set of augmented copies apart from the originals);
    in the training part, a `speaker_subsets` share of them lose the mean of a
    random subset of their speaker's clips instead (drawn with `seed`).
    """
    everything = [c for part in split.parts().values() for c in part]
    featureset = cached_features(everything, feature_config, cache_dir, workers=workers, progress=progress)
    parts = {}
    for name, clips in split.parts().items():
        kept, features = featureset.of(clips)
        if not kept:
            raise SerkerasError(f"the {name} part of the split has no usable clips")
        share = speaker_subsets if name == "train" else 0.0
        parts[name] = (kept, speaker_normalized(features, kept, feature_config, share, seed),
                       corpus.label_indices(kept))
    stats = compute_stats(parts["train"][1])
    if augmentation is not None:
        originals = parts["train"][0]
        train_clips, train_features, train_labels = parts["train"]
        for copy in range(1, copies + 1):
            kept, features = cached_features(originals, feature_config, cache_dir, workers=workers, progress=progress,
                                             augmentation=augmentation, copy=copy).of(originals)
            train_clips = train_clips + kept
            train_features = train_features + speaker_normalized(features, kept, feature_config, speaker_subsets,
                                                                  seed + copy)
            train_labels = list(train_labels) + corpus.label_indices(kept)
        parts["train"] = (train_clips, train_features, train_labels)
    masks = {name: corpus.label_masks(clips) for name, (clips, _, _) in parts.items()} if (
        corpus.has_missing_labels()) else {}
    return SplitData(corpus.labels, parts, stats, cache_dir=cache_dir, label_masks=masks)


def stage_outputs(stage, feature_list, cache_dir=None, batch_size=32, progress=None, then=None):
    """`serkeras.evaluation.frame_outputs` of `stage` for every clip, through the cache.

    Entries are keyed by the stage's weights and each clip's features, so a
    changed encoder or changed features are computed again, and live in the
    feature cache's folder ``stage-<weights hash>`` (`serkeras cache` lists and
    prunes it like the features). With `then` (a model taking the stage's
    outputs and giving one vector per clip), each clip's ``embedding`` from it
    is returned instead of its frames.
    """
    from serkeras.cache import cached_arrays, resolve_cache_dir

    weights = hashlib.sha256(repr([tuple(t.shape) for t in stage.outputs]).encode())  # which frames it gives
    for w in stage.get_weights():
        weights.update(np.ascontiguousarray(w).tobytes())
    names = [n for n in model_input_names(stage) if n != "lengths"]
    keys = [hashlib.sha256(b"".join(np.ascontiguousarray(f[n], np.float32).tobytes() for n in names)).hexdigest()[:24]
            for f in feature_list]
    folder = resolve_cache_dir(cache_dir) / f"stage-{weights.hexdigest()[:16]}"
    transform = None if then is None else (
        lambda items: [{"embedding": e} for e in predict_features(then, items, "variable", batch_size=batch_size)])
    return cached_arrays(folder, keys, lambda indices: frame_outputs(stage, [feature_list[i] for i in indices],
                                                                     batch_size), progress=progress,
                         transform=transform)


def distillation_targets(data, teacher, teacher_data, weight):
    """Soft targets of the training part: `(1 - weight)` x its one-hot labels + `weight` x `teacher`'s probabilities.

    Knowledge distillation (Hinton et al., 2015) at temperature 1. The teacher
    sees the same clips and augmented copies as the student, each through the
    teacher's own feature settings (`teacher_data`, from `prepare_split` with
    them), so a teacher that needs what the student will not have at inference
    (several recordings per speaker, say) can still teach a student that works
    on one recording. The teacher must not have heard the validation or test
    speakers, or the student's scores on them are flattered.

    Parameters
    ----------
    data, teacher_data : SplitData
        The student's and the teacher's view of one split, same augmented copies.
    teacher : keras.Model
        A serkeras model with the same labels.
    weight : float
        The teacher's share of each target, in (0, 1].

    Returns
    -------
    ndarray of shape (training clips, classes)
    """
    from serkeras.models import model_metadata

    meta = model_metadata(teacher)
    if data.partial_labels:
        raise SerkerasError("distillation (--teacher) needs corpora that have every label; these lack some")
    if tuple(meta.labels) != tuple(data.labels):
        raise SerkerasError(f"the teacher's labels {list(meta.labels)} are not the corpus's {list(data.labels)}")
    clips, _, labels = data.parts["train"]
    teacher_clips, teacher_features, _ = teacher_data.parts["train"]
    if [c.path for c in teacher_clips] != [c.path for c in clips]:
        raise SerkerasError("the teacher's features do not cover the same training clips as the student's")
    probabilities = predict_features(teacher, teacher_features, meta.feature_config.length_mode,
                                     meta.feature_config.fixed_frames)
    one_hot = np.eye(len(data.labels), dtype=np.float32)[np.asarray(labels)]
    return ((1.0 - weight) * one_hot + weight * probabilities).astype(np.float32)


#: The default learning rate of fine-tuned encoder layers, as a share of the classifier's: pre-trained layers
#: move less than the new classifier on top of them, so the classifier's early, large gradients do not undo
#: what the encoder learnt before.
ENCODER_LR_FACTOR = 0.1


def with_encoder_learning_rate(train_config, model_config):
    """`train_config` with the encoder's own learning rate set when `model_config` fine-tunes encoder layers.

    An encoder rate already given is kept; otherwise it is `ENCODER_LR_FACTOR` x `learning_rate`. A model
    without fine-tuned encoder layers gets `train_config` unchanged.
    """
    if not model_config.fine_tune_layers or train_config.encoder_learning_rate is not None:
        return train_config
    return dataclasses.replace(train_config,
                               encoder_learning_rate=ENCODER_LR_FACTOR * train_config.learning_rate)


def _optimizer(config, steps_per_epoch, learning_rate, name=None):
    lr = learning_rate
    if config.schedule == "cosine":
        total = max(1, config.epochs * steps_per_epoch)
        warmup = config.warmup_epochs * steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, decay_steps=max(1, total - warmup), warmup_target=lr if warmup else None,
            warmup_steps=warmup)
    # Keras keeps the moving average of the weights inside the optimizer (Polyak averaging).
    ema = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum else {}
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay, name=name, **ema)
    return keras.optimizers.Adam(lr, name=name, **ema)


def make_optimizer(config, steps_per_epoch, encoder_trains=False):
    """The optimiser of `config`; with `encoder_trains` and `config.separate_encoder_rate()`, two of them.

    Then Keras' `MultiOptimizer` gives the variables of a pre-trained encoder's
    layers (paths matching `ENCODER_VARIABLES`) an optimiser named "encoder" at
    `encoder_learning_rate` and every other variable one named "head" at
    `learning_rate`; both follow the same schedule, and the "plateau" schedule's
    `ReduceLROnPlateau` halves both.
    """
    if not (encoder_trains and config.separate_encoder_rate()):
        return _optimizer(config, steps_per_epoch, config.learning_rate)
    if config.ema_momentum:
        # Keras' SwapEMAWeights needs the averaging in the one optimizer of the model.
        raise SerkerasError("--ema-momentum cannot be combined with an encoder learning rate of its own: give "
                            "--encoder-lr equal to --lr, or leave out --ema-momentum")
    from serkeras.models.whisper import ENCODER_VARIABLES

    head = _optimizer(config, steps_per_epoch, config.learning_rate, name="head")
    encoder = _optimizer(config, steps_per_epoch, config.encoder_learning_rate, name="encoder")
    return keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(head, {ENCODER_VARIABLES: encoder}),
                                           name="head_and_encoder")


def encoder_trains(model):
    """Whether any of `model`'s trainable variables belongs to a pre-trained encoder's layers."""
    import re

    from serkeras.models.whisper import ENCODER_VARIABLES

    return any(re.fullmatch(ENCODER_VARIABLES, v.path) for v in model.trainable_variables)


def compile_model(model, config, steps_per_epoch, partial_labels=False):
    """Categorical cross-entropy (optionally smoothed); accuracy and macro-F1 as metrics.

    With `partial_labels` (targets from `serkeras.losses.partial_targets`), the
    cross-entropy is renormalised over each clip's known classes
    (`serkeras.losses.PartialLabelCrossentropy`) and macro-F1 reads the unknown
    classes as negatives. Fine-tuned encoder layers train at
    `config.encoder_learning_rate` (see `make_optimizer`).
    """
    from serkeras.losses import PartialLabelCrossentropy, PartialLabelF1Score

    loss, f1 = ((PartialLabelCrossentropy, PartialLabelF1Score) if partial_labels
                else (keras.losses.CategoricalCrossentropy, keras.metrics.F1Score))
    macro_f1 = f1(average="macro", name="macro_f1")
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch, encoder_trains(model)),
        loss=loss(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), macro_f1],
    )
    # Without a distribution strategy, Keras creates the optimizer's variables, and F1Score its counts, inside
    # the first traced training step, and TensorFlow then traces that step a second time. Creating them here
    # saves that trace (seconds per run on CPU).
    model.optimizer.build(model.trainable_variables)
    no_clip = np.zeros((1, model.outputs[0].shape[-1]), "float32")
    macro_f1.update_state(no_clip, no_clip)
    macro_f1.reset_state()
    return model


def class_weights(label_indices, n_classes, label_masks=None):
    """Inverse-frequency weights ('balanced', as scikit-learn computes them).

    Parameters
    ----------
    label_indices : sequence of int
    n_classes : int
    label_masks : array of bool, shape (clips, classes), optional
        Which classes each clip's corpus has (`serkeras.corpus.Corpus.label_masks`).
        A class's frequency is then counted among the clips whose corpus has
        it, so its weight does not grow with the number of corpora that lack
        it: weight = clips that could be the class / (classes x clips of the class).
        With every class known to every clip, this is scikit-learn's "balanced".

    Returns
    -------
    dict of int -> float
        For the classes that occur in `label_indices`.
    """
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(label_indices)
    if label_masks is None:
        weights = compute_class_weight("balanced", classes=present, y=np.asarray(label_indices))
        return {int(c): float(w) for c, w in zip(present, weights)}
    counts = np.bincount(np.asarray(label_indices), minlength=n_classes)
    candidates = np.asarray(label_masks, bool).sum(axis=0)
    return {int(c): float(candidates[c] / (len(present) * counts[c])) for c in present}


def fit_class_weight(data, train_config):
    """`fit`'s class_weight for `train_config`: balanced weights of the training part, or None."""
    if not train_config.class_weight:
        return None
    return class_weights(data.parts["train"][2], len(data.labels), data.label_masks.get("train"))


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimiser's current learning rate to the epoch logs (before TensorBoard sees them).

    With an optimiser per part of the model (`make_optimizer`), each one's as
    ``learning_rate_<name>`` (as Keras' `ReduceLROnPlateau` logs them), and the
    classifier's ("head") as ``learning_rate``.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        optimizer = self.model.optimizer
        if not hasattr(optimizer, "optimizers"):  # one optimiser
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            return
        for inner in optimizer.optimizers:
            logs[f"learning_rate_{inner.name}"] = float(keras.ops.convert_to_numpy(inner.learning_rate))
        logs["learning_rate"] = logs["learning_rate_head"]


class ConfusionMatrixLogger(keras.callbacks.Callback):
    """Writes the validation confusion matrix as a TensorBoard image every `every` epochs."""

    def __init__(self, log_dir, features, labels, label_names, feature_config, every=1):
        super().__init__()
        self.log_dir, self.features, self.labels = str(log_dir), features, np.asarray(labels)
        self.label_names, self.feature_config, self.every = list(label_names), feature_config, every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        import tensorflow as tf

        replicas = replicas_of(self.model)
        if replicas > 1:
            probabilities = predict_with_replicas(self.model, self.features, self.feature_config, replicas)
        else:
            probabilities = predict_features(self.model, self.features, self.feature_config.length_mode,
                                             self.feature_config.fixed_frames)
        report = classification_report(self.labels, probabilities.argmax(axis=1), self.label_names)
        image = figure_to_png(confusion_matrix_figure(report["confusion_matrix"], self.label_names,
                                                      f"validation, epoch {epoch + 1}"))
        with tf.summary.create_file_writer(self.log_dir + "/validation").as_default():
            tf.summary.image("confusion_matrix", tf.image.decode_png(image, channels=4)[None], step=epoch)


class EpochTimer(keras.callbacks.Callback):
    """Appends each finished epoch's wall-clock seconds to a CSV file (`epoch,seconds`).

    An epoch's time runs from the end of the one before (or from the start of training), so
    the other callbacks' end-of-epoch work is counted too. Put it first: its line is written
    before `EpochBackup` saves the epoch, so an epoch that a kill makes training do again
    is timed again (and counted once, with its last time). A resumed run appends to the same
    file, so its training time adds up over every session.
    """

    def __init__(self, path, resume=False):
        super().__init__()
        self.path = Path(path)
        if not resume:
            self.path.unlink(missing_ok=True)

    def on_train_begin(self, logs=None):
        self.last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        with open(self.path, "a") as f:
            f.write(f"{epoch},{now - self.last:.3f}\n")
        self.last = now


def epoch_seconds(path):
    """{epoch: seconds} from an `EpochTimer` file ({} when there is none)."""
    if not Path(path).is_file():
        return {}
    rows = (line.split(",") for line in Path(path).read_text().split())
    return {int(epoch): float(seconds) for epoch, seconds in rows}


@contextlib.contextmanager
def replacing(target):
    """Yield a temporary path beside `target` to write; it replaces `target` only once the block has finished.

    The rename is atomic, so a kill at any moment leaves `target` either as it
    was or whole. The temporary name keeps every suffix of `target`
    (`.weights.h5`), which Keras' savers check.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix="".join(target.suffixes))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path, text):
    """`Path(path).write_text(text)` through `replacing`: a kill never leaves the file half written."""
    with replacing(path) as tmp:
        Path(tmp).write_text(text)


class EpochBackup(keras.callbacks.Callback):
    """Backs up the training state at each epoch's end, so that a killed or interrupted run resumes from it.

    Keras' `BackupAndRestore` writes its checkpoint in place: a kill during the
    write leaves a truncated file that blocks the run. Here each epoch's weights
    (with the optimizer's state) go to a file of their own, written through
    `replacing`; `training_metadata.json`, written the same way, then names them
    and the previous epoch's, and is the commit point. `restore` falls back to
    the previous epoch's state when the latest is unreadable, and reads a folder
    that `BackupAndRestore` wrote (`latest.weights.h5`) too.

    The folder outlives `fit`, which an interrupted run also ends: the caller
    removes it (`remove`) once the run's results are written.
    """

    METADATA = "training_metadata.json"

    def __init__(self, folder):
        super().__init__()
        self.folder = Path(folder)
        self.epochs_done = 0

    def _states(self):
        """[(finished epochs, weights file name)] from the metadata, newest first; [] when there is none."""
        path = self.folder / self.METADATA
        if not path.is_file():
            return []
        try:
            meta = json.loads(path.read_text())
            # A `BackupAndRestore` folder has no "weights": its one state is latest.weights.h5.
            states = [(int(meta["epoch"]), meta.get("weights", "latest.weights.h5"))]
            if meta.get("previous"):
                states.append((int(meta["previous"]["epoch"]), meta["previous"]["weights"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SerkerasError(f"cannot resume: {path} is unreadable ({exc}); delete {self.folder.parent} to train "
                                "the run again, or train under another name") from None
        return states

    def restore(self, model):
        """Load the newest readable backed-up state into `model` (compiled); returns its finished epochs (0: none).

        Raises `SerkerasError` when there is a backup and none of its states can be read.
        """
        unreadable = []
        for epochs, name in self._states():
            try:
                if model.optimizer is not None and not model.optimizer.built:
                    model.optimizer.build(model.trainable_variables)  # its state is in the file too
                model.load_weights(self.folder / name)
            except (OSError, ValueError, KeyError) as exc:  # h5py: OSError for a truncated file
                unreadable.append(f"{self.folder / name} is unreadable ({str(exc).splitlines()[0]})")
                continue
            if unreadable:
                warnings.warn(f"{unreadable[0]}; resuming from the state after epoch {epochs} instead", stacklevel=2)
            self.epochs_done = epochs
            return epochs
        if unreadable:
            raise SerkerasError(f"cannot resume: {unreadable[0]} and no earlier epoch's state is kept; delete "
                                f"{self.folder.parent} to train the run again, or train under another name")
        return 0

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        states = self._states()
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        with replacing(self.folder / name) as tmp:
            self.model.save_weights(tmp)
        meta = {"epoch": epoch + 1, "weights": name}
        if states:
            meta["previous"] = {"epoch": states[0][0], "weights": states[0][1]}
        write_text_atomically(self.folder / self.METADATA, json.dumps(meta))
        self.epochs_done = epoch + 1
        # Older states, and temporary files that a kill left behind.
        kept = {self.METADATA, name} | ({meta["previous"]["weights"]} if states else set())
        for path in self.folder.iterdir():
            if path.name not in kept:
                path.unlink(missing_ok=True)

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; the state after `epochs_done` finished epochs is backed up for resuming."""

    def __init__(self, epochs_done):
        super().__init__(f"training stopped after {epochs_done} finished epoch{'s' * (epochs_done != 1)}")
        self.epochs_done = epochs_done


class StopOnInterrupt(keras.callbacks.Callback):
    """Turns Ctrl-C during `fit` into `TrainingInterrupted` at the next batch or the next epoch's start.

    Python's default SIGINT handler raises KeyboardInterrupt in whatever the main
    thread runs; when that is a garbage-collector callback (JAX's
    `_xla_gc_callback`), Python prints "Exception ignored" and training goes on.
    Within `watching()`, SIGINT only records the request and this callback raises.
    It does not stop training with `model.stop_training`, which would still
    validate and back up the unfinished epoch as if it were finished; raising at
    a batch leaves the last finished epoch's backup as it is. Never raising
    during an epoch's end lets the epoch's callbacks (backup, history) finish
    together. A second Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self, backup):
        super().__init__()
        self.backup = backup
        self.requested = False

    @contextlib.contextmanager
    def watching(self):
        """Install the SIGINT handler for the block (main thread only: elsewhere Python allows none)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request(signum, frame):
            if self.requested:
                signal.default_int_handler(signum, frame)
            self.requested = True
            sys.stderr.write("\nstopping after this batch (Ctrl-C again to stop at once)\n")

        previous = signal.signal(signal.SIGINT, request)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_if_requested(self, *args, **kwargs):
        if self.requested:
            raise TrainingInterrupted(self.backup.epochs_done)

    on_epoch_begin = on_train_batch_end = on_test_batch_end = _stop_if_requested


def drop_epochs_from(history_csv, first):
    """Remove the rows of epochs `first` and later from a history.csv (epochs a resumed run trains again)."""
    path = Path(history_csv)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for row in reader if int(row["epoch"]) < first]
        fields = reader.fieldnames
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, out.getvalue())


def figure_to_png(fig):
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def log_hparams(log_dir, hparams, metrics=None):
    """Record a run's hyperparameters (and final metrics) for TensorBoard's HParams dashboard."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    flat = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v)) for k, v in hparams.items()}
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        if metrics is None:
            hp.hparams(flat, trial_id=Path(log_dir).name)
        else:
            for name, value in metrics.items():
                tf.summary.scalar(f"hparams/{name}", value, step=0)


def best_so_far(history_csv, monitor):
    """The best monitored value in an existing history.csv (for resumed checkpoints)."""
    import csv

    if not Path(history_csv).is_file():
        return None
    with open(history_csv, newline="") as f:
        values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor) not in (None, "")]
    if not values:
        return None
    return min(values) if monitor == "val_loss" else max(values)


def plateau_callback(train_config):
    """ReduceLROnPlateau for the "plateau" schedule (halve the rate when validation stalls), else None."""
    if train_config.schedule != "plateau":
        return None
    mode = "min" if train_config.monitor == "val_loss" else "max"
    return keras.callbacks.ReduceLROnPlateau(monitor=train_config.monitor, mode=mode, factor=0.5,
                                             patience=max(1, train_config.patience // 3))


def ema_callback(train_config):
    """With weight averaging: evaluate, checkpoint and log the averaged weights at each epoch's end, else None.

    Place it after `EpochBackup` (which must back up the raw weights that training
    continues from) and before the callbacks that should see the averaged ones.
    """
    if not train_config.ema_momentum:
        return None
    return keras.callbacks.SwapEMAWeights(swap_on_epoch=True)


class OnWholeModel(keras.callbacks.Callback):
    """Runs `callback` with `whole` as its model while a part of `whole` (sharing its layers) is being fitted.

    For the callbacks that save the model at an epoch's end (Keras'
    `ModelCheckpoint`, KerasTuner's checkpoint of a trial's best epoch) when
    training runs on the layers above frozen ones (`serkeras.models.frozen_stages`):
    they save the whole model, which the trained part's updates reach. The
    training and epoch hooks are passed on; the batch hooks are not (so Keras
    still skips them for speed).
    """

    def __init__(self, callback, whole):
        super().__init__()
        self.callback, self.whole = callback, whole

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(self.whole)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def _sync(self):
        """Bring JAX's training state into the shared variables (Keras does it when `model` is read)."""
        return self.model

    def on_train_begin(self, logs=None):
        self._sync()
        self.callback.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._sync()
        self.callback.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self._sync()
        self.callback.on_train_end(logs)


def on_whole(callback, whole):
    """`callback` run on `whole` (`OnWholeModel`), or `callback` itself when `whole` is None."""
    return callback if whole is None else OnWholeModel(callback, whole)


def make_callbacks(run_dir, log_dir, data, feature_config, train_config, backup, resume=False, whole=None,
                   confusion_images=True):
    """The callbacks of a run, in the order their work needs; `backup` is the run's `EpochBackup`.

    `whole`: the model to save at each improvement when the trained model is a part of it.
    `confusion_images`: log each epoch's validation confusion matrix to TensorBoard (it predicts
    on one process, so not when several processes train together).
    """
    mode = "min" if train_config.monitor == "val_loss" else "max"
    val_clips, val_features, val_labels = data.parts["val"]
    callbacks = [
        EpochTimer(run_dir / EPOCH_SECONDS, resume),
        keras.callbacks.TerminateOnNaN(),
        backup,
        ema_callback(train_config),
        on_whole(keras.callbacks.ModelCheckpoint(
            str(run_dir / "model.keras"), monitor=train_config.monitor, mode=mode, save_best_only=True,
            initial_value_threshold=best_so_far(run_dir / "history.csv", train_config.monitor) if resume else None),
            whole),
        keras.callbacks.EarlyStopping(monitor=train_config.monitor, mode=mode, patience=train_config.patience,
                                      restore_best_weights=True),
        plateau_callback(train_config),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
        LearningRateLogger(),
        ConfusionMatrixLogger(log_dir, val_features, val_labels, data.labels, feature_config)
        if confusion_images else None,
        keras.callbacks.TensorBoard(str(log_dir), histogram_freq=0, write_graph=False),
    ]
    # The optional ones (None when not asked for) sit where their order matters.
    callbacks = [c for c in callbacks if c is not None]
    return callbacks


def gpu_available():
    """Whether the active Keras backend computes on a GPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


@contextlib.contextmanager
def precision_policy(mixed):
    """With `mixed`, compute in float16 on a GPU and in bfloat16 elsewhere (variables stay float32).

    CPUs have no fast float16 arithmetic but do bfloat16 (and it needs no loss scaling). The output
    layer is float32 in every model, so probabilities are float32 either way. The previous global
    policy is restored on exit.
    """
    if not mixed:
        yield
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if gpu_available() else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def multi_worker_task():
    """`(task type, index)` of this process in TF_CONFIG's cluster, or None when TF_CONFIG is not set."""
    config = os.environ.get("TF_CONFIG")
    if not config:
        return None
    try:
        task = json.loads(config)["task"]
        return task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SerkerasError(f"TF_CONFIG is not a cluster description with this process's task: {exc}") from None


#: Keras' variables describing a multi-process run (`keras.distribution.initialize` reads them).
PROCESS_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                     "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the processes that train one model together (JAX backend).

    Attributes
    ----------
    coordinator : str
        ``host:port`` of process 0, which every process connects to.
    count : int
        How many processes train together (one per machine, usually).
    index : int
        This process's number, 0 to ``count - 1``; process 0 writes the run.
    """

    coordinator: str
    count: int
    index: int

    @property
    def chief(self):
        """Whether this process writes the run folder, logs and checkpoints."""
        return self.index == 0


def process_group():
    """The `ProcessGroup` the Keras distribution variables describe, or None when none is set.

    Inconsistent or partial settings are a `SerkerasError`.
    """
    given = {name: os.environ[name] for name in PROCESS_VARIABLES if os.environ.get(name)}
    if not given:
        return None
    missing = [name for name in PROCESS_VARIABLES if name not in given]
    if missing:
        raise SerkerasError(f"training over several processes needs {', '.join(PROCESS_VARIABLES)}; "
                            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
    try:
        count = int(given["KERAS_DISTRIBUTION_NUM_PROCESSES"])
        index = int(given["KERAS_DISTRIBUTION_PROCESS_ID"])
    except ValueError:
        raise SerkerasError("KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID must be "
                            "whole numbers") from None
    addresses = [a.strip() for a in given["KERAS_DISTRIBUTION_JOB_ADDRESSES"].split(",")]
    if count < 2:
        raise SerkerasError(f"KERAS_DISTRIBUTION_NUM_PROCESSES is {count}: several processes means two or more "
                            "(unset the KERAS_DISTRIBUTION_ variables to train in one)")
    if not 0 <= index < count:
        raise SerkerasError(f"KERAS_DISTRIBUTION_PROCESS_ID is {index}, but the {count} processes are numbered "
                            f"0 to {count - 1}")
    if len(addresses) not in (1, count):
        raise SerkerasError(f"KERAS_DISTRIBUTION_JOB_ADDRESSES lists {len(addresses)} addresses for {count} "
                            "processes: give every process's, or process 0's alone")
    if not re.fullmatch(r"[^\s:]+:\d+", addresses[0]):
        raise SerkerasError(f"KERAS_DISTRIBUTION_JOB_ADDRESSES starts with {addresses[0]!r}, not the host:port "
                            "of process 0")
    return ProcessGroup(addresses[0], count, index)


def start_process_group(group):
    """Connect this process to the others of `group` (JAX's distributed runtime); before any JAX work.

    On CPUs the processes exchange gradients through gloo, JAX's CPU collectives.
    """
    if keras.backend.backend() != "jax":
        raise SerkerasError(f"training over several processes needs the jax backend, not "
                            f"{keras.backend.backend()} (set KERAS_BACKEND=jax)")
    if multi_worker_task() is not None:
        raise SerkerasError("TF_CONFIG and KERAS_DISTRIBUTION_ variables are both set: describe the processes "
                            "once, with the KERAS_DISTRIBUTION_ variables")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        keras.distribution.initialize(group.coordinator, group.count, group.index)
    except RuntimeError as exc:  # JAX's, when the coordinator cannot be reached or the others never come
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SerkerasError(f"process {group.index} of {group.count} could not join the others through "
                            f"{group.coordinator}: {reason}") from None


def process_share():
    """`(index, count)` of this process among those training together, or None when it trains alone."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    return (jax.process_index(), jax.process_count()) if jax.process_count() > 1 else None


def distribution_devices():
    """The local devices `--distribute` trains over: every GPU, else every logical CPU device.

    A machine without GPUs has one CPU device unless it was split into several logical ones
    (`tf.config.set_logical_device_configuration`; JAX: `XLA_FLAGS=--xla_force_host_platform_device_count=N`).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
    if backend == "jax":
        return keras.distribution.list_devices()  # the default JAX platform's: GPUs if there are any
    raise SerkerasError(f"--distribute is supported with the jax and tensorflow backends, not {backend}")


@contextlib.contextmanager
def data_parallel(enabled):
    """A context to build, compile and fit a data-parallel model in; yields the number of replicas.

    Over `distribution_devices()`: JAX, Keras' distribution API (`keras.distribution.DataParallel`);
    TensorFlow, `tf.distribute.MirroredStrategy`. Fewer than two devices is an error: data
    parallelism on one device would only be slower. On JAX, after `start_process_group`, the
    devices are every process's, so several machines train as one. TF_CONFIG (TensorFlow's
    several machines) is refused: Keras 3's `fit` fails under
    `tf.distribute.MultiWorkerMirroredStrategy` (it reduces the first batch of a dict of inputs
    across workers before training), so a run would only crash later.
    """
    if not enabled:
        yield 1
        return
    if multi_worker_task() is not None:
        raise SerkerasError("--distribute cannot use TF_CONFIG: Keras 3 cannot train with TensorFlow's "
                            "MultiWorkerMirroredStrategy (unset it; several machines train with the jax backend and "
                            "the KERAS_DISTRIBUTION_ variables)")
    group = process_group()
    if group is not None and process_share() is None:
        raise SerkerasError("the KERAS_DISTRIBUTION_ variables are set, but only `serkeras train` trains over "
                            "several processes: unset them")
    devices = distribution_devices()
    if len(devices) < 2:
        raise SerkerasError(f"--distribute needs at least two devices, but {keras.backend.backend()} sees only "
                            f"{devices[0]}: leave --distribute out to train on it")
    if keras.backend.backend() == "jax":
        # Every process feeds its own share of each batch (`make_dataset`'s `process_share`): Keras' own
        # sharding needs one batch size for the whole dataset, which bucketed batches cut for the replicas lack.
        with keras.distribution.DataParallel(devices=devices, auto_shard_dataset=group is None).scope():
            yield len(devices)
        return
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(devices).scope():
        yield len(devices)


def check_replica_batch(batch_size, replicas):
    """Refuse a batch size that the replicas cannot share equally."""
    if batch_size % replicas:
        raise SerkerasError(f"--batch-size {batch_size} must be a multiple of the {replicas} replicas that "
                            "--distribute splits each batch between")


def replicas_of(model):
    """How many replicas `model` splits each batch between (1: it is not data-parallel)."""
    if keras.backend.backend() == "tensorflow":
        return model.distribute_strategy.num_replicas_in_sync
    distribution = keras.distribution.distribution()
    return distribution.device_mesh.devices.size if distribution is not None else 1


def predict_with_replicas(model, feature_list, feature_config, replicas, batch_size=32):
    """`serkeras.evaluation.predict_features` for a data-parallel model, in the order of `feature_list`.

    Batches are padded for the replicas (`serkeras.pipeline.replica_padded_batches`) and the padding's
    rows dropped: `predict_on_batch` would give every replica the whole batch under tf.distribute, and
    JAX refuses a batch the devices cannot share.
    """
    n_classes = model.outputs[0].shape[-1]
    dataset = make_dataset(feature_list, np.zeros(len(feature_list), np.int32), n_classes,
                           feature_config.length_mode, feature_config.fixed_frames, batch_size * replicas,
                           input_names=model_input_names(model), replicas=replicas)
    real = np.concatenate([weights for _, _, weights in dataset.as_numpy_iterator()]) == 1
    probabilities = model.predict(dataset, verbose=0)[real]
    if feature_config.length_mode == "fixed":
        return probabilities
    out = np.empty_like(probabilities)
    out[eval_order(clip_lengths(feature_list))] = probabilities
    return out


def train_run(data, feature_config, model_config, train_config, run_dir, log_dir, resume=False, describe=None,
              verbose=1):
    """One run as `train_config.head_fit` asks: `run_training` (epochs of gradient steps), or
    `serkeras.head_fit.run_head_fit` (a closed-form classifier: nothing to resume, the fit starts over).

    Returns the metrics written to the run's metrics.json.
    """
    if train_config.head_fit == "lbfgs":
        from serkeras.head_fit import run_head_fit

        return run_head_fit(data, feature_config, model_config, train_config, run_dir, describe=describe,
                            verbose=verbose)
    return run_training(data, feature_config, model_config, train_config, run_dir, log_dir, resume=resume,
                        describe=describe, verbose=verbose)


def run_training(data, feature_config, model_config, train_config, run_dir, log_dir, resume=False,
                 describe=None, verbose=1):
    """Train, keep the best model, evaluate it on validation and test; returns the metrics dict.

    `describe` is extra run information (split, corpus) stored in config.json and HParams.
    With `resume`, training continues from the backed-up state of the last finished
    epoch. Ctrl-C stops training at the next batch with `TrainingInterrupted`, the
    backup kept.
    """
    run_dir, log_dir = Path(run_dir), Path(log_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"feature_config": feature_config.to_dict(), "model_config": model_config.to_dict(),
              "train_config": train_config.to_dict(), **(describe or {})}
    write_text_atomically(run_dir / "config.json", json.dumps(config, indent=2))
    hparams = {**model_config.to_dict(), **train_config.to_dict(), **(describe or {})}
    backup = EpochBackup(run_dir / "backup")
    # The strategy first: a multi-worker one must exist before TensorFlow sets up its devices.
    with data_parallel(train_config.distribute) as replicas, precision_policy(train_config.mixed_precision):
        check_replica_batch(train_config.batch_size, replicas)
        keras.utils.set_random_seed(train_config.seed)
        model = build_model(feature_config, model_config, data.labels, data.stats)
        share = process_share()
        if share is not None and (model_config.speaker_standardization or frozen_stages(model) is not None):
            raise SerkerasError("training over several processes needs a model without frozen layers: the frozen "
                                "layers' outputs are computed on one process (train it on one machine's devices)")
        # A model whose lower layers are frozen trains its upper part on their outputs, computed once.
        trained, trained_data = trained_part(model, data, train_config.batch_size, train_config.mixup_alpha,
                                             progress=verbose > 0)
        staged = trained is not model
        names = model_input_names(trained)
        # Layers after frozen ones draw their batches from all clips, not from clips of similar length: on
        # CREMA-D, length-bucketed batches skew the batch normalisation of Whisper's pooled embedding (59-61%
        # instead of 66-67% on the actor split; experiments/NOTEBOOK.md, finding 31), and cached frames are cheap
        # to pad.
        train_ds = trained_data.dataset("train", feature_config, train_config.batch_size, names, shuffle=True,
                                        seed=train_config.seed, mixup_alpha=train_config.mixup_alpha,
                                        replicas=replicas, bucket=not staged, process_share=share)
        val_ds = trained_data.dataset("val", feature_config, train_config.batch_size, names, replicas=replicas,
                                      process_share=share)
        steps = int(np.ceil(len(data.parts["train"][0]) / train_config.batch_size))
        compile_model(trained, train_config, steps, partial_labels=data.partial_labels)
        initial_epoch = backup.restore(trained) if resume else 0
        if not resume:
            log_hparams(log_dir, hparams)
        callbacks = make_callbacks(run_dir, log_dir, trained_data, feature_config, train_config, backup, resume,
                                   whole=None if trained is model else model, confusion_images=share is None)
        if resume:  # after make_callbacks, which takes the best score so far from the whole history
            drop_epochs_from(run_dir / "history.csv", initial_epoch)
        interrupt = StopOnInterrupt(backup)
        with interrupt.watching():
            trained.fit(train_ds, validation_data=val_ds, epochs=train_config.epochs, initial_epoch=initial_epoch,
                      verbose=verbose, shuffle=False, callbacks=[interrupt] + callbacks,
                      class_weight=fit_class_weight(data, train_config))
    # The frozen layers' outputs and the training pipelines can take gigabytes; the scores below need neither.
    del trained_data, train_ds, val_ds, callbacks, trained, model
    gc.collect()
    if not (run_dir / "model.keras").is_file():
        raise SerkerasError(f"training produced no checkpoint in {run_dir} (did the loss become NaN?)")
    from serkeras.models import load_model

    best, _ = load_model(run_dir / "model.keras")
    if train_config.quantize != "none":  # scored as it is saved
        from serkeras.models.saving import quantize_dense

        quantize_dense(best, train_config.quantize)
        with replacing(run_dir / "model.keras") as tmp:
            best.save(tmp)
    # Every session's epochs, not only this one's: a resumed run's time adds up.
    timed = epoch_seconds(run_dir / EPOCH_SECONDS)
    metrics = {"train_seconds": sum(timed.values()), "timed_epochs": len(timed),
               "parameters": int(best.count_params())}
    for part in ("val", "test"):
        clips, features, labels = data.parts[part]
        # A speaker-standardised model takes each speaker's statistics from their clips in the part.
        speakers = [c.speaker for c in clips] if model_config.speaker_standardization else None
        probabilities = predict_features(best, features, feature_config.length_mode, feature_config.fixed_frames,
                                         speakers=speakers)
        groups = {"sex": [c.sex for c in clips]}
        if len({c.corpus for c in clips}) > 1 or part in data.label_masks:
            # Each corpus apart too, scored on the classes it has; the whole stays `metrics[part]`.
            by_corpus = corpus_reports(labels, probabilities.argmax(axis=1), data.labels, [c.corpus for c in clips],
                                       data.label_masks.get(part), groups, probabilities)
            metrics[part], metrics[f"{part}_by_corpus"] = by_corpus.pop("all"), by_corpus
        else:
            metrics[part] = classification_report(labels, probabilities.argmax(axis=1), data.labels, groups=groups,
                                                  probabilities=probabilities)
    save_confusion_matrix(metrics["test"]["confusion_matrix"], data.labels, run_dir / "confusion_matrix.png",
                          f"test ({describe.get('split', '') if describe else ''})")
    log_hparams(log_dir, hparams, {f"{part}_{m}": metrics[part][m] for part in ("val", "test")
                                   for m in ("accuracy", "macro_f1")})
    # metrics.json marks the run finished (see `run_finished`): written last, and the backup kept until then.
    write_text_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    backup.remove()
    return metrics


def run_finished(run_dir):
    """Whether the run in `run_dir` finished: `run_training` writes metrics.json at its very end."""
    return (Path(run_dir) / "metrics.json").is_file()


#: The settings a leave-one-corpus-out run must share with the report it belongs to (`leave_one_corpus_out`).
_HELD_OUT_SETTINGS = ("feature_config", "model_config", "train_config", "held_out", "val_fraction", "seed", "corpora")


def leave_one_corpus_out(corpus, prepare, feature_config, model_config, train_config, output_dir, log_dir,
                         val_fraction=0.1, seed=0, describe=None, verbose=1, echo=print):
    """Train one model per corpus on all the others and test it on every clip of that corpus.

    Each held-out corpus gets an ordinary run folder, ``output_dir/held-out-<name>``
    (`run_training`'s files): a finished run is read back, not trained again; an
    interrupted one continues from its last finished epoch. Validation clips are
    speaker-disjoint parts of the training corpora
    (`serkeras.splits.held_out_corpus_split`).

    Parameters
    ----------
    corpus : serkeras.corpus.Corpus
        Several corpora (`serkeras.corpus.load_corpora`).
    prepare : callable
        ``prepare(corpus, split) -> SplitData``: the features of a split (augmented
        copies and such as `train_config` asks), as `prepare_split` gives them.
    feature_config, model_config, train_config
        Every run's settings.
    output_dir, log_dir : path-like
        Folders of the report's runs and of their TensorBoard logs.
    val_fraction : float
        The share of each training corpus's speakers that validate.
    seed : int
        Seed of the validation speakers (`train_config.seed` seeds training).
    describe : dict, optional
        Extra run information for config.json (the data source).
    verbose : int
        Keras' `fit` verbosity.
    echo : callable
        Where progress lines go.

    Returns
    -------
    dict of str -> dict
        Held-out corpus name -> the test report of its run (every clip of it, scored on
        the classes it has; `serkeras.evaluation.classification_report`).

    Raises
    ------
    SerkerasError
        Before anything trains, when a corpus cannot be held out
        (`serkeras.corpus.held_out_corpus`), or when a run folder holds a run
        with other settings.
    """
    from serkeras.corpus import held_out_corpus
    from serkeras.splits import held_out_corpus_split

    output_dir, log_dir = Path(output_dir), Path(log_dir)
    names = corpus.corpus_names
    plans = {}
    for name in names:  # every corpus checked before hours of training
        held = held_out_corpus(corpus, name)
        split = held_out_corpus_split(corpus.clips, name, val_fraction, seed)
        settings = {"feature_config": feature_config.to_dict(), "model_config": model_config.to_dict(),
                    "train_config": train_config.to_dict(), "held_out": name, "val_fraction": val_fraction,
                    "seed": seed, "corpora": list(names)}
        run_dir = output_dir / f"held-out-{name}"
        _check_same_run(run_dir, settings)
        plans[name] = (held, split, settings, run_dir)
    reports = {}
    for name, (held, split, settings, run_dir) in plans.items():
        if run_finished(run_dir):
            echo(f"held out {name}: finished before, read from {run_dir}")
            reports[name] = json.loads((run_dir / "metrics.json").read_text())["test"]
            continue
        resume = (run_dir / "config.json").is_file()
        echo(f"held out {name}: {split.description}; train {len(split.train)}, val {len(split.val)}, test "
             f"{len(split.test)} clips" + (" (continuing)" if resume else ""))
        data = prepare(held, split)
        info = {"split": "held-out corpus", "corpus": held.name, "held_out": name, "val_fraction": val_fraction,
                "seed": seed, "corpora": list(names), **(describe or {})}
        metrics = train_run(data, feature_config, model_config, train_config, run_dir, log_dir / run_dir.name,
                            resume=resume, describe=info, verbose=verbose)
        reports[name] = metrics["test"]
        del data  # before the next corpus's features are read: each run's can take gigabytes
        gc.collect()
    return reports


def _check_same_run(run_dir, settings):
    """Refuse a run folder whose config.json holds other `settings` than those given (a report's runs must agree)."""
    stored = Path(run_dir) / "config.json"
    if not stored.is_file():
        return
    config = json.loads(stored.read_text())
    changed = [key for key in _HELD_OUT_SETTINGS if json.loads(json.dumps(settings[key])) != config.get(key)]
    if changed:
        raise SerkerasError(f"{run_dir} holds a run with other settings ({', '.join(changed)}): give another "
                            "--run-name, or the same settings to continue it")
