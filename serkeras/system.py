"""Where a number was measured: the machine and software versions, for reports and benchmarks."""

import os
import platform


def cpu_name():
    """The CPU model from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def usable_cpus():
    """CPUs this process may run on (affinity), which can be fewer than `os.cpu_count()`."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def describe_machine():
    """Lines naming the hardware and the software stack that produced a measurement.

    Returns
    -------
    list of str
        The CPU (and GPUs, if TensorFlow sees any), then Python, Keras and its backend, TensorFlow, NumPy and the OS.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    hardware = f"{usable_cpus()} CPUs ({cpu_name()})" + (f", GPUs: {', '.join(gpus)}" if gpus else ", no GPU")
    return [f"machine: {hardware}",
            f"software: python {platform.python_version()}, keras {keras.__version__} "
            f"(backend {keras.backend.backend()}), tensorflow {tf.__version__}, numpy {np.__version__}, "
            f"{platform.platform()}"]


def load_average():
    """The 1, 5 and 15-minute load averages as text (other jobs on the machine slow a measurement)."""
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
