"""The binary family (nbxent.binary) on every backend against nbxent.reference.binary
(float64), PyTorch (losses and autograd gradients) and torchvision's focal-loss formula."""

from __future__ import annotations

import numpy as np
import pytest

from nbxent.binary import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
    sigmoid_focal_loss,
)
from nbxent.reference import binary as ref
from tests.backends import BACKENDS, backend_params, is_backend_array, small, to_backend, to_host

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DTYPES = [np.float32, np.float64, np.float16]
REDUCTIONS = ["none", "sum", "mean"]
rng = np.random.default_rng(12345)
# loss tolerance relative to max(1, |ref|) (float16 inputs are computed in float32 on the
# same float16 values the reference sees); gradients are rounded to the input dtype
LOSS_TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2e-6}
GRAD_TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2e-3}


def close(got, want, tol):
    got = to_host(got).astype(np.float64)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)


def shape_for(backend):
    return small(backend, (37, 5, 11), (3, 2, 5))


def weight_for(kind, shape):
    """A weight of the given broadcast kind for inputs of `shape` (3-D)."""
    if kind is None:
        return None
    s = {"last": shape[-1:], "row": shape[:-1] + (1,), "full": shape,
         "odd": (shape[0], 1, shape[2]), "scalar": (1,)}[kind]
    return rng.random(s) + 0.5


def cases(*lists):
    """(backend, *values) parameters: every combination on the CPU; on the GPU (simulated:
    slow) a diagonal sample that still takes every value of every list."""
    import itertools

    out = [("cpu",) + c for c in itertools.product(*lists)]
    if "gpu" in BACKENDS:
        m = max(len(v) for v in lists)
        out += [("gpu",) + tuple(v[(i * (k + 1)) % len(v)] for k, v in enumerate(lists))
                for i in range(m)]
    return out


def loss_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


# ----------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("backend,dtype,reduction,wopt", cases(
    DTYPES, REDUCTIONS, [(None, None), ("last", None), ("row", 0.01), ("odd", None),
                         ("full", 1e-3)]))
def test_bce_matches_reference(backend, dtype, reduction, wopt):
    wkind, eps = wopt
    shape = shape_for(backend)
    p = rng.random(shape).astype(dtype)
    p.flat[:3] = [0.0, 1.0, 0.5]
    t = rng.random(shape).astype(dtype)
    t.flat[:6] = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    w = weight_for(wkind, shape)
    got = binary_cross_entropy(to_backend(p, backend), to_backend(t, backend),
                               weight=to_backend(w, backend), reduction=reduction, eps=eps)
    want = ref.binary_cross_entropy(p, t, weight=w, reduction=reduction, eps=eps)
    assert is_backend_array(got, backend)
    assert to_host(got).dtype == loss_dtype(dtype)
    close(got, want, LOSS_TOL[dtype] * (1 if reduction == "none" else 10))


@backend_params
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_matches_scipy_xlogy(backend, dtype):
    """Away from the -100 clamp BCE is -(xlogy(t, p) + xlogy(1 - t, 1 - p)): SciPy's
    0 log 0 = 0 convention where a target is exactly 0 or 1."""
    from scipy.special import xlogy

    shape = shape_for(backend)
    p = (rng.random(shape) * 0.98 + 0.01).astype(dtype)
    t = rng.random(shape).astype(dtype)
    t.flat[:4] = [0.0, 1.0, 0.0, 1.0]
    got = binary_cross_entropy(to_backend(p, backend), to_backend(t, backend), reduction="none")
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    close(got, -(xlogy(t64, p64) + xlogy(1 - t64, 1 - p64)), LOSS_TOL[dtype])


LOGIT_OPTS = [
    {},
    {"weight": "last"},
    {"pos_weight": True},
    {"weight": "row", "pos_weight": True},
    {"weight": "odd"},
]


def resolve(opts, shape):
    opts = dict(opts)
    w = weight_for(opts.pop("weight", None), shape)
    pw = rng.random(shape[-1]) * 3 + 0.1 if opts.pop("pos_weight", False) else None
    return w, pw


