"""How far a frozen pre-trained speech encoder gets on unseen speakers, and the shipped model made from it.

    python experiments/pretrained_probe.py embed PATH/faster-whisper-base --name whisper-base
    python experiments/pretrained_probe.py embed PATH/faster-whisper-base --name whisper-base-keras --engine keras
    python experiments/pretrained_probe.py score whisper-base-keras-layer2 [MORE ...]
    python experiments/pretrained_probe.py ship PATH/faster-whisper-base --layers 2
    python experiments/pretrained_probe.py card

PATH/faster-whisper-base is Whisper in CTranslate2's format (the folder
faster-whisper uses, such as ``Systran/faster-whisper-base``). ``embed`` runs
its encoder over every clip, at the clip's own length instead of Whisper's 30 s
window, and keeps the mean and standard deviation over time of its last layer
(CTranslate2, ``pip install ctranslate2``; ``data/cache/pretrained/NAME.npz``)
or of every layer (``--engine keras``, the Keras port of
``serkeras.models.whisper``: ``NAME-layerN.npz``); an interrupted run resumes.
``score`` fits a logistic regression on the training part of each split (its
strength chosen on the validation part), with and without each speaker's
z-normalisation of the embeddings (several NAMES are concatenated), and
rewrites ``experiments/results/pretrained_probe.md``.

``ship`` builds ``saved_models/serkeras-crema-d-whisper.keras``: the first
LAYERS encoder layers in Keras with Whisper's weights (feed-forward layers
int8), fed serkeras' own features, with the probe fitted on the actor split's
training actors as its softmax layer; it scores the recipe on the k-fold folds
and the random split and writes the model card (``card`` rewrites the card
alone). With ``--speaker-norm`` it builds
``saved_models/serkeras-crema-d-whisper-speaker-norm.keras``, whose pooled
embedding is standardised by its speaker's statistics before the softmax.
``experiments/accuracy.py report`` lists every logged row with its cost.
"""

import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from serkeras.cli import SHIPPED_MODELS, SerkerasGroup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import RESULTS_DIR, accuracy_interval, mean_std  # noqa: E402

EMBEDDINGS_DIR = Path("data") / "cache" / "pretrained"
#: Inverse regularisation strengths tried; the validation part picks one per split.
C_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: `ship --prior-clips`: "a few recordings" (finding 30: with many recordings it changes little, with few it
#: decides; priors of 2 to 10 do alike, 5 is in the middle).
PRIOR_CLIPS = 5.0
N_FOLDS = 5
SAVE_EVERY = 500


def whisper_log_mel(wave, n_mels=80):
    """Whisper's input features: a log10 mel power spectrogram, 25 ms windows, 10 ms hop, at 16 kHz.

    Clipped at 8 decades (80 dB) below its peak and scaled as Whisper was trained
    (``(log10 + 4) / 4``); an odd frame count is padded by one frame, because the
    encoder's second convolution halves time.

    Returns
    -------
    numpy.ndarray of shape (n_mels, frames), float32
    """
    import librosa

    power = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=400, hop_length=160, n_mels=n_mels,
                                           power=2.0, center=True, pad_mode="reflect")[:, :-1]
    log_spec = np.log10(np.maximum(power, 1e-10))
    log_spec = (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    if log_spec.shape[1] % 2:
        log_spec = np.pad(log_spec, ((0, 0), (0, 1)), constant_values=log_spec.min())
    return log_spec.astype(np.float32)


def pooled(frames):
    """Mean and standard deviation over time of an encoder's (frames, dims) output, concatenated."""
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)]).astype(np.float32)


def load_embeddings(path):
    """{clip name: embedding} saved by ``embed`` (empty when `path` does not exist)."""
    if not Path(path).exists():
        return {}
    with np.load(path) as data:
        return dict(zip(data["names"].tolist(), data["embeddings"]))


def save_embeddings(path, embeddings):
    """Write {clip name: embedding} atomically, so an interrupt never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, names=np.array(list(embeddings)), embeddings=np.stack(list(embeddings.values())))
    partial.replace(path)


def fit_probe(x_train, y_train, x_val, y_val, c_grid=C_GRID):
    """Standardisation + logistic regression, with the C of `c_grid` that scores best on the validation part.

    Returns
    -------
    (fitted sklearn Pipeline, C, validation accuracy)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in c_grid:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(x_train, y_train)
        val_accuracy = accuracy_score(y_val, probe.predict(x_val))
        if best is None or val_accuracy > best[2]:
            best = (probe, c, float(val_accuracy))
    return best


