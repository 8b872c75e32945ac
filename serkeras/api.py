"""What the `serkeras` commands do, as Python functions: open a model, average models, split a corpus, prepare
a run's data, train a run or every fold of one, resume it, summarise k folds, format predictions.

The command line parses its options into the settings dataclasses (`FeatureConfig`,
`ModelConfig`, `TrainConfig`, `SplitSettings`) and calls these; anything they have to say
along the way goes to `echo` (`print` unless told otherwise), so that a script can collect
or silence it. Errors are `serkeras.errors.SerkerasError`, one line each.

    >>> from serkeras import api
    >>> model, meta = api.open_model("serkeras-crema-d-whisper")  # a shipped model's name, or a .keras file
"""

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from serkeras.errors import ModelFileError, SerkerasError

if TYPE_CHECKING:  # the settings classes' modules import Keras; this one does so only where it must
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig
    from serkeras.training import TrainConfig


#: How `serkeras predict` runs a model: "auto" runs a shipped model's ONNX copy in ONNX Runtime when both are
#: installed (no TensorFlow start-up; the same probabilities), "keras" always the `.keras` file, "onnx" the copy.
RUNTIMES = ("auto", "keras", "onnx")


def prediction_file(value, runtime="auto"):
    """The model file `serkeras predict` and `serkeras evaluate` run for `value`.

    Parameters
    ----------
    value : str, Path or None
        As for `open_model`.
    runtime : {"auto", "keras", "onnx"}
        See `RUNTIMES`.

    Returns
    -------
    path : Path
        The `.keras` or `.onnx` file to open.
    source : Path or None
        For a shipped model's ONNX copy, the `.keras` file it must have been exported from
        (`open_prediction_model` checks it); None otherwise.

    Raises
    ------
    SerkerasError
        For ``runtime="onnx"`` when the model has no ONNX copy or onnxruntime is not installed, and
        for ``runtime="keras"`` with an ONNX file.
    """
    from serkeras.shipped import onnx_copy, resolve_model

    if runtime not in RUNTIMES:
        raise SerkerasError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    path = resolve_model(value)
    if path.suffix.lower() == ".onnx":
        if runtime == "keras":
            raise SerkerasError(f"{path} is an ONNX file, which runs in ONNX Runtime: give its .keras file "
                                "with --runtime keras")
        return path, None
    copy = onnx_copy(value) if runtime != "keras" else None
    if copy is None:
        if runtime == "onnx":
            raise SerkerasError(f"{path} has no ONNX copy beside it: export one (`serkeras export MODEL --format "
                                "onnx --output FILE.onnx`) and give it as --model FILE.onnx")
        return path, None
    try:
        import onnxruntime  # noqa: F401  (what runs the copy; a dependency, but an install may lack it)
    except ImportError:
        if runtime == "onnx":
            raise SerkerasError("running a model in ONNX Runtime needs onnxruntime (pip install onnxruntime)") \
                from None
        return path, None
    return copy


class StaleExportWarning(UserWarning):
    """A shipped model's ONNX copy was not exported from the `.keras` file beside it, which runs instead."""


def open_prediction_model(value, runtime="auto", before_keras=None):
    """Open the model `serkeras predict` and `serkeras evaluate` run for `value` (`prediction_file`).

    A shipped model's ONNX copy runs only beside the `.keras` file it was exported
    from (the SHA-256 recorded in it): with ``runtime="auto"`` another file of that
    name is run instead, with a `StaleExportWarning`; with ``runtime="onnx"`` it is an error.

    Parameters
    ----------
    value : str, Path or None
        As for `open_model`.
    runtime : {"auto", "keras", "onnx"}
    before_keras : callable, optional
        Called before a `.keras` file is loaded (the command line imports TensorFlow there,
        with its start-up chatter dropped); an ONNX file needs no TensorFlow.

    Returns
    -------
    model : keras.Model or serkeras.onnx_runtime.OnnxModel
    metadata : serkeras.models.ModelMetadata or serkeras.onnx_runtime.OnnxMetadata
    path : Path
        The file that was opened.
    """
    path, source = prediction_file(value, runtime)
    if source is not None:
        from serkeras.onnx_runtime import file_sha256, load_onnx_model  # no TensorFlow

        model, metadata = load_onnx_model(path)
        if metadata.source_sha256 == file_sha256(source):
            return model, metadata, path
        stale = (f"{path} was not exported from {source} beside it: export it again (`serkeras export {source} "
                 f"--format onnx --output {path}`)")
        if runtime == "onnx":
            raise ModelFileError(stale)
        warnings.warn(f"{stale}; running {source} instead", StaleExportWarning, stacklevel=2)
        path = source
    if path.suffix.lower() != ".onnx" and before_keras is not None:
        before_keras()
    return (*open_model(path, allow_onnx=True), path)


