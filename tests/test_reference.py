"""nbxent.reference (the float64 NumPy oracle) against PyTorch CPU in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nbxent import reference as ref

TOL = 1e-12
rng = np.random.default_rng()


def close(got, want, tol=TOL):
    if isinstance(want, torch.Tensor):
        want = want.detach().numpy()
    got = np.asarray(got)
    assert got.dtype == np.float64
    assert got.shape == np.shape(want), (got.shape, np.shape(want))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)


def T(a):
    return torch.from_numpy(np.array(a, order="C"))          # (ascontiguousarray makes 0-d 1-d)


def logits_of(shape, scale=3.0):
    return rng.standard_normal(shape) * scale


def labels_of(index_shape, c, ignore_frac=0.25, ignore_index=-100):
    y = rng.integers(0, c, size=index_shape)
    if ignore_frac:
        y = np.where(rng.random(index_shape) < ignore_frac, ignore_index, y)
    return np.asarray(y, dtype=np.int64)


def probs_of(shape, axis=-1, zero_frac=0.0):
    p = rng.random(shape)
    if zero_frac:
        p = np.where(rng.random(shape) < zero_frac, 0.0, p)
    return p / p.sum(axis=axis, keepdims=True)


def torch_ce(x, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
             label_smoothing=0.0, z_loss=0.0, grad_output=None):
    """PyTorch's loss (plus an autograd z-loss term) and d(sum(loss * g))/dx in float64."""
    x_t = T(x).requires_grad_(True)
    soft = np.asarray(target).dtype.kind == "f"
    y_t = T(np.asarray(target))
    w_t = None if weight is None else T(weight)
    ax = axis % x.ndim
    if x.ndim == 1:
        # one sample as a batch of one (PyTorch's own 1-D path fails with weight, smoothing
        # and reduction "none": "output with shape [] doesn't match the broadcast shape [1]")
        xm, ym = x_t[None], y_t[None]
    else:
        xm = x_t if ax == 1 else x_t.movedim(ax, 1)             # PyTorch: classes at dim 1
        ym = y_t if not soft or ax == 1 else y_t.movedim(ax, 1)
    kw = dict(weight=w_t, label_smoothing=label_smoothing)
    if not soft:
        kw["ignore_index"] = ignore_index
    if z_loss == 0:
        loss = F.cross_entropy(xm, ym, reduction=reduction, **kw)
    else:
        per_row = F.cross_entropy(xm, ym, reduction="none", **kw)
        lse = torch.logsumexp(xm, 1)
        if soft:
            per_row = per_row + z_loss * lse**2
            denom = torch.tensor(float(per_row.numel()), dtype=torch.float64)
        else:
            valid = ym != ignore_index
            y_safe = torch.where(valid, ym, torch.zeros_like(ym))
            w_y = torch.ones_like(lse) if w_t is None else w_t[y_safe]
            w_y = torch.where(valid, w_y, torch.zeros_like(w_y))
            per_row = per_row + z_loss * w_y * lse**2
            denom = w_y.sum()
        loss = {"none": per_row, "sum": per_row.sum(),
                "mean": per_row.sum() / denom}[reduction]
    if x.ndim == 1 and reduction == "none":
        loss = loss[0]
    g = torch.tensor(1.0, dtype=torch.float64) if grad_output is None else T(grad_output)
    (loss * g).sum().backward()
    return loss.detach().numpy(), x_t.grad.numpy()


def check_against_torch(x, target, **kw):
    kw_fwd = {k: v for k, v in kw.items() if k != "grad_output"}
    want_loss, want_grad = torch_ce(x, target, **kw)
    loss = ref.cross_entropy(x, target, **kw_fwd)
    close(loss, want_loss)
    if kw.get("reduction", "mean") != "none":
        assert isinstance(loss, np.float64)
    loss2, grad = ref.cross_entropy_with_grad(x, target, **kw)
    close(loss2, want_loss)
    close(grad, want_grad)
    assert grad.shape == x.shape
    return loss, grad