def make_logits(shape, dtype, scale=4.0):
    x = rng.standard_normal(shape) * scale
    x.flat[:4] = [30.0, -30.0, 0.0, 200.0]
    return x.astype(dtype)


def make_targets(shape, dtype, soft=True):
    t = rng.random(shape) if soft else (rng.random(shape) < 0.5) * 1.0
    t.flat[:4] = [0.0, 1.0, 1.0, 0.0]
    return t.astype(dtype)


@pytest.mark.parametrize("backend,dtype,reduction,opts", cases(DTYPES, REDUCTIONS, LOGIT_OPTS))
def test_bce_with_logits_matches_reference(backend, dtype, reduction, opts):
    shape = shape_for(backend)
    x = make_logits(shape, dtype)
    t = make_targets(shape, dtype)
    w, pw = resolve(opts, shape)
    got = binary_cross_entropy_with_logits(
        to_backend(x, backend), to_backend(t, backend), weight=to_backend(w, backend),
        pos_weight=to_backend(pw, backend), reduction=reduction)
    want = ref.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw,
                                                reduction=reduction)
    assert to_host(got).dtype == loss_dtype(dtype)
    close(got, want, LOSS_TOL[dtype] * (1 if reduction == "none" else 10))


@pytest.mark.parametrize("backend,dtype,reduction,opts,gout",
                         cases(DTYPES, REDUCTIONS, LOGIT_OPTS, [None, "given"]))
def test_bce_with_logits_grad_matches_reference(backend, dtype, reduction, opts, gout):
    shape = shape_for(backend)
    x = make_logits(shape, dtype)
    t = make_targets(shape, dtype, soft=False)
    w, pw = resolve(opts, shape)
    g = None
    if gout:
        g = rng.random(shape[-1:]) + 0.5 if reduction == "none" else 1.7
    loss, grad = binary_cross_entropy_with_logits_with_grad(
        to_backend(x, backend), to_backend(t, backend), weight=to_backend(w, backend),
        pos_weight=to_backend(pw, backend), reduction=reduction,
        grad_output=to_backend(g, backend))
    wl, wg = ref.binary_cross_entropy_with_logits_with_grad(
        x, t, weight=w, pos_weight=pw, reduction=reduction, grad_output=g)
    close(loss, wl, LOSS_TOL[dtype] * (1 if reduction == "none" else 10))
    assert to_host(grad).dtype == dtype
    scale = np.max(np.abs(wg)) if wg.size else 1.0
    close(grad, wg, GRAD_TOL[dtype] * scale)


@pytest.mark.parametrize("backend,dtype,reduction,ag", cases(
    DTYPES, REDUCTIONS, [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.75, 1.0), (None, 1.5)]))
def test_sigmoid_focal_loss_matches_reference(backend, dtype, reduction, ag):
    alpha, gamma = ag
    shape = shape_for(backend)
    x = make_logits(shape, dtype)
    t = make_targets(shape, dtype)
    got = sigmoid_focal_loss(to_backend(x, backend), to_backend(t, backend), alpha=alpha,
                             gamma=gamma, reduction=reduction)
    want = ref.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
    assert to_host(got).dtype == loss_dtype(dtype)
    tol = LOSS_TOL[dtype] * (1 if reduction == "none" else 10)
    close(got, want, tol * (10 if gamma == 1.5 else 1))   # pow: exp(gamma log m)


# ----------------------------------------------------------------------------- vs PyTorch

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a):
    return None if a is None else torch.tensor(a)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("wkind", [None, "last", "row"])
