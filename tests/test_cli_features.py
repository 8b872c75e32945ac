"""The `serkeras` command group and its `features` command, run in-process with CliRunner."""

import os
import re
from pathlib import Path
import warnings

import pytest
from click.testing import CliRunner

from serkeras import __version__
from serkeras.cli import main
from serkeras.corpus import DATA_DIR_ENV
from serkeras.features import FeatureConfig
from serkeras.shipped import default_model, model_names, shipped_models

SHIPPED_MODELS = model_names()
SHIPPED_MODEL = default_model().file


@pytest.fixture
def runner(monkeypatch):
    # `main` installs its own warning printer; keep that from leaking into other tests.
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    return CliRunner()


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def test_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"serkeras, version {__version__}"


def test_group_help(runner):
    for flag in ("--help", "-h"):
        result = runner.invoke(main, [flag])
        assert result.exit_code == 0
        assert "Speech emotion recognition with Keras 3." in result.output
        assert "features" in result.output and "--debug" in result.output


def test_features_help(runner):
    result = runner.invoke(main, ["features", "--help"])
    assert result.exit_code == 0
    for option in ("--data-dir", "--manifest", "--cache-dir", "--workers", "--length", "--n-mels", "--hop-length",
                   "--audio-normalization"):
        assert option in result.output
    assert "Precompute and cache features" in result.output