OPTIONS = [
    {},
    {"weight": True},
    {"label_smoothing": 0.1},
    {"weight": True, "label_smoothing": 0.2},
    {"z_loss": 1e-2},
    {"weight": True, "z_loss": 3e-2, "label_smoothing": 0.05, "ignore_index": 2},
    {"ignore_index": -1},
    {"weight": True, "ignore_index": 10_000, "label_smoothing": 1.0},
]


def _opts(opts, c):
    kw = dict(opts)
    if kw.pop("weight", False):
        kw["weight"] = rng.random(c) + 0.1
    return kw


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("opts", OPTIONS, ids=str)
def test_hard_matches_torch(reduction, opts):
    n, c = 37, 11
    kw = _opts(opts, c)
    x = logits_of((n, c))
    y = labels_of(n, c, ignore_index=kw.get("ignore_index", -100))
    g = rng.standard_normal(n) if reduction == "none" else rng.standard_normal()
    check_against_torch(x, y, reduction=reduction, grad_output=g, **kw)
    check_against_torch(x, y, reduction=reduction, **kw)          # default grad_output


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("opts", [o for o in OPTIONS if "ignore_index" not in o], ids=str)
def test_soft_matches_torch(reduction, opts):
    n, c = 29, 7
    kw = _opts(opts, c)
    x = logits_of((n, c))
    p = probs_of((n, c))
    g = rng.standard_normal(n) if reduction == "none" else 0.7
    check_against_torch(x, p, reduction=reduction, grad_output=g, **kw)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_axis1_nchw(soft, reduction):
    n, c, d1, d2 = 3, 5, 4, 6
    kw = {"weight": rng.random(c) + 0.1, "label_smoothing": 0.1, "z_loss": 1e-2}
    x = logits_of((n, c, d1, d2))
    target = probs_of(x.shape, axis=1) if soft else labels_of((n, d1, d2), c)
    g = rng.standard_normal((n, d1, d2)) if reduction == "none" else None
    loss, grad = check_against_torch(x, target, axis=1, reduction=reduction, grad_output=g, **kw)
    if reduction == "none":
        assert loss.shape == (n, d1, d2)
    # the same through a class-last layout
    moved = ref.cross_entropy_with_grad(np.moveaxis(x, 1, -1),
                                        np.moveaxis(target, 1, -1) if soft else target,
                                        reduction=reduction,
                                        grad_output=g, **kw)
    close(moved[0], loss)
    close(np.moveaxis(moved[1], -1, 1), grad)


def test_axis_middle_of_3d():
    x = logits_of((4, 9, 5))                       # classes on axis 1 of (B, C, T)
    y = labels_of((4, 5), 9)
    check_against_torch(x, y, axis=1, reduction="none", grad_output=rng.standard_normal((4, 1)))
    check_against_torch(x, y, axis=-2, reduction="mean", label_smoothing=0.3)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_one_d_logits(reduction):
    c = 6
    x = logits_of(c)
    w = rng.random(c) + 0.1
    y = np.array(3)
    loss, grad = check_against_torch(x, y, reduction=reduction, weight=w, label_smoothing=0.1,
                                     z_loss=0.02)
    assert np.shape(loss) == () and grad.shape == (c,)
    check_against_torch(x, probs_of(c), reduction=reduction, weight=w, label_smoothing=0.1)
    # an ignored single sample
    loss, grad = ref.cross_entropy_with_grad(x, np.array(-100), reduction=reduction)
    assert (np.isnan(loss) if reduction == "mean" else loss == 0) and not grad.any()


