"""Recipes aimed past the study on unseen speakers: train them, cross-validate and report.

    python -m experiments.accuracy run resnet --split actor            # one recipe, the fixed actor split
    python -m experiments.accuracy run resnet --split kfold            # its 5 speaker-grouped folds
    python -m experiments.accuracy ensemble resnet-actor crnn-actor    # average finished runs: val and test
    python -m experiments.accuracy kfold-ensemble resnet crnn          # the same average on every finished fold
    python -m experiments.accuracy report                              # experiments/results/accuracy.md

A recipe is a TOML file of `serkeras train` options: ``experiments/recipes/NAME.toml``, or
one of serkeras' shipped recipes that the shipped averages are made of (``crema-d-NAME``,
called NAME here). Every run is one ``serkeras train --recipe`` process writing
``saved_models/accuracy/<run>/`` and ``logs/accuracy/<run>/``; a finished run is skipped and
an interrupted one resumed. ``saved_models/accuracy/runs.jsonl`` records each run's exact
command, machine and wall time. A shipped average is made by ``serkeras ensemble`` from
its members' actor-split runs (serkeras' manifest of shipped models lists them), and its card
by ``serkeras card``.
"""

import functools
import json
import shlex
from pathlib import Path

import click

from serkeras.api import speaker_reference_clips
from serkeras.errors import SerkerasError
from serkeras.options import SerkerasGroup, speaker_stats_option, tta_option
from serkeras.recipes import read_recipe, recipe_description
from serkeras.shipped import shipped_model, shipped_models

from experiments.pretrained_probe import cost_rows
from experiments.study import (RESULTS_DIR, ROOT, STUDY, accuracy_interval, format_minutes, load_results, mean_std,
                               previous_tables, run_logged, training_time)

RUNS_DIR = Path("saved_models") / "accuracy"
LOG_DIR = Path("logs") / "accuracy"
STUDY_RUNS_DIR = Path("saved_models") / "study"
SHIPPED_DIR = Path("saved_models")
SPLITS = ("actor", "kfold", "random")
N_FOLDS = 5
#: This script's own recipes, one TOML file each.
RECIPES_DIR = ROOT / "experiments" / "recipes"
#: The shipped recipes (serkeras/recipes/) are called here without this prefix: every run here is on CREMA-D.
SHIPPED_PREFIX = "crema-d-"


def recipe_sources():
    """{recipe name here: what `serkeras train --recipe` takes}, sorted by name.

    This folder's recipes are paths; the recipes of the shipped averages' members
    (in serkeras' manifest of shipped models) are shipped recipes' names, e.g.
    ``resnet`` for ``crema-d-resnet``.
    """
    sources = {path.stem: path for path in RECIPES_DIR.glob("*.toml")}
    for model in shipped_models():
        sources.update({recipe.removeprefix(SHIPPED_PREFIX): recipe for recipe, _ in model.members})
    return dict(sorted(sources.items()))


RECIPES = recipe_sources()


def recipe_settings(recipe):
    """The options a recipe sets ({key as in the file: value})."""
    return read_recipe(RECIPES[recipe])


def recipe_argument(recipe):
    """The recipe as `serkeras train --recipe` is given it here: a shipped name, or a path from the repository."""
    source = RECIPES[recipe]
    if isinstance(source, str):
        return source
    return str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else str(source)


def shipped_members(name):
    """(recipe name here, training seed) of each member of the shipped average `name`, in its order."""
    return [(recipe.removeprefix(SHIPPED_PREFIX), seed) for recipe, seed in shipped_model(name).members]


def member_label(recipe, seed):
    """RECIPE, or RECIPE:SEED for a training seed other than 0 (as `kfold-ensemble` takes them)."""
    return f"{recipe}:{seed}" if seed else recipe


#: Test-time augmentation (`ensemble --tta-copies`): serkeras.effects.TEST_TIME_AUGMENTATION, as in
#: `serkeras evaluate --tta-copies`.
TTA_DESCRIPTION = ("serkeras' TEST_TIME_AUGMENTATION, made like the augmented recipes' training copies: speed "
                   "0.9-1.1, time shift up to 0.25 s, gain within ±6 dB, noise at 10-30 dB SNR")


