"""Every installed Keras backend: `tests/backend_checks.py` in one subprocess per backend.

The runs start together, in the background, when this module starts; tests/conftest.py
orders this module first, so they overlap with the in-process tests (and, under
pytest-xdist, with the other workers). Each run ends by reloading the model that the
run under another backend saved (the cross-backend tests read that part of its output).
"""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serkeras.models import ARCHITECTURES

REPO = Path(__file__).resolve().parents[1]
CHECKS = Path(__file__).with_name("backend_checks.py")
BACKENDS = ("tensorflow", "jax", "torch")
#: (saved under, reloaded under): every backend saves once and loads once.
CROSS = (("torch", "tensorflow"), ("tensorflow", "jax"), ("jax", "torch"))
TIMEOUT = float(os.environ.get("SERKERAS_BACKEND_TIMEOUT", 900))


def _available(backend):
    return importlib.util.find_spec(backend) is not None


def _skip_unless_available(*backends):
    missing = [b for b in backends if not _available(b)]
    if missing:
        pytest.skip(f"Keras backend package(s) {', '.join(missing)} not installed "
                    f"(pip install -e '.[backends]'); backend checks NOT run")


class _Run:
    """One `backend_checks.py` subprocess, its output in a file."""

    def __init__(self, backend, args, log):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        env.pop("SERKERAS_EXPORT_DIR", None)
        self.backend, self.log, self.start = backend, Path(log), time.monotonic()
        with open(log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, str(CHECKS), *args], cwd=REPO, env=env,
                                            stdout=out, stderr=subprocess.STDOUT)
        self.seconds = None
        self.timed_out = False

    def finished(self, timeout):
        """Wait until the run ends or `timeout` seconds after its start; True if it ended."""
        try:
            self.process.wait(max(0.1, timeout - (time.monotonic() - self.start)))
            return True
        except subprocess.TimeoutExpired:
            return False

    def wait(self, timeout):
        """(exit status or a timeout note, output); kills the run past `timeout` seconds from its start."""
        if not self.finished(timeout):
            self.timed_out = True
            self.stop()
        if self.seconds is None:
            self.seconds = time.monotonic() - self.start
        status = f"killed after {timeout:.0f} s (timeout)" if self.timed_out else self.process.returncode
        return status, self.log.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class _Backends:
    """`backend_checks.py` under every installed backend, all at once; each run ends by reloading the model that
    the run under another backend exported (CROSS), so every backend saves once and loads once."""

    def __init__(self, root):
        self.root, self.runs = root, {}
        available = [backend for backend in BACKENDS if _available(backend)]
        saver_of = {loader: saver for saver, loader in CROSS if saver in available}
        for backend in available:
            args = [str(root / f"export-{backend}")]
            if backend in saver_of:
                args += ["--reload-from", str(root / f"export-{saver_of[backend]}")]
            self.runs[backend] = _Run(backend, args, root / f"{backend}.log")

    def stop(self):
        for run in self.runs.values():
            run.stop()


@pytest.fixture(scope="module", autouse=True)
def backend_runs(tmp_path_factory):
    """Start every backend's run as this module starts (tests/conftest.py puts it first, so the
    runs overlap with the rest of the suite); the tests below wait for them."""
    backends = _Backends(tmp_path_factory.mktemp("backends"))
    yield backends
    backends.stop()


def _explain(what, returncode, output):
    return f"{what} failed (exit {returncode}); output:\n{output[-15000:]}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_checks(backend, backend_runs):
    _skip_unless_available(backend)
    run = backend_runs.runs[backend]
    returncode, output = run.wait(TIMEOUT)
    print(f"\n{backend}: backend_checks.py took {run.seconds:.0f} s\n{output}")
    assert returncode == 0, _explain(f"KERAS_BACKEND={backend} python tests/backend_checks.py", returncode, output)
    lines = output.splitlines()
    passed = [line for line in lines if line.startswith(f"PASS [{backend}]")]
    assert not [line for line in lines if line.startswith("FAIL")], output
    # Variable mode, per architecture and whisper: build, padding, fit, save; fixed mode (combined): build, fit,
    # save; plus 1 export, whisper's speaker stages and distribute (refused under torch); the reload of another
    # backend's model is test_cross_backend_round_trip's.
    expected = 4 * len(ARCHITECTURES) + 3 + 1 + 1 + 1
    passed = [line for line in passed if not line.startswith(f"PASS [{backend}] reload:")]
    assert len(passed) == expected, _explain(f"expected {expected} PASS lines, got {len(passed)}", returncode, output)
    assert lines[-1] == "0 failed", output


@pytest.mark.parametrize("saver, loader", CROSS, ids=[f"{s}-to-{l}" for s, l in CROSS])
def test_cross_backend_round_trip(saver, loader, backend_runs):
    """The run under `loader` ends by reloading the model that the run under `saver` exported."""
    _skip_unless_available(saver, loader)
    returncode, output = backend_runs.runs[loader].wait(TIMEOUT)
    reloaded = [line for line in output.splitlines() if line.startswith(f"PASS [{loader}] reload:")
                or line.startswith(f"FAIL [{loader}] reload")]
    print(f"\n{saver} -> {loader}: {reloaded}")
    if not (backend_runs.root / f"export-{saver}" / "manifest.json").is_file():
        _, saver_output = backend_runs.runs[saver].wait(TIMEOUT)
        pytest.fail(_explain(f"saving a model under {saver} (nothing to reload)", "-", saver_output))
    assert any(line.startswith(f"PASS [{loader}] reload: model saved under {saver}") for line in reloaded), \
        _explain(f"reloading a {saver} model under {loader}", returncode, output)