def open_model(value, allow_onnx=False):
    """Load a `.keras` file, an ONNX export (`.onnx`, run by ONNX Runtime), or a shipped model by name.

    Parameters
    ----------
    value : str, Path or None
        A model file, a shipped model's name (``serkeras-crema-d-whisper``), or None for the
        default shipped model (`serkeras.shipped.resolve_model`).
    allow_onnx : bool
        Whether an ONNX export may be opened (what predicts and evaluates: `serkeras.inference.predict_files`,
        `serkeras.evaluation.predict_clips`; training, export and averaging need the `.keras` file).

    Returns
    -------
    model : keras.Model, or serkeras.onnx_runtime.OnnxModel for an ``.onnx`` file
    metadata : serkeras.models.ModelMetadata, or serkeras.onnx_runtime.OnnxMetadata
        Its labels, feature settings and standardisation statistics.

    Raises
    ------
    ModelFileError
        For a file that cannot be loaded.
    """
    from serkeras.shipped import resolve_model

    path = resolve_model(value)
    if str(path).lower().endswith(".onnx"):
        if not allow_onnx:
            raise SerkerasError(f"{path} is an ONNX export, which `serkeras predict` and `evaluate` run: give the "
                                ".keras file")
        from serkeras.onnx_runtime import load_onnx_model  # no TensorFlow

        return load_onnx_model(path)
    from serkeras.models import load_model

    return load_model(path)


def average_models(models, output, name=None):
    """Save one model that averages the class probabilities of `models` (`serkeras ensemble`).

    The members must share their labels and feature settings; an average among them
    contributes its own members, so each model weighs the same. The file is written
    whole or not at all, and reloads and predicts like any serkeras model.

    Parameters
    ----------
    models : sequence of str or Path
        Two or more `.keras` files or shipped models' names (`open_model`).
    output : str or Path
        The `.keras` file to write.
    name : str, optional
        The Keras model's name (default: from the file name).

    Returns
    -------
    keras.Model
        The average, as saved.

    Raises
    ------
    SerkerasError
        If fewer than two models are given, one cannot be loaded, or they disagree on labels or features.
    """
    from serkeras.models.ensemble import ensemble_model
    from serkeras.training import replacing

    output = Path(output)
    if output.suffix != ".keras":
        raise SerkerasError(f"{output}: an average of models is saved as a .keras file")
    if len(models) < 2:
        raise SerkerasError("an average needs two or more models")
    loaded = [open_model(model)[0] for model in models]
    averaged = ensemble_model(loaded, name=name or output.stem.replace("-", "_"))
    output.parent.mkdir(parents=True, exist_ok=True)
    with replacing(output) as tmp:
        averaged.save(tmp)
    return averaged


@dataclasses.dataclass(frozen=True)
class SplitSettings:
    """How a corpus is split into training, validation and test parts (`serkeras.splits.make_split`).

    Parameters
    ----------
    kind : {"random", "actor", "kfold"}
        ``random`` is the study's protocol (speakers shared between parts); ``actor`` and
        ``kfold`` keep each speaker in one part.
    fold, n_folds : int
        The test fold of ``kfold`` and how many folds there are.
    val_fraction, test_fraction : float
        Shares of the validation and test parts (``random``, ``actor``).
    seed : int
        Seed of the split.
    """

    kind: str = "random"
    fold: int = 0
    n_folds: int = 5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def to_dict(self, fold=None):
        """The settings as a run's config.json stores them (`fold`: another fold than `self.fold`)."""
        return {"split": self.kind, "fold": self.fold if fold is None else fold, "n_folds": self.n_folds,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction, "seed": self.seed}


