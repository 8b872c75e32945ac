"""How far a frozen pre-trained speech encoder gets on unseen speakers: a linear probe on Whisper's encoder.

    python experiments/pretrained_probe.py embed PATH/faster-whisper-base --name whisper-base
    python experiments/pretrained_probe.py score whisper-base

``embed`` runs the encoder of a Whisper model in CTranslate2's format (the folder
faster-whisper uses, such as ``Systran/faster-whisper-base``; needs ``pip install
ctranslate2``) over every clip, at the clip's own length instead of Whisper's
30 s window, and keeps the mean and standard deviation of its last layer over
time (``data/cache/pretrained/NAME.npz``; an interrupted run resumes). ``score``
fits a logistic regression on the training part of each split (its strength
chosen on the validation part), with and without each speaker's z-normalisation
of the embeddings, and writes ``experiments/results/pretrained_probe.md``.

Nothing here is part of serkeras: the encoder is not a Keras model, and the
weights are not in the repository.
"""

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from serkeras.cli import SerkerasGroup

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


def probe_split(embeddings, split, labels, speaker_scale, c_grid=C_GRID):
    """Fit a logistic-regression probe on `split.train`, pick its C on `split.val`, score `split.test`.

    With `speaker_scale`, each clip's embedding is z-normalised by its speaker's
    mean and standard deviation: over the speaker's clips in the training part
    for training clips, over all of the speaker's clips in `split` for the others
    (the same thing on speaker-disjoint splits; on ``random``, what ``serkeras
    evaluate --speaker-stats corpus`` does).

    Returns
    -------
    dict with the chosen ``C``, ``val_accuracy``, ``test_accuracy``, ``test_macro_f1`` and ``test_clips``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from serkeras.features import normalize_by_speaker, speaker_stats

    index = {name: i for i, name in enumerate(labels)}
    parts = {name: [c for c in clips if c.name in embeddings] for name, clips in split.parts().items()}

    def as_features(clips):
        return [{"embedding": embeddings[c.name][None, :]} for c in clips]

    def stats_of(clips):
        return speaker_stats(as_features(clips), [c.speaker for c in clips]) if speaker_scale else None

    def features(clips, stats):
        x = as_features(clips)
        if speaker_scale:
            x = normalize_by_speaker(x, [c.speaker for c in clips], stats, scale=True)
        return np.concatenate([f["embedding"] for f in x]), np.array([index[c.label] for c in clips])

    every_stats = stats_of(parts["train"] + parts["val"] + parts["test"])
    x_train, y_train = features(parts["train"], stats_of(parts["train"]))
    x_val, y_val = features(parts["val"], every_stats)
    x_test, y_test = features(parts["test"], every_stats)
    best = None
    for c in c_grid:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(x_train, y_train)
        val_accuracy = accuracy_score(y_val, probe.predict(x_val))
        if best is None or val_accuracy > best[0]:
            best = (val_accuracy, c, probe)
    val_accuracy, c, probe = best
    predicted = probe.predict(x_test)
    return {"C": c, "val_accuracy": float(val_accuracy), "test_accuracy": float(accuracy_score(y_test, predicted)),
            "test_macro_f1": float(f1_score(y_test, predicted, average="macro")), "test_clips": len(y_test)}


@click.group(cls=SerkerasGroup)  # user errors as one line, as in the serkeras CLI
def cli():
    """Embed the corpus with a pre-trained Whisper encoder, and probe it on unseen speakers."""


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                               help="CREMA-D audio folder (default $SERKERAS_DATA_DIR or data/Crema).")


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Name of the embeddings file under data/cache/pretrained/.")
@data_dir_option
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
def embed(model_dir, name, data_dir, threads):
    """Pool the last encoder layer of the CTranslate2 Whisper model in MODEL_DIR over every clip."""
    from serkeras.audio import AudioError, load_audio
    from serkeras.corpus import load_crema_d, warn_skipped
    from serkeras.errors import SerkerasError

    try:
        import ctranslate2
    except ImportError:
        raise SerkerasError("embed needs CTranslate2: pip install ctranslate2") from None
    if not (Path(model_dir) / "model.bin").exists():
        raise SerkerasError(f"{model_dir} is not a CTranslate2 model folder (no model.bin)")
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", intra_threads=threads, compute_type="float32")
    path = EMBEDDINGS_DIR / f"{name}.npz"
    embeddings = load_embeddings(path)
    todo = [c for c in load_crema_d(data_dir).clips if c.name not in embeddings]
    click.echo(f"{len(embeddings)} clips already embedded in {path}, {len(todo)} to go")
    skipped, start = [], time.perf_counter()
    try:
        with click.progressbar(todo, label="embedding", show_pos=True, show_eta=True) as bar:
            for i, clip in enumerate(bar, 1):
                try:
                    # Whisper hears the level as recorded: no peak normalisation.
                    wave = load_audio(clip.path, normalize="none", max_seconds=30)
                except AudioError as exc:
                    skipped.append((clip.path, str(exc)))
                    continue
                mel = ctranslate2.StorageView.from_array(whisper_log_mel(wave, model.n_mels)[None])
                embeddings[clip.name] = pooled(np.asarray(model.encode(mel, to_cpu=True))[0])
                if i % SAVE_EVERY == 0:
                    save_embeddings(path, embeddings)
    finally:
        if embeddings:
            save_embeddings(path, embeddings)
    warn_skipped(skipped)
    click.echo(f"{len(embeddings)} clips in {path} ({time.perf_counter() - start:.0f} s for {len(todo)})")


@cli.command()
@click.argument("name")
@data_dir_option
def score(name, data_dir):
    """Probe the embeddings NAME on the actor, kfold and random splits; write results/pretrained_probe.md."""
    from serkeras.corpus import load_crema_d
    from serkeras.errors import SerkerasError
    from serkeras.splits import make_split
    from serkeras.system import describe_machine

    embeddings = load_embeddings(EMBEDDINGS_DIR / f"{name}.npz")
    if not embeddings:
        raise SerkerasError(f"no embeddings named {name!r} in {EMBEDDINGS_DIR}; run embed first")
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
