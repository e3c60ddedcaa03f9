"""Kernel-level tests of nbxent.cpu.softmax: launchers called directly on canonical 3-D views
(docs/kernels.md), compared with a float64 NumPy computation written here.

Compiled specialisations are the slow part on a 2-core machine, so dtypes and layouts are
combined rather than crossed: every launcher runs in float32, float64 and float16 (uint16
views) and in C order, Fortran order and a class-strided view somewhere below.
"""

import collections
import re

import numba
import numpy as np
import pytest
from llvmlite import binding as llvm

from nbxent._config import FASTMATH
from nbxent.cpu import _math
from nbxent.cpu import binary as KB
from nbxent.cpu import softmax as K

F16, F32, F64 = np.float16, np.float32, np.float64
TOL = {F16: 2e-3, F32: 2e-6, F64: 1e-12}   # relative, or absolute near 0
IGNORE = -100


# ----------------------------------------------------------------------------- reference


def ref_shift(x):
    """(m, s): the PyTorch logsumexp shift (row max, 0 if infinite) and sum(exp(x - m))."""
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True) if x.shape[-1] else np.full(x.shape[:-1] + (1,), -np.inf)
    m = np.where(np.isinf(m), 0.0, m)
    with np.errstate(all="ignore"):
        return m, np.exp(x - m).sum(-1, keepdims=True)


def ref_lse(x):
    """PyTorch-style logsumexp over the last axis, float64."""
    m, s = ref_shift(x)
    with np.errstate(all="ignore"):
        return (m + np.log(s))[..., 0]


def ref_probs(x):
    """softmax as exp(x - m) / s: exp(x - lse) would lose float64 accuracy at |x| ~ 1e30."""
    m, s = ref_shift(x)
    with np.errstate(all="ignore"):
        return np.exp(np.asarray(x, np.float64) - m) / s


def ref_ce(x, y, w, eps, z, ignore=IGNORE, scale=None):
    """(loss, grad) per contract for hard labels, float64 (grad None without scale)."""
    x = np.asarray(x, np.float64)
    C = x.shape[-1]
    w = np.ones(C) if w.size == 0 else np.asarray(w, np.float64)
    W = w.sum()
    m, s = ref_shift(x)
    with np.errstate(all="ignore"):
        lg = np.log(s)
        d = m - x                   # lse - x == (m - x) + log(s), accurate at |x| ~ 1e30
    lse = (m + lg)[..., 0]
    ok = y != ignore
    ys = np.where(ok, y, 0)
    dy = np.take_along_axis(d, ys[..., None], -1)[..., 0]
    wy = w[ys]
    with np.errstate(all="ignore"):
        loss = (1 - eps) * wy * (dy + lg[..., 0])
        if eps > 0:
            loss = loss + eps / C * (W * lg[..., 0] + (w * d).sum(-1))
        if z > 0:
            loss = loss + z * wy * lse**2
        loss = np.where(ok, loss, 0.0)
        if scale is None:
            return loss, None
        p = ref_probs(x)
        a = (1 - eps) * wy + eps / C * W + (2 * z * wy * lse if z > 0 else 0)
        g = p * a[..., None] - eps / C * w
        onehot = np.zeros_like(x)
        np.put_along_axis(onehot, ys[..., None], 1.0, -1)
        g = g - (1 - eps) * wy[..., None] * onehot
        g = np.where(ok[..., None], g * scale[..., None], 0.0)
    return loss, g


def ref_soft(x, t, w, eps, z, scale=None):
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    C = x.shape[-1]
    w = np.ones(C) if w.size == 0 else np.asarray(w, np.float64)
    tp = (1 - eps) * t + eps / C
    m, s = ref_shift(x)
    with np.errstate(all="ignore"):
        lse = (m + np.log(s))[..., 0]
        term = np.where(tp == 0, 0.0, w * tp * ((m - x) + np.log(s)))
        loss = term.sum(-1) + (z * lse**2 if z > 0 else 0)
        if scale is None:
            return loss, None
        p = ref_probs(x)
        k = (w * tp).sum(-1) + (2 * z * lse if z > 0 else 0)
        g = scale[..., None] * (p * k[..., None] - w * tp)
    return loss, g


# ----------------------------------------------------------------------------- helpers


def as_kernel(a):
    """Float16 arrays travel as uint16 views (contract)."""
    return a.view(np.uint16) if a.dtype == F16 else a


def compute(dtype):
    return F64 if dtype == F64 else F32


def layout(a, kind):
    """A (P, Q, C) view of the same values in memory order `kind`."""
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    # PyTorch's (N, C, d) moved to (N, d, C): class stride d
    return np.ascontiguousarray(np.moveaxis(a, 2, 1)).transpose(0, 2, 1)


def close(got, want, tol, what=""):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_g, nan_w), f"{what}: NaN pattern differs"
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: inf differs"
    fin = ~nan_w & ~inf
    err = np.abs(got[fin] - want[fin]) / np.maximum(np.abs(want[fin]), 1.0)
    assert err.size == 0 or err.max() <= tol, f"{what}: max error {err.max():.3g} > {tol}"


def logits(rng, shape, dtype, spread=3.0):
    return (rng.standard_normal(shape) * spread).astype(dtype)


# ----------------------------------------------------------------------------- _math


def test_exp_log_accuracy_and_edges():
    @numba.njit
    def run(a, e, lg):
        for i in range(a.size):
            e[i] = _math.exp32(a[i])
            lg[i] = _math.log32(abs(a[i]))

    a = np.random.default_rng(0).uniform(-105, 89, 200_000).astype(F32)
    special = F32([-np.inf, np.inf, np.nan, 0.0, -0.0, -1e30, 1e30, 88.72, -87.3, 1e-40])
    a = np.concatenate([a, special])
    e, lg = np.empty_like(a), np.empty_like(a)
    run(a, e, lg)
    with np.errstate(all="ignore"):
        re, rl = np.exp(a.astype(F64)), np.log(np.abs(a).astype(F64))
    normal = (re > 1.2e-38) & (re < 3.4e38)
    assert (np.abs(e[normal] / re[normal] - 1) < 2.5e-7).all()
    assert e[-10] == 0 and e[-9] == np.inf and np.isnan(e[-8]) and e[-7] == 1 and e[-5] == 0
    assert e[-4] == np.inf
    fin = np.isfinite(rl)
    assert (np.abs(lg[fin] - rl[fin]) <= 2.5e-7 * np.maximum(np.abs(rl[fin]), 1)).all()
    assert lg[-7] == -np.inf and lg[-9] == np.inf and np.isnan(lg[-8])


