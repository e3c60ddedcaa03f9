"""The softmax cross-entropy family on every backend against nbxent.reference (float64)."""

from __future__ import annotations

import numpy as np
import pytest

import nbxent
from nbxent import reference as ref
from tests.backends import BACKENDS, backend_params, is_backend_array, small, to_backend, to_host

DTYPES = [np.float32, np.float64, np.float16]
rng = np.random.default_rng()

# Loss tolerance per input dtype, relative to max(1, |reference|) (float16 inputs are
# computed in float32: the reference sees the same float16 values, so float32's bound holds).
LOSS_TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2e-6}
# Per-element outputs are rounded to the input dtype.
ELEM_TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2e-3}


def assert_close(got, want, tol):
    got = to_host(got).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)


def make_logits(shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_labels(index_shape, num_classes, ignore_frac=0.2, ignore_index=-100, dtype=np.int64):
    labels = rng.integers(0, num_classes, size=index_shape).astype(dtype)
    if ignore_frac:
        labels[rng.random(index_shape) < ignore_frac] = ignore_index
    return labels


def make_probs(shape, axis=-1):
    p = rng.random(shape)
    return p / p.sum(axis=axis, keepdims=True)


OPTION_SETS = [
    {},
    {"weight": True},
    {"label_smoothing": 0.1},
    {"weight": True, "label_smoothing": 0.2},
    {"z_loss": 1e-3},
    {"weight": True, "label_smoothing": 0.05, "z_loss": 1e-2, "ignore_index": 3},
]


def resolve_options(opts, num_classes, backend):
    opts = dict(opts)
    w = rng.random(num_classes) + 0.5 if opts.pop("weight", False) else None
    return opts, w


# ----------------------------------------------------------------------------- cross_entropy


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("opts", OPTION_SETS)
def test_cross_entropy_hard_matches_reference(backend, dtype, reduction, opts):
    n, c = small(backend, (257, 37), (6, 9))
    logits = make_logits((n, c), dtype)
    opts, w = resolve_options(opts, c, backend)
    labels = make_labels((n,), c, ignore_index=opts.get("ignore_index", -100))
    got = nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend),
                               weight=to_backend(w, backend), reduction=reduction, **opts)
    want = ref.cross_entropy(logits, labels, weight=w, reduction=reduction, **opts)
    assert is_backend_array(got, backend)
    expected_dtype = np.float64 if dtype == np.float64 else np.float32
    assert to_host(got).dtype == expected_dtype
    assert to_host(got).shape == np.shape(want)
    assert_close(got, want, LOSS_TOL[dtype])


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("opts", [{}, {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-2}])
def test_cross_entropy_soft_matches_reference(backend, dtype, reduction, opts):
    n, c = small(backend, (129, 23), (5, 7))
    logits = make_logits((n, c), dtype)
    probs = make_probs((n, c)).astype(dtype)
    opts, w = resolve_options(opts, c, backend)
    got = nbxent.cross_entropy(to_backend(logits, backend), to_backend(probs, backend),
                               weight=to_backend(w, backend), reduction=reduction, **opts)
    want = ref.cross_entropy(logits, probs, weight=w, reduction=reduction, **opts)
    assert_close(got, want, LOSS_TOL[dtype])


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("opts", OPTION_SETS[:1] + OPTION_SETS[-1:])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_with_grad_matches_reference(backend, dtype, reduction, opts, soft):
    n, c = small(backend, (97, 29), (5, 7))
    logits = make_logits((n, c), dtype)
    opts, w = resolve_options(opts, c, backend)
    if soft:
        opts.pop("ignore_index", None)
        target = make_probs((n, c)).astype(dtype)
    else:
        target = make_labels((n,), c, ignore_index=opts.get("ignore_index", -100))
    grad_output = rng.standard_normal(n) if reduction == "none" else 0.7
    kwargs = dict(weight=w, reduction=reduction, grad_output=grad_output, **opts)
    loss, grad = nbxent.cross_entropy_with_grad(
        to_backend(logits, backend), to_backend(target, backend),
        **{**kwargs, "weight": to_backend(w, backend), "grad_output": to_backend(grad_output, backend)})
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, target, **kwargs)
    assert_close(loss, want_loss, LOSS_TOL[dtype])
    assert to_host(grad).dtype == dtype and to_host(grad).shape == logits.shape
    assert_close(grad, want_grad, ELEM_TOL[dtype] * 5)


