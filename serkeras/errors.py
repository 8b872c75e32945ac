"""Errors that reach the user as one clear line (the CLI prints no traceback)."""


class SerkerasError(Exception):
    """A user-facing error: bad input, missing data, an incompatible model."""


class DataError(SerkerasError):
    """The corpus or an audio file cannot be used."""


class ModelFileError(SerkerasError):
    """A `.keras` file is missing, corrupt, or not a serkeras model."""
