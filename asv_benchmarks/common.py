"""Shared helpers of the asv suite (setup work: never inside a timed function).

NBXENT_ASV_SMOKE=1 swaps every shape for a tiny one: the test suite runs each benchmark
once that way (tests/test_asv_suite.py) so that the suite cannot rot unnoticed.
"""

import os
import time

import numpy as np

SMOKE = os.environ.get("NBXENT_ASV_SMOKE") == "1"


def sized(full, tiny):
    """`full` for real runs, `tiny` for the smoke run."""
    return tiny if SMOKE else full


def logits_and_labels(n, c, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c), dtype=np.float32) * 2).astype(dtype)
    y = rng.integers(0, c, n)
    return x, y


def best_seconds(fn, repeats=3, sync=None):
    """The fastest of `repeats` timed calls of `fn` (after `sync()` where given)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best


def cuda_peers():
    """(cupy, torch) with a usable GPU; NotImplementedError (asv: skip) otherwise."""
    try:
        import cupy
        import torch

        if cupy.cuda.runtime.getDeviceCount() == 0 or not torch.cuda.is_available():
            raise NotImplementedError("no GPU")
    except Exception as exc:   # no CuPy, no driver, no device: asv skips the benchmark
        raise NotImplementedError(f"no GPU: {exc}") from exc
    return cupy, torch
