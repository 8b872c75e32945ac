"""How far a frozen pre-trained speech encoder gets on unseen speakers (the analysis behind the Whisper models).

    python -m experiments.pretrained_probe embed PATH/faster-whisper-base --name whisper-base
    python -m experiments.pretrained_probe embed PATH/faster-whisper-base --name whisper-base-keras --engine keras
    python -m experiments.pretrained_probe score whisper-base-keras-layer2 [MORE ...]
    python -m experiments.pretrained_probe heads PATH/faster-whisper-base

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
rewrites ``experiments/results/pretrained_probe.md``. ``heads`` compares, on
the same cached embeddings, the classifier fitted by L-BFGS with the ones
trained by gradient descent.

The shipped Whisper models are trained by serkeras itself:
``serkeras train --recipe crema-d-whisper --encoder PATH`` (and
``crema-d-whisper-speaker-norm``); their cards are written by
``serkeras card``. ``python -m experiments.accuracy
report`` lists every logged row with its cost (rows logged as "shipped recipe"
came from the script that built them before).
"""

import functools
import json
import time
from pathlib import Path

import click
import numpy as np

from serkeras.options import SerkerasGroup
from serkeras.head_fit import HEAD_C_GRID, fit_logistic_head

from experiments.study import RESULTS_DIR, accuracy_interval, mean_std

