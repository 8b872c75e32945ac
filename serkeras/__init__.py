"""serkeras: speech emotion recognition with Keras 3."""

__version__ = "0.1.0"

from serkeras.errors import SerkerasError  # noqa: E402,F401
