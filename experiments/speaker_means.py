"""How much a speaker-normalised model needs from each speaker: its accuracy when each speaker's mean
comes from fewer clips, or from clips of one emotion only.

    python experiments/speaker_means.py saved_models/accuracy/resnet-speaker-norm-actor/model.keras \
        --data-dir ../shared/data/crema-d/audio

On the `actor` split (seed 0), every validation and test clip is normalised with a mean taken,
per speaker, from: all of the speaker's clips in the part (as `serkeras evaluate` does); N clips
drawn at random (mean over 3 draws); the speaker's neutral or angry clips only; or the clip
alone (`serkeras predict --speaker file`). Prints a markdown table.
"""

import click
import numpy as np

#: Random subset sizes, and how many draws of each are averaged.
SUBSET_SIZES = (2, 3, 6, 12, 24)
DRAWS = 3


def accuracy_with_means(model, meta, clips, features, labels, chosen):
    """Accuracy when each clip loses the mean of the clips `chosen(indices of its speaker)` picks."""
    from serkeras.evaluation import predict_features
    from serkeras.features import compute_stats, normalize_by_speaker

    config = meta.feature_config
    stats = {}
    for speaker in sorted({c.speaker for c in clips}):  # a fixed order: the random draws are reproducible
        picked = chosen([i for i, c in enumerate(clips) if c.speaker == speaker])
        stats[speaker] = compute_stats([features[i] for i in picked])
    normalised = normalize_by_speaker(features, [c.speaker for c in clips], stats, config.speaker_scale)
    predicted = predict_features(model, normalised, config.length_mode, config.fixed_frames).argmax(axis=1)
    return float(np.mean(predicted == labels))


def speaker_mean_rows(model, meta, clips, labels, features, rng):
    """{where each speaker's mean comes from: accuracy} of a --speaker-norm `model` on `clips`.

    `features`: the clips' un-normalised features; `rng`: a numpy Generator for the random subsets.
    """
    from serkeras.evaluation import predict_features
    from serkeras.features import normalize_by_speaker

    def score(chosen):
        return accuracy_with_means(model, meta, clips, features, labels, chosen)

    rows = {"all of the speaker's clips (`serkeras evaluate`)": score(lambda idx: idx)}
    fewest = min(sum(c.speaker == s for c in clips) for s in {c.speaker for c in clips})
    for n in (n for n in SUBSET_SIZES if n < fewest):  # a subset of every speaker, never all of one
        rows[f"{n} of the speaker's clips, at random (mean of {DRAWS} draws)"] = float(np.mean(
            [score(lambda idx: rng.choice(idx, n, replace=False)) for _ in range(DRAWS)]))
    for emotion in ("neutral", "anger"):
        rows[f"the speaker's {emotion} clips only"] = score(lambda idx: [i for i in idx if clips[i].label == emotion])
    alone = normalize_by_speaker(features, [c.path for c in clips], scale=meta.feature_config.speaker_scale)
    rows["the clip alone (`serkeras predict --speaker file`)"] = float(np.mean(predict_features(
        model, alone, meta.feature_config.length_mode, meta.feature_config.fixed_frames).argmax(axis=1) == labels))
    return rows


def speaker_mean_table(model, meta, corpus, split, seed=0):
    """Markdown table of `speaker_mean_rows` on the validation and test parts of `split`."""
    from serkeras.cache import cached_features

    rng = np.random.default_rng(seed)
    found = {}
    for part in ("val", "test"):
        clips = list(split.parts()[part])
        features = cached_features(clips, meta.feature_config, progress=False).all_of(clips)
        rows = speaker_mean_rows(model, meta, clips, np.asarray(corpus.label_indices(clips)), features, rng)
        for name, accuracy in rows.items():
            found.setdefault(name, {})[part] = accuracy
    return ["| speaker statistics from | val acc % | test acc % |", "| --- | --- | --- |",
            *(f"| {name} | {100 * acc['val']:.1f} | {100 * acc['test']:.1f} |" for name, acc in found.items())]


@click.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="CREMA-D audio folder (default $SERKERAS_DATA_DIR or data/Crema).")
def main(model_path, data_dir):
    """Accuracy of a --speaker-norm MODEL with speaker means from fewer or one-emotion clips."""
    from serkeras.corpus import load_corpus
    from serkeras.models import load_model
    from serkeras.splits import make_split

    model, meta = load_model(model_path)
    if not meta.feature_config.speaker_norm:
        raise click.ClickException(f"{model_path} was not trained with --speaker-norm")
    corpus = load_corpus(data_dir, None)
    split = make_split(corpus.clips, "actor", 0.1, 0.1, seed=0)
    click.echo(f"{model_path}, actor split (seed 0): accuracy by where each speaker's mean comes from\n")
    click.echo("\n".join(speaker_mean_table(model, meta, corpus, split)))


if __name__ == "__main__":
    main()