def run_name(recipe, split, fold=None, seed=0):
    name = f"{recipe}-{split}" + (f"-fold{fold}" if fold is not None else "")
    return f"{name}-seed{seed}" if seed else name


def train_command(recipe, split, fold, seed, epochs, data_dir, resume):
    """The exact `serkeras train` command line of one run (`epochs` None: the recipe's own, patience alike)."""
    command = ["serkeras", "train", "--recipe", recipe_argument(recipe), "--split", split, "--seed", "0",
               *(["--train-seed", str(seed)] if seed else []),
               "--run-name", f"{RUNS_DIR.name}/{run_name(recipe, split, fold, seed)}", "--quiet"]
    if epochs:
        command += ["--epochs", str(epochs), "--patience", str(epochs)]
    if fold is not None:
        command += ["--fold", str(fold), "--n-folds", str(N_FOLDS)]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    if resume:
        command.append("--resume")
    return command


def train_missing(recipe, split, seed, epochs, data_dir, dry_run=False, folds=None):
    """Train the runs of `recipe` on `split` (kfold: `folds`, default all) that have not finished yet."""
    if recipe_settings(recipe).get("teacher") and split != "actor":
        raise click.UsageError(f"{recipe} learns from a model trained on the actor split: it runs on that split only")
    folds = (folds or range(N_FOLDS)) if split == "kfold" else [None]
    for fold in folds:
        name = run_name(recipe, split, fold, seed)
        folder = ROOT / RUNS_DIR / name
        if (folder / "metrics.json").is_file():
            click.echo(f"{name}: done")
            continue
        command = train_command(recipe, split, fold, seed, epochs, data_dir, (folder / "config.json").is_file())
        click.echo(shlex.join(command))
        if not dry_run:
            run_logged(command, RUNS_DIR, {"run": name, "recipe": recipe, "split": split, "fold": fold,
                                           "seed": seed, "epochs": epochs or recipe_settings(recipe).get("epochs")})


@click.group(cls=SerkerasGroup)  # user errors as one line, as in the serkeras CLI
def cli():
    """Train, cross-validate and report the recipes; write the cards of the shipped averages."""


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                               help="CREMA-D audio folder (default $SERKERAS_DATA_DIR or data/Crema).")
epochs_option = click.option("--epochs", type=click.IntRange(min=1), default=None,
                             help="Override the recipe's epochs (15 unless the recipe says otherwise).")


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Choice(sorted(RECIPES)))
@data_dir_option
@click.option("--split", "splits", type=click.Choice(SPLITS), multiple=True, default=("actor",), show_default=True,
              help="Repeatable; kfold trains all 5 folds.")
@click.option("--fold", "folds", type=click.IntRange(0, N_FOLDS - 1), multiple=True,
              help="Only these folds of kfold (repeatable; default all). Two processes may share the folds "
                   "out, never the same fold.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Training seed (initialisation, shuffling, augmentation); the splits stay those of seed 0, "
                   "so seeds can be compared and averaged on the same actors.")
@epochs_option
@click.option("--dry-run", is_flag=True, help="Print the commands only.")
def run(recipes, data_dir, splits, folds, seed, epochs, dry_run):
    """Train RECIPES on each split, skipping finished runs and resuming interrupted ones."""
    for recipe in recipes:
        for split in splits:
            train_missing(recipe, split, seed, epochs, data_dir, dry_run, folds)


def runs_log():
    """Every run's test scores and command, in git so that later checkouts (without the run folders) know them."""
    return RESULTS_DIR / "accuracy_runs.jsonl"


def listed_runs():
    """{run name: record} of `runs_log()` as `report` last wrote it (empty before the first report)."""
    path = runs_log()
    return {r["run"]: r for r in map(json.loads, path.read_text().splitlines())} if path.is_file() else {}


