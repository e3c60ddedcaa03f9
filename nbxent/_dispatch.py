"""Array type -> backend.

NumPy arrays (and anything `np.asarray` accepts) run on the CPU; CuPy arrays, Numba device
arrays and anything with `__cuda_array_interface__` run on the GPU. A backend allocates with
the input's own library, makes the zero-copy strided views kernels take, and wraps results
back into the input's array type. Mixing host and device arrays in one call is a TypeError.
"""

from __future__ import annotations

import importlib

import numpy as np
from numpy.lib.stride_tricks import as_strided

from nbxent import _pool, _threading


def _gpu_arrays():
    from nbxent.gpu import _arrays

    return _arrays


def _is_device_array(obj) -> bool:
    if isinstance(obj, (np.ndarray, list, tuple)):
        return False
    return _gpu_arrays().is_device_array(obj)


class CpuBackend:
    """NumPy arrays; kernels from nbxent.cpu."""

    name = "cpu"
    stream = None

    def kernels(self, family: str):
        return _threading.guard(importlib.import_module(f"nbxent.cpu.{family}"))

    def asarray(self, obj):
        return np.asarray(obj)

    @staticmethod
    def shape_strides(a):
        return a.shape, a.strides

    @staticmethod
    def dtype(a):
        return a.dtype

    @staticmethod
    def writeable(a) -> bool:
        return bool(a.flags.writeable)

    def empty(self, shape, dtype, like=None):
        return _pool.empty(shape, dtype)

    def astype(self, a, dtype):
        return a.astype(dtype, copy=False)

    def contiguous(self, a):
        return np.ascontiguousarray(a)

    def view(self, a, shape, strides):
        """Zero-copy view for a kernel; float16 is handed over as its uint16 bit patterns."""
        v = None
        if a.flags.c_contiguous:   # over a's buffer: 0.5 us a call, as_strided 4-5 us
            try:
                v = np.ndarray(shape, a.dtype, a, 0, strides)
            except (TypeError, ValueError):   # reaches outside a's buffer: as_strided below
                v = None
        if v is None:
            v = as_strided(a, shape=shape, strides=strides, writeable=bool(a.flags.writeable))
        return v.view(np.uint16) if v.dtype == np.float16 else v

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype)

    def broadcast_scalar(self, value: float, shape):
        return np.broadcast_to(np.float64(value), shape)

    def broadcast_element(self, one, shape):
        """A 1-element array seen as `shape` (zero strides), without a copy."""
        return np.broadcast_to(one.reshape(()), shape)

    def broadcast_to(self, a, shape):
        return np.broadcast_to(a, shape)

    def copy_into(self, dst, src):
        np.copyto(dst, src)

    def item(self, a, index: tuple):
        return a[index].item() if index else a[()].item()

    def scalar(self, out1):
        """A 1-element reduction buffer as the 0-d value the public API returns."""
        return out1[0]

    def wrap(self, a, like=None):
        return a


class GpuBackend:
    """CUDA arrays; kernels from nbxent.gpu, launched on the caller's stream.

    CuPy inputs get CuPy outputs allocated on CuPy's current stream; every other CUDA array
    (Numba device arrays, `__cuda_array_interface__` exporters) gets Numba device arrays.
    """

    name = "gpu"

    def __init__(self, like):
        self.ga = _gpu_arrays()
        self.like = like
        self.stream = self.ga.current_stream(like)

    def kernels(self, family: str):
        return importlib.import_module(f"nbxent.gpu.{family}")

    def asarray(self, obj):
        return obj

    def shape_strides(self, a):
        return self.ga.shape_strides(a)

    def dtype(self, a):
        return self.ga.dtype(a)

    @staticmethod
    def writeable(a) -> bool:
        return True

    def empty(self, shape, dtype, like=None):
        return self.ga.empty(shape, dtype, like if like is not None else self.like, self.stream)

    def astype(self, a, dtype):
        return self.ga.astype(a, dtype, self.stream)

    def contiguous(self, a):
        return self.ga.contiguous(a, self.stream)

    def view(self, a, shape, strides):
        return self.ga.strided_view(self.ga.as_device_array(a), shape, strides)

    def full(self, shape, value, dtype):
        return self.ga.full(shape, value, dtype, self.like, self.stream)

    def broadcast_scalar(self, value: float, shape):
        return self.broadcast_element(self.ga.full((1,), value, np.float64, self.like, self.stream),
                                      shape)

    def broadcast_element(self, one, shape):
        return self.ga.strided_view(self.ga.as_device_array(one), tuple(shape), (0,) * len(shape))

    def broadcast_to(self, a, shape):
        return self.ga.broadcast_to(a, shape)

    def copy_into(self, dst, src):
        self.ga.copy_into(dst, src, self.stream)

    def item(self, a, index: tuple):
        return self.ga.item(a, index, self.stream)

    def scalar(self, out1):
        return self.ga.as_scalar(out1, self.like)

    def wrap(self, a, like=None):
        return self.ga.wrap_like(a, like if like is not None else self.like)


_CPU = CpuBackend()


def backend_for(**arrays):
    """The backend for a call, given its array arguments by name (None = absent).

    Raises TypeError naming one host and one device argument when they are mixed.
    """
    host, device = [], []
    for name, obj in arrays.items():
        if obj is None or isinstance(obj, (int, float, bool, np.generic)):
            continue
        (device if _is_device_array(obj) else host).append(name)
    if device and host:
        raise TypeError(
            f"{device[0]} is a GPU array but {host[0]} is a host (NumPy) array: "
            f"pass all arrays on one device"
        )
    if device:
        return GpuBackend(arrays[device[0]])
    return _CPU
