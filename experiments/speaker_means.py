"""How much a speaker-normalised model needs from each speaker: its accuracy when each speaker's mean
comes from fewer clips, or from clips of one emotion only.

    python -m experiments.speaker_means saved_models/accuracy/resnet-speaker-norm-actor/model.keras \
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


def speaker_mean_rows(model, meta, clips, labels, features, rng):
    """{where each speaker's statistics come from: accuracy} of a speaker-normalised `model` on `clips`.

    `features`: the clips' un-normalised features; `rng`: a numpy Generator for the random subsets.
    A model trained with --speaker-norm takes statistics of features; one that
    standardises its embedding by speaker, statistics of its embeddings.
    """
    from serkeras.evaluation import predict_features, standardized_head_probabilities
    from serkeras.features import compute_stats
    from serkeras.speakers import embedding_stats, normalize_by_speaker
    from serkeras.models import speaker_stages

    config = meta.feature_config
    stages = speaker_stages(model)
    if stages:
        embedder, head = stages
        embeddings = predict_features(embedder, features, config.length_mode, config.fixed_frames)

        def stats_of(indices):
            return embedding_stats(embeddings[list(indices)])

        def predicted(keys, stats):
            return standardized_head_probabilities(head, embeddings, keys, stats).argmax(axis=1)
    else:
        def stats_of(indices):
            return compute_stats([features[i] for i in indices])

        def predicted(keys, stats):
            normalised = normalize_by_speaker(features, keys, stats, config.speaker_scale)
            return predict_features(model, normalised, config.length_mode, config.fixed_frames).argmax(axis=1)

    speakers = [c.speaker for c in clips]

    def score(chosen):
        """Accuracy when each speaker's statistics come from the clips `chosen(indices of its clips)` picks."""
        stats = {speaker: stats_of(chosen([i for i, s in enumerate(speakers) if s == speaker]))
                 for speaker in sorted(set(speakers))}  # a fixed order: the random draws are reproducible
        return float(np.mean(predicted(speakers, stats) == labels))

    rows = {"all of the speaker's clips (`serkeras evaluate`)": score(lambda idx: idx)}
    fewest = min(speakers.count(s) for s in set(speakers))
    for n in (n for n in SUBSET_SIZES if n < fewest):  # a subset of every speaker, never all of one
        rows[f"{n} of the speaker's clips, at random (mean of {DRAWS} draws)"] = float(np.mean(
            [score(lambda idx: rng.choice(idx, n, replace=False)) for _ in range(DRAWS)]))
    for emotion in ("neutral", "anger"):
        rows[f"the speaker's {emotion} clips only"] = score(lambda idx: [i for i in idx if clips[i].label == emotion])
    alone = {c.path: stats_of([i]) for i, c in enumerate(clips)}
    rows["the clip alone (`serkeras predict --speaker file`)"] = float(np.mean(
        predicted([c.path for c in clips], alone) == labels))
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
    if not meta.normalises_by_speaker:
        raise click.ClickException(f"{model_path} does not normalise by speaker")
    corpus = load_corpus(data_dir, None)
    split = make_split(corpus.clips, "actor", 0.1, 0.1, seed=0)
    click.echo(f"{model_path}, actor split (seed 0): accuracy by where each speaker's mean comes from\n")
    click.echo("\n".join(speaker_mean_table(model, meta, corpus, split)))


if __name__ == "__main__":
    main()