def test_other_integer_and_float_dtypes():
    n, c = 20, 9
    x = logits_of((n, c)).astype(np.float32)
    y = labels_of(n, c, ignore_frac=0)
    want = ref.cross_entropy(x.astype(np.float64), y, reduction="none")
    for dt in (np.int32, np.uint8, np.int16, np.uint64):
        close(ref.cross_entropy(x, y.astype(dt), reduction="none"), want)
    close(ref.cross_entropy(x, y, reduction="none"), torch_ce(x.astype(np.float64), y,
                                                              reduction="none")[0])
    p = probs_of((n, c)).astype(np.float32)
    close(ref.cross_entropy(x, p), torch_ce(x.astype(np.float64), p.astype(np.float64))[0])


def test_huge_vocabulary():
    x = logits_of((4, 128256))
    y = labels_of(4, 128256, ignore_frac=0)
    check_against_torch(x, y, reduction="mean", label_smoothing=0.1, z_loss=1e-4)


# ----------------------------------------------------------------------------- edge cases

def test_c1_and_c2():
    for c in (1, 2):
        x = logits_of((10, c))
        y = labels_of(10, c)
        check_against_torch(x, y, reduction="none", label_smoothing=0.2, weight=rng.random(c))
        check_against_torch(x, probs_of((10, c)), reduction="mean")
    loss, grad = ref.cross_entropy_with_grad(logits_of((5, 1)), np.zeros(5, np.int64),
                                             reduction="none")
    assert (loss == 0).all() and (grad == 0).all()          # one class: nothing to learn


@pytest.mark.parametrize("soft", [False, True])
def test_no_rows(soft):
    x = np.zeros((0, 5))
    t = np.zeros((0, 5)) if soft else np.zeros(0, np.int64)
    assert np.isnan(ref.cross_entropy(x, t))
    assert ref.cross_entropy(x, t, reduction="sum") == 0.0
    assert ref.cross_entropy(x, t, reduction="none").shape == (0,)
    loss, grad = ref.cross_entropy_with_grad(x, t, label_smoothing=0.1, z_loss=0.1)
    assert np.isnan(loss) and grad.shape == (0, 5)
    close(loss, torch_ce(x, t)[0])                          # torch: NaN too
    assert np.isnan(ref.nll_loss(x, np.zeros(0, np.int64)))


@pytest.mark.parametrize("ignore_index", [-100, -1, 7, 1000])
def test_all_rows_ignored(ignore_index):
    x = logits_of((6, 4))
    y = np.full(6, ignore_index)
    w = rng.random(4)
    for kw in ({}, {"weight": w, "label_smoothing": 0.1, "z_loss": 0.1}):
        loss, grad = ref.cross_entropy_with_grad(x, y, ignore_index=ignore_index, **kw)
        assert np.isnan(loss) and grad.shape == x.shape and (grad == 0).all()
        close(loss, torch_ce(x, y, ignore_index=ignore_index, **kw)[0])
        assert ref.cross_entropy(x, y, ignore_index=ignore_index, reduction="sum", **kw) == 0.0
        assert np.isnan(ref.nll_loss(x, y, ignore_index=ignore_index))


def test_ignored_labels_never_index():
    x = logits_of((8, 3))
    y = np.array([0, -5, 2, -5, 1, -5, 2, 0])
    check_against_torch(x, y, ignore_index=-5, reduction="none", label_smoothing=0.1)
    y = np.array([0, 99, 2, 99, 1, 99, 2, 0])
    check_against_torch(x, y, ignore_index=99, reduction="mean", weight=rng.random(3))
    with pytest.raises(IndexError):
        ref.cross_entropy(x, np.array([0, 1, 3, 0, 0, 0, 0, 0]))
    with pytest.raises(IndexError):
        ref.cross_entropy(x, np.array([0, 1, -1, 0, 0, 0, 0, 0]))


