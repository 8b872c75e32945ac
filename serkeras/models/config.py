"""Model settings: one explicit, serialisable dataclass for every architecture."""

import dataclasses

from serkeras.config import known_fields

ACTIVATIONS = ("relu", "silu", "elu", "gelu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a model; each architecture reads the fields it uses.

    The defaults are the study's "paper" sizes. `width` scales every filter
    count (0.25 gives a CPU-friendly model with the same structure).
    `spec_augment` adds training-only time/frequency masking after standardisation.
    """

    arch: str = "2d"
    activation: str = "silu"
    dropout: float = 0.3
    filters_1d: tuple = (128, 256, 512)
    filters_2d: tuple = (32, 64, 512, 1024)
    kernel_1d: int = 5
    kernel_2d: int = 3
    head_units: int = 256
    groups: int = 8
    width: float = 1.0
    spec_augment: bool = False

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if self.width <= 0:
            raise ValueError("width must be positive")
        # Lists from JSON become tuples so configs compare and hash equal.
        object.__setattr__(self, "filters_1d", tuple(int(f) for f in self.filters_1d))
        object.__setattr__(self, "filters_2d", tuple(int(f) for f in self.filters_2d))

    def scaled(self, filters):
        """Filter counts times `width`, rounded to a multiple of `groups` (at least `groups`)."""
        return tuple(max(self.groups, int(round(f * self.width / self.groups)) * self.groups) for f in filters)

    def to_dict(self):
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, config):
        return known_fields(cls, config)

    def replace(self, **changes):
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
