"""Architecture registry: `--arch` name -> builder function (and the settings it needs)."""

from serkeras.errors import SerkerasError

ARCHITECTURES = {}
#: `--arch` name -> `f(feature_config, model_config) -> (feature_config, model_config)` for architectures that
#: fix some settings themselves (a pre-trained encoder fixes its features and sizes).
CONFIGURERS = {}


def register(name, configure=None):
    """Decorator: make a builder `f(feature_config, model_config, labels, stats)` available as `name`.

    `configure`, when given, turns the settings a user chose into those the
    architecture needs (see `configure`).
    """

    def decorate(builder):
        ARCHITECTURES[name] = builder
        if configure is not None:
            CONFIGURERS[name] = configure
        return builder

    return decorate


def get_builder(name):
    if name not in ARCHITECTURES:
        raise SerkerasError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def configure(feature_config, model_config):
    """The (feature_config, model_config) that `model_config.arch` is built and trained with.

    Most architectures take the settings as they are; one built on a pre-trained
    encoder replaces the feature settings the encoder was trained on and reads
    its sizes from the checkpoint. Call it before extracting features.
    """
    get_builder(model_config.arch)
    configurer = CONFIGURERS.get(model_config.arch)
    return (feature_config, model_config) if configurer is None else configurer(feature_config, model_config)
