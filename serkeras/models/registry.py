"""Architecture registry: `--arch` name -> builder function."""

from serkeras.errors import SerkerasError

ARCHITECTURES = {}


def register(name):
    """Decorator: make a builder `f(feature_config, model_config, labels, stats)` available as `name`."""

    def decorate(builder):
        ARCHITECTURES[name] = builder
        return builder

    return decorate


def get_builder(name):
    if name not in ARCHITECTURES:
        raise SerkerasError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]
