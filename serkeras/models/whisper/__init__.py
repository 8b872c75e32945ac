"""`whisper`: a pre-trained Whisper encoder (backbone), pooled, and a classifier (task model).

Following keras-hub's split: `whisper_backbone` is the backbone (usable alone,
`load_whisper_backbone` fills it from a checkpoint),
`build_whisper` the emotion classifier on top (registered as ``--arch whisper``),
and `convert` reads the weights of each published format. A pre-trained checkpoint
is what makes this architecture worth having: ``serkeras train --arch whisper
--encoder PATH`` starts from it, keeps its first ``--encoder-layers``, trains the
top ``--fine-tune-layers`` of those (0: frozen) and the classifier. The saved
``.keras`` file holds every weight; loading it needs no checkpoint.
"""

import dataclasses
import functools
from pathlib import Path

import keras
from keras import layers

from serkeras.errors import SerkerasError
from serkeras.models.blocks import (EMBEDDING_LAYER, SPEAKER_HEAD, finish, lengths_input, pool_over_time,
                                    speaker_head, speaker_statistics_inputs)
from serkeras.models.layers import LengthMask, WeightedLayerSum
from serkeras.models.registry import register
from serkeras.models.whisper.backbone import (ENCODER_VARIABLES, backbone_layers, encoder_layer, encoder_parameters,
                                              freeze_lower_layers, layers_by_name, load_whisper_backbone,
                                              set_encoder_weights, whisper_backbone, whisper_encoder)
from serkeras.models.whisper.convert import FORMATS, EncoderSizes, EncoderWeights, read_checkpoint

#: Whisper's log-mel: 25 ms windows every 10 ms at 16 kHz, mel bands from 0 to 8 kHz, the clip at the level it
#: was recorded (Whisper's own scaling, inside the model, replaces peak normalisation; `level_dbfs`, kept as given,
#: can level it first). It was trained on up to 30 s of audio.
WHISPER_FEATURES = dict(sample_rate=16000, n_fft=400, win_length=400, hop_length=160, fmin=0.0, fmax=8000.0,
                        audio_normalization="none", length_mode="variable")
WHISPER_MAX_SECONDS = 30.0
ENCODER_LAYER = "whisper_encoder"


def whisper_feature_config(n_mels=80, base=None):
    """`base` (a `serkeras.features.FeatureConfig`, default the defaults) with Whisper's log-mel settings."""
    from serkeras.features import FeatureConfig

    base = base or FeatureConfig()
    return dataclasses.replace(base, n_mels=n_mels, max_seconds=min(base.max_seconds, WHISPER_MAX_SECONDS),
                               **WHISPER_FEATURES)


@functools.lru_cache(maxsize=1)
def _checkpoint(path, modified):
    return read_checkpoint(path)


def cached_checkpoint(path):
    """`read_checkpoint(path)`, read once while the file is unchanged (configuring and building both need it)."""
    target = Path(path)
    weights = target / "model.bin" if (target / "model.bin").is_file() else target
    return _checkpoint(str(path), weights.stat().st_mtime if weights.exists() else None)


def configure_whisper(feature_config, model_config):
    """The feature and model settings a `whisper` model needs: Whisper's log-mel and the checkpoint's sizes.

    The checkpoint `model_config.encoder` gives the mel bands, width and heads,
    and `encoder_layers` is checked against its depth. The feature
    settings that a Whisper encoder fixes (window, hop, mel range, level) are
    replaced; the length limits and `speaker_*` stay as given.
    """
    if not model_config.encoder:
        raise SerkerasError("--arch whisper needs --encoder PATH: a Whisper checkpoint (a faster-whisper folder, a "
                            "Hugging Face openai/whisper-* folder or an OpenAI .pt file)")
    sizes = cached_checkpoint(model_config.encoder).sizes
    if model_config.encoder_layers > sizes.n_layers:
        raise SerkerasError(f"--encoder-layers {model_config.encoder_layers}: the encoder in {model_config.encoder} "
                            f"has {sizes.n_layers}")
    model_config = model_config.replace(encoder_dim=sizes.dim, attention_heads=sizes.heads)
    return whisper_feature_config(sizes.n_mels, feature_config), model_config


