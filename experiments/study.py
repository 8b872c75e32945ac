"""Re-run the study's comparisons on real CREMA-D, under the random and the speaker-independent split.

    python -m experiments.study run --data-dir ../shared/data/crema-d/audio   # train every run not yet done
    python -m experiments.study report                                       # write experiments/results/

Questions (see experiments/NOTEBOOK.md):

1. ``activation``: relu / silu / elu x 1d / 2d / combined;
2. ``learning_rate``: 1e-2 / 1e-3 / 1e-4 (2d, silu);
3. ``length``: fixed-size vs variable-length input (combined, silu);
4. ``confusions``: confusion matrices and per-class F1 of the runs above.

Each run is one ``serkeras train`` process writing ``saved_models/study/<run>/`` and
``logs/study/<run>/`` (``tensorboard --logdir logs/study`` compares them all). Runs that
several questions share are trained once. A finished run is skipped and an
interrupted one resumed, so ``run`` can be stopped and restarted at any time.
``runs.jsonl`` records every run's exact command, machine and wall time.
"""

import dataclasses
import functools
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import click

ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = Path("saved_models") / "study"
LOG_DIR = Path("logs") / "study"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SPLITS = ("random", "actor")
ARCHES = ("1d", "2d", "combined")
ACTIVATIONS = ("relu", "silu", "elu")
LEARNING_RATES = (1e-2, 1e-3, 1e-4)

#: What the study reported on its (random, all-speaker) split, for the tables' last column.
STUDY = {("2d", "silu"): 0.641, ("1d", "elu"): 0.556, ("combined", "variable"): 0.622, ("combined", "fixed"): 0.613}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: the settings a question varies; the budget is shared by all runs."""

    arch: str
    activation: str = "silu"
    learning_rate: float = 1e-3
    length: str = "variable"
    split: str = "actor"
    seed: int = 0  # also picks the split; the tables use seed 0, other seeds repeat a run for its spread

    @property
    def name(self):
        name = f"{self.arch}-{self.activation}-lr{self.learning_rate:g}-{self.length}-{self.split}"
        return f"{name}-seed{self.seed}" if self.seed else name


def question_runs(question, split):
    """The runs that answer `question` on `split`, in training order."""
    if question == "activation":
        return [Run(arch, activation, split=split) for arch in ARCHES for activation in ACTIVATIONS]
    if question == "learning_rate":
        return [Run("2d", "silu", lr, split=split) for lr in LEARNING_RATES]
    if question == "length":
        return [Run("combined", "silu", length=length, split=split) for length in ("variable", "fixed")]
    raise click.BadParameter(f"unknown question {question!r}")


QUESTIONS = ("activation", "learning_rate", "length")


def train_command(run, data_dir, budget, resume):
    """The exact `serkeras train` command line for `run` under `budget`."""
    command = ["serkeras", "train", "--arch", run.arch, "--activation", run.activation,
               "--lr", f"{run.learning_rate:g}", "--length", run.length, "--split", run.split,
               "--width", f"{budget['width']:g}", "--epochs", str(budget["epochs"]),
               "--hop-length", str(budget["hop_length"]), "--n-mels", str(budget["n_mels"]),
               "--schedule", budget["schedule"], "--patience", str(budget["epochs"]),
               "--seed", str(run.seed), "--run-name", f"study/{run.name}", "--quiet"]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    if resume:
        command.append("--resume")
    return command


@click.group()
def cli():
    """Run the study's comparisons and report them."""


@cli.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="CREMA-D audio folder (default $SERKERAS_DATA_DIR or data/Crema).")
@click.option("--question", "questions", type=click.Choice(QUESTIONS), multiple=True,
              help="Only these questions (repeatable; default all).")
@click.option("--split", "splits", type=click.Choice(SPLITS), multiple=True, help="Only these splits (default both).")
@click.option("--width", type=float, default=0.25, show_default=True,
              help="Model width (1.0 is the paper size; 0.25 is the CPU budget).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--hop-length", type=int, default=320, show_default=True,
              help="STFT hop in samples (160 = 10 ms is serkeras' default; 320 halves every model's cost).")