@backend_params
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inplace_gradient_equals_out_of_place(backend, dtype):
    n, c = small(backend, (64, 50), (4, 9))
    logits = make_logits((n, c), dtype)
    labels = make_labels((n,), c)
    loss_a, grad_a = nbxent.cross_entropy_with_grad(to_backend(logits, backend), to_backend(labels, backend),
                                                    label_smoothing=0.1)
    buf = to_backend(logits.copy(), backend)
    loss_b, grad_b = nbxent.cross_entropy_with_grad(buf, to_backend(labels, backend),
                                                    label_smoothing=0.1, inplace=True)
    assert grad_b is buf
    np.testing.assert_array_equal(to_host(grad_a), to_host(buf))
    np.testing.assert_array_equal(to_host(loss_a), to_host(loss_b))


def test_inplace_on_read_only_logits_is_an_error():
    logits = make_logits((4, 5), np.float32)
    logits.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nbxent.cross_entropy_with_grad(logits, np.zeros(4, np.int64), inplace=True)


@backend_params
def test_every_row_ignored(backend):
    logits = make_logits((5, 4), np.float32)
    labels = np.full(5, -100)
    args = to_backend(logits, backend), to_backend(labels, backend)
    assert np.isnan(to_host(nbxent.cross_entropy(*args)))
    assert to_host(nbxent.cross_entropy(*args, reduction="sum")) == 0
    loss, grad = nbxent.cross_entropy_with_grad(*args)
    assert np.isnan(to_host(loss))
    assert np.all(to_host(grad) == 0)


@backend_params
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(backend, reduction):
    logits = np.zeros((0, 7), np.float32)
    labels = np.zeros((0,), np.int64)
    got = to_host(nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend),
                                       reduction=reduction))
    if reduction == "mean":
        assert np.isnan(got)
    elif reduction == "sum":
        assert got == 0
    else:
        assert got.shape == (0,)


# ----------------------------------------------------------------------------- layouts


@backend_params
@pytest.mark.parametrize("layout", ["fortran", "strided", "axis1", "bt_v", "one_sample", "transposed3d"])
def test_layouts_match_reference(backend, layout):
    dtype = np.float32
    if layout == "fortran":
        logits, axis = np.asfortranarray(make_logits(small(backend, (33, 17), (5, 6)), dtype)), -1
    elif layout == "strided":
        logits, axis = make_logits(small(backend, (66, 40), (8, 10)), dtype)[::2, ::3], -1
    elif layout == "axis1":
        logits, axis = make_logits(small(backend, (4, 11, 3, 5), (2, 5, 2, 3)), dtype), 1
    elif layout == "bt_v":
        logits, axis = make_logits(small(backend, (3, 7, 19), (2, 3, 5)), dtype), -1
    elif layout == "one_sample":
        logits, axis = make_logits(small(backend, (31,), (7,)), dtype), 0
    else:
        logits, axis = make_logits(small(backend, (13, 4, 6), (3, 4, 5)), dtype).transpose(2, 0, 1), 1
    c = logits.shape[axis]
    index_shape = logits.shape[:axis % logits.ndim] + logits.shape[axis % logits.ndim + 1:]
    labels = make_labels(index_shape, c) if index_shape else np.int64(rng.integers(c))
    for reduction in ("none", "mean"):
        got = nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend),
                                   axis=axis, reduction=reduction)
        want = ref.cross_entropy(logits, labels, axis=axis, reduction=reduction)
        assert_close(got, want, 2e-6)
    loss, grad = nbxent.cross_entropy_with_grad(to_backend(logits, backend), to_backend(labels, backend),
                                                axis=axis, reduction="sum")
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, labels, axis=axis, reduction="sum")
    assert to_host(grad).shape == logits.shape
    assert_close(grad, want_grad, 1e-5)
    for fn in ("log_softmax", "softmax", "logsumexp"):
        assert_close(getattr(nbxent, fn)(to_backend(logits, backend), axis=axis),
                     getattr(ref, fn)(logits, axis=axis), 2e-6)