@register("whisper", configure=configure_whisper)
def build_whisper(feature_config, model_config, labels, stats=None):
    """Whisper encoder layers -> pooling over time -> batch normalisation -> dropout -> softmax.

    The encoder (`whisper_backbone`, nested as layer ``whisper_encoder``) keeps the
    first `model_config.encoder_layers` layers of the checkpoint
    `model_config.encoder` (random weights of `encoder_dim` / `attention_heads`
    when it is empty, to be filled by `set_encoder_weights`); the top
    `fine_tune_layers` of them train. What is pooled (`pooling`: mean,
    mean-and-std "stats", or attentive statistics) is the last kept layer, or a
    learnt weighted sum of all of them (`layer_pooling="weighted"`). `stats` is
    not used: Whisper's scaling replaces the corpus standardisation. With
    `model_config.speaker_standardization`, the pooled embedding is
    standardised by the speaker's and classified in a nested model (see
    `serkeras.models.blocks.speaker_head`).
    """
    if feature_config.length_mode != "variable":
        raise SerkerasError("the whisper architecture reads whole clips: use --length variable")
    if model_config.encoder:
        checkpoint = cached_checkpoint(model_config.encoder)
        if checkpoint.sizes.n_mels != feature_config.n_mels:
            raise SerkerasError(f"the encoder in {model_config.encoder} reads {checkpoint.sizes.n_mels} mel bands, "
                                f"the features have {feature_config.n_mels}")
        encoder = whisper_backbone(checkpoint.sizes.n_mels, checkpoint.sizes.dim, checkpoint.sizes.heads,
                                   model_config.encoder_layers, name=ENCODER_LAYER)
        set_encoder_weights(encoder, checkpoint.weights)
    else:
        encoder = whisper_backbone(feature_config.n_mels, model_config.encoder_dim, model_config.attention_heads,
                                   model_config.encoder_layers, name=ENCODER_LAYER)
    freeze_lower_layers(encoder, model_config.fine_tune_layers)
    lengths = lengths_input(feature_config)
    logmel = keras.Input(shape=(None, feature_config.n_mels), name="logmel")
    *frames, pooled_lengths = encoder([logmel, lengths])
    x = WeightedLayerSum(name="layer_sum")(frames) if model_config.layer_pooling == "weighted" else frames[-1]
    x = pool_over_time(x, pooled_lengths, model_config, name=EMBEDDING_LAYER)
    speaker = []
    if model_config.speaker_standardization:
        speaker = speaker_statistics_inputs(x.shape[-1])
        probabilities = speaker_head(x.shape[-1], len(labels), model_config.speaker_prior_clips)([x, *speaker])
    else:
        # The pooled statistics differ in scale by orders of magnitude between channels (Whisper has a few
        # large-valued ones): standardise them, as a linear probe's scaler would, before the classifier.
        x = layers.BatchNormalization(name="embedding_norm")(x)
        if model_config.dropout:
            x = layers.Dropout(model_config.dropout, name="head_dropout")(x)
        probabilities = layers.Dense(len(labels), activation="softmax", dtype="float32", name="probabilities")(x)
    return finish([logmel, lengths, *speaker], probabilities, labels, feature_config, model_config, name="whisper")


def frozen_layers(model):
    """How many of a `whisper` model's encoder layers, from the bottom, are frozen."""
    encoder = model.get_layer(ENCODER_LAYER)
    found = layers_by_name(encoder)
    n_layers = backbone_layers(encoder)
    return next((i for i in range(n_layers) if found[f"layer{i}_attention"].trainable), n_layers)


def frozen_front(model):
    """The frozen part of a `whisper` model's encoder as a model of its own (see `frozen_stages`).

    It maps ``logmel`` and ``lengths`` to the last frozen layer's frames (with a
    weighted sum of layers, every frozen layer's first, in order), then the
    halved lengths. Built from the encoder's own layers, so its outputs are
    those of the whole model; a model standardised by speaker has the same
    front as one that is not.
    """
    encoder = model.get_layer(ENCODER_LAYER)
    found = layers_by_name(encoder)
    frozen = frozen_layers(model)
    weighted = "layer_sum" in {layer.name for layer in model.layers}
    start = found[f"layer{frozen - 1}_ffn_add"].output if frozen else found["positions"].output
    carried = [found[f"layer{i}_ffn_add"].output for i in range(frozen - 1)] if weighted else []
    lengths = found["conv2_lengths"].output
    return keras.Model(encoder.inputs, [*carried, start, lengths], name="whisper_frozen_layers")


def _by_speaker(model):
    """Whether `model` standardises its pooled embedding by speaker (`serkeras.models.speaker_stages`)."""
    return SPEAKER_HEAD in {layer.name for layer in model.layers}


def _classifier(model, x):
    """`model`'s layers after its pooled embedding (normalisation, dropout, softmax), called on `x`."""
    names = {layer.name for layer in model.layers}
    for name in ("embedding_norm", "head_dropout"):
        if name in names:
            x = model.get_layer(name)(x)
    return model.get_layer("probabilities")(x)


