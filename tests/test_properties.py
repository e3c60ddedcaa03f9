"""Property-based tests (hypothesis): every public function equals its float64 reference
across shapes (empty row axes, C = 1), dtypes (float16/32/64), memory layouts (C, Fortran,
stepped and reversed strides) and options; and the identities the losses obey."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbxent
from nbxent import reference as ref

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.float16, np.float32, np.float64]


def with_layout(draw, a: np.ndarray) -> np.ndarray:
    """`a`'s values in a drawn memory layout: C order, Fortran order, every other element
    of a larger array along one axis, or a negative stride along one axis."""
    kind = draw(st.sampled_from(["c", "fortran", "stepped", "reversed"]))
    if a.ndim == 0 or kind == "c":
        return a
    if kind == "fortran":
        return np.asfortranarray(a)
    ax = draw(st.integers(0, a.ndim - 1))
    if kind == "stepped":
        return np.repeat(a, 2, axis=ax)[(slice(None),) * ax + (slice(None, None, 2),)]
    return np.flip(np.flip(a, ax).copy(), ax)


@st.composite
def shapes(draw, min_ndim=1):
    """1-4 dimensions of 0-5 (at least 1 along a 1-D array's only axis)."""
    ndim = draw(st.integers(min_ndim, 4))
    return tuple(draw(st.lists(st.integers(0 if ndim > 1 else 1, 5), min_size=ndim,
                               max_size=ndim)))


@st.composite
def problems(draw):
    """Logits of 1-4 dimensions with any class axis, hard or soft targets, and options."""
    shape = draw(shapes())
    ndim = len(shape)
    axis = draw(st.integers(-ndim, ndim - 1))
    c = shape[axis]
    if c == 0:
        shape = shape[:axis % ndim] + (1,) + shape[axis % ndim + 1:]
        c = 1
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape) * draw(st.sampled_from([0.1, 3.0, 30.0]))).astype(dtype)
    logits = with_layout(draw, logits)
    index_shape = shape[:axis % ndim] + shape[axis % ndim + 1:]
    soft = draw(st.booleans())
    if soft:
        p = rng.random(shape)
        target = with_layout(draw, (p / p.sum(axis=axis, keepdims=True)).astype(dtype))
    else:
        target = with_layout(draw, rng.integers(-1, c, size=index_shape))  # -1: ignore_index
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
    """Tolerance of results computed from `dtype` input (float16 is computed in float32)."""
    return 1e-10 if dtype == np.float64 else 2e-5


def _out_tol(dtype):
    """Tolerance of results stored in `dtype` (float16 gradients, softmax outputs)."""
    return {np.dtype(np.float16): 2e-3}.get(np.dtype(dtype), _tol(dtype))


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
    gtol = _out_tol(grad.dtype)
    np.testing.assert_allclose(grad, want_grad, rtol=gtol, atol=gtol, equal_nan=True)


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
        assert np.allclose(sums, 0, atol=5 * _out_tol(grad.dtype))


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
    log_probs = nbxent.log_softmax(logits, axis=axis)   # rounded to float16 for float16 input
    nll = nbxent.nll_loss(log_probs, labels, axis=axis, reduction="none")
    tol = _out_tol(log_probs.dtype) * 10
    np.testing.assert_allclose(soft, nll, rtol=tol, atol=tol)


@SETTINGS
@given(problems())
def test_normalisers_match_reference(problem):
    logits, _, options = problem
    axis = options["axis"]
    tol = _tol(logits.dtype)
    for name in ("log_softmax", "softmax", "logsumexp"):
        got = getattr(nbxent, name)(logits, axis=axis)
        tol = _out_tol(got.dtype)
        np.testing.assert_allclose(got, getattr(ref, name)(logits, axis=axis), rtol=tol, atol=tol)


@SETTINGS
@given(problems())
def test_nll_loss_matches_reference(problem):
    logits, target, options = problem
    if not np.issubdtype(target.dtype, np.integer):
        return
    kw = {k: options[k] for k in ("axis", "weight", "reduction", "ignore_index")}
    tol = _tol(logits.dtype)
    np.testing.assert_allclose(np.asarray(nbxent.nll_loss(logits, target, **kw), np.float64),
                               ref.nll_loss(logits, target, **kw), rtol=tol, atol=tol,
                               equal_nan=True)