def test_no_commands_help_imports_tensorflow():
    """`serkeras <command> --help` answers at once: TensorFlow (seconds to import) and SciPy's signal module (a
    second) are not loaded for it."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from serkeras.cli import main\n"
              "for name in sorted(main.commands):\n"
              "    try:\n"
              "        main([name, '--help'], standalone_mode=False)\n"
              "    except SystemExit:\n"
              "        pass\n"
              "    print('loaded', name, [m for m in ('tensorflow', 'keras', 'scipy.signal') "
              "if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    loaded = [line for line in result.stdout.splitlines() if line.startswith("loaded ")]
    assert {line.split()[1] for line in loaded} >= {"features", "train", "evaluate", "predict", "export", "tune"}
    assert all(line.endswith(" []") for line in loaded), loaded
    assert "--arch NAME" in result.stdout and "--speaker NAME" in result.stdout


def test_features_computes_then_reuses(runner, real_clips, tmp_path):
    cache = tmp_path / "cache"
    args = ["features", "--data-dir", str(real_clips.folder), "--cache-dir", str(cache), "--workers", "1"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"^crema-d: 12 clips, 12 with features, 0 skipped; computed 12, reused 0 from cache in "
                     r"[\d.]+ s \([\d.]+ clips/s\)$", result.stdout, re.M), result.stdout
    key_folder = cache / FeatureConfig().extraction_key()
    assert f"cache: {key_folder}" in result.stdout
    assert len(list(key_folder.glob("*.npz"))) == 12
    again = runner.invoke(main, args)
    assert again.exit_code == 0
    assert "computed 0, reused 12 from cache" in again.stdout
    # Other settings go to another folder.
    other = runner.invoke(main, args + ["--n-mels", "40"])
    assert other.exit_code == 0 and "computed 12, reused 0" in other.stdout
    assert f"cache: {cache / FeatureConfig(n_mels=40).extraction_key()}" in other.stdout


def test_cache_command_lists_and_prunes(runner, real_clips, tmp_path):
    import time

    cache = tmp_path / "cache"
    extracted = runner.invoke(main, ["features", "--data-dir", str(real_clips.folder), "--cache-dir", str(cache),
                                     "--workers", "1", "--n-mels", "40"])
    assert extracted.exit_code == 0, extracted.output
    result = runner.invoke(main, ["cache", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    summary, folder = _lines(result.stdout)
    assert re.fullmatch(rf"{re.escape(str(cache))}: 1 settings folder, 12 entries, [\d.]+ MiB", summary), summary
    assert folder.split()[:3] == [FeatureConfig(n_mels=40).extraction_key(), "12", "entries"]
    assert f"last used {time.strftime('%Y-%m-%d')}" in folder and folder.endswith("n_mels=40")
    pruned = runner.invoke(main, ["cache", "--cache-dir", str(cache), "--prune-unused-days", "0"])
    assert pruned.exit_code == 0, pruned.output
    removed, summary = _lines(pruned.stdout)
    assert re.fullmatch(r"removed 12 entries unused for 0 days \([\d.]+ MiB\)", removed), removed
    assert summary == f"{cache}: 0 settings folders, 0 entries, 0.0 MiB"
    missing = runner.invoke(main, ["cache", "--cache-dir", str(tmp_path / "none")])
    assert missing.exit_code == 1 and _lines(missing.stderr) == [f"error: no feature cache at {tmp_path / 'none'}"]


def test_features_reports_skipped_files(runner, real_clips, tmp_path):
    (real_clips.folder / "1001_DFA_ANG_XX.wav").write_bytes(b"not audio at all, just bytes" * 10)
    (real_clips.folder / "readme_clip.wav").write_bytes(b"x")
    result = runner.invoke(main, ["features", "--data-dir", str(real_clips.folder), "--cache-dir",
                                  str(tmp_path / "c"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "crema-d: 13 clips, 12 with features, 1 skipped; computed 12, reused 0" in result.stdout
    warnings_printed = [line for line in _lines(result.stderr) if line.startswith("warning: ")]
    assert any("skipped 1 files: readme_clip.wav" in line for line in warnings_printed)
    assert any("skipped 1 audio files: 1001_DFA_ANG_XX.wav: unreadable audio" in line for line in warnings_printed)
    assert "Traceback" not in result.output


def test_features_missing_data_dir_is_one_line_error(runner, tmp_path):
    result = runner.invoke(main, ["features", "--data-dir", str(tmp_path / "missing"), "--cache-dir",
                                  str(tmp_path / "c")])
    assert result.exit_code == 1
    assert result.stdout == ""
    errors = _lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: data folder ") and "does not exist" in errors[0]
    assert "CREMA-D" in errors[0] and "--data-dir" in errors[0]
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_features_default_data_dir_missing(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["features", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 1
    errors = _lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: data folder data/Crema does not exist: get CREMA-D")


def test_features_bad_settings_are_one_line_errors(runner, real_clips, tmp_path):
    result = runner.invoke(main, ["features", "--data-dir", str(real_clips.folder), "--cache-dir",
                                  str(tmp_path / "c"), "--fmax", "12000"])
    assert result.exit_code == 1
    errors = _lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: bad feature settings: ")
    assert not (tmp_path / "c").exists()


def test_debug_shows_the_traceback(runner, tmp_path):
    from serkeras.errors import DataError

    result = runner.invoke(main, ["--debug", "features", "--data-dir", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert isinstance(result.exception, DataError)


def test_unknown_option_is_a_usage_error(runner):
    result = runner.invoke(main, ["features", "--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.output


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained, tiny fixed-length model saved to .keras: enough for predict's input and output."""
    from serkeras.corpus import CREMA_D_LABELS
    from serkeras.models import ModelConfig, build_model

    config = FeatureConfig(length_mode="fixed", fixed_seconds=0.5)
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    build_model(config, ModelConfig(arch="1d", width=0.0625, head_units=8), CREMA_D_LABELS).save(path)
    return path


