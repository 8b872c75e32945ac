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
and writes the model card (``card`` rewrites the card alone).
"""

import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np

from serkeras.cli import SHIPPED_MODELS, SerkerasGroup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import RESULTS_DIR, accuracy_interval, mean_std  # noqa: E402

EMBEDDINGS_DIR = Path("data") / "cache" / "pretrained"
#: Inverse regularisation strengths tried; the validation part picks one per split.
C_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
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


def probe_split(embeddings, split, labels, speaker_scale, c_grid=C_GRID, train_copies=()):
    """The scores of `fitted_probe_split` (without the fitted probe)."""
    return fitted_probe_split(embeddings, split, labels, speaker_scale, c_grid, train_copies)[1]


def fitted_probe_split(embeddings, split, labels, speaker_scale, c_grid=C_GRID, train_copies=()):
    """Fit a logistic-regression probe on `split.train`, pick its C on `split.val`, score `split.test`.

    With `speaker_scale`, each clip's embedding is z-normalised by its speaker's
    mean and standard deviation: over the speaker's clips in the training part
    for training clips, over all of the speaker's clips in `split` for the others
    (the same thing on speaker-disjoint splits; on ``random``, what ``serkeras
    evaluate --speaker-stats corpus`` does).

    `train_copies`: embeddings of augmented copies of the clips ({clip: embedding} each), added to the
    training part only (without speaker z-normalisation).

    Returns
    -------
    (the fitted sklearn Pipeline, dict with the chosen ``C``, ``val_accuracy``, ``test_accuracy``,
    ``test_macro_f1`` and ``test_clips``)
    """
    from sklearn.metrics import accuracy_score, f1_score

    from serkeras.features import normalize_by_speaker, speaker_stats

    index = {name: i for i, name in enumerate(labels)}
    parts = {name: [c for c in clips if c.name in embeddings] for name, clips in split.parts().items()}

    if train_copies and speaker_scale:
        raise ValueError("augmented copies are not speaker-normalised here")

    def as_features(clips, source=embeddings):
        return [{"embedding": source[c.name][None, :]} for c in clips]

    def stats_of(clips):
        return speaker_stats(as_features(clips), [c.speaker for c in clips]) if speaker_scale else None

    def features(clips, stats, source=embeddings):
        x = as_features(clips, source)
        if speaker_scale:
            x = normalize_by_speaker(x, [c.speaker for c in clips], stats, scale=True)
        return np.concatenate([f["embedding"] for f in x]), np.array([index[c.label] for c in clips])

    every_stats = stats_of(parts["train"] + parts["val"] + parts["test"])
    x_train, y_train = features(parts["train"], stats_of(parts["train"]))
    for copies in train_copies:
        x_copy, y_copy = features(parts["train"], None, copies)
        x_train, y_train = np.concatenate([x_train, x_copy]), np.concatenate([y_train, y_copy])
    x_val, y_val = features(parts["val"], every_stats)
    x_test, y_test = features(parts["test"], every_stats)
    probe, c, val_accuracy = fit_probe(x_train, y_train, x_val, y_val, c_grid)
    predicted = probe.predict(x_test)
    return probe, {"C": c, "val_accuracy": float(val_accuracy), "test_accuracy": float(accuracy_score(y_test, predicted)),
                   "test_macro_f1": float(f1_score(y_test, predicted, average="macro")), "test_clips": len(y_test)}


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
    from whisper_keras import load_whisper_encoder

    model = load_whisper_encoder(model_dir)

    def encode(mel):
        return [np.asarray(frames)[0] for frames in model(mel.T[None])]

    return [f"-layer{i + 1}" for i in range(len(model.outputs))], model.input_shape[-1], encode


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Name of the embeddings file under data/cache/pretrained/.")
@click.option("--engine", type=click.Choice(["ctranslate2", "keras"]), default="ctranslate2", show_default=True,
              help="ctranslate2 pools the last layer into NAME.npz; keras (experiments/whisper_keras.py) pools "
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
@data_dir_option
def score(names, data_dir):
    """Probe the embeddings NAMES (several are concatenated) on the actor, kfold and random splits.

    Adds rows to results/pretrained_probe.jsonl and rewrites results/pretrained_probe.md.
    """
    from serkeras.corpus import load_crema_d
    from serkeras.splits import make_split
    from serkeras.system import describe_machine

    embeddings, name = joined_embeddings(names), "+".join(names)
    corpus = load_crema_d(data_dir)
    machine = describe_machine()
    rows = []
    for speaker_scale in (False, True):
        for kind in ("actor", "kfold", "random"):
            folds = range(N_FOLDS) if kind == "kfold" else [0]
            results = [probe_split(embeddings, make_split(corpus.clips, kind, fold=k, seed=0), corpus.labels,
                                   speaker_scale) for k in folds]
            rows.append({"embeddings": name, "speaker_zscore": speaker_scale, "split": kind, "folds": results,
                         "machine": machine})
            click.echo(f"{name} {'speaker z-norm' if speaker_scale else 'one clip'} {kind}: "
                       + ", ".join(f"{r['test_accuracy']:.3f}" for r in results))
    log_path = RESULTS_DIR / "pretrained_probe.jsonl"
    with open(log_path, "a") as log:
        for row in rows:
            log.write(json.dumps(row) + "\n")
    write_report(RESULTS_DIR / "pretrained_probe.md", latest_rows(log_path))


#: Whisper's log-mel in serkeras' feature settings: 80 bands from 0 to 8 kHz, 25 ms windows every 10 ms, whole
#: clips at the level they were recorded (Whisper's own scaling, inside the model, replaces peak normalisation).
WHISPER_FEATURES = dict(n_fft=400, win_length=400, hop_length=160, fmin=0.0, fmax=8000.0, audio_normalization="none",
                        length_mode="variable", max_seconds=30.0)
SHIPPED_PATH = Path("saved_models") / "serkeras-crema-d-whisper.keras"


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
@click.option("--output", type=click.Path(dir_okay=False), default=str(SHIPPED_PATH), show_default=True)
@data_dir_option
def ship(model_dir, n_layers, quantize, augment_copies, output, data_dir):
    """Build the shipped Whisper model: the first LAYERS encoder layers, a probe fit on the actor split's training part.

    Every clip goes through the model's own encoder (serkeras features, int8
    weights where asked), so the classifier is fit on what the saved model
    computes. The same embeddings score the recipe on the 5 k-fold folds.
    """
    import keras

    from serkeras.cache import model_features
    from serkeras.corpus import load_crema_d
    from serkeras.errors import SerkerasError
    from serkeras.evaluation import predict_features
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_whisper
    from serkeras.splits import make_split
    from serkeras.system import describe_machine
    from whisper_keras import encoder_sizes, set_whisper_weights

    if not (Path(model_dir) / "model.bin").exists():
        raise SerkerasError(f"{model_dir} is not a CTranslate2 model folder (no model.bin)")
    variables, n_mels, dim, heads, available = encoder_sizes(model_dir)
    if n_layers > available:
        raise SerkerasError(f"--layers {n_layers}: the encoder in {model_dir} has {available}")
    corpus = load_crema_d(data_dir)
    feature_config = FeatureConfig(n_mels=n_mels, **WHISPER_FEATURES)
    model_config = ModelConfig(arch="whisper", encoder_layers=n_layers, encoder_dim=dim, attention_heads=heads,
                               dropout=0.0)
    model = build_whisper(feature_config, model_config, corpus.labels)
    set_whisper_weights(model, variables)
    if quantize != "none":
        # Feed-forward Dense layers only: Keras cannot reload a quantized MultiHeadAttention (3.15), and the
        # classifier is fit afterwards in float32.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # one per layer without weights to quantize
            model.quantize(quantize, filters=lambda layer: isinstance(layer, keras.layers.Dense)
                           and layer.name != "probabilities")
    seconds = {"features": time.perf_counter()}
    kept, versions = model_features(corpus.clips, feature_config, copies=augment_copies)
    seconds["encoder"] = time.perf_counter()
    embedder = keras.Model(model.inputs, model.get_layer("pool").output)
    click.echo(f"embedding {len(kept)} clips and {augment_copies} augmented copies of each "
               f"with {n_layers} encoder layers")
    embeddings, *copies = [dict(zip((c.name for c in kept), predict_features(embedder, version, "variable")))
                           for version in versions]
    seconds["probes"] = time.perf_counter()

    def scored_split(kind, fold=0):
        split = make_split(corpus.clips, kind, fold=fold, n_folds=N_FOLDS, seed=0)
        return fitted_probe_split(embeddings, split, corpus.labels, False, train_copies=copies)

    probe, actor = scored_split("actor")  # the shipped classifier, and its scores
    seconds["end"] = time.perf_counter()
    stages = list(seconds)
    seconds = {stage: round(seconds[after] - seconds[stage], 1) for stage, after in zip(stages, stages[1:])}
    model.get_layer("probabilities").set_weights(head_weights(probe))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    model.save(output)
    click.echo(f"saved {output} ({Path(output).stat().st_size / 2**20:.1f} MiB, C={actor['C']:g}, "
               f"val {100 * actor['val_accuracy']:.1f}%, test {100 * actor['test_accuracy']:.1f}%; "
               + ", ".join(f"{stage} {t:.0f} s" for stage, t in seconds.items()) + ")")
    digest = hashlib.sha256((Path(model_dir) / "model.bin").read_bytes()).hexdigest()
    name = (f"shipped recipe: {Path(model_dir).name} layers 1-{n_layers}, {quantize}, serkeras features"
            + (f", {augment_copies} augmented copies" if augment_copies else ""))
    recipe = {"output": str(output), "model_dir": Path(model_dir).name, "sha256": digest, "layers": n_layers,
              "of_layers": available, "quantize": quantize, "augment_copies": augment_copies, "clips": len(kept),
              "seconds": seconds}
    folds = {"actor": [actor], "kfold": [scored_split("kfold", k)[1] for k in range(N_FOLDS)]}
    rows = [{"embeddings": name, "speaker_zscore": False, "split": kind, "machine": describe_machine(),
             "folds": folds[kind], "recipe": recipe} for kind in ("actor", "kfold")[: 2 if N_FOLDS else 1]]
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
              help="The model `ship` wrote.")
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
    command = " ".join(["python experiments/pretrained_probe.py ship", f"PATH/{recipe['model_dir']}",
                        f"--layers {recipe['layers']}",
                        *([f"--quantize {recipe['quantize']}"] if recipe["quantize"] != "int8" else []),
                        *([f"--augment-copies {recipe['augment_copies']}"] if recipe.get("augment_copies") else []),
                        *([f"--output {output}"] if str(output) != str(SHIPPED_PATH) else [])])
    provenance = (f"OpenAI's Whisper (MIT licence), converted to CTranslate2's format (the `{recipe['model_dir']}` "
                  f"folder of faster-whisper; its `model.bin` has sha256 `{recipe['sha256'][:16]}...`), read by "
                  "`experiments/whisper_keras.py`.")
    seconds = recipe["seconds"]
    train_line = (f"Time (wall-clock): features {seconds['features']:.0f} s (from serkeras' feature cache where "
                  f"present), the encoder over all {recipe['clips']} clips {seconds['encoder'] / 60:.1f} min, "
                  f"{len(C_GRID)} probes {seconds['probes']:.0f} s, on: {'; '.join(rows['actor']['machine'])}.")
    layer_note = (f"Layers kept: {recipe['layers']} of {recipe['of_layers']}, chosen with the per-layer probes of "
                  "`experiments/README.md` (finding 29), which also compares the Keras port with CTranslate2.")
    card_path = Path(output).parent / f"MODEL_CARD-{Path(output).stem.removeprefix('serkeras-crema-d-')}.md"
    copies = recipe.get("augment_copies", 0)
    augmented = (f"The classifier was also fit on {copies} augmented cop{'y' if copies == 1 else 'ies'} of each "
                 "training clip (speed, shift, gain and noise as above)." if copies else
                 "Nothing in this recipe saw augmented audio.")
    report = write_whisper_card(output, card_path, data_dir, command, provenance, train_line,
                                [rows["kfold"]] if "kfold" in rows else [], layer_note, augmented)
    click.echo(f"wrote {card_path}: test actors {100 * report['accuracy']:.1f}%, macro-F1 {report['macro_f1']:.3f}")


def write_whisper_card(model_path, card_path, data_dir, command, provenance, train_line, kfold_rows, layer_note,
                       augmented):
    """Write the card of the Whisper model at `model_path` from its predictions on the actor split's test actors.

    `provenance`: a sentence on where the encoder weights came from; `train_line`: the cost of the recipe;
    `kfold_rows`: the recipe's k-fold row as logged by `ship` (none: not scored); `layer_note`: how the layer
    count was chosen; `augmented`: a sentence on what augmented audio the recipe saw.
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
    lines = [
        f"# Model card: `{name}.keras`", "",
        "Speech emotion recognition for six acted emotions (anger, disgust, fear, happy, neutral, sad) from 16 kHz "
        f"speech, on one recording at a time. Written by `{command}`; every number below is computed from the model "
        "file and the corpus.", "",
        "## Use", "", "```",
        ("serkeras predict my_recording.wav        # uses this model when --model is not given"
         if name == SHIPPED_MODELS[0] else f"serkeras predict --model {name} my_recording.wav"),
        f"serkeras evaluate {name} --split actor", "```", "",
        "In Python: `model, meta = serkeras.models.load_model(path)`, then "
        "`serkeras.inference.predict_files(model, meta, paths)`; `meta.labels` and `meta.feature_config` "
        "travel with the file.", "",
        "## Model", "",
        f"The first {mc.encoder_layers} layers of the audio encoder of OpenAI's Whisper (`{mc.encoder_dim}`-wide, "
        f"{mc.attention_heads} attention heads; `serkeras.models.whisper`, plain Keras layers), frozen as "
        "pre-trained, then the mean and standard deviation over time of the last kept layer and one softmax layer "
        f"(a logistic regression). {model.count_params():,} parameters, "
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
        "(its strength chosen on the validation actors) on the training actors' pooled outputs, and writes the "
        "fitted standardisation and weights into the softmax layer. No gradient training.",
        f"- Data: CREMA-D, the 73 development actors in `../shared/data/crema-d/` (the 18 held-back actors were "
        f"never used). Split `actor`, seed 0 ({split.description}): train {len(split.train)} clips of "
        f"{n_actors['train']} actors, validation {len(split.val)} clips of {n_actors['val']} actors, test "
        f"{len(split.test)} clips of {n_actors['test']} actors (below). No actor is in two parts.",
        f"- {train_line}",
    ]
    lines += results_lines(scored)
    lines += degraded_lines(model, meta, scored, augmented)
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


def write_report(path, rows):
    machines = list(dict.fromkeys(line for row in rows for line in row["machine"]))
    lines = ["# A linear probe on a frozen Whisper encoder", "",
             "Written by `python experiments/pretrained_probe.py score NAME` (see its docstring). Splits as in "
             "[accuracy.md](accuracy.md), seed 0; `kfold`: mean ± sample std over the 5 folds, otherwise ± the "
             "95% interval over the test clips. Validation accuracy (mean over folds) chose C.", "",
             *[f"Machine: {line}" for line in machines], "",
             "| embeddings | needs | split | test acc % | macro-F1 | val acc % | C |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        acc, f1 = report_cells(row)
        val = 100 * np.mean([f["val_accuracy"] for f in row["folds"]])
        cs = "/".join(sorted({f"{f['C']:g}" for f in row["folds"]}))
        needs = "several recordings per speaker (speaker z-norm)" if row["speaker_zscore"] else "one recording"
        lines.append(f"| {row['embeddings']} | {needs} | {row['split']} | {acc} | {f1} | {val:.1f} | {cs} |")
    Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli()