@backend_params
def test_soft_targets_with_other_strides_than_logits(backend):
    n, c = small(backend, (20, 9), (4, 5))
    logits = make_logits((n, c), np.float32)
    probs = np.asfortranarray(make_probs((n, c)).astype(np.float32))
    got = nbxent.cross_entropy(to_backend(logits, backend), to_backend(probs, backend), reduction="none")
    assert_close(got, ref.cross_entropy(logits, probs, reduction="none"), 2e-6)


def test_inputs_are_not_modified():
    logits = make_logits((20, 6), np.float32)
    labels = make_labels((20,), 6)
    w = rng.random(6).astype(np.float32)
    copies = [a.copy() for a in (logits, labels, w)]
    nbxent.cross_entropy_with_grad(logits, labels, weight=w, label_smoothing=0.1)
    nbxent.cross_entropy(logits, labels, weight=w, reduction="none")
    nbxent.softmax(logits)
    for a, b in zip((logits, labels, w), copies):
        np.testing.assert_array_equal(a, b)


@backend_params
@pytest.mark.parametrize("label_dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.uint64])
def test_any_integer_label_dtype(backend, label_dtype):
    logits = make_logits((6, 5), np.float32)
    labels = rng.integers(0, 5, 6).astype(label_dtype)
    got = nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend), reduction="none")
    assert_close(got, ref.cross_entropy(logits, labels.astype(np.int64), reduction="none"), 2e-6)


# ----------------------------------------------------------------------------- out=


@backend_params
def test_out_receives_per_row_losses(backend):
    logits = make_logits((8, 5), np.float32)
    labels = make_labels((8,), 5)
    out = to_backend(np.full(8, np.nan, np.float32), backend)
    got = nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend),
                               reduction="none", out=out)
    assert got is out
    assert_close(out, ref.cross_entropy(logits, labels, reduction="none"), 2e-6)


def test_out_with_other_strides_is_filled():
    logits = make_logits((8, 5), np.float32)
    labels = make_labels((8,), 5)
    base = np.full(16, np.nan, np.float32)
    out = base[::2]
    got = nbxent.cross_entropy(logits, labels, reduction="none", out=out)
    assert got is out
    assert_close(out, ref.cross_entropy(logits, labels, reduction="none"), 2e-6)
    assert np.isnan(base[1::2]).all()


@pytest.mark.parametrize("fn", ["log_softmax", "softmax", "logsumexp"])
def test_elementwise_out(fn):
    x = make_logits((7, 5, 3), np.float32)
    want = getattr(ref, fn)(x, axis=1)
    out = np.empty(want.shape, np.float32)
    got = getattr(nbxent, fn)(x, axis=1, out=out)
    assert got is out
    assert_close(out, want, 2e-6)


# ----------------------------------------------------------------------------- numerics


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_classes_get_exactly_zero(backend, dtype):
    """-inf logits (a masked vocabulary) get a softmax and a gradient of exactly 0: 6
    classes (the few-classes kernel), 40 (small-C) and 3000 (per row, three sum blocks)."""
    for c in small(backend, (6, 40, 3000), (6, 40)):
        logits = make_logits((5, c), dtype)
        logits[:, ::3] = -np.inf
        labels = np.ones(5, np.int64)               # class 1 is never masked
        x = to_backend(logits, backend)
        _, grad = nbxent.cross_entropy_with_grad(x, to_backend(labels, backend))
        xi = to_backend(logits.copy(), backend)
        nbxent.cross_entropy_with_grad(xi, to_backend(labels, backend), inplace=True)
        for got in (grad, xi, nbxent.softmax(x)):
            got = to_host(got)
            assert (got[:, ::3] == 0).all(), (c, got[:, ::3])
            assert np.isfinite(got).all()


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_extreme_values(backend, dtype):
    big = 6e4 if dtype == np.float16 else 1e30
    c = 6
    logits = np.array([
        [0, 1, 2, 3, 4, 5],                           # ordinary
        [big, -big, 0, 1, 2, 3],                      # +-1e30: finite
        [-np.inf, 1, -np.inf, 2, -np.inf, 0],         # masked classes: finite
        [-np.inf, 1, 2, 3, 4, 5],                     # -inf at the target: +inf
        [1, np.nan, 2, 3, 4, 5],                      # NaN: NaN for this row only
        [big, big, big, big, big, big],
    ], dtype=dtype)
    labels = np.array([2, 0, 1, 0, 3, 4])
    got = to_host(nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend),
                                       reduction="none"))
    want = ref.cross_entropy(logits, labels, reduction="none")
    assert np.isfinite(got[[0, 1, 2, 5]]).all()
    assert got[3] == np.inf and np.isnan(got[4])
    assert_close(got, want, LOSS_TOL[dtype])
    for fn in ("log_softmax", "softmax", "logsumexp"):
        # Per-element outputs are in the input dtype: round the expectation to it too
        # (log_softmax of -1.2e5 is -inf in float16).
        with np.errstate(over="ignore"):
            want = getattr(ref, fn)(logits).astype(dtype).astype(np.float64)
        assert_close(getattr(nbxent, fn)(to_backend(logits, backend)), want,
                     ELEM_TOL[dtype] * (1 if fn == "softmax" else 10))


