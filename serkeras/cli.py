"""The `serkeras` command line: features, train, evaluate, predict, tune, export."""

import functools
import os
import sys
import warnings

import click

from serkeras import __version__
from serkeras.errors import SerkerasError

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


class SerkerasGroup(click.Group):
    """Prints user errors as one line (traceback only with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SerkerasError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: work finished so far is kept (cache entries, checkpoints)", err=True)
            sys.exit(130)


@click.group(cls=SerkerasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="serkeras")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def main(ctx, debug):
    """Speech emotion recognition with Keras 3."""
    ctx.ensure_object(dict)["debug"] = debug
    warnings.showwarning = _show_warning


def data_options(f):
    """--data-dir / --manifest / --cache-dir, shared by every command that reads a corpus."""
    f = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Feature cache (default $SERKERAS_CACHE_DIR or data/cache).")(f)
    f = click.option("--manifest", type=click.Path(dir_okay=False), default=None,
                     help="CSV with path,label[,speaker] columns instead of a CREMA-D folder.")(f)
    f = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="CREMA-D folder (default $SERKERAS_DATA_DIR or data/Crema).")(f)
    return f


def feature_options(f):
    """Feature settings; defaults are `FeatureConfig`'s."""
    from serkeras.features import FeatureConfig

    d = FeatureConfig()
    options = [
        click.option("--length", "length_mode", type=click.Choice(["variable", "fixed"]), default=d.length_mode,
                     show_default=True, help="Whole clips (bucketed, padded, with lengths) or crop/pad to --seconds."),
        click.option("--seconds", "fixed_seconds", type=click.FloatRange(min=0.5), default=d.fixed_seconds,
                     show_default=True, help="Clip length in fixed mode."),
        click.option("--sample-rate", type=click.IntRange(min=8000), default=d.sample_rate, show_default=True),
        click.option("--n-mels", type=click.IntRange(min=8), default=d.n_mels, show_default=True),
        click.option("--n-fft", type=click.IntRange(min=64), default=d.n_fft, show_default=True),
        click.option("--win-length", type=click.IntRange(min=16), default=d.win_length, show_default=True),
        click.option("--hop-length", type=click.IntRange(min=16), default=d.hop_length, show_default=True),
        click.option("--fmin", type=click.FloatRange(min=0), default=d.fmin, show_default=True),
        click.option("--fmax", type=click.FloatRange(min=100), default=d.fmax, show_default=True),
        click.option("--n-mfcc", type=click.IntRange(min=2), default=d.n_mfcc, show_default=True),
        click.option("--audio-normalization", type=click.Choice(["peak", "rms", "none"]),
                     default=d.audio_normalization, show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def feature_config_from(kwargs):
    """Pop the feature options out of a command's kwargs into a FeatureConfig."""
    from serkeras.features import FeatureConfig

    names = ("length_mode", "fixed_seconds", "sample_rate", "n_mels", "n_fft", "win_length", "hop_length",
             "fmin", "fmax", "n_mfcc", "audio_normalization")
    try:
        return FeatureConfig(**{n: kwargs.pop(n) for n in names})
    except ValueError as exc:
        raise SerkerasError(f"bad feature settings: {exc}") from None


@main.command()
@data_options
@feature_options
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Extraction processes (default: all cores).")
def features(data_dir, manifest, cache_dir, workers, **kwargs):
    """Precompute and cache features for a corpus; report counts, skips and time."""
    from serkeras.cache import cached_features, resolve_cache_dir
    from serkeras.corpus import load_corpus

    config = feature_config_from(kwargs)
    corpus = load_corpus(data_dir, manifest)
    result = cached_features(corpus.clips, config, cache_dir, workers=workers)
    rate = result.computed / result.seconds if result.computed and result.seconds else 0.0
    click.echo(f"{corpus.name}: {len(corpus)} clips, {len(result.features)} with features, "
               f"{len(result.skipped)} skipped; computed {result.computed}, reused {result.reused} from cache "
               f"in {result.seconds:.1f} s" + (f" ({rate:.1f} clips/s)" if rate else ""))
    click.echo(f"cache: {resolve_cache_dir(cache_dir) / config.extraction_key()}")


if __name__ == "__main__":
    main()
