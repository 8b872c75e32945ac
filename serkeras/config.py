"""One way to turn the settings dataclasses into JSON-ready dicts and back."""

import dataclasses


def known_fields(cls, config):
    """Build dataclass `cls` from `config`, ignoring keys it does not know (e.g. from newer versions)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})
