"""Recipes: a run's settings as a data file (TOML), read by ``serkeras train --recipe NAME|FILE``.

A recipe names options of the command as keys, spelled as on the command line
without the dashes (``batch-size = 64``, ``lr = 3e-4``, ``augment = true``);
anything also given on the command line wins. One key is not an option:
``description``, a sentence saying what the recipe is. The recipes shipped with
serkeras live beside this module and are found by name (``--recipe crema-d-whisper-base``).
"""

import sys
from pathlib import Path

from serkeras.errors import SerkerasError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES_DIR = Path(__file__).resolve().parent


def shipped_recipes():
    """Names of the recipes that ship with serkeras."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.toml"))


def recipe_path(name_or_path):
    """The file of a recipe given as a path or by a shipped recipe's name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    raise SerkerasError(f"recipe {name_or_path} is neither a file nor a shipped recipe "
                        f"({', '.join(shipped_recipes()) or 'none'})")


#: The key of a recipe that is not an option: what the recipe is, in a sentence.
DESCRIPTION = "description"


def _load(name_or_path):
    path = recipe_path(name_or_path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SerkerasError(f"recipe {path} is not valid TOML: {exc}") from None


def read_recipe(name_or_path):
    """The settings of a recipe as {key: value}, keys as written (option names without dashes).

    Its ``description`` is left out (`recipe_description`).
    """
    recipe = _load(name_or_path)
    recipe.pop(DESCRIPTION, None)
    return recipe


def recipe_description(name_or_path):
    """The ``description`` of a recipe ("" when it has none)."""
    description = _load(name_or_path).get(DESCRIPTION, "")
    if not isinstance(description, str):
        raise SerkerasError(f"recipe {recipe_path(name_or_path)}: {DESCRIPTION} must be a string")
    return description


def option_defaults(recipe, params):
    """`recipe`'s settings keyed by the parameter names of a command's `params` (click parameters).

    A key may be an option's long name without its dashes (``batch-size``, ``lr``, or the
    ``no-`` form of a flag), or the parameter's own name (``batch_size``).
    """
    names = {}
    for param in params:
        names[param.name] = (param.name, True)
        for flag in getattr(param, "opts", []):
            names[flag.lstrip("-")] = (param.name, True)
        for flag in getattr(param, "secondary_opts", []):
            names[flag.lstrip("-")] = (param.name, False)
    unknown = sorted(key for key in recipe if key not in names)
    if unknown:
        raise SerkerasError(f"the recipe sets {', '.join(unknown)}, which this command does not take")
    defaults = {}
    for key, value in recipe.items():
        name, positive = names[key]
        defaults[name] = value if positive or not isinstance(value, bool) else not value
    return defaults
