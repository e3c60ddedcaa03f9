"""Property-based tests (hypothesis): nbxent equals its float64 reference across shapes and options."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbxent
from nbxent import reference as ref

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    """Logits of 1-4 dimensions with any class axis, hard or soft targets, and options."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(0 if ndim > 1 else 1, 5), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    c = shape[axis]
    if c == 0:
        shape = shape[:axis % ndim] + (1,) + shape[axis % ndim + 1:]
        c = 1
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape) * draw(st.sampled_from([0.1, 3.0, 30.0]))).astype(dtype)
    if draw(st.booleans()):  # a non-contiguous view of the same values
        logits = np.asfortranarray(logits)
    index_shape = shape[:axis % ndim] + shape[axis % ndim + 1:]
    soft = draw(st.booleans())
    if soft:
        p = rng.random(shape)
        target = (p / p.sum(axis=axis, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(-1, c, size=index_shape)  # -1 plays ignore_index
    options = dict(
        axis=axis,
        reduction=draw(st.sampled_from(["none", "sum", "mean"])),
        label_smoothing=draw(st.sampled_from([0.0, 0.1, 1.0])),
        z_loss=draw(st.sampled_from([0.0, 1e-3])),
        weight=(rng.random(c) + 0.1).astype(dtype) if draw(st.booleans()) else None,
    )
    if not soft:
        options["ignore_index"] = -1
    return logits, target, options


def _tol(dtype):
    return 1e-10 if dtype == np.float64 else 2e-5


@SETTINGS
@given(problems())
def test_cross_entropy_and_gradient_match_reference(problem):
    logits, target, options = problem
    tol = _tol(logits.dtype)
    got = nbxent.cross_entropy(logits, target, **options)
    want = ref.cross_entropy(logits, target, **options)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol, equal_nan=True)
    loss, grad = nbxent.cross_entropy_with_grad(logits, target, **options)
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, target, **options)
    # forward and fused are separately compiled loops: where the CPU has AVX-512 (seen on the
    # GPU machine's host) their FMA contraction may differ by an ulp
    ulps = 4 * np.finfo(np.asarray(got).dtype).eps
    np.testing.assert_allclose(np.asarray(loss), np.asarray(got), rtol=ulps, atol=0, equal_nan=True)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol, equal_nan=True)


@SETTINGS
@given(problems())
def test_losses_are_non_negative_and_grad_rows_sum_to_zero(problem):
    logits, target, options = problem
    options.update(reduction="none", z_loss=0.0)
    loss, grad = nbxent.cross_entropy_with_grad(logits, target, **options)
    assert np.all(np.asarray(loss) >= 0)
    if options["weight"] is None:
        # Without weights (and z-loss) the gradient of each row sums to 0.
        sums = np.moveaxis(grad.astype(np.float64), options["axis"], -1).sum(-1)
        assert np.allclose(sums, 0, atol=1e-5)


@SETTINGS
@given(problems())
def test_one_hot_cross_entropy_equals_nll_of_log_softmax(problem):
    logits, target, options = problem
    if not np.issubdtype(target.dtype, np.integer):
        return
    axis = options["axis"]
    labels = np.where(target < 0, 0, target)
    c = logits.shape[axis]
    one_hot = np.moveaxis(np.eye(c, dtype=logits.dtype)[labels], -1, axis)
    soft = nbxent.cross_entropy(logits, one_hot, axis=axis, reduction="none")
    nll = nbxent.nll_loss(nbxent.log_softmax(logits, axis=axis), labels, axis=axis, reduction="none")
    tol = _tol(logits.dtype) * 10
    np.testing.assert_allclose(soft, nll, rtol=tol, atol=tol)


@SETTINGS
@given(problems())
def test_normalisers_match_reference(problem):
    logits, _, options = problem
    axis = options["axis"]
    tol = _tol(logits.dtype)
    for name in ("log_softmax", "softmax", "logsumexp"):
        np.testing.assert_allclose(getattr(nbxent, name)(logits, axis=axis),
                                   getattr(ref, name)(logits, axis=axis), rtol=tol, atol=tol)