@backend_params
@pytest.mark.parametrize("c", [1, 2])
def test_one_and_two_classes(backend, c):
    logits = make_logits((9, c), np.float32)
    labels = rng.integers(0, c, 9)
    for reduction in ("none", "mean"):
        assert_close(nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend),
                                          reduction=reduction, label_smoothing=0.1),
                     ref.cross_entropy(logits, labels, reduction=reduction, label_smoothing=0.1), 2e-6)
    _, grad = nbxent.cross_entropy_with_grad(to_backend(logits, backend), to_backend(labels, backend))
    assert_close(grad, ref.cross_entropy_with_grad(logits, labels)[1], 1e-6)


@pytest.mark.parametrize("c", [4097, 200_003])
def test_huge_class_count_float32(c):
    logits = make_logits((3, c), np.float32, scale=4.0)
    labels = rng.integers(0, c, 3)
    got = nbxent.cross_entropy(logits, labels, reduction="none")
    assert_close(got, ref.cross_entropy(logits, labels, reduction="none"), 2e-6)
    assert_close(nbxent.logsumexp(logits), ref.logsumexp(logits), 2e-6)


def test_mean_of_a_million_rows():
    logits = make_logits((1_000_000, 4), np.float32)
    labels = rng.integers(0, 4, 1_000_000)
    got = float(nbxent.cross_entropy(logits, labels))
    want = ref.cross_entropy(logits, labels)
    assert abs(got - want) <= 1e-6 * abs(want)


def test_gradient_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    logits = make_logits((50, 13), np.float32)
    labels = make_labels((50,), 13)
    w = (rng.random(13) + 0.5).astype(np.float32)
    for soft in (False, True):
        target = make_probs((50, 13)).astype(np.float32) if soft else labels
        loss, grad = nbxent.cross_entropy_with_grad(logits, target, weight=w, label_smoothing=0.1)
        t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
        tt = torch.tensor(target) if not soft else torch.tensor(target, dtype=torch.float64)
        tl = torch.nn.functional.cross_entropy(t, tt, weight=torch.tensor(w, dtype=torch.float64),
                                               label_smoothing=0.1)
        tl.backward()
        np.testing.assert_allclose(float(loss), tl.item(), rtol=1e-6)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- nll, softmax, lse


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_nll_loss_matches_reference(backend, dtype, reduction):
    n, c = small(backend, (70, 11), (5, 6))
    log_probs = ref.log_softmax(make_logits((n, c), np.float64)).astype(dtype)
    labels = make_labels((n,), c)
    w = rng.random(c) + 0.5
    got = nbxent.nll_loss(to_backend(log_probs, backend), to_backend(labels, backend),
                          weight=to_backend(w, backend), reduction=reduction)
    assert_close(got, ref.nll_loss(log_probs, labels, weight=w, reduction=reduction), LOSS_TOL[dtype])


@backend_params
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", ["log_softmax", "softmax", "logsumexp"])
def test_normalisers_match_reference(backend, dtype, fn):
    x = make_logits(small(backend, (40, 33), (4, 7)), dtype)
    got = getattr(nbxent, fn)(to_backend(x, backend))
    assert to_host(got).dtype == dtype
    assert_close(got, getattr(ref, fn)(x), ELEM_TOL[dtype] * (10 if fn != "softmax" else 1))