def fitted_probe_split(embeddings, split, labels, speaker_scale, c_grid=C_GRID, train_copies=(), prior_clips=0.0):
    """Fit a logistic-regression probe on `split.train`, pick its C on `split.val`, score `split.test`.

    With `speaker_scale`, each clip's embedding is standardised by its speaker's
    mean and variance, as the shipped model's `SpeakerStandardization` layer does:
    over the speaker's clips in the training part for training clips, over all of
    the speaker's clips in `split` for the others (the same thing on
    speaker-disjoint splits; on ``random``, what ``serkeras evaluate
    --speaker-stats corpus`` does), shrunk towards the training speakers' as if
    those had `prior_clips` recordings (0: a plain z-score per speaker).

    `train_copies`: embeddings of augmented copies of the clips ({clip: embedding} each), added to the
    training part only (with `speaker_scale`, each copy standardised by the same copy of its speaker's clips).

    Returns
    -------
    (the fitted sklearn Pipeline, dict with the chosen ``C``, ``val_accuracy``, ``test_accuracy``,
    ``test_macro_f1`` and ``test_clips``, the `SpeakerStandardization` layer with its population weights set
    (None without `speaker_scale`))
    """
    from sklearn.metrics import accuracy_score, f1_score

    from serkeras.evaluation import embedding_speaker_stats, population_stats, speaker_input_arrays
    from serkeras.models.layers import SpeakerStandardization

    index = {name: i for i, name in enumerate(labels)}
    parts = {name: [c for c in clips if c.name in embeddings] for name, clips in split.parts().items()}

    def matrix(clips, source=embeddings):
        return np.stack([source[c.name] for c in clips])

    def stats_of(clips, source=embeddings):
        return embedding_speaker_stats(matrix(clips, source), [c.speaker for c in clips])

    every = parts["train"] + parts["val"] + parts["test"]
    standardization = train_stats = every_stats = None
    if speaker_scale:  # each set of statistics computed once per probe
        train_stats, every_stats = stats_of(parts["train"]), stats_of(every)
        standardization = SpeakerStandardization(prior_clips)
        standardization.build(matrix(parts["train"][:1]).shape)
        standardization.set_weights(population_stats(train_stats))

    def features(clips, stats, source=embeddings):
        """The clips' embeddings, standardised with their speakers' `stats` (None: as they are)."""
        x = matrix(clips, source)
        if stats is not None:
            x = np.asarray(standardization(x, *speaker_input_arrays([c.speaker for c in clips], stats)))
        return x, np.array([index[c.label] for c in clips])

    x_train, y_train = features(parts["train"], train_stats)
    for copies in train_copies:
        x_copy, y_copy = features(parts["train"], stats_of(parts["train"], copies) if speaker_scale else None, copies)
        x_train, y_train = np.concatenate([x_train, x_copy]), np.concatenate([y_train, y_copy])
    x_val, y_val = features(parts["val"], every_stats)
    x_test, y_test = features(parts["test"], every_stats)
    probe, c, val_accuracy = fit_probe(x_train, y_train, x_val, y_val, c_grid)
    predicted = probe.predict(x_test)
    scores = {"C": c, "val_accuracy": float(val_accuracy), "test_accuracy": float(accuracy_score(y_test, predicted)),
              "test_macro_f1": float(f1_score(y_test, predicted, average="macro")), "test_clips": len(y_test)}
    if standardization is not None:
        scores.update(few_recordings_scores(probe, standardization, matrix(parts["test"]), parts["test"], y_test))
    return probe, scores, standardization


#: `few_recordings_scores`: the random subset's size, and the seed of its draws.
FEW_CLIPS = 3


def few_recordings_scores(probe, standardization, x, clips, y, seed=0):
    """Test accuracy of a speaker-standardised probe when each speaker's statistics come from few recordings.

    `x`: the embeddings of `clips` (unstandardised), `y`: their class indices.
    Returns ``test_accuracy_clip_alone`` (each clip standardised by its own
    statistics: one recording per speaker) and ``test_accuracy_3_clips``
    (statistics from `FEW_CLIPS` of the speaker's clips in `clips`, drawn at random).
    """
    from serkeras.evaluation import embedding_speaker_stats, embedding_stats, speaker_input_arrays

    def accuracy(keys, stats):
        standardized = np.asarray(standardization(x, *speaker_input_arrays(keys, stats)))
        return float(np.mean(probe.predict(standardized) == y))

    rng = np.random.default_rng(seed)
    speakers = [c.speaker for c in clips]
    drawn = {}
    for speaker in sorted(set(speakers)):  # a fixed order: the draws are reproducible
        indices = [i for i, s in enumerate(speakers) if s == speaker]
        drawn[speaker] = embedding_stats(x[rng.choice(indices, min(FEW_CLIPS, len(indices)), replace=False)])
    alone = [c.name for c in clips]
    return {"test_accuracy_clip_alone": accuracy(alone, embedding_speaker_stats(x, alone)),
            f"test_accuracy_{FEW_CLIPS}_clips": accuracy(speakers, drawn)}