def test_minus_inf_on_other_classes_is_finite():
    x = logits_of((6, 5))
    x[:, [0, 3]] = -np.inf
    y = np.array([1, 2, 4, 1, 2, 4])
    w = rng.random(5) + 0.1
    for kw in ({}, {"weight": w}, {"z_loss": 0.1, "weight": w}):
        loss, grad = check_against_torch(x, y, reduction="none", **kw)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        assert (grad[:, [0, 3]] == 0).all()
    # soft targets with zero probability on the masked classes: finite (PyTorch gives NaN)
    p = probs_of((6, 5))
    p[:, [0, 3]] = 0
    p /= p.sum(1, keepdims=True)
    loss, grad = ref.cross_entropy_with_grad(x, p, reduction="none", weight=w, z_loss=0.1)
    keep = [1, 2, 4]
    want_loss, want_grad = torch_ce(x[:, keep], p[:, keep], reduction="none", weight=w[keep],
                                    z_loss=0.1)
    close(loss, want_loss)
    close(grad[:, keep], want_grad)
    assert (grad[:, [0, 3]] == 0).all()
    # with smoothing every t'_c > 0, so the masked classes give +inf
    assert np.isposinf(ref.cross_entropy(x, p, reduction="none", label_smoothing=0.1)).all()


def test_minus_inf_at_target_is_inf():
    x = logits_of((3, 4))
    x[:, 2] = -np.inf
    loss, grad = ref.cross_entropy_with_grad(x, np.array([2, 2, 0]), reduction="none")
    assert np.isposinf(loss[:2]).all() and np.isfinite(loss[2])
    close(grad, torch_ce(x, np.array([2, 2, 0]), reduction="none")[1])


def test_huge_logits_are_finite_and_exact():
    big = 1e30
    x = np.array([[big, -big, 0.0, 1.0],
                  [big, big, -big, 0.0],
                  [-big, -big, -big, -big]])
    y = np.array([1, 0, 3])
    loss = ref.cross_entropy(x, y, reduction="none")
    # hand-derived: row 0: lse = 1e30 (exactly, in float64) so the loss is 1e30 - (-1e30);
    # row 1: lse = 1e30 + log 2, loss log 2; row 2: four equal logits, loss log 4.
    close(loss, np.array([2 * big, np.log(2), np.log(4)]))
    close(loss, torch_ce(x, y, reduction="none")[0])
    _, grad = ref.cross_entropy_with_grad(x, y, reduction="none")
    close(grad, np.array([[1, -1, 0, 0], [-0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, -0.75]]))
    # smoothing: row 1 adds (eps/C) * sum_c (lse - x_c) = (eps/4) (2 log 2 + 2e30 + 1e30)
    eps = 0.1
    got = ref.cross_entropy(x, y, reduction="none", label_smoothing=eps)
    close(got[1], (1 - eps) * np.log(2) + eps / 4 * (2 * np.log(2) + 3 * big))
    close(got, torch_ce(x, y, reduction="none", label_smoothing=eps)[0])
    close(ref.logsumexp(x), [big, big, -big + np.log(4)])


def test_nan_poisons_only_its_row():
    x = logits_of((5, 4))
    x[2, 1] = np.nan
    y = np.array([0, 1, 3, 2, 0])
    p = probs_of((5, 4))
    for target in (y, p):
        loss, grad = ref.cross_entropy_with_grad(x, target, reduction="none",
                                                 label_smoothing=0.1, z_loss=0.01)
        assert np.isnan(loss[2]) and np.isnan(grad[2]).all()
        ok = [0, 1, 3, 4]
        assert np.isfinite(loss[ok]).all() and np.isfinite(grad[ok]).all()
        close(loss[ok], ref.cross_entropy(x[ok], target[ok], reduction="none",
                                          label_smoothing=0.1, z_loss=0.01))
        assert np.isnan(ref.cross_entropy(x, target))
    for fn in (ref.log_softmax, ref.softmax):
        out = fn(x)
        assert np.isnan(out[2]).all() and np.isfinite(out[[0, 1, 3, 4]]).all()
    lse = ref.logsumexp(x)
    assert np.isnan(lse[2]) and np.isfinite(lse[[0, 1, 3, 4]]).all()
    # an ignored row's NaN does not leak into the loss
    y[2] = -100
    loss, grad = ref.cross_entropy_with_grad(x, y)
    assert np.isfinite(loss) and (grad[2] == 0).all()