def test_bce_matches_torch(reduction, wkind):
    shape = (23, 4, 6)
    p = rng.random(shape)
    p.flat[:4] = [0.0, 1.0, 0.0, 1.0]
    t = rng.random(shape)
    t.flat[:4] = [0.0, 1.0, 1.0, 0.0]
    w = weight_for(wkind, shape)
    got = binary_cross_entropy(p, t, weight=w, reduction=reduction)
    want = F.binary_cross_entropy(_t(p), _t(t), weight=_t(w), reduction=reduction).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # float32: against PyTorch on the same float32-rounded inputs (rounding p near 1 moves
    # log(1 - p) by far more than the kernel's own error)
    p32, t32 = p.astype(np.float32), t.astype(np.float32)
    got32 = binary_cross_entropy(p32, t32, weight=w, reduction=reduction)
    want32 = F.binary_cross_entropy(_t(p32.astype(np.float64)), _t(t32.astype(np.float64)),
                                    weight=_t(w), reduction=reduction).numpy()
    np.testing.assert_allclose(got32, want32, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", LOGIT_OPTS)
def test_bce_with_logits_and_grad_match_torch(reduction, opts):
    shape = (23, 4, 6)
    x = rng.standard_normal(shape) * 5
    t = rng.random(shape)
    w, pw = resolve(opts, shape)
    xt = torch.tensor(x, requires_grad=True)
    lt = F.binary_cross_entropy_with_logits(xt, _t(t), weight=_t(w), pos_weight=_t(pw),
                                            reduction=reduction)
    lt.sum().backward()
    got = binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction=reduction)
    np.testing.assert_allclose(got, lt.detach().numpy(), rtol=1e-11, atol=1e-12)
    loss, grad = binary_cross_entropy_with_logits_with_grad(x, t, weight=w, pos_weight=pw,
                                                            reduction=reduction)
    np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-14)


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, verbatim (torchvision is not installed)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1, 2.0), (0.6, 0.0), (0.25, 1.5)])
def test_sigmoid_focal_loss_matches_torchvision(reduction, alpha, gamma):
    x = rng.standard_normal((40, 7)) * 3
    t = (rng.random((40, 7)) < 0.3) * 1.0
    got = sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
    want = torchvision_sigmoid_focal_loss(_t(x), _t(t), alpha, gamma, reduction).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- edge cases


@backend_params
def test_bce_probabilities_0_and_1_give_finite_losses(backend):
    p = np.array([0.0, 0.0, 1.0, 1.0, np.nan, 0.5], np.float32)
    t = np.array([0.0, 1.0, 0.0, 1.0, 1.0, np.nan], np.float32)
    got = to_host(binary_cross_entropy(to_backend(p, backend), to_backend(t, backend),
                                       reduction="none"))
    np.testing.assert_array_equal(got[:4], [0.0, 100.0, 100.0, 0.0])
    assert np.isnan(got[4]) and np.isnan(got[5])


@backend_params
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_200_exact_and_nan_per_element(backend, dtype):
    x = np.array([200.0, -200.0, 200.0, -200.0, np.nan, 1.0, 0.0], dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, np.nan, 0.5], dtype)
    xb, tb = to_backend(x, backend), to_backend(t, backend)
    loss = to_host(binary_cross_entropy_with_logits(xb, tb, reduction="none"))
    want = ref.binary_cross_entropy_with_logits(x, t, reduction="none")
    np.testing.assert_allclose(loss[:4], [0.0, 0.0, 200.0, 200.0], atol=1e-80, rtol=0)
    np.testing.assert_allclose(loss, want, rtol=1e-7, atol=1e-80, equal_nan=True)
    assert np.isnan(loss[4]) and np.isnan(loss[5]) and not np.isnan(loss[6])
    l2, g = binary_cross_entropy_with_logits_with_grad(xb, tb, reduction="none")
    g = to_host(g)
    np.testing.assert_allclose(g[:4], [0.0, 0.0, 1.0, -1.0], rtol=0, atol=1e-80)
    assert np.isnan(g[4]) and np.isnan(g[5])
    focal = to_host(sigmoid_focal_loss(xb, tb, reduction="none"))
    np.testing.assert_allclose(focal[:4], [0.0, 0.0, 0.75 * 200.0, 0.25 * 200.0], atol=1e-80)
    assert np.isnan(focal[4]) and np.isnan(focal[5])


