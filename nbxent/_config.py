"""Compilation settings shared by every Numba kernel of nbxent.

FASTMATH: LLVM fast-math flags for all kernels. It deliberately leaves out 'nnan' and
'ninf': cross-entropy must handle -inf logits (masked classes) and propagate NaN, and with
those flags LLVM may assume neither occurs and fold the checks away.

CACHE: Numba's on-disk cache (`cache=True`), off unless NBXENT_CACHE=1 is set before nbxent
is imported. It is opt-in because the cache is keyed by the CPU model and the function's own
file only (a changed helper in another module does not invalidate it) and concurrent
processes writing the same cache files have been reported to crash (numba issues 4807,
10128). With it on, a later process's first call skips most of the compilation. A
kernel loaded from the cache can run other code than a fresh compile: its object code
holds weak copies of the jitted functions it calls (optimised again in its own module),
and in a fresh process the calls resolve to those functions' own compiles instead, while
a process that loaded the kernel never compiles them. Arithmetic whose order LLVM may
choose ('reassoc') can round differently in the two copies: where that was seen (the
small-C kernel's z-loss; entropy from logits, on an Intel Xeon) the code is compiled
without it (STRICT in nbxent.cpu._math), sums in a fixed order of partial sums. Others
(logsumexp's row sums, the binary family's block sums) still reassociate; the check is
tests/test_concurrency.py's: every public call has the same bits loaded from the cache as
freshly compiled.
"""

from __future__ import annotations

import os

import numba

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
CACHE = os.environ.get("NBXENT_CACHE", "0") == "1"


def jit(**options):
    """`numba.njit` with nbxent's settings: FASTMATH, error_model='numpy', CACHE, nogil."""
    settings = dict(fastmath=set(FASTMATH), error_model="numpy", cache=CACHE, nogil=True)
    settings.update(options)
    return numba.njit(**settings)


def hjit(**options):
    """`jit` for helpers called only from other kernels: no Python or C wrappers (they
    cost compile time and nothing calls them)."""
    return jit(no_cpython_wrapper=True, no_cfunc_wrapper=True, **options)


def pjit(**options):
    """`jit(parallel=True)`: for kernels whose outer loop is a `numba.prange`."""
    return jit(parallel=True, **options)
