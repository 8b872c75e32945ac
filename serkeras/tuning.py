"""Hyper-parameter search with KerasTuner over the serkeras model registry.

The search space is the study's grid: activation in {relu, silu, elu} and
learning rate in {1e-2, 1e-3, 1e-4} (both `hp.Choice`), optionally dropout
and width. A model on a pre-trained encoder (``--arch whisper``) has its own
space: learning rate, how many encoder layers it keeps, what it pools (the
last layer or a weighted sum, and how), dropout, and optionally how many
layers it fine-tunes; the frozen layers' outputs come from the cache that
`serkeras train` fills (`serkeras.training.stage_outputs`), so a trial computes
them only for a depth that no run has used before. A search `<search>` writes

* `saved_models/<search>/tuner/`: KerasTuner's own project (oracle.json,
  trial_*/trial.json, trial_*/checkpoint.weights.h5); an existing project is
  reloaded, so a re-run resumes: finished trials are kept, an interrupted
  trial is run again, and the search stops at `max_trials`.
* `saved_models/<search>/search.json`: the settings (a resume must match them).
* `saved_models/<search>/trials.csv`, `trials.md`: completed trials, best first.
* `saved_models/<search>/best.keras`, `best.json`: the best trial's model at its
  best epoch (restored from KerasTuner's checkpoint through
  `tuner.get_best_models`, not retrained) and its test metrics. The model holds
  the serkeras metadata layer, so it is self-contained.
* `logs/<search>/<trial_id>/execution0/`: TensorBoard logs per trial with
  HParams, written by KerasTuner's own TensorBoard support.

Distributed tuning is KerasTuner's: with KERASTUNER_TUNER_ID,
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT set, the tuner whose id
contains "chief" serves the oracle and the others run trials.
"""

import csv
import json
import os
import shutil
import warnings
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from serkeras.errors import SerkerasError
from serkeras.evaluation import classification_report, model_input_names, predict_features
from serkeras.models import LAYER_POOLINGS, POOLINGS, build_model
from serkeras.training import (LearningRateLogger, TrainConfig, check_replica_batch, compile_model, data_parallel,
                               ema_callback, fit_class_weight, on_whole, plateau_callback, precision_policy,
                               trained_part, with_encoder_learning_rate)

#: The study's grid.
ACTIVATION_GRID = ("relu", "silu", "elu")
LEARNING_RATE_GRID = (1e-2, 1e-3, 1e-4)
#: Optional searches (--search-dropout, --search-width: factors of the base width).
DROPOUT_GRID = (0.1, 0.3, 0.5)
WIDTH_FACTORS = (0.5, 1.0, 2.0)

#: The search space of a model on a pre-trained encoder (--arch whisper): learning rates from the 1e-3 of the
#: shipped recipe (crema-d-whisper-base) down past the 3e-4 its fine-tuning runs used, dropout from none, and
#: with --search-fine-tune the encoder frozen or its top layer trained (at a tenth of the trial's rate unless
#: --encoder-lr is given); the kept layers range from 1 to --encoder-layers.
ENCODER_LEARNING_RATE_GRID = (1e-3, 3e-4, 1e-4)
ENCODER_DROPOUT_GRID = (0.0, 0.2, 0.4)
FINE_TUNE_GRID = (0, 1)
#: The architectures built on a pre-trained encoder, searched over ENCODER_* rather than the study's grid.
ENCODER_ARCHITECTURES = ("whisper",)

TUNERS = ("random", "bayesian", "hyperband", "grid")
OBJECTIVES = ("val_accuracy", "val_macro_f1")
#: Hyperparameter names, in table order.
HP_NAMES = ("activation", "learning_rate", "dropout", "width", "encoder_layers", "fine_tune_layers", "layer_pooling",
            "pooling")
#: Training settings a search does not store: searched (the learning rate), or which devices compute
#: (a search may resume with or without --distribute).
NOT_STORED = ("learning_rate", "distribute")
#: Metrics reported per trial (values at the trial's best epoch).
TRIAL_METRICS = ("val_accuracy", "val_macro_f1", "val_loss")
#: What a search writes in its folder beside KerasTuner's project (tuner/): its settings, the trials' tables,
#: the best model and its scores.
SEARCH_FILES = ("search.json", "trials.csv", "trials.md", "best.keras", "best.json")


