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


def _tiny_model():
    from serkeras.features import FeatureConfig
    from serkeras.models import ModelConfig, build_model

    config = FeatureConfig()
    model = build_model(config, ModelConfig(arch="1d", width=0.0625, head_units=16), ["a", "b", "c"])
    return config, model


def test_several_batches_are_predicted_through_one_trace_and_one_batch_through_keras():
    """Keras' predict_on_batch traces again for each new length and for the smaller last batch; several
    batches go through one trace for any shape instead, and give the same probabilities."""
    import keras

    import serkeras.evaluation as evaluation
    from serkeras.evaluation import predict_features

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the single trace is TensorFlow's (JAX compiles per shape)")
    config, model = _tiny_model()
    rng = np.random.default_rng(0)
    clips = [{"logmel": rng.normal(-40, 10, (n, config.n_mels)).astype(np.float32),
              "spectral": rng.normal(0, 1, (n, config.n_spectral)).astype(np.float32)}
             for n in (50, 90, 130, 170, 210, 250, 33)]
    one_batch = predict_features(model, clips[:2], "variable", batch_size=4)
    assert model not in evaluation._COMPILED  # one batch: Keras' trace of its exact shape
    several = predict_features(model, clips, "variable", batch_size=2)  # 4 batches, 4 lengths, the last of 1
    [trace] = evaluation._COMPILED[model].values()
    assert trace.experimental_get_tracing_count() == 1
    alone = np.concatenate([predict_features(model, [clip], "variable") for clip in clips])
    np.testing.assert_allclose(several, alone, atol=1e-5)
    np.testing.assert_allclose(one_batch, alone[:2], atol=1e-5)


def test_one_model_is_predicted_at_two_fixed_lengths():
    """The trace for any batch is kept per input signature: the same model fed clips fitted to another fixed
    length gets a trace of its own, not a shape error."""
    import keras

    from serkeras.evaluation import predict_features

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the single trace is TensorFlow's")
    config, model = _tiny_model()
    rng = np.random.default_rng(1)
    clips = [{"logmel": rng.normal(-40, 10, (n, config.n_mels)).astype(np.float32),
              "spectral": rng.normal(0, 1, (n, config.n_spectral)).astype(np.float32)} for n in (60, 120, 180)]
    for frames in (100, 150):
        several = predict_features(model, clips, "fixed", fixed_frames=frames, batch_size=2)
        alone = np.concatenate([predict_features(model, [clip], "fixed", fixed_frames=frames) for clip in clips])
        np.testing.assert_allclose(several, alone, atol=1e-5)


def test_a_training_and_a_validation_step_are_each_traced_once():
    """Keras creates the optimizer's variables and macro-F1's counts inside the first traced step unless they
    exist: TensorFlow then traces that step twice. `compile_model` creates them first."""
    import keras

    from serkeras.pipeline import make_dataset
    from serkeras.training import TrainConfig, compile_model

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tracing is TensorFlow's")
    config, model = _tiny_model()
    rng = np.random.default_rng(0)
    clips = [{"logmel": rng.normal(-40, 10, (n, config.n_mels)).astype(np.float32),
              "spectral": rng.normal(0, 1, (n, config.n_spectral)).astype(np.float32)} for n in (60, 70, 80, 90)]
    data = make_dataset(clips, np.array([0, 1, 2, 0]), 3, batch_size=2, input_names=("logmel", "spectral", "lengths"))
    compile_model(model, TrainConfig(), steps_per_epoch=2)
    traces = {"train_step": 0, "test_step": 0}
    for name in traces:  # a compiled step's Python body runs once per trace
        step = getattr(model, name)
        setattr(model, name, lambda data, step=step, name=name: traces.update({name: traces[name] + 1}) or step(data))
    model.fit(data, validation_data=data, epochs=1, verbose=0, shuffle=False)
    assert traces == {"train_step": 1, "test_step": 1}