@backend_params
def test_empty_mean_is_nan_sum_is_zero(backend):
    x = to_backend(np.zeros((0, 3), np.float32), backend)
    for fn in (binary_cross_entropy, binary_cross_entropy_with_logits, sigmoid_focal_loss):
        assert np.isnan(to_host(fn(x, x)))
        assert to_host(fn(x, x, reduction="sum")) == 0.0
        assert to_host(fn(x, x, reduction="none")).shape == (0, 3)
    loss, grad = binary_cross_entropy_with_logits_with_grad(x, x)
    assert np.isnan(to_host(loss)) and to_host(grad).shape == (0, 3)


def test_float32_accuracy_few_ulps_where_pytorch_form_cancels():
    """Relative error of float32 results and gradients vs the float64 reference, over logits
    from -80 to 80 and hard targets (the textbook forms cancel at large |x|)."""
    x = np.linspace(-80, 80, 20001).astype(np.float32)
    for tv in (0.0, 1.0):
        t = np.full_like(x, tv)
        pw = np.float32(2.5)
        loss, grad = binary_cross_entropy_with_logits_with_grad(
            x, t, pos_weight=np.array([pw]), reduction="none")
        wl, wg = ref.binary_cross_entropy_with_logits_with_grad(
            x, t, pos_weight=np.array([pw]), reduction="none")
        ok = wl > 1e-37   # below float32's normal range the result underflows
        assert np.max(np.abs(loss[ok] - wl[ok]) / wl[ok]) < 1e-6
        okg = np.abs(wg) > 1e-37
        assert np.max(np.abs(grad[okg] - wg[okg]) / np.abs(wg[okg])) < 1e-6
        fl = sigmoid_focal_loss(x, t, reduction="none")
        wf = ref.sigmoid_focal_loss(x, t, reduction="none")
        okf = wf > 1e-30
        assert np.max(np.abs(fl[okf] - wf[okf]) / wf[okf]) < 2e-6
    p = np.concatenate([np.geomspace(1e-30, 0.5, 5000), 1 - np.geomspace(1e-7, 0.5, 5000)])
    p = p.astype(np.float32)
    for tv in (0.0, 1.0):
        t = np.full_like(p, tv)
        got = binary_cross_entropy(p, t, reduction="none")
        want = ref.binary_cross_entropy(p, t, reduction="none")
        ok = want > 1e-37
        assert np.max(np.abs(got[ok] - want[ok]) / want[ok]) < 1e-6


@backend_params
def test_float16_inputs(backend):
    shape = (4, 6)
    x = make_logits(shape, np.float16)
    t = make_targets(shape, np.float16)
    loss, grad = binary_cross_entropy_with_logits_with_grad(
        to_backend(x, backend), to_backend(t, backend), reduction="none")
    assert to_host(loss).dtype == np.float32 and to_host(grad).dtype == np.float16
    wl, wg = ref.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none")
    close(loss, wl, 2e-6)
    close(grad, wg, 2e-3)


@backend_params
def test_integer_and_bool_targets(backend):
    x = make_logits((3, 4), np.float32)
    t = (rng.random((3, 4)) < 0.5)
    for tt in (t, t.astype(np.int64), t.astype(np.uint8)):
        got = binary_cross_entropy_with_logits(to_backend(x, backend), to_backend(tt, backend))
        want = ref.binary_cross_entropy_with_logits(x, t * 1.0)
        close(got, want, 1e-5)


