"""Every installed Keras backend: `tests/backend_checks.py` in one subprocess per backend.

The runs start together, in the background, when this module starts; tests/conftest.py
orders this module first, so they overlap with the in-process tests (and, under
pytest-xdist, with the other workers). The cross-backend tests reload a model saved
under one backend in another.
"""

import importlib.util
import os
import subprocess
import sys
import threading
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
    """`backend_checks.py` under every installed backend, all at once; each cross-backend reload
    starts (in a background thread) as soon as the run that saves its model has finished."""

    def __init__(self, root):
        self.root, self.runs, self.reloads, self.threads = root, {}, {}, {}
        for backend in BACKENDS:
            if _available(backend):
                run = _Run(backend, [str(root / f"export-{backend}")], root / f"{backend}.log")
                run.export = root / f"export-{backend}"
                self.runs[backend] = run
        for saver, loader in CROSS:
            if saver in self.runs and loader in self.runs:
                thread = threading.Thread(target=self._reload, args=(saver, loader), daemon=True)
                thread.start()
                self.threads[saver, loader] = thread

    def _reload(self, saver, loader):
        run = self.runs[saver]
        if run.finished(TIMEOUT) and run.process.returncode == 0 and (run.export / "manifest.json").is_file():
            self.reloads[saver, loader] = _Run(loader, ["--reload", str(run.export)],
                                               self.root / f"reload-{saver}-to-{loader}.log")

    def reload(self, saver, loader):
        """The reload run, or None if the saving run failed or timed out."""
        self.threads[saver, loader].join(TIMEOUT)
        return self.reloads.get((saver, loader))

    def stop(self):
        for run in [*self.runs.values(), *self.reloads.values()]:
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
    # save; plus 1 export, whisper's speaker stages and distribute (refused under torch).
    expected = 4 * len(ARCHITECTURES) + 3 + 1 + 1 + 1
    assert len(passed) == expected, _explain(f"expected {expected} PASS lines, got {len(passed)}", returncode, output)
    assert lines[-1] == "0 failed", output


@pytest.mark.parametrize("saver, loader", CROSS, ids=[f"{s}-to-{l}" for s, l in CROSS])
def test_cross_backend_round_trip(saver, loader, backend_runs):
    _skip_unless_available(saver, loader)
    reload_run = backend_runs.reload(saver, loader)
    if reload_run is None:
        returncode, output = backend_runs.runs[saver].wait(TIMEOUT)
        pytest.fail(_explain(f"saving a model under {saver} (nothing to reload)", returncode, output))
    returncode, output = reload_run.wait(180)
    print(f"\n{saver} -> {loader} ({reload_run.seconds:.0f} s): {output.strip().splitlines()[-1:]}")
    assert returncode == 0, _explain(f"reloading a {saver} model under {loader}", returncode, output)
    assert f"PASS [{loader}] reload: model saved under {saver}" in output, output