@click.group(cls=SerkerasGroup)  # user errors as one line, as in the serkeras CLI
def cli():
    """Embed the corpus with a pre-trained Whisper encoder, and probe it on unseen speakers."""


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                               help="CREMA-D audio folder (default $SERKERAS_DATA_DIR or data/Crema).")


def ct2_encoder(model_dir, threads):
    """(file name suffixes, n_mels, encode) for CTranslate2's Whisper: encode(mel) gives [last layer's frames]."""
    from serkeras.errors import SerkerasError

    try:
        import ctranslate2
    except ImportError:
        raise SerkerasError("embed needs CTranslate2: pip install ctranslate2") from None
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", intra_threads=threads, compute_type="float32")

    def encode(mel):
        return [np.asarray(model.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))[0]]

    return [""], model.n_mels, encode


def keras_encoder(model_dir):
    """(file name suffixes, n_mels, encode) for the Keras port: encode(mel) gives every layer's frames."""
    import keras

    from serkeras.models.whisper import read_checkpoint, set_encoder_weights, whisper_encoder

    checkpoint = read_checkpoint(model_dir)
    sizes = checkpoint.sizes
    mel = keras.Input((None, sizes.n_mels), name="log_mel")  # already in Whisper's scale (whisper_log_mel)
    outputs, _ = whisper_encoder(mel, None, sizes.n_layers, sizes.dim, sizes.heads)
    # The last layer after Whisper's final normalisation, as its decoder reads it.
    outputs[-1] = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(outputs[-1])
    model = keras.Model(mel, outputs, name="whisper_encoder")
    set_encoder_weights(model, checkpoint.weights)

    def encode(mel):
        return [np.asarray(frames)[0] for frames in model(mel.T[None])]

    return [f"-layer{i + 1}" for i in range(len(model.outputs))], model.input_shape[-1], encode


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Name of the embeddings file under data/cache/pretrained/.")
@click.option("--engine", type=click.Choice(["ctranslate2", "keras"]), default="ctranslate2", show_default=True,
              help="ctranslate2 pools the last layer into NAME.npz; keras (serkeras.models.whisper) pools "
                   "every layer i into NAME-layer{i}.npz.")
@data_dir_option
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
def embed(model_dir, name, engine, data_dir, threads):
    """Pool encoder layers of the Whisper model in MODEL_DIR (CTranslate2 format) over every clip."""
    from serkeras.audio import AudioError, load_audio
    from serkeras.corpus import load_crema_d, warn_skipped
    from serkeras.errors import SerkerasError

    if not (Path(model_dir) / "model.bin").exists():
        raise SerkerasError(f"{model_dir} is not a CTranslate2 model folder (no model.bin)")
    suffixes, n_mels, encode = ct2_encoder(model_dir, threads) if engine == "ctranslate2" else keras_encoder(model_dir)
    paths = [EMBEDDINGS_DIR / f"{name}{suffix}.npz" for suffix in suffixes]
    layers = [load_embeddings(path) for path in paths]
    done = set.intersection(*(set(embeddings) for embeddings in layers))  # all layers are saved together
    todo = [c for c in load_crema_d(data_dir).clips if c.name not in done]
    click.echo(f"{len(done)} clips already embedded in {paths[-1]}, {len(todo)} to go")
    skipped, start = [], time.perf_counter()

    def save():
        for path, embeddings in zip(paths, layers):
            if embeddings:
                save_embeddings(path, embeddings)

    try:
        with click.progressbar(todo, label="embedding", show_pos=True, show_eta=True) as bar:
            for i, clip in enumerate(bar, 1):
                try:
                    # Whisper hears the level as recorded: no peak normalisation.
                    wave = load_audio(clip.path, normalize="none", max_seconds=30)
                except AudioError as exc:
                    skipped.append((clip.path, str(exc)))
                    continue
                for embeddings, frames in zip(layers, encode(whisper_log_mel(wave, n_mels))):
                    embeddings[clip.name] = pooled(frames)
                if i % SAVE_EVERY == 0:
                    save()
    finally:
        save()
    warn_skipped(skipped)
    click.echo(f"{len(layers[-1])} clips in {paths[-1]} ({time.perf_counter() - start:.0f} s for {len(todo)})")


def joined_embeddings(names):
    """{clip: the embeddings `names` concatenated}, over the clips that every one of them holds."""
    from serkeras.errors import SerkerasError

    parts = []
    for name in names:
        parts.append(load_embeddings(EMBEDDINGS_DIR / f"{name}.npz"))
        if not parts[-1]:
            raise SerkerasError(f"no embeddings named {name!r} in {EMBEDDINGS_DIR}; run embed first")
    common = set.intersection(*(set(p) for p in parts))
    return {clip: np.concatenate([p[clip] for p in parts]) for clip in parts[0] if clip in common}


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--prior-clips", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Score only the speaker-standardised probe, with its statistics shrunk towards the training "
                   "speakers' as `ship --speaker-norm` does (0: both probes, a plain z-score per speaker).")
