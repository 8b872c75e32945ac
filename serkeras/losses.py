"""Training targets for clips whose corpus lacks some classes (partial labels), and the loss and metric on them.

When corpora with different label sets are trained together (ASED has no
disgust), a clip of a corpus without "disgust" is neither a positive nor a
negative example of disgust. Its target row marks the classes its corpus lacks
with -1 (`partial_targets`); `PartialLabelCrossentropy` is the cross-entropy of
the softmax renormalised over the clip's known classes, so the model is neither
penalised for giving such a clip some disgust nor taught that disgust never
happens. The model itself is unchanged: it still predicts every class.
"""

import keras
import numpy as np
from keras import ops

#: Marks, in a target row, a class that the clip's corpus does not have.
UNKNOWN = -1.0


def partial_targets(labels, masks):
    """Target rows for `labels` whose classes outside `masks` are `UNKNOWN`.

    Parameters
    ----------
    labels : sequence of int, or array of shape (clips, classes)
        Class indices, or soft targets (zero outside the mask).
    masks : array of bool, shape (clips, classes)
        True where the clip's corpus has the class (`serkeras.corpus.Corpus.label_masks`).

    Returns
    -------
    ndarray of float32, shape (clips, classes)
    """
    masks = np.asarray(masks, bool)
    labels = np.asarray(labels)
    targets = labels.astype(np.float32) if labels.ndim == 2 else np.eye(masks.shape[1], dtype=np.float32)[labels]
    return np.where(masks, targets, np.float32(UNKNOWN)).astype(np.float32)


@keras.saving.register_keras_serializable(package="serkeras")
class PartialLabelCrossentropy(keras.losses.Loss):
    """Cross-entropy of the predicted probabilities renormalised over each clip's known classes.

    For probabilities `p` and a target row whose known classes (entries >= 0)
    form the set K, the loss is ``-sum_{k in K} t_k * log(p_k / sum_{j in K} p_j)``
    (a masked softmax: for a softmax output, the softmax of the logits of K
    alone). When every class is known it is `keras.losses.CategoricalCrossentropy`.
    Label smoothing spreads its share over the known classes only.

    Parameters
    ----------
    label_smoothing : float
    name, reduction, dtype
        As for `keras.losses.Loss`.
    """

    def __init__(self, label_smoothing=0.0, name="partial_label_crossentropy", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        known = ops.cast(ops.greater_equal(y_true, 0.0), y_pred.dtype)
        targets = ops.maximum(y_true, 0.0)
        if self.label_smoothing:
            n_known = ops.maximum(ops.sum(known, axis=-1, keepdims=True), 1.0)
            targets = targets * (1.0 - self.label_smoothing) + known * (self.label_smoothing / n_known)
        epsilon = keras.config.epsilon()
        probabilities = ops.clip(y_pred, epsilon, 1.0)
        known_mass = ops.maximum(ops.sum(probabilities * known, axis=-1, keepdims=True), epsilon)
        return -ops.sum(targets * (ops.log(probabilities) - ops.log(known_mass)), axis=-1)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="serkeras")
class PartialLabelF1Score(keras.metrics.F1Score):
    """`keras.metrics.F1Score` of `partial_targets`: classes marked `UNKNOWN` count as negatives.

    A clip's predicted class outside its corpus's labels is then a false
    positive of that class, as it is in evaluation.
    """

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(ops.maximum(ops.cast(y_true, y_pred.dtype), 0.0), y_pred, sample_weight)
