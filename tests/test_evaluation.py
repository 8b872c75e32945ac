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


def test_expected_calibration_error_is_the_gap_between_confidence_and_accuracy():
    from serkeras.evaluation import expected_calibration_error

    # 80% confident and right 8 times in 10: calibrated.
    calibrated = np.array([[0.8, 0.2]] * 10)
    assert expected_calibration_error([0] * 8 + [1] * 2, calibrated) == pytest.approx(0.0)
    # Certain and right half the time: off by 0.5.
    certain = np.array([[1.0, 0.0]] * 4)
    assert expected_calibration_error([0, 0, 1, 1], certain) == pytest.approx(0.5)
    # Two bins, weighted by their clips: 0.9-confident and always right (gap 0.1, 2 clips), 0.6-confident and
    # never right (gap 0.6, 2 clips).
    mixed = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    assert expected_calibration_error([0, 0, 1, 0], mixed) == pytest.approx((2 * 0.1 + 2 * 0.6) / 4)


def test_a_report_of_probabilities_says_how_calibrated_they_are():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    y_true = [0, 1, 1, 2]
    report = classification_report(y_true, probabilities.argmax(axis=1), ["a", "b", "c"], probabilities=probabilities)
    assert report["mean_confidence"] == pytest.approx(np.mean([0.7, 0.8, 0.6, 0.6]))
    assert report["expected_calibration_error"] > 0 and "ECE" in format_report(report).splitlines()[0]
    assert "expected_calibration_error" not in classification_report(y_true, probabilities.argmax(axis=1), list("abc"))