def test_exp64_log64_accuracy_and_edges():
    @numba.njit(fastmath=set(FASTMATH), error_model="numpy")
    def run(a, e, lg):   # the kernels' flags: 'reassoc' must not break the magic-number trick
        for i in range(a.size):
            e[i] = _math.exp64(a[i])
        for i in range(a.size):
            lg[i] = _math.log64(abs(a[i]))

    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(-746, 710, 300_000), rng.uniform(-1, 1, 100_000),
                        np.exp(rng.uniform(-744, 709, 100_000))])
    special = F64([-np.inf, np.inf, np.nan, 0.0, -0.0, -1e300, 1e300, 709.78, -745.2, 5e-324,
                   1e-310, 709.7827128933839])
    a = np.concatenate([a, special])
    e, lg = np.empty_like(a), np.empty_like(a)
    run(a, e, lg)
    with np.errstate(all="ignore"):
        re, rl = np.exp(a), np.log(np.abs(a))
    normal = (re > 2.3e-308) & (re < 1.7e308)
    assert (np.abs(e[normal] - re[normal]) <= 1.0 * np.spacing(re[normal])).all()
    sub = (re > 0) & (re <= 2.3e-308)
    assert (np.abs(e[sub] - re[sub]) <= 1e-12 * re[sub] + 2 * np.spacing(0.0)).all()
    assert e[-12] == 0 and e[-11] == np.inf and np.isnan(e[-10]) and e[-9] == 1 and e[-8] == 1
    assert e[-7] == 0 and e[-6] == np.inf and e[-4] == 0 and e[-1] == re[-1]
    fin = np.isfinite(rl)

    assert (np.abs(lg[fin] - rl[fin]) <= np.spacing(np.abs(rl[fin]))).all()
    assert lg[-9] == -np.inf and lg[-8] == -np.inf and lg[-11] == np.inf and np.isnan(lg[-10])
    assert lg[-3] == rl[-3] and lg[-2] == rl[-2]   # subnormal inputs


@pytest.mark.parametrize("dtype, name, lo, tol", [(F32, "exp_term32", -87.0, 2.5e-7),
                                                  (F64, "exp_term64", -708.0, 2.3e-16)])
def test_exp_term_domain_and_edges(dtype, name, lo, tol):
    """exp(x - max) as a term of a row's sum: accurate on [lo, 0], a tiny constant (never 0,
    never more than exp(lo)) below, NaN for NaN; compiled with the kernels' flags."""
    fn = getattr(_math, name)

    @numba.njit(fastmath=set(FASTMATH), error_model="numpy")
    def run(a, e):
        for i in range(a.size):
            e[i] = fn(a[i])

    rng = np.random.default_rng(2)
    a = np.concatenate([rng.uniform(lo, 0, 300_000), rng.uniform(-1, 0, 100_000)]).astype(dtype)
    special = np.array([0.0, -0.0, lo, lo - 1, -1e30, -np.inf, np.nan], dtype)
    e = np.empty(a.size + special.size, dtype)
    run(np.concatenate([a, special]), e)
    want = np.exp(a.astype(np.float64))
    assert (np.abs(e[:a.size] / want - 1) <= tol).all()
    assert e[-7] == 1 and e[-6] == 1
    tiny = e[-5:-1]
    assert (tiny > 0).all() and (tiny <= np.exp(np.float64(lo)) * (1 + tol)).all()
    assert np.isnan(e[-1])


def test_exp_nonpos32_is_exp32_on_every_float32_at_most_zero():
    """exp_nonpos32 (the few-classes gradient's exp) has exp32's bits on its whole domain:
    every float32 from -0 down to -inf, in a parallel fast-math kernel as the kernels
    compile it; NaN gives NaN. (2**31 values: about 10 s on two threads.)"""
    exp32, nonpos = _math.exp32, _math.exp_nonpos32

    @numba.njit(fastmath=set(FASTMATH), error_model="numpy", parallel=True)
    def mismatches(lo, hi):   # over the bit patterns [lo, hi), in blocks
        nblk = 256
        per = np.zeros(nblk, np.int64)
        for b in numba.prange(nblk):
            bits = np.empty(4096, np.uint32)
            f = bits.view(np.float32)
            ea, ec = np.empty(4096, np.float32), np.empty(4096, np.float32)
            ba, bc = ea.view(np.uint32), ec.view(np.uint32)
            s, e = lo + (hi - lo) * b // nblk, lo + (hi - lo) * (b + 1) // nblk
            for i0 in range(s, e, 4096):
                m = min(4096, e - i0)
                for j in range(m):
                    bits[j] = np.uint32(i0 + j)
                for j in range(m):
                    ea[j] = exp32(f[j])
                for j in range(m):
                    ec[j] = nonpos(f[j])
                for j in range(m):
                    per[b] += 0 if ba[j] == bc[j] else 1
        return per.sum()

    assert mismatches(0x80000000, 0xFF800001) == 0   # -0.0 ... -inf

    @numba.njit(fastmath=set(FASTMATH), error_model="numpy")
    def run(a):
        return np.array([nonpos(v) for v in a])

    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], np.uint32).view(np.float32)
    assert np.isnan(run(nans)).all()
    assert run(np.array([0.0, -103.97, -104.0, -1e30, -np.inf], np.float32)).tolist() == [
        1.0, np.float32(1e-45), 0.0, 0.0, 0.0]   # (1e-45: the least subnormal)