@data_dir_option
def score(names, prior_clips, data_dir):
    """Probe the embeddings NAMES (several are concatenated) on the actor, kfold and random splits.

    Adds rows to results/pretrained_probe.jsonl and rewrites results/pretrained_probe.md.
    """
    from serkeras.corpus import load_crema_d
    from serkeras.splits import make_split
    from serkeras.system import describe_machine

    embeddings, name = joined_embeddings(names), "+".join(names)
    name += f", speaker statistics with a prior of {prior_clips:g} clips" if prior_clips else ""
    corpus = load_crema_d(data_dir)
    machine = describe_machine()
    rows = []
    for speaker_scale in (True,) if prior_clips else (False, True):
        for kind in ("actor", "kfold", "random"):
            folds = range(N_FOLDS) if kind == "kfold" else [0]
            results = [fitted_probe_split(embeddings, make_split(corpus.clips, kind, fold=k, seed=0), corpus.labels,
                                          speaker_scale, prior_clips=prior_clips)[1] for k in folds]
            rows.append({"embeddings": name, "speaker_zscore": speaker_scale, "split": kind, "folds": results,
                         "machine": machine})
            click.echo(f"{name} {'speaker z-norm' if speaker_scale else 'one clip'} {kind}: "
                       + ", ".join(f"{r['test_accuracy']:.3f}" for r in results))
    log_path = RESULTS_DIR / "pretrained_probe.jsonl"
    with open(log_path, "a") as log:
        for row in rows:
            log.write(json.dumps(row) + "\n")
    write_report(RESULTS_DIR / "pretrained_probe.md", latest_rows(log_path))


SHIPPED_PATH = Path("saved_models") / "serkeras-crema-d-whisper.keras"
SPEAKER_NORM_PATH = Path("saved_models") / "serkeras-crema-d-whisper-speaker-norm.keras"


def head_weights(probe):
    """A fitted StandardScaler + LogisticRegression pipeline as one Dense layer's (kernel, bias)."""
    scaler, regression = probe[0], probe[-1]
    kernel = regression.coef_.T / scaler.scale_[:, None]
    bias = regression.intercept_ - (scaler.mean_ / scaler.scale_) @ regression.coef_.T
    return [kernel.astype("float32"), bias.astype("float32")]


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--layers", "n_layers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Encoder layers kept (the per-layer probes of `score` tell which).")
@click.option("--quantize", type=click.Choice(["none", "int8"]), default="int8", show_default=True,
              help="Store the encoder's feed-forward weights as int8 (Keras' Model.quantize).")
