"""The settings of a model and of its training: explicit, serialisable dataclasses.

`ModelConfig` and `TrainConfig` import no Keras, so the command line takes its
options' defaults from them without starting TensorFlow: each default is
written once, here (`FeatureConfig`, in `serkeras.features`, likewise).
`serkeras.models` and `serkeras.training` use them.
"""

import dataclasses

from serkeras.config import known_fields
from serkeras.effects import WaveAugmentation
from serkeras.errors import SerkerasError
from serkeras.head_fit import HEAD_C_GRID, HEAD_FITS


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


SCHEDULES = ("plateau", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw")
MONITORS = ("val_accuracy", "val_macro_f1", "val_loss")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of a run (serialisable). Defaults: the study's best (lr 1e-3)."""

    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    schedule: str = "plateau"
    warmup_epochs: int = 0
    patience: int = 10
    monitor: str = "val_accuracy"
    label_smoothing: float = 0.0
    ema_momentum: float = 0.0
    class_weight: bool = False
    mixup_alpha: float = 0.0
    mixed_precision: bool = False
    distribute: bool = False
    seed: int = 0
    augment_copies: int = 0
    noise_snr_db: tuple = WaveAugmentation.snr_db
    gain_db: float = WaveAugmentation.gain_db
    shift_seconds: float = WaveAugmentation.shift_seconds
    speed: float = WaveAugmentation.speed
    reverb: float = WaveAugmentation.reverb
    telephone: float = WaveAugmentation.telephone
    speaker_subsets: float = 0.0
    teacher: str = ""  # a .keras file (or shipped model name) whose probabilities the training targets mix in
    distill_weight: float = 0.5
    quantize: str = "none"  # store the trained model's Dense weights as int8 ("int8") after training
    # The learning rate of a pre-trained encoder's fine-tuned layers; None: `learning_rate`, as every layer
    # trained before the encoder had a rate of its own (`with_encoder_learning_rate` sets the default).
    encoder_learning_rate: float = None
    head_fit: str = "gradient"  # "lbfgs": fit a frozen encoder's classifier in closed form (serkeras.head_fit)
    head_c_grid: tuple = HEAD_C_GRID  # the inverse L2 strengths that "lbfgs" chooses from on validation

    def __post_init__(self):
        for value, allowed, what in ((self.schedule, SCHEDULES, "schedule"), (self.optimizer, OPTIMIZERS, "optimizer"),
                                     (self.monitor, MONITORS, "monitor")):
            if value not in allowed:
                raise SerkerasError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise SerkerasError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.mixup_alpha < 0:
            raise SerkerasError(f"mixup_alpha must be >= 0 (0: off), got {self.mixup_alpha}")
        if not 0.0 <= self.speaker_subsets <= 1.0:
            raise SerkerasError(f"speaker_subsets must be in [0, 1] (0: off), got {self.speaker_subsets}")
        if self.quantize not in ("none", "int8"):
            raise SerkerasError(f"quantize must be none or int8, got {self.quantize!r}")
        if not 0.0 < self.distill_weight <= 1.0:
            raise SerkerasError(f"distill_weight must be in (0, 1], got {self.distill_weight}")
        if self.encoder_learning_rate is not None and self.encoder_learning_rate <= 0:
            raise SerkerasError(f"encoder_learning_rate must be > 0, got {self.encoder_learning_rate}")
        if self.head_fit not in HEAD_FITS:
            raise SerkerasError(f"head_fit must be one of {', '.join(HEAD_FITS)}, got {self.head_fit!r}")
        object.__setattr__(self, "head_c_grid", tuple(float(c) for c in self.head_c_grid))
        if not self.head_c_grid or min(self.head_c_grid) <= 0:
            raise SerkerasError(f"head_c_grid must be positive inverse strengths, got {list(self.head_c_grid)}")

    def to_dict(self):
        return {**dataclasses.asdict(self), "noise_snr_db": list(self.noise_snr_db),
                "head_c_grid": list(self.head_c_grid)}

    @classmethod
    def from_dict(cls, config):
        return known_fields(cls, config)

    def separate_encoder_rate(self):
        """Whether fine-tuned encoder layers train at a learning rate of their own (not `learning_rate`)."""
        return self.encoder_learning_rate is not None and self.encoder_learning_rate != self.learning_rate

    def wave_augmentation(self):
        """The waveform augmentation of the training part, or None when `augment_copies` is 0."""
        if not self.augment_copies:
            return None
        return WaveAugmentation(tuple(self.noise_snr_db), self.gain_db, self.shift_seconds, self.speed, self.seed,
                                self.reverb, self.telephone)