def test_layouts_zero_d_and_inputs_unmodified():
    x = make_logits((6, 5, 4), np.float32)
    t = make_targets((6, 5, 4), np.float32)
    w = rng.random((6, 1, 4)) + 0.5
    pw = rng.random(4) + 0.5
    copies = [a.copy() for a in (x, t, w, pw)]
    want_l, want_g = ref.binary_cross_entropy_with_logits_with_grad(
        x, t, weight=w, pos_weight=pw, reduction="none")
    for xx, tt in [(x, t), (np.asfortranarray(x), t), (x.transpose(2, 0, 1).copy().transpose(1, 2, 0), t[:, :, :])]:
        loss, grad = binary_cross_entropy_with_logits_with_grad(
            xx, tt, weight=w, pos_weight=pw, reduction="none")
        np.testing.assert_allclose(loss, want_l, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(grad, want_g, rtol=2e-6, atol=2e-6)
    for a, c in zip((x, t, w, pw), copies):
        np.testing.assert_array_equal(a, c)
    # strided slice
    loss = binary_cross_entropy_with_logits(x[:, ::2], t[:, ::2], reduction="none")
    np.testing.assert_allclose(loss, ref.binary_cross_entropy_with_logits(
        x[:, ::2], t[:, ::2], reduction="none"), rtol=2e-6, atol=2e-6)
    # 0-d
    got = binary_cross_entropy_with_logits(np.float32(3.0), 1.0, reduction="none")
    assert np.shape(got) == ()
    np.testing.assert_allclose(got, np.log1p(np.exp(-3.0)), rtol=2e-6)


@backend_params
def test_inplace_gradient(backend):
    shape = (3, 5)
    x = make_logits(shape, np.float32)
    t = make_targets(shape, np.float32)
    _, want = ref.binary_cross_entropy_with_logits_with_grad(x, t)
    xb = to_backend(x.copy(), backend)
    loss, grad = binary_cross_entropy_with_logits_with_grad(xb, to_backend(t, backend),
                                                            inplace=True)
    assert grad is xb
    close(grad, want, 2e-6)
    xf = np.asfortranarray(x)
    if backend == "cpu":
        loss, grad = binary_cross_entropy_with_logits_with_grad(xf, t, inplace=True)
        assert grad is xf
        close(grad, want, 2e-6)


def test_cpu_reductions_bit_identical_at_any_thread_count():
    import numba

    x = make_logits((300_000,), np.float32)
    t = make_targets((300_000,), np.float32)
    p = rng.random(300_000).astype(np.float32)
    n0 = numba.get_num_threads()
    results = []
    try:
        for k in sorted({1, n0}):
            numba.set_num_threads(k)
            results.append((binary_cross_entropy(p, t), binary_cross_entropy_with_logits(x, t),
                            binary_cross_entropy_with_logits_with_grad(x, t)[0],
                            sigmoid_focal_loss(x, t, reduction="sum")))
    finally:
        numba.set_num_threads(n0)
    assert all(r == results[0] for r in results)
    want = ref.binary_cross_entropy_with_logits(x, t)
    assert abs(results[0][1] - want) <= 1e-6 * abs(want)


@pytest.mark.skipif("gpu" not in BACKENDS, reason="no GPU backend")
def test_gpu_multi_chunk_reductions():
    from nbxent.gpu import _reduce

    x = make_logits((5, 9), np.float32)
    t = make_targets((5, 9), np.float32)
    w = rng.random((5, 1)) + 0.5
    pw = rng.random(9) + 0.5
    want_l, want_g = ref.binary_cross_entropy_with_logits_with_grad(
        x, t, weight=w, pos_weight=pw, reduction="sum")
    with _reduce.launch_config(THREADS_PER_BLOCK=4, LANES=8, REDUCE_CHUNK=8, MAX_BLOCKS=2):
        loss, grad = binary_cross_entropy_with_logits_with_grad(
            to_backend(x, "gpu"), to_backend(t, "gpu"), weight=to_backend(w, "gpu"),
            pos_weight=to_backend(pw, "gpu"), reduction="sum")
        close(loss, want_l, 1e-5)
        close(grad, want_g, 2e-6)
        p = rng.random((5, 9)).astype(np.float32)
        p[4, 7] = 1.5
        with pytest.raises(ValueError, match=r"probs\[4, 7\] = 1.5 is outside \[0, 1\]"):
            binary_cross_entropy(to_backend(p, "gpu"), to_backend(t, "gpu"))


# ----------------------------------------------------------------------------- bad input


@backend_params
def test_out_of_range_probabilities_and_targets(backend):
    p = rng.random((4, 5)).astype(np.float32)
    t = make_targets((4, 5), np.float32)
    bad_p = p.copy()
    bad_p[2, 3] = -0.25
    bad_p[3, 1] = 2.0
    with pytest.raises(ValueError, match=r"probs\[2, 3\] = -0.25 is outside \[0, 1\]"):
        binary_cross_entropy(to_backend(bad_p, backend), to_backend(t, backend))
    bad_t = t.copy()
    bad_t[1, 4] = 3.0
    with pytest.raises(ValueError, match=r"target\[1, 4\] = 3.0 is outside \[0, 1\]"):
        binary_cross_entropy(to_backend(p, backend), to_backend(bad_t, backend))
    for fn in (binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_with_grad,
               sigmoid_focal_loss):
        with pytest.raises(ValueError, match=r"target\[1, 4\] = 3.0 is outside"):
            fn(to_backend(p, backend), to_backend(bad_t, backend))
    with pytest.raises(ValueError, match=r"target\[0, 1\] = 2 is outside"):
        binary_cross_entropy_with_logits(to_backend(p, backend),
                                         to_backend(np.array([[0, 2, 0, 0, 0]] * 4), backend))


def test_bad_shapes_and_broadcasts():
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"target has shape \(4, 4\) but probs has shape \(4, 5\)"):
        binary_cross_entropy(x, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"target has shape \(5,\) but logits has shape \(4, 5\)"):
        binary_cross_entropy_with_logits(x, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"weight has shape \(4,\), which does not broadcast to "
                                         r"the shape \(4, 5\) of probs"):
        binary_cross_entropy(x, x, weight=np.ones(4))
    with pytest.raises(ValueError, match=r"pos_weight has shape \(3,\), which does not broadcast"):
        binary_cross_entropy_with_logits(x, x, pos_weight=np.ones(3))
    with pytest.raises(ValueError, match=r"weight has shape \(2, 4, 5\), which does not"):
        binary_cross_entropy_with_logits(x, x, weight=np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"grad_output has shape \(4, 1, 5\), which does not"):
        binary_cross_entropy_with_logits_with_grad(x, x, reduction="none",
                                                   grad_output=np.ones((4, 1, 5)))
    with pytest.raises(ValueError, match=r"grad_output of a reduced \('mean'\) loss must be a scalar"):
        binary_cross_entropy_with_logits_with_grad(x, x, grad_output=np.ones(2))