def load_split(data_dir, manifest, split, training=False):
    """A corpus (several, when given several sources) and its split.

    Parameters
    ----------
    data_dir, manifest : str, Path or sequence of them
        CREMA-D folders and ``path,label[,speaker]`` manifests (`serkeras.corpus.load_corpora`).
    split : SplitSettings
    training : bool, optional
        Refuse a corpus that cannot train a classifier (one label).

    Returns
    -------
    corpus : serkeras.corpus.Corpus
    split : serkeras.splits.Split
    """
    from serkeras.corpus import check_trainable, load_corpora
    from serkeras.splits import make_split

    corpus = load_corpora(data_dir, manifest)
    if training:
        check_trainable(corpus)
    return corpus, make_split(corpus.clips, split.kind, split.val_fraction, split.test_fraction, split.fold,
                              split.n_folds, split.seed)


def configure(feature_config, model_config, echo=print):
    """The settings an architecture is built and trained with (`serkeras.models.configure`).

    A pre-trained encoder fixes its features and sizes; `echo` is told which features changed.

    Returns
    -------
    feature_config : serkeras.features.FeatureConfig
    model_config : serkeras.models.ModelConfig
    """
    from serkeras.models import configure as configure_architecture

    resolved = configure_architecture(feature_config, model_config)
    if resolved[0] != feature_config:
        changed = {k: v for k, v in resolved[0].to_dict().items() if feature_config.to_dict()[k] != v}
        echo(f"--arch {model_config.arch} sets the features: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    return resolved


def prepare_training_data(corpus, split, feature_config, train_config, cache_dir=None, workers=None, progress=True,
                          echo=print):
    """The features of every part of a split, ready to train on.

    The training part gets its augmented copies and, when `train_config` names a teacher,
    soft targets mixed from the teacher's probabilities; `echo` is told how many copies and
    how much the targets moved.

    Parameters
    ----------
    corpus : serkeras.corpus.Corpus
    split : serkeras.splits.Split
    feature_config : serkeras.features.FeatureConfig
    train_config : serkeras.training.TrainConfig
    cache_dir : str or Path, optional
        Feature cache (default ``$SERKERAS_CACHE_DIR`` or ``data/cache``).
    workers : int, optional
        Feature extraction processes (default: as many as pay off, up to every core; `serkeras.cache.cached_features`).
    progress : bool, optional
        Show progress bars while features are computed.
    echo : callable, optional

    Returns
    -------
    serkeras.training.SplitData
    """
    from serkeras.training import distillation_targets, prepare_split

    if train_config.speaker_subsets and not feature_config.speaker_norm:
        raise SerkerasError("--speaker-subsets needs --speaker-norm")
    teacher, teacher_meta = open_model(train_config.teacher) if train_config.teacher else (None, None)
    data = prepare_split(corpus, split, feature_config, cache_dir, workers, progress=progress,
                         augmentation=train_config.wave_augmentation(), copies=train_config.augment_copies,
                         speaker_subsets=train_config.speaker_subsets, seed=train_config.seed)
    if train_config.augment_copies:
        total = len(data.parts["train"][0])
        echo(f"training part: {total} clips, of which {total - len(split.train)} augmented copies")
    if teacher is not None:
        # The same clips and copies, as the teacher was trained to see them.
        teacher_data = prepare_split(corpus, split, teacher_meta.feature_config, cache_dir, workers,
                                     progress=progress, augmentation=train_config.wave_augmentation(),
                                     copies=train_config.augment_copies, seed=train_config.seed)
        targets = distillation_targets(data, teacher, teacher_data, train_config.distill_weight)
        data.targets["train"] = targets
        on_label = targets[range(len(targets)), data.parts["train"][2]].mean()
        echo(f"distilling {train_config.teacher} (weight {train_config.distill_weight:g}): "
             f"mean training target on the acted emotion {on_label:.3f}")
    return data


def source_list(value):
    """`value`, one corpus source (``--data-dir`` or ``--manifest``) or several or None, as a list."""
    return [value] if isinstance(value, (str, Path)) else list(value or ())


def data_source(data_dir, manifest, cache_dir):
    """Where a run's clips and features come from, as absolute paths for its config.json (resuming reads them).

    Parameters
    ----------
    data_dir, manifest : str, Path, sequence of them, or None
        The corpora, as `load_split` takes them.
    cache_dir : str, Path or None

    Returns
    -------
    dict
        One source as ``data_dir`` or ``manifest``, several as the lists ``data_dirs`` and
        ``manifests``; and ``cache_dir``.
    """
    from serkeras.cache import resolve_cache_dir
    from serkeras.corpus import resolve_data_dir

    data_dirs, manifests = source_list(data_dir), source_list(manifest)
    if len(data_dirs) + len(manifests) > 1:
        corpus = {"data_dirs": [os.path.abspath(d) for d in data_dirs],
                  "manifests": [os.path.abspath(m) for m in manifests]}
    elif manifests:
        corpus = {"manifest": os.path.abspath(manifests[0])}
    else:
        corpus = {"data_dir": os.path.abspath(resolve_data_dir(data_dirs[0] if data_dirs else None))}
    return {**corpus, "cache_dir": os.path.abspath(resolve_cache_dir(cache_dir))}


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """Everything a training run (or each fold of one) is made of.

    Parameters
    ----------
    feature_config : serkeras.features.FeatureConfig
    model_config : serkeras.models.ModelConfig
    train_config : serkeras.training.TrainConfig
        As `configure` resolved them (a new run) or as a run stored them (`resumed_run`).
    split : SplitSettings
    data_dir, manifest : str, Path or tuple of them
        The corpora (`load_split`).
    cache_dir : str, Path or None
        Feature cache.
    all_folds : bool
        Train every fold of a ``kfold`` split (``<run>/fold<k>/``) rather than `split.fold` alone.
    """

    feature_config: "FeatureConfig"
    model_config: "ModelConfig"
    train_config: "TrainConfig"
    split: SplitSettings = SplitSettings()
    data_dir: tuple = ()
    manifest: tuple = ()
    cache_dir: str = None
    all_folds: bool = False

    def default_name(self):
        """A run name from the settings and the time: ``<arch>-<split>-<activation>-lr<lr>-<date>-<time>``."""
        return (f"{self.model_config.arch}-{self.split.kind}-{self.model_config.activation}"
                f"-lr{self.train_config.learning_rate:g}-{time.strftime('%Y%m%d-%H%M%S')}")


def new_run(feature_config, model_config, train_config, split=SplitSettings(), data_dir=(), manifest=(), cache_dir=None,
            all_folds=False, echo=print):
    """A run of new settings, checked and resolved as `serkeras train` does before it trains.

    Parameters
    ----------
    feature_config : serkeras.features.FeatureConfig
    model_config : serkeras.models.ModelConfig
    train_config : serkeras.training.TrainConfig
    split, data_dir, manifest, cache_dir, all_folds
        As `TrainingRun` takes them.
    echo : callable, optional
        Told which features the architecture sets (`configure`).

    Returns
    -------
    TrainingRun
        With the architecture's features and sizes (`configure`) and, when encoder layers are
        fine-tuned, their own learning rate (`serkeras.training.with_encoder_learning_rate`).

    Raises
    ------
    SerkerasError
        If the settings do not fit together.
    """
    from serkeras.head_fit import check_head_fit
    from serkeras.training import with_encoder_learning_rate

    if model_config.speaker_prior_clips and not model_config.speaker_standardization:
        raise SerkerasError("--speaker-prior-clips needs --speaker-standardization")
    check_head_fit(model_config, train_config)
    feature_config, model_config = configure(feature_config, model_config, echo)
    if model_config.speaker_standardization and model_config.arch != "whisper":
        raise SerkerasError("--speaker-standardization standardises a pre-trained encoder's embedding: use it with "
                            "--arch whisper (or --speaker-norm, which standardises features)")
    if train_config.encoder_learning_rate is not None and not model_config.fine_tune_layers:
        raise SerkerasError("--encoder-lr is the learning rate of fine-tuned encoder layers: give --fine-tune-layers "
                            "too")
    return TrainingRun(feature_config, model_config, with_encoder_learning_rate(train_config, model_config), split,
                       data_dir, manifest, cache_dir, all_folds)


def stored_run_config(run_dir):
    """The config.json of the run in `run_dir`, and whether the run trains every fold.

    A run of every fold keeps one config.json per fold (``fold0/``, ...); they differ in the fold only.

    Returns
    -------
    config : dict
    all_folds : bool

    Raises
    ------
    SerkerasError
        If the run has no config.json.
    """
    run_dir = Path(run_dir)
    stored = sorted(run_dir.glob("fold*/config.json")) or [run_dir / "config.json"]
    if not stored[0].is_file():
        raise SerkerasError(f"nothing to resume: {run_dir / 'config.json'} does not exist")
    return json.loads(stored[0].read_text()), stored[0].parent != run_dir


@dataclasses.dataclass(frozen=True)
class ResumedRun:
    """A stored run to continue (`resumed_run`).

    Parameters
    ----------
    run : TrainingRun
        Its stored settings.
    finished_folds : list of int
        The folds already trained, with every fold.
    finished : bool
        Nothing is left to do: the run (with every fold: each fold and their summary) finished.
    """

    run: TrainingRun
    finished_folds: list
    finished: bool


def resumed_run(run_dir, epochs=None, data_dir=None, manifest=None, cache_dir=None, all_folds=False):
    """The settings of the stored run in `run_dir`, to continue it from its last finished epoch.

    Parameters
    ----------
    run_dir : str or Path
    epochs : int, optional
        Train to this many epochs instead of the stored number.
    data_dir, manifest : optional
        Corpora to read instead of the stored ones (given either, both replace the stored ones;
        runs stored before the corpora were kept have none).
    cache_dir : optional
        Feature cache instead of the stored one.
    all_folds : bool, optional
        Train every fold (a run that trained every fold before always does).

    Returns
    -------
    ResumedRun
    """
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig
    from serkeras.training import TrainConfig, run_finished

    run_dir = Path(run_dir)
    saved, stored_folds = stored_run_config(run_dir)
    train_config = TrainConfig.from_dict(saved["train_config"])
    if epochs is not None:
        train_config = TrainConfig.from_dict({**train_config.to_dict(), "epochs": epochs})
    if not data_dir and not manifest:
        data_dir = saved.get("data_dirs", saved.get("data_dir", ()))
        manifest = saved.get("manifests", saved.get("manifest", ()))
    split = SplitSettings(saved["split"], saved["fold"], saved["n_folds"], saved["val_fraction"],
                          saved["test_fraction"], saved["seed"])
    run = TrainingRun(FeatureConfig.from_dict(saved["feature_config"]), ModelConfig.from_dict(saved["model_config"]),
                      train_config, split, data_dir or (), manifest or (),
                      cache_dir if cache_dir is not None else saved.get("cache_dir"), all_folds or stored_folds)
    finished = [k for k in range(split.n_folds) if run_finished(run_dir / f"fold{k}")]
    if run.all_folds:  # finished when every fold is and their summary is written
        done = len(finished) == split.n_folds and (run_dir / "kfold.json").is_file()
    else:
        done = run_finished(run_dir)
    return ResumedRun(run, finished, done)


def train_runs(run, run_name, output_dir="saved_models", log_dir="logs", resume=False, workers=None, verbose=1,
               echo=print):
    """Train a run, or every fold of it, each in its own folder; a finished fold of a resumed run is kept.

    Parameters
    ----------
    run : TrainingRun
    run_name : str
        The folder under `output_dir` and `log_dir` (with every fold, ``fold<k>/`` inside it).
    output_dir, log_dir : str or Path, optional
    resume : bool, optional
        Continue the runs from their last finished epoch (`resumed_run` gives their settings).
    workers : int, optional
        Feature extraction processes.
    verbose : int, optional
        Keras' ``verbose`` for training (0: quiet).
    echo : callable, optional
        Told each run's split, then its report.

    Returns
    -------
    list of dict
        Each run's metrics, in fold order.

    Raises
    ------
    SerkerasError
        If every fold is asked of a split that has none, or a new run would overwrite one.
    KeyboardInterrupt
        When training was interrupted, saying how to continue.
    """
    from serkeras.training import TrainingInterrupted, run_finished

    if run.all_folds and run.split.kind != "kfold":
        raise SerkerasError("--folds needs --split kfold")
    folds = list(range(run.split.n_folds)) if run.all_folds else [run.split.fold]
    source = data_source(run.data_dir, run.manifest, run.cache_dir)
    results = []
    for k in folds:
        name = f"{run_name}/fold{k}" if run.all_folds else run_name
        run_dir = Path(output_dir) / name
        if run_dir.exists() and not resume and (run_dir / "config.json").exists():
            raise SerkerasError(f"run {name} exists in {output_dir}/: use --resume to continue it or a new --run-name")
        if resume and run.all_folds and run_finished(run_dir):
            results.append(json.loads((run_dir / "metrics.json").read_text()))
            continue
        split_settings = dataclasses.replace(run.split, fold=k)
        corpus, split = load_split(run.data_dir, run.manifest, split_settings, training=True)
        echo(f"run {name}: {split.description}; train {len(split.train)}, val {len(split.val)}, "
             f"test {len(split.test)} clips")
        try:
            results.append(train_one(corpus, split, run, run_dir, Path(log_dir) / name,
                                     resume and (run_dir / "config.json").is_file(), workers, verbose, echo,
                                     {**split_settings.to_dict(), "corpus": corpus.name, **source}))
        except TrainingInterrupted as exc:
            raise KeyboardInterrupt(f"run {name}: {exc} (kept in {run_dir / 'backup'}); continue it with "
                                    f"`serkeras train --resume --run-name {run_name}`") from None
    return results


def train_one(corpus, split, run, run_dir, log_dir, resume=False, workers=None, verbose=1, echo=print,
              describe=None):
    """Prepare the data of one run, train it (`serkeras.training.train_run`) and report its test scores.

    Parameters
    ----------
    corpus : serkeras.corpus.Corpus
    split : serkeras.splits.Split
    run : TrainingRun
    run_dir, log_dir : Path
        Where the run and its TensorBoard logs are written.
    resume : bool, optional
    workers : int, optional
    verbose : int, optional
    echo : callable, optional
    describe : dict, optional
        What the run's config.json records of its split and data.

    Returns
    -------
    dict
        The run's metrics.
    """
    from serkeras.evaluation import format_corpus_table, format_report
    from serkeras.training import process_group, train_run

    data = prepare_training_data(corpus, split, run.feature_config, run.train_config, run.cache_dir, workers,
                                 echo=echo)
    metrics = train_run(data, run.feature_config, run.model_config, run.train_config, run_dir, log_dir,
                        resume=resume, describe=describe, verbose=verbose)
    if "head_fit" in metrics:  # fitted in closed form: no epochs, no TensorBoard logs
        fit = metrics["head_fit"]
        echo(f"classifier fitted by L-BFGS on {fit['training_clips']} training clips: C={fit['C']:g} "
             f"(validation accuracy {fit['val_accuracy']:.4f}), {metrics['train_seconds']:.0f} s")
        echo(format_report(metrics["test"]))
        echo(f"model: {run_dir / 'model.keras'}")
        return metrics
    group = process_group()
    if group is not None and not group.chief:
        echo(f"process {group.index} of {group.count} trained its share; process 0 writes the run")
        return metrics
    echo(format_report(metrics["test"]))
    if "test_by_corpus" in metrics:  # several corpora: each on the classes it has
        echo("\n" + format_corpus_table({**metrics["test_by_corpus"], "all": metrics["test"]}))
    echo(f"best model: {run_dir / 'model.keras'}  (TensorBoard: tensorboard --logdir {Path(log_dir).parent})")
    return metrics


#: The test scores that `summarise_folds` averages over the folds.
FOLD_METRICS = ("accuracy", "unweighted_average_recall", "macro_f1")


def summarise_folds(results, folder=None):
    """Mean and standard deviation over the folds of each test score in `FOLD_METRICS`.

    Parameters
    ----------
    results : list of dict
        Each fold's metrics (`train_runs`).
    folder : str or Path, optional
        Also write the summary there as kfold.json.

    Returns
    -------
    dict
        {score: {"mean", "std", "folds"}}; with several corpora (every fold's metrics have
        ``test_by_corpus``), also ``by_corpus``: {corpus: the same for that corpus's test clips, scored
        on the classes it has}. The folds are drawn within every corpus, so this is a speaker-disjoint
        k-fold within each corpus of models trained on all of them.
    """
    from serkeras.evaluation import mean_and_std

    def scores(reports):
        return mean_and_std(reports, FOLD_METRICS, "folds")

    summary = scores([r["test"] for r in results])
    if results and all("test_by_corpus" in r for r in results):
        names = sorted(set().union(*(r["test_by_corpus"] for r in results)))
        summary["by_corpus"] = {name: scores([r["test_by_corpus"][name] for r in results
                                              if name in r["test_by_corpus"]]) for name in names}
    if folder is not None:
        (Path(folder) / "kfold.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_fold_summary(summary):
    """One line of `summarise_folds`' scores: ``5-fold test accuracy 0.7040 ± 0.0090, UA ..., macro-F1 ...``;
    with several corpora, a table of each corpus's follows."""
    accuracy, ua, f1 = (summary[m] for m in FOLD_METRICS)
    line = (f"{len(accuracy['folds'])}-fold test accuracy {accuracy['mean']:.4f} ± {accuracy['std']:.4f}, "
            f"UA {ua['mean']:.4f} ± {ua['std']:.4f}, macro-F1 {f1['mean']:.4f} ± {f1['std']:.4f}")
    if "by_corpus" not in summary:
        return line
    width = max(len(name) for name in summary["by_corpus"]) + 1
    rows = [line, "", f"{'corpus':<{width}} {'folds':>5}  {'accuracy':<15}  {'UA':<15}  macro-F1"]
    for name, scores in summary["by_corpus"].items():
        cells = "  ".join(f"{scores[m]['mean']:.4f} ± {scores[m]['std']:.4f}" for m in FOLD_METRICS)
        rows.append(f"{name:<{width}} {len(scores['accuracy']['folds']):>5}  {cells}")
    return "\n".join(rows)


def speaker_reference_clips(speaker_stats, meta, corpus):
    """The clips whose speaker statistics a model that normalises by speaker is given (`predict_clips`'
    `speaker_clips`).

    Parameters
    ----------
    speaker_stats : {"part", "corpus"}
        ``part``: each speaker's clips among those scored (None is returned); ``corpus``: all
        of each speaker's clips in `corpus`.
    meta : serkeras.models.ModelMetadata
    corpus : serkeras.corpus.Corpus

    Returns
    -------
    list of serkeras.corpus.Clip or None

    Raises
    ------
    SerkerasError
        For ``corpus`` with a model that does not normalise by speaker.
    """
    if speaker_stats != "corpus":
        return None
    if not meta.normalises_by_speaker:
        raise SerkerasError("--speaker-stats corpus is for models that normalise by speaker "
                            "(trained with --speaker-norm)")
    return corpus.clips


def evaluation_part(corpus, split, part="test"):
    """The clips of one part of a split to evaluate a model on, and how they were chosen.

    Parameters
    ----------
    corpus : serkeras.corpus.Corpus
    split : SplitSettings
    part : {"test", "val", "train", "all"}, optional
        ``all``: every clip, with no split made (a corpus too small to split can still be scored).

    Returns
    -------
    clips : list of serkeras.corpus.Clip
    described : str
        The split's description, or "every clip".
    """
    from serkeras.splits import make_split

    if part == "all":
        return corpus.clips, "every clip"
    made = make_split(corpus.clips, split.kind, split.val_fraction, split.test_fraction, split.fold, split.n_folds,
                      split.seed)
    return made.parts()[part], made.description


def evaluate_clips(model, meta, corpus, clips, tta_copies=0, cache_dir=None, speaker_clips=None, batch_size=32):
    """Score a model on clips of a corpus, one prediction per recording.

    Parameters
    ----------
    model : keras.Model
    meta : serkeras.models.ModelMetadata
    corpus : serkeras.corpus.Corpus
        Where the clips come from (their labels, corpora and speakers' sexes).
    clips : list of serkeras.corpus.Clip
    tta_copies : int, optional
        Test-time augmentation: augmented copies averaged with each clip.
    cache_dir : optional
        Feature cache.
    speaker_clips : list of serkeras.corpus.Clip, optional
        Whose speaker statistics a model that normalises by speaker uses (`speaker_reference_clips`).
    batch_size : int, optional

    Returns
    -------
    dict
        `serkeras.evaluation.classification_report` (accuracy, UA, F1, per class, confusion matrix,
        accuracy by sex); with several corpora, also ``by_corpus``: each corpus's report, on the
        classes it has.

    Raises
    ------
    SerkerasError
        If no clip could be used.
    """
    from serkeras.evaluation import predict_clips

    kept, probabilities = predict_clips(model, meta, clips, tta_copies, cache_dir, speaker_clips, batch_size)
    if not kept:
        raise SerkerasError("no usable clips to evaluate")
    return clips_report(meta, corpus, kept, probabilities)


def clips_report(meta, corpus, clips, probabilities):
    """`evaluate_clips`' report of a model's `probabilities` for `clips` (one row per clip).

    Parameters
    ----------
    meta : serkeras.models.ModelMetadata
    corpus : serkeras.corpus.Corpus
    clips : list of serkeras.corpus.Clip
    probabilities : array, shape (clips, classes)

    Returns
    -------
    dict
        As `evaluate_clips` returns it.
    """
    import numpy as np

    from serkeras.evaluation import classification_report, corpus_reports, model_label_indices

    truth, predicted = model_label_indices(meta, corpus, clips), probabilities.argmax(axis=1)
    groups = {"sex": [c.sex for c in clips]}
    if len(corpus.corpus_names) == 1:
        return classification_report(truth, predicted, meta.labels, groups=groups, probabilities=probabilities)
    # Each corpus is scored on the classes it has, in the model's label order.
    masks = np.array([np.isin(meta.labels, corpus.labels_of(c.corpus)) for c in clips], bool)
    by_corpus = corpus_reports(truth, predicted, meta.labels, [c.corpus for c in clips], masks, groups, probabilities)
    return {**by_corpus.pop("all"), "by_corpus": by_corpus}


def speaker_model_hint(value, paths, grouping="auto", min_recordings=5):
    """A line suggesting the shipped model for several recordings per speaker, or None.

    When `value` names a shipped model that predicts from one recording and lists a
    ``speaker_model`` (`serkeras.shipped.ShippedModel`), and `min_recordings` or more of
    `paths` share a speaker under `grouping` (`serkeras.inference.speaker_of`), that
    model would use each speaker's recordings together.

    Parameters
    ----------
    value : str, Path or None
        The model predicted with, as for `open_model` (None: the default).
    paths : sequence of str
        The files predicted.
    grouping : str, optional
        Which files share a speaker (`serkeras.inference.SPEAKER_GROUPINGS`).
    min_recordings : int, optional
        How many of `paths` one speaker must have for the hint.

    Returns
    -------
    str or None
    """
    import collections

    from serkeras.inference import speaker_of
    from serkeras.shipped import listed_model

    listed = listed_model(value)
    if listed is None or not listed.speaker_model or grouping == "file":
        return None
    counts = collections.Counter(speaker_of(path, grouping) for path in paths)
    shared = sum(n for n in counts.values() if n >= min_recordings)
    if not shared:
        return None
    return (f"{shared} of these {len(paths)} recordings share a speaker with {min_recordings - 1} or more others "
            f"under --speaker {grouping}: if those are one voice, --model {listed.speaker_model} --speaker "
            f"{grouping} standardises each recording by its speaker's and does better on speakers and corpora it "
            "never heard (see its card)")


#: The formats of `format_predictions`.
PREDICTION_FORMATS = ("table", "json", "csv")


def format_predictions(predictions, labels, output_format="table"):
    """Predictions as text: a table for people, or JSON or CSV for programs.

    Parameters
    ----------
    predictions : list of serkeras.inference.Prediction
    labels : sequence of str
        The model's labels, in its order (the columns).
    output_format : {"table", "json", "csv"}, optional
        ``table``: a row per file with the probability of each label, and a line per window of
        a long recording; ``json``: a list of {path, label, seconds, probabilities, timeline};
        ``csv``: path, label and a column per label (RFC 4180 quoting).

    Returns
    -------
    str
        Ending with a line break.
    """
    import csv
    import io

    labels = list(labels)
    if output_format == "json":
        return json.dumps([{"path": p.path, "label": p.label, "seconds": round(p.seconds, 3),
                            "probabilities": p.probabilities,
                            "timeline": [{"start": s, "end": e, "label": l, "probabilities": pr}
                                         for s, e, l, pr in p.timeline]} for p in predictions], indent=2) + "\n"
    if output_format == "csv":
        # The csv module quotes paths with commas, quotes or line breaks (RFC 4180), so columns never shift.
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["path", "label"] + labels)
        for p in predictions:
            writer.writerow([p.path, p.label] + [f"{p.probabilities[label]:.4f}" for label in labels])
        return table.getvalue()
    if output_format != "table":
        raise SerkerasError(f"unknown prediction format {output_format!r} (formats: {', '.join(PREDICTION_FORMATS)})")
    width = max([len(p.path) for p in predictions] + [4])
    lines = [f"{'file':<{width}}  {'emotion':<8} " + " ".join(f"{label[:7]:>7}" for label in labels)]
    for p in predictions:
        lines.append(f"{p.path:<{width}}  {p.label:<8} " + " ".join(f"{p.probabilities[label]:>7.3f}" for label in labels))
        lines += [f"{'':<{width}}    {start:6.1f}-{end:6.1f} s {label}" for start, end, label, _ in p.timeline]
    return "\n".join(lines) + "\n"
