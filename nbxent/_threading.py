"""Numba's threading layer: which one runs nbxent's CPU kernels, and how each is made safe.

Numba picks one layer per process, at its first parallel call, in the order tbb, omp,
workqueue (or as NUMBA_THREADING_LAYER says):

- tbb: safe with threads and with fork. nbxent depends on the `tbb` wheel where one exists
  (x86-64), but pip puts libtbb in <prefix>/lib, where the dynamic loader does not look; so
  nbxent loads it by path when imported, and Numba then finds the library already loaded.
- omp: safe with threads. GNU OpenMP is not safe with fork: a child forked after the parent
  started OpenMP threads is killed by Numba at its first parallel call. nbxent's CPU calls
  in such a child raise RuntimeError instead (use spawn, or install tbb).
- workqueue: concurrent parallel calls from two threads abort the process, so nbxent runs
  its CPU kernels one call at a time under a process-wide lock when this layer is active.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
import threading

import numba
from numba.np.ufunc import parallel as _parallel

_TBB_LIBRARY = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}
_SERIAL_LOCK = threading.RLock()
_forked_after_gnu_openmp = False


def _preload_tbb() -> str | None:
    """Load the `tbb` distribution's shared library by path; return the path, or None."""
    name = _TBB_LIBRARY.get(sys.platform)
    if name is None or _parallel._is_initialized:
        return None
    try:
        files = importlib.metadata.distribution("tbb").files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name:
            path = os.path.realpath(file.locate())
            try:
                ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
            except OSError:
                return None
            return path
    return None


TBB_PATH = _preload_tbb()


_active_layer: str | None = None


def active_layer() -> str:
    """The layer in use, starting Numba's thread pool if no parallel kernel ran yet."""
    global _active_layer
    if _active_layer is None:
        _parallel._launch_threads()
        _active_layer = numba.threading_layer()
    return _active_layer


def _gnu_openmp_started() -> bool:
    if not _parallel._is_initialized or numba.threading_layer() != "omp":
        return False
    from numba.np.ufunc import omppool

    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


def _note_fork_in_child():
    global _forked_after_gnu_openmp
    _forked_after_gnu_openmp = _forked_after_gnu_openmp or _gnu_openmp_started()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork_in_child)


class _Serialised:
    """A kernel module whose callables run one at a time under the process-wide lock."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not callable(attr):
            return attr

        def locked(*args, **kwargs):
            with _SERIAL_LOCK:
                return attr(*args, **kwargs)

        return locked


def guard(module):
    """`module` (a family of CPU kernels) made safe for the active layer; see the module doc.

    Raises RuntimeError in a child forked after its parent started GNU OpenMP threads, where
    Numba would otherwise kill the process.
    """
    if _forked_after_gnu_openmp:
        raise RuntimeError(
            "nbxent cannot run CPU kernels in this process: it was forked after its parent "
            "started GNU OpenMP threads (Numba's 'omp' threading layer), which is not safe "
            "after fork. Use multiprocessing's 'spawn' or 'forkserver' start method, or "
            "install tbb (pip install tbb) so that Numba uses its fork-safe TBB layer."
        )
    if active_layer() == "workqueue":
        return _Serialised(module)
    return module


def _loadable(layer: str) -> bool:
    try:
        if layer == "tbb":
            _parallel._check_tbb_version_compatible()
            from numba.np.ufunc import tbbpool  # noqa: F401
        elif layer == "omp":
            from numba.np.ufunc import omppool  # noqa: F401
        else:
            from numba.np.ufunc import workqueue  # noqa: F401
    except ImportError:
        return False
    return True


def describe() -> dict:
    """The threading facts `nbxent info` reports."""
    layer = active_layer()
    info = {
        "threading_layer": layer,
        "layers_available": [name for name in ("tbb", "omp", "workqueue") if _loadable(name)],
        # Whether concurrent calls from several threads queue behind one lock.
        "serialised_calls": layer == "workqueue",
        # Whether a child forked now could run nbxent's CPU kernels.
        "fork_safe": not _gnu_openmp_started(),
        "tbb_library": TBB_PATH,
        "numba_num_threads": numba.config.NUMBA_NUM_THREADS,
        "threads_in_use": numba.get_num_threads(),
    }
    if layer == "omp":
        from numba.np.ufunc import omppool

        info["openmp_vendor"] = getattr(omppool, "openmp_vendor", "unknown")
    return info
