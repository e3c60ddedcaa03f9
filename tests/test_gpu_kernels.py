"""Kernel-level tests of nbxent.gpu (launchers of docs/kernels.md, array plumbing).

Run under the CUDA simulator when no real GPU is usable (tests/conftest.py chooses), on tiny shapes with tiny launch settings so that multi-block, multi-lane and
grid-stride paths run. Expected values come from a float64 NumPy computation written here,
straight from the formulas of docs/kernels.md.
"""

from __future__ import annotations

import numpy as np
import pytest

# tests/conftest.py has chosen the CUDA simulator, where no real GPU is usable, before numba
# was imported.
try:
    from numba import cuda

    from nbxent.gpu import _arrays, _reduce
    from nbxent.gpu import softmax as K
except Exception as exc:  # numba-cuda missing or broken
    pytest.skip(f"nbxent.gpu unavailable: {exc}", allow_module_level=True)
if not _arrays.available():
    pytest.skip("neither a CUDA GPU nor the CUDA simulator is usable", allow_module_level=True)

SIM = _reduce.SIMULATOR
# Edge-case rows make the simulator's NumPy scalars warn (inf - inf); the kernels mean it.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# THREADS_PER_BLOCK < LANES < C: threads own several lanes, lanes several elements;
# MAX_BLOCKS below the row count: grid-stride loops; REDUCE_CHUNK: several partial levels.
TINY = dict(THREADS_PER_BLOCK=8, LANES=16, MAX_BLOCKS=3, REDUCE_CHUNK=4)
SMALL_C, BLOCK_C = 7, 45  # one thread per row / one block per row (SMALL_C = 32)
WIDE_C = 300  # block per row, several UNROLL chunks per lane (TINY LANES = 16), the last partial
TOL = {np.float16: (2e-3, 2e-3), np.float32: (2e-5, 2e-6), np.float64: (1e-12, 1e-13)}
IGNORE = -100


@pytest.fixture(autouse=True)
def _tiny_launches():
    with _reduce.launch_config(**TINY):
        yield


# ----------------------------------------------------------------------------- helpers


class Dev:
    """A device array with a chosen layout: `base` holds the memory, `view` is the strided
    kernel view (via _arrays.strided_view), `host()` reads the logical values back."""

    def __init__(self, shape, dtype, layout="C", fill=None):
        shape = tuple(shape)
        n = int(np.prod(shape))
        if layout == "C":
            base = np.zeros(shape, dtype)
            logical = base
        elif layout == "F":
            base = np.zeros(shape, dtype, order="F")
            logical = base
        elif layout == "padded":  # class stride 2 elements, rows padded
            base = np.zeros(shape[:-1] + (2 * shape[-1] + 1,), dtype)
            logical = base[..., : 2 * shape[-1] : 2]
        elif layout == "moved":  # PyTorch (N, C, d) with axis=1 seen as (N, d, C)
            base = np.zeros((shape[0], shape[2], shape[1]), dtype)
            logical = base.transpose(0, 2, 1)
        else:
            raise ValueError(layout)
        assert logical.shape == shape and n == logical.size
        if fill is not None:
            logical[...] = fill
        self.shape, self.strides = logical.shape, logical.strides
        self.base = cuda.to_device(base)
        self.view = _arrays.strided_view(self.base, self.shape, self.strides)

    def host(self):
        b = self.base.copy_to_host()
        return np.lib.stride_tricks.as_strided(b, self.shape, self.strides).copy()


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def no_weight(dtype):
    return cuda.to_device(np.zeros(0, dtype))


