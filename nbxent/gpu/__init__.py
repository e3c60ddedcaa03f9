"""Numba CUDA kernels, module for module the twins of nbxent.cpu (same launchers, same
signatures; see docs/kernels.md), plus the array plumbing of the dispatch layer (`_arrays`)
and the shared launch settings and fixed-order reductions (`_reduce`).

Importing this package imports nothing heavy: `_arrays.is_device_array` must stay cheap for
NumPy inputs; the kernel modules import numba.cuda when they are imported.
"""

from nbxent.gpu._arrays import available, is_device_array

__all__ = ["available", "is_device_array"]