def test_predict_csv_quotes_awkward_file_names_and_lists_broken_links(runner, tiny_model, real_clips, tmp_path):
    """RFC 4180 CSV: a comma, a quote or a line break in a file name stays in its own field; a folder's
    broken symbolic link is reported among the skipped files, not dropped."""
    import csv
    import shutil

    from serkeras.corpus import CREMA_D_LABELS

    folder = tmp_path / "recordings"
    folder.mkdir()
    names = ["anger, take 2.ogg", 'she said "no".ogg', "two\nlines.ogg"]
    for name, clip in zip(names, real_clips.paths):
        shutil.copyfile(clip, folder / name)
    (folder / "moved.ogg").symlink_to(tmp_path / "gone.ogg")
    result = runner.invoke(main, ["predict", str(folder), "--model", str(tiny_model), "--format", "csv",
                                  "--workers", "1"])
    assert result.exit_code == 0, result.output
    header, *rows = csv.reader(result.stdout.splitlines(keepends=True))
    assert header == ["path", "label", *CREMA_D_LABELS]
    assert sorted(row[0] for row in rows) == sorted(str(folder / name) for name in names)
    assert all(len(row) == len(header) and row[1] in CREMA_D_LABELS for row in rows)
    assert "skipped 1 audio files: moved.ogg: broken symbolic link" in result.stderr


def test_predict_when_no_file_can_be_used_prints_only_the_error_with_each_reason(runner, tiny_model, tmp_path,
                                                                                   make_audio):
    folder = tmp_path / "recordings"
    make_audio("quiet.wav", folder=folder, amplitude=0.0, noise=0.0)  # all zeros
    (folder / "moved.wav").symlink_to(tmp_path / "gone.wav")
    for output_format in ("table", "csv"):
        result = runner.invoke(main, ["predict", str(folder), "--model", str(tiny_model), "--format", output_format,
                                      "--workers", "1"])
        assert result.exit_code == 1 and result.stdout == ""
        assert _lines(result.stderr) == ["error: none of the 2 files could be used: moved.wav: broken symbolic link "
                                         "(its target does not exist); quiet.wav: silent"]


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "saved_models"
SHIPPED = SHIPPED_DIR / SHIPPED_MODEL
SPEAKER_NORMS = [name for name in SHIPPED_MODELS if name.endswith("-speaker-norm")]
SPEAKER_NORM = SPEAKER_NORMS[0]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped model in this checkout")
def test_predict_without_model_uses_the_shipped_model(runner, real_clips, tmp_path, monkeypatch):
    """The default model's ONNX copy, exported from the very file beside it, runs without TensorFlow and gives the
    .keras file's probabilities (`--runtime keras`)."""
    import json
    import subprocess
    import sys

    from serkeras.corpus import CREMA_D_LABELS
    from serkeras.export import export_tolerance
    from serkeras.models import load_model
    from serkeras.onnx_runtime import file_sha256, load_onnx_model

    assert SHIPPED.stat().st_size <= 20 * 2**20
    model, meta = load_model(SHIPPED)
    assert meta.labels == CREMA_D_LABELS and meta.model_config.arch == "whisper"
    onnx_file = SHIPPED_DIR / default_model().onnx
    assert (SHIPPED.stat().st_size + onnx_file.stat().st_size) <= 40 * 2**20
    _, onnx_meta = load_onnx_model(onnx_file)
    assert onnx_meta.source_sha256 == file_sha256(SHIPPED)
    assert (onnx_meta.labels, onnx_meta.feature_config) == (meta.labels, meta.feature_config)
    monkeypatch.chdir(tmp_path)  # no saved_models/ here: the checkout's copy is found
    clips = [str(p) for p in real_clips.paths]

    def probabilities(*options):
        result = runner.invoke(main, ["predict", *clips, "--format", "json", "--workers", "1", *options])
        assert result.exit_code == 0, result.output
        return {row["path"]: row["probabilities"] for row in json.loads(result.output[result.output.index("["):])}

    by_onnx, by_keras = probabilities(), probabilities("--runtime", "keras")
    assert sorted(by_onnx) == sorted(clips) == sorted(by_keras)
    # 4 actors with 3 clips each: no hint; as one speaker (--speaker all), the speaker-normalised model is named.
    assert "--model" not in runner.invoke(main, ["predict", *clips, "--workers", "1"]).stderr
    hinted = runner.invoke(main, ["predict", *clips, "--workers", "1", "--speaker", "all"])
    assert hinted.exit_code == 0 and hinted.stderr.startswith(f"{len(clips)} of these {len(clips)} recordings share")
    assert f"--model {default_model().speaker_model} --speaker all" in hinted.stderr
    # Its int8 layers round activations, and the two runtimes round a few the other way (docs/export.md): 0.0012
    # at most on these clips, the same labels.
    for clip in clips:
        assert sum(by_onnx[clip].values()) == pytest.approx(1.0, abs=1e-4)
        assert by_onnx[clip] == pytest.approx(by_keras[clip], abs=10 * export_tolerance(model))
        assert max(by_onnx[clip], key=by_onnx[clip].get) == max(by_keras[clip], key=by_keras[clip].get)
    script = ("import sys\nfrom serkeras.cli import main\ncode = 0\ntry:\n"
              f"    main(['predict', {clips[0]!r}, '--workers', '1', '--runtime', 'onnx'], standalone_mode=False)\n"
              "except SystemExit as exc:\n    code = exc.code\n"
              "print('exit', code, 'loaded', [m for m in ('tensorflow', 'keras') if m in sys.modules])\n")
    alone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert alone.stdout.rstrip().endswith("exit 0 loaded []"), alone.stdout + alone.stderr[-2000:]
    assert Path(clips[0]).name in alone.stdout and max(by_onnx[clips[0]], key=by_onnx[clips[0]].get) in alone.stdout