def compute(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def close(got, want, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol * scale,
                               equal_nan=True)


def ref_split(x):
    """lse as base + rest (keepdims), so that x - lse = (x - base) - rest stays exact for rows
    of huge logits: (m, log sum exp(x - m)); an infinite max m gives lse = m (PyTorch)."""
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        m = np.max(x, axis=-1, keepdims=True)
        m0 = np.where(np.isinf(m), 0.0, m)
        rest = np.log(np.sum(np.exp(x - m0), axis=-1, keepdims=True))
        inf = np.isinf(m) & ~np.isnan(rest)
        return np.where(inf, m, m0), np.where(inf, 0.0, rest)


def ref_lse(x):
    base, rest = ref_split(x)
    return (base + rest)[..., 0]


def ref_log_softmax(x):
    base, rest = ref_split(x)
    with np.errstate(all="ignore"):
        return (np.asarray(x, np.float64) - base) - rest


def ref_hard(x, y, w, ignore, eps, z, s):
    """Loss (P, Q) and gradient (P, Q, C) in float64, row by row from the contract."""
    x = np.asarray(x, np.float64)
    P, Q, C = x.shape
    wv = np.ones(C) if w is None or len(w) == 0 else np.asarray(w, np.float64)
    W = wv.sum()
    loss, grad = np.zeros((P, Q)), np.zeros((P, Q, C))
    with np.errstate(all="ignore"):
        for p in range(P):
            for q in range(Q):
                yy = int(y[p, q])
                if yy == ignore:
                    continue
                xr, lse = x[p, q], ref_lse(x[p, q])
                gap = -ref_log_softmax(xr)  # lse - x_c
                wy = wv[yy]
                loss[p, q] = (1 - eps) * wy * gap[yy]
                a = (1 - eps) * wy
                if eps > 0:
                    loss[p, q] += eps / C * (wv * gap).sum()  # = W lse - sum_c w_c x_c
                    a += eps / C * W
                if z > 0:
                    loss[p, q] += z * wy * lse**2
                    a += 2 * z * wy * lse
                g = np.exp(-gap) * a
                g[yy] -= (1 - eps) * wy
                if eps > 0:
                    g -= eps / C * wv
                grad[p, q] = s[p, q] * g
    return loss, grad


def ref_soft(x, t, w, eps, z, s):
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    P, Q, C = x.shape
    wv = np.ones(C) if w is None or len(w) == 0 else np.asarray(w, np.float64)
    loss, grad = np.zeros((P, Q)), np.zeros((P, Q, C))
    with np.errstate(all="ignore"):
        for p in range(P):
            for q in range(Q):
                xr, lse = x[p, q], ref_lse(x[p, q])
                gap = -ref_log_softmax(xr)  # lse - x_c
                tp = (1 - eps) * t[p, q] + eps / C
                nz = tp != 0
                loss[p, q] = (wv[nz] * tp[nz] * gap[nz]).sum() + (z * lse**2 if z > 0 else 0)
                b = (wv * tp).sum() + (2 * z * lse if z > 0 else 0)
                grad[p, q] = s[p, q] * (np.exp(-gap) * b - wv * tp)
    return loss, grad


def run_hard(x, y, w, eps, z, s=None, grad=True, layout="C", inplace=False, ignore=IGNORE):
    """Run K.cross_entropy on host inputs; returns (loss, grad or None) on the host."""
    P, Q, C = x.shape
    dt = x.dtype.type
    xd = Dev(x.shape, dt, layout, fill=x)
    loss = Dev((P, Q), compute(dt), "F" if layout == "F" else "C")
    gd = None
    if grad:
        gd = xd if inplace else Dev(x.shape, dt, layout)
    sv = None if s is None else (s if not isinstance(s, np.ndarray) else dev(s))
    wd = no_weight(compute(dt)) if w is None else dev(np.asarray(w, compute(dt)))
    K.cross_entropy(xd.view, dev(y), wd, ignore, eps, z, loss.view, sv,
                    None if gd is None else gd.view)
    return loss.host(), (None if gd is None else gd.host())


def rand_logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------- array plumbing


def test_simulator_switch():
    assert _reduce.WARP_SHUFFLE == (not SIM)
    assert _arrays.simulator_enabled() == SIM


def test_arrays_helpers():
    h = np.arange(24, dtype=np.float32).reshape(4, 6)
    d = cuda.to_device(h)
    assert _arrays.is_device_array(d) and not _arrays.is_device_array(h)
    assert not _arrays.is_device_array([1.0]) and not _arrays.is_device_array(np.float32(1))
    assert _arrays.as_device_array(d) is d
    assert _arrays.shape_strides(d) == ((4, 6), (24, 4)) and _arrays.dtype(d) == np.float32
    # Fortran-like and broadcast views share memory with d
    t = _arrays.strided_view(d, (6, 4), (4, 24))
    np.testing.assert_array_equal(_arrays.to_host(t), h.T)
    b = _arrays.strided_view(d, (3, 6), (0, 4))
    np.testing.assert_array_equal(_arrays.to_host(b), np.broadcast_to(h[0], (3, 6)))
    np.testing.assert_array_equal(_arrays.to_host(_arrays.broadcast_to(d[1:2], (2, 4, 6))),
                                  np.broadcast_to(h[1:2], (2, 4, 6)))
    # copies and conversions
    c = _arrays.contiguous(t)
    assert _arrays.shape_strides(c) == ((6, 4), (16, 4))
    np.testing.assert_array_equal(_arrays.to_host(c), h.T)
    assert _arrays.contiguous(d) is d and _arrays.astype(d, np.float32) is d
    i = _arrays.astype(t, np.int64)
    assert _arrays.dtype(i) == np.int64
    np.testing.assert_array_equal(_arrays.to_host(i), h.T.astype(np.int64))
    e = _arrays.empty((6, 4), np.float64, like=d)
    _arrays.copy_into(e, t)
    np.testing.assert_array_equal(_arrays.to_host(e), h.T)
    f = _arrays.full((), 7, np.int64, like=d)
    assert _arrays.shape_strides(f)[0] == () and _arrays.item(f, ()) == 7
    assert _arrays.item(t, (5, 2)) == h[2, 5]
    out1 = _arrays.full((1,), 2.5, np.float64, like=d)
    sc = _arrays.as_scalar(out1, like=d)
    assert _arrays.shape_strides(sc)[0] == () and float(_arrays.to_host(sc)) == 2.5
    assert _arrays.wrap_like(d, d) is d and _arrays.current_stream(d) == 0


# ----------------------------------------------------------------------------- logsumexp, (log_)softmax


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("C, layout", [(1, "C"), (2, "F"), (SMALL_C, "F"), (BLOCK_C, "padded"),
                                       (BLOCK_C, "moved"), (WIDE_C, "C")])
def test_row_functions(dtype, C, layout):
    rng = np.random.default_rng(C)
    x = rand_logits(rng, (2, 3, C), dtype)
    lse, logp = ref_lse(x), ref_log_softmax(x)
    xd = Dev(x.shape, dtype, layout, fill=x)
    out = Dev((2, 3), dtype, "F")
    K.logsumexp(xd.view, out.view)
    close(out.host(), lse, dtype, scale=10)
    for launcher, want in ((K.log_softmax, logp), (K.softmax, np.exp(logp))):
        o = Dev(x.shape, dtype, layout)
        launcher(xd.view, o.view)
        close(o.host(), want, dtype, scale=10)
    np.testing.assert_array_equal(xd.host(), x)  # input untouched


EDGE_ROWS = [
    [-np.inf] * 5,
    [np.nan, 1.0, 2.0, -np.inf, 0.0],
    [np.inf, 1.0, -np.inf, 2.0, 0.0],
    [1e30, -1e30, 0.0, 1e30, -np.inf],
    [1e30, 1e30, 1e30, 1e30, 1e30],  # lse - x = log C exactly, not (1e30 + log C) - 1e30
    [-np.inf, 3.0, -np.inf, -np.inf, 2.0],
    [np.inf, np.inf, 0.0, 1.0, 2.0],
    [0.5, -0.5, 1.5, 2.5, -3.0],
]


def _edge_logits(C, dtype):
    rows = np.array([(r * (C // 5 + 1))[:C] for r in EDGE_ROWS], np.float64)
    if dtype == np.float16:
        rows = np.where(np.abs(rows) == 1e30, np.sign(rows) * 6e4, rows)
    return rows.astype(dtype)[None]  # (1, 8, C)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("C", [5, BLOCK_C, WIDE_C])
def test_edge_rows(dtype, C):
    x = _edge_logits(C, dtype)
    lse = ref_lse(x)
    assert np.isneginf(lse[0, 0]) and np.isnan(lse[0, 1]) and np.isposinf(lse[0, 2])
    xd = Dev(x.shape, dtype, fill=x)
    out = Dev(x.shape[:2], dtype)
    K.logsumexp(xd.view, out.view)
    close(out.host(), lse, dtype, scale=10)
    logp = ref_log_softmax(x)
    for launcher, want in ((K.log_softmax, logp), (K.softmax, np.exp(logp))):
        o = Dev(x.shape, dtype)
        launcher(xd.view, o.view)
        with np.errstate(over="ignore"):  # -1.2e5 is -inf in float16
            close(o.host(), want.astype(dtype), dtype, scale=10)
    # cross-entropy through the same rows, label on a -inf, a finite and a +inf class
    y = np.array([[0, 1, 0, 1, 4, 1, 2, 3]])
    s = np.full((1, 8), 0.5)
    for eps, z in ((0.0, 0.0), (0.1, 0.01)):
        loss, grad = run_hard(x, y, None, eps, z, s)
        want_loss, want_grad = ref_hard(x, y, None, IGNORE, eps, z, s)
        with np.errstate(over="ignore"):  # z lse^2 of the 1e30 row overflows float32
            want_loss = want_loss.astype(np.float32).astype(np.float64)
        close(loss, want_loss, dtype, scale=10)
        close(grad, want_grad, dtype, scale=10)


# ----------------------------------------------------------------------------- cross-entropy, hard labels

HARD_CASES = [
    # dtype, C, layout, eps, z, weighted
    (np.float32, SMALL_C, "C", 0.0, 0.0, False),
    (np.float32, BLOCK_C, "C", 0.1, 1e-3, True),
    (np.float32, BLOCK_C, "F", 0.0, 0.0, True),
    (np.float64, SMALL_C, "moved", 0.2, 0.0, True),
    (np.float64, BLOCK_C, "padded", 0.0, 1e-2, False),
    (np.float16, SMALL_C, "padded", 0.1, 1e-2, True),
    (np.float16, BLOCK_C, "moved", 0.05, 0.0, False),
    (np.float32, 1, "C", 0.1, 1e-2, True),
    (np.float32, 2, "F", 0.3, 0.0, False),
    (np.float32, WIDE_C, "C", 0.1, 1e-3, True),
    (np.float16, WIDE_C, "padded", 0.0, 0.0, False),
]


@pytest.mark.parametrize("dtype, C, layout, eps, z, weighted", HARD_CASES)
def test_cross_entropy(dtype, C, layout, eps, z, weighted):
    rng = np.random.default_rng(C + int(eps * 100))
    P, Q = 2, 3
    x = rand_logits(rng, (P, Q, C), dtype) + dtype(20)  # shared offset: tests the shifted sums
    y = rng.integers(0, C, (P, Q)).astype(np.int32 if C % 2 else np.int64)
    y[0, 1] = IGNORE
    w = rng.uniform(0.5, 2.0, C) if weighted else None
    s = rng.uniform(-1, 2, (P, Q))
    loss, grad = run_hard(x, y, w, eps, z, s, layout=layout)
    w_c = None if w is None else w.astype(compute(dtype))
    want_loss, want_grad = ref_hard(x, y, w_c, IGNORE, eps, z, s)
    close(loss, want_loss, np.float32 if dtype == np.float16 else dtype, scale=10)
    close(grad, want_grad, dtype, scale=1)
    assert loss[0, 1] == 0 and not grad[0, 1].any()
    # forward-only gives the same bits as the fused launch
    fwd, none = run_hard(x, y, w, eps, z, grad=False, layout=layout)
    assert none is None
    np.testing.assert_array_equal(fwd, loss)


@pytest.mark.parametrize("C", [SMALL_C, BLOCK_C])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_cross_entropy_inplace(C, dtype):
    rng = np.random.default_rng(3)
    x = rand_logits(rng, (2, 3, C), dtype)
    y = rng.integers(0, C, (2, 3))
    y[1, 2] = IGNORE
    s = np.full((2, 3), 0.25)
    w = rng.uniform(0.5, 2.0, C)
    loss_a, grad_a = run_hard(x, y, w, 0.1, 1e-2, s, layout="moved")
    loss_b, grad_b = run_hard(x, y, w, 0.1, 1e-2, s, layout="moved", inplace=True)
    np.testing.assert_array_equal(loss_b, loss_a)
    np.testing.assert_array_equal(grad_b, grad_a)


def test_cross_entropy_broadcast_scale_and_all_ignored():
    rng = np.random.default_rng(4)
    x = rand_logits(rng, (2, 3, BLOCK_C), np.float32)
    y = rng.integers(0, BLOCK_C, (2, 3))
    one = cuda.to_device(np.array([0.125]))
    s_view = _arrays.strided_view(one, (2, 3), (0, 0))  # broadcast_to of a scalar
    loss, grad = run_hard(x, y, None, 0.0, 0.0, s_view)
    want_loss, want_grad = ref_hard(x, y, None, IGNORE, 0.0, 0.0, np.full((2, 3), 0.125))
    close(loss, want_loss, np.float32)
    close(grad, want_grad, np.float32)
    for C in (SMALL_C, BLOCK_C):
        xs = rand_logits(rng, (2, 3, C), np.float32)
        xs[0, 0, 0] = np.nan  # ignored rows give 0 whatever their logits
        loss, grad = run_hard(xs, np.full((2, 3), 5), None, 0.1, 0.1, np.ones((2, 3)), ignore=5)
        assert not loss.any() and not grad.any()


def test_cross_entropy_bad_labels_do_not_crash():
    rng = np.random.default_rng(5)
    for C in (SMALL_C, BLOCK_C):
        x = rand_logits(rng, (1, 4, C), np.float32)
        y = np.array([[0, C, -1, 10**9]])
        loss, grad = run_hard(x, y, rng.uniform(size=C), 0.1, 0.0, np.ones((1, 4)))
        assert np.isfinite(loss[0, 0]) and np.isnan(loss[0, 1:]).all()
        assert np.isnan(grad[0, 1:]).all() and np.isfinite(grad[0, 0]).all()
        logp = Dev((1, 4, C), np.float32, fill=x)
        out = Dev((1, 4), np.float32)
        K.nll(logp.view, dev(y), no_weight(np.float32), IGNORE, out.view)
        assert np.isnan(out.host()[0, 1:]).all()


# ----------------------------------------------------------------------------- soft targets


@pytest.mark.parametrize("dtype, C, layout, eps, z, weighted", [
    (np.float32, SMALL_C, "F", 0.0, 0.0, False),
    (np.float32, BLOCK_C, "padded", 0.1, 1e-2, True),
    (np.float64, BLOCK_C, "C", 0.0, 1e-3, True),
    (np.float16, SMALL_C, "moved", 0.2, 0.0, True),
    (np.float16, BLOCK_C, "C", 0.0, 0.0, False),
])
def test_cross_entropy_soft(dtype, C, layout, eps, z, weighted):
    rng = np.random.default_rng(C + 7)
    P, Q = 2, 3
    x = rand_logits(rng, (P, Q, C), dtype) - dtype(10)
    t = rng.dirichlet(np.ones(C), (P, Q))
    t[0, 0, : C // 2] = 0  # zero targets on -inf logits count 0
    t[0, 0] /= t[0, 0].sum()
    x[0, 0, : C // 2] = -np.inf
    t[1, 2] = 0  # all-zero target row
    t = t.astype(dtype)
    w = rng.uniform(0.5, 2.0, C) if weighted else None
    s = rng.uniform(-1, 2, (P, Q))
    ct = compute(dtype)
    td = Dev(x.shape, dtype, layout, fill=t)
    wd = no_weight(ct) if w is None else dev(w.astype(ct))
    results = []
    for inplace in (False, True):
        xd = Dev(x.shape, dtype, layout, fill=x)
        loss = Dev((P, Q), ct)
        gd = xd if inplace else Dev(x.shape, dtype, layout)
        K.cross_entropy_soft(xd.view, td.view, wd, eps, z, loss.view, dev(s), gd.view)
        results.append((loss.host(), gd.host()))
    (loss, grad), (loss_i, grad_i) = results
    want_loss, want_grad = ref_soft(x, t, None if w is None else w.astype(ct), eps, z, s)
    assert np.isfinite(want_loss[0, 0]) == (eps == 0)  # with eps, t' > 0 on the -inf logits
    close(loss, want_loss, ct, scale=10)
    close(grad, want_grad, dtype)
    np.testing.assert_array_equal(loss_i, loss)
    np.testing.assert_array_equal(grad_i, grad)
    fwd = Dev((P, Q), ct)
    K.cross_entropy_soft(Dev(x.shape, dtype, layout, fill=x).view, td.view, wd, eps, z, fwd.view)
    np.testing.assert_array_equal(fwd.host(), loss)


# ----------------------------------------------------------------------------- nll


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nll(dtype):
    rng = np.random.default_rng(8)
    C = 6
    logp = rand_logits(rng, (3, 4, C), dtype)
    y = rng.integers(0, C, (3, 4))
    y[2, 1] = IGNORE
    w = rng.uniform(0.5, 2.0, C).astype(compute(dtype))
    lp = Dev(logp.shape, dtype, "moved", fill=logp)
    for weight in (None, w):
        out = Dev((3, 4), compute(dtype), "F")
        K.nll(lp.view, dev(y), no_weight(compute(dtype)) if weight is None else dev(weight),
              IGNORE, out.view)
        wv = np.ones(C) if weight is None else weight.astype(np.float64)
        want = -wv[y.clip(0)] * np.take_along_axis(logp.astype(np.float64), y.clip(0)[..., None], -1)[..., 0]
        want[2, 1] = 0
        close(out.host(), want, compute(dtype))


# ----------------------------------------------------------------------------- label_stats, sum_rows


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_label_stats(label_dtype):
    rng = np.random.default_rng(9)
    C = 5
    y = rng.integers(0, C, (7, 5)).astype(label_dtype)  # 35 rows: 9 -> 3 -> 1 blocks at chunk 4
    y[0, 2] = IGNORE
    y[4, 1] = IGNORE
    w = rng.uniform(0.5, 2.0, C).astype(np.float32)
    ld = Dev(y.shape, label_dtype, "F", fill=y)
    assert K.label_stats(ld.view, C, IGNORE, no_weight(np.float32)) == (-1, 33.0)
    bad, total = K.label_stats(ld.view, C, IGNORE, dev(w))
    assert bad == -1
    mask = y != IGNORE
    want = float(np.sum(w[y[mask]].astype(np.float64)))
    assert total == pytest.approx(want, rel=1e-14)
    y2 = y.copy()
    y2[5, 3], y2[3, 4], y2[6, 0] = C, -1, 10**6  # rows 28, 19, 30: first bad is 19
    assert K.label_stats(Dev(y.shape, label_dtype, fill=y2).view, C, IGNORE, dev(w))[0] == 19
    # ignore_index inside [0, C) and every row ignored
    allign = np.full((2, 3), 2, label_dtype)
    assert K.label_stats(dev(allign), C, 2, dev(w)) == (-1, 0.0)


def test_sum_rows_fixed_order():
    rng = np.random.default_rng(10)
    v = (rng.standard_normal((7, 5)) * 10.0 ** rng.integers(-8, 8, (7, 5))).astype(np.float32)
    vd = Dev(v.shape, np.float32, "F", fill=v)
    results = []
    for tpb in (1, 4, 16):
        with _reduce.launch_config(THREADS_PER_BLOCK=tpb, LANES=16):
            out = cuda.device_array(1, np.float64)
            K.sum_rows(vd.view, 0.5, out)
            results.append(out.copy_to_host()[0])
    assert results[0] == results[1] == results[2]
    assert results[0] == pytest.approx(0.5 * np.sum(v.astype(np.float64)), rel=1e-12)
    out32 = cuda.device_array(1, np.float32)
    K.sum_rows(vd.view, 1.0, out32)
    assert out32.copy_to_host()[0] == np.float32(2 * results[0])
    empty = cuda.device_array(1, np.float64)
    K.sum_rows(cuda.device_array((0, 3), np.float32), 1.0, empty)
    assert empty.copy_to_host()[0] == 0.0


# ----------------------------------------------------------------------------- determinism


def test_determinism_across_runs_and_threads():
    """Bit-identical results on a second run and at any THREADS_PER_BLOCK (same LANES)."""
    rng = np.random.default_rng(11)
    x = rand_logits(rng, (1, 3, 70), np.float32)
    y = rng.integers(0, 70, (1, 3))
    w = rng.uniform(0.5, 2.0, 70)
    s = np.ones((1, 3))
    runs = []
    for tpb in (16, 16, 4):
        with _reduce.launch_config(THREADS_PER_BLOCK=tpb, LANES=16):
            runs.append(run_hard(x, y, w, 0.1, 1e-2, s))
    for loss, grad in runs[1:]:
        np.testing.assert_array_equal(loss, runs[0][0])
        np.testing.assert_array_equal(grad, runs[0][1])


def test_production_lanes_and_defaults():
    """LANES at its default (C=45 -> 64 lanes for a row reduction; the cross-entropy launcher
    asks for ceil(45 / UNROLL) = 6 -> 32): same bits at 8 and 64 threads per block, and the
    module's default settings (no override) run both paths."""
    rng = np.random.default_rng(12)
    x = rand_logits(rng, (1, 2, BLOCK_C), np.float32)
    y = rng.integers(0, BLOCK_C, (1, 2))
    s = np.ones((1, 2))
    want_loss, want_grad = ref_hard(x, y, None, IGNORE, 0.1, 0.0, s)
    runs = []
    for tpb in (8, 64):
        with _reduce.launch_config(THREADS_PER_BLOCK=tpb, LANES=256):
            assert _reduce.row_lanes(BLOCK_C) == 64
            assert _reduce.row_lanes(-(-BLOCK_C // K.UNROLL)) == 32
            runs.append(run_hard(x, y, None, 0.1, 0.0, s))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    close(runs[0][0], want_loss, np.float32, scale=10)
    close(runs[0][1], want_grad, np.float32)
    for C in (5, BLOCK_C):
        xs = rand_logits(rng, (1, 2, C), np.float32)
        ys = rng.integers(0, C, (1, 2))
        with _reduce.launch_config(THREADS_PER_BLOCK=256, LANES=256, MAX_BLOCKS=1 << 20,
                                   REDUCE_CHUNK=8192):
            # grad_scale None with grad_out: scale 1
            loss, grad = run_hard(xs, ys, None, 0.0, 0.0, None)
        want_loss, want_grad = ref_hard(xs, ys, None, IGNORE, 0.0, 0.0, np.ones((1, 2)))
        close(loss, want_loss, np.float32, scale=10)
        close(grad, want_grad, np.float32)


def test_launch_config_validates_and_restores():
    before = _reduce.THREADS_PER_BLOCK
    with pytest.raises(ValueError):
        with _reduce.launch_config(LANES=24):
            pass
    with pytest.raises(TypeError):
        with _reduce.launch_config(THREADS=8):
            pass
    assert _reduce.THREADS_PER_BLOCK == before