def test_reductions_are_zero_dimensional_numpy_values():
    logits = make_logits((10, 3), np.float32)
    labels = make_labels((10,), 3)
    for reduction in ("mean", "sum"):
        got = nbxent.cross_entropy(logits, labels, reduction=reduction)
        assert isinstance(got, np.generic) and np.ndim(got) == 0 and got.dtype == np.float32


# ----------------------------------------------------------------------------- check=False


def _forbid_label_stats(monkeypatch, backend):
    """Make the synchronising label check fail if an unchecked call reaches it."""
    module = "nbxent.cpu.softmax" if backend == "cpu" else "nbxent.gpu.softmax"

    def refuse(*args, **kwargs):
        raise AssertionError("check=False called label_stats")

    if backend == "cpu":   # the CPU's label_total is label_stats without the report
        import nbxent.cpu.softmax as cpu_k
        real = cpu_k.label_stats
        monkeypatch.setattr(cpu_k, "label_total", lambda *a, **k: np.array([real(*a, **k)[1]]))
    monkeypatch.setattr(f"{module}.label_stats", refuse)


@backend_params
@pytest.mark.parametrize("c", [5, 40])     # the CPU's small-C kernel and its per-row kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unchecked_calls_equal_checked_ones_bit_for_bit(backend, c, dtype, monkeypatch):
    n = small(backend, 300, 6)
    c = small(backend, c, min(c, 7))
    logits = make_logits((n, c), dtype)
    labels = make_labels((n,), c, ignore_frac=0.3)
    w = rng.random(c) + 0.5
    args = to_backend(logits, backend), to_backend(labels, backend)
    opts = dict(weight=to_backend(w, backend), label_smoothing=0.1, z_loss=1e-3)
    want = {}
    for reduction in ("none", "sum", "mean"):
        want[reduction] = to_host(nbxent.cross_entropy(*args, reduction=reduction, **opts))
        want["nll", reduction] = to_host(nbxent.nll_loss(*args, weight=opts["weight"],
                                                         reduction=reduction))
        loss, grad = nbxent.cross_entropy_with_grad(*args, reduction=reduction, **opts)
        want["grad", reduction] = to_host(loss), to_host(grad)
    _forbid_label_stats(monkeypatch, backend)
    for reduction in ("none", "sum", "mean"):
        got = to_host(nbxent.cross_entropy(*args, reduction=reduction, check=False, **opts))
        np.testing.assert_array_equal(got, want[reduction])
        got = to_host(nbxent.nll_loss(*args, weight=opts["weight"], reduction=reduction,
                                      check=False))
        np.testing.assert_array_equal(got, want["nll", reduction])
        loss, grad = nbxent.cross_entropy_with_grad(*args, reduction=reduction, check=False,
                                                    **opts)
        np.testing.assert_array_equal(to_host(loss), want["grad", reduction][0])
        np.testing.assert_array_equal(to_host(grad), want["grad", reduction][1])


@backend_params
@pytest.mark.parametrize("c", [2, 5, 40])   # the CPU's two-class, small-C and per-row kernels
@pytest.mark.parametrize("layout", ["c", "strided"])
def test_unchecked_bad_labels_give_nan_rows_not_errors(backend, c, layout):
    n = small(backend, 64, 6)
    c = small(backend, c, min(c, 7))
    logits = make_logits((n, 2 * c) if layout == "strided" else (n, c), np.float32)
    if layout == "strided":
        logits = logits[:, ::2]
    labels = make_labels((n,), c, ignore_frac=0.2)
    labels[[1, 4]] = [c, -7]                       # out of range, not ignore_index
    good = np.ones(n, bool)
    good[[1, 4]] = False
    args = to_backend(logits, backend), to_backend(labels, backend)
    with pytest.raises(ValueError, match="class index"):
        nbxent.cross_entropy(*args)
    before = logits.copy()

    per_row = to_host(nbxent.cross_entropy(*args, reduction="none", check=False))
    assert np.isnan(per_row[~good]).all()
    want = ref.cross_entropy(logits[good], labels[good], reduction="none")
    assert_close(per_row[good], want, LOSS_TOL[np.float32])
    assert np.isnan(to_host(nbxent.cross_entropy(*args, check=False)))
    assert np.isnan(to_host(nbxent.cross_entropy(*args, reduction="sum", check=False)))

    loss, grad = nbxent.cross_entropy_with_grad(*args, reduction="sum", check=False)
    grad = to_host(grad)
    assert np.isnan(to_host(loss)) and np.isnan(grad[~good]).all()
    _, want_grad = ref.cross_entropy_with_grad(logits[good], labels[good], reduction="sum")
    assert_close(grad[good], want_grad, 1e-5)

    nll = to_host(nbxent.nll_loss(*args, reduction="none", check=False))
    assert np.isnan(nll[~good]).all() and np.isfinite(nll[good]).all()
    np.testing.assert_array_equal(logits, before)