def test_without_onnxruntime_the_default_runs_from_its_keras_file(monkeypatch):
    import sys

    from serkeras.api import prediction_file
    from serkeras.errors import SerkerasError

    from serkeras.shipped import resolve_model

    if not SHIPPED.is_file():
        pytest.skip("no shipped model in this checkout")
    keras_file = resolve_model(None)
    assert prediction_file(None) == (keras_file.parent / default_model().onnx, keras_file)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    assert prediction_file(None) == (keras_file, None) == prediction_file(default_model().name, "keras")
    with pytest.raises(SerkerasError, match=r"needs onnxruntime \(pip install onnxruntime\)"):
        prediction_file(None, "onnx")


def test_an_onnx_copy_runs_only_beside_the_file_it_was_exported_from(runner, real_clips, tmp_path, monkeypatch):
    """A shipped model's ONNX copy beside another .keras file of the model's name (a project's own saved_models/)
    is not run in its place: the .keras file runs, with a warning, or, with --runtime onnx, a one-line error."""
    import json
    import shutil

    if not SHIPPED.is_file():
        pytest.skip("no shipped model in this checkout")
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "saved_models"
    own.mkdir()
    shutil.copy(SHIPPED_DIR / default_model().onnx, own)
    shutil.copy(SHIPPED_DIR / "serkeras-crema-d-whisper.keras", own / SHIPPED.name)  # another model, same name
    clip = str(real_clips.paths[0])
    refused = runner.invoke(main, ["predict", clip, "--workers", "1", "--runtime", "onnx"])
    assert refused.exit_code == 1, refused.output
    assert refused.output.startswith(f"error: {own / default_model().onnx} was not exported from {own / SHIPPED.name}")
    assert len(refused.output.strip().splitlines()) == 1
    warned = runner.invoke(main, ["predict", clip, "--workers", "1", "--format", "json"])
    assert warned.exit_code == 0, warned.output
    assert "was not exported from" in warned.output and f"running {own / SHIPPED.name} instead" in warned.output
    by_own_file = runner.invoke(main, ["predict", clip, "--workers", "1", "--format", "json", "--model",
                                       str(own / SHIPPED.name), "--runtime", "keras"])
    assert json.loads(warned.output[warned.output.index("["):]) == json.loads(by_own_file.output[
        by_own_file.output.index("["):])
    # The checkout's own default, given as a path to its file, finds its copy beside it.
    from serkeras.api import prediction_file

    assert prediction_file(str(SHIPPED)) == (SHIPPED_DIR / default_model().onnx, SHIPPED)
    no_copy = runner.invoke(main, ["predict", clip, "--model", SPEAKER_NORM, "--runtime", "onnx"])
    assert no_copy.exit_code == 1 and "has no ONNX copy beside it" in no_copy.output
    onnx_as_keras = runner.invoke(main, ["predict", clip, "--model", str(own / default_model().onnx), "--runtime",
                                         "keras"])
    assert onnx_as_keras.exit_code == 1 and "is an ONNX file" in onnx_as_keras.output


