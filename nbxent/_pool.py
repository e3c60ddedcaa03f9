"""Large host outputs reuse the memory of earlier outputs that are gone.

A fresh NumPy array of hundreds of MB pays a page fault per page on first touch: on the
2-core machine 17 ms for 262 MB at best and 60-400 ms when the kernel compacts memory for
huge pages, against 8 ms to write the same array again; for `cross_entropy_with_grad` that
was more than the kernel. So outputs of at least `MIN_BYTES` are carved from buffers kept
here: when the last view of such an output is gone, its buffer comes back, and the next
output of exactly the same size reuses it with its pages already mapped (a training loop
or a benchmark calling with one shape). At most `KEEP` buffers and `NBXENT_OUTPUT_CACHE_MB`
(default 1024; 0 turns the reuse off) are kept; the oldest are let go first.

A buffer is never handed out while any array still refers to it (it comes back only when
its owner is garbage-collected), and callers see ordinary writeable C-ordered NumPy arrays
(their `base` is a `_Lease`). `release()` lets every kept buffer go.
"""

from __future__ import annotations

import collections
import math
import os

import numpy as np

MIN_BYTES = 16 << 20
KEEP = 4
CAPACITY = int(float(os.environ.get("NBXENT_OUTPUT_CACHE_MB", "1024")) * (1 << 20))

_free: collections.deque = collections.deque()   # _Kept buffers, oldest first


class _Kept:
    """A released buffer in `_free` (compared by identity: deque.remove on bare arrays
    would compare their elements)."""

    __slots__ = ("block",)

    def __init__(self, block: np.ndarray):
        self.block = block


class _Lease:
    """The owner of one output's memory: gives its buffer back when it is collected."""

    __slots__ = ("__array_interface__", "_block")

    def __init__(self, block: np.ndarray, shape: tuple, dtype: np.dtype):
        self._block = block
        self.__array_interface__ = {
            "shape": shape, "typestr": dtype.str, "version": 3, "strides": None,
            "data": (block.ctypes.data, False),
        }

    def __del__(self):
        try:
            _give_back(self._block)
        except Exception:   # interpreter shutdown: module globals already gone
            pass


def empty(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype), from a released buffer of the same size where there is one."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or nbytes > CAPACITY:
        return np.empty(shape, dtype)
    block = _take(nbytes)
    if block is None:
        block = np.empty(nbytes, np.uint8)
    return np.asarray(_Lease(block, shape, dtype))


def _take(nbytes: int):
    for kept in list(_free):   # a snapshot: other threads may take or give back meanwhile
        if kept.block.nbytes == nbytes:
            try:
                _free.remove(kept)
            except ValueError:   # taken by another thread first
                continue
            return kept.block
    return None


def _give_back(block: np.ndarray):
    _free.append(_Kept(block))
    while len(_free) > KEEP or kept_bytes() > CAPACITY:
        try:
            _free.popleft()
        except IndexError:
            break


def release():
    """Let every kept buffer go (their memory returns to the system)."""
    _free.clear()


def kept_bytes() -> int:
    """Bytes held in released buffers, waiting for reuse."""
    return sum(k.block.nbytes for k in list(_free))