@pytest.mark.parametrize("c", [2, 5, 9])   # the two- and few-classes kernels (9: AVX2 only)
def test_label_check_folded_into_two_and_few_classes_kernels(c, monkeypatch):
    """Unweighted forward calls of two and few classes check their labels in the kernel,
    which counts them as it codes them: no pass of their own over the labels, the results
    of the separate check bit for bit, and still the first bad label's error."""
    import nbxent.cpu.softmax as cpu_k

    item = cpu_k._PAIR_ROWS         # rows per parallel work item of either kernel
    assert item == cpu_k._FEW_SUB * cpu_k._FEW_ITEM
    n = 3 * item + 77
    logits = make_logits((n, c), np.float32)
    labels = make_labels((n,), c, ignore_frac=0.2)
    folded = c <= cpu_k._FEW_C
    calls = {(r, chk): (lambda r=r, chk=chk: nbxent.cross_entropy(logits, labels, reduction=r,
                                                                  check=chk))
             for r in ("none", "sum", "mean") for chk in (True, False)}
    spied = ("cross_entropy_counting", "cross_entropy_counting_sum")   # "none"; sum, mean
    for name in spied:
        monkeypatch.setattr(cpu_k, name, lambda *a, **k: None)
    want = {k: f() for k, f in calls.items()}
    monkeypatch.undo()
    if folded:
        _forbid_label_stats(monkeypatch, "cpu")
    results = {name: [] for name in spied}
    for name in spied:
        monkeypatch.setattr(cpu_k, name, lambda *a, _f=getattr(cpu_k, name), _r=results[name],
                            **k: _r.append(_f(*a, **k)) or _r[-1])
    for k, f in calls.items():
        np.testing.assert_array_equal(f(), want[k], err_msg=str(k))
    monkeypatch.undo()
    assert [len(results[name]) for name in spied] == [2, 4]
    assert all((r is not None) == folded for name in spied for r in results[name])
    assert float(want["mean", True]) == pytest.approx(
        ref.cross_entropy(logits.astype(np.float64), labels), rel=1e-6)

    bad = labels.copy()
    bad[[2 * item + 10, 2 * item + 5, n - 1]] = [c, -3, c + 1000]   # the first: third item
    before = logits.copy()
    for r in ("none", "sum", "mean"):
        with pytest.raises(ValueError, match=rf"target\[{2 * item + 5}\] = -3 .*\[0, {c}\)"):
            nbxent.cross_entropy(logits, bad, reduction=r)
        unchecked = nbxent.cross_entropy(logits, bad, reduction=r, check=False)
        assert np.isnan(unchecked).any()
    np.testing.assert_array_equal(logits, before)
    everything_ignored = np.full(n, -100)
    assert np.isnan(nbxent.cross_entropy(logits, everything_ignored))
    assert nbxent.cross_entropy(logits, everything_ignored, reduction="sum") == 0