@pytest.mark.parametrize("to_f32, to_half", [("h2f", "f2h"), ("h2f_bits", "f2h_bits")])
def test_half_conversions_exhaustive(to_f32, to_half):
    """The conversions kernels use (native F16C where the CPU has it) and the bit-twiddling
    fallback for CPUs without it."""
    h2f, f2h = getattr(_math, to_f32), getattr(_math, to_half)

    @numba.njit
    def run(h, f, f2, h2):
        for i in range(h.size):
            f[i] = h2f(h[i])
        for i in range(f2.size):
            h2[i] = f2h(f2[i])

    h = np.arange(65536, dtype=np.uint16)
    want = h.view(F16).astype(F32)
    rng = np.random.default_rng(1)
    f2 = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(F32)
    with np.errstate(all="ignore"):
        mid = (want.astype(F64)[:-1] + np.diff(want.astype(F64)) / 2).astype(F32)   # ties
    f2 = np.concatenate([f2, want, mid[np.isfinite(mid)], F32([65520.0, 65519.0, 1e-8])])
    f, h2 = np.empty(65536, F32), np.empty(f2.size, np.uint16)
    run(h, f, f2, h2)
    nan = np.isnan(want)
    assert np.array_equal(f.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.isnan(f[nan]).all()
    with np.errstate(all="ignore"):
        ref = f2.astype(F16).view(np.uint16)
    nan2 = np.isnan(f2)
    assert np.array_equal(h2[~nan2], ref[~nan2])
    assert np.isnan(h2[nan2].view(F16)).all()


# ----------------------------------------------------------------------------- row launchers


@pytest.mark.parametrize("dtype,kind", [(F32, "C"), (F64, "F"), (F16, "S"), (F32, "S")])
def test_logsumexp_softmax_log_softmax(dtype, kind):
    rng = np.random.default_rng(2)
    a = logits(rng, (3, 5, 37), dtype)
    a[0, 0, :] = -np.inf
    a[0, 1, 3] = np.inf
    a[0, 2, 4] = np.nan
    a[0, 3, :5] = -np.inf
    a[0, 4, :2] = (1e30, -1e30) if dtype != F16 else (6e4, -6e4)
    x = layout(a, kind)
    ref = ref_lse(x)
    tol = TOL[dtype]
    out = np.empty((3, 5), dtype)
    K.logsumexp(as_kernel(x), as_kernel(out))
    close(out, ref.astype(dtype), tol, "logsumexp")
    with np.errstate(all="ignore"):
        wants = (ref_probs(x), x.astype(F64) - ref[..., None])
    for launcher, want in zip((K.softmax, K.log_softmax), wants):
        with np.errstate(all="ignore"):
            want = want.astype(dtype)
        o = layout(np.empty(a.shape, dtype), "F" if kind == "C" else "C")
        launcher(as_kernel(x), as_kernel(o))
        close(o, want, tol if dtype != F32 else 4e-6, launcher.__name__)


def test_hot_loops_vectorise_without_gathers():
    """The row and block loops index through at/put/load/store: with Numba's negative-index
    wraparound (a[i] in a loop) LLVM vectorised them with gathers, 2-2.5x slower on
    AVX-512 (on other targets the same code may stay scalar: no gather either way)."""
    rng = np.random.default_rng(2)
    x = logits(rng, (1, 8, 3000), F32)
    y = rng.integers(0, 3000, (1, 8))
    w = np.empty(0, F32)
    loss = np.empty((1, 8), F32)
    scale = np.broadcast_to(np.float64(1.0), (1, 8))
    K.cross_entropy(x, y, w, IGNORE, 0.1, 0.0, loss)
    K.cross_entropy(x, y, w, IGNORE, 0.0, 0.0, loss, scale, np.empty_like(x))
    K.softmax(x, np.empty_like(x))
    K.logsumexp(x, np.empty((1, 8), F32))
    import nbxent
    b = rng.standard_normal((64, 8)).astype(F32)
    nbxent.binary_cross_entropy_with_logits_with_grad(b, (b > 0).astype(F32))
    loops = (K._exp_sums, K._rescale, K._row_max, K._lse, KB._logits_grad_block)
    for f in loops:
        sigs = [s for s in f.signatures if str(s[0]) == "array(float32, 1d, C)"]
        assert sigs, f"{f.__name__} was not compiled for float32 rows"
        for sig in sigs:
            ir = f.inspect_llvm(sig)
            assert "llvm.masked.gather" not in ir, f"{f.__name__}{sig}: gathers"
            assert re.search(r"<\d+ x float>", ir), f"{f.__name__}{sig}: not vectorised"


def test_row_vectorised_kernels_ask_for_512_bit_vectors_on_avx512():
    """wide_vectors() gives the function that calls it LLVM's "prefer-vector-width"="512"
    on hosts with AVX-512 (for Intel's cores LLVM would vectorise 256 bits wide) and
    nothing elsewhere; the cross-entropy row kernel's exp loop is left to LLVM (its fused
    call ran slower at 512 bits)."""
    rng = np.random.default_rng(5)
    w = np.empty(0, F32)
    for C in (2, 300):   # the two-classes kernel; the row kernel
        x = logits(rng, (1, 64, C), F32)
        K.cross_entropy(x, rng.integers(0, C, (1, 64)), w, IGNORE, 0.0, 0.0,
                        np.empty((1, 64), F32))
    attribute = '"prefer-vector-width"="512"'
    for f, wide in ((K._pair_block, _math._HAS_AVX512), (K._exp_sums, False)):
        sigs = [s for s in f.signatures if str(s[0]) == "array(float32, 1d, C)"]
        assert sigs, f"{f.__name__} was not compiled for float32"
        for sig in sigs:
            assert (attribute in f.inspect_llvm(sig)) == wide, (f.__name__, sig)
            if wide:
                assert re.search(r"\bzmm\d", f.inspect_asm(sig)), (f.__name__, sig)


def _mnemonics(asm):
    """How often each instruction occurs in assembly text (names and addresses aside)."""
    lines = (line.split()[0] for line in asm.splitlines() if line.startswith("\t"))
    return collections.Counter(m for m in lines if not m.startswith("."))


def test_float16_rows_of_9_and_10_classes_are_loaded_whole_and_shuffled():
    """Where K._FEW_HALF_INTERLEAVED holds (Intel's AVX-512 cores), the few-classes kernel
    of 9 and 10 classes compiles float16 with interleaved loads allowed up to 16 members:
    rows loaded whole and their 16-bit values shuffled into classes (word permutes), where
    LLVM's default loaded each value on its own. The LLVM option is set back after that
    compile: float32 gets the same code compiled after it as before it. Elsewhere the
    kernels compile as Numba's dispatcher does."""
    rng = np.random.default_rng(6)
    y = rng.integers(0, 10, (1, 64))
    for dtype in (F16, F32):
        x = as_kernel(logits(rng, (1, 64, 10), dtype))
        K.cross_entropy(x, y, np.empty(0, F32), IGNORE, 0.0, 0.0, np.empty((1, 64), F32))
    kernel = K._few_loss_kernel(10)
    if not K._FEW_HALF_INTERLEAVED:
        assert "compile" not in vars(kernel)
        return
    half, single = (next(s for s in kernel.signatures if s[0].dtype == t)
                    for t in (numba.types.uint16, numba.types.float32))
    assert re.search(r"\bvperm\w*w\b", kernel.inspect_asm(half)), "no word shuffles"
    llvm.set_option("test", f"{_math._INTERLEAVE_OPTION}={_math._INTERLEAVE_DEFAULT}")
    before = K._make_few_loss_kernel(10)
    before.compile(single)
    _math.compile_interleaving(K._make_few_loss_kernel(10), 16, K._half_logits).compile(half)
    after = K._make_few_loss_kernel(10)
    after.compile(single)
    assert _mnemonics(after.inspect_asm(single)) == _mnemonics(before.inspect_asm(single))


def test_row_sums_keep_their_partial_sums_off_the_heap():
    """_exp_sums' partial sums live in a stack array: with a heap scratch LLVM could not
    rule out that it aliases the row, and every vector update of the sums went through
    memory."""
    rng = np.random.default_rng(4)
    x = logits(rng, (1, 4, 300), F32)
    K.cross_entropy(x, rng.integers(0, 300, (1, 4)), np.empty(0, F32), IGNORE, 0.0, 0.0,
                    np.empty((1, 4), F32))
    sigs = [s for s in K._exp_sums.signatures if str(s[0]) == "array(float32, 1d, C)"]
    assert sigs
    for sig in sigs:
        ir = K._exp_sums.inspect_llvm(sig)
        assert re.search(rf"alloca \[{3 * K._LANES} x float\]", ir), sig


def test_rows_read_ahead_have_the_bits_of_rows_alone():
    """The large-C kernels of cross_entropy (and of its loss with top-1 hits), softmax,
    log_softmax and logsumexp read the next row's max during this row's sums, when the
    next row is in the same work item (and, for cross_entropy, will be needed: its label
    neither ignored nor out of range). Every row's results are those of the row computed
    alone, whatever its neighbours (ignored, out of range, infinite, NaN rows among them),
    in every mode, with and without smoothing, at work-item edges and where row r + 1
    starts the next p of (P, Q, C), and in a class-strided layout (gathered rows: no
    read-ahead); top-1 hits are those of the top-1 kernel, NaN on the label's class a
    hit."""
    rng = np.random.default_rng(12)
    P, C = 3, 100
    Q = (4 * K._rows_per_chunk(10**6, C) + 7) // P   # several work items, ragged last one
    shape = (P, Q, C)
    x = logits(rng, shape, F32)
    y = rng.integers(0, C, (P, Q))
    flat_x, flat_y = x.reshape(-1, C), y.reshape(-1)
    n = P * Q
    flat_y[rng.choice(n, n // 5, replace=False)] = IGNORE
    flat_y[rng.choice(n, n // 20, replace=False)] = C + 3   # unchecked out-of-range labels
    for r in rng.choice(n, n // 20, replace=False):
        flat_x[r, :] = -np.inf
    for r in rng.choice(n, n // 20, replace=False):
        flat_x[r, rng.integers(C)] = np.inf
    for r in rng.choice(n, n // 20, replace=False):
        flat_x[r, rng.integers(C)] = np.nan
    for r in rng.choice(n, n // 50, replace=False):   # the label's class the first NaN: a hit
        if 0 <= flat_y[r] < C:
            flat_x[r, flat_y[r]] = np.nan
            flat_x[r, :flat_y[r]] = np.where(np.isnan(flat_x[r, :flat_y[r]]), F32(0),
                                             flat_x[r, :flat_y[r]])
    flat_x[1, :] = F32(1e30)
    scale = rng.uniform(0.5, 2.0, (P, Q))
    w = rng.uniform(0.5, 2.0, C).astype(F32)
    xt = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)   # class stride Q
    picks = [(p, q) for p, q in zip(rng.integers(0, P, 60), rng.integers(0, Q, 60))]
    picks += [(0, Q - 1), (1, 0), (P - 1, Q - 1)]

    def alone(p, q):
        return (slice(p, p + 1), slice(q, q + 1))

    for eps in (0.0, 0.1):
        loss, grad = np.empty((P, Q), F32), np.empty_like(x)
        K.cross_entropy(x, y, w, IGNORE, eps, 0.0, loss, scale, grad)
        fwd = np.empty((P, Q), F32)
        K.cross_entropy(x, y, w, IGNORE, eps, 0.0, fwd)
        xi = x.copy()
        inp = np.empty((P, Q), F32)
        K.cross_entropy(xi, y, w, IGNORE, eps, 0.0, inp, scale, xi)
        strided = np.empty((P, Q), F32)
        K.cross_entropy(xt, y, w, IGNORE, eps, 0.0, strided)
        scored, hits = np.empty((P, Q), F32), np.empty((P, Q), np.uint8)
        K.cross_entropy_top1(x, y, w, IGNORE, eps, 0.0, scored, hits)
        hits_alone = np.empty((P, Q), np.uint8)
        K.top1(x, y, IGNORE, hits_alone)
        assert np.array_equal(hits, hits_alone), eps
        nan_hits = np.isnan(x[np.arange(P)[:, None], np.arange(Q), np.clip(y, 0, C - 1)])
        assert hits[nan_hits & (y >= 0) & (y < C)].all(), eps
        for name, got in (("forward", fwd), ("in place", inp), ("strided", strided),
                          ("with top-1", scored)):
            assert np.array_equal(got, loss, equal_nan=True), (name, eps)
        assert np.array_equal(xi, grad, equal_nan=True), eps
        for p, q in picks:
            one, g1 = np.empty((1, 1), F32), np.empty((1, 1, C), F32)
            K.cross_entropy(x[alone(p, q)], y[alone(p, q)], w, IGNORE, eps, 0.0, one,
                            scale[alone(p, q)], g1)
            assert np.array_equal(one[0, 0], loss[p, q], equal_nan=True), (p, q, eps)
            assert np.array_equal(g1[0, 0], grad[p, q], equal_nan=True), (p, q, eps)

    for name, f, out_shape in (("softmax", K.softmax, shape),
                               ("log_softmax", K.log_softmax, shape),
                               ("logsumexp", K.logsumexp, (P, Q))):
        got, st = np.empty(out_shape, F32), np.empty(out_shape, F32)
        f(x, got)
        f(xt, st)
        assert np.array_equal(st, got, equal_nan=True), name
        if out_shape == shape:
            si = x.copy()
            f(si, si)
            assert np.array_equal(si, got, equal_nan=True), name
        for p, q in picks:
            one = np.empty((1, 1) + out_shape[2:], F32)
            f(x[alone(p, q)], one)
            assert np.array_equal(one[0, 0], got[p, q], equal_nan=True), (name, p, q)


def test_long_rows_without_read_ahead():
    """logsumexp and log_softmax rows of more than _SUMEXP_AHEAD_MAX elements are not read
    ahead: each row takes its own max (rows of very different maxima, several to a work
    item)."""
    rng = np.random.default_rng(13)
    C = K._SUMEXP_AHEAD_MAX + 5
    n = 64
    assert K._rows_per_chunk(n, C) > 1
    x = logits(rng, (1, n, C), F32)
    x[0] += F32(rng.choice([-300.0, 0.0, 200.0], n))[:, None]   # a stale max: exp overflows
    lse, ls = np.empty((1, n), F32), np.empty_like(x)
    K.logsumexp(x, lse)
    K.log_softmax(x, ls)
    close(lse, ref_lse(x), TOL[F32], "lse")
    close(ls, x.astype(F64) - ref_lse(x)[..., None], 1e-5, "log_softmax")


@pytest.mark.parametrize("C", [12, 40, 64])
def test_small_c_rows_have_the_same_bits_in_every_layout_and_block(C):
    """The small-C kernel takes every layout, and a row's loss and gradient do not depend
    on the other rows of its block (one with an infinite max there included)."""
    rng = np.random.default_rng(9)
    a = logits(rng, (1, 300, C), F32)
    y = rng.integers(0, C, (1, 300))
    w = np.empty(0, F32)
    scale = np.broadcast_to(np.float64(1.0), (1, 300))

    def run(x, yy, grad_kind="C"):
        loss = np.empty(yy.shape, F32)
        grad = layout(np.empty(x.shape, F32), grad_kind)
        K.cross_entropy(x, yy, w, IGNORE, 0.1, 0.0, loss, scale[:, :yy.shape[1]], grad)
        return loss, grad

    want_loss, want_grad = run(a, y)
    for kind in ("F", "S"):
        loss, grad = run(layout(a, kind), y)
        assert np.array_equal(loss, want_loss), kind
        assert np.array_equal(grad, want_grad), kind
        loss, grad = run(a, y, kind)   # a gradient with a class stride (its own copy out)
        assert np.array_equal(loss, want_loss), kind
        assert np.array_equal(grad, want_grad), kind
    b = a.copy()
    b[0, 7, 3] = np.inf                      # a row with an infinite max in the first block
    loss, grad = run(b, y)
    others = np.arange(300) != 7
    assert np.array_equal(loss[0, others], want_loss[0, others])
    assert np.array_equal(grad[0, others], want_grad[0, others])
    loss, grad = run(np.ascontiguousarray(a[:, 5:]), np.ascontiguousarray(y[:, 5:]))
    assert np.array_equal(loss, want_loss[:, 5:])   # other block boundaries
    assert np.array_equal(grad, want_grad[:, 5:])


def test_softmax_in_place_and_empty_rows():
    rng = np.random.default_rng(3)
    x = logits(rng, (1, 4, 300), F32)
    want = np.empty_like(x)
    K.softmax(x, want)
    K.softmax(x, x)
    assert np.array_equal(x, want)
    e = np.empty((2, 3, 0), F32)
    out = np.empty((2, 3), F32)
    K.logsumexp(e, out)
    assert (out == -np.inf).all()
    K.softmax(e, np.empty((2, 3, 0), F32))


def test_large_rows():
    rng = np.random.default_rng(4)
    x = logits(rng, (1, 2, 200_000), F32, spread=5.0) + F32(1000)
    y = np.array([[7, 199_999]])
    loss = np.empty((1, 2), F32)
    K.cross_entropy(x, y, np.empty(0, F32), IGNORE, 0.0, 0.0, loss)
    close(loss, ref_ce(x, y, np.empty(0), 0.0, 0.0)[0], 2e-6, "ce 200k")
    out = np.empty((1, 2), F32)
    K.logsumexp(x, out)
    close(out, ref_lse(x), 2e-6, "lse 200k")
    o = np.empty_like(x)
    K.log_softmax(x, o)
    close(o, x - ref_lse(x)[..., None], 2e-6, "log_softmax 200k")


# ----------------------------------------------------------------------------- cross_entropy


def _ce_case(rng, dtype, shape, ignore_frac=0.2):
    P, Q, C = shape
    a = logits(rng, shape, dtype)
    y = rng.integers(0, C, (P, Q))
    y[rng.random((P, Q)) < ignore_frac] = IGNORE
    return a, y


CE_CASES = [
    # dtype, shape, kind, label dtype, weighted, eps, z
    (F32, (2, 33, 100), "C", np.int64, False, 0.0, 0.0),
    (F32, (2, 33, 100), "S", np.int32, True, 0.1, 1e-3),
    (F32, (1, 70, 300), "F", np.int64, True, 0.0, 0.0),
    (F64, (2, 17, 50), "C", np.int64, True, 0.2, 1e-2),
    (F64, (3, 11, 9), "S", np.int64, False, 0.0, 1e-2),
    (F16, (2, 19, 64), "C", np.int64, True, 0.1, 0.0),
    (F16, (1, 23, 40), "F", np.int64, False, 0.0, 0.0),
    # small-C path (float32, unit class stride), C = 1, 2, 10, 16; more rows than a block
    (F32, (2, 150, 10), "C", np.int64, False, 0.0, 0.0),
    (F32, (1, 201, 2), "C", np.int64, True, 0.1, 1e-3),
    (F32, (3, 7, 1), "C", np.int64, False, 0.0, 0.0),
    (F32, (1, 130, 16), "F", np.int64, True, 0.05, 0.0),
    # two-class path (C = 2, no smoothing, no z-loss): contiguous over several work items
    # and a partial one, strided, Fortran-ordered, every dtype
    (F32, (1, 2 * K._PAIR_ROWS + 37, 2), "C", np.int64, True, 0.0, 0.0),
    (F64, (2, 37, 2), "S", np.int32, False, 0.0, 0.0),
    (F16, (1, 45, 2), "F", np.int64, True, 0.0, 0.0),
    (F32, (3, 50, 2), "F", np.int64, False, 0.0, 0.0),
    # few-classes path (compiled per C, no smoothing, no z-loss, rows one run; see
    # K._takes_few): 3 <= C <= K._FEW_C, forward, fused and in place (the fused loss must
    # have the forward's bits); several work items and a partial one, every dtype
    (F32, (1, 2 * K._FEW_SUB * K._FEW_ITEM + 5, 3), "C", np.int64, True, 0.0, 0.0),
    (F64, (2, 40, 7), "C", np.int32, True, 0.0, 0.0),
    (F16, (2, 30, 5), "C", np.int64, False, 0.0, 0.0),
    (F32, (1, 2 * K._FEW_SUB * K._FEW_ITEM + 5, 8), "C", np.int64, True, 0.0, 0.0),
    (F16, (2, 30, 8), "C", np.int64, False, 0.0, 0.0),
    (F64, (2, 40, 10), "C", np.int64, True, 0.0, 0.0),
    # C = 9, 10 where the forward and the gradient may take different kernels (Zen 4: the
    # few-classes forward, the small-C gradient): the loss keeps its bits
    (F32, (1, 70, 9), "C", np.int64, True, 0.0, 0.0),
    (F16, (2, 30, 10), "C", np.int64, False, 0.0, 0.0),
]


@pytest.mark.parametrize("dtype,shape,kind,ldt,weighted,eps,z", CE_CASES)
def test_cross_entropy(dtype, shape, kind, ldt, weighted, eps, z):
    rng = np.random.default_rng(5)
    a, y = _ce_case(rng, dtype, shape)
    y = y.astype(ldt)
    cd = compute(dtype)
    C = shape[2]
    w = rng.uniform(0.5, 2.0, C).astype(cd) if weighted else np.empty(0, cd)
    x = layout(a, kind)
    tol = TOL[dtype]
    scale = rng.uniform(0.5, 2.0, shape[:2])
    want_loss, want_grad = ref_ce(x, y, w, eps, z, scale=scale)

    loss = np.empty(shape[:2], cd)
    K.cross_entropy(as_kernel(x), y, w, IGNORE, eps, z, loss)
    close(loss, want_loss, tol, "loss")

    loss2 = np.empty(shape[:2], cd)
    grad = layout(np.empty(shape, dtype), kind)
    K.cross_entropy(as_kernel(x), y, w, IGNORE, eps, z, loss2, scale, as_kernel(grad))
    assert np.array_equal(loss2, loss)
    close(grad, want_grad.astype(dtype), tol if dtype != F32 else 4e-6, "grad")

    xi = x.copy(order="K")
    loss3 = np.empty(shape[:2], cd)
    K.cross_entropy(as_kernel(xi), y, w, IGNORE, eps, z, loss3, scale, as_kernel(xi))
    assert np.array_equal(loss3, loss)
    assert np.array_equal(xi, grad), "in-place gradient differs from out-of-place"


@pytest.mark.parametrize("C", [2, 8, 10, 100])
def test_cross_entropy_special_rows(C):
    rng = np.random.default_rng(6)
    a = logits(rng, (1, 8, C), F32)
    y = rng.integers(0, C, (1, 8))
    a[0, 0, :] = -np.inf                                   # all -inf
    a[0, 1, (y[0, 1] + 1) % C] = -np.inf                   # -inf at a non-target class
    a[0, 2, 0] = np.nan                                    # NaN row
    a[0, 3, 0] = np.inf                                    # +inf
    a[0, 4, :] = F32(1e30)
    a[0, 4, y[0, 4]] = F32(-1e30)
    a[0, 5, :] = F32(-1e30)
    y[0, 6] = IGNORE
    a[0, 6, 0] = np.nan                                    # ignored NaN row: 0, zero grad
    y[0, 7] = IGNORE
    a[0, 7, 1] = np.inf                                    # ignored +inf row: the same
    scale = np.broadcast_to(np.float64(0.5), (1, 8))
    w = np.empty(0, F32)
    want_loss, want_grad = ref_ce(a, y, w, 0.0, 0.0, scale=scale)
    loss = np.empty((1, 8), F32)
    grad = np.empty_like(a)
    K.cross_entropy(a, y, w, IGNORE, 0.0, 0.0, loss, scale, grad)
    close(loss, want_loss, 2e-6, "loss")
    close(grad, want_grad, 4e-6, "grad")
    assert np.isnan(loss[0, 2]) and np.isnan(grad[0, 2]).all()
    assert loss[0, 6] == 0 and (grad[0, 6] == 0).all()
    assert loss[0, 7] == 0 and (grad[0, 7] == 0).all()
    assert np.isfinite(loss[0, 1])
    forward = np.empty((1, 8), F32)   # another kernel than the fused call's for some C
    K.cross_entropy(a, y, w, IGNORE, 0.0, 0.0, forward)
    assert np.array_equal(forward, loss, equal_nan=True)


def test_few_classes_kernels_take_the_calls_they_are_fastest_at(monkeypatch):
    """Forward calls of 3..K._FEW_C classes, and calls with a gradient of 3..K._FEW_GRAD_C,
    go to the few-classes kernels; C past those limits goes to the small-C kernel."""
    taken = []
    few = K._few_classes
    monkeypatch.setattr(K, "_few_classes", lambda *args: taken.append(args[3]) or few(*args))
    rng = np.random.default_rng(7)
    w = np.empty(0, F32)
    calls = [(3, False), (K._FEW_C, False), (K._FEW_C + 1, False),
             (3, True), (K._FEW_GRAD_C, True), (K._FEW_GRAD_C + 1, True)]
    for C, with_grad in calls:
        x = logits(rng, (1, 40, C), F32)
        y = rng.integers(0, C, (1, 40))
        loss = np.empty((1, 40), F32)
        grad = (np.broadcast_to(np.float64(1.0), (1, 40)), np.empty_like(x)) if with_grad else ()
        K.cross_entropy(x, y, w, IGNORE, 0.0, 0.0, loss, *grad)
        close(loss, ref_ce(x, y, w, 0.0, 0.0)[0], 2e-6, f"C={C}")
    assert taken == [3, K._FEW_C, 3, K._FEW_GRAD_C]


@pytest.mark.parametrize("dtype", [F32, F64, F16])
def test_few_classes_gradient_blocks_with_and_without_flagged_rows(dtype):
    """The few-classes gradient: label-coding blocks without a row of infinite max take the
    element-wise pass (_few_grad_flat), blocks with one the row-by-row pass that leaves
    those rows to the fix-up kernel. Ignored rows get a zero gradient and unchecked
    out-of-range labels a NaN one in both (rows of infinite max among them); every row's
    loss and gradient are those of the row alone (the two passes give the same bits), in
    place and not, and match the float64 reference."""
    rng = np.random.default_rng(21)
    C, sub = 5, K._FEW_SUB
    n = 3 * sub + 77
    a = logits(rng, (1, n, C), dtype)
    y = rng.integers(0, C, (1, n))
    y[0, rng.choice(n, n // 10, replace=False)] = IGNORE
    y[0, rng.choice(n, n // 50, replace=False)] = C + 2     # unchecked, out of range
    flagged = sub + rng.choice(sub, 6, replace=False)       # all in the second block
    a[0, flagged[:3], :] = -np.inf
    a[0, flagged[3:], 1] = np.inf
    y[0, flagged[:2]] = IGNORE, C + 2   # infinite and ignored or out of range: 0 and NaN too
    y[0, flagged[3:5]] = IGNORE, C + 2
    scale = rng.uniform(0.5, 2.0, (1, n))
    w = rng.uniform(0.5, 2.0, C).astype(compute(dtype))
    x = as_kernel(a)
    loss = np.empty((1, n), compute(dtype))
    grad = np.empty_like(a)
    K.cross_entropy(x, y, w, IGNORE, 0.0, 0.0, loss, scale, as_kernel(grad))
    xi = a.copy()
    loss_in = np.empty_like(loss)
    K.cross_entropy(as_kernel(xi), y, w, IGNORE, 0.0, 0.0, loss_in, scale, as_kernel(xi))
    assert np.array_equal(loss_in, loss, equal_nan=True)
    assert np.array_equal(xi, grad, equal_nan=True), "in-place gradient differs"

    bad = y[0] >= C
    ignored = y[0] == IGNORE
    assert np.isnan(loss[0, bad]).all() and np.isnan(grad[0, bad]).all()
    assert (loss[0, ignored] == 0).all() and (grad[0, ignored] == 0).all()
    good = ~bad
    want_loss, want_grad = ref_ce(a[:, good], y[:, good], w, 0.0, 0.0, scale=scale[:, good])
    tol = TOL[dtype]
    close(loss[:, good], want_loss, tol, "loss")
    close(grad[:, good], want_grad.astype(dtype), tol if dtype != F32 else 4e-6, "grad")

    clean = [r for r in rng.choice(n, 40, replace=False) if not sub <= r < 2 * sub]
    for r in [*flagged, *clean, sub - 1, sub, n - 1]:
        one, g1 = np.empty((1, 1), compute(dtype)), np.empty((1, 1, C), dtype)
        K.cross_entropy(as_kernel(a[:, r:r + 1]), y[:, r:r + 1], w, IGNORE, 0.0, 0.0, one,
                        scale[:, r:r + 1], as_kernel(g1))
        assert np.array_equal(one[0, 0], loss[0, r], equal_nan=True), r
        assert np.array_equal(g1[0, 0], grad[0, r], equal_nan=True), r


def test_cross_entropy_all_ignored():
    for C in (4, 100):
        x = np.full((1, 5, C), np.nan, F32)
        y = np.full((1, 5), IGNORE)
        loss = np.full((1, 5), 7.0, F32)
        grad = np.full_like(x, 7.0)
        K.cross_entropy(x, y, np.empty(0, F32), IGNORE, 0.1, 0.1, loss,
                        np.broadcast_to(np.float64(1.0), (1, 5)), grad)
        assert (loss == 0).all() and (grad == 0).all()
        assert K.label_stats(y, C, IGNORE, np.empty(0, F32)) == (-1, 0.0)


@pytest.mark.parametrize("dtype,kind,weighted", [(F32, "C", False), (F64, "S", True),
                                                 (F16, "F", True)])
def test_cross_entropy_soft(dtype, kind, weighted):
    rng = np.random.default_rng(7)
    shape = (2, 9, 40)
    a = logits(rng, shape, dtype)
    t = rng.random(shape)
    t[t < 0.3] = 0
    t = (t / t.sum(-1, keepdims=True)).astype(dtype)
    a[0, 0, 3] = -np.inf
    t[0, 0, 3] = 0                                         # t' = 0 at a -inf logit: no NaN
    cd = compute(dtype)
    w = rng.uniform(0.5, 2.0, 40).astype(cd) if weighted else np.empty(0, cd)
    x, tt = layout(a, kind), layout(t, kind)
    scale = rng.uniform(0.5, 2.0, shape[:2])
    tol = TOL[dtype]
    for eps, z in ((0.0, 0.0), (0.1, 1e-3)):
        if eps:
            x[0, 0, 3] = -5.0                                  # t' > 0 everywhere now
        want_loss, want_grad = ref_soft(x, tt, w, eps, z, scale=scale)
        loss = np.empty(shape[:2], cd)
        K.cross_entropy_soft(as_kernel(x), as_kernel(tt), w, eps, z, loss)
        close(loss, want_loss, tol, "soft loss")
        grad = np.empty(shape, dtype)
        K.cross_entropy_soft(as_kernel(x), as_kernel(tt), w, eps, z, loss, scale,
                             as_kernel(grad))
        close(grad, want_grad.astype(dtype), tol if dtype != F32 else 4e-6, "soft grad")
        xi = x.copy(order="K")
        K.cross_entropy_soft(as_kernel(xi), as_kernel(tt), w, eps, z, loss, scale,
                             as_kernel(xi))
        assert np.array_equal(xi, grad)


# ----------------------------------------------------------------------------- nll, stats, sums


@pytest.mark.parametrize("dtype,kind,ldt", [(F32, "C", np.int64), (F64, "F", np.int32),
                                            (F16, "S", np.int64)])
def test_nll(dtype, kind, ldt):
    rng = np.random.default_rng(8)
    a, y = _ce_case(rng, dtype, (2, 13, 20))
    y = y.astype(ldt)
    x = layout(a, kind)
    cd = compute(dtype)
    w = rng.uniform(0.5, 2.0, 20).astype(cd)
    ys = np.where(y == IGNORE, 0, y)
    xy = np.take_along_axis(x.astype(F64), ys[..., None], -1)[..., 0]
    for weight, wy in ((np.empty(0, cd), 1.0), (w, w.astype(F64)[ys])):
        want = np.where(y == IGNORE, 0.0, -wy * xy)
        loss = np.empty((2, 13), cd)
        K.nll(as_kernel(x), y, weight, IGNORE, loss)
        close(loss, want, TOL[dtype] if dtype != F16 else 1e-6, "nll")


def test_label_stats():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 50, (3, 20_000))
    y[rng.random(y.shape) < 0.1] = IGNORE
    w = rng.uniform(0.5, 2.0, 50).astype(F32)
    assert K.label_stats(y, 50, IGNORE, np.empty(0, F32)) == (-1, float((y != IGNORE).sum()))
    first, total = K.label_stats(y.astype(np.int32).T.copy().T, 50, IGNORE, w)
    ys = y[y != IGNORE]
    assert first == -1 and abs(total - w.astype(F64)[ys].sum()) < 1e-9 * total
    for bad, pos in ((50, (2, 19_999)), (-1, (1, 5)), (10**12, (0, 0))):
        yb = y.copy()
        yb[pos] = bad
        yb[2, 3] = 77
        first, _ = K.label_stats(yb, 50, IGNORE, w)
        r = min(pos[0] * 20_000 + pos[1], 2 * 20_000 + 3)
        assert first == r
    assert K.label_stats(np.empty((0, 4), np.int64), 3, IGNORE, w) == (-1, 0.0)


def test_sum_rows():
    rng = np.random.default_rng(10)
    v = rng.standard_normal((3, 50_001)).astype(F32)
    out = np.empty(1, F32)
    K.sum_rows(v, 0.5, out)
    assert abs(out[0] - 0.5 * v.astype(F64).sum()) <= 1e-6 * np.abs(v).sum()
    v64 = rng.standard_normal((5, 3001))
    o64 = np.empty(1, F64)
    K.sum_rows(np.asfortranarray(v64), 1.0, o64)
    assert abs(o64[0] - v64.sum()) < 1e-10
    K.sum_rows(np.empty((0, 3), F64), np.nan, o64)
    assert np.isnan(o64[0])


def test_bit_identical_across_thread_counts():
    rng = np.random.default_rng(11)
    v = rng.standard_normal((2, 300_000))
    y = rng.integers(0, 1000, (1, 150_000))
    w = rng.uniform(0.5, 2.0, 1000).astype(F32)
    x = logits(rng, (1, 300, 1000), F32)
    xs = logits(rng, (1, 3000, 10), F32)
    ys, yx = y[:, :3000] % 10, y[:, :300]
    sc = np.broadcast_to(np.float64(0.25), (1, 3000))

    def run():
        o = np.empty(1, F64)
        K.sum_rows(v, 1.0, o)
        loss, g = np.empty((1, 300), F32), np.empty_like(x)
        K.cross_entropy(x, yx, w, IGNORE, 0.1, 0.0, loss, sc[:, :300], g)
        ls_, gs_ = np.empty((1, 3000), F32), np.empty_like(xs)
        K.cross_entropy(xs, ys, w[:10], IGNORE, 0.0, 0.0, ls_, sc, gs_)
        lse = np.empty((1, 300), F32)
        K.logsumexp(x, lse)
        return o, K.label_stats(y, 1000, IGNORE, w), loss, g, ls_, gs_, lse

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run()
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, two):
        if isinstance(a, tuple):
            assert a == b
        else:
            assert np.array_equal(a, b)


def test_kernel_views_keep_memory_strides_and_writeability():
    """CpuBackend.view (a buffer view for C-ordered arrays, as_strided otherwise) gives
    exactly the asked shape and strides over the same memory, read-only stays read-only,
    and broadcasts (stride 0 over a smaller array) and float16 bits work."""
    from nbxent._dispatch import CpuBackend

    be = CpuBackend()
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    ro = a.copy()
    ro.flags.writeable = False
    cases = [(a, (1, 4, 6), (0, 24, 4)), (a, (1, 24), (96, 4)), (a[:, ::2], (1, 4, 3), (0, 24, 8)),
             (ro, (1, 4, 6), (0, 24, 4)), (np.float32([5.0]), (3, 4), (0, 0)),
             (a.T, (1, 6, 4), (0, 4, 24)), (a.astype(np.float16), (2, 2, 6), (24, 12, 2))]
    for arr, shape, strides in cases:
        v = be.view(arr, shape, strides)
        assert v.shape == shape and v.strides == strides, (arr.shape, shape)
        assert v.__array_interface__["data"][0] == arr.__array_interface__["data"][0]
        assert v.flags.writeable == arr.flags.writeable
        want = np.lib.stride_tricks.as_strided(arr, shape, strides)
        got = v.view(np.float16) if arr.dtype == np.float16 else v
        assert np.array_equal(got, want)


def test_jitted_closures_close_over_plain_values_only():
    """Numba's disk cache keys a closure by its cell values, pickled: a jitted function or
    an intrinsic there pickles differently in every process, so NBXENT_CACHE=1 missed and
    the cache index grew by one entry per process (the pairwise folds, once). Closures
    hold bools, numbers and strings only."""
    from numba.core.registry import CPUDispatcher

    from nbxent.cpu import divergences as KD

    plain = (bool, int, float, str, type(None))
    for module in (K, KB, KD, _math):
        for name, f in [*vars(module).items(), *getattr(module, "_FEW_KERNELS", {}).items()]:
            if isinstance(f, CPUDispatcher) and f.py_func.__closure__:
                cells = [c.cell_contents for c in f.py_func.__closure__]
                assert all(isinstance(v, plain) for v in cells), (module.__name__, name, cells)


def test_block_functions_compile_once_per_layout():
    """A parallel loop's index is typed signed in the kernel and unsigned in its outlined
    body: passed on as is, each block function compiled twice (0.5-0.9 s of a first call).
    The kernels pass np.int64(k), so no block function has an unsigned signature."""
    rng = np.random.default_rng(8)
    y = rng.integers(0, 5, (2, 300))
    K.label_stats(y, 5, IGNORE, np.empty(0, F32))
    K.sum_rows(np.ones((2, 300), F32), 1.0, np.empty(1, np.float64))
    for f in (K._block_start, K._label_block, K._sum_block):
        assert f.signatures, f"{f.__name__} was not compiled"
        for sig in f.signatures:
            assert not any(isinstance(t, numba.types.Integer) and not t.signed for t in sig), \
                (f.__name__, sig)