def finished_test_scores(results, listed=None):
    """{run name: {"accuracy", "macro_f1", "n"} on its test part}: the runs here, and those that earlier
    checkouts listed in `runs_log()` (written by `report`; `listed`: those records, by default read from it)."""
    listed = listed_runs() if listed is None else listed
    scores = {name: {"accuracy": r["test_accuracy"], "macro_f1": r["test_macro_f1"], "n": r["test_clips"]}
              for name, r in listed.items()}
    scores.update({name: result["metrics"]["test"] for name, result in results.items()})
    return scores


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@data_dir_option
@tta_option
@speaker_stats_option
def ensemble(runs, data_dir, tta_copies, speaker_stats):
    """Average finished RUNS (one split, one feature setting) and score the average on that split's val and test.

    Builds the same one-file average that `serkeras ensemble` saves
    (serkeras.models.ensemble) and appends its scores to
    experiments/results/accuracy_ensembles.jsonl, which `report` shows; its cost is the
    sum of the members' (times 1 + TTA copies). One run alone is scored too
    (useful with --tta-copies or --speaker-stats). On the actor and kfold splits,
    where each speaker is in one part, both --speaker-stats give the same scores.
    """
    missing = [r for r in runs if not (ROOT / RUNS_DIR / r / "metrics.json").is_file()]
    if missing:
        raise click.UsageError(f"not finished: {', '.join(missing)}")
    record = score_average(runs, data_dir, tta_copies, speaker_stats)
    tta = f" with {tta_copies} TTA copies" if tta_copies else ""
    tta += ", speaker statistics from the whole corpus" if speaker_stats == "corpus" else ""
    click.echo(f"average of {len(runs)}{tta}: test accuracy {100 * record['accuracy']:.1f}%, macro-F1 "
               f"{record['macro_f1']:.3f} on {record['n']} clips; validation {100 * record['val_accuracy']:.1f}% "
               f"({record['split']} split)")


def recipe_and_seed(ctx, param, values):
    """Parse RECIPE or RECIPE:SEED arguments into (recipe, training seed) pairs."""
    members = []
    for value in values:
        recipe, _, seed = value.partition(":")
        if recipe not in RECIPES or not (seed or "0").isdigit():
            raise click.BadParameter(f"{value!r} is not RECIPE or RECIPE:SEED (recipes: {', '.join(sorted(RECIPES))})")
        members.append((recipe, int(seed or 0)))
    return members


@cli.command("kfold-ensemble")
@click.argument("recipes", nargs=-1, required=True, metavar="RECIPE[:SEED]...", callback=recipe_and_seed)
@data_dir_option
@tta_option
def kfold_ensemble(recipes, data_dir, tta_copies):
    """Cross-validate the average of RECIPES: score it on every k-fold fold where all of them have finished.

    Each fold's members were trained without that fold's actors, so this is the
    5-fold estimate of the ensemble (and, with one recipe, of test-time
    augmentation). RECIPE:SEED takes the runs of `run --seed SEED`, so seeds of one
    recipe can be averaged. Folds already scored with the same TTA are not scored
    again; `report` shows the mean and spread.
    """
    scored = latest_ensembles()
    accuracies = []
    for fold in range(N_FOLDS):
        runs = tuple(run_name(recipe, "kfold", fold, seed) for recipe, seed in recipes)
        if not all((ROOT / RUNS_DIR / r / "metrics.json").is_file() for r in runs):
            click.echo(f"fold {fold}: not all of {', '.join(runs)} have finished; skipped")
            continue
        record = scored.get((runs, tta_copies, "part")) or score_average(runs, data_dir, tta_copies)
        accuracies.append(record["accuracy"])
        click.echo(f"fold {fold}: test accuracy {100 * record['accuracy']:.1f}% on {record['n']} clips, "
                   f"macro-F1 {record['macro_f1']:.3f}; validation {100 * record['val_accuracy']:.1f}%")
    if accuracies:
        mean, std = mean_std(accuracies)
        spread = f" ± {100 * std:.1f} (std)" if len(accuracies) > 1 else ""
        click.echo(f"{len(accuracies)} of {N_FOLDS} folds: mean test accuracy {100 * mean:.1f}%{spread}")


