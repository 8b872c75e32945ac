"""The `serkeras` command line: features, train, evaluate, predict, tune, export, ensemble."""

import dataclasses
import functools
import os
import re
import sys
import tempfile
import warnings

import click

from serkeras import __version__
from serkeras.api import PREDICTION_FORMATS, RUNTIMES, SplitSettings  # the Python API imports Keras only where it must
from serkeras.errors import SerkerasError
from serkeras.options import SerkerasGroup, speaker_stats_option, tta_option
# The settings dataclasses import no Keras: every option's default is read from them, written there once.
from serkeras.settings import (ACTIVATIONS, HEAD_FITS, LAYER_POOLINGS, MONITORS, OPTIMIZERS, POOLINGS, SCHEDULES,
                               UTTERANCE_NORMS, ModelConfig, TrainConfig)
from serkeras.shipped import find_model, model_names  # the manifest is a small TOML file: no Keras

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: What TensorFlow's bundled C++ libraries print while it is imported, before their logging is set up, so
#: TF_CPP_MIN_LOG_LEVEL does not reach it (tensorflow/tensorflow#100442): Abseil's banner and its info lines
#: ("I0000 00:00:1796475330.766352   17231 port.cc:153] oneDNN custom operations are on...").
_IMPORT_CHATTER = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called"
                             r"|I\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] ")


def without_import_chatter(text):
    """`text` less the lines that match `_IMPORT_CHATTER`; warnings, errors and everything else stay."""
    return "".join(line for line in text.splitlines(keepends=True) if not _IMPORT_CHATTER.match(line))


def import_tensorflow_quietly():
    """Import TensorFlow with its start-up info lines dropped from standard error.

    The C++ libraries write straight to file descriptor 2, so it is pointed at a
    temporary file for the import; what TensorFlow wrote there, less
    `_IMPORT_CHATTER`, is then written to standard error, so real warnings and
    import errors are still seen.
    """
    context = click.get_current_context(silent=True)
    if "tensorflow" in sys.modules or (context and (context.find_root().obj or {}).get("debug")):
        return  # --debug shows everything
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(without_import_chatter(captured.read().decode(errors="replace")))


class LazyChoice(click.Choice):
    """A `click.Choice` whose values are looked up only when needed.

    The architecture registry and the tuner names live in modules that import
    Keras; looking them up lazily keeps `--version`, `features` and other
    commands' start-up free of that cost. `--help` names the values only when
    they are loaded already (a wrong value lists them), so that it never waits
    seconds for TensorFlow.
    """

    def __init__(self, load, case_sensitive=True):
        self._load = load
        self._loaded = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self):
        if self._loaded is None:
            self._loaded = tuple(self._load())
        return self._loaded

    @choices.setter
    def choices(self, value):  # click assigns in __init__; the values always come from `load`
        pass

    def get_metavar(self, param, ctx=None):
        return super().get_metavar(param, ctx) if self._loaded is not None else "NAME"


def lazy_choice(module, name, imports_keras=True):
    """A LazyChoice over the sequence `name` of serkeras module `module`, imported on first use."""

    def load():
        import importlib

        if imports_keras:
            import_tensorflow_quietly()  # the registries' modules import Keras
        values = getattr(importlib.import_module(f"serkeras.{module}"), name)
        return sorted(values) if isinstance(values, dict) else values  # a registry's names, or a tuple in order

    return LazyChoice(load)


runtime_option = click.option(
    "--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True,
    help="'auto': a shipped model's ONNX copy, where one ships, runs in ONNX Runtime (no TensorFlow start-up; the "
         ".keras file's probabilities within about 0.005); 'keras': the .keras file; 'onnx': the ONNX copy or fail.")


class KerasCommand(click.Command):
    """A command that builds or runs Keras models: TensorFlow is imported quietly when it runs (not for --help).

    The `tf.data` pipeline needs TensorFlow on every Keras backend.
    """

    def invoke(self, ctx):
        import_tensorflow_quietly()
        return super().invoke(ctx)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group(cls=SerkerasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="serkeras")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def main(ctx, debug):
    """Speech emotion recognition with Keras 3."""
    ctx.ensure_object(dict)["debug"] = debug
    warnings.showwarning = _show_warning


def data_options(f):
    """--data-dir / --manifest (each repeatable, in any mix) / --cache-dir, shared by every command that reads
    a corpus."""
    f = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Feature cache (default $SERKERAS_CACHE_DIR or data/cache).")(f)
    f = click.option("--manifest", type=click.Path(dir_okay=False), multiple=True,
                     help="CSV with path,label[,speaker] columns instead of a CREMA-D folder. Repeat it (and "
                          "--data-dir) to read several corpora at once; each is named after its folder.")(f)
    f = click.option("--data-dir", type=click.Path(file_okay=False), multiple=True,
                     help="CREMA-D folder (default $SERKERAS_DATA_DIR or data/Crema); repeatable.")(f)
    return f