# ------------------------------------------------------------------------------ nll_loss

@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_matches_torch(reduction, weighted):
    n, c = 31, 6
    w = rng.random(c) + 0.1 if weighted else None
    wt = None if w is None else T(w)
    lp = ref.log_softmax(logits_of((n, c)))
    y = labels_of(n, c, ignore_index=-3)
    want = F.nll_loss(T(lp), T(y), weight=wt, ignore_index=-3, reduction=reduction)
    close(ref.nll_loss(lp, y, weight=w, ignore_index=-3, reduction=reduction), want)
    # (N, C, d) with axis=1, and 1-D log-probs
    lp3 = logits_of((3, c, 4))
    y3 = labels_of((3, 4), c)
    close(ref.nll_loss(lp3, y3, axis=1, weight=w, reduction=reduction),
          F.nll_loss(T(lp3), T(y3), weight=wt, reduction=reduction))
    close(ref.nll_loss(lp[0], y[0] % c, weight=w, reduction=reduction),
          F.nll_loss(T(lp[0]), T(y[0] % c), weight=wt, reduction=reduction))


# ------------------------------------------------------------- log_softmax, softmax, logsumexp

@pytest.mark.parametrize("shape,axis", [((17, 9), -1), ((17, 9), 0), ((3, 5, 4, 2), 1),
                                        ((8,), 0), ((2, 3, 7), -2), ((6, 1), -1)])
def test_normalisers_match_torch(shape, axis):
    x = logits_of(shape, scale=5.0)
    close(ref.log_softmax(x, axis=axis), torch.log_softmax(T(x), axis))
    close(ref.softmax(x, axis=axis), torch.softmax(T(x), axis))
    close(ref.logsumexp(x, axis=axis), torch.logsumexp(T(x), axis))
    close(ref.logsumexp(x.astype(np.float32), axis=axis),
          torch.logsumexp(T(x.astype(np.float32)).double(), axis))


def test_normaliser_special_rows():
    inf, nan = np.inf, np.nan
    x = np.array([[-inf, -inf, -inf],
                  [inf, 0.0, 1.0],
                  [nan, 0.0, 1.0],
                  [-inf, 0.0, -inf],
                  [1e30, -1e30, 1e30]])
    close(ref.logsumexp(x), torch.logsumexp(T(x), -1))
    close(ref.logsumexp(x), [-inf, inf, nan, 0.0, 1e30 + np.log(2)])
    ok = [3, 4]                                     # torch agrees on rows without +-inf max/NaN
    close(ref.log_softmax(x)[ok], torch.log_softmax(T(x), -1)[ok])
    close(ref.softmax(x)[ok], torch.softmax(T(x), -1)[ok])
    close(ref.softmax(x)[4], [0.5, 0.0, 0.5])
    # kernel semantics: x - lse, so NaN where both are infinite
    close(ref.log_softmax(x)[:3], [[nan] * 3, [nan, -inf, -inf], [nan] * 3])
    close(ref.softmax(x)[:3], [[nan] * 3, [nan, 0, 0], [nan] * 3])
    # empty class axis: -inf, like torch.logsumexp
    empty = np.zeros((3, 0))
    close(ref.logsumexp(empty), torch.logsumexp(T(empty), -1))
    assert ref.log_softmax(np.zeros((3, 0))).shape == (3, 0)


def test_large_inputs_are_vectorised():
    # shapes the tests of the fast kernels use must be cheap for the oracle
    x = logits_of((200_000, 10)).astype(np.float32)
    y = labels_of(200_000, 10)
    loss, grad = ref.cross_entropy_with_grad(x, y, label_smoothing=0.1, z_loss=1e-3)
    assert np.isfinite(loss) and grad.dtype == np.float64 and grad.shape == x.shape