def ensembles_log():
    """Where `score_average` appends its records: beside the report, in git, so that the scores of
    ensembles (and the model cards built from them) outlive the git-ignored run folders."""
    return RESULTS_DIR / "accuracy_ensembles.jsonl"


def latest_ensembles():
    """{(runs, TTA copies, speaker statistics): record} from `ensembles_log()` (and saved_models/accuracy/
    ensembles.jsonl, where checkouts before it kept theirs); a set of runs scored again the same way
    replaces its older record."""
    records = [json.loads(line) for path in (ROOT / RUNS_DIR / "ensembles.jsonl", ensembles_log())
               if path.is_file() for line in path.read_text().splitlines()]
    return {(tuple(e["runs"]), e.get("tta_copies", 0), e.get("speaker_stats", "part")): e for e in records}


def score_average(runs, data_dir, tta_copies, speaker_stats="part"):
    """Score the average of finished `runs` on their split's val and test parts; append and return the record.

    `speaker_stats` as in `serkeras evaluate --speaker-stats`."""
    import time

    from serkeras.corpus import load_corpus
    from serkeras.evaluation import classification_report, predict_clips
    from serkeras.models import load_model, model_metadata
    from serkeras.models.ensemble import ensemble_model
    from serkeras.splits import make_split

    configs = [json.loads((ROOT / RUNS_DIR / r / "config.json").read_text()) for r in runs]
    split_keys = ("split", "fold", "n_folds", "val_fraction", "test_fraction", "seed")
    if len({tuple(c[k] for k in split_keys) for c in configs}) != 1:
        raise click.UsageError("the runs were trained on different splits")
    c = configs[0]
    corpus = load_corpus(data_dir, None)
    split = make_split(corpus.clips, c["split"], c["val_fraction"], c["test_fraction"], c["fold"], c["n_folds"],
                       c["seed"])
    models = [load_model(ROOT / RUNS_DIR / r / "model.keras")[0] for r in runs]
    model = ensemble_model(models) if len(models) > 1 else models[0]
    meta = model_metadata(model)
    try:
        speaker_clips = speaker_reference_clips(speaker_stats, meta, corpus)
    except SerkerasError as exc:  # an option that does not fit the model, as `serkeras evaluate` says it
        raise click.UsageError(str(exc)) from None
    started = time.time()
    reports = {part: classification_report(corpus.label_indices(clips),
                                            predict_clips(model, meta, clips, tta_copies, speaker_clips=speaker_clips,
                                                          require_all=True)[1].argmax(axis=1),
                                            corpus.labels)
               for part, clips in (("val", split.val), ("test", split.test))}
    record = {"runs": list(runs), **({"tta_copies": tta_copies} if tta_copies else {}),
              **({"speaker_stats": speaker_stats} if speaker_stats != "part" else {}),
              "split": c["split"], **({"fold": c["fold"]} if c["split"] == "kfold" else {}),
              "accuracy": reports["test"]["accuracy"], "macro_f1": reports["test"]["macro_f1"],
              "n": reports["test"]["n"], "val_accuracy": reports["val"]["accuracy"],
              "predict_seconds": round(time.time() - started, 1)}
    ensembles_log().parent.mkdir(parents=True, exist_ok=True)
    with open(ensembles_log(), "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


# --------------------------------------------------------------------------- report

def summary(scores, names):
    """(mean, std, n) of test accuracy and macro-F1 over the runs among `names` that have `scores`
    ({run name: test scores}, as from `finished_test_scores`)."""
    tests = [scores[n] for n in names if n in scores]
    if not tests:
        return None
    (acc, acc_std), (f1, f1_std) = (mean_std([t[key] for t in tests]) for key in ("accuracy", "macro_f1"))
    return {"acc": acc, "acc_std": acc_std, "f1": f1, "f1_std": f1_std, "n": len(tests),
            "clips": sum(t["n"] for t in tests)}


def format_cell(s, folds=False):
    if s is None:
        return "not run", "not run"
    if folds:
        note = "" if s["n"] == N_FOLDS else f" ({s['n']}/{N_FOLDS} folds)"
        return (f"{100 * s['acc']:.1f} ± {100 * s['acc_std']:.1f}{note}", f"{s['f1']:.3f} ± {s['f1_std']:.3f}")
    ci = accuracy_interval(s["acc"], s["clips"])
    return f"{100 * s['acc']:.1f} ± {100 * ci:.1f}", f"{s['f1']:.3f}"


def model_cost(config):
    """(parameters, MFLOPs per 2.5 s clip) of the architecture in a run's config.json, built afresh."""
    return _model_cost(json.dumps({k: config[k] for k in ("feature_config", "model_config")}, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _model_cost(settings):
    # Keyed by the settings: many runs and every ensemble row share a handful of architectures.
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_model
    from serkeras.models.cost import flops_per_clip

    settings = json.loads(settings)
    feature_config = FeatureConfig.from_dict(settings["feature_config"])
    model = build_model(feature_config, ModelConfig.from_dict(settings["model_config"]), ["a", "b", "c", "d", "e", "f"])
    return model.count_params(), flops_per_clip(model, feature_config) / 1e6


def time_cells(runs):
    """[s / epoch, epochs, train min] cells for finished `runs` (results entries) trained alike.

    The rate comes from the first run whose every epoch was timed; the minutes are summed
    ('≥N' where some run's early sessions were not timed).
    """
    times = [training_time(r) for r in runs]
    per_epoch = next((t.per_epoch for t in times if t.per_epoch), None)
    return [f"{per_epoch:.0f}" if per_epoch else "", str(times[0].epochs),
            format_minutes(sum(t.seconds for t in times), all(t.complete for t in times))]


def recipe_rows(results, scores, previous=()):
    """One row per (recipe, split) with a finished run here: accuracy, F1, cost and time.

    Its k-fold accuracy is over every fold in `scores` (`finished_test_scores`), so folds trained again
    here join those that earlier checkouts listed; cost and time come from the runs here, except that a
    k-fold row with only some of its folds here keeps the time cells of its row in the `previous` report
    (they cover every fold, where the runs here would give the minutes of a few).
    """
    previous_times = {tuple(row[:2]): row[-3:] for row in previous}
    rows = []
    for recipe in RECIPES:
        for split in SPLITS:
            names = [run_name(recipe, split, k) for k in range(N_FOLDS)] if split == "kfold" else [run_name(recipe, split)]
            finished = [results[n] for n in names if n in results]
            if not finished:
                continue
            s = summary(scores, names)
            params, mflops = model_cost(finished[0]["config"])
            times = time_cells(finished)
            if len(finished) < len(names) and (recipe, split) in previous_times:
                times = previous_times[recipe, split]
            rows.append([recipe, split, *format_cell(s, folds=split == "kfold"), f"{params / 1e3:.0f} k",
                         f"{mflops:.0f}", *times])
    return rows


def seed_rows(results, max_seed=10):
    """Recipes trained with more than one training seed on the actor split: each seed and mean ± std."""
    import numpy as np

    rows = []
    for recipe in RECIPES:
        seeds = [k for k in range(max_seed) if run_name(recipe, "actor", seed=k) in results]
        if len(seeds) < 2:
            continue
        metrics = [results[run_name(recipe, "actor", seed=k)]["metrics"] for k in seeds]
        test = np.array([m["test"]["accuracy"] for m in metrics])
        val = np.array([m["val"]["accuracy"] for m in metrics])
        rows.append([recipe, ", ".join(map(str, seeds)), " / ".join(f"{100 * a:.1f}" for a in test),
                     f"{100 * test.mean():.1f} ± {100 * test.std(ddof=1):.1f}",
                     " / ".join(f"{100 * a:.1f}" for a in val), f"{100 * val.mean():.1f} ± {100 * val.std(ddof=1):.1f}"])
    return rows


def baseline_rows():
    """The study's architectures at their paper sizes (cost only: they were not trained here) and the
    best reduced-size study runs that were (experiments/study.py)."""
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig

    rows = []
    for arch, activation, key in (("2d", "silu", ("2d", "silu")), ("1d", "elu", ("1d", "elu")),
                                  ("combined", "silu", ("combined", "variable"))):
        params, mflops = model_cost({"feature_config": FeatureConfig().to_dict(),
                                     "model_config": ModelConfig(arch=arch, activation=activation).to_dict()})
        rows.append([f"study {arch} {activation}, paper size", "random (study's own)", f"{100 * STUDY[key]:.1f} "
                     "(reported)", "0.639 (reported)" if arch == "2d" else "", f"{params / 1e3:.0f} k",
                     f"{mflops:.0f}", "not run here", "", ""])
    study = load_results(STUDY_RUNS_DIR)
    for name in ("2d-silu-lr0.001-variable-actor", "1d-elu-lr0.001-variable-actor",
                 "combined-silu-lr0.001-fixed-actor", "combined-silu-lr0.001-fixed-random"):
        if name not in study:
            continue
        result = study[name]
        test = result["metrics"]["test"]
        params, mflops = model_cost(result["config"])
        rows.append([f"study budget: {name}", result["config"]["split"],
                     f"{100 * test['accuracy']:.1f} ± {100 * accuracy_interval(test['accuracy'], test['n']):.1f}",
                     f"{test['macro_f1']:.3f}", f"{params / 1e3:.0f} k", f"{mflops:.0f}", *time_cells([result])])
    return rows


def ensemble_mflops(members, tta_copies):
    """Forward MFLOPs per clip of an average of `members` (results entries), times 1 + TTA copies."""
    return sum(model_cost(m["config"])[1] for m in members) * (1 + tta_copies)


def kfold_ensemble_rows(ensembles):
    """One row per (recipes, TTA copies) scored on k-fold folds: per-fold, mean ± std accuracy and F1."""
    import re

    groups = {}
    for (runs, tta, stats), e in sorted(ensembles.items(), key=lambda item: item[1].get("fold", 0)):
        if e["split"] != "kfold" or stats != "part":  # kfold-ensemble scores with each part's statistics
            continue
        recipes = tuple(re.sub(r"-kfold-fold\d+(?=(-seed\d+)?$)", "", r) for r in runs)  # keeps a -seedN
        groups.setdefault((recipes, tta), []).append(e)
    rows = []
    for (recipes, tta), records in groups.items():
        (acc, acc_std), (f1, f1_std), (val, _) = (mean_std([e[key] for e in records])
                                                  for key in ("accuracy", "macro_f1", "val_accuracy"))
        rows.append([" + ".join(recipes), str(tta), f"{len(records)}/{N_FOLDS}",
                     ", ".join(f"{100 * e['accuracy']:.1f}" for e in records),
                     f"{100 * acc:.1f} ± {100 * acc_std:.1f}", f"{f1:.3f} ± {f1_std:.3f}", f"{100 * val:.1f}"])
    return rows


#: Headings of the report's tables after the first (recipes); previous rows are found again under them.
SEEDS_TABLE = "Training seeds (same actor split; `run --seed N`)"
ENSEMBLES_TABLE = "Ensembles (probabilities averaged; cost = the members' summed)"
KFOLD_ENSEMBLES_TABLE = "Ensembles and TTA cross-validated by actor (`kfold-ensemble`)"
BASELINES_TABLE = "Baselines"
PROBES_TABLE = "Pre-trained encoder with a linear classifier (`experiments/pretrained_probe.py`)"


def merge_rows(built, previous, key_cells, partial=None, order=None):
    """The rows of one report table: those `built` from the runs in this checkout, and the `previous`
    report's rows for what it cannot rebuild (runs trained on another machine or in another session).

    Rows are matched by their first `key_cells` cells. A built row replaces the previous one, except
    that a row from some of the folds (`partial`) does not replace one from all of them.
    """
    partial = partial or (lambda row: False)
    merged = {tuple(row[:key_cells]): row for row in previous}
    for row in built:
        key = tuple(row[:key_cells])
        if not (key in merged and partial(row) and not partial(merged[key])):
            merged[key] = row
    return sorted(merged.values(), key=order) if order else list(merged.values())


def recipe_order(row):
    """Report order of a recipe-table row: recipes as listed in RECIPES, then by split."""
    recipe, split = row[0], row[1]
    return (list(RECIPES).index(recipe) if recipe in RECIPES else len(RECIPES),
            SPLITS.index(split) if split in SPLITS else len(SPLITS))


def ensemble_rows(ensembles, results):
    """One row per average scored on a single split (`ensemble`); its cost is left blank where some member
    run is not here."""
    rows = []
    for e in ensembles:
        members = [results[r] for r in e["runs"] if r in results]
        tta = e.get("tta_copies", 0)
        ci = accuracy_interval(e["accuracy"], e["n"])
        cost = ([f"{ensemble_mflops(members, tta):.0f}", time_cells(members)[2]]
                if len(members) == len(e["runs"]) else ["", ""])
        label = " + ".join(e["runs"]) + (f", TTA: clip + {tta} augmented copies" if tta else "")
        label += ", speaker statistics from all of a speaker's clips" if e.get("speaker_stats") == "corpus" else ""
        rows.append([label, e["split"],
                     f"{100 * e['accuracy']:.1f} ± {100 * ci:.1f}", f"{e['macro_f1']:.3f}",
                     f"{100 * e['val_accuracy']:.1f}" if "val_accuracy" in e else "", *cost])
    return rows


def table(head, rows):
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


@cli.command()
@click.option("--drop-missing", is_flag=True,
              help="Drop the rows of runs that are not under saved_models/accuracy/ instead of carrying them "
                   "over from the previous report.")
def report(drop_missing):
    """Write experiments/results/accuracy.md from every finished run.

    A fresh checkout has none of the run folders that earlier reports were built
    from, so rows it cannot rebuild are carried over from the previous report, and
    its runs stay listed in accuracy_runs.jsonl.
    """
    results = load_results(RUNS_DIR)
    path = RESULTS_DIR / "accuracy.md"
    before = {} if drop_missing else previous_tables(path)
    runs = {} if drop_missing else listed_runs()
    carried = sorted(set(runs) - set(results))
    scores = finished_test_scores(results, runs)
    head = ["recipe", "split", "test acc %", "macro-F1", "params", "MFLOPs / clip", "s / epoch", "epochs",
            "train min"]
    lines = ["# Accuracy on unseen speakers: every recipe tried", "",
             "Written by `python -m experiments.accuracy report` from `saved_models/accuracy/` "
             "(commands in `accuracy_runs.jsonl` and `saved_models/accuracy/runs.jsonl`) and the ensembles' "
             "scores in `accuracy_ensembles.jsonl`. Rows whose runs are not "
             "in the checkout that wrote it (runs trained on another machine or in another session) are carried "
             "over from the report before.", "",
             "- `actor`: the fixed speaker-independent split (seed 0): 59 training, 7 validation and 7 test actors, "
             "balanced by sex; accuracy ± the 95% normal-approximation interval over its test clips.",
             "- `kfold`: 5 folds grouped by actor (14-15 test actors each, so every actor is tested once, by a "
             "model that never heard them; 6 validation actors come from the rest); mean ± standard deviation "
             "over the folds.",
             "- `random`: the study's protocol (clips shuffled over all 73 actors).",
             "- MFLOPs: forward pass of one 2.5 s clip (CREMA-D's mean length), counted by TensorFlow's profiler "
             "(a multiply-add is 2); the GRU of `crnn` is counted analytically (the profiler skips loops). "
             "s / epoch and train min are wall-clock on the machine that trained the run, often shared with "
             "other jobs.",
             "- Recipes: 20 ms hop, 40 mel bands; AdamW, 1 warm-up epoch + cosine, label smoothing 0.1, "
             "SpecAugment masks, batch 32; the checkpoint with the best validation accuracy is tested.", ""]
    machines = [] if drop_missing or not path.is_file() else [
        line for line in path.read_text().splitlines() if line.startswith("Machine: ")]
    for record in (r["record"] for r in results.values() if r["record"]):
        machine = f"Machine: {'; '.join(record['machine'])}"
        if machine not in machines:
            machines.append(machine)
    lines += [line for machine in machines for line in (machine, "")]
    previous_recipes = before.get("", [])
    lines += table(head, merge_rows(recipe_rows(results, scores, previous_recipes), previous_recipes, 2,
                                    order=recipe_order, partial=lambda row: row[1] == "kfold" and "folds)" in row[2]))
    seeds = merge_rows(seed_rows(results), before.get(SEEDS_TABLE, []), 1, order=recipe_order)
    if seeds:
        lines += ["", f"## {SEEDS_TABLE}", "",
                  "How far a recipe moves when only its initialisation, shuffling and augmentation change: "
                  "differences between recipes smaller than this spread are not evidence.", ""]
        lines += table(["recipe", "seeds", "test acc %", "mean ± std", "val acc %", "mean ± std"], seeds)
    ensembles = latest_ensembles()
    single_split = merge_rows(ensemble_rows([e for e in ensembles.values() if e["split"] != "kfold"], results),
                              before.get(ENSEMBLES_TABLE, []), 2, partial=lambda row: row[5] == "")
    if single_split:
        lines += ["", f"## {ENSEMBLES_TABLE}", "",
                  "With test-time augmentation (TTA), each clip's probabilities are also averaged over its "
                  f"augmented copies ({TTA_DESCRIPTION}): the forward cost is multiplied by 1 + copies, and every "
                  "copy also costs a waveform augmentation and a feature extraction.", ""]
        lines += table(["members", "split", "test acc %", "macro-F1", "val acc %", "MFLOPs / clip", "train min"],
                       single_split)
    cross_validated = merge_rows(kfold_ensemble_rows(ensembles), before.get(KFOLD_ENSEMBLES_TABLE, []), 2,
                                 partial=lambda row: row[2] != f"{N_FOLDS}/{N_FOLDS}")
    if cross_validated:
        lines += ["", f"## {KFOLD_ENSEMBLES_TABLE}", "",
                  "Each fold's average is made of that fold's models, none of which heard its test actors; "
                  "mean ± standard deviation over the folds scored.", ""]
        lines += table(["recipes averaged", "TTA copies", "folds", "test acc % per fold", "test acc %", "macro-F1",
                        "val acc %"], cross_validated)
    probes = cost_rows(RESULTS_DIR / "pretrained_probe.jsonl")
    if probes:
        lines += ["", f"## {PROBES_TABLE}", "",
                  "A frozen pre-trained Whisper encoder (base), its output pooled (mean and standard deviation over "
                  "time) after the first N layers, and a logistic regression fitted on the training part (its "
                  "strength chosen on the validation part); no gradient training. Rows from "
                  "`pretrained_probe.jsonl` (details in [pretrained_probe.md](pretrained_probe.md), findings 28-30); "
                  "'shipped recipe' rows are `pretrained_probe.py ship` and time its encoder passes and probes; "
                  "'several recordings per speaker': each embedding standardised by its speaker's statistics. "
                  "Parameters and MFLOPs: the first N layers with the classifier, float32.", ""]
        lines += table(["embeddings", "needs", "split", "test acc %", "macro-F1", "encoder layers", "params",
                        "MFLOPs / clip", "min", "machine"], probes)
    lines += ["", f"## {BASELINES_TABLE}", ""]
    lines += table(head, merge_rows(baseline_rows(), before.get(BASELINES_TABLE, []), 1))
    lines += ["", "The study's paper-size rows give its reported numbers (random split, not re-measured) and the "
              "cost of our implementation of its architectures at 10 ms hop / 64 mels.", "",
              "## Recipes", ""]
    lines += [f"- `{name}`: {recipe_description(RECIPES[name]).rstrip('.')}. "
              f"`serkeras train --recipe {recipe_argument(name)}`" for name in RECIPES]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    for name, result in results.items():
        test = result["metrics"]["test"]
        runs[name] = {"run": name, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
                      "test_clips": test["n"], "command": (result["record"] or {}).get("command")}
    runs_log().write_text("".join(json.dumps(runs[name]) + "\n" for name in sorted(runs)))
    note = f" ({len(carried)} runs not here carried over from the report before)" if carried else ""
    click.echo(f"wrote {path}{note}")


if __name__ == "__main__":
    cli()
