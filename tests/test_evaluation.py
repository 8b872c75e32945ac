"""The metrics of a report: accuracy and UA over the classes the evaluated clips have."""

import numpy as np
import pytest

from serkeras.evaluation import classification_report, format_report


def test_ua_is_the_mean_recall_of_the_classes_the_clips_have():
    labels = ["anger", "disgust", "sad"]
    y_true = [0, 0, 0, 0, 2, 2]  # no disgust among the clips, as in ASED
    y_pred = [0, 0, 0, 1, 2, 0]
    report = classification_report(y_true, y_pred, labels)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["unweighted_average_recall"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # not divided by 3 classes
    f1_anger, f1_sad = 2 * 0.75 * 0.75 / 1.5, 2 * 1.0 * 0.5 / 1.5
    assert report["macro_f1"] == pytest.approx((f1_anger + f1_sad) / 2)
    assert report["per_class"]["disgust"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert np.array(report["confusion_matrix"]).sum() == 6
    assert "UA 0.6250" in format_report(report).splitlines()[0]
