"""Model settings: one explicit, serialisable dataclass for every architecture."""

import dataclasses

from serkeras.config import known_fields

ACTIVATIONS = ("relu", "silu", "elu", "gelu")
UTTERANCE_NORMS = ("none", "mean", "meanvar")
POOLINGS = ("average", "stats", "attention")
LAYER_POOLINGS = ("last", "weighted")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a model; each architecture reads the fields it uses.

    The defaults are the study's "paper" sizes. `width` scales every filter
    count (0.25 gives a CPU-friendly model with the same structure).
    `spec_augment` adds training-only time/frequency masking after standardisation.
    `utterance_norm` removes each clip's own feature mean ("mean") or mean and
    variance ("meanvar") after the corpus-level standardisation. `pooling`
    turns frames into one vector: a masked average, or attentive statistics
    (attention-weighted mean and standard deviation).

    Fields of the newer architectures: `filters_residual` (the `resnet`
    blocks), `filters_front` (the convolutional front end of `crnn` and
    `conformer`), `rnn_units` (`crnn`'s BiGRU per direction), `encoder_layers`
    and `attention_heads` (`conformer`, `whisper`), `encoder_dim` (`whisper`),
    `attention_units` (attentive pooling). With `speaker_standardization`
    (`whisper`), the pooled embedding is standardised by the mean and variance
    of its speaker's embeddings, more model inputs (``speaker_mean``,
    ``speaker_variance``, ``speaker_count``), shrunk towards the training
    speakers' as if the population had `speaker_prior_clips` recordings.

    Fields of `whisper`: `encoder`, the pre-trained checkpoint its encoder was
    initialised from (a path; the trained weights travel in the model file),
    `fine_tune_layers`, how many of the kept `encoder_layers` train (0: the
    encoder is frozen), and `layer_pooling`, what is pooled: the last kept
    layer, or a learnt weighted sum of every kept layer ("weighted").
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
    utterance_norm: str = "none"
    pooling: str = "average"
    filters_residual: tuple = (256, 256, 256, 256)
    filters_front: tuple = (32, 64, 128)
    rnn_units: int = 128
    encoder_layers: int = 2
    encoder_dim: int = 512
    attention_heads: int = 4
    attention_units: int = 128
    speaker_standardization: bool = False
    speaker_prior_clips: float = 0.0
    encoder: str = ""
    fine_tune_layers: int = 0
    layer_pooling: str = "last"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.utterance_norm not in UTTERANCE_NORMS:
            raise ValueError(f"utterance_norm must be one of {UTTERANCE_NORMS}, got {self.utterance_norm!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if self.width <= 0:
            raise ValueError("width must be positive")
        if self.layer_pooling not in LAYER_POOLINGS:
            raise ValueError(f"layer_pooling must be one of {LAYER_POOLINGS}, got {self.layer_pooling!r}")
        if not 0 <= self.fine_tune_layers <= self.encoder_layers:
            raise ValueError(f"fine_tune_layers must be between 0 and encoder_layers ({self.encoder_layers})")
        if self.speaker_prior_clips < 0:
            raise ValueError("speaker_prior_clips must be >= 0")
        # Lists from JSON become tuples so configs compare and hash equal.
        for name in ("filters_1d", "filters_2d", "filters_residual", "filters_front"):
            object.__setattr__(self, name, tuple(int(f) for f in getattr(self, name)))

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
