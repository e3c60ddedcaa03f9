"""Test configuration: run GPU tests under the CUDA simulator when no real GPU is usable.

The simulator must be chosen before numba is imported, hence here and at import time.
"""

import ctypes
import os
import shutil
import sys
import tempfile
import threading

import numpy as np

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

# The child processes the tests start (the command line, the concurrency workers) share one
# on-disk Numba cache for the session: each kernel compiles in the first child that needs
# it and loads in the others. A child that compiled everything anew took 10-90 s on a slow
# 2-core VM. This process keeps compiling its own kernels: nbxent reads NBXENT_CACHE when it
# is imported, here, before the variable is set. Children that test a cold start or the
# cache itself set their own NBXENT_CACHE or NUMBA_CACHE_DIR.
import nbxent._config  # noqa: E402

_CHILD_CACHE = None
if "NBXENT_CACHE" not in os.environ and "NUMBA_CACHE_DIR" not in os.environ:
    _CHILD_CACHE = tempfile.mkdtemp(prefix="nbxent-test-cache-")
    os.environ.update(NBXENT_CACHE="1", NUMBA_CACHE_DIR=_CHILD_CACHE)


def pytest_unconfigure(config):
    if _CHILD_CACHE is not None:
        shutil.rmtree(_CHILD_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _fast_simulator():
    """Make the simulator fast and sound for the whole run, then restore it.

    It switches between its Python threads (one per CUDA thread) at the GIL interval:
    shorten it (about 4x faster). And numba-cuda 0.30's `FakeCUDAShared.array` creates a
    block's shared array on first use with an unlocked check-then-set, so two threads of a
    launch's first block can get different arrays (seen here as wrong rows in block 0, more
    often with a short interval): serialise it. Real GPUs are unaffected.
    """
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        yield
        return
    from numba.cuda import types
    from numba.cuda.np import numpy_support
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)  # the simulator's key: the call site in the kernel
        site = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(site)
            if res is None:
                res = self._allocations[site] = np.empty(shape, dtype)
        return res

    old = sys.getswitchinterval()
    kernelapi.FakeCUDAShared.array = array
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)
    kernelapi.FakeCUDAShared.array = original


def run_slow_tests() -> bool:
    """Slow tests run in CI (CI=true) and where NBXENT_SLOW=1; NBXENT_SLOW=0 skips them."""
    flag = os.environ.get("NBXENT_SLOW")
    return flag == "1" if flag in ("0", "1") else os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config, items):
    if run_slow_tests():
        return
    skip = pytest.mark.skip(reason="slow test: runs in CI (CI=true) or with NBXENT_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return f"nbxent GPU tests: {'CUDA simulator' if sim else 'real GPU (if numba-cuda finds one)'}"
