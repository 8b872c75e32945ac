"""Ensembles: one functional model that averages the class probabilities of several serkeras models."""

import re

import keras
from keras import layers

from serkeras.errors import SerkerasError
from serkeras.models.blocks import finish
from serkeras.models.saving import model_metadata


def ensemble_model(models, name="ensemble"):
    """Average the probabilities of `models` in one self-contained functional model.

    Every member must share the labels and the feature settings, so one set of
    features feeds them all; the result saves to one `.keras` file and is used
    like any serkeras model (`predict`, `evaluate`, `export`). Its cost is the
    sum of the members'. A member that is itself an ensemble contributes its
    own members, so every model in the result weighs the same.

    Parameters
    ----------
    models : sequence of keras.Model
        serkeras models (from `build_model`, `load_model` or `ensemble_model`).
    """
    if len(models) < 2:
        raise SerkerasError("an ensemble needs at least two models")
    models = [member for model in models for member in ensemble_members(model)]
    metas = [model_metadata(m) for m in models]
    for meta in metas[1:]:
        if meta.labels != metas[0].labels:
            raise SerkerasError(f"ensemble members disagree on labels: {metas[0].labels} vs {meta.labels}")
        if meta.feature_config != metas[0].feature_config:
            raise SerkerasError("ensemble members need the same feature settings")
    inputs = {}
    for model in models:
        for tensor in model.inputs:
            inputs.setdefault(tensor.name, keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=tensor.name))
    probabilities = []
    for i, model in enumerate(models, 1):
        # A fresh name per member: two members may be the same architecture.
        member = keras.Model(model.inputs, model.outputs[0], name=member_name(i, model))
        probabilities.append(member([inputs[t.name] for t in model.inputs]))
    averaged = layers.Average(name="average")(probabilities)
    return finish(list(inputs.values()), averaged, metas[0].labels, metas[0].feature_config,
                  metas[0].model_config.replace(arch="ensemble"), name=name)


def ensemble_members(model):
    """The models that `model` averages if it is an ensemble (each keeps its metadata), else `[model]`."""
    if model_metadata(model).model_config.arch != "ensemble":
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


#: A member's name in an ensemble is "member<i>_" followed by the model's own name.
MEMBER_PREFIX = "member"
_PREFIXED = re.compile(rf"^{MEMBER_PREFIX}\d+_")


def member_name(i, model):
    """The name of `model` as the `i`-th member of an ensemble (a member of another ensemble loses that prefix)."""
    return f"{MEMBER_PREFIX}{i}_{_PREFIXED.sub('', model.name)}"