def feature_options(f):
    """Feature settings; defaults are `FeatureConfig`'s."""
    from serkeras.features import LEVEL_RANGE_DBFS, FeatureConfig

    d = FeatureConfig()
    options = [
        click.option("--length", "length_mode", type=click.Choice(["variable", "fixed"]), default=d.length_mode,
                     show_default=True, help="Whole clips (bucketed, padded, with lengths) or crop/pad to --seconds."),
        click.option("--seconds", "fixed_seconds", type=click.FloatRange(min=0.5), default=d.fixed_seconds,
                     show_default=True, help="Clip length in fixed mode."),
        click.option("--sample-rate", type=click.IntRange(min=8000), default=d.sample_rate, show_default=True),
        click.option("--n-mels", type=click.IntRange(min=8), default=d.n_mels, show_default=True),
        click.option("--n-fft", type=click.IntRange(min=64), default=d.n_fft, show_default=True),
        click.option("--win-length", type=click.IntRange(min=16), default=d.win_length, show_default=True),
        click.option("--hop-length", type=click.IntRange(min=16), default=d.hop_length, show_default=True),
        click.option("--fmin", type=click.FloatRange(min=0), default=d.fmin, show_default=True),
        click.option("--fmax", type=click.FloatRange(min=100), default=d.fmax, show_default=True),
        click.option("--n-mfcc", type=click.IntRange(min=2), default=d.n_mfcc, show_default=True),
        click.option("--pitch/--no-pitch", default=d.pitch, show_default=True,
                     help="Add log F0 (YIN) and its delta to the spectral features."),
        click.option("--audio-normalization", type=click.Choice(["peak", "rms", "none"]),
                     default=d.audio_normalization, show_default=True),
        click.option("--level-dbfs", type=click.FloatRange(*LEVEL_RANGE_DBFS), default=d.level_dbfs,
                     help="Scale each recording to this active speech level (dB relative to full scale, e.g. "
                          "-26) before its features, so that how loud it was recorded does not matter; the "
                          "model keeps the setting (default: the level as recorded)."),
        click.option("--speaker-norm/--no-speaker-norm", default=d.speaker_norm, show_default=True,
                     help="Remove each speaker's mean features, over all of the speaker's clips in a part of "
                          "the split (predict: see --speaker); use with --utterance-norm none."),
        click.option("--speaker-scale/--no-speaker-scale", default=d.speaker_scale, show_default=True,
                     help="With --speaker-norm: also divide by each speaker's standard deviation, per feature."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _fields(cls):
    """The field names of settings dataclass `cls`: the options that build it are named alike."""
    return [field.name for field in dataclasses.fields(cls)]


def feature_config_from(kwargs):
    """Pop the feature options out of a command's kwargs into a FeatureConfig."""
    from serkeras.features import FeatureConfig

    for option in ("speaker_scale", "speaker_subsets"):  # the latter a training option, of train, tune, cross-corpus
        if kwargs.get(option) and not kwargs.get("speaker_norm"):
            raise click.UsageError(f"--{option.replace('_', '-')} needs --speaker-norm")
    try:
        return FeatureConfig(**{n: kwargs.pop(n) for n in _fields(FeatureConfig) if n in kwargs})
    except ValueError as exc:
        raise SerkerasError(f"bad feature settings: {exc}") from None


@main.command()
@data_options
@feature_options
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Extraction processes (default: every core for large jobs; small ones run in this process).")
def features(data_dir, manifest, cache_dir, workers, **kwargs):
    """Precompute and cache features for a corpus; report counts, skips and time."""
    from serkeras.cache import cached_features, resolve_cache_dir
    from serkeras.corpus import load_corpora

    config = feature_config_from(kwargs)
    corpus = load_corpora(data_dir, manifest)
    result = cached_features(corpus.clips, config, cache_dir, workers=workers)
    rate = result.computed / result.seconds if result.computed and result.seconds else 0.0
    click.echo(f"{corpus.name}: {len(corpus)} clips, {len(result.features)} with features, "
               f"{len(result.skipped)} skipped; computed {result.computed}, reused {result.reused} from cache "
               f"in {result.seconds:.1f} s" + (f" ({rate:.1f} clips/s)" if rate else ""))
    click.echo(f"cache: {resolve_cache_dir(cache_dir) / config.extraction_key()}")


@main.command("cache")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache (default $SERKERAS_CACHE_DIR or data/cache).")
@click.option("--prune-unused-days", type=click.FloatRange(min=0), default=None,
              help="Delete entries that no run has used for this many days (0: everything).")
def cache_command(cache_dir, prune_unused_days):
    """Show what the feature cache holds: size, entries and last use per feature setting."""
    import time

    from serkeras.cache import cache_folders, prune_cache, resolve_cache_dir
    from serkeras.features import FeatureConfig

    if prune_unused_days is not None:
        removed, freed = prune_cache(prune_unused_days, cache_dir)
        click.echo(f"removed {removed:,} entries unused for {prune_unused_days:g} days ({freed / 2**20:.1f} MiB)")
    folders = cache_folders(cache_dir)
    plural = "" if len(folders) == 1 else "s"
    click.echo(f"{resolve_cache_dir(cache_dir)}: {len(folders)} settings folder{plural}, "
               f"{sum(f.entries for f in folders):,} entries, {sum(f.size for f in folders) / 2**20:.1f} MiB")
    defaults = FeatureConfig().to_dict()
    for folder in folders:
        changed = {k: v for k, v in folder.settings.items() if defaults.get(k) != v}
        settings = (" ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "default settings"
                    ) if folder.settings else "settings not recorded"
        used = time.strftime("%Y-%m-%d", time.localtime(folder.last_used)) if folder.last_used else "never"
        unusable = f" (+{folder.unusable} unusable)" if folder.unusable else ""
        click.echo(f"  {folder.path.name}  {folder.entries:,} entries{unusable}  {folder.size / 2**20:.1f} MiB  "
                   f"last used {used}  {settings}")


def split_options(f=None, *, kind_help=None):
    """--split / --fold / --folds / fractions / --seed, shared by train, evaluate, tune and card; defaults are
    `SplitSettings`'. `kind_help`: --split's help for a command whose default split is its own (no default
    shown)."""
    if f is None:
        return functools.partial(split_options, kind_help=kind_help)
    d = SplitSettings()
    options = [
        click.option("--split", "split_kind", type=click.Choice(["random", "actor", "kfold"]), default=d.kind,
                     show_default=kind_help is None,
                     help=kind_help or "random: the study's protocol; actor/kfold: speaker-independent."),
        click.option("--fold", type=click.IntRange(min=0), default=d.fold, show_default=True,
                     help="Fold index (kfold)."),
        click.option("--n-folds", type=click.IntRange(min=2), default=d.n_folds, show_default=True),
        click.option("--val-fraction", type=click.FloatRange(0.01, 0.5), default=d.val_fraction, show_default=True),
        click.option("--test-fraction", type=click.FloatRange(0.01, 0.5), default=d.test_fraction,
                     show_default=True),
        click.option("--seed", type=int, default=d.seed, show_default=True, help="Seed for the split and training."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _use_recipe(ctx, param, value, ignored=()):
    """--recipe: the recipe's settings become the command's defaults, so the command line still wins.

    Keys in `ignored` are settings the command decides itself (`cross-corpus` its split).
    """
    if value is not None:
        from serkeras.recipes import option_defaults, read_recipe

        try:
            recipe = {k: v for k, v in read_recipe(value).items() if k not in ignored}
            defaults = option_defaults(recipe, ctx.command.params)
        except SerkerasError as exc:
            raise click.BadParameter(str(exc)) from None
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


_RECIPE_HELP = ("A recipe (TOML file, or the name of one shipped with serkeras) whose settings replace the "
                "defaults; options given on the command line still apply.")

#: --recipe of train and tune; eager, so that its settings are in place before the other options are read.
recipe_option = click.option("--recipe", default=None, is_eager=True, expose_value=False, callback=_use_recipe,
                             help=_RECIPE_HELP)


def _apply(options, f):
    for option in reversed(options):
        f = option(f)
    return f


def _model_option_list(left_out=()):
    """Architecture and model size; `left_out` names the ones a command does not take as options.

    Defaults are `ModelConfig`'s: the study's paper sizes with SiLU.
    """
    d = ModelConfig()
    options = {
        "arch": click.option("--arch", type=lazy_choice("models", "ARCHITECTURES"), default=d.arch, show_default=True),
        "activation": click.option("--activation", type=click.Choice(ACTIVATIONS), default=d.activation,
                                   show_default=True),
        "width": click.option("--width", type=click.FloatRange(min=0.01), default=d.width, show_default=True,
                              help="Scale every filter count (e.g. 0.25 for a small CPU model)."),
        "dropout": click.option("--dropout", type=click.FloatRange(0, 0.9), default=d.dropout, show_default=True),
        "head_units": click.option("--head-units", type=click.IntRange(min=8), default=d.head_units,
                                   show_default=True),
        "spec_augment": click.option("--augment/--no-augment", "spec_augment", default=d.spec_augment,
                                     show_default=True,
                                     help="SpecAugment-style time/frequency masking during training."),
        "utterance_norm": click.option("--utterance-norm", type=click.Choice(UTTERANCE_NORMS),
                                       default=d.utterance_norm, show_default=True,
                                       help="Remove each clip's own feature mean (and variance) after standardising."),
        "pooling": click.option("--pooling", type=click.Choice(POOLINGS), default=d.pooling,
                                show_default=True,
                                help="Frames to one vector: masked average, mean and std (stats), or attentive "
                                     "statistics (attention)."),
        "encoder": click.option("--encoder", type=click.Path(exists=True), default=d.encoder or None,
                                help="--arch whisper: the pre-trained Whisper checkpoint to start from (a "
                                     "faster-whisper folder, a Hugging Face openai/whisper-* folder or an OpenAI .pt "
                                     "file); its weights are copied into the model file."),
        "encoder_layers": click.option("--encoder-layers", type=click.IntRange(min=1), default=d.encoder_layers,
                                       show_default=True,
                                       help="Transformer layers: the first N of a Whisper encoder (the rest are "
                                            "dropped), or conformer's layers."),
        "fine_tune_layers": click.option("--fine-tune-layers", type=click.IntRange(min=0),
                                         default=d.fine_tune_layers, show_default=True,
                                         help="--arch whisper: train the top K of the kept encoder layers "
                                              "(0: the encoder stays frozen; only the classifier trains)."),
        "layer_pooling": click.option("--layer-pooling", type=click.Choice(LAYER_POOLINGS),
                                      default=d.layer_pooling, show_default=True,
                                      help="--arch whisper: pool the last kept layer, or a learnt weighted sum of "
                                           "every kept layer."),
        "speaker_standardization": click.option(
            "--speaker-standardization/--no-speaker-standardization", default=d.speaker_standardization,
            show_default=True,
            help="--arch whisper with a frozen encoder: standardise each clip's pooled embedding by the mean and "
                 "variance of its speaker's (needs speakers; predict and evaluate take them from several "
                 "recordings of each speaker, see --speaker)."),
        "speaker_prior_clips": click.option(
            "--speaker-prior-clips", type=click.FloatRange(min=0), default=d.speaker_prior_clips, show_default=True,
            help="With --speaker-standardization: shrink a speaker's statistics towards the training speakers' as "
                 "if these had this many recordings (0: the speaker's own only)."),
    }
    return [option for name, option in options.items() if name not in left_out]


def model_options(f):
    """Architecture and model size (`_model_option_list`)."""
    return _apply(_model_option_list(), f)


#: The defaults of every training option.
_TRAINING = TrainConfig()


def _optimizer_option_list():
    """How the weights are fitted (shared by `train` and every trial of `tune`)."""
    d = _TRAINING
    return [
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=d.optimizer, show_default=True),
        click.option("--schedule", type=click.Choice(SCHEDULES), default=d.schedule, show_default=True,
                     help="Learning rate: halved when validation stalls, cosine decay, or constant."),
        click.option("--warmup-epochs", type=click.IntRange(min=0), default=d.warmup_epochs, show_default=True,
                     help="Linear warm-up before the cosine decay."),
        click.option("--label-smoothing", type=click.FloatRange(0, 0.5), default=d.label_smoothing,
                     show_default=True),
        click.option("--ema-momentum", type=click.FloatRange(0, 1, max_open=True), default=d.ema_momentum,
                     show_default=True,
                     help="Evaluate and save an exponential moving average of the weights (e.g. 0.99; 0: off)."),
        click.option("--encoder-lr", "encoder_learning_rate", type=click.FloatRange(min=0, min_open=True),
                     default=d.encoder_learning_rate,
                     help="--arch whisper with --fine-tune-layers: the learning rate of the fine-tuned encoder "
                          "layers (default: a tenth of the classifier's learning rate)."),
    ]


def optimizer_options(f):
    return _apply(_optimizer_option_list(), f)


def _training_data_option_list():
    """What the training part is made of (shared by `train` and every trial of `tune`)."""
    d = _TRAINING
    return [
        click.option("--class-weight/--no-class-weight", default=d.class_weight, show_default=True,
                     help="Weight the loss by inverse class frequency."),
        click.option("--mixup", "mixup_alpha", type=click.FloatRange(min=0), default=d.mixup_alpha, show_default=True,
                     help="Mix each training batch with a shuffled copy of itself, weights from "
                          "Beta(ALPHA, ALPHA) (e.g. 0.2; 0: off)."),
        click.option("--augment-copies", type=click.IntRange(min=0), default=d.augment_copies, show_default=True,
                     help="Waveform-augmented copies of each training clip (shift, gain, noise, speed), computed "
                          "once and cached."),
        click.option("--noise-snr", "noise_snr_db", type=(float, float), default=d.noise_snr_db,
                     show_default=True, help="SNR range (dB) of the white noise added to augmented copies."),
        click.option("--gain-db", type=click.FloatRange(min=0), default=d.gain_db, show_default=True,
                     help="Augmented copies get a random gain in [-gain, +gain] dB."),
        click.option("--shift-seconds", type=click.FloatRange(min=0), default=d.shift_seconds,
                     show_default=True, help="Augmented copies start up to this much earlier or later."),
        click.option("--speed", type=click.FloatRange(0, 0.5), default=d.speed, show_default=True,
                     help="Augmented copies play at a random speed in [1 - speed, 1 + speed] (tempo and pitch)."),
        click.option("--reverb", type=click.FloatRange(0, 1), default=d.reverb, show_default=True,
                     help="Share of augmented copies played in a synthetic room (reverberation time 0.2-1 s)."),
        click.option("--telephone", type=click.FloatRange(0, 1), default=d.telephone, show_default=True,
                     help="Share of augmented copies band-limited to the telephone band (300-3400 Hz)."),
        click.option("--speaker-subsets", type=click.FloatRange(0, 1), default=d.speaker_subsets, show_default=True,
                     help="With --speaker-norm: this share of training clips lose the mean of a random subset of "
                          "their speaker's clips (1 to all, the clip included), so the model copes with few "
                          "recordings per speaker (e.g. 0.5; 0: off)."),
        click.option("--teacher", default=d.teacher,
                     help="Distil: mix this trained model's probabilities (a .keras file or a shipped model's name) "
                          "into the training targets. It sees the same clips through its own feature settings, "
                          "and must not have heard the validation or test speakers."),
        click.option("--distill-weight", type=click.FloatRange(0, 1, min_open=True), default=d.distill_weight,
                     show_default=True, help="With --teacher: the teacher's share of each training target."),
    ]


def training_data_options(f):
    return _apply(_training_data_option_list(), f)


def _device_option_list():
    """Which devices compute, and in what precision (shared by `train` and every trial of `tune`)."""
    return [
        click.option("--mixed-precision", is_flag=True, default=_TRAINING.mixed_precision,
                     help="Compute in float16 on a GPU, bfloat16 on a CPU (weights and outputs stay float32)."),
        click.option("--distribute", is_flag=True, default=_TRAINING.distribute,
                     help="Data-parallel over every local GPU (else every logical CPU device; at least two), "
                          "jax or tensorflow backend. --batch-size is the global batch: a multiple of the devices. "
                          "train: several machines with the jax backend and the KERAS_DISTRIBUTION_ variables."),
    ]


def device_options(f):
    return _apply(_device_option_list(), f)


def model_config_from(kwargs):
    """Pop the model options out of a command's kwargs into a ModelConfig (the rest keep their defaults)."""
    values = {n: kwargs.pop(n) for n in _fields(ModelConfig) if n in kwargs}
    values["encoder"] = values.get("encoder") or ""
    try:
        return ModelConfig(**values)
    except ValueError as exc:
        raise SerkerasError(f"bad model settings: {exc}") from None


def run_options(f):
    """What one training run is made of (shared by `train` and `cross-corpus`): features, model, optimiser,
    training data, devices, and where the run goes."""
    options = [
        feature_options,
        model_options,
        click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True),
                     default=_TRAINING.learning_rate, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=_TRAINING.batch_size, show_default=True),
        click.option("--epochs", type=click.IntRange(min=1), default=_TRAINING.epochs, show_default=True),
        optimizer_options,
        click.option("--patience", type=click.IntRange(min=1), default=_TRAINING.patience, show_default=True,
                     help="Early-stopping patience (epochs)."),
        click.option("--monitor", type=click.Choice(MONITORS), default=_TRAINING.monitor,
                     show_default=True, help="Validation objective for checkpoints and early stopping."),
        training_data_options,
        click.option("--train-seed", type=int, default=None,
                     help="Seed of initialisation, shuffling and augmentation (default: --seed); vary it alone to "
                          "repeat training on the same split."),
        device_options,
        click.option("--output-dir", type=click.Path(file_okay=False), default="saved_models", show_default=True),
        click.option("--log-dir", type=click.Path(file_okay=False), default="logs", show_default=True),
        click.option("--workers", type=click.IntRange(min=1), default=None, help="Feature extraction processes."),
        click.option("--quantize", type=click.Choice(["none", "int8"]), default=_TRAINING.quantize, show_default=True,
                     help="After training, store the model's Dense weights (a Whisper encoder's feed-forward "
                          "layers) as int8: a file about half the size; the reported scores are the quantized "
                          "model's."),
        click.option("--head-fit", type=click.Choice(HEAD_FITS), default=_TRAINING.head_fit, show_default=True,
                     help="gradient: train with the optimiser over epochs; lbfgs (a frozen encoder, --arch "
                          "whisper): fit the classifier as a logistic regression by L-BFGS, its L2 strength chosen "
                          "on the validation speakers (no epochs or learning rate)."),
        click.option("--quiet", is_flag=True, help="No per-epoch progress bars."),
    ]
    return _apply(options, f)


@main.command(cls=KerasCommand)
@recipe_option
@data_options
@split_options
@run_options
@click.option("--folds", "all_folds", is_flag=True, help="With --split kfold: train every fold, report mean and std.")
@click.option("--run-name", default=None, help="Folder name under saved_models/ and logs/ (default: from the settings).")
@click.option("--resume", is_flag=True,
              help="Continue the run --run-name from its last finished epoch, with its stored settings "
                   "(an explicit --epochs still applies).")
def train(data_dir, manifest, cache_dir, split_kind, fold, n_folds, val_fraction, test_fraction, seed, run_name,
          resume, output_dir, log_dir, workers, quiet, all_folds, train_seed, **kwargs):
    """Train a model; the best one is saved as saved_models/<run>/model.keras.

    Ctrl-C stops at the next batch and keeps the last finished epoch; --resume
    continues from there.
    """
    from pathlib import Path

    from serkeras import api
    from serkeras.training import TrainConfig

    feature_config, model_config = feature_config_from(kwargs), model_config_from(kwargs)
    train_config = TrainConfig(seed=seed if train_seed is None else train_seed, **kwargs)
    output_dir, log_dir = _join_process_group(train_config, resume, output_dir, log_dir)
    if resume:  # the stored settings; what the command line gives again replaces them
        if not run_name:
            raise SerkerasError("--resume needs the --run-name of the run to continue")
        given = click.get_current_context().get_parameter_source

        def on_command_line(*names):
            return any(given(name).name == "COMMANDLINE" for name in names)

        corpora = on_command_line("data_dir", "manifest")
        resumed = api.resumed_run(Path(output_dir) / run_name,
                                  epochs=kwargs["epochs"] if on_command_line("epochs") else None,
                                  data_dir=data_dir if corpora else None, manifest=manifest if corpora else None,
                                  cache_dir=cache_dir if on_command_line("cache_dir") else None,
                                  all_folds=all_folds)
        if resumed.finished:
            click.echo(f"run {run_name} already finished; nothing to resume")
            return
        run, finished = resumed.run, resumed.finished_folds
        click.echo(f"resuming {run_name} with its stored settings"
                   + (f" (finished folds kept: {', '.join(map(str, finished))})" if run.all_folds and finished else ""))
    else:
        run = api.new_run(feature_config, model_config, train_config,
                          api.SplitSettings(split_kind, fold, n_folds, val_fraction, test_fraction, seed),
                          data_dir, manifest, cache_dir, all_folds, echo=click.echo)
    run_name = run_name or run.default_name()
    results = api.train_runs(run, run_name, output_dir, log_dir, resume, workers, fit_verbosity(quiet), click.echo)
    if run.all_folds:
        click.echo(api.format_fold_summary(api.summarise_folds(results, Path(output_dir) / run_name)))


def fit_verbosity(quiet):
    """Keras' `verbose` for training: a progress bar with the time left on a terminal, else a line per epoch."""
    if quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _join_process_group(train_config, resume, output_dir, log_dir):
    """Start training over several processes when the KERAS_DISTRIBUTION_ variables describe them.

    Returns the `(output_dir, log_dir)` this process writes to: its own, for process 0; a
    temporary folder, removed at the end, for the others, so that one run folder is written.
    """
    from serkeras.training import process_group, start_process_group

    group = process_group()
    if group is None:
        return output_dir, log_dir
    if not train_config.distribute:
        raise SerkerasError("the KERAS_DISTRIBUTION_ variables describe several processes: add --distribute to "
                            "train over them (or unset them)")
    if resume:
        raise SerkerasError("--resume continues a run in one process: unset the KERAS_DISTRIBUTION_ variables")
    start_process_group(group)
    if group.chief:
        return output_dir, log_dir
    scratch = tempfile.TemporaryDirectory(prefix="serkeras-process-")
    click.get_current_context().call_on_close(scratch.cleanup)
    return os.path.join(scratch.name, "saved_models"), os.path.join(scratch.name, "logs")


@main.command("cross-corpus", cls=KerasCommand)
@click.option("--recipe", default=None, is_eager=True, expose_value=False, help=_RECIPE_HELP + " Its split settings "
              "are ignored: every corpus is held out in turn.",
              callback=functools.partial(_use_recipe, ignored=("split", "fold", "n-folds", "test-fraction")))
@data_options
@click.option("--val-fraction", type=click.FloatRange(0.01, 0.5), default=SplitSettings.val_fraction,
              show_default=True, help="Share of each training corpus's speakers that validate.")
@click.option("--seed", type=int, default=SplitSettings.seed, show_default=True,
              help="Seed of the validation speakers and training.")
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeat the report with seeds --seed, --seed + 1, ... (other validation speakers, augmented "
                   "copies and initialisation), each in its own seed<N>/ folder, and report the mean and standard "
                   "deviation over them: one run's held-out scores move by several points with the seed.")
@run_options
@click.option("--run-name", default=None,
              help="Folder under --output-dir holding a run per held-out corpus and the report (default: from the "
                   "architecture and the corpora). Run again to continue: finished runs are kept.")
def cross_corpus(data_dir, manifest, cache_dir, val_fraction, seed, n_seeds, run_name, output_dir, log_dir, workers,
                 quiet, train_seed, **kwargs):
    """Leave one corpus out: for each corpus, train on the others and test on every clip of it.

    Give two or more corpora (--data-dir and --manifest, repeated, in any mix).
    Each held-out corpus is scored on the classes it has, one recording per
    prediction; the table (accuracy, UA, macro-F1, per-class recall, confusion
    matrices) is printed and written as cross-corpus.md, .csv and .json.
    """
    from pathlib import Path

    import json

    from serkeras import api
    from serkeras.corpus import load_corpora
    from serkeras.evaluation import (cross_corpus_rows, cross_corpus_seed_rows, format_cross_corpus_markdown,
                                     format_cross_corpus_seeds_markdown, write_cross_corpus_report)
    from serkeras.training import TrainConfig, TrainingInterrupted, leave_one_corpus_out

    corpus = load_corpora(data_dir, manifest)
    if len(corpus.corpus_names) < 2:
        raise SerkerasError("cross-corpus needs two or more corpora: repeat --data-dir and --manifest")
    feature_config, model_config = api.configure(feature_config_from(kwargs), model_config_from(kwargs), click.echo)
    run_name = run_name or f"cross-corpus-{model_config.arch}-{'-'.join(corpus.corpus_names)}"
    folder = Path(output_dir) / run_name
    rows_by_seed = {}
    for k in range(n_seeds):  # one report per seed, each resumable on its own
        train_config = TrainConfig(seed=seed + k if train_seed is None else train_seed + k, **kwargs)
        inner = Path(run_name) / f"seed{seed + k}" if n_seeds > 1 else Path(run_name)

        def prepare(held, split, train_config=train_config):
            return api.prepare_training_data(held, split, feature_config, train_config, cache_dir, workers,
                                             progress=not quiet, echo=click.echo)

        try:
            reports = leave_one_corpus_out(corpus, prepare, feature_config, model_config, train_config,
                                           Path(output_dir) / inner, Path(log_dir) / inner, val_fraction, seed + k,
                                           api.data_source(data_dir, manifest, cache_dir), fit_verbosity(quiet),
                                           click.echo)
        except TrainingInterrupted as exc:
            raise KeyboardInterrupt(f"{exc}; run the same command again to continue (finished runs are kept)") \
                from None
        rows = rows_by_seed[seed + k] = cross_corpus_rows(reports)
        click.echo(("" if n_seeds == 1 else f"seed {seed + k}\n") + format_cross_corpus_markdown(rows), nl=False)
        paths = write_cross_corpus_report(rows, Path(output_dir) / inner)
        click.echo(f"report: {', '.join(map(str, paths))}")
    if n_seeds > 1:
        summary = cross_corpus_seed_rows(rows_by_seed)
        text = format_cross_corpus_seeds_markdown(summary)
        (folder / "cross-corpus-seeds.md").write_text(text)
        (folder / "cross-corpus-seeds.json").write_text(json.dumps(summary, indent=2))
        click.echo(f"\nover {n_seeds} seeds\n{text}report: {folder / 'cross-corpus-seeds.md'}, "
                   f"{folder / 'cross-corpus-seeds.json'}")


def names_shipped_models(onnx=False):
    """A decorator that ends a command's help with the names of the shipped models its MODEL may be (read from
    their manifest); with `onnx`, it says that an ONNX export is a MODEL too."""
    import inspect

    def decorate(command):
        files = "a .keras file, an ONNX export of one" if onnx else "a .keras file"
        command.help = (f"{inspect.cleandoc(command.help)}\n\nMODEL is {files} or a shipped model's name: "
                        f"{', '.join(model_names())}.")
        return command

    return decorate


def _perturbations(ctx, param, values):
    """--perturb's values as `serkeras.effects.Perturbation`s."""
    from serkeras.effects import Perturbation

    try:
        return [Perturbation.parse(value) for value in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@names_shipped_models(onnx=True)
@main.command(cls=KerasCommand)
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@data_options
@split_options
@click.option("--part", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="Which part of the split to evaluate ('all': every clip).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the confusion matrix as PNG.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@runtime_option
@tta_option
@speaker_stats_option
@click.option("--perturb", "perturbations", multiple=True, metavar="KIND[:AMOUNT]", callback=_perturbations,
              help="Robustness: also score the same clips with every recording changed: gain:DB (float "
                   "samples, not clipped at full scale), noise:SNR_DB (white), telephone (300-3400 Hz), "
                   "reverb:RT60_S (a synthetic room). Repeat for several; prints accuracy and UA per condition.")
def evaluate(model_path, data_dir, manifest, cache_dir, split_kind, fold, n_folds, val_fraction, test_fraction, seed,
             part, json_path, plot, batch_size, runtime, tta_copies, speaker_stats, perturbations):
    """Accuracy, F1, precision, recall, per-class table and confusion matrix of a saved model
    (with --perturb: accuracy and UA under each recording condition).

    Given several corpora, each is also reported apart, on the classes it has.
    """
    import json

    from serkeras import api
    from serkeras.corpus import load_corpora
    from serkeras.evaluation import (check_model_labels, format_corpus_table, format_report, format_robustness,
                                     robustness_report, save_confusion_matrix)

    if perturbations and plot:
        raise click.UsageError("--plot draws one condition's confusion matrix; give it without --perturb")
    model, meta, path = api.open_prediction_model(model_path, runtime)
    corpus = load_corpora(data_dir, manifest)
    check_model_labels(meta, corpus.labels)
    try:
        reference_clips = api.speaker_reference_clips(speaker_stats, meta, corpus)
    except SerkerasError as exc:  # an option that does not fit the model
        raise click.UsageError(str(exc)) from None
    split = api.SplitSettings(split_kind, fold, n_folds, val_fraction, test_fraction, seed)
    clips, described = api.evaluation_part(corpus, split, part)
    tta = f", test-time augmentation: each clip + {tta_copies} copies" if tta_copies else ""
    stats = ", speaker statistics from the whole corpus" if speaker_stats == "corpus" else ""
    settings = {"model": str(model_path), "file": str(path), "split": described, "part": part, "tta_copies": tta_copies,
                **({"speaker_stats": speaker_stats} if meta.normalises_by_speaker else {})}
    if perturbations:
        rows = robustness_report(model, meta, corpus, clips, perturbations, tta_copies, cache_dir,
                                 reference_clips, batch_size)
        click.echo(f"{model_path} on {corpus.name}, {described}, part {part}{tta}{stats}; one prediction per "
                   "recording")
        click.echo(format_robustness(rows))
        report = {**settings, "conditions": rows}
    else:
        report = api.evaluate_clips(model, meta, corpus, clips, tta_copies, cache_dir, reference_clips, batch_size)
        by_corpus = report.pop("by_corpus", {})
        report.update(settings)
        click.echo(f"{model_path} on {corpus.name}, {described}, part {part}{tta}{stats}")
        for name, own in by_corpus.items():
            click.echo(f"\n{name}: {own['n']} clips, scored on its classes")
            click.echo(format_report(own))
        if by_corpus:
            click.echo("\nall corpora together")
        click.echo(format_report(report))
        if by_corpus:
            click.echo("\n" + format_corpus_table({**by_corpus, "all": report}))
            report["by_corpus"] = by_corpus
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
    if plot:
        save_confusion_matrix(report["confusion_matrix"], meta.labels, plot, f"{part}: {described}")


@names_shipped_models()
@main.command(cls=KerasCommand)
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The run that trained MODEL (its config.json and metrics.json): its corpora and split are the "
                   "defaults. MODEL may be the run folder itself.")
@data_options
@split_options(kind_help="The split whose test part is scored (default: the run's, else actor; the other split "
                         "options change it); a card needs speakers the model never heard, so not random.")
@click.option("--kfold-run", "kfold_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A `serkeras train --split kfold --folds` run of the same settings, for cross-validated scores.")
@click.option("--cross-corpus-run", "cross_corpus_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A `serkeras cross-corpus` run of the same settings (one seed or --seeds N), for scores on "
                   "corpora left out of training.")
@click.option("--perturb", "perturbations", multiple=True, metavar="KIND[:AMOUNT]", callback=_perturbations,
              help="Also score the test clips under this recording condition (as `serkeras evaluate --perturb`); "
                   "repeatable.")
@click.option("--output", "-o", "card_path", type=click.Path(dir_okay=False), required=True,
              help="The card to write (Markdown); its hand-written '## Notes' section, if any, is kept.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.pass_context
def card(ctx, model_path, run_dir, data_dir, manifest, cache_dir, split_kind, fold, n_folds, val_fraction,
         test_fraction, seed, kfold_dir, cross_corpus_dir, perturbations, card_path, batch_size):
    """Write a model card: what the model is, how it was trained, and its scores on the test part's speakers
    (accuracy and UA with speaker-bootstrap intervals, per class and per corpus, calibration), computed here.

    The split is the run's (--run, or MODEL given as a run folder), else `actor`; split options change it.
    """
    from click.core import ParameterSource

    from serkeras.cards import card_for, write_model_card

    fields = {"split_kind": "kind", "fold": "fold", "n_folds": "n_folds", "val_fraction": "val_fraction",
              "test_fraction": "test_fraction", "seed": "seed"}
    given = {field: ctx.params[name] for name, field in fields.items()
             if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    text = card_for(model_path, run_dir, data_dir, manifest, given, kfold_dir, perturbations, cache_dir, batch_size,
                    cross_corpus_dir=cross_corpus_dir)
    write_model_card(card_path, text)
    click.echo(f"wrote {card_path}")


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help=f"A .keras file, an ONNX export of one (`serkeras export --format onnx`; runs in ONNX Runtime, "
                   f"without TensorFlow), or a shipped model by name: {', '.join(model_names())} (default: the "
                   "first).")
@runtime_option
@click.option("--format", "output_format", type=click.Choice(PREDICTION_FORMATS), default="table",
              show_default=True)
@click.option("--window", type=click.FloatRange(min=0.5), default=None,
              help="Window length in seconds for long recordings (default: the model's clip length, or 4 s).")
@click.option("--hop", type=click.FloatRange(min=0.1), default=None, help="Window hop in seconds (default: window/2).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Feature processes (default: every core for many files; a few run in this process).")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Longest recording to read; longer ones are skipped with a warning (a long recording is "
                   "predicted window by window, but read whole).")
@tta_option
@click.option("--speaker", "speaker_grouping", type=lazy_choice("inference", "SPEAKER_GROUPINGS", imports_keras=False),
              default="auto", show_default=True,
              help="For models that normalise by speaker (serkeras-crema-d-whisper-speaker-norm, or trained with "
                   "--speaker-norm): which files share a speaker, whose statistics are used ('auto': a CREMA-D file "
                   "name's actor, else the folder; 'folder': files in one folder; 'prefix': the file name up to its "
                   "first underscore; 'all'; 'file'). Give several recordings of each speaker.")
def predict(paths, model_path, runtime, output_format, window, hop, batch_size, workers, max_seconds, tta_copies,
            speaker_grouping):
    """Predict the emotion of audio files, folders or globs (any format, rate and channels)."""
    from serkeras import api
    from serkeras.inference import expand_paths, predict_files

    _refuse_model_paths(paths)
    files = expand_paths(paths)  # before the model: a mistyped path should not wait for it to load
    # ONNX Runtime runs an .onnx file without TensorFlow
    model, meta, _ = api.open_prediction_model(model_path, runtime, before_keras=import_tensorflow_quietly)
    predictions, skipped = predict_files(model, meta, files, window, hop, batch_size, workers, tta_copies,
                                         speaker_grouping, max_seconds)
    click.echo(api.format_predictions(predictions, meta.labels, output_format), nl=False)
    hint = api.speaker_model_hint(model_path, [p.path for p in predictions], speaker_grouping)
    if hint:
        click.echo(hint, err=True)


def _refuse_model_paths(paths):
    """A model given where audio belongs (`serkeras predict model.keras clip.wav`) is a usage error, not a
    skipped file: otherwise the default model would quietly predict in its place."""
    for path in paths:
        if path.lower().endswith((".keras", ".onnx")) or (find_model(path) and not os.path.exists(path)):
            raise click.UsageError(f"{path} is a model, not audio: pass it as --model {path}")


def _tune_options(f):
    """The base model and the search settings of `tune`."""
    # A search chooses the activation; a speaker-standardised model is trained by `train` alone.
    options = (_model_option_list(left_out=("activation", "speaker_standardization", "speaker_prior_clips"))
               + _optimizer_option_list() + _training_data_option_list()
               + _device_option_list()) + [
        click.option("--tuner", "tuner_kind", type=lazy_choice("tuning", "TUNERS"), default="random", show_default=True),
        click.option("--max-trials", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Trials in all (random, bayesian, grid; hyperband sets its own from --epochs)."),
        click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
                     help="Epochs per trial (hyperband: the largest budget)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=_TRAINING.batch_size, show_default=True),
        click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Early-stopping patience within a trial (epochs)."),
        click.option("--objective", type=lazy_choice("tuning", "OBJECTIVES"), default="val_accuracy", show_default=True),
        click.option("--search-dropout", is_flag=True,
                     help="Also search dropout in {0.1, 0.3, 0.5} (instead of using --dropout)."),
        click.option("--search-width", is_flag=True, help="Also search the width in {0.5, 1, 2} x --width."),
        click.option("--search-fine-tune", is_flag=True,
                     help="--arch whisper: also search --fine-tune-layers in {0, 1} (a trained encoder layer makes "
                          "each epoch far slower)."),
        click.option("--search-name", default=None,
                     help="Folder name under --output-dir and --log-dir "
                          "(default: <arch>-<split>-<tuner>-<objective>)."),
        click.option("--overwrite", is_flag=True, help="Start the search again instead of resuming it."),
        click.option("--output-dir", type=click.Path(file_okay=False), default="saved_models", show_default=True),
        click.option("--log-dir", type=click.Path(file_okay=False), default="logs", show_default=True),
        click.option("--workers", type=click.IntRange(min=1), default=None, help="Feature extraction processes."),
        click.option("--quiet", is_flag=True, help="No per-trial and per-epoch progress."),
    ]
    return _apply(options, f)


@main.command(cls=KerasCommand)
@recipe_option
@data_options
@split_options
@feature_options
@_tune_options
def tune(data_dir, manifest, cache_dir, split_kind, fold, n_folds, val_fraction, test_fraction, seed, tuner_kind,
         max_trials, epochs, batch_size, patience, objective, search_dropout, search_width, search_fine_tune,
         search_name, overwrite, output_dir, log_dir, workers, quiet, **kwargs):
    """Search activation and learning rate (optionally dropout, width) with KerasTuner.

    With --arch whisper: the learning rate, the encoder layers kept (1 to
    --encoder-layers), --layer-pooling, --pooling and dropout (and with
    --search-fine-tune, --fine-tune-layers); the frozen layers' outputs are
    cached, so each depth runs them once.

    Resumes an existing search of the same --search-name (finished trials are
    kept). Writes <output-dir>/<search>/trials.csv, trials.md, best.keras and
    best.json, and TensorBoard logs with HParams to <log-dir>/<search>/. With
    KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT set it
    runs as KerasTuner's chief ("chief" in the id) or as a worker.
    """
    import math
    from pathlib import Path

    from serkeras import api, tuning
    from serkeras.evaluation import format_report
    from serkeras.training import TrainConfig

    feature_config, model_config = api.configure(feature_config_from(kwargs), model_config_from(kwargs), click.echo)
    tuning.check_search_options(model_config.arch, search_width, search_fine_tune)
    # Every trial trains like `serkeras train` would with these settings; the search sets the learning rate.
    train_config = TrainConfig(epochs=epochs, batch_size=batch_size, patience=patience, monitor=objective, seed=seed,
                               **kwargs)
    role = tuning.distributed_role()
    search_name = search_name or f"{model_config.arch}-{split_kind}-{tuner_kind}-{objective}"
    search_dir, search_logs = Path(output_dir) / search_name, Path(log_dir) / search_name
    describe = {"split": split_kind, "fold": fold, "n_folds": n_folds, "val_fraction": val_fraction,
                "test_fraction": test_fraction, "seed": seed}
    settings = tuning.search_settings(feature_config, model_config, train_config, describe, tuner_kind, objective,
                                      search_dropout, search_width, search_fine_tune)
    overwrite = tuning.prepare_search(search_dir, search_logs, settings, role, overwrite)
    corpus, split = api.load_split(data_dir, manifest, api.SplitSettings(split_kind, fold, n_folds, val_fraction,
                                                                         test_fraction, seed), training=True)
    who = "" if role == "local" else f" ({role} {os.environ['KERASTUNER_TUNER_ID']})"
    click.echo(f"search {search_name}{who}: {split.description}; train {len(split.train)}, val {len(split.val)}, "
               f"test {len(split.test)} clips")
    data = api.prepare_training_data(corpus, split, feature_config, train_config, cache_dir, workers,
                                     progress=not quiet, echo=click.echo)
    steps = math.ceil(len(data.parts["train"][0]) / batch_size)
    hypermodel = tuning.SERHyperModel(feature_config, model_config, data.labels, data.stats, train_config, steps,
                                      search_dropout=search_dropout, search_width=search_width,
                                      search_fine_tune=search_fine_tune,
                                      partial_labels=data.partial_labels)
    if role != "worker":
        tuning.record_search(search_dir, settings, corpus.name)
    tuner = tuning.make_tuner(tuner_kind, hypermodel, objective, max_trials, search_dir, "tuner", seed,
                              overwrite=overwrite, max_epochs=epochs)
    if role != "worker" and tuner.oracle.trials:
        done = len(tuning.completed_trials(tuner))
        click.echo(f"resuming search {search_name}: {len(tuner.oracle.trials)} trials started before, "
                   f"{done} completed (kept)")
    tuning.run_search(tuner, data, epochs, batch_size, search_logs, patience=patience, seed=seed,
                      verbose=0 if quiet else 2)
    if role == "worker":
        click.echo(f"worker {os.environ['KERASTUNER_TUNER_ID']}: no trials left; the chief writes the results")
        return

    rows = tuning.trial_table(tuner)
    csv_path, md_path = tuning.save_table(rows, objective, search_dir)
    click.echo(f"{len(rows)} completed trial{'' if len(rows) == 1 else 's'}, best first "
               f"(score: {objective} at the best epoch):")
    click.echo(tuning.format_table(rows, objective))
    best, report = tuning.save_best(tuner, data, feature_config, objective, search_dir)
    click.echo(f"best trial {best.trial_id}: " + ", ".join(f"{k}={v}" for k, v in best.hyperparameters.values.items())
               + f"; {objective} {best.score:.4f}. On the test part:")
    click.echo(format_report(report))
    click.echo(f"tables: {csv_path}, {md_path}")
    click.echo(f"best model: {search_dir / 'best.keras'}  (TensorBoard HParams: tensorboard --logdir {search_logs})")



@names_shipped_models()
@main.command("export", cls=KerasCommand)
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--format", "export_format", type=lazy_choice("export", "FORMATS"), default="tf_saved_model",
              show_default=True)
@click.option("--output", type=click.Path(), default=None,
              help="Where to write (default: next to the model, named after the format).")
def export_command(model_path, export_format, output):
    """Export a model for serving (Keras' Model.export) and check it predicts like the .keras file.
    """
    from pathlib import Path

    from serkeras import api
    from serkeras.export import SUFFIXES, UncheckedExport, check_export, export_model, export_tolerance
    from serkeras.shipped import resolve_model

    model, _ = api.open_model(model_path)
    suffix = SUFFIXES[export_format]
    output = Path(output) if output else Path(model_path).with_name(f"{Path(model_path).stem}-{export_format}{suffix}")
    if suffix and output.suffix != suffix:
        output = output.with_name(output.name + suffix)  # the exporters insist on their suffix
    export_model(model, output, export_format, source=resolve_model(model_path))
    try:
        difference = check_export(model, output, export_format)
    except UncheckedExport as exc:
        click.echo(f"wrote {output} (not checked: {exc})")
        return
    if difference > export_tolerance(model):
        raise SerkerasError(f"the export at {output} predicts differently from {model_path} "
                            f"(max difference {difference:.2g})")
    else:
        click.echo(f"wrote {output}; reloaded, it gives the same probabilities (max difference {difference:.1g})")


@names_shipped_models()
@main.command("ensemble", cls=KerasCommand)
@click.argument("models", metavar="MODEL...", nargs=-1, required=True)
@click.option("--output", type=click.Path(dir_okay=False), required=True, help="The .keras file to write.")
def ensemble_command(models, output):
    """Average the class probabilities of two or more models in one .keras file.

    The models must share their labels and feature settings (e.g. runs of recipes
    that differ in architecture, augmentation or training seed). The file predicts,
    evaluates and exports like any model; its cost is the sum of the members'.
    """
    from pathlib import Path

    from serkeras import api

    from serkeras.models.ensemble import ensemble_members

    averaged = api.average_models(models, output)
    click.echo(f"wrote {output}: the average of {len(ensemble_members(averaged))} models "
               f"({Path(output).stat().st_size / 2**20:.1f} MiB, {averaged.count_params():,} parameters)")


if __name__ == "__main__":
    main()