def frozen_stages(model):
    """A `whisper` model cut where its frozen encoder layers end, or None for any other model.

    Training needs the frozen layers' outputs only once per clip: `front` computes
    them, `trained` (built from the same layer objects, so training it trains
    `model`) runs the rest. In a model whose embedding is standardised by speaker
    (`model_config.speaker_standardization`), `trained` ends at the pooled
    embedding: its classifier (`serkeras.models.speaker_stages`) needs the
    statistics of all of a speaker's embeddings.

    Returns
    -------
    (front, trained) : (keras.Model, keras.Model)
        `front` maps the model's inputs (``logmel``, ``lengths``) to the frames
        that the trained layers read, ``frames0`` ... (the last frozen layer's
        output, and with a weighted sum of layers every frozen layer's, in
        order), then the halved ``lengths``; `trained` maps those to the class
        probabilities (or, standardised by speaker, to the pooled embedding).
    """
    stages = embedding_stages(model)
    if stages is None:
        return None
    front, pooling = stages
    embedding = pooling.outputs[0]
    output = embedding if _by_speaker(model) else _classifier(model, embedding)
    return front, keras.Model(pooling.inputs, output, name="whisper_trained_layers")


def embedding_stages(model):
    """A `whisper` model cut at its frozen layers and at its pooled embedding, or None for any other model.

    Returns
    -------
    (front, pooling) : (keras.Model, keras.Model)
        `front` as in `frozen_stages` (so their cached outputs are shared);
        `pooling` maps its outputs through any trained encoder layers to the
        pooled embedding (layer `EMBEDDING_LAYER`, shared with `model`).
    """
    try:
        encoder = model.get_layer(ENCODER_LAYER)
    except ValueError:
        return None
    front = frozen_front(model)
    found = layers_by_name(encoder)
    n_layers = backbone_layers(encoder)
    frozen = frozen_layers(model)
    carried = front.outputs[:-2]

    dim = front.outputs[-2].shape[-1]
    inputs = [keras.Input(shape=(None, dim), name=f"frames{j}") for j in range(len(carried) + 1)]
    pooled_lengths = keras.Input(shape=(), dtype="int32", name="lengths")
    x = inputs[-1]
    mask = LengthMask(name="frame_mask")(x, pooled_lengths)
    outputs = list(inputs) if frozen else []
    heads = found["layer0_attention"].num_heads
    for i in range(frozen, n_layers):
        x = encoder_layer(x, mask, dim, heads, f"layer{i}", reuse=found)
        outputs.append(x)
    if "layer_sum" in {layer.name for layer in model.layers}:
        x = model.get_layer("layer_sum")(outputs)
    embedding = model.get_layer(EMBEDDING_LAYER)(x, pooled_lengths)
    return front, keras.Model([*inputs, pooled_lengths], embedding, name="whisper_pooling")


def fixed_embedding_stages(model):
    """A `whisper` model whose pooled embedding has no trainable weight below it, cut at that embedding.

    With every kept encoder layer frozen and pooling without weights (mean, or
    mean and standard deviation, of the last layer), each clip's embedding is
    fixed: training computes it once and fits the classifier on embeddings
    alone, a thousand numbers per clip instead of every frame. None for any
    other model, and for one standardised by speaker (`serkeras.models.speaker_stages`).

    Returns
    -------
    (front, pooling, head) : (keras.Model, keras.Model, keras.Model)
        `front` as in `frozen_stages`; `pooling` maps its outputs to the
        embedding; `head` (its layers shared with `model`, so training it
        trains `model`) maps ``embedding`` to the class probabilities.
    """
    if _by_speaker(model):
        return None
    stages = embedding_stages(model)
    if stages is None or stages[1].trainable_weights:
        return None
    front, pooling = stages
    head_input = keras.Input(shape=(pooling.outputs[0].shape[-1],), name="embedding")
    head = keras.Model({"embedding": head_input}, _classifier(model, head_input), name="whisper_classifier")
    return front, pooling, head


__all__ = ["ENCODER_LAYER", "ENCODER_VARIABLES", "EncoderSizes", "EncoderWeights", "FORMATS", "WHISPER_FEATURES",
           "backbone_layers", "build_whisper", "configure_whisper", "embedding_stages", "encoder_layer",
           "encoder_parameters",
           "fixed_embedding_stages", "freeze_lower_layers", "frozen_front", "frozen_layers", "frozen_stages",
           "load_whisper_backbone", "whisper_backbone",
           "read_checkpoint", "set_encoder_weights", "whisper_encoder", "whisper_feature_config"]