@pytest.mark.parametrize("name", SPEAKER_NORMS)
def test_predict_finds_a_shipped_model_by_name_and_normalises_by_speaker(name, runner, real_clips, tmp_path,
                                                                          monkeypatch):
    """Both shipped speaker-normalised models: by features (CNNs trained with --speaker-norm) and by embedding
    (the Whisper encoder's, standardised in the model)."""
    import json

    from serkeras.models import load_model

    if not (SHIPPED_DIR / f"{name}.keras").is_file():
        pytest.skip("no shipped model in this checkout")
    _, meta = load_model(SHIPPED_DIR / f"{name}.keras")
    assert meta.feature_config.speaker_norm != meta.model_config.speaker_standardization
    monkeypatch.chdir(tmp_path)  # found by name in the checkout's saved_models/
    clips = [str(p) for p in real_clips.paths]  # 4 actors, 3 clips each: grouped by the actor in the name

    def probabilities(*options):
        result = runner.invoke(main, ["predict", *clips, "--model", name, "--format", "json", "--workers", "1",
                                      *options])
        assert result.exit_code == 0, result.output
        return result.output, {row["path"]: row["probabilities"] for row in
                               json.loads(result.output[result.output.index("["):])}

    output, grouped = probabilities()
    assert sorted(grouped) == sorted(clips) and "one recording only" not in output
    output, alone = probabilities("--speaker", "file")
    assert "12 of 12 speakers" in output  # warned: each clip is its own speaker
    assert any(abs(grouped[c][k] - alone[c][k]) > 1e-3 for c in clips for k in grouped[c])


def test_a_model_name_that_is_not_shipped_stays_a_path(tmp_path, monkeypatch):
    from serkeras.errors import SerkerasError
    from serkeras.shipped import model_path, resolve_model

    monkeypatch.chdir(tmp_path)
    assert resolve_model("my-model.keras") == Path("my-model.keras")
    (tmp_path / "saved_models").mkdir()
    copy = tmp_path / "saved_models" / f"{SPEAKER_NORM}.keras"
    copy.write_bytes(b"not a model")  # the project's own folder is looked at first
    assert resolve_model(SPEAKER_NORM) == copy == resolve_model(f"{SPEAKER_NORM}.keras")
    with pytest.raises(SerkerasError, match="no-such is not a shipped model"):
        model_path("no-such")


