"""Shared data makers for the asv suite (setup work: never inside a timed function)."""

import numpy as np


def logits_and_labels(n, c, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c), dtype=np.float32) * 2).astype(dtype)
    y = rng.integers(0, c, n)
    return x, y
