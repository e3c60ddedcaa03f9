"""nbxent's softmax family over Dask arrays: lazy, any chunking, one machine or a cluster.

Each function moves the class axis last, rechunks it to a single block (a row must be whole
in one block), aligns the target's chunks with the logits' row chunks and runs the
in-memory nbxent function block by block (`map_blocks`). NumPy blocks run on the CPU,
CuPy blocks on the GPU, through nbxent's usual dispatch.

Reductions ("mean", "sum") add float64 per-block sums of the per-row losses and of their
weights w[y] (Dask's reduction tree has a fixed order, so results are reproducible), and
divide once: the result equals the in-memory function's up to float64 rounding.

Oversubscription: every block runs with `numba_threads` Numba threads (default 1: one per
Dask worker thread, which already run blocks in parallel); None keeps Numba's default.
`numba.set_num_threads` is per thread, so this does not touch the caller's setting.

Labels are checked when a block is computed (ValueError naming the position within
that block), not when the graph is built.
"""

from __future__ import annotations

import contextlib
import functools
import math

import dask.array as da
import numba
import numpy as np
from dask.array.utils import meta_from_array

import nbxent
from nbxent import _checks


@contextlib.contextmanager
def _threads(n):
    if n is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _rows_last(x, axis: int, name: str):
    """x as a Dask array with the class axis last, in one block along it."""
    x = da.asarray(x)
    axis = _checks.check_ndim_axis(name, x.shape, axis)
    _checks.check_float_input(name, x.dtype)
    x = da.moveaxis(x, axis, -1)
    return x.rechunk({x.ndim - 1: -1}), axis


def _per_row_loss(x, t, options, threads, loss_fn):
    with _threads(threads):
        return loss_fn(x, t[..., 0], reduction="none", **options)


def _per_row_weight(t, weight, ignore_index):
    scored = t != ignore_index
    if weight is None:
        return scored.astype(np.float64)
    w = _like(t, weight)
    safe = np.where(scored, t, 0)
    return np.where(scored, w[safe].astype(np.float64), 0.0)


def _like(t, arr):
    """`arr` (NumPy) in the array library of `t` (CuPy blocks get CuPy weights)."""
    if type(t).__module__.partition(".")[0] == "cupy":
        import cupy

        return cupy.asarray(arr)
    return arr


def _hard_loss(loss_fn, logits, target, *, axis, weight, ignore_index, reduction, numba_threads,
               **options):
    reduction = _checks.check_reduction(reduction)
    ignore_index = _checks.check_ignore_index(ignore_index)
    x, axis = _rows_last(logits, axis, "logits")
    t = da.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must be integer class indices, got dtype {t.dtype}")
    index_shape = x.shape[:-1]
    if tuple(t.shape) != tuple(index_shape):
        raise ValueError(f"target has shape {tuple(t.shape)} but logits of shape "
                         f"{tuple(da.moveaxis(x, -1, axis).shape)} with classes on axis {axis} "
                         f"need shape {tuple(index_shape)}")
    C = x.shape[-1]
    w = None
    if weight is not None:
        w = np.asarray(weight)
        _checks.check_weight_shape(w.shape, C, w.dtype)
        w = w.astype(_checks.compute_dtype(x.dtype))
    t = t.rechunk(x.chunks[:-1])
    loss_dtype = _checks.compute_dtype(x.dtype)
    opts = dict(options, weight=w, ignore_index=ignore_index)
    # options go in through partial: map_blocks would treat a NumPy weight as a blocked array
    losses = da.map_blocks(functools.partial(_per_row_loss, options=opts, threads=numba_threads,
                                             loss_fn=loss_fn),
                           x, t[..., None],    # the target gets the class axis, of length 1
                           drop_axis=x.ndim - 1,
                           dtype=loss_dtype, meta=meta_from_array(x._meta, x.ndim - 1, loss_dtype))
    if reduction == "none":
        return losses
    total = losses.sum(dtype=np.float64)
    if reduction == "sum":
        return total.astype(loss_dtype)    # the in-memory function's result dtype
    weights = da.map_blocks(functools.partial(_per_row_weight, weight=w, ignore_index=ignore_index),
                            t, dtype=np.float64,
                            meta=meta_from_array(t._meta, t.ndim, np.float64))
    denominator = weights.sum(dtype=np.float64)
    return (total / da.where(denominator == 0, math.nan, denominator)).astype(loss_dtype)


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, numba_threads=1):
    """`nbxent.cross_entropy` on Dask arrays (integer class indices), lazily.

    Returns per-row losses (reduction "none", chunked like the target) or a 0-d Dask array
    ("mean": sum of losses over the sum of w[y] of non-ignored rows, NaN over none; "sum"),
    in the in-memory function's dtype (float32 for float16/float32 logits)."""
    _checks.check_real("label_smoothing", label_smoothing, 0.0, 1.0)
    _checks.check_real("z_loss", z_loss, 0.0, float(np.finfo(np.float64).max))
    return _hard_loss(nbxent.cross_entropy, logits, target, axis=axis, weight=weight,
                      ignore_index=ignore_index, reduction=reduction, numba_threads=numba_threads,
                      label_smoothing=float(label_smoothing), z_loss=float(z_loss))


def nll_loss(log_probs, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
             numba_threads=1):
    """`nbxent.nll_loss` on Dask arrays, lazily (reductions as in `cross_entropy`)."""
    return _hard_loss(nbxent.nll_loss, log_probs, target, axis=axis, weight=weight,
                      ignore_index=ignore_index, reduction=reduction, numba_threads=numba_threads)


def _rowwise(fn, x, axis, numba_threads, keep_classes: bool):
    x, axis = _rows_last(x, axis, "x")

    def block(b):
        with _threads(numba_threads):
            return fn(b)

    if keep_classes:
        out = da.map_blocks(block, x, dtype=x.dtype, meta=meta_from_array(x._meta, x.ndim, x.dtype))
        return da.moveaxis(out, -1, axis)
    return da.map_blocks(block, x, drop_axis=x.ndim - 1, dtype=x.dtype,
                         meta=meta_from_array(x._meta, x.ndim - 1, x.dtype))


def log_softmax(x, *, axis=-1, numba_threads=1):
    """`nbxent.log_softmax` on a Dask array, lazily (chunked like x, one block on `axis`)."""
    return _rowwise(nbxent.log_softmax, x, axis, numba_threads, keep_classes=True)


def softmax(x, *, axis=-1, numba_threads=1):
    """`nbxent.softmax` on a Dask array, lazily (chunked like x, one block on `axis`)."""
    return _rowwise(nbxent.softmax, x, axis, numba_threads, keep_classes=True)


def logsumexp(x, *, axis=-1, numba_threads=1):
    """`nbxent.logsumexp` on a Dask array, lazily (`axis` removed)."""
    return _rowwise(nbxent.logsumexp, x, axis, numba_threads, keep_classes=False)