@pytest.mark.slow
def test_a_wheel_installs_the_shipped_model_for_predict(real_clips, tmp_path):
    """A plain (non-editable) install finds the model in <prefix>/share/serkeras, away from any checkout."""
    import json
    import site
    import subprocess
    import sys
    import venv

    root = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(root),
                    "-w", str(wheels)], check=True, capture_output=True)
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # Nothing but the environment's own paths: with this checkout on PYTHONPATH or in the working folder,
    # pip would find serkeras installed already.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    *map(str, wheels.glob("serkeras-*.whl"))], cwd=tmp_path, env=clean, check=True,
                   capture_output=True)
    # The dependencies come from this interpreter's site-packages, whether it is a virtualenv or not
    # (system_site_packages would give a virtualenv's base interpreter's instead). A .pth file's plain
    # lines only extend sys.path, after the new environment's own folder: the .pth files in them (an
    # editable install of this checkout) are not run, so `serkeras` is the wheel's.
    inner_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    Path(inner_site, "outer-site-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    for model in shipped_models():
        for name in (model.file, model.onnx or model.file):
            assert (env_dir / "share" / "serkeras" / name).read_bytes() == (SHIPPED_DIR / name).read_bytes()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # The .keras file, through TensorFlow (the ONNX copy's path is `test_predict_without_model_uses_the_shipped_model`).
    result = subprocess.run([str(env_dir / "bin" / "serkeras"), "predict", str(real_clips.paths[0]), "--format", "json",
                             "--workers", "1", "--runtime", "keras"], cwd=outside, env=clean, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    # TensorFlow's import chatter is dropped (the CLI imports it with standard error captured)
    assert "absl::InitializeLog" not in result.stderr and "] oneDNN custom operations" not in result.stderr
    rows = json.loads(result.stdout[result.stdout.index("["):])
    assert [row["path"] for row in rows] == [str(real_clips.paths[0])]
    located = subprocess.run([str(python), "-c", "import serkeras.api as a; print(*a.prediction_file(None), a.__file__)"],
                             cwd=outside, env=clean, capture_output=True, text=True, check=True).stdout.split()
    assert [Path(p) for p in located[:2]] == [env_dir / "share" / "serkeras" / name
                                              for name in (default_model().onnx, SHIPPED.name)]
    assert Path(located[2]).is_relative_to(env_dir)  # the installed wheel's code, not this checkout's


def test_import_chatter_is_dropped_and_everything_else_kept():
    from serkeras.cli import without_import_chatter

    chatter = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
               "I0000 00:00:1796475330.766352   17231 port.cc:153] oneDNN custom operations are on.\n"
               "I0000 00:00:1796475330.770792   17231 cudart_stub.cc:31] Could not find cuda drivers\n")
    kept = ("E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"
            "/x/keras/src/ops.py:10: UserWarning: something the user should see\n"
            "ImportError: libcudart.so.12: cannot open shared object file\n")
    assert without_import_chatter(chatter + kept) == kept
    assert without_import_chatter(chatter) == ""


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_computing_only_the_kinds_a_model_takes_keeps_its_predictions(name, real_clips, tmp_path, monkeypatch):
    """`predict` and `evaluate` compute only the feature kinds among a model's inputs; every shipped model then
    predicts what it did when every kind was computed."""
    import numpy as np

    import serkeras.evaluation
    import serkeras.inference
    from serkeras.corpus import load_crema_d
    from serkeras.evaluation import predict_clips
    from serkeras.features import FEATURE_KINDS
    from serkeras.inference import predict_files
    from serkeras.models import load_model

    if not (SHIPPED_DIR / f"{name}.keras").is_file():
        pytest.skip("no shipped model in this checkout")
    model, meta = load_model(SHIPPED_DIR / f"{name}.keras")
    # Every other clip (four actors, five emotions): computing every feature kind is the costly part.
    clips = sorted(load_crema_d(real_clips.folder).clips, key=lambda c: c.path)[::2]
    paths = [c.path for c in clips]

    def both_paths():
        predictions, _ = predict_files(model, meta, paths, workers=1)
        _, probabilities = predict_clips(model, meta, clips, cache_dir=tmp_path / "cache")
        return np.array([list(p.probabilities.values()) for p in predictions]), probabilities

    files, corpus = both_paths()
    monkeypatch.setattr(serkeras.inference, "feature_kinds", lambda names: FEATURE_KINDS)
    monkeypatch.setattr(serkeras.evaluation, "feature_kinds", lambda names: FEATURE_KINDS)
    every_kind_files, every_kind_corpus = both_paths()
    np.testing.assert_allclose(files, every_kind_files, atol=1e-6)
    np.testing.assert_allclose(corpus, every_kind_corpus, atol=1e-6)
