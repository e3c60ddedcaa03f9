"""`nbxent.info()`: what this process runs on, for bug reports and `nbxent info`."""

from __future__ import annotations

import importlib.metadata
import platform
import sys


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> dict:
    from nbxent.gpu import _arrays

    if _arrays.simulator_enabled():
        return {"gpu": "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"}
    if not _arrays.available():
        return {"gpu": None}
    from numba import cuda

    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    return {"gpu": name, "compute_capability": ".".join(map(str, device.compute_capability))}


def info() -> dict:
    """Versions, the Numba threading layer and its safety, thread counts, the GPU if any.

    Calling it starts Numba's CPU thread pool (as the first CPU kernel would) and, when a
    GPU is present, a CUDA context.
    """
    from nbxent import _config, _pool, _threading

    facts = {
        "nbxent": _version("nbxent"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "numba_cuda": _version("numba-cuda"),
        "cupy": next(filter(None, (_version(d) for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy"))),
                     None),
        "tbb": _version("tbb"),
        "disk_cache": _config.CACHE,
        "output_cache_mb": _pool.CAPACITY >> 20,
        "output_cache_kept_mb": _pool.kept_bytes() >> 20,
    }
    facts.update(_threading.describe())
    facts.update(_gpu())
    return facts
