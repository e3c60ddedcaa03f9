"""CUDA array plumbing for the dispatch layer: recognise, view, allocate, copy, wrap.

Three kinds of CUDA arrays come in: Numba device arrays (`DeviceNDArray`, or the simulator's
`FakeCUDAArray`), CuPy arrays, and anything else exporting `__cuda_array_interface__` (CAI).
Kernels always get Numba device arrays (zero-copy views); outputs are allocated with the
input's library (CuPy in -> CuPy out on CuPy's current stream, otherwise Numba).

`is_device_array` and `simulator_enabled` import nothing (they run for every NumPy input);
everything else imports `numba.cuda` (and `cupy`, only for CuPy inputs) on first use.
The CuPy branches cannot run without a real GPU: they are untested under the simulator.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys

import numpy as np


# ----------------------------------------------------------------------------- detection


def simulator_enabled() -> bool:
    """Whether Numba's CUDA simulator is (or, once numba.cuda is imported, will be) active."""
    mod = sys.modules.get("numba.cuda")
    if mod is not None and hasattr(mod, "config"):
        return bool(mod.config.ENABLE_CUDASIM)
    try:
        return int(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") or 0) != 0
    except ValueError:
        return False


def _is_numba_array(obj) -> bool:
    # DeviceNDArray and the simulator's FakeCUDAArray both carry this class attribute.
    return bool(getattr(type(obj), "__cuda_ndarray__", False))


def _is_cupy(obj) -> bool:
    return type(obj).__module__.partition(".")[0] == "cupy"


def is_device_array(obj) -> bool:
    """True for CUDA arrays: anything with `__cuda_array_interface__` (CuPy, Numba, PyTorch...)
    and Numba device arrays, including the simulator's, which export no interface.

    Cheap for NumPy arrays (two failed attribute look-ups, no import).
    """
    return hasattr(obj, "__cuda_array_interface__") or _is_numba_array(obj)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether GPU kernels can run: numba-cuda importable and a GPU or the simulator usable."""
    try:
        from numba import cuda
    except Exception:  # numba-cuda missing or broken
        return False
    if simulator_enabled():
        return True
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


# ----------------------------------------------------------------------------- accessors


def _interface(obj) -> dict:
    return obj.__cuda_array_interface__


def _c_strides(shape, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


def dtype(obj) -> np.dtype:
    """The NumPy dtype of a CUDA array."""
    dt = getattr(obj, "dtype", None)
    if dt is not None:
        return np.dtype(dt)
    return np.dtype(_interface(obj)["typestr"])


_dtype_of = dtype  # for functions below whose `dtype` argument shadows this one


def shape_strides(obj) -> tuple[tuple, tuple]:
    """(shape, byte strides) of a CUDA array, as tuples of Python ints."""
    if hasattr(obj, "shape") and hasattr(obj, "strides"):
        return tuple(int(n) for n in obj.shape), tuple(int(s) for s in obj.strides)
    cai = _interface(obj)
    shape = tuple(int(n) for n in cai["shape"])
    strides = cai.get("strides")
    if strides is None:
        strides = _c_strides(shape, np.dtype(cai["typestr"]).itemsize)
    return shape, tuple(int(s) for s in strides)


def _is_c_contiguous(obj) -> bool:
    shape, strides = shape_strides(obj)
    itemsize = dtype(obj).itemsize
    expected = _c_strides(shape, itemsize)
    return all(n == 1 or s == e for n, s, e in zip(shape, strides, expected))


# ----------------------------------------------------------------------------- views


def as_device_array(obj, sync: bool | None = None):
    """A zero-copy Numba device array over `obj` (identity for Numba device arrays).

    `sync`: synchronise on the stream the CAI names before use. By default only for non-CuPy
    exporters: CuPy inputs are computed on CuPy's current stream (`current_stream`), which is
    the stream CuPy exports, so waiting on it from the host would only stall the pipeline.
    """
    if _is_numba_array(obj):
        return obj
    if not hasattr(obj, "__cuda_array_interface__"):
        raise TypeError(f"{type(obj).__name__} is not a CUDA array")
    if simulator_enabled():
        raise TypeError("the CUDA simulator cannot use real device memory (__cuda_array_interface__)")
    from numba import cuda

    if sync is None:
        sync = not _is_cupy(obj)
    return cuda.as_cuda_array(obj, sync=sync)


def strided_view(dev, shape, strides_bytes):
    """A zero-copy Numba device array of `shape` and byte `strides_bytes` over `dev`'s memory.

    Offsets are relative to `dev`'s first element (element [0, ..., 0] of the view is
    `dev`'s first element). Zero strides broadcast; nothing is bounds-checked: the caller
    guarantees that every element of the view lies inside `dev`.
    """
    shape = tuple(int(n) for n in shape)
    strides_bytes = tuple(int(s) for s in strides_bytes)
    if simulator_enabled():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        base = dev._ary
        view = np.lib.stride_tricks.as_strided(base, shape=shape, strides=strides_bytes)
        return FakeCUDAArray(view, stream=getattr(dev, "stream", 0))
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(shape, strides_bytes, dev.dtype, stream=dev.stream, gpu_data=dev.gpu_data)


def broadcast_to(a, shape):
    """A zero-copy view of `a` broadcast to `shape` (NumPy rules; zero strides)."""
    shape = tuple(int(n) for n in shape)
    if _is_cupy(a):
        import cupy

        return cupy.broadcast_to(a, shape)
    a_shape, a_strides = shape_strides(a)
    if len(a_shape) > len(shape):
        raise ValueError(f"cannot broadcast shape {a_shape} to {shape}")
    pad = len(shape) - len(a_shape)
    strides = [0] * pad
    for n_in, s_in, n_out in zip(a_shape, a_strides, shape[pad:]):
        if n_in == n_out:
            strides.append(s_in)
        elif n_in == 1:
            strides.append(0)
        else:
            raise ValueError(f"cannot broadcast shape {a_shape} to {shape}")
    return strided_view(as_device_array(a), shape, strides)


# ----------------------------------------------------------------------------- streams


_NUMBA_STREAM = contextvars.ContextVar("nbxent_numba_stream", default=0)


@contextlib.contextmanager
def numba_stream(stream):
    """Launch the kernels of calls on non-CuPy arrays inside the block on the Numba stream
    `stream` (instead of the default stream); used by the streaming scorer to overlap
    transfers with compute. Per thread and per asyncio task (a context variable)."""
    token = _NUMBA_STREAM.set(stream)
    try:
        yield stream
    finally:
        _NUMBA_STREAM.reset(token)


def current_stream(obj):
    """The stream to launch on for `obj`: CuPy's current stream for CuPy arrays, else the
    stream of the enclosing `numba_stream` block (0, Numba's default stream, outside one).

    CuPy's legacy null stream (pointer 0) maps to Numba's legacy default stream, every other
    CuPy stream to `cuda.external_stream(ptr)`.
    """
    if not _is_cupy(obj):
        return _NUMBA_STREAM.get()
    import cupy
    from numba import cuda

    ptr = int(cupy.cuda.get_current_stream().ptr)
    if ptr == 0:
        return cuda.legacy_default_stream()
    return cuda.external_stream(ptr)


def _numba_stream(stream):
    return 0 if stream is None else stream


# ----------------------------------------------------------------------------- allocation


def empty(shape, dtype, like=None, stream=0):
    """An uninitialised C-ordered CUDA array of the library of `like` (CuPy -> CuPy, on
    CuPy's current stream's memory pool; anything else -> Numba device array)."""
    if like is not None and _is_cupy(like):
        import cupy

        return cupy.empty(shape, dtype)
    from numba import cuda

    return cuda.device_array(tuple(shape), dtype=np.dtype(dtype), stream=_numba_stream(stream))


def full(shape, value, dtype, like=None, stream=0):
    """A CUDA array of `shape` filled with `value` (meant for small arrays: scalars, (1,))."""
    if like is not None and _is_cupy(like):
        import cupy

        return cupy.full(shape, value, dtype)
    from numba import cuda

    host = np.full(tuple(shape), value, dtype=np.dtype(dtype))
    return cuda.to_device(host, stream=_numba_stream(stream))


def copy_into(dst, src, stream=0):
    """dst[...] = src on the device: same shape, any strides, casting to dst's dtype."""
    if _is_cupy(dst) and _is_cupy(src):
        import cupy

        cupy.copyto(dst, src, casting="unsafe")
        return
    d, s = as_device_array(dst), as_device_array(src)
    key = () if len(shape_strides(d)[0]) == 0 else slice(None)
    if simulator_enabled():
        d._ary[key] = s._ary
        return
    # Numba's strided assignment kernel (any layout, implicit cast); synchronous on stream 0.
    d.setitem(key, s, stream=_numba_stream(stream))


def astype(a, dtype, stream=0):
    """`a` converted to `dtype` (a new C-ordered array), or `a` itself if already of it."""
    dtype = np.dtype(dtype)
    if _dtype_of(a) == dtype:
        return a
    if _is_cupy(a):
        return a.astype(dtype)
    out = empty(shape_strides(a)[0], dtype, a, stream)
    copy_into(out, a, stream)
    return out


def contiguous(a, stream=0):
    """`a` if C-contiguous, else a C-ordered copy (same library, same dtype)."""
    if _is_c_contiguous(a):
        return a
    if _is_cupy(a):
        import cupy

        return cupy.ascontiguousarray(a)
    out = empty(shape_strides(a)[0], _dtype_of(a), a, stream)
    copy_into(out, a, stream)
    return out


# ----------------------------------------------------------------------------- to the host


def to_host(dev) -> np.ndarray:
    """A NumPy copy of a CUDA array (synchronises)."""
    if _is_cupy(dev):
        return dev.get()
    return as_device_array(dev).copy_to_host()


def item(a, index: tuple, stream=0):
    """The element a[index] as a Python scalar (synchronises; for error messages)."""
    index = tuple(int(i) for i in index)
    if _is_cupy(a):
        return a[index].item()
    d = as_device_array(a)
    if simulator_enabled():
        return d._ary[index].item()
    if not index:
        return d.copy_to_host(stream=_numba_stream(stream))[()].item()
    value = d.getitem(index, stream=_numba_stream(stream))
    if stream:
        stream.synchronize()
    return np.asarray(value).item()


def as_scalar(out1, like=None):
    """A 1-element result buffer as the 0-d device array the public API returns."""
    if _is_cupy(out1):
        return out1.reshape(())
    dev = as_device_array(out1)
    result = strided_view(dev, (), ())
    return wrap_like(result, like)


def wrap_like(dev_result, like):
    """A kernel result in the library of `like`: CuPy (zero-copy) for CuPy, else unchanged."""
    if like is None or not _is_cupy(like) or _is_cupy(dev_result):
        return dev_result
    import cupy

    if _is_numba_array(dev_result) and dev_result.stream:
        # An exported stream makes CuPy synchronise on import; the result was computed on
        # CuPy's current stream already, so export it without one.
        dev_result = dev_result.bind(0)
    return cupy.asarray(dev_result)
