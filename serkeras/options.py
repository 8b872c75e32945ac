"""Click pieces that the `serkeras` command line shares with scripts built on serkeras (experiments/): a
command group that prints user errors as one line, and the options of scoring a model."""

import sys

import click

from serkeras.errors import SerkerasError


class SerkerasGroup(click.Group):
    """A command group that prints a `SerkerasError` as one line and exits with 1 (a traceback only with the
    root context's ``debug``), and an interruption as what was kept, exiting with 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SerkerasError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:  # a command may say what was kept and how to go on
            click.echo(f"interrupted: {str(exc) or 'work finished so far is kept (cache entries, checkpoints)'}", err=True)
            sys.exit(130)


#: `--tta-copies` of `serkeras evaluate` and `predict` (`serkeras.evaluation.predict_clips`' `copies`).
tta_option = click.option(
    "--tta-copies", type=click.IntRange(min=0), default=0, show_default=True,
    help="Test-time augmentation: average each clip's probabilities with those of this many augmented copies "
         "(speed 0.9-1.1, shift, gain, noise at 10-30 dB SNR: like the augmented recipes' training copies). "
         "Costs that many more feature extractions and forward passes; for models trained on such copies.")

#: `--speaker-stats` of `serkeras evaluate` (`serkeras.api.speaker_reference_clips`).
speaker_stats_option = click.option(
    "--speaker-stats", type=click.Choice(["part", "corpus"]), default="part", show_default=True,
    help="For a model that normalises by speaker: take each speaker's statistics from their clips in the "
         "evaluated part, or from all their clips in the corpus (unlabelled; for a random split, whose parts "
         "share speakers).")