@SETTINGS
@given(problems(), st.sampled_from([0.0, 0.5, 2.0]))
def test_divergences_match_reference(problem, gamma):
    logits, target, options = problem
    axis, reduction = options["axis"], options["reduction"]
    tol = 10 * _tol(logits.dtype)
    check = lambda got, want: np.testing.assert_allclose(  # noqa: E731
        np.asarray(got, np.float64), want, rtol=tol, atol=tol, equal_nan=True)
    for from_logits in (True, False):
        p = logits if from_logits else nbxent.softmax(logits.astype(np.float64), axis=axis)
        check(nbxent.entropy(p, axis=axis, from_logits=from_logits),
              ref.entropy(p, axis=axis, from_logits=from_logits))
    if np.issubdtype(target.dtype, np.integer):
        kw = dict(axis=axis, gamma=gamma, ignore_index=-1, reduction=reduction,
                  alpha=options["weight"])
        check(nbxent.softmax_focal_loss(logits, target, **kw),
              ref.softmax_focal_loss(logits, target, **kw))
    else:
        check(nbxent.kl_divergence(target, logits, axis=axis, from_logits=True,
                                   reduction=reduction),
              ref.kl_divergence(target, logits, axis=axis, from_logits=True, reduction=reduction))


@SETTINGS
@given(problems())
def test_kl_divergence_is_cross_entropy_minus_entropy(problem):
    logits, target, options = problem
    if np.issubdtype(target.dtype, np.integer):
        return
    axis = options["axis"]
    kl = nbxent.kl_divergence(target, logits, axis=axis, from_logits=True)
    h_pq = nbxent.cross_entropy(logits, target, axis=axis, reduction="none")
    h_p = nbxent.entropy(target, axis=axis)
    tol = 100 * _tol(logits.dtype) * (1 + np.abs(np.asarray(h_pq, np.float64)))
    assert np.all(np.abs(np.asarray(kl, np.float64) - (h_pq.astype(np.float64) - h_p)) <= tol)
    assert np.all(np.asarray(kl) >= -tol)


@st.composite
def binary_problems(draw):
    """Elementwise logits, targets in [0, 1], broadcast weights and options."""
    shape = draw(shapes())
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = with_layout(draw, (rng.standard_normal(shape) * draw(st.sampled_from([0.1, 3.0, 30.0]))).astype(dtype))
    hard = draw(st.booleans())
    target = rng.random(shape)
    target = with_layout(draw, (target < 0.5 if hard else target).astype(dtype))
    last = shape[-1]
    weight = draw(st.sampled_from(["none", "last", "full"]))
    weight = {"none": None, "last": rng.uniform(0.1, 2, last), "full": rng.uniform(0.1, 2, shape)}[weight]
    pos_weight = rng.uniform(0.1, 3, last).astype(dtype) if draw(st.booleans()) else None
    reduction = draw(st.sampled_from(["none", "sum", "mean"]))
    return logits, target, weight, pos_weight, reduction


@SETTINGS
@given(binary_problems(), st.sampled_from([0.0, 1.0, 2.0]), st.sampled_from([None, 0.25]))
def test_binary_family_matches_reference(problem, gamma, alpha):
    logits, target, weight, pos_weight, reduction = problem
    tol = 10 * _tol(logits.dtype)

    def check(got, want, t=tol):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=t, atol=t,
                                   equal_nan=True)

    probs = nbxent.softmax(np.stack([logits, np.zeros_like(logits)], -1))[..., 0]  # sigmoid
    kw = dict(weight=weight, reduction=reduction)
    check(nbxent.binary_cross_entropy(probs, target, **kw),
          ref.binary_cross_entropy(probs, target, **kw))
    kw["pos_weight"] = pos_weight
    check(nbxent.binary_cross_entropy_with_logits(logits, target, **kw),
          ref.binary_cross_entropy_with_logits(logits, target, **kw))
    loss, grad = nbxent.binary_cross_entropy_with_logits_with_grad(logits, target, **kw)
    want_loss, want_grad = ref.binary_cross_entropy_with_logits_with_grad(logits, target, **kw)
    check(loss, want_loss)
    check(grad, want_grad, _out_tol(grad.dtype))
    check(nbxent.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction=reduction),
          ref.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction=reduction))
    assert np.all(np.asarray(nbxent.binary_cross_entropy_with_logits(
        logits, target, reduction="none")) >= 0)


@SETTINGS
@given(st.integers(1, 40), st.integers(2, 6), st.sampled_from(DTYPES[1:]), st.booleans(),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_log_loss_matches_reference(n, c, dtype, weighted, normalize, seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c, n)
    y_prob = rng.random((n, c)).astype(dtype)
    y_prob /= y_prob.sum(1, keepdims=True)
    kw = dict(labels=np.arange(c), normalize=normalize,
              sample_weight=rng.uniform(0.1, 2, n) if weighted else None)
    np.testing.assert_allclose(float(nbxent.log_loss(y_true, y_prob, **kw)),
                               ref.log_loss(y_true, y_prob, **kw), rtol=1e-5, atol=1e-6)