def distributed_role():
    """'local', 'chief' or 'worker', from KerasTuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if name not in os.environ:
            raise SerkerasError(f"KERASTUNER_ORACLE_IP is set but {name} is not (distributed tuning needs both)")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def check_search_options(arch, search_width, search_fine_tune):
    """Refuse searches that `arch` has no hyperparameter for; returns whether it is an encoder model."""
    encoder_model = arch in ENCODER_ARCHITECTURES
    if encoder_model and search_width:
        raise SerkerasError(f"--arch {arch} has no width to search: leave out --search-width")
    if search_fine_tune and not encoder_model:
        raise SerkerasError("--search-fine-tune is for models on a pre-trained encoder (--arch whisper)")
    return encoder_model


class SERHyperModel(keras_tuner.HyperModel):
    """Builds, compiles and fits a registry model for a set of hyperparameter values.

    Parameters
    ----------
    feature_config : serkeras.features.FeatureConfig
    model_config : serkeras.models.ModelConfig
        The base model (architecture, width, head size, dropout); searched
        fields replace its values. For an encoder model (ENCODER_ARCHITECTURES)
        its `encoder_layers` is the deepest searched.
    labels : sequence of str
    stats : serkeras.features.FeatureStats
        Training-part statistics stored in the model's standardisation layers.
    train_config : serkeras.training.TrainConfig, optional
        Optimiser settings; the searched learning rate replaces its own.
    steps_per_epoch : int
        For the cosine schedule (the "plateau" schedule is a callback of `run_search`).
    search_dropout, search_width : bool
        Also search dropout in DROPOUT_GRID / width in WIDTH_FACTORS x base width
        (the study's space; an encoder model always searches dropout and has no width).
    search_fine_tune : bool
        An encoder model: also search `fine_tune_layers` in FINE_TUNE_GRID.
    partial_labels : bool
        The training clips' corpora lack some classes (`serkeras.training.compile_model`).
    """

    def __init__(self, feature_config, model_config, labels, stats, train_config=None, steps_per_epoch=1,
                 search_dropout=False, search_width=False, search_fine_tune=False, name="serkeras", tunable=True,
                 partial_labels=False):
        super().__init__(name=name, tunable=tunable)
        self.feature_config, self.model_config = feature_config, model_config
        self.labels, self.stats = list(labels), stats
        self.train_config = train_config or TrainConfig()
        self.steps_per_epoch = steps_per_epoch
        self.search_dropout, self.search_width = search_dropout, search_width
        self.search_fine_tune = search_fine_tune
        self.encoder_model = check_search_options(model_config.arch, search_width, search_fine_tune)
        self.partial_labels = partial_labels

    def width_grid(self):
        return tuple(sorted({round(self.model_config.width * f, 6) for f in WIDTH_FACTORS}))

    def configs(self, hp):
        """(ModelConfig, TrainConfig) for the values in `hp` (declaring the searched hyperparameters)."""
        if self.encoder_model:
            changes = self._encoder_changes(hp)
            learning_rate = hp.Choice("learning_rate", list(ENCODER_LEARNING_RATE_GRID))
        else:
            changes = {"activation": hp.Choice("activation", list(ACTIVATION_GRID))}
            learning_rate = hp.Choice("learning_rate", list(LEARNING_RATE_GRID))
            if self.search_dropout:
                changes["dropout"] = hp.Choice("dropout", list(DROPOUT_GRID))
            if self.search_width:
                changes["width"] = hp.Choice("width", list(self.width_grid()))
        model_config = self.model_config.replace(**changes)
        train_config = TrainConfig.from_dict({**self.train_config.to_dict(), "learning_rate": learning_rate})
        return model_config, with_encoder_learning_rate(train_config, model_config)

    def _encoder_changes(self, hp):
        deepest = self.model_config.encoder_layers
        changes = {"encoder_layers": hp.Choice("encoder_layers", list(range(1, deepest + 1))),
                   "layer_pooling": hp.Choice("layer_pooling", list(LAYER_POOLINGS)),
                   "pooling": hp.Choice("pooling", list(POOLINGS)),
                   "dropout": hp.Choice("dropout", list(ENCODER_DROPOUT_GRID))}
        fine_tune = (hp.Choice("fine_tune_layers", list(FINE_TUNE_GRID)) if self.search_fine_tune
                     else self.model_config.fine_tune_layers)
        changes["fine_tune_layers"] = min(fine_tune, changes["encoder_layers"])  # it cannot train more than it keeps
        return changes

    def build(self, hp):
        model_config, train_config = self.configs(hp)
        model = build_model(self.feature_config, model_config, self.labels, self.stats)
        return compile_model(model, train_config, self.steps_per_epoch, self.partial_labels)

    def fit(self, hp, model, data, batch_size=32, seed=0, replicas=1, callbacks=(), **kwargs):
        """Train `model` on the train part of `data` (a `serkeras.training.SplitData`), validated on its val part.

        A model with frozen layers (`serkeras.models.frozen_stages`) trains the
        layers above them on their cached outputs, or on fixed embeddings, as
        `serkeras train` does (`serkeras.training.trained_part`); the callbacks
        that save the model (KerasTuner's checkpoint) save it whole.
        """
        trained, data = trained_part(model, data, batch_size, self.train_config.mixup_alpha, progress=False)
        if trained is not model:
            compile_model(trained, self.configs(hp)[1], self.steps_per_epoch, self.partial_labels)
            callbacks = [on_whole(c, model) if _saves_model(c) else c for c in callbacks]
        names = model_input_names(trained)
        train = data.dataset("train", self.feature_config, batch_size, names, shuffle=True, seed=seed,
                             mixup_alpha=self.train_config.mixup_alpha, replicas=replicas)
        val = data.dataset("val", self.feature_config, batch_size, names, replicas=replicas)
        # The train dataset is shuffled already (fit's own shuffle would only warn).
        return trained.fit(train, validation_data=val, callbacks=list(callbacks), shuffle=False,
                           class_weight=fit_class_weight(data, self.train_config), **kwargs)


def _saves_model(callback):
    """Whether `callback` writes the model's weights: KerasTuner's checkpoint of a trial's best epoch."""
    return type(callback).__name__ == "SaveBestEpoch" or isinstance(callback, keras.callbacks.ModelCheckpoint)


def make_objective(objective):
    if objective not in OBJECTIVES:
        raise SerkerasError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    return keras_tuner.Objective(objective, direction="max")


def make_tuner(kind, hypermodel, objective, max_trials, directory, project_name, seed, overwrite=False,
               max_epochs=None):
    """A KerasTuner tuner of `kind` (random, bayesian, hyperband, grid).

    `max_trials` bounds random, bayesian and grid searches; hyperband sets its
    own number of trials from `max_epochs` (its largest training budget).
    With `overwrite=False` an existing project in `directory/project_name` is
    reloaded (the search resumes).
    The oracle's seed is `seed + 1` (KerasTuner would draw a random seed for 0).
    """
    # KerasTuner's oracles treat seed 0 as "no seed" (a random one): shift it so every --seed is reproducible.
    oracle_seed = seed + 1 if seed >= 0 else seed
    common = dict(objective=make_objective(objective), seed=oracle_seed, directory=str(directory),
                  project_name=project_name, overwrite=overwrite)
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    if kind == "grid":
        return keras_tuner.GridSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "hyperband":
        if not max_epochs:
            raise SerkerasError("the hyperband tuner needs max_epochs")
        return keras_tuner.Hyperband(hypermodel, max_epochs=max_epochs, **common)
    raise SerkerasError(f"tuner must be one of {', '.join(TUNERS)}, got {kind!r}")


def run_search(tuner, data, epochs, batch_size, log_dir, patience=5, seed=0, verbose=0):
    """Run (or continue) the search on the train part, scored on the val part.

    Each trial trains for up to `epochs` with EarlyStopping on the objective.
    The `keras.callbacks.TensorBoard(log_dir)` passed to `tuner.search` is
    re-pointed by KerasTuner to `log_dir/<trial_id>/execution0` and paired with
    a TensorBoard HParams callback holding the trial's values.
    """
    hypermodel = tuner.hypermodel
    train_config = hypermodel.train_config
    # Every trial's model is built, compiled and fitted in the same data-parallel context as `train`'s.
    with data_parallel(train_config.distribute) as replicas, precision_policy(train_config.mixed_precision):
        check_replica_batch(batch_size, replicas)
        _search(tuner, data, epochs, batch_size, log_dir, patience, seed, verbose, replicas)


def _search(tuner, data, epochs, batch_size, log_dir, patience, seed, verbose, replicas):
    hypermodel = tuner.hypermodel
    objective = tuner.oracle.objective.name
    callbacks = [
        ema_callback(hypermodel.train_config),  # first: the objective and KerasTuner's checkpoint see its weights
        LearningRateLogger(),
        plateau_callback(hypermodel.train_config),
        keras.callbacks.EarlyStopping(monitor=objective, mode="max", patience=patience),
        keras.callbacks.TensorBoard(str(log_dir), histogram_freq=0, write_graph=False),
    ]
    callbacks = [c for c in callbacks if c is not None]  # the optional ones are None when not asked for
    keras.utils.set_random_seed(seed)
    try:
        # KerasTuner hands `data` and the settings to SERHyperModel.fit, which makes each trial's datasets.
        tuner.search(data, batch_size=batch_size, seed=seed, replicas=replicas, epochs=epochs, callbacks=callbacks,
                     verbose=verbose)
    except RuntimeError as exc:  # KerasTuner gives up after repeated failed trials.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SerkerasError(f"the search stopped: {first}") from exc


def _value_at(trial, name, step):
    history = trial.metrics.get_history(name) if trial.metrics.exists(name) else []
    for observation in history:
        if observation.step == step:
            return float(np.mean(observation.value))
    return None


def completed_trials(tuner):
    """Completed trials, best first; equal scores in trial order, so a reloaded search ranks the same."""
    trials = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    sign = -1 if tuner.oracle.objective.direction == "max" else 1
    return sorted(trials, key=lambda t: (sign * t.score, int(t.trial_id) if t.trial_id.isdigit() else 0, t.trial_id))


def trial_table(tuner):
    """One row per completed trial, best first: rank, trial_id, hyperparameters, metrics, best epoch."""
    rows = []
    for rank, trial in enumerate(completed_trials(tuner), start=1):
        values = trial.hyperparameters.values
        row = {"rank": rank, "trial_id": trial.trial_id}
        row.update({name: values[name] for name in HP_NAMES if name in values})
        if "tuner/epochs" in values:  # hyperband's training budget for the trial
            row["epochs"] = values["tuner/epochs"]
        row["score"] = float(trial.score)
        for name in TRIAL_METRICS:
            value = _value_at(trial, name, trial.best_step)
            if value is not None:
                row[name] = value
        row["best_epoch"] = int(trial.best_step) + 1
        rows.append(row)
    return rows


def _columns(rows):
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows, objective):
    """The rows as a Markdown table ('score' is the objective)."""
    if not rows:
        return "(no completed trials)"
    columns = _columns(rows)
    header = [f"score ({objective})" if c == "score" else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def save_table(rows, objective, search_dir):
    """trials.csv and trials.md in `search_dir`; returns their paths."""
    search_dir = Path(search_dir)
    csv_path, md_path = search_dir / "trials.csv", search_dir / "trials.md"
    columns = _columns(rows) or ["rank", "trial_id", "score"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(f"Completed trials, best first; score = {objective} (best epoch).\n\n"
                       + format_table(rows, objective) + "\n")
    return csv_path, md_path


def best_model(tuner):
    """The best trial and its model at its best epoch (KerasTuner's checkpoint, via get_best_models).

    Raises SerkerasError when no trial completed or the checkpoint cannot be
    read (e.g. distributed workers on machines without a shared --output-dir).
    """
    trials = completed_trials(tuner)
    if not trials:
        raise SerkerasError(f"no trial completed in {tuner.project_dir}")
    best = trials[0]
    try:
        with warnings.catch_warnings():
            # The checkpoint holds the optimizer's state too; a model for inference does not need it.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = tuner.load_model(best)
    except Exception as exc:
        raise SerkerasError(f"cannot load the checkpoint of the best trial {best.trial_id} "
                            f"from {tuner.get_trial_dir(best.trial_id)}: {str(exc).strip()[:200]}") from exc
    return best, model


def evaluate(model, data, feature_config, part="test"):
    clips, features, labels = data.parts[part]
    probabilities = predict_features(model, features, feature_config.length_mode, feature_config.fixed_frames)
    return classification_report(labels, probabilities.argmax(axis=1), data.labels,
                                  groups={"sex": [c.sex for c in clips]})


def search_settings(feature_config, model_config, train_config, describe, tuner_kind, objective, search_dropout,
                    search_width, search_fine_tune=False):
    """What a resumed search must share with the stored one (the searched learning rate and the devices aside)."""
    training = {k: v for k, v in train_config.to_dict().items() if k not in NOT_STORED}
    return {"feature_config": feature_config.to_dict(), "model_config": model_config.to_dict(),
            "train_config": training, "tuner": tuner_kind, "objective": objective,
            "search_dropout": search_dropout, "search_width": search_width, "search_fine_tune": search_fine_tune,
            **describe}


def _filled_in(settings):
    """`settings` with the fields added to the config classes since they were stored set to their defaults.

    A new field's default keeps the behaviour from before it existed (e.g. `ema_momentum` 0: no
    averaging), so a search stored by an older serkeras resumes unless a setting really differs.
    """
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig

    filled = dict(settings)
    for key, cls in (("feature_config", FeatureConfig), ("model_config", ModelConfig), ("train_config", TrainConfig)):
        if isinstance(filled.get(key), dict):
            filled[key] = cls.from_dict(filled[key]).to_dict()
    if "train_config" in filled:
        for key in NOT_STORED:
            filled["train_config"].pop(key, None)
    filled.setdefault("search_fine_tune", False)  # searches stored before it existed did not search it
    return json.loads(json.dumps(filled))


def check_resumable(search_dir, settings):
    """Refuse to resume a search stored with other settings; returns True when one is stored."""
    stored_path = Path(search_dir) / "search.json"
    if not stored_path.is_file():
        return False
    stored = _filled_in(json.loads(stored_path.read_text()).get("settings", {}))
    settings = _filled_in(settings)
    different = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    if different:
        raise SerkerasError(f"search {Path(search_dir).name} exists with other settings ({', '.join(different)}): "
                            "use --overwrite to start it again or a new --search-name")
    return True


def prepare_search(search_dir, log_dir, settings, role="local", overwrite=False):
    """Make a search's folders ready to start again or to resume, before any data is read.

    Parameters
    ----------
    search_dir, log_dir : str or Path
        The search's folder and its TensorBoard logs.
    settings : dict
        `search_settings`; a stored search resumes only with the same.
    role : {"local", "chief", "worker"}, optional
        `distributed_role`: workers leave the folders to the chief.
    overwrite : bool, optional
        Start the search again: its files (`SEARCH_FILES`) and logs are removed (KerasTuner removes
        its own project when told to overwrite it).

    Returns
    -------
    bool
        Whether KerasTuner is to overwrite its project (never for a worker).

    Raises
    ------
    SerkerasError
        If a search stored in `search_dir` has other settings and `overwrite` is not given.
    """
    if role == "worker":
        if overwrite:
            warnings.warn("--overwrite is ignored by workers (only the chief starts a search again)")
        return False
    if overwrite:
        for name in SEARCH_FILES:
            (Path(search_dir) / name).unlink(missing_ok=True)
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        check_resumable(search_dir, settings)
    return overwrite


def record_search(search_dir, settings, corpus_name):
    """Write search.json, the settings a resumed search must share (`check_resumable`), and the corpus's name."""
    Path(search_dir).mkdir(parents=True, exist_ok=True)
    (Path(search_dir) / "search.json").write_text(json.dumps({"settings": settings, "corpus": corpus_name}, indent=2))


def save_best(tuner, data, feature_config, objective, search_dir):
    """Save the best trial's model at its best epoch as best.keras, and its scores on the test part as best.json.

    Returns
    -------
    best : keras_tuner.engine.trial.Trial
    report : dict
        `serkeras.evaluation.classification_report` of the best model on the test part.
    """
    best, model = best_model(tuner)
    model.save(Path(search_dir) / "best.keras")
    report = evaluate(model, data, feature_config, "test")
    (Path(search_dir) / "best.json").write_text(json.dumps(
        {"trial_id": best.trial_id, "hyperparameters": best.hyperparameters.values, "objective": objective,
         "score": best.score, "best_epoch": int(best.best_step) + 1, "test": report}, indent=2))
    return best, report