@click.option("--n-mels", type=int, default=40, show_default=True, help="Mel bands (serkeras' default is 64).")
@click.option("--schedule", type=click.Choice(["cosine", "plateau", "constant"]), default="cosine", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the commands only.")
def run(data_dir, questions, splits, width, epochs, hop_length, n_mels, schedule, seed, dry_run):
    """Train every run the questions need that has not finished yet."""
    budget = {"width": width, "epochs": epochs, "hop_length": hop_length, "n_mels": n_mels, "schedule": schedule,
              "seed": seed}
    todo = []
    for question in questions or QUESTIONS:
        for split in splits or SPLITS:
            todo += [dataclasses.replace(r, seed=seed) for r in question_runs(question, split)
                     if dataclasses.replace(r, seed=seed) not in todo]
    # Every split's cheap runs first so each question gets answers early.
    todo.sort(key=lambda r: (r.arch != "1d", r.arch == "combined"))
    for i, r in enumerate(todo, 1):
        folder = ROOT / RUNS_DIR / r.name
        if (folder / "metrics.json").is_file():
            click.echo(f"[{i}/{len(todo)}] {r.name}: done")
            continue
        resume = (folder / "config.json").is_file()
        command = train_command(r, data_dir, budget, resume)
        click.echo(f"[{i}/{len(todo)}] {shlex.join(command)}")
        if dry_run:
            continue
        run_logged(command, RUNS_DIR, {"run": r.name, **dataclasses.asdict(r), "budget": budget})


def run_logged(command, runs_dir, record):
    """Run one `serkeras ...` command here; on success append `record` (plus the command, machine and
    wall time) to `<runs_dir>/runs.jsonl`, on failure exit with a one-line message."""
    started = time.time()
    # `python -m serkeras`: the serkeras of this interpreter and checkout, whatever is on PATH.
    status = subprocess.call([sys.executable, "-m", *command], cwd=ROOT)
    if status != 0:
        sys.exit(f"{record['run']} failed with exit status {status}; rerun to resume it")
    record = {**record, "command": shlex.join(command), "machine": machine_lines(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
              "wall_seconds": round(time.time() - started, 1)}
    (ROOT / runs_dir).mkdir(parents=True, exist_ok=True)
    with open(ROOT / runs_dir / "runs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


@functools.lru_cache(maxsize=1)
def machine_lines():
    """describe_machine() of this interpreter, asked once per process (in a subprocess: it imports TensorFlow)."""
    result = subprocess.run([sys.executable, "-c", "from serkeras.system import describe_machine; "
                             "print('\\n'.join(describe_machine()))"], capture_output=True, text=True)
    return result.stdout.strip().splitlines()


def load_results(runs_dir=RUNS_DIR):
    """{run name: {"metrics", "config", "record"}} for every finished run under `runs_dir`."""
    records = {}
    log = ROOT / runs_dir / "runs.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            records[record["run"]] = record  # a resumed run's last record wins
    results = {}
    for folder in sorted((ROOT / runs_dir).glob("*/metrics.json")):
        name = folder.parent.name
        results[name] = {"metrics": json.loads(folder.read_text()),
                         "config": json.loads((folder.parent / "config.json").read_text()),
                         "record": records.get(name), "folder": folder.parent}
    return results


class TrainingTime(NamedTuple):
    """How long one finished run trained."""

    per_epoch: float | None  # seconds; None where unknown
    epochs: int
    seconds: float
    complete: bool  # False: `seconds` is only the last session's, a lower bound


def training_time(result):
    """The `TrainingTime` of a finished run (a `load_results` entry).

    serkeras times every epoch of every session of a run (`timed_epochs`). Runs trained
    before it did, and resumed, know only their last session's time: a lower bound, with
    no rate per epoch.
    """
    history = result["folder"] / "history.csv"
    epochs = max(0, len(history.read_text().strip().splitlines()) - 1) if history.is_file() else 0
    seconds, timed = result["metrics"]["train_seconds"], result["metrics"].get("timed_epochs")
    if timed:
        return TrainingTime(seconds / timed, epochs, seconds, True)
    if "--resume" in ((result["record"] or {}).get("command") or ""):
        return TrainingTime(None, epochs, seconds, False)
    return TrainingTime(seconds / epochs if epochs else None, epochs, seconds, True)


def mean_std(values):
    """Mean and sample standard deviation (0 for a single value) of `values`."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def format_minutes(seconds, complete):
    """Training minutes for a table: '≥N' where only part of the time is known."""
    return f"{'' if complete else '≥'}{seconds / 60:.0f}"


def previous_tables(path):
    """{table heading ('' for the first table): [row cells]} of the markdown file (a report, a model card)
    at `path`, if there is one: what a checkout without the runs behind it carries over."""
    return markdown_tables(path.read_text().splitlines() if path.is_file() else [])


def markdown_tables(lines):
    """{table heading ('' for the first table): [row cells]} of a markdown document's `lines`."""
    tables, heading = {}, ""
    for line, after in zip(lines, lines[1:] + [""]):
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and not after.startswith("| ---") and not line.startswith("| ---"):
            tables.setdefault(heading, []).append([cell.strip() for cell in line.strip()[1:-1].split("|")])
    return tables


def accuracy_interval(accuracy, n):
    """Half-width of the 95% normal-approximation interval of an accuracy measured on n clips."""
    return 1.96 * (accuracy * (1 - accuracy) / n) ** 0.5


def cell(results, run):
    """'acc ± ci / F1' for a run, or 'not run'."""
    result = results.get(run.name)
    if result is None:
        return "not run", "not run"
    test = result["metrics"]["test"]
    ci = accuracy_interval(test["accuracy"], test["n"])
    return f"{100 * test['accuracy']:.1f} ± {100 * ci:.1f}", f"{test['macro_f1']:.3f}"


def comparison_table(results, rows, row_label, study_key):
    """A Markdown table: one row per setting, accuracy/F1 on each split, the study's number."""
    head = [*row_label, "random acc %", "random F1", "actor acc %", "actor F1", "params", "s/epoch", "study (random)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    footnote = ("\nstudy (random): what the study reported for that setting with its paper-size models, full "
                "training and a random split: 2d SiLU lr 1e-3 64.1%; 1d ELU 55.6% (at lr 1e-2); combined "
                "62.2% variable-length, 61.3% fixed. params and s/epoch are this budget's (actor-split run).")
    for labels, make in rows:
        cells = []
        for split in SPLITS:
            cells += cell(results, make(split))
        reference = results.get(make("actor").name) or results.get(make("random").name)
        params = f"{reference['metrics']['parameters'] / 1e3:.0f} k" if reference else ""
        per_epoch = epoch_seconds(reference) if reference else ""
        study = STUDY.get(study_key(labels))
        lines.append("| " + " | ".join([*labels, *cells, params, per_epoch,
                                         f"{100 * study:.1f}" if study else ""]) + " |")
    return "\n".join(lines) + "\n" + footnote


def epoch_seconds(result):
    per_epoch = training_time(result).per_epoch
    return f"{per_epoch:.0f}" if per_epoch else ""


def bar_plot(results, groups, path, title):
    """Grouped bars of test accuracy per setting, one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPLITS), figsize=(5 * len(SPLITS), 3.6), sharey=True)
    for ax, split in zip(axes, SPLITS):
        names, values, errors = [], [], []
        for label, make in groups:
            result = results.get(make(split).name)
            names.append(label)
            if result:
                test = result["metrics"]["test"]
                values.append(100 * test["accuracy"])
                errors.append(100 * accuracy_interval(test["accuracy"], test["n"]))
            else:
                values.append(0)
                errors.append(0)
        ax.bar(range(len(names)), values, yerr=errors, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{split} split")
        ax.set_ylabel("test accuracy % (95% CI)")
        ax.axhline(100 / 6, color="grey", linestyle=":", linewidth=1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def header(results, title, runs):
    """Title plus how the numbers were produced: commands, budget and machine of the runs used."""
    used = [results[r.name] for r in runs if r.name in results]
    lines = [f"# {title}", ""]
    if not used:
        return lines + ["No run of this question has finished yet.", ""]
    records = [u["record"] for u in used if u["record"]]
    first = records[0] if records else None
    budget = first["budget"] if first else {}
    lines += [f"Written by `python -m experiments.study report` from {len(used)} of {len(runs)} runs "
              f"(`saved_models/study/`).",
              "",
              f"- Budget (same for every run): width {budget.get('width')} "
              f"(1.0 = the study's paper sizes), {budget.get('epochs')} epochs, {budget.get('schedule')} "
              f"learning-rate schedule, Adam, batch 32, seed {budget.get('seed')}, dropout 0.3; "
              "the checkpoint with the best validation accuracy is the one tested.",
              "- Splits: `random` = clips shuffled over all 73 actors (the study's protocol; the same voices are "
              "in train and test); `actor` = 80/10/10 % of actors, disjoint, balanced by sex "
              "(test voices never heard in training). Test parts: ~570-600 clips.",
              "- Accuracy is on the test part, ± the 95% normal-approximation interval; F1 is macro-F1. "
              "One seed per cell: differences inside the intervals are not evidence.",
              ]
    if first:
        lines += [f"- {'; '.join(first['machine'])}",
                  f"- Runs started {min(r['started'] for r in records)} to {max(r['started'] for r in records)}; "
                  f"example command: `{first['command']}`"]
    return lines + [""]


@cli.command()
def report():
    """Write experiments/results/*.md and *.png from the finished runs."""
    results = load_results()
    for name, result in results.items():
        result["run_name"] = name
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    runs = [r for s in SPLITS for r in question_runs("activation", s)]
    rows = [((arch, activation), lambda split, a=arch, act=activation: Run(a, act, split=split))
            for arch in ARCHES for activation in ACTIVATIONS]
    text = header(results, "Activation x architecture", runs)
    text += [comparison_table(results, rows, ("arch", "activation"), lambda labels: tuple(labels)), "",
             "![test accuracy](activation.png)", ""]
    (RESULTS_DIR / "activation.md").write_text("\n".join(text))
    bar_plot(results, [(f"{a} {act}", make) for (a, act), make in rows], RESULTS_DIR / "activation.png",
             "activation x architecture")

    runs = [r for s in SPLITS for r in question_runs("learning_rate", s)]
    rows = [((f"{lr:g}",), lambda split, lr=lr: Run("2d", "silu", lr, split=split)) for lr in LEARNING_RATES]
    text = header(results, "Learning rate (2d CNN, SiLU)", runs)
    text += [comparison_table(results, rows, ("learning rate",), lambda labels: ("2d", "silu") if labels[0] == "0.001"
                              else None), "", "![test accuracy](learning_rate.png)", ""]
    (RESULTS_DIR / "learning_rate.md").write_text("\n".join(text))
    bar_plot(results, [(f"lr {lr}", make) for (lr,), make in rows], RESULTS_DIR / "learning_rate.png",
             "learning rate (2d, silu)")

    runs = [r for s in SPLITS for r in question_runs("length", s)]
    rows = [((length,), lambda split, m=length: Run("combined", "silu", length=m, split=split))
            for length in ("variable", "fixed")]
    text = header(results, "Fixed-size vs variable-length input (combined model, SiLU)", runs)
    text += ["`fixed` crops or zero-pads every clip to 3 s; `variable` feeds whole clips, bucketed by length, "
             "padded, with their lengths (padding is masked out of every norm and pool).", "",
             comparison_table(results, rows, ("input",), lambda labels: ("combined", labels[0])), "",
             "![test accuracy](length.png)", ""]
    (RESULTS_DIR / "length.md").write_text("\n".join(text))
    bar_plot(results, [(length, make) for (length,), make in rows], RESULTS_DIR / "length.png",
             "input length (combined, silu)")

    (RESULTS_DIR / "confusions.md").write_text("\n".join(confusions(results)))
    write_runs_table(results, RESULTS_DIR / "runs.csv")
    click.echo(f"wrote {RESULTS_DIR}/")


def write_runs_table(results, path):
    """Every finished run in one CSV: settings, val/test metrics, time, and the exact command."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "split", "val_accuracy", "test_accuracy", "test_macro_f1", "test_clips",
                         "parameters", "train_seconds", "wall_seconds", "command"])
        for name, result in sorted(results.items()):
            metrics, record = result["metrics"], result["record"] or {}
            writer.writerow([name, result["config"]["split"], f"{metrics['val']['accuracy']:.4f}",
                             f"{metrics['test']['accuracy']:.4f}", f"{metrics['test']['macro_f1']:.4f}",
                             metrics["test"]["n"], metrics["parameters"], f"{metrics['train_seconds']:.0f}",
                             record.get("wall_seconds", ""), record.get("command", "")])


def confusions(results):
    """Confusion matrices of each split's best run (chosen on validation) and the most confused pairs."""
    import numpy as np

    from serkeras.evaluation import save_confusion_matrix

    lines = ["# Which emotions are confused", "",
             "Per split: the confusion matrix of the run with the best *validation* accuracy (so the test "
             "numbers are not cherry-picked), per-class F1 of that run, and the most confused pairs summed "
             "over every seed-0 study run on that split. Rows are the acted emotion, columns the prediction.", ""]
    for split in SPLITS:
        # Seed 0 only, like the tables; repeats with other seeds have other validation actors.
        finished = {n: r for n, r in results.items() if r["config"]["split"] == split and r["config"]["seed"] == 0}
        lines += [f"## {split} split", ""]
        if not finished:
            lines += ["No finished run.", ""]
            continue
        best_name = max(finished, key=lambda n: finished[n]["metrics"]["val"]["accuracy"])
        test = finished[best_name]["metrics"]["test"]
        labels = test["labels"]
        save_confusion_matrix(test["confusion_matrix"], labels, RESULTS_DIR / f"confusion_{split}.png",
                              f"{best_name}: test accuracy {100 * test['accuracy']:.1f}%")
        lines += [f"Best on validation: `{best_name}` (test accuracy {100 * test['accuracy']:.1f}%, "
                  f"macro-F1 {test['macro_f1']:.3f}).", "", f"![confusion matrix](confusion_{split}.png)", "",
                  "| emotion | precision | recall | F1 | clips |", "| --- | --- | --- | --- | --- |"]
        for label in labels:
            c = test["per_class"][label]
            lines.append(f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
        total = sum(np.asarray(r["metrics"]["test"]["confusion_matrix"], dtype=float) for r in finished.values())
        rates = total / total.sum(axis=1, keepdims=True)
        pairs = sorted(((rates[i, j] + rates[j, i], labels[i], labels[j], rates[i, j], rates[j, i])
                        for i in range(len(labels)) for j in range(i + 1, len(labels))), reverse=True)
        lines += ["", f"Most confused pairs over all {len(finished)} runs on this split "
                  "(share of each emotion's clips predicted as the other):", "",
                  "| pair | a → b | b → a |", "| --- | --- | --- |"]
        for _, a, b, ab, ba in pairs[:5]:
            lines.append(f"| {a} / {b} | {100 * ab:.1f}% | {100 * ba:.1f}% |")
        lines.append("")
    return lines


if __name__ == "__main__":
    cli()