def test_bad_types_and_options():
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(TypeError, match="logits must be a float16, float32 or float64 array, got dtype int64"):
        binary_cross_entropy_with_logits(np.zeros((4, 5), np.int64), x)
    with pytest.raises(TypeError, match="target must be a float, integer or bool array"):
        binary_cross_entropy_with_logits(x, x.astype(np.complex64))
    with pytest.raises(TypeError, match="weight must be a real array, got dtype complex128"):
        binary_cross_entropy(x, x, weight=np.ones(5, np.complex128))
    with pytest.raises(ValueError, match="reduction must be one of"):
        binary_cross_entropy(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"eps must be in \[0.0, 0.5\], got 0.7"):
        binary_cross_entropy(x, x, eps=0.7)
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0.0, got"):
        sigmoid_focal_loss(x, x, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha must be a finite number <= 1.0, got 1.5"):
        sigmoid_focal_loss(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="gamma must be a real number"):
        sigmoid_focal_loss(x, x, gamma="2")
    with pytest.raises(TypeError, match="inplace must be True or False"):
        binary_cross_entropy_with_logits_with_grad(x, x, inplace=1)
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="inplace=True writes the gradient over logits, but "
                                         "logits are read-only"):
        binary_cross_entropy_with_logits_with_grad(ro, x, inplace=True)
    # read-only inputs are fine without inplace
    binary_cross_entropy_with_logits_with_grad(ro, x)


@pytest.mark.skipif("gpu" not in BACKENDS, reason="no GPU backend")
def test_mixed_host_and_device_is_a_type_error():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="is a GPU array but .* is a host"):
        binary_cross_entropy_with_logits(to_backend(x, "gpu"), x)
