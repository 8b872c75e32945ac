"""How alike the members of an average are: each member's accuracy and how often two members predict the same
emotion, on the `actor` split's (seed 0) validation and test clips.

    python -m experiments.member_agreement serkeras-crema-d --data-dir ../shared/data/crema-d/audio
    python -m experiments.member_agreement saved_models/accuracy/{resnet,crnn-augmented,resnet-augmented-mixup}-distilled-actor/model.keras

MODELS are .keras files or shipped models' names; an ensemble stands for its members. Averaging
gains most from members that are accurate and disagree; prints a markdown table.
"""

import itertools

import click
import numpy as np


def agreement_row(members, features, labels, length_mode, fixed_frames=None):
    """(mean pairwise agreement, [each member's accuracy]) of `members` on one part's `features`."""
    from serkeras.evaluation import predict_features

    predicted = [predict_features(m, features, length_mode, fixed_frames).argmax(axis=1) for m in members]
    agreement = np.mean([np.mean(a == b) for a, b in itertools.combinations(predicted, 2)])
    return float(agreement), [float(np.mean(p == labels)) for p in predicted]


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="CREMA-D audio folder (default $SERKERAS_DATA_DIR or data/Crema).")
def main(models, data_dir):
    """Member accuracies and pairwise agreement of MODELS (at least two members in all)."""
    from serkeras.api import SplitSettings, load_split, open_model
    from serkeras.cache import model_features
    from serkeras.models.ensemble import ensemble_members

    loaded = [open_model(m) for m in models]
    members = [member for model, _ in loaded for member in ensemble_members(model)]
    config = loaded[0][1].feature_config
    if len(members) < 2:
        raise click.UsageError("give at least two members (models, or an ensemble)")
    if any(meta.feature_config != config for _, meta in loaded):
        raise click.UsageError("the models need the same feature settings")
    corpus, split = load_split(data_dir, None, SplitSettings("actor"))
    click.echo(f"{' + '.join(models)}: {len(members)} members, actor split (seed 0)\n")
    click.echo("| part | pairwise agreement % | member accuracies % |\n| --- | --- | --- |")
    for part in ("val", "test"):
        kept, (features,) = model_features(split.parts()[part], config)
        agreement, accuracies = agreement_row(members, features, np.asarray(corpus.label_indices(kept)),
                                              config.length_mode, config.fixed_frames)
        click.echo(f"| {part} | {100 * agreement:.1f} | {' / '.join(f'{100 * a:.1f}' for a in accuracies)} |")


if __name__ == "__main__":
    main()
