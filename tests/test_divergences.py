"""The divergence family (focal loss, entropy, KL divergence, log loss) on every backend
against nbxent.reference.divergences, SciPy, scikit-learn and PyTorch-style identities."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

import nbxent
from nbxent.divergences import entropy, kl_divergence, log_loss, softmax_focal_loss
from nbxent.reference import divergences as ref
from nbxent.reference import softmax as ref_softmax
from tests.backends import SIMULATOR, backend_params, is_backend_array, small, to_backend, to_host

DTYPES = [np.float32, np.float64, np.float16]
TOL = {np.float64: 1e-12, np.float32: 3e-6, np.float16: 3e-6}
rng = np.random.default_rng()


@pytest.fixture(autouse=True)
def _narrow_simulated_blocks(request):
    """The simulator runs a Python thread per CUDA thread: 32-thread blocks for these tiny
    shapes (results do not depend on the block width)."""
    if "gpu" not in request.node.name or not SIMULATOR:
        yield
        return
    from nbxent.gpu import _reduce

    with _reduce.launch_config(THREADS_PER_BLOCK=32, LANES=32):
        yield


def gpu_dtypes(backend, dtype):
    """Under the simulator, float32 only (other dtypes: same code, converted on load)."""
    if backend == "gpu" and SIMULATOR and dtype != np.float32:
        pytest.skip("simulator: float32 only for this matrix")


def assert_close(got, want, tol):
    got = to_host(got).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)


def probs(shape, zeros=0.0):
    p = rng.random(shape)
    if zeros:
        p[rng.random(shape) < zeros] = 0.0
    s = p.sum(-1, keepdims=True)
    return p / np.where(s == 0, 1, s)


def logits(shape, dtype):
    return (rng.standard_normal(shape) * 3).astype(dtype)


def ref_input(a):
    """The reference sees the same (rounded) values as the kernels."""
    return np.asarray(a).astype(np.float64)


# ----------------------------------------------------------------------------- focal loss


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("opts", [{}, {"gamma": 0.5, "alpha": True, "ignore_index": 2}])
def test_focal_matches_reference(backend, dtype, reduction, opts):
    gpu_dtypes(backend, dtype)
    n, c = small(backend, (203, 37), (5, 6))
    x = logits((n, c), dtype)
    opts = dict(opts)
    alpha = rng.random(c) + 0.5 if opts.pop("alpha", False) else None
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.2] = opts.get("ignore_index", -100)
    got = softmax_focal_loss(to_backend(x, backend), to_backend(y, backend),
                             alpha=to_backend(alpha, backend), reduction=reduction, **opts)
    want = ref.softmax_focal_loss(ref_input(x), y, alpha=alpha, reduction=reduction, **opts)
    assert is_backend_array(got, backend)
    assert to_host(got).dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert_close(got, want, TOL[dtype])


@backend_params
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_focal_gamma0_is_cross_entropy(backend, reduction):
    n, c = small(backend, (64, 11), (4, 5))
    x = logits((n, c), np.float64)
    y = rng.integers(0, c, n)
    y[0] = -100
    alpha = rng.random(c) + 0.1
    for w in (None, alpha):
        got = softmax_focal_loss(to_backend(x, backend), to_backend(y, backend), gamma=0.0,
                                 alpha=to_backend(w, backend), reduction=reduction)
        want = nbxent.cross_entropy(to_backend(x, backend), to_backend(y, backend),
                                    weight=to_backend(w, backend), reduction=reduction)
        assert_close(got, to_host(want).astype(np.float64), 1e-13)


def test_focal_axis_and_edges():
    x = logits((3, 5, 4), np.float32)          # classes on axis 1
    y = rng.integers(0, 5, (3, 4))
    got = softmax_focal_loss(x, y, axis=1, reduction="none")
    want = ref.softmax_focal_loss(ref_input(x), y, axis=1, reduction="none")
    assert_close(got, want, 3e-6)
    x = np.array([[0.0, -np.inf, 1.0], [np.nan, 0, 0], [-np.inf, 0, 0]], np.float32)
    got = softmax_focal_loss(x, np.array([0, 1, 0]), reduction="none")
    assert np.isfinite(got[0]) and np.isnan(got[1]) and got[2] == np.inf
    assert np.isnan(softmax_focal_loss(np.zeros((0, 3)), np.zeros(0, int)))
    assert softmax_focal_loss(np.zeros((0, 3)), np.zeros(0, int), reduction="sum") == 0
    assert softmax_focal_loss(np.zeros((4, 1)), np.zeros(4, int), reduction="sum") == 0  # C=1


@pytest.mark.parametrize("call, exc, match", [
    (lambda: softmax_focal_loss(np.zeros((3, 4)), np.array([0, 4, 1])), ValueError,
     r"target\[1\] = 4 is not a class index in \[0, 4\)"),
    (lambda: softmax_focal_loss(np.zeros((3, 4)), np.array([0, 1])), ValueError,
     r"shape \(2,\).*shape \(3, 4\)"),
    (lambda: softmax_focal_loss(np.zeros((3, 4)), np.zeros(3)), TypeError, "integer class"),
    (lambda: softmax_focal_loss(np.zeros((3, 4)), np.zeros(3, int), gamma=-1), ValueError,
     "gamma must be a finite number >= 0.0"),
    (lambda: softmax_focal_loss(np.zeros((3, 4)), np.zeros(3, int), alpha=np.ones(3)),
     ValueError, r"alpha has shape \(3,\).*4 classes"),
    (lambda: softmax_focal_loss(np.zeros((3, 4)), np.zeros(3, int), reduction="avg"),
     ValueError, "reduction must be one of"),
])
def test_focal_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- entropy


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_matches_reference_and_scipy(backend, dtype):
    n, c = small(backend, (150, 33), (5, 7))
    p = probs((n, c), zeros=0.2).astype(dtype)
    got = entropy(to_backend(p, backend))
    want = ref.entropy(ref_input(p))
    assert is_backend_array(got, backend) and to_host(got).shape == (n,)
    assert_close(got, want, TOL[dtype])
    assert_close(got, special.entr(ref_input(p)).sum(-1), TOL[dtype])
    if dtype == np.float64:
        assert_close(got, stats.entropy(p, axis=-1), 1e-12)
    x = logits((n, c), dtype)
    got = entropy(to_backend(x, backend), from_logits=True)
    assert_close(got, ref.entropy(ref_input(x), from_logits=True), TOL[dtype])


@backend_params
def test_entropy_edges(backend):
    p = np.array([[0.0, 1.0, 0.0], [np.nan, 0.5, 0.5], [0.5, 0.5, 0.0]])
    got = to_host(entropy(to_backend(p, backend)))
    assert got[0] == 0 and np.isnan(got[1]) and np.isclose(got[2], np.log(2))
    x = np.array([[0.0, -np.inf, 0.0], [np.nan, 0, 0], [-np.inf] * 3, [50.0, 0, -50]])
    got = to_host(entropy(to_backend(x, backend), from_logits=True))
    assert np.isclose(got[0], np.log(2)) and np.isnan(got[1]) and np.isnan(got[2])
    assert_close(got[3], ref.entropy(x[3], from_logits=True), 1e-12)
    assert to_host(entropy(to_backend(np.zeros((0, 4)), backend))).shape == (0,)
    assert to_host(entropy(to_backend(np.ones((2, 1)), backend))).tolist() == [0.0, 0.0]


def test_entropy_tiny_entropy_is_accurate():
    x = np.array([[0.0, -30.0, -40.0]], np.float32)
    e = np.exp(x[0].astype(np.float64))
    want = np.log1p(e[1:].sum()) - (e * x[0]).sum() / e.sum()   # 2.90103730286465e-12 (exact)
    np.testing.assert_allclose(entropy(x, from_logits=True), want, rtol=2e-6)
    np.testing.assert_allclose(entropy(x.astype(np.float64), from_logits=True), want, rtol=1e-14)


def test_entropy_bad_input():
    with pytest.raises(ValueError, match=r"p\[1, 2\] = 1.5 is outside \[0, 1\]"):
        entropy(np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.5]]))
    with pytest.raises(ValueError, match=r"p\[1, 0\] = -0.25"):
        entropy(np.array([[0.5, -0.25], [0.5, 0.5]]).T, axis=0)
    with pytest.raises(TypeError, match="from_logits must be True or False"):
        entropy(np.ones(3), from_logits="yes")
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        entropy(np.ones(3, int))


# ----------------------------------------------------------------------------- KL divergence


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_kl_matches_reference_and_scipy(backend, dtype, reduction):
    gpu_dtypes(backend, dtype)
    n, c = small(backend, (120, 29), (4, 6))
    p = probs((n, c), zeros=0.2).astype(dtype)
    q = probs((n, c)).astype(dtype)
    got = kl_divergence(to_backend(p, backend), to_backend(q, backend), reduction=reduction)
    want = ref.kl_divergence(ref_input(p), ref_input(q), reduction=reduction)
    assert_close(got, want, TOL[dtype] * 3)
    if reduction == "none":
        assert_close(got, special.rel_entr(ref_input(p), ref_input(q)).sum(-1), TOL[dtype] * 3)
    x = logits((n, c), dtype)
    got = kl_divergence(to_backend(p, backend), to_backend(x, backend), from_logits=True,
                        reduction=reduction)
    want = ref.kl_divergence(ref_input(p), ref_input(x), from_logits=True, reduction=reduction)
    assert_close(got, want, TOL[dtype] * 3)


@backend_params
def test_kl_edges(backend):
    p = np.array([[0.0, 1.0], [0.5, 0.5], [np.nan, 1.0], [0.0, 1.0]])
    q = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [np.nan, 1.0]])
    got = to_host(kl_divergence(to_backend(p, backend), to_backend(q, backend)))
    assert got[0] == 0 and got[1] == np.inf and np.isnan(got[2]) and np.isnan(got[3])
    x = np.array([[-np.inf, 0.0], [0.0, -np.inf], [np.nan, 0.0], [0.0, 0.0]])
    pp = np.array([[0.0, 1.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    got = to_host(kl_divergence(to_backend(pp, backend), to_backend(x, backend),
                                from_logits=True))
    assert got[0] == 0 and got[1] == np.inf and np.isnan(got[2]) and abs(got[3]) < 1e-15
    empty = to_backend(np.zeros((0, 3)), backend)
    assert np.isnan(to_host(kl_divergence(empty, empty, reduction="mean")))
    assert to_host(kl_divergence(empty, empty, reduction="sum")) == 0


def test_kl_batchmean_matches_torch():
    torch = pytest.importorskip("torch")
    p, x = probs((16, 9)), logits((16, 9), np.float64)
    want = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(x), -1), torch.tensor(p),
                                      reduction="batchmean").item()
    np.testing.assert_allclose(kl_divergence(p, x, from_logits=True, reduction="mean"), want,
                               rtol=1e-12)


def test_kl_bad_input():
    with pytest.raises(ValueError, match=r"p has shape \(2, 3\) but q has shape \(2, 4\)"):
        kl_divergence(np.ones((2, 3)) / 3, np.ones((2, 4)) / 4)
    with pytest.raises(ValueError, match=r"q\[0, 1\] = 2.0 is outside \[0, 1\]"):
        kl_divergence(np.ones((1, 2)) / 2, np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match=r"p\[0, 0\] = -1.0"):
        kl_divergence(np.array([[-1.0, 1.0]]), np.zeros((1, 2)), from_logits=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        kl_divergence(np.ones(2) / 2, np.ones(2) / 2, reduction="batchmean")


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**32 - 1), st.floats(0.0, 0.5))
def test_kl_identity(n, c, seed, zeros):
    """D_KL(p || q) = H(p, q) - H(p), H(p, q) the soft-target cross-entropy of the logits."""
    r = np.random.default_rng(seed)
    p = r.random((n, c))
    p[r.random((n, c)) < zeros] = 0.0
    p[:, 0] += 0.1
    p /= p.sum(-1, keepdims=True)
    x = r.standard_normal((n, c)) * 4
    kl = kl_divergence(p, x, from_logits=True)
    h_pq = nbxent.cross_entropy(x, p, reduction="none")
    np.testing.assert_allclose(kl, h_pq - entropy(p), rtol=1e-9, atol=1e-9)
    q = ref_softmax(x)
    np.testing.assert_allclose(kl_divergence(p, q), kl, rtol=1e-8, atol=1e-9)


# ----------------------------------------------------------------------------- log loss


def sk_log_loss(*args, **kwargs):
    from sklearn.metrics import log_loss as sk

    return sk(*args, **kwargs)


@backend_params
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_log_loss_matches_sklearn_multiclass(backend, dtype, weighted, normalize):
    gpu_dtypes(backend, dtype)
    if backend == "gpu" and SIMULATOR and weighted != normalize:
        pytest.skip("simulator: two of the four weighting combinations")
    n, c = small(backend, (300, 5), (6, 3))
    p = probs((n, c)).astype(dtype)
    p[0, 0] = 0.0   # clipping
    y = rng.integers(0, c, n)
    y[: c] = np.arange(c)
    w = rng.random(n) if weighted else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # float16 rows may miss sum 1 by more than sqrt(eps)
        got = log_loss(y, to_backend(p, backend), sample_weight=w, normalize=normalize)
        want = sk_log_loss(y, p, sample_weight=w, normalize=normalize)
    tol = 1e-12 if dtype == np.float64 else 1e-5 if dtype == np.float32 else 3e-3
    np.testing.assert_allclose(to_host(got), want, rtol=tol)
    if backend == "cpu":
        assert isinstance(got, float)


@backend_params
def test_log_loss_strings_labels_binary(backend):
    y = np.array(["spam", "ham", "ham", "spam"])
    p = np.array([[.1, .9], [.9, .1], [.8, .2], [.35, .65]])
    got = log_loss(y, to_backend(p, backend))
    np.testing.assert_allclose(to_host(got), sk_log_loss(y, p), rtol=1e-12)
    np.testing.assert_allclose(to_host(got), 0.21616, rtol=1e-4)
    pb = np.array([0.9, 0.1, 0.2, 0.65])  # binary 1-D: positive class "spam"
    np.testing.assert_allclose(to_host(log_loss(y, to_backend(pb, backend))),
                               sk_log_loss(y, pb), rtol=1e-12)
    p3 = np.array([[.2, .5, .3], [.6, .3, .1], [.1, .1, .8], [.3, .3, .4]])
    y3 = np.array([1, 0, 0, 1])
    got = log_loss(y3, to_backend(p3, backend), labels=[0, 1, 2], normalize=False)
    np.testing.assert_allclose(to_host(got), sk_log_loss(y3, p3, labels=[0, 1, 2],
                                                         normalize=False), rtol=1e-12)


def test_log_loss_warnings_and_errors():
    y = np.array([0, 1, 2, 1])
    p = np.array([[.2, .5, .3], [.6, .3, .1], [.1, .1, .8], [.3, .3, .5]])
    with pytest.warns(UserWarning, match="do not sum to one"):
        got = log_loss(y, p)
    with pytest.warns(UserWarning, match="do not sum to one"):
        want = sk_log_loss(y, p)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.warns(UserWarning, match="ordered lexicographically"):
        log_loss(y, np.ones((4, 3)) / 3, labels=[2, 1, 0])
    cases = [
        (lambda: log_loss(y, np.array([[.2, .5, .3]] * 3 + [[0, 1.5, 0]])),
         r"y_prob\[3, 1\] = 1.5 is outside \[0, 1\]"),
        (lambda: log_loss(y, np.array([[.2, .5, .3]] * 3 + [[0, np.nan, 1]])),
         r"y_prob\[3, 1\] = nan is NaN"),
        (lambda: log_loss([1, 1], [0.3, 0.4]), r"only one label \(1\)"),
        (lambda: log_loss(y, np.ones((4, 2)) / 2), "different number of classes: 3 vs 2"),
        (lambda: log_loss(y, np.ones((4, 3)) / 3, labels=[0, 1]), r"values \{2\} not belonging"),
        (lambda: log_loss(y, np.ones((4, 4)) / 4, labels=[0, 1, 2]), "number of classes in labels"),
        (lambda: log_loss(y, np.ones((3, 3)) / 3), r"y_true has 4 samples but y_prob has shape \(3, 3\)"),
        (lambda: log_loss(y, np.ones((4, 3)) / 3, sample_weight=np.ones(3)),
         r"sample_weight has shape \(3,\)"),
        (lambda: log_loss(y, np.ones((4, 3)) / 3, sample_weight=np.zeros(4)), "non-zero"),
        (lambda: log_loss(y, np.ones((4, 3, 1)) / 3), "1-D .* or 2-D"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(TypeError, match="normalize must be True or False"):
        log_loss(y, np.ones((4, 3)) / 3, normalize="yes")


def test_log_loss_empty_with_labels():
    assert np.isnan(log_loss(np.zeros(0, int), np.zeros((0, 2)), labels=[0, 1]))
    assert log_loss(np.zeros(0, int), np.zeros((0, 2)), labels=[0, 1], normalize=False) == 0


# ----------------------------------------------------------------------------- general


@backend_params
def test_inputs_not_modified_and_threads_deterministic(backend):
    import numba

    n, c = small(backend, (3000, 17), (6, 4))
    p = probs((n, c)).astype(np.float32)
    x = logits((n, c), np.float32)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    keep = (p.copy(), x.copy(), y.copy())
    runs = []
    threads = [1, numba.config.NUMBA_NUM_THREADS] if backend == "cpu" else [None]
    for t in threads:
        if t:
            numba.set_num_threads(t)
        runs.append([to_host(f()) for f in (
            lambda: softmax_focal_loss(to_backend(x, backend), to_backend(y, backend)),
            lambda: kl_divergence(to_backend(p, backend), to_backend(x, backend),
                                  from_logits=True, reduction="sum"),
            lambda: entropy(to_backend(p, backend)),
            lambda: log_loss(y, to_backend(p, backend)))])
    if backend == "cpu":
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b in zip(runs[0], runs[-1]):
        assert np.array_equal(a, b, equal_nan=True)
    for a, b in zip(keep, (p, x, y)):
        assert np.array_equal(a, b)