@click.option("--augment-copies", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also fit the classifier on this many augmented copies of each training clip (speed 0.9-1.1, "
                   "time shift, gain, noise at 10-30 dB SNR: serkeras' TEST_TIME_AUGMENTATION).")
@click.option("--speaker-norm", is_flag=True,
              help="Standardise the pooled embedding by its speaker's mean and variance (model inputs that "
                   "`serkeras predict` fills from all of a speaker's recordings).")
@click.option("--prior-clips", type=click.FloatRange(min=0), default=PRIOR_CLIPS, show_default=True,
              help="With --speaker-norm: shrink a speaker's statistics towards the training speakers' as if these "
                   "had this many recordings, so that a speaker heard a few times is not standardised by noise.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help=f"Default: {SHIPPED_PATH}, or {SPEAKER_NORM_PATH} with --speaker-norm.")
@data_dir_option
def ship(model_dir, n_layers, quantize, augment_copies, speaker_norm, prior_clips, output, data_dir):
    """Build the shipped Whisper model: the first LAYERS encoder layers, a probe fit on the actor split's training part.

    Every clip goes through the model's own encoder (serkeras features, int8
    weights where asked), so the classifier is fit on what the saved model
    computes. The same embeddings score the recipe on the 5 k-fold folds and
    on the random split (the study's protocol).
    """
    from serkeras.cache import model_features
    from serkeras.corpus import load_crema_d
    from serkeras.errors import SerkerasError
    from serkeras.evaluation import predict_features
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_whisper, configure, speaker_stages
    from serkeras.models.blocks import embedding_model
    from serkeras.models.saving import quantize_dense
    from serkeras.splits import make_split
    from serkeras.system import describe_machine
    from serkeras.models.whisper import cached_checkpoint

    if not (Path(model_dir) / "model.bin").exists():
        raise SerkerasError(f"{model_dir} is not a CTranslate2 model folder (no model.bin)")
    available = cached_checkpoint(model_dir).sizes.n_layers
    corpus = load_crema_d(data_dir)
    output = output or str(SPEAKER_NORM_PATH if speaker_norm else SHIPPED_PATH)
    feature_config, model_config = configure(
        FeatureConfig(),
        ModelConfig(arch="whisper", encoder=str(model_dir), encoder_layers=n_layers, pooling="stats", dropout=0.0,
                    speaker_standardization=speaker_norm, speaker_prior_clips=prior_clips if speaker_norm else 0.0))
    model = build_whisper(feature_config, model_config, corpus.labels)
    quantize_dense(model, quantize)  # the classifier is fit afterwards, in float32
    seconds = {"features": time.perf_counter()}
    kept, versions = model_features(corpus.clips, feature_config, copies=augment_copies)
    seconds["encoder"] = time.perf_counter()
    embedder = embedding_model(model)
    click.echo(f"embedding {len(kept)} clips and {augment_copies} augmented copies of each "
               f"with {n_layers} encoder layers")
    embeddings, *copies = [dict(zip((c.name for c in kept), predict_features(embedder, version, "variable")))
                           for version in versions]
    seconds["probes"] = time.perf_counter()

    def scored_split(kind, fold=0):
        split = make_split(corpus.clips, kind, fold=fold, n_folds=N_FOLDS, seed=0)
        return fitted_probe_split(embeddings, split, corpus.labels, speaker_norm, train_copies=copies,
                                  prior_clips=model_config.speaker_prior_clips)

    probe, actor, standardization = scored_split("actor")  # the shipped classifier, and its scores
    seconds["end"] = time.perf_counter()
    stages = list(seconds)
    seconds = {stage: round(seconds[after] - seconds[stage], 1) for stage, after in zip(stages, stages[1:])}
    head = speaker_stages(model)[1] if speaker_norm else model
    head.get_layer("probabilities").set_weights(head_weights(probe))
    if standardization is not None:
        head.get_layer("speaker_standardization").set_weights(standardization.get_weights())
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    model.save(output)
    click.echo(f"saved {output} ({Path(output).stat().st_size / 2**20:.1f} MiB, C={actor['C']:g}, "
               f"val {100 * actor['val_accuracy']:.1f}%, test {100 * actor['test_accuracy']:.1f}%; "
               + ", ".join(f"{stage} {t:.0f} s" for stage, t in seconds.items()) + ")")
    digest = hashlib.sha256((Path(model_dir) / "model.bin").read_bytes()).hexdigest()
    name = (f"shipped recipe: {Path(model_dir).name} layers 1-{n_layers}, {quantize}, serkeras features"
            + (f", {augment_copies} augmented copies" if augment_copies else "")
            + (f", speaker-standardised embedding (prior {prior_clips:g} clips)" if speaker_norm else ""))
    recipe = {"output": str(output), "model_dir": Path(model_dir).name, "sha256": digest, "layers": n_layers,
              "of_layers": available, "quantize": quantize, "augment_copies": augment_copies,
              "speaker_norm": speaker_norm, **({"prior_clips": prior_clips} if speaker_norm else {}),
              "clips": len(kept), "seconds": seconds}
    folds = {"actor": [actor], "kfold": [scored_split("kfold", k)[1] for k in range(N_FOLDS)],
             "random": [scored_split("random")[1]]}
    rows = [{"embeddings": name, "speaker_zscore": speaker_norm, "split": kind, "machine": describe_machine(),
             "folds": folds[kind], "recipe": recipe} for kind in ("actor", "kfold", "random") if folds[kind]]
    for row in rows:
        click.echo(f"{row['split']}: " + ", ".join(f"{f['test_accuracy']:.3f}" for f in row["folds"]))
    log_path = RESULTS_DIR / "pretrained_probe.jsonl"
    with open(log_path, "a") as log:
        for row in rows:
            log.write(json.dumps(row) + "\n")
    write_report(RESULTS_DIR / "pretrained_probe.md", latest_rows(log_path))
    write_card(output, data_dir)


@cli.command()
@click.option("--output", type=click.Path(dir_okay=False), default=str(SHIPPED_PATH), show_default=True,
              help=f"The model `ship` wrote (such as {SPEAKER_NORM_PATH}).")
@data_dir_option
def card(output, data_dir):
    """Rewrite the card of the Whisper model that `ship` wrote, from the model and the rows `ship` logged."""
    write_card(output, data_dir)


def write_card(output, data_dir):
    """Write MODEL_CARD-<suffix>.md beside `output` from the newest rows that `ship` logged for it."""
    from serkeras.errors import SerkerasError

    log_path = RESULTS_DIR / "pretrained_probe.jsonl"
    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    rows = {row["split"]: row for row in rows if row.get("recipe", {}).get("output") == str(output)}
    if "actor" not in rows or not Path(output).is_file():
        raise SerkerasError(f"no model {output} logged by `ship` in {log_path}; run ship first")
    recipe = rows["actor"]["recipe"]
    speaker_norm = recipe.get("speaker_norm", False)
    default_output = SPEAKER_NORM_PATH if speaker_norm else SHIPPED_PATH
    command = " ".join(["python experiments/pretrained_probe.py ship", f"PATH/{recipe['model_dir']}",
                        f"--layers {recipe['layers']}",
                        *([f"--quantize {recipe['quantize']}"] if recipe["quantize"] != "int8" else []),
                        *([f"--augment-copies {recipe['augment_copies']}"] if recipe.get("augment_copies") else []),
                        *(["--speaker-norm"] if speaker_norm else []),
                        *([f"--prior-clips {recipe['prior_clips']:g}"]
                          if speaker_norm and recipe["prior_clips"] != PRIOR_CLIPS else []),
                        *([f"--output {output}"] if str(output) != str(default_output) else [])])
    provenance = (f"OpenAI's Whisper (MIT licence), converted to CTranslate2's format (the `{recipe['model_dir']}` "
                  f"folder of faster-whisper; its `model.bin` has sha256 `{recipe['sha256'][:16]}...`), read by "
                  "`serkeras.models.whisper`.")
    seconds = recipe["seconds"]
    train_line = (f"Time (wall-clock): features {seconds['features']:.0f} s (from serkeras' feature cache where "
                  f"present), the encoder over all {recipe['clips']} clips {seconds['encoder'] / 60:.1f} min, "
                  f"{len(C_GRID)} probes {seconds['probes']:.0f} s, on: {'; '.join(rows['actor']['machine'])}.")
    layer_note = (f"Layers kept: {recipe['layers']} of {recipe['of_layers']}, chosen with the per-layer probes of "
                  "the lab notebook, `experiments/README.md`, which also compares the Keras port with CTranslate2.")
    card_path = Path(output).parent / f"MODEL_CARD-{Path(output).stem.removeprefix('serkeras-crema-d-')}.md"
    copies = recipe.get("augment_copies", 0)
    augmented = (f"The classifier was also fit on {copies} augmented cop{'y' if copies == 1 else 'ies'} of each "
                 "training clip (speed, shift, gain and noise as above)." if copies else
                 "Nothing in this recipe saw augmented audio.")
    report = write_whisper_card(output, card_path, data_dir, command, provenance, train_line,
                                [rows["kfold"]] if "kfold" in rows else [], layer_note, augmented, rows.get("random"))
    click.echo(f"wrote {card_path}: test actors {100 * report['accuracy']:.1f}%, macro-F1 {report['macro_f1']:.3f}")


def write_whisper_card(model_path, card_path, data_dir, command, provenance, train_line, kfold_rows, layer_note,
                       augmented, random_row=None):
    """Write the card of the Whisper model at `model_path` from its predictions on the actor split's test actors.

    `provenance`: a sentence on where the encoder weights came from; `train_line`: the cost of the recipe;
    `kfold_rows`: the recipe's k-fold row as logged by `ship` (none: not scored); `layer_note`: how the layer
    count was chosen; `augmented`: a sentence on what augmented audio the recipe saw; `random_row`: the
    recipe's row on the random split, as logged by `ship` (None: not scored).
    """
    from model_card import (degraded_lines, human_lines, limitation_lines, part_probabilities, per_fold_summary,
                            results_lines, score_test_actors)

    from serkeras.corpus import load_crema_d
    from serkeras.export import quantized_layers
    from serkeras.models import load_model
    from serkeras.models.cost import flops_per_clip
    from serkeras.splits import make_split

    model, meta = load_model(model_path)
    corpus = load_crema_d(data_dir)
    split = make_split(corpus.clips, "actor", seed=0)
    scored = score_test_actors(corpus, split, list(meta.labels), part_probabilities(model, meta, list(split.test)))
    n_actors, mc, fc = scored["n_actors"], meta.model_config, meta.feature_config
    name = Path(model_path).stem
    folds = {k: {"accuracy": f["test_accuracy"], "macro_f1": f["test_macro_f1"]}
             for row in kfold_rows for k, f in enumerate(row["folds"])}
    by_speaker = mc.speaker_standardization
    if name == SHIPPED_MODELS[0]:
        use = "serkeras predict my_recording.wav        # uses this model when --model is not given"
    elif by_speaker:
        use = (f"serkeras predict --model {name} recordings_of_one_speaker/   # several recordings per speaker "
               "(below)")
    else:
        use = f"serkeras predict --model {name} my_recording.wav"
    lines = [
        f"# Model card: `{name}.keras`", "",
        "Speech emotion recognition for six acted emotions (anger, disgust, fear, happy, neutral, sad) from 16 kHz "
        "speech, " + ("from several recordings of each speaker (it standardises a clip by its speaker's other "
                      "recordings; with one or two it still works, less well: below)" if by_speaker else
                      "on one recording at a time")
        + f". Written by `{command}`; every number below is computed from the model file and the corpus.", "",
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
           "speaker heard a few times is not standardised by noise: `SpeakerStandardization`)," if by_speaker else "")
        + f" and one softmax layer (a logistic regression). {model.count_params():,} parameters, "
        f"{Path(model_path).stat().st_size / 2**20:.1f} MiB on disk"
        f"{' (feed-forward weights int8)' if quantized_layers(model) else ''}, "
        f"{flops_per_clip(model, fc) / 1e6:,.0f} MFLOPs per 2.5 s clip (forward pass).", "",
        f"- Encoder weights: {provenance}",
        f"- {layer_note}",
        f"- Features (stored in the file): Whisper's log-mel, {fc.n_mels} bands from {fc.fmin:g} to {fc.fmax:g} Hz, "
        f"{1000 * fc.win_length / fc.sample_rate:.0f} ms windows every {1000 * fc.hop_length / fc.sample_rate:.0f} ms, "
        "the level as recorded (no peak normalisation), scaled inside the model as Whisper expects.", "",
        "## Training", "",
        f"- Command: `{command}`. It runs the kept encoder layers over every clip, fits the logistic regression "
        "(its strength chosen on the validation actors) on the training actors' pooled outputs"
        + (" standardised by speaker (each training actor's statistics over their training clips; the training "
           "actors' mean statistics are the population's)" if by_speaker else "")
        + ", and writes the fitted standardisation and weights into the softmax layer. No gradient training.",
        f"- Data: CREMA-D, its 73 development actors (the 18 held-back actors were "
        f"never used). Split `actor`, seed 0 ({split.description}): train {len(split.train)} clips of "
        f"{n_actors['train']} actors, validation {len(split.val)} clips of {n_actors['val']} actors, test "
        f"{len(split.test)} clips of {n_actors['test']} actors (below). No actor is in two parts.",
        f"- {train_line}",
    ]
    lines += results_lines(scored)
    lines += degraded_lines(model, meta, scored, augmented)
    if by_speaker:
        from speaker_means import speaker_mean_table

        lines += ["", "### Speaker statistics: give several recordings of each speaker", "",
                  "Above, each test clip was standardised with the statistics of all of its speaker's test clips "
                  "(about 80 per actor, all six emotions). `serkeras predict` groups files by speaker with "
                  "`--speaker` (default `auto`: CREMA-D file names give their actor, other files are grouped by "
                  "folder), so put each speaker's recordings in one folder. Accuracy on the same actors when each "
                  "speaker's statistics come from:", "", *speaker_mean_table(model, meta, corpus, split)]
    if random_row:
        f = random_row["folds"][0]
        lines += ["", "## The study's protocol: a random split", "",
                  "The same recipe with its classifier fit on the training clips of the `random` split (clips "
                  "shuffled over all 73 development actors, seed 0, so the test actors were also heard in training"
                  + ("; each speaker's statistics come from all of their clips, as `serkeras evaluate "
                     "--speaker-stats corpus` does" if by_speaker else "")
                  + f"): accuracy **{100 * f['test_accuracy']:.1f}%**, macro-F1 {f['test_macro_f1']:.3f} on "
                  f"{f['test_clips']} test clips (the study's best: 64.1%). This file's classifier was fit on the "
                  "`actor` split, whose training clips include most of `random`'s test clips, so it cannot be "
                  "scored there itself."]
    lines += ["", "## Other unseen actors: 5-fold cross-validation", "",
              "The same recipe on each fold: the probe fit on ~52 actors' clips (strength chosen on the fold's "
              "validation actors), tested on the 14-15 others, so every development actor is tested once by a "
              f"probe that never heard them. {per_fold_summary(folds, len(folds), bold=True)}." if folds else
              "Not scored in the run that wrote this card."]
    lines += human_lines(scored) + limitation_lines(scored)[:-1] + [
        "- `serkeras predict` cuts recordings longer than 4 s into overlapping 4 s windows and averages them, as "
        "for every variable-length model; Whisper itself was trained on windows of up to 30 s.", ""]
    Path(card_path).write_text("\n".join(lines))
    return scored["report"]


def latest_rows(log_path):
    """The newest row of each (embeddings, speaker z-norm, split) in the log, in first-seen order."""
    latest = {}
    for line in Path(log_path).read_text().splitlines():
        row = json.loads(line)
        latest[(row["embeddings"], row["speaker_zscore"], row["split"])] = row
    return list(latest.values())


def report_cells(row):
    """'test acc %' and 'macro-F1' cells: ± the 95% interval for one split, ± std over folds for kfold."""
    folds = row["folds"]
    if len(folds) == 1:
        f = folds[0]
        ci = accuracy_interval(f["test_accuracy"], f["test_clips"])
        return f"{100 * f['test_accuracy']:.1f} ± {100 * ci:.1f}", f"{f['test_macro_f1']:.3f}"
    acc, acc_std = mean_std([f["test_accuracy"] for f in folds])
    f1, f1_std = mean_std([f["test_macro_f1"] for f in folds])
    return f"{100 * acc:.1f} ± {100 * acc_std:.1f}", f"{f1:.3f} ± {f1_std:.3f}"


#: Layers of the Whisper encoder whose last layer `embed --engine ctranslate2` pools (Whisper base).
BASE_LAYERS = 6


def encoder_layers(row):
    """How many Whisper encoder layers a logged row's embeddings pass through (None if its name does not say)."""
    if "recipe" in row:
        return row["recipe"]["layers"]
    depths = [int(name.rsplit("-layer", 1)[1]) if "-layer" in name else BASE_LAYERS if name == "whisper-base" else None
              for name in row["embeddings"].split(",")[0].split("+")]  # "NAME+NAME[, what the probe did]"
    return None if None in depths else max(depths)


@functools.lru_cache(maxsize=None)
def encoder_cost(n_layers, dim=512, heads=8, n_mels=80, n_classes=6):
    """(parameters, MFLOPs per 2.5 s clip) of Whisper's first `n_layers` encoder layers, pooled, with a softmax
    layer, as `build_whisper` makes them (Whisper base's sizes by default; float32: int8 weights cost the same)."""
    from serkeras.models import ModelConfig, build_whisper
    from serkeras.models.cost import flops_per_clip
    from serkeras.models.whisper import whisper_feature_config

    config = whisper_feature_config(n_mels)
    model = build_whisper(config, ModelConfig(arch="whisper", encoder_layers=n_layers, encoder_dim=dim,
                                              attention_heads=heads, pooling="stats"),
                          [str(i) for i in range(n_classes)])
    return model.count_params(), flops_per_clip(model, config) / 1e6


def cost_rows(log_path):
    """Rows of experiments/results/accuracy.md's table of probes: every row `score` and `ship` logged in
    `log_path` (the newest of each), with the encoder's size and cost and, where logged, the recipe's time."""
    rows = []
    for row in latest_rows(log_path) if Path(log_path).is_file() else []:
        acc, f1 = report_cells(row)
        n_layers = encoder_layers(row)
        params, mflops = encoder_cost(n_layers) if n_layers else (None, None)
        seconds = sum(row.get("recipe", {}).get("seconds", {}).values())
        needs = "several recordings per speaker" if row["speaker_zscore"] else "one recording"
        rows.append([row["embeddings"], needs, row["split"], acc, f1, str(n_layers or ""),
                     f"{params / 1e6:.1f} M" if params else "", f"{mflops:,.0f}" if mflops else "",
                     f"{seconds / 60:.1f}" if seconds else "", row["machine"][0].removeprefix("machine: ")])
    return rows


def write_report(path, rows):
    machines = list(dict.fromkeys(line for row in rows for line in row["machine"]))
    lines = ["# A linear probe on a frozen Whisper encoder", "",
             "Written by `python experiments/pretrained_probe.py score NAME` (see its docstring). Splits as in "
             "[accuracy.md](accuracy.md), seed 0; `kfold`: mean ± sample std over the 5 folds, otherwise ± the "
             "95% interval over the test clips. Validation accuracy (mean over folds) chose C.", "",
             *[f"Machine: {line}" for line in machines], "",
             f"Speaker-standardised rows since session 27 also give the test accuracy with each speaker's "
             f"statistics from each clip alone, and from {FEW_CLIPS} of the speaker's test clips drawn at random "
             "(mean over folds).", "",
             f"| embeddings | needs | split | test acc % | macro-F1 | val acc % | C | clip alone / {FEW_CLIPS} clips |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        acc, f1 = report_cells(row)
        val = 100 * np.mean([f["val_accuracy"] for f in row["folds"]])
        cs = "/".join(sorted({f"{f['C']:g}" for f in row["folds"]}))
        needs = "several recordings per speaker (speaker z-norm)" if row["speaker_zscore"] else "one recording"
        few = ""
        if "test_accuracy_clip_alone" in row["folds"][0]:
            few = " / ".join(f"{100 * np.mean([f[key] for f in row['folds']]):.1f}"
                             for key in ("test_accuracy_clip_alone", f"test_accuracy_{FEW_CLIPS}_clips"))
        lines.append(f"| {row['embeddings']} | {needs} | {row['split']} | {acc} | {f1} | {val:.1f} | {cs} | {few} |")
    Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli()