EMBEDDINGS_DIR = Path("data") / "cache" / "pretrained"
#: Inverse regularisation strengths tried; the validation part picks one per split (as `--head-fit lbfgs`).
C_GRID = HEAD_C_GRID
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
    """Standardisation + logistic regression, with the C of `c_grid` that scores best on the validation part
    (`serkeras.head_fit.fit_logistic_head`, what ``serkeras train --head-fit lbfgs`` fits).

    Returns
    -------
    (fitted `serkeras.head_fit.LogisticHead`, C, validation accuracy)
    """
    head = fit_logistic_head(x_train, y_train, x_val, y_val, c_grid)
    return head, head.c, head.val_accuracy


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
    (the fitted `serkeras.head_fit.LogisticHead`, dict with the chosen ``C``, ``val_accuracy``, ``test_accuracy``,
    ``test_macro_f1`` and ``test_clips``, the `SpeakerStandardization` layer with its population weights set
    (None without `speaker_scale`))
    """
    from sklearn.metrics import accuracy_score, f1_score

    from serkeras.speakers import embedding_speaker_stats, population_stats, speaker_input_arrays
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
    predicted = probe.probabilities(x_test).argmax(axis=1)
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
    from serkeras.speakers import embedding_speaker_stats, embedding_stats, speaker_input_arrays

    def accuracy(keys, stats):
        standardized = np.asarray(standardization(x, *speaker_input_arrays(keys, stats)))
        return float(np.mean(probe.probabilities(standardized).argmax(axis=1) == y))

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
                   "speakers' as `--speaker-prior-clips` does (0: both probes, a plain z-score per speaker).")
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


@cli.command()
@click.argument("encoder", type=click.Path(exists=True))
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="The feature cache (frozen layers' outputs are cached there too).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True,
              help="Epochs of the gradient-trained heads (early stopping on validation accuracy, patience 8).")
@data_dir_option
def heads(encoder, cache_dir, epochs, data_dir):
    """Why `--head-fit lbfgs` beats the gradient-trained head: both on the same cached embeddings of the frozen
    first two layers of ENCODER (mean and std pooled), `actor` split, seed 0, no augmented copies.

    Rows: the L-BFGS logistic regression (`serkeras.head_fit`, C chosen on the validation actors); the
    gradient recipe of `crema-d-whisper-base` (batch normalisation, dropout 0.3, Adam 1e-3, batch 32,
    learning rate halved on plateaus), with batches drawn from all clips and with batches of clips of similar
    length (as `serkeras train` makes them); the same without dropout; and Adam on the L-BFGS objective
    itself (inputs standardised as the probe, no dropout, the L2 penalty of the chosen C: 1 / (2 C n) per
    weight).
    """
    import keras

    from serkeras.corpus import load_crema_d
    from serkeras.features import FeatureConfig
    from serkeras.head_fit import fit_logistic_head, pooled_embeddings
    from serkeras.models import ModelConfig, build_model, configure, embedding_stages
    from serkeras.splits import make_split
    from serkeras.system import describe_machine
    from serkeras.training import TrainConfig, compile_model, prepare_split

    corpus = load_crema_d(data_dir)
    split = make_split(corpus.clips, "actor", seed=0)
    feature_config, model_config = configure(FeatureConfig(), ModelConfig(arch="whisper", encoder=str(encoder),
                                                                          pooling="stats", dropout=0.0))
    data = prepare_split(corpus, split, feature_config, cache_dir, progress=False)
    front, pool = embedding_stages(build_model(feature_config, model_config, corpus.labels))
    x = {part: pooled_embeddings(front, pool, data.parts[part][1], cache_dir) for part in data.parts}
    y = {part: np.asarray(data.parts[part][2]) for part in data.parts}
    n_classes = len(corpus.labels)
    rows = []

    def scores(name, probabilities, seconds):
        from serkeras.evaluation import classification_report

        report = {part: classification_report(y[part], probabilities(x[part]).argmax(axis=1), corpus.labels)
                  for part in ("val", "test")}
        rows.append((name, 100 * report["val"]["accuracy"], 100 * report["test"]["accuracy"],
                     100 * report["test"]["unweighted_average_recall"], seconds))
        click.echo(f"{name}: val {rows[-1][1]:.1f}, test {rows[-1][2]:.1f} (UA {rows[-1][3]:.1f}), {seconds:.0f} s")

    start = time.perf_counter()
    head = fit_logistic_head(x["train"], y["train"], x["val"], y["val"], n_classes=n_classes)
    scores(f"L-BFGS logistic regression (C={head.c:g} of {', '.join(f'{c:g}' for c in C_GRID)})",
           head.probabilities, time.perf_counter() - start)

    lengths = np.array([len(f["logmel"]) for f in data.parts["train"][1]], np.int32)

    def batches(one_hot, bucketed):
        """Shuffled training batches of 32: drawn from all clips, or, as `serkeras.pipeline.make_dataset` does
        for variable-length clips, from buckets of clips of similar length."""
        import tensorflow as tf

        from serkeras.pipeline import bucket_boundaries, bucketed_batches

        ds = tf.data.Dataset.from_tensor_slices(((x["train"], lengths), one_hot))
        ds = ds.shuffle(len(lengths), seed=0, reshuffle_each_iteration=True)
        if not bucketed:
            return ds.batch(32).map(lambda xl, y: (xl[0], y))
        boundaries = bucket_boundaries(lengths, 32)
        ds = ds.bucket_by_sequence_length(lambda xl, y: xl[1], bucket_boundaries=boundaries,
                                          bucket_batch_sizes=[32] * (len(boundaries) + 1))
        # Keras needs the epoch's length, which bucketing hides (as serkeras.pipeline asserts it).
        ds = ds.apply(tf.data.experimental.assert_cardinality(bucketed_batches(lengths, boundaries, 32)))
        return ds.map(lambda xl, y: (xl[0], y))

    def gradient(name, dropout, standardized=False, l2=0.0, bucketed=False):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((x["train"].shape[1],))
        h = inputs
        if standardized:
            h = keras.layers.Normalization(mean=head.mean, variance=head.scale ** 2)(h)
        else:
            h = keras.layers.BatchNormalization()(h)
        if dropout:
            h = keras.layers.Dropout(dropout)(h)
        regularizer = keras.regularizers.L2(l2) if l2 else None
        outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer)(h)
        model = keras.Model(inputs, outputs)
        compile_model(model, TrainConfig(epochs=epochs), int(np.ceil(len(y["train"]) / 32)))
        one_hot = {part: np.eye(n_classes, dtype="float32")[y[part]] for part in ("train", "val")}
        start = time.perf_counter()
        model.fit(batches(one_hot["train"], bucketed), epochs=epochs, verbose=0,
                  validation_data=(x["val"], one_hot["val"]),
                  callbacks=[keras.callbacks.EarlyStopping("val_accuracy", mode="max", patience=8,
                                                           restore_best_weights=True),
                             keras.callbacks.ReduceLROnPlateau("val_accuracy", mode="max", factor=0.5, patience=2)])
        scores(name, lambda v: np.asarray(model.predict(v, verbose=0)), time.perf_counter() - start)

    gradient("gradient: batch normalisation, dropout 0.3, Adam (the crema-d-whisper-base recipe), batches drawn "
             "from all clips", 0.3)
    gradient("the same, batches from clips of similar length (as `serkeras train` batches variable-length clips)",
             0.3, bucketed=True)
    gradient("gradient: batch normalisation, no dropout, Adam", 0.0)
    gradient(f"gradient: the L-BFGS objective (standardised, L2 of C={head.c:g}), Adam", 0.0, standardized=True,
             l2=1.0 / (2 * head.c * len(y["train"])))
    lines = [f"`python -m experiments.pretrained_probe heads ENCODER` ({', '.join(describe_machine())}); "
             f"train {len(y['train'])}, validation {len(y['val'])}, test {len(y['test'])} clips.", "",
             "| head | val acc % | test acc % | test UA % | fit s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {val:.1f} | {test:.1f} | {ua:.1f} | {seconds:.0f} |" for name, val, test, ua, seconds in rows]
    click.echo("\n".join(lines))


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
    """Rows of experiments/results/accuracy.md's table of probes: every row `score` (and the former `ship`) logged in
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
             "Written by `python -m experiments.pretrained_probe score NAME` (see its docstring). Splits as in "
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
