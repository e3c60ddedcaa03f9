"""Test configuration: run GPU tests under the CUDA simulator when no real GPU is usable.

The simulator must be chosen before numba is imported, hence here and at import time.
"""

import ctypes
import os

import pytest


def _real_gpu_usable() -> bool:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    return False


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _real_gpu_usable():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NBXENT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set NBXENT_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return f"nbxent GPU tests: {'CUDA simulator' if sim else 'real GPU (if numba-cuda finds one)'}"
