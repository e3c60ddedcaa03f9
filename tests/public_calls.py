"""Every public function of nbxent called on fixed data, for the concurrency, process and
determinism tests (tests/test_concurrency.py and the child processes it starts).

`calls()` maps a name to a zero-argument callable that returns the call's results as NumPy
arrays; `run(calls)` runs them; `mismatches(a, b)` names the results that differ in any bit.
`calls(backend="gpu")` runs them on GPU arrays (tiny shapes under the CUDA simulator).
"""

from __future__ import annotations

import numpy as np

import nbxent
from backends import SIMULATOR, to_backend, to_host


def _inputs(seed: int, tiny: bool):
    rng = np.random.default_rng(seed)
    n, c, wide_c, bn = (40, 7, 300, 50) if tiny else (3000, 37, 50_000, 5000)
    x = (3 * rng.standard_normal((n, c))).astype(np.float32)
    y = rng.integers(0, c, n)
    y[::7] = -100
    wide = (3 * rng.standard_normal((2 if tiny else 12, wide_c))).astype(np.float32)
    wide_y = rng.integers(0, wide_c, wide.shape[0])
    soft = nbxent.softmax(rng.standard_normal((n, c)).astype(np.float32))
    probs = nbxent.softmax(x.astype(np.float64))
    weight = rng.uniform(0.5, 2.0, c).astype(np.float32)
    bx = (2 * rng.standard_normal((bn, 9))).astype(np.float32)
    bt = (rng.random((bn, 9)) < 0.3).astype(np.float32)
    # few classes, rows in several of the few- and two-classes kernels' work items (16384
    # rows each), float16 for the few-classes forward's own compile (compile_interleaving)
    fn = 40 if tiny else 40_000
    few = (3 * rng.standard_normal((fn, 10))).astype(np.float16)
    few_y = rng.integers(0, 10, fn)
    few_y[::5] = -100
    six = few[:, :6].astype(np.float32)
    six_y = np.where(few_y < 0, few_y, few_y % 6)
    pair = (3 * rng.standard_normal((fn, 2))).astype(np.float32)
    pair_y = rng.integers(0, 2, fn)
    return {k: v for k, v in locals().items() if isinstance(v, np.ndarray)}


def _arrays(*values):
    return tuple(np.array(v if isinstance(v, list) else to_host(v), copy=True) for v in values)


def calls(seed: int = 20261124, backend: str = "cpu") -> dict:
    """name -> zero-argument callable returning a tuple of NumPy arrays."""
    d = {k: to_backend(v, backend)
         for k, v in _inputs(seed, tiny=backend == "gpu" and SIMULATOR).items()}
    x, y, wide, wide_y, soft, probs = d["x"], d["y"], d["wide"], d["wide_y"], d["soft"], d["probs"]
    weight, bx, bt = d["weight"], d["bx"], d["bt"]
    few, few_y, six, six_y = d["few"], d["few_y"], d["six"], d["six_y"]
    pair, pair_y = d["pair"], d["pair_y"]
    opts = dict(weight=weight, label_smoothing=0.1, z_loss=1e-3)
    c = d["x"].shape[1]
    copy = (lambda a: a.copy()) if backend == "cpu" else (lambda a: to_backend(to_host(a), backend))

    def score():
        r = nbxent.score(x, y)
        return _arrays([r.n_rows, r.n_scored], [r.sum_loss, r.mean_loss, r.perplexity, r.accuracy])

    return {
        "cross_entropy mean": lambda: _arrays(nbxent.cross_entropy(x, y, **opts)),
        "cross_entropy none": lambda: _arrays(nbxent.cross_entropy(x, y, reduction="none")),
        "cross_entropy sum, wide": lambda: _arrays(nbxent.cross_entropy(wide, wide_y, reduction="sum")),
        "cross_entropy soft": lambda: _arrays(nbxent.cross_entropy(x, soft)),
        "cross_entropy mean, 10 classes, float16": lambda: _arrays(
            nbxent.cross_entropy(few, few_y)),
        "cross_entropy_with_grad, 6 classes": lambda: _arrays(
            *nbxent.cross_entropy_with_grad(six, six_y)),
        "cross_entropy_with_grad, 2 classes": lambda: _arrays(
            *nbxent.cross_entropy_with_grad(pair, pair_y)),
        "cross_entropy_with_grad": lambda: _arrays(*nbxent.cross_entropy_with_grad(x, y, **opts)),
        "cross_entropy_with_grad inplace": lambda: _arrays(
            *nbxent.cross_entropy_with_grad(copy(x), y, reduction="sum", inplace=True)),
        "cross_entropy_with_grad wide": lambda: _arrays(
            *nbxent.cross_entropy_with_grad(wide, wide_y)),
        "nll_loss": lambda: _arrays(nbxent.nll_loss(nbxent.log_softmax(x), y, weight=weight)),
        "log_softmax": lambda: _arrays(nbxent.log_softmax(x)),
        "softmax": lambda: _arrays(nbxent.softmax(wide)),
        "logsumexp": lambda: _arrays(nbxent.logsumexp(x), nbxent.logsumexp(wide)),
        "entropy": lambda: _arrays(nbxent.entropy(x, from_logits=True), nbxent.entropy(soft)),
        "kl_divergence": lambda: _arrays(nbxent.kl_divergence(soft, x, from_logits=True,
                                                              reduction="mean")),
        "softmax_focal_loss": lambda: _arrays(nbxent.softmax_focal_loss(x, y, gamma=2.0)),
        "log_loss": lambda: _arrays(nbxent.log_loss(np.where(to_host(y) < 0, 0, to_host(y)),
                                                    probs, labels=np.arange(c))),
        "binary_cross_entropy": lambda: _arrays(
            nbxent.binary_cross_entropy(nbxent.softmax(bx), bt, reduction="sum")),
        "binary_cross_entropy_with_logits": lambda: _arrays(
            nbxent.binary_cross_entropy_with_logits(
                bx, bt, pos_weight=to_backend(np.full(9, 2.0, np.float32), backend))),
        "binary_cross_entropy_with_logits_with_grad": lambda: _arrays(
            *nbxent.binary_cross_entropy_with_logits_with_grad(bx, bt)),
        "sigmoid_focal_loss": lambda: _arrays(nbxent.sigmoid_focal_loss(bx, bt)),
        "score": score,
    }


def run(table: dict) -> dict:
    return {name: fn() for name, fn in table.items()}


def mismatches(expected: dict, got: dict) -> list[str]:
    """Names whose results differ from `expected` in dtype, shape or any bit."""
    bad = []
    for name, want in expected.items():
        have = got[name]
        same = len(want) == len(have) and all(
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            for a, b in zip(want, have))
        if not same:
            bad.append(name)
    return bad
