"""Moving test data to each available backend and back."""

from __future__ import annotations

import os

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def gpu_available() -> bool:
    try:
        from nbxent.gpu import _arrays
    except Exception:  # numba-cuda missing or broken: no GPU backend
        return False
    return _arrays.available()


def _cupy():
    try:
        import cupy
    except Exception:
        return None
    return cupy


BACKENDS = ["cpu"] + (["gpu"] if gpu_available() else [])
backend_params = pytest.mark.parametrize("backend", BACKENDS)


def to_backend(a, backend: str):
    """A host array (or None / Python scalar) on `backend`: CuPy when installed, else Numba."""
    if backend == "cpu" or a is None or np.isscalar(a):
        return a
    a = np.asarray(a)
    cp = _cupy()
    if cp is not None and not SIMULATOR:
        return cp.asarray(a)
    from numba import cuda

    if a.flags.c_contiguous or a.flags.f_contiguous:
        return cuda.to_device(a)
    return _strided_upload(a)


def _strided_upload(a):
    """A device array with `a`'s (non-negative) strides, over a buffer spanning them."""
    from numba import cuda

    from nbxent.gpu import _arrays

    span = 1 + sum((n - 1) * s for n, s in zip(a.shape, a.strides)) // a.itemsize
    buf = np.zeros(span, a.dtype)
    np.lib.stride_tricks.as_strided(buf, a.shape, a.strides)[...] = a
    return _arrays.strided_view(cuda.to_device(buf), a.shape, a.strides)


def to_host(a):
    """Any result (NumPy, CuPy, Numba device array, scalar) as a NumPy array."""
    if isinstance(a, (np.ndarray, np.generic, float, int)):
        return np.asarray(a)
    if hasattr(a, "get"):  # CuPy
        return a.get()
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    raise TypeError(f"unexpected result type {type(a)}")


def is_backend_array(result, backend: str) -> bool:
    if backend == "cpu":
        return isinstance(result, (np.ndarray, np.generic))
    return hasattr(result, "__cuda_array_interface__") or hasattr(result, "copy_to_host")


def small(backend: str, cpu_shape, gpu_shape):
    """The simulator runs one Python thread per CUDA thread: give the GPU tiny shapes."""
    return gpu_shape if backend == "gpu" and SIMULATOR else cpu_shape