@pytest.mark.parametrize("c", [2, 3, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_sum_folded_into_two_and_few_classes_kernels(c, dtype, monkeypatch):
    """Unweighted forward sums and means of two and few classes are summed in the kernel,
    no losses written (cross_entropy_counting_sum): bit for bit sum_rows over the written
    losses, at block boundaries, with NaN rows, and with rows of an infinite max (the
    few-classes kernel's fix-up; the sum is then made the general way)."""
    import nbxent.cpu.softmax as cpu_k

    item = cpu_k._RED_BLOCK
    summing, sums = cpu_k.cross_entropy_counting_sum, []
    monkeypatch.setattr(cpu_k, "cross_entropy_counting_sum",
                        lambda *a, **k: sums.append(summing(*a, **k)) or sums[-1])
    for n in (1, 7, item - 1, item, 2 * item + 77):
        logits = make_logits((n, c), dtype)
        labels = make_labels((n,), c, ignore_frac=0.2)
        for case in ("finite", "nan", "inf"):
            x, lab = logits.copy(), labels.copy()
            if case == "nan":
                x[n // 2, 0] = np.nan
            elif case == "inf":
                x[n - 1, c - 1] = np.inf
                lab[n - 1] = 0   # the row's loss is then inf
            losses = nbxent.cross_entropy(x, lab, reduction="none")
            assert losses.dtype == (np.float64 if dtype == np.float64 else np.float32)
            counted = int((lab != -100).sum())
            for reduction, scale in (("sum", 1.0), ("mean", 1.0 / counted if counted else np.nan)):
                want = np.empty(1, losses.dtype)
                cpu_k.sum_rows(losses.reshape(1, -1), scale, want)
                del sums[:]
                got = nbxent.cross_entropy(x, lab, reduction=reduction)
                assert got.dtype == losses.dtype
                assert got.tobytes() == want[0].tobytes() or (
                    np.isnan(got) and np.isnan(want[0])), (n, case, reduction)
                pair_route = c == 2 and dtype != np.float64
                few_route = 3 <= c <= cpu_k._FEW_C
                folded = (pair_route or few_route) and not (few_route and case == "inf")
                assert len(sums) == 1 and (sums[0] is not None) == folded, (n, case, sums)
            if case == "inf":
                assert got == np.inf


def test_check_must_be_a_bool():
    with pytest.raises(TypeError, match="check must be True or False, got 'no'"):
        nbxent.cross_entropy(make_logits((3, 4), np.float32), np.zeros(3, int), check="no")
    with pytest.raises(TypeError, match="check must be True or False, got 0"):
        nbxent.nll_loss(make_logits((3, 4), np.float32), np.zeros(3, int), check=0)


@backend_params
def test_unchecked_calls_without_a_mean_make_no_pass_over_the_labels(backend, monkeypatch):
    from nbxent.softmax import top1_hits

    n, c = small(backend, (50, 12), (5, 6))
    logits = make_logits((n, c), np.float32)
    labels = make_labels((n,), c)
    args = to_backend(logits, backend), to_backend(labels, backend)
    want = {
        "ce": to_host(nbxent.cross_entropy(*args, reduction="none")),
        "sum": to_host(nbxent.cross_entropy(*args, reduction="sum")),
        "grad": to_host(nbxent.cross_entropy_with_grad(*args, reduction="sum")[1]),
        "nll": to_host(nbxent.nll_loss(*args, reduction="none")),
        "top1": to_host(top1_hits(*args)),
    }
    module = f"nbxent.{backend}.softmax"
    for name in ("label_stats", "label_total"):
        monkeypatch.setattr(f"{module}.{name}",
                            lambda *a, _n=name, **k: pytest.fail(f"unchecked call ran {_n}"))
    np.testing.assert_array_equal(
        to_host(nbxent.cross_entropy(*args, reduction="none", check=False)), want["ce"])
    np.testing.assert_array_equal(
        to_host(nbxent.cross_entropy(*args, reduction="sum", check=False)), want["sum"])
    np.testing.assert_array_equal(
        to_host(nbxent.cross_entropy_with_grad(*args, reduction="sum", check=False)[1]),
        want["grad"])
    np.testing.assert_array_equal(
        to_host(nbxent.nll_loss(*args, reduction="none", check=False)), want["nll"])
    np.testing.assert_array_equal(to_host(top1_hits(*args, check=False)), want["top1"])
    bad = labels.copy()
    bad[0] = c
    hits = to_host(top1_hits(args[0], to_backend(bad, backend), check=False))
    assert hits[0] == 0 and (hits[1:] == want["top1"][1:]).all()
