"""Does normalising features per speaker, instead of per utterance, help unseen speakers?

    python experiments/speaker_norm.py resnet-no-utterance-norm --data-dir ../shared/data/crema-d/audio
    python experiments/speaker_norm.py crnn-augmented --data-dir ../shared/data/crema-d/audio

Trains one `accuracy.py` recipe on the `actor` split (seed 0) with one change: before
training, every clip's features have their speaker's mean removed, the mean taken over all
of that speaker's clips in the same part of the split (and, for the training part's
augmented copies, over that speaker's clips of the same copy). The model's own per-utterance
normalisation is switched off. A per-utterance mean also removes how high and how loud this
clip is; a speaker's mean removes only the voice's own level, so an angry clip stays higher
and louder than the same actor's neutral one.

This is an experiment, not a `serkeras` option: at prediction time it needs several
recordings of each speaker, grouped, which `serkeras predict` does not have. The run is
written to ``saved_models/accuracy/<recipe>-speaker-norm-actor/`` (metrics.json, model,
history) and logged to ``logs/accuracy/``; it resumes like any `serkeras train --resume` run.
"""

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import LOG_DIR, RECIPES, RUNS_DIR, train_command  # noqa: E402
from study import ROOT, machine_lines  # noqa: E402


def speaker_means(clips, feature_list, groups):
    """{(speaker, group): mean of each feature over every frame of that speaker's clips in `group`}."""
    from serkeras.features import compute_stats

    members = {}
    for clip, features, group in zip(clips, feature_list, groups):
        members.setdefault((clip.speaker, group), []).append(features)
    return {key: compute_stats(found).mean for key, found in members.items()}


def normalise_by_speaker(clips, feature_list, groups):
    """`feature_list` with each clip's speaker mean (within its group) removed; frames stay aligned.

    Parameters
    ----------
    clips : sequence of serkeras.corpus.Clip
    feature_list : sequence of dict
        Features of `clips`, in the same order.
    groups : sequence of hashable
        Which clips share conditions (the training part's original clips and each set of augmented
        copies): a speaker's mean is taken within one group only.
    """
    means = speaker_means(clips, feature_list, groups)
    return [{name: (array - means[(clip.speaker, group)][name]).astype(array.dtype) for name, array in features.items()}
            for clip, features, group in zip(clips, feature_list, groups)]


def speaker_normalised(data, originals):
    """A copy of `data` (a `serkeras.training.SplitData`) normalised by speaker, with new training statistics.

    `originals`: the number of original clips in the training part (augmented copies follow them, in order).
    """
    from serkeras.features import compute_stats
    from serkeras.training import SplitData

    parts = {}
    for name, (clips, features, labels) in data.parts.items():
        groups = [i // originals for i in range(len(clips))] if name == "train" else [0] * len(clips)
        parts[name] = (clips, normalise_by_speaker(clips, features, groups), labels)
    return SplitData(data.labels, parts, compute_stats(parts["train"][1][:originals]))


@click.command()
@click.argument("recipe", type=click.Choice(sorted(RECIPES)))
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="CREMA-D audio folder (default $SERKERAS_DATA_DIR or data/Crema).")
def main(recipe, data_dir):
    """Train RECIPE on the actor split with features normalised per speaker."""
    from serkeras.cli import feature_config_from, load_split, model_config_from, prepare_training_data, train
    from serkeras.models import ModelConfig
    from serkeras.training import TrainConfig, run_training

    run = f"{recipe}-speaker-norm-actor"
    run_dir, log_dir = ROOT / RUNS_DIR / run, ROOT / LOG_DIR / run
    if (run_dir / "metrics.json").is_file():
        click.echo(f"{run}: done")
        return
    resume = (run_dir / "config.json").is_file()
    # The recipe's own `serkeras train` command line, parsed as `train` parses it: the same settings.
    command = train_command(recipe, "actor", None, 0, None, data_dir, False)
    params = train.make_context("train", command[2:]).params
    feature_config = feature_config_from(params)
    model_config = ModelConfig.from_dict({**model_config_from(params).to_dict(), "utterance_norm": "none"})
    split_names = ("data_dir", "manifest", "split_kind", "fold", "n_folds", "val_fraction", "test_fraction", "seed")
    split_args = [params.pop(name) for name in split_names]
    for name in ("cache_dir", "run_name", "resume", "output_dir", "log_dir", "workers", "quiet", "all_folds",
                 "train_seed"):
        params.pop(name)
    train_config = TrainConfig(seed=split_args[-1], **params)
    corpus, split = load_split(*split_args)
    data = prepare_training_data(corpus, split, feature_config, train_config, None, None)
    total, copies = len(data.parts["train"][0]), train_config.augment_copies + 1
    if total % copies:
        raise click.ClickException("some augmented copies are missing: cannot tell copies from originals")
    data = speaker_normalised(data, originals=total // copies)
    started = time.time()
    metrics = run_training(data, feature_config, model_config, train_config, run_dir, log_dir, resume=resume,
                           describe={**dict(zip(("split", *split_names[3:]), split_args[2:])),
                                     "corpus": corpus.name, "speaker_norm": True},
                           verbose=2)
    record = {"run": run, "recipe": recipe, "speaker_norm": True, "split": "actor", "seed": 0,
              "command": f"python experiments/speaker_norm.py {recipe}", "machine": machine_lines(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
              "wall_seconds": round(time.time() - started, 1)}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))
    for part in ("val", "test"):
        click.echo(f"{part}: accuracy {metrics[part]['accuracy']:.3f}, macro-F1 {metrics[part]['macro_f1']:.3f}")


if __name__ == "__main__":
    main()
