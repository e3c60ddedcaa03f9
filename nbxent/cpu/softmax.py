"""CPU kernels of the softmax family: the launchers of docs/kernels.md.

Layout. Every array reaches the compiled kernels as a *flat* 1-D buffer (`_flat`: a
writeable alias over the memory the view spans) plus a tuple `(offset, stride, ...)` in
elements, so one compiled specialisation per dtype serves every layout (C order, Fortran
order, PyTorch's `(N, C, d)` moved to `(N, d, C)` with class stride `d`, read-only arrays,
broadcasts). Row `r = p*Q + q` starts at `off + p*s0 + q*s1`. A row with class stride 1 is
handed to the row helpers as a borrowed contiguous view (`crow`, vectorised); other rows
are gathered into contiguous scratch and their results scattered back, so the row helpers
compile for one layout only. Kernels `borrow` their array arguments (views without a
reference count): per-row helper calls then cost no atomic reference counting on cache
lines shared between threads (which made 2 threads slower than 1). Arrays are indexed
through `at`/`put` (`load`/`store` for logits-dtype buffers), never `a[i]`: Numba's
negative-index wraparound made LLVM vectorise the row loops with gathers (2-2.5x slower on
AVX-512).

Per row (large-C path): pass 1 the max m (replaced by 0 when infinite, as PyTorch does);
pass 2 sum(exp(x - m)) in float32 vector partial sums over blocks of `_BLOCK` elements,
blocks accumulated in float64 (cross-entropy and softmax: `_exp_sums`, in an order fixed
by its source, keeping each exp(x - m) for pass 3); lse = m + log(sum) in float64; pass 3
(softmax, log_softmax, gradients) writes `exp(x - m) * k` or `(x - m) - log(sum)`.
Cross-entropy (and `score`'s cross-entropy with top-1), softmax, and logsumexp and
log_softmax on rows of up to `_SUMEXP_AHEAD_MAX` read the next row's max in pass 2 (and
prefetch the rows after), so that the reads from memory overlap the exp arithmetic.
exp(x - m) rather than exp(x - lse) keeps float32 accuracy when |lse| is large. A NaN in a
row reaches the sum (exp(NaN) = NaN) and so every result of that row.

Small C (C <= `_SMALL_C`, any class stride; cross_entropy only): blocks of
`_SMALL_R` rows are copied class-major into scratch and every step (max, exp sums, log,
loss, gradient) is vectorised across rows; C stays a runtime value (one compilation).
Without label smoothing and z-loss two cases go faster: C == 2 (`_pair_kernel`: the loss
is softplus(x_other - x_y), rows read in place) and, for rows that are one contiguous run,
3 <= C <= `_FEW_C` (`_FEW_GRAD_C` with a gradient; `_few_loss_kernel`: compiled once per
C, rows read in place with C a compile-time constant, see `_takes_few`).

Determinism: per-row results depend only on the row (and which of those kernels its call
takes, by C, options and the CPU's vector width: never by the number of rows); `sum_rows`
and `label_stats` reduce fixed blocks of `_RED_BLOCK` rows in parallel and combine the
partials in block order (the two- and few-classes kernels, summing their own losses for a
forward "sum" or "mean", do the same with the same loop: the same bits). Options (weight,
smoothing, z_loss, gradient or not, in place or not) are runtime values branched on
outside the inner loops: each kernel compiles once per dtype (and label dtype), the
few-classes kernels once per C too.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from nbxent._config import hjit, jit, pjit
from nbxent.cpu._math import STRICT, borrow as _b
from nbxent.cpu.binary import softplus_parts
from nbxent.cpu._math import (alive, at, cempty, cexp, cexp_nonpos, cexp_term, clog,
                              compile_interleaving, compute_or, crow, cval, diff_add, fmax,
                              host_cpu, host_has, is_half, load, prefetch, put, srow,
                              stack_scratch, store, sub2, wide_vectors)

_BLOCK = 1024        # elements per float32 partial sum within a row
_LANES = 32          # partial sums per block in _exp_sums (a fixed order of summation)
_AHEAD = 1024        # elements ahead of the next row's read that _exp_sums prefetches
_SUMEXP_AHEAD_MAX = 32768   # the longest rows that logsumexp/log_softmax read ahead
_CHUNK_MIN_ROWS = 32   # rows per parallel work item, at least (see _rows_per_chunk)
_RED_BLOCK = 16384   # rows per partial of sum_rows/label_stats (fixed: thread-count free)
# cross_entropy with C <= _SMALL_C, any layout, is vectorised across rows. On Zen 5 it beat
# the per-row kernel 1.5-6x forward from 17 to 64 classes (10_000_000 elements, 2 threads:
# C = 17 4.6 against 28.8 ms, C = 64 5.2-5.5 against 7.9-12.2) and the fused call 1.1-4x;
# from 96 on the per-row kernel's fused call wins, from 128 its forward too.
_SMALL_C = 64
_SMALL_R = 256       # rows per transposed block on the small-C path
_SMALL_CHUNK = 64    # blocks per parallel work item on the small-C path

_FWD, _GRAD, _INPLACE = 0, 1, 2       # cross-entropy modes
_TOTAL = 3   # two and few classes, P = 1: the forward with its losses summed, not written
_LSE, _SOFTMAX, _LOG_SOFTMAX = 0, 1, 2  # _rows_kernel modes


# ============================================================================ host side


class _Memory:
    __slots__ = ("__array_interface__", "owner")


def _flat(a: np.ndarray):
    """(buf, layout): `buf` a writeable 1-D alias of the memory `a` spans, `layout` the
    tuple (offset, *strides) locating a's elements in `buf`, in elements."""
    itemsize = a.itemsize
    strides = a.strides
    if a.size == 0:
        return np.empty(0, a.dtype), (0,) + (0,) * a.ndim
    if any(s % itemsize for s in strides):
        raise ValueError("nbxent kernels need strides that are multiples of the item size")
    el = tuple(s // itemsize for s in strides)
    if a.flags.writeable and a.flags.c_contiguous:   # the common case, without the span
        return a.reshape(-1), (0,) + el
    lo = sum((n - 1) * s for n, s in zip(a.shape, el) if s < 0)
    hi = sum((n - 1) * s for n, s in zip(a.shape, el) if s > 0)
    span = hi - lo + 1
    mem = _Memory()
    mem.owner = a
    mem.__array_interface__ = {
        "shape": (span,), "typestr": a.dtype.str, "version": 3, "strides": None,
        "data": (a.__array_interface__["data"][0] + lo * itemsize, False),
    }
    return np.asarray(mem), (-lo,) + el


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a and b are the same elements (the in-place gradient case)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def _overlaps(out: np.ndarray, inputs) -> bool:
    return any(i is not None and i.size and out.size and np.may_share_memory(out, i)
               for i in inputs)


# ============================================================================ row helpers
# `row` is a 1-D view of one row (contiguous or strided); values are read with `load`
# (float16 bits -> float32) and computed in the compute dtype.


@hjit()
def _next_pq(p, q, Q):
    """(p, q) of the row after row p*Q + q (rows in C order over (P, Q))."""
    return (p + 1, 0) if q + 1 == Q else (p, q + 1)


@hjit()
def _row_max(row):
    m = cval(row, -np.inf)
    for c in range(row.size):
        m = fmax(m, load(row, c))
    return m


@hjit()
def _shift_of(row, mx):
    """The shift of PyTorch's logsumexp for a row whose max is mx: mx, or 0 when infinite."""
    return cval(row, 0.0) if (mx == np.inf or mx == -np.inf) else mx


@hjit()
def _shift(row):
    """The shift of PyTorch's logsumexp for `row` (see _shift_of)."""
    return _shift_of(row, _row_max(row))


@hjit(inline="always")
def _sumexp_ahead(row, m, nxt):
    """(sum(exp(row - m)) in float64, max of `nxt`): compute-dtype partial sums over blocks
    of _BLOCK; `nxt`, a row of the same size, is read in the same loop for its max and
    prefetched _AHEAD elements ahead, as in _exp_sums (the next row, or `row` itself).

    m is _shift(row): other than 0, it is the row's finite max (or NaN), every x - m is
    <= 0 or NaN and the sum has a term 1, the domain of the cheaper cexp_term. m == 0
    (an infinite max, or a max of 0) takes the general exp."""
    n = row.size
    total = 0.0
    mx = cval(row, -np.inf)
    for b0 in range(0, n, _BLOCK):
        acc = cval(row, 0.0)
        if m != 0.0:
            b1 = min(b0 + _BLOCK, n)
            for c0 in range(b0, b1, 64):
                for k in range(4):   # a line each
                    prefetch(nxt, c0 + _AHEAD + 16 * k)
                for c in range(c0, min(c0 + 64, b1)):
                    acc += cexp_term(load(row, c) - m)
                    mx = fmax(mx, load(nxt, c))
        else:
            for c in range(b0, min(b0 + _BLOCK, n)):
                acc += cexp(load(row, c) - m)
                mx = fmax(mx, load(nxt, c))
        total += acc
    return total, mx


@hjit()
def _sumexp(row, m):
    """sum(exp(row - m)), as _sumexp_ahead without a next row."""
    total, _ = _sumexp_ahead(row, m, row)
    return total


@hjit()
def _lse(row, mx, nxt):
    """(logsumexp of `row`, whose max is mx; max of `nxt`): see _sumexp_ahead."""
    m = _shift_of(row, mx)
    total, mx_next = _sumexp_ahead(row, m, nxt)
    return m + math.log(total), mx_next


@hjit()
def _softmax_row(row, mx, nxt, orow, scratch):
    """softmax of `row` (max mx) into `orow` (which may be `row` itself), returning the
    max of `nxt` (see _exp_sums): the sum pass leaves exp(x - m) in orow (float32/float64
    out of place) or in `scratch` (a row of the compute dtype: in place, float16), the
    second pass scales it. One exp per element, and the same bits in place and out of
    place (the same sum loop)."""
    ebuf = scratch if orow.ctypes.data == row.ctypes.data else compute_or(orow, scratch)
    _, total, _, mx_next = _exp_sums(row, mx, nxt, ebuf, False, ebuf, False)   # (no w)
    _rescale(ebuf, orow, 1.0 / total, 0.0, ebuf)
    return mx_next


@hjit()
def _log_softmax_row(row, mx, nxt, orow):
    """log_softmax of `row` (max mx) into `orow`, returning the max of `nxt` (see
    _sumexp_ahead)."""
    m = _shift_of(row, mx)
    total, mx_next = _sumexp_ahead(row, m, nxt)
    lg = cval(row, math.log(total))
    for c in range(row.size):
        store(orow, c, sub2(load(row, c), m, lg))
    return mx_next


@hjit()
def _sumexp_soft(row, prow, m, w, a, b):
    """(sum exp(row - m), T = sum w t', U = sum w t' (m - row)) in float64, with
    t' = a*t + b; a class with t' == 0 adds 0 to U even where its logit is -inf."""
    n = row.size
    total = 0.0
    tt = 0.0
    uu = 0.0
    zero = cval(row, 0.0)
    for b0 in range(0, n, _BLOCK):
        acc = zero
        acct = zero
        accu = zero
        for c in range(b0, min(b0 + _BLOCK, n)):
            v = load(row, c)
            t = a * load(prow, c) + b
            wt = at(w, c) * t
            acc += cexp(v - m)
            acct += wt
            accu += zero if t == zero else wt * (m - v)
        total += acc
        tt += acct
        uu += accu
    return total, tt, uu


def _make_soft_grad_writer(inplace):
    """g_c = exp(x_c - m) * k1 - s w_c (a t_c + b), into `grow` or over `row` (`inplace`)."""

    @hjit()
    def write(row, grow, prow, m, k1, s, a, b, w):
        dst = row if inplace else grow
        k1 = cval(row, k1)
        sa = cval(row, s * a)
        sb = cval(row, s * b)
        for c in range(row.size):
            store(dst, c, cexp(load(row, c) - m) * k1 - at(w, c) * (sa * load(prow, c) + sb))

    return write


_lanes = stack_scratch(3 * _LANES)   # _exp_sums' partial sums (A, D) and maxima (M)


@hjit(fastmath=set(STRICT))
def _exp_sums(row, mx, nxt, w, with_d, ebuf, blockwise):
    """(m, sum(exp(row - m)), sum(w * (m - row)) when `with_d`, else 0, max of `nxt`) of
    one row whose max (_row_max) is mx: m its shift (as _shift), the sums in float64.
    Leaves each e_c = exp(x_c - m) in `ebuf` (compute dtype) at c, unless `blockwise` (the
    forward, which needs no e_c): ebuf is then a scratch of _BLOCK, written at c % _BLOCK
    by the rare paths only.

    `nxt`, a row of the same size, is read in the same loop for its max: the next row,
    whose reads from memory then overlap this row's exps (the row at hand, in L1, is its
    own `nxt` when there is no next row to read), and `nxt` is prefetched _AHEAD elements
    ahead of that read (past its end: the row after, which the next call reads). Without
    them, a row's max pass waited on memory while the arithmetic stood idle. The max is
    exact in any order, so it leaves the sums' bits alone.

    The order of the sums is this source's, whatever LLVM makes of it: compiled without
    'reassoc', each block of _BLOCK elements is summed in _LANES partial sums (lane l takes
    elements l, l + _LANES, ... in turn; vectorised across lanes), the lanes are added
    pairwise in a fixed order (_fold), and the blocks in order in float64. So a row's
    loss has the same bits in cross_entropy's forward, fused and in-place calls, in
    `score`, and softmax in place and out of place, whatever LLVM inlines, unswitches or
    vectorises in each caller (with reassociated sums, a forward and a fused call
    differed in the last bit on AVX-512).

    Rows with a finite max use cexp_term: e_c below its floor (exp(-87) float32,
    exp(-708) float64) hold the floor, and `_rescale` makes them 0. Rows with an infinite
    max (m = 0, PyTorch's shift) take the general exp in one sequential loop (rare)."""
    n = row.size
    zero = cval(row, 0.0)
    total = 0.0
    sd = 0.0
    if mx == np.inf or mx == -np.inf:
        for c in range(n):
            v = load(row, c)
            e = cexp(v)
            put(ebuf, c % _BLOCK if blockwise else c, e)
            total += float(e)
            if with_d:
                sd += float(at(w, c)) * (0.0 - float(v))
        return zero, total, sd, _row_max(nxt)
    m = mx
    lanes = _lanes(row)
    A = crow(lanes, 0, _LANES)
    D = crow(lanes, _LANES, _LANES)
    M = crow(lanes, 2 * _LANES, _LANES)
    for l in range(_LANES):
        put(M, l, cval(row, -np.inf))
    for b0 in range(0, n, _BLOCK):
        nb = min(_BLOCK, n - b0)
        nv = nb - nb % _LANES
        o = 0 if blockwise else b0
        for l in range(_LANES):
            put(A, l, zero)
            put(D, l, zero)
        if with_d:
            for i in range(0, nv, _LANES):
                for l in range(_LANES):
                    v = load(row, b0 + i + l)
                    e = cexp_term(v - m)
                    put(ebuf, o + i + l, e)
                    put(A, l, at(A, l) + e)
                    put(D, l, at(D, l) + at(w, b0 + i + l) * (m - v))
                    put(M, l, fmax(at(M, l), load(nxt, b0 + i + l)))
                prefetch(nxt, b0 + i + _AHEAD)
                prefetch(nxt, b0 + i + _AHEAD + 16)
            for i in range(nv, nb):
                v = load(row, b0 + i)
                e = cexp_term(v - m)
                put(ebuf, o + i, e)
                put(A, i - nv, at(A, i - nv) + e)
                put(D, i - nv, at(D, i - nv) + at(w, b0 + i) * (m - v))
        else:
            if blockwise:
                for i in range(0, nv, _LANES):
                    for l in range(_LANES):
                        put(A, l, at(A, l) + cexp_term(load(row, b0 + i + l) - m))
                        put(M, l, fmax(at(M, l), load(nxt, b0 + i + l)))
                    prefetch(nxt, b0 + i + _AHEAD)
                    prefetch(nxt, b0 + i + _AHEAD + 16)
            else:
                for i in range(0, nv, _LANES):
                    for l in range(_LANES):
                        e = cexp_term(load(row, b0 + i + l) - m)
                        put(ebuf, o + i + l, e)
                        put(A, l, at(A, l) + e)
                        put(M, l, fmax(at(M, l), load(nxt, b0 + i + l)))
                    prefetch(nxt, b0 + i + _AHEAD)
                    prefetch(nxt, b0 + i + _AHEAD + 16)
            for i in range(nv, nb):
                e = cexp_term(load(row, b0 + i) - m)
                put(ebuf, o + i, e)
                put(A, i - nv, at(A, i - nv) + e)
        for i in range(nv, nb):
            put(M, i - nv, fmax(at(M, i - nv), load(nxt, b0 + i)))
        total += float(_fold(A))
        if with_d:
            sd += float(_fold(D))
    return m, total, sd, _fold_max(M)


def _pairwise(take_max):
    """A fold of the _LANES values of a scratch A, their max (`take_max`) or their sum,
    pairwise in a fixed order: lane l and lane l + h, for h = _LANES / 2, ..., 1
    (vectorised, and 5 dependent steps rather than 32). The fold overwrites A. (The
    closure holds a bool, not a jitted function: a closure over a dispatcher gets a new
    disk-cache key in every process.)"""
    @hjit(fastmath=set(STRICT))
    def fold(A):
        h = _LANES // 2
        while h > 0:
            for l in range(h):
                a, b = at(A, l), at(A, l + h)
                put(A, l, fmax(a, b) if take_max else a + b)
            h //= 2
        return at(A, 0)
    return fold


_fold = _pairwise(False)      # the sum of the lanes' partial sums
_fold_max = _pairwise(True)   # the max of the lanes' maxima


@hjit()
def _rescale(ebuf, dst, k1, k2, w):
    """dst_c = e_c k1 - k2 w_c (no w term when k2 == 0) over the e_c that _exp_sums left
    in `ebuf`, e_c at or below cexp_term's floor taken as 0 (NaN stays NaN). `ebuf` may be
    `dst` itself (a new float32/float64 gradient or softmax): that case indexes one array
    only (with two views of the same memory LLVM's alias check fails and the loop runs
    scalar). The floor is applied as e * (e > floor): written as a conditional
    expression, the select kept LLVM from vectorising these loops."""
    k1 = cval(ebuf, k1)
    k2 = cval(ebuf, k2)
    floor = cexp_term(cval(ebuf, -np.inf))
    n = dst.size
    if ebuf.ctypes.data == dst.ctypes.data:
        if k2 == 0.0:
            for c in range(n):
                e = load(dst, c)
                store(dst, c, e * cval(ebuf, e > floor) * k1)
        else:
            for c in range(n):
                e = load(dst, c)
                store(dst, c, e * cval(ebuf, e > floor) * k1 - k2 * at(w, c))
    elif k2 == 0.0:
        for c in range(n):
            e = at(ebuf, c)
            store(dst, c, e * cval(ebuf, e > floor) * k1)
    else:
        for c in range(n):
            e = at(ebuf, c)
            store(dst, c, e * cval(ebuf, e > floor) * k1 - k2 * at(w, c))


_soft_grad_out = _make_soft_grad_writer(False)
_soft_grad_in = _make_soft_grad_writer(True)


@hjit(inline="always")
def _ce_row(row, mx, nxt, ebuf, grow, y, w, W, eps, z, s, mode):
    """(loss of one labelled row (float64), max of row `nxt`); writes its gradient unless
    mode == _FWD: into grow (_GRAD) or over row (_INPLACE). mx is the row's max, `nxt` the
    next row or the row itself (see _exp_sums). `ebuf` receives the row's exps
    (_exp_sums): a scratch of _BLOCK for _FWD, else grow itself (a float32/float64 _GRAD)
    or a scratch row of the compute dtype (in place, float16).

    Inlined into its callers by Numba (they compile with the same fast-math flags): as a
    call it cost four reference-count calls and the marshalling of five arrays per row,
    10% of a (256, 1000) forward in cache on one thread, 3-4% of (65536, 1000) on two."""
    C = row.size
    m, total, sd, mx_next = _exp_sums(row, mx, nxt, w, eps > 0.0, ebuf, mode == _FWD)
    lg = math.log(total)
    lse = m + lg
    xy = load(row, y)
    wy = float(at(w, y))
    loss = (1.0 - eps) * wy * diff_add(float(m), float(xy), lg)   # lse - x_y, accurately
    if eps > 0.0:
        loss += eps / C * (W * lg + sd)
    if z > 0.0:
        loss += z * wy * lse * lse
    if mode == _FWD:
        return loss, mx_next
    a = (1.0 - eps) * wy + eps / C * W
    if z > 0.0:
        a += 2.0 * z * wy * lse
    k1 = s * a / total
    k2 = s * eps / C if eps > 0.0 else 0.0
    gy = float(cexp(xy - m)) * k1 - (k2 + s * (1.0 - eps)) * wy
    dst = row if mode == _INPLACE else grow
    _rescale(ebuf, dst, k1, k2, w)
    store(dst, y, gy)
    return loss, mx_next


@hjit()
def _soft_row(row, prow, grow, w, eps, z, s, mode):
    C = row.size
    m = _shift(row)
    a = cval(row, 1.0 - eps)
    b = cval(row, eps / C)
    total, tt, uu = _sumexp_soft(row, prow, m, w, a, b)
    lg = math.log(total)
    lse = m + lg
    loss = tt * lg + uu
    if z > 0.0:
        loss += z * lse * lse
    if mode == _FWD:
        return loss
    k = tt + 2.0 * z * lse if z > 0.0 else tt
    k1 = s * k / total
    if mode == _INPLACE:
        _soft_grad_in(row, row, prow, m, k1, s, 1.0 - eps, eps / C, w)
    else:
        _soft_grad_out(row, grow, prow, m, k1, s, 1.0 - eps, eps / C, w)
    return loss


# ============================================================================ kernels
# Layout tuples: xs = (offset, s0, s1, s2) for (P, Q, C) arrays, (offset, s0, s1) for
# (P, Q) ones, all in elements. Parallel loops run over chunks of `rpc` consecutive rows
# (r = p*Q + q); a chunk walks (p, q) incrementally. Rows with a class stride other than 1
# are gathered into contiguous scratch (and results scattered back), so the row helpers
# compile for contiguous rows only.


@hjit()
def _gather(buf, b, n, step, dst):
    for c in range(n):
        put(dst, c, at(buf, b + c * step))
    return dst


@hjit()
def _scatter(src, buf, b, step):
    for c in range(src.size):
        put(buf, b + c * step, at(src, c))


@hjit()
def _fill(buf, b, n, step, value):
    for c in range(n):
        store(buf, b + c * step, value)


@hjit()
def _rows_chunk(x, xs, Q, C, out, os, mode, r0, r1):
    p = r0 // Q
    q = r0 - p * Q
    strided = xs[3] != 1 or (mode != _LSE and os[3] != 1)
    own_x = np.empty(C if strided else 0, x.dtype)
    own_o = np.empty(C if strided and mode != _LSE else 0, out.dtype)
    own_e = cempty(x, C if mode == _SOFTMAX else 0)   # softmax's exps, in place or float16
    tx, to, te = _b(own_x), _b(own_o), _b(own_e)   # see `alive`
    mx = cval(x, 0.0)
    ahead = False   # mx is this row's max, read with the row before (_exp_sums, _sumexp_ahead)
    for r in range(r0, r1):
        b = xs[0] + p * xs[1] + q * xs[2]
        ob = os[0] + p * os[1] + q * os[2]
        row = _gather(x, b, C, xs[3], tx) if strided else crow(x, b, C)
        if not ahead:
            mx = _row_max(row)
        # (logsumexp and log_softmax rows of over _SUMEXP_AHEAD_MAX elements: no read-ahead;
        # two such rows at once overflow L2, and their reassociated sums were near the read
        # bandwidth already: 1024 x 128256 logsumexp 15-25% slower with it)
        ahead = not strided and r + 1 < r1 and (mode == _SOFTMAX or C <= _SUMEXP_AHEAD_MAX)
        p1, q1 = _next_pq(p, q, Q)
        nxt = crow(x, xs[0] + p1 * xs[1] + q1 * xs[2], C) if ahead else row
        if mode == _LSE:
            v, mx = _lse(row, mx, nxt)
            store(out, ob, v)
        else:
            orow = to if strided else crow(out, ob, C)
            if mode == _SOFTMAX:
                mx = _softmax_row(row, mx, nxt, orow, te)
            else:
                mx = _log_softmax_row(row, mx, nxt, orow)
            if strided:
                _scatter(to, out, ob, os[3])
        p, q = _next_pq(p, q, Q)
    alive(own_x), alive(own_o), alive(own_e)


@pjit()
def _rows_kernel(x, xs, P, Q, C, out, os, mode, rpc):
    x, out = _b(x), _b(out)
    n = P * Q
    for k in prange((n + rpc - 1) // rpc):
        _rows_chunk(x, xs, Q, C, out, os, mode, k * rpc, min(n, (k + 1) * rpc))


@hjit()
def _scored_next(x, xs, C, lab, ls, ignore, p, q, row, may):
    """(row p*Q + q, True) when `may` and _ce_row will score that row (its label is valid
    and not ignored), else (`row`, False): the `nxt` of _ce_row, whose max it reads
    ahead."""
    if may:
        y = at(lab, ls[0] + p * ls[1] + q * ls[2])
        if y != ignore and 0 <= y < C:
            return crow(x, xs[0] + p * xs[1] + q * xs[2], C), True
    return row, False


@hjit()
def _ce_chunk(x, xs, Q, C, lab, ls, w, W, ignore, eps, z, out, os, g, gs, sc, ss, mode,
              r0, r1):
    p = r0 // Q
    q = r0 - p * Q
    strided = xs[3] != 1 or (mode != _FWD and gs[3] != 1)
    own_x = np.empty(C if strided else 0, x.dtype)
    own_g = np.empty(C if strided and mode == _GRAD else 0, g.dtype)
    # the exps of _ce_row: a block for the forward, a row where grow cannot hold them
    own_e = cempty(x, _BLOCK if mode == _FWD else (C if mode == _INPLACE or is_half(x) else 0))
    tx, tg, te = _b(own_x), _b(own_g), _b(own_e)   # see `alive`
    mx = cval(x, 0.0)
    ahead = False   # mx is the max of this row, read with the row before (_exp_sums)
    for r in range(r0, r1):
        y = at(lab, ls[0] + p * ls[1] + q * ls[2])
        b = xs[0] + p * xs[1] + q * xs[2]
        gb = gs[0] + p * gs[1] + q * gs[2]
        p1, q1 = _next_pq(p, q, Q)
        loss = 0.0
        if y == ignore:
            if mode != _FWD:
                _fill(g, gb, C, gs[3], cval(x, 0.0))
        elif y < 0 or y >= C:   # only unchecked labels (check=False) get here
            loss = np.nan
            if mode != _FWD:
                _fill(g, gb, C, gs[3], cval(x, np.nan))
        else:
            s = at(sc, ss[0] + p * ss[1] + q * ss[2])
            row = _gather(x, b, C, xs[3], tx) if strided else crow(x, b, C)
            grow = tg if strided else crow(g, gb, C)
            ebuf = te if mode != _GRAD else compute_or(grow, te)
            if not ahead:
                mx = _row_max(row)
            nxt, ahead = _scored_next(x, xs, C, lab, ls, ignore, p1, q1, row,
                                      not strided and r + 1 < r1)
            loss, mx = _ce_row(row, mx, nxt, ebuf, grow, y, w, W, eps, z, s, mode)
            if strided and mode != _FWD:
                _scatter(tg if mode == _GRAD else tx, g, gb, gs[3])
        put(out, os[0] + p * os[1] + q * os[2], loss)
        p, q = p1, q1
    alive(own_x), alive(own_g), alive(own_e)


@pjit()
def _ce_kernel(x, xs, P, Q, C, lab, ls, w, W, ignore, eps, z, out, os, g, gs, sc, ss, mode,
               rpc):
    x, lab, w, out, g, sc = _b(x), _b(lab), _b(w), _b(out), _b(g), _b(sc)
    n = P * Q
    for k in prange((n + rpc - 1) // rpc):
        _ce_chunk(x, xs, Q, C, lab, ls, w, W, ignore, eps, z, out, os, g, gs, sc, ss, mode,
                  k * rpc, min(n, (k + 1) * rpc))


@hjit()
def _soft_chunk(x, xs, Q, C, pr, ps, w, eps, z, out, os, g, gs, sc, ss, mode, r0, r1):
    p = r0 // Q
    q = r0 - p * Q
    strided = xs[3] != 1 or ps[3] != 1 or (mode != _FWD and gs[3] != 1)
    own_x = np.empty(C if strided else 0, x.dtype)
    own_p = np.empty(C if strided else 0, pr.dtype)
    own_g = np.empty(C if strided and mode == _GRAD else 0, g.dtype)
    tx, tp, tg = _b(own_x), _b(own_p), _b(own_g)   # see `alive`
    for _ in range(r0, r1):
        b = xs[0] + p * xs[1] + q * xs[2]
        pb = ps[0] + p * ps[1] + q * ps[2]
        gb = gs[0] + p * gs[1] + q * gs[2]
        s = at(sc, ss[0] + p * ss[1] + q * ss[2])
        row = _gather(x, b, C, xs[3], tx) if strided else crow(x, b, C)
        prow = _gather(pr, pb, C, ps[3], tp) if strided else crow(pr, pb, C)
        grow = tg if strided else crow(g, gb, C)
        put(out, os[0] + p * os[1] + q * os[2], _soft_row(row, prow, grow, w, eps, z, s, mode))
        if strided and mode != _FWD:
            _scatter(tg if mode == _GRAD else tx, g, gb, gs[3])
        p, q = _next_pq(p, q, Q)
    alive(own_x), alive(own_p), alive(own_g)


@pjit()
def _soft_kernel(x, xs, P, Q, C, pr, ps, w, eps, z, out, os, g, gs, sc, ss, mode, rpc):
    x, pr, w, out, g, sc = _b(x), _b(pr), _b(w), _b(out), _b(g), _b(sc)
    n = P * Q
    for k in prange((n + rpc - 1) // rpc):
        _soft_chunk(x, xs, Q, C, pr, ps, w, eps, z, out, os, g, gs, sc, ss, mode,
                    k * rpc, min(n, (k + 1) * rpc))


@jit()
def _nll_kernel(x, xs, P, Q, C, lab, ls, w, ignore, out, os):
    # serial: one gathered element per row, memory-latency bound
    for p in range(P):
        for q in range(Q):
            y = at(lab, ls[0] + p * ls[1] + q * ls[2])
            loss = 0.0
            if y != ignore:
                if y < 0 or y >= C:   # unchecked label (check=False)
                    loss = np.nan
                else:
                    v = float(load(x, xs[0] + p * xs[1] + q * xs[2] + y * xs[3]))
                    loss = -float(at(w, y)) * v
            put(out, os[0] + p * os[1] + q * os[2], loss)


@hjit()
def _top1_row(row, y, m, may_have_nan):
    """1 if y is numpy.argmax(row) (the first maximal class; the first NaN when there is
    one), else 0; m is the row's max (_row_max: read only when the row has no NaN).
    Vectorised: a NaN count (skipped when not `may_have_nan`: a caller whose loss of the
    row is not NaN knows the row has none), then a prefix pass over [0, y) when row[y]
    is the max."""
    nans = 0
    if may_have_nan:
        for c in range(row.size):
            v = load(row, c)
            nans += v != v
    if nans:
        for c in range(row.size):
            v = load(row, c)
            if v != v:
                return 1 if c == y else 0
    if load(row, y) != m:
        return 0
    prefix = cval(row, -np.inf)
    for c in range(y):
        prefix = fmax(prefix, load(row, c))
    return 1 if (y == 0 or prefix < m) else 0


@hjit()
def _top1_chunk(x, xs, Q, C, lab, ls, ignore, hits, hs, r0, r1):
    p = r0 // Q
    q = r0 - p * Q
    strided = xs[3] != 1
    own_x = np.empty(C if strided else 0, x.dtype)
    tx = _b(own_x)   # see `alive`
    for _ in range(r0, r1):
        y = at(lab, ls[0] + p * ls[1] + q * ls[2])
        hit = 0
        if y != ignore and 0 <= y < C:   # out of range only unchecked (check=False): a miss
            b = xs[0] + p * xs[1] + q * xs[2]
            row = _gather(x, b, C, xs[3], tx) if strided else crow(x, b, C)
            hit = _top1_row(row, y, _row_max(row), True)
        put(hits, hs[0] + p * hs[1] + q * hs[2], hit)
        p, q = _next_pq(p, q, Q)
    alive(own_x)


@pjit()
def _top1_kernel(x, xs, P, Q, C, lab, ls, ignore, hits, hs, rpc):
    x, lab, hits = _b(x), _b(lab), _b(hits)
    n = P * Q
    for k in prange((n + rpc - 1) // rpc):
        _top1_chunk(x, xs, Q, C, lab, ls, ignore, hits, hs, k * rpc, min(n, (k + 1) * rpc))


@hjit()
def _ce_top1_chunk(x, xs, Q, C, lab, ls, w, W, ignore, eps, z, out, os, hits, hs, r0, r1):
    """Rows [r0, r1): loss (as _ce_chunk, forward) and top-1 hit (as _top1_chunk) of each
    row while it is in cache: the row is read from memory once for both."""
    p = r0 // Q
    q = r0 - p * Q
    strided = xs[3] != 1
    own_x = np.empty(C if strided else 0, x.dtype)
    own_e = cempty(x, _BLOCK)   # _ce_row's exps
    tx, te = _b(own_x), _b(own_e)   # see `alive`
    mx = cval(x, 0.0)
    ahead = False   # mx is the max of this row, read with the row before (_exp_sums)
    for r in range(r0, r1):
        y = at(lab, ls[0] + p * ls[1] + q * ls[2])
        p1, q1 = _next_pq(p, q, Q)
        loss = 0.0
        hit = 0
        if y != ignore:
            if y < 0 or y >= C:   # only unchecked labels get here
                loss = np.nan
            else:
                b = xs[0] + p * xs[1] + q * xs[2]
                row = _gather(x, b, C, xs[3], tx) if strided else crow(x, b, C)
                if not ahead:
                    mx = _row_max(row)
                m = mx
                nxt, ahead = _scored_next(x, xs, C, lab, ls, ignore, p1, q1, row,
                                          not strided and r + 1 < r1)
                loss, mx = _ce_row(row, m, nxt, te, row, y, w, W, eps, z, 1.0, _FWD)
                hit = _top1_row(row, y, m, loss != loss)   # a NaN in the row makes it NaN
        put(out, os[0] + p * os[1] + q * os[2], loss)
        put(hits, hs[0] + p * hs[1] + q * hs[2], hit)
        p, q = p1, q1
    alive(own_x), alive(own_e)


@pjit()
def _ce_top1_kernel(x, xs, P, Q, C, lab, ls, w, W, ignore, eps, z, out, os, hits, hs, rpc):
    x, lab, w, out, hits = _b(x), _b(lab), _b(w), _b(out), _b(hits)
    n = P * Q
    for k in prange((n + rpc - 1) // rpc):
        _ce_top1_chunk(x, xs, Q, C, lab, ls, w, W, ignore, eps, z, out, os, hits, hs,
                       k * rpc, min(n, (k + 1) * rpc))


# The parallel loops pass their index to the block functions as np.int64(k): Numba types
# the loop body twice, the second time (the outlined parallel body) with k unsigned, and
# would compile each block function again for that signature (0.5-0.9 s of a first call).
@hjit()
def _block_start(k, Q):
    r0 = k * _RED_BLOCK
    p = r0 // Q
    return r0, p, r0 - p * Q


@hjit()
def _label_seg(seg, C, ignore, w):
    """(number of bad labels, sum of w[y] over counted labels; their count without weight)
    of a contiguous run of labels: branch-free, so that it vectorises."""
    bad = 0
    tot = 0.0
    for i in range(seg.size):
        y = at(seg, i)
        inr = (y >= 0) & (y < C)
        bad += 0 if (inr | (y == ignore)) else 1
        ok = inr & (y != ignore)
        if w.size == 0:
            tot += 1.0 if ok else 0.0
        else:
            tot += float(at(w, y if ok else 0)) if ok else 0.0
    return bad, tot


@hjit()
def _label_block(lab, ls, Q, n, C, ignore, w, k):
    """(first bad row, sum of w[y]) over rows [k*_RED_BLOCK, (k+1)*_RED_BLOCK) of n."""
    r, p, q = _block_start(k, Q)
    r1 = min(r + _RED_BLOCK, n)
    first = -1
    tot = 0.0
    while r < r1:
        m = min(Q - q, r1 - r)
        b = ls[0] + p * ls[1] + q * ls[2]
        if ls[2] == 1:
            bad, t = _label_seg(crow(lab, b, m), C, ignore, w)
        else:
            bad, t = _label_seg(srow(lab, b, m, ls[2]), C, ignore, w)
        tot += t
        if bad > 0 and first < 0:
            for i in range(m):
                y = at(lab, b + i * ls[2])
                if y != ignore and not (0 <= y < C):
                    first = r + i
                    break
        r += m
        q = 0
        p += 1
    return first, tot


@pjit()
def _label_stats_kernel(lab, ls, P, Q, C, ignore, w):
    lab, w = _b(lab), _b(w)
    n = P * Q
    nblk = (n + _RED_BLOCK - 1) // _RED_BLOCK
    firsts = np.empty(nblk, np.int64)
    partials = np.empty(nblk, np.float64)
    for k in prange(nblk):
        first, part = _label_block(lab, ls, Q, n, C, ignore, w, np.int64(k))
        put(firsts, k, first)
        put(partials, k, part)
    first_bad = -1
    total = 0.0
    for k in range(nblk):
        total += at(partials, k)
        if first_bad < 0 and at(firsts, k) >= 0:
            first_bad = at(firsts, k)
    return first_bad, total


@hjit()
def _sum_run(seg, m, acc):
    """acc + seg[0] + ... + seg[m - 1] in float64, in the order LLVM makes of this loop
    (reassociated: vectorised). The one loop of sum_rows' block sums and of the kernels
    that sum their losses themselves (_TOTAL), so that both give the same bits."""
    for i in range(m):
        acc += at(seg, i)
    return acc


@hjit()
def _sum_block(v, vs, Q, n, k):
    """float64 sum of rows [k*_RED_BLOCK, (k+1)*_RED_BLOCK) of the n values: for P = 1
    and contiguous values, _sum_run over the block's rows from 0.0."""
    r, p, q = _block_start(k, Q)
    r1 = min(r + _RED_BLOCK, n)
    acc = 0.0
    while r < r1:
        m = min(Q - q, r1 - r)
        b = vs[0] + p * vs[1] + q * vs[2]
        if vs[2] == 1:
            acc = _sum_run(crow(v, b, m), m, acc)
        else:
            for i in range(m):
                acc += at(v, b + i * vs[2])
        r += m
        q = 0
        p += 1
    return acc


@pjit()
def _sum_kernel(v, vs, P, Q):
    v = _b(v)
    n = P * Q
    nblk = (n + _RED_BLOCK - 1) // _RED_BLOCK
    partials = np.empty(nblk, np.float64)
    for k in prange(nblk):
        put(partials, k, _sum_block(v, vs, Q, n, np.int64(k)))
    return _sum_run(partials, nblk, 0.0)


# ---------------------------------------------------------------------------- small C


@hjit()
def _small_labels(labels, n, T, XY, WY, OK, w, ignore):
    """x[y], w[y] (0 if ignored) and 1/0 (counted/ignored) of a block's rows; a label
    outside [0, C) (unchecked, check=False) gets x[y] = NaN, so a NaN loss."""
    R = _SMALL_R
    C = T.size // R
    for j in range(n):
        y = at(labels, j)
        ok = y != ignore
        bad = ok and (y < 0 or y >= C)
        yy = y if ok and not bad else 0
        put(XY, j, cval(T, np.nan) if bad else at(T, yy * R + j))
        put(WY, j, at(w, yy) if ok else cval(T, 0.0))
        put(OK, j, cval(T, 1.0) if ok else cval(T, 0.0))


_SMALL_VECS = 11  # per-row scratch vectors of _small_block after the C class vectors


# STRICT (no reassociation): Numba optimises a parallel kernel loaded from its disk cache
# differently from a fresh compile, and with 'reassoc' the z-loss terms came out in
# another order (other last bits) in a process that loaded this kernel from the cache.
# Every step here is per row, vectorised across rows: no reduction needs reassociation.
@hjit(fastmath=set(STRICT))
def _small_block(x, xb, xr, xc, n, C, lab, lb, lr, w, W, ignore, eps, z, out, ob, orr,
                 g, gb, gr, gc, sc, sb, sr, mode, scratch):
    """Cross-entropy of n <= _SMALL_R rows from x[xb], x[xb + xr], ... with class stride xc
    (any float dtype): copied class-major into T, then max, sums, losses and gradients
    vectorised across rows. Only the copy in and out (and the label gathers) are per-row
    scalar code."""
    R = _SMALL_R
    wide_vectors()
    T = crow(scratch, 0, C * R)
    M = crow(scratch, C * R, R)          # shift
    S = crow(scratch, (C + 1) * R, R)    # sum exp
    D = crow(scratch, (C + 2) * R, R)    # sum w (m - x), for smoothing
    XY = crow(scratch, (C + 3) * R, R)   # x[y]
    WY = crow(scratch, (C + 4) * R, R)   # w[y], 0 for ignored rows
    OK = crow(scratch, (C + 5) * R, R)   # 1 for counted rows, 0 for ignored ones
    SC = crow(scratch, (C + 6) * R, R)   # grad_scale
    LS = crow(scratch, (C + 7) * R, R)   # loss
    KK = crow(scratch, (C + 8) * R, R)   # gradient factor s * A / sum
    LG = crow(scratch, (C + 9) * R, R)   # log(sum)
    IM = crow(scratch, (C + 10) * R, R)  # 1 for rows whose max is +-inf
    zero = cval(x, 0.0)
    ninf = cval(x, -np.inf)
    if is_half(x) and xc == 1 and xr == C:
        # convert the block's contiguous rows in one vectorised pass first: F16C converts 8
        # halves per instruction, but one at a time in the strided transpose below
        U = crow(scratch, (C + _SMALL_VECS) * R, n * C)
        for i in range(n * C):
            put(U, i, load(x, xb + i))
        for c in range(C):
            for j in range(n):
                put(T, c * R + j, at(U, j * C + c))
    else:
        for c in range(C):
            for j in range(n):
                put(T, c * R + j, load(x, xb + j * xr + c * xc))
    if lr == 1:
        _small_labels(crow(lab, lb, n), n, T, XY, WY, OK, w, ignore)
    else:
        _small_labels(srow(lab, lb, n, lr), n, T, XY, WY, OK, w, ignore)
    for j in range(n):
        put(SC, j, at(sc, sb + j * sr))
    for j in range(n):
        put(M, j, ninf)
        put(S, j, zero)
        put(D, j, zero)
    for c in range(C):
        for j in range(n):
            put(M, j, fmax(at(M, j), at(T, c * R + j)))
    infinite = 0   # rows whose max is +-inf: shift 0, where x - 0 may leave cexp_term's domain
    for j in range(n):
        inf_max = (at(M, j) == np.inf) | (at(M, j) == -np.inf)
        infinite += inf_max
        put(IM, j, cval(x, inf_max))
        put(M, j, zero if inf_max else at(M, j))
    if eps > 0.0:
        for c in range(C):
            wc = at(w, c)
            for j in range(n):
                put(D, j, at(D, j) + wc * (at(M, j) - at(T, c * R + j)))
    # exp(x - m) is kept in T (the gradient pass then needs no second exp); the forward
    # keeps it too, so that its sums come from the same loop as the fused call's and have
    # the same bits (see _exp_sums)
    for c in range(C):
        for j in range(n):
            e = cexp_term(at(T, c * R + j) - at(M, j))
            put(T, c * R + j, e)
            put(S, j, at(S, j) + e)
    if infinite:
        # rows with an infinite max again with the general exp, from x, in the same order;
        # other rows keep theirs, so that no row's bits depend on the rest of its block
        for j in range(n):
            if at(IM, j) != zero:
                sj = zero
                for c in range(C):
                    e = cexp(load(x, xb + j * xr + c * xc))
                    put(T, c * R + j, e)
                    sj += e
                put(S, j, sj)
    omeps = cval(x, 1.0 - eps)
    ec = cval(x, eps / C)
    Wf = cval(x, W)
    zf = cval(x, z)
    for j in range(n):
        put(LG, j, clog(at(S, j)))
        put(LS, j, omeps * at(WY, j) * diff_add(at(M, j), at(XY, j), at(LG, j)))
        put(KK, j, omeps * at(WY, j) + ec * Wf)
    if eps > 0.0:
        for j in range(n):
            put(LS, j, at(LS, j) + ec * (Wf * at(LG, j) + at(D, j)))
    if z > 0.0:
        for j in range(n):
            lse = at(M, j) + at(LG, j)
            put(LS, j, at(LS, j) + zf * at(WY, j) * lse * lse)
            put(KK, j, at(KK, j) + cval(x, 2.0) * zf * at(WY, j) * lse)
    for j in range(n):
        put(KK, j, at(SC, j) * at(KK, j) / at(S, j))
    if orr == 1:
        dst = crow(out, ob, n)
        for j in range(n):
            put(dst, j, at(LS, j) if at(OK, j) != zero else zero)
    else:
        for j in range(n):
            put(out, ob + j * orr, at(LS, j) if at(OK, j) != zero else zero)
    if mode == _FWD:
        return
    floor = cexp_term(ninf)   # exps at cexp_term's floor are 0 (see _rescale)
    for c in range(C):
        k2 = ec * at(w, c)
        for j in range(n):
            e = at(T, c * R + j)
            put(T, c * R + j, e * cval(x, e > floor) * at(KK, j) - k2 * at(SC, j))
    if gc == 1:   # through a contiguous view, the whole gradient ran 1.1-1.2x faster
        for j in range(n):
            _small_grad_row(crow(g, gb + j * gr, C), T, j, at(lab, lb + j * lr), at(OK, j),
                            at(SC, j) * omeps * at(WY, j))
    else:
        for j in range(n):
            _small_grad_row(srow(g, gb + j * gr, C, gc), T, j, at(lab, lb + j * lr),
                            at(OK, j), at(SC, j) * omeps * at(WY, j))


@hjit(fastmath=set(STRICT), inline="always")
def _small_grad_row(grow, T, j, y, ok, dy):
    """Row j of _small_block's gradient from T (class-major: class c at c * _SMALL_R)
    into grow: less dy at the label y; zeros for an ignored row (ok == 0), NaN for a label
    outside [0, C) (unchecked)."""
    R = _SMALL_R
    C = grow.size
    zero = cval(T, 0.0)
    if ok == zero or y < 0 or y >= C:
        fill = zero if ok == zero else cval(T, np.nan)
        for c in range(C):
            store(grow, c, fill)
        return
    for c in range(C):
        store(grow, c, at(T, c * R + j))
    store(grow, y, at(T, y * R + j) - dy)


@pjit()
def _small_kernel(x, xs, P, Q, C, lab, ls, w, W, ignore, eps, z, out, os, g, gs, sc, ss,
                  mode):
    x, lab, w, out, g, sc = _b(x), _b(lab), _b(w), _b(out), _b(g), _b(sc)
    R = _SMALL_R
    nqb = (Q + R - 1) // R
    nblk = P * nqb
    nchunk = (nblk + _SMALL_CHUNK - 1) // _SMALL_CHUNK
    for k in prange(nchunk):
        scratch = cempty(x, (2 * C + _SMALL_VECS) * R)   # the last C * R: float16 rows
        for i in range(k * _SMALL_CHUNK, min((k + 1) * _SMALL_CHUNK, nblk)):
            p = i // nqb
            q = (i - p * nqb) * R
            n = min(R, Q - q)
            _small_block(x, xs[0] + p * xs[1] + q * xs[2], xs[2], xs[3], n, C,
                         lab, ls[0] + p * ls[1] + q * ls[2], ls[2], w, W, ignore, eps, z,
                         out, os[0] + p * os[1] + q * os[2], os[2],
                         g, gs[0] + p * gs[1] + q * gs[2], gs[2], gs[3],
                         sc, ss[0] + p * ss[1] + q * ss[2], ss[2], mode, scratch)


@hjit()
def _count_codes(codes, m, ignored, bad, counted):
    """bad and counted, plus how many of codes[:m] are out of range (above `ignored`) and
    how many are classes (below it): the label codes of the two- and few-classes kernels."""
    for j in range(m):
        code = at(codes, j)
        bad += 1 if code > ignored else 0
        counted += 1 if code < ignored else 0
    return bad, counted


# ============================================================================ two classes
# C == 2 without label smoothing or z-loss: lse - x_y is softplus(x_o - x_y), one exp and
# one log1p per row (the general small-C path takes two exps, a log and a transpose), and
# the gradient is +-w_y s sigmoid(x_o - x_y). Rows are walked in place, two loads each.

_PAIR_ROWS = _SMALL_R * _SMALL_CHUNK   # rows per parallel work item
_PAIR_SUB = 1024                       # rows per label-coding sub-block


@hjit(inline="always")
def _pair_row(x0, x1, y, w0, w1, ignore, zero, unit, nan, inf):
    """(loss, gradient of the other class and of the target per unit of grad_scale, whether
    y is class 1) of one two-class row (x0, x1); zero, unit, nan, inf are those constants
    in the compute dtype (an array argument here would cost reference counting per row)."""
    one = y == 1
    xy = x1 if one else x0
    xo = x0 if one else x1
    d = xo - xy
    e, lg = softplus_parts(d)
    counted = y != ignore
    bad = counted and not (y == 0 or one)    # unchecked, out of range: a NaN row
    wy = w1 if one else w0
    # lse - x_y; a target of +inf has lse = +inf and a NaN loss (inf - inf)
    val = nan if xy == inf else (d if d > zero else zero) + lg
    loss = zero if not counted else wy * val
    loss = nan if bad else loss
    r = unit / (unit + e)                    # sigmoid(|d|)
    po = wy * (r if d >= zero else e * r)    # w_y softmax(x)_other
    go = nan if xo == inf else po            # softmax at +inf: exp(inf - inf)
    gy = nan if xy == inf else -po
    go = zero if not counted else go
    gy = zero if not counted else gy
    go = nan if bad else go
    gy = nan if bad else gy
    return loss, go, gy, one


@hjit(inline="always")
def _pair_grad_loop(x, xb, xr, xc, n, lab, lb, lr, w0, w1, ignore, out, ob, orr,
                    g, gb, gr, gc, sc, sb, sr, zero, unit, nan, inf):
    for j in range(n):
        loss, go, gy, one = _pair_row(load(x, xb + j * xr), load(x, xb + j * xr + xc),
                                      at(lab, lb + j * lr), w0, w1, ignore, zero, unit, nan, inf)
        put(out, ob + j * orr, loss)
        s = cval(x, at(sc, sb + j * sr))
        store(g, gb + j * gr, s * (go if one else gy))
        store(g, gb + j * gr + gc, s * (gy if one else go))


@hjit(inline="always")
def _pair_loop(x, xb, xr, xc, n, lab, lb, lr, w0, w1, ignore, out, ob, orr,
               g, gb, gr, gc, sc, sb, sr, mode):
    """Rows j < n of a two-class block, one branch-free loop per mode (a branch inside
    keeps LLVM from vectorising); inlined where it is called, so that the strides that are
    constants there (contiguous rows) reach LLVM as constants. In place, the gradient is
    stored through x itself: through g, another view of the same memory, LLVM's alias check
    fails and the loop runs scalar (4x slower)."""
    zero = cval(x, 0.0)
    unit = cval(x, 1.0)
    nan = cval(x, np.nan)
    inf = cval(x, np.inf)
    w0 = cval(x, w0)
    w1 = cval(x, w1)
    if mode == _FWD:
        for j in range(n):
            loss, _go, _gy, _one = _pair_row(load(x, xb + j * xr), load(x, xb + j * xr + xc),
                                             at(lab, lb + j * lr), w0, w1, ignore,
                                             zero, unit, nan, inf)
            put(out, ob + j * orr, loss)
    elif mode == _INPLACE:
        _pair_grad_loop(x, xb, xr, xc, n, lab, lb, lr, w0, w1, ignore, out, ob, orr,
                        x, xb, xr, xc, sc, sb, sr, zero, unit, nan, inf)
    else:
        _pair_grad_loop(x, xb, xr, xc, n, lab, lb, lr, w0, w1, ignore, out, ob, orr,
                        g, gb, gr, gc, sc, sb, sr, zero, unit, nan, inf)


@hjit()
def _pair_block(x, xb, xr, xc, n, lab, lb, lr, w0, w1, ignore, out, ob, orr,
                g, gb, gr, gc, sc, sb, sr, mode, codes):
    """Rows [0, n) from offsets xb, lb, ob, gb, sb, in sub-blocks of codes.size rows whose
    labels are first coded as int32 (0 or 1, 2 ignored, 3 out of range): with int64 labels
    in the loop, LLVM vectorises it 4 lanes wide, with int32 8 lanes (1.6x). Returns the
    number of labels out of range and the number counted (in range, not ignored)."""
    wide_vectors()
    contiguous = xr == 2 and xc == 1 and orr == 1 and (mode == _FWD or (gr == 2 and gc == 1))
    ignored = np.int32(2)
    bad = 0
    counted = 0
    for s0 in range(0, n, codes.size):
        m = min(codes.size, n - s0)
        for j in range(m):
            y = at(lab, lb + (s0 + j) * lr)
            put(codes, j, ignored if y == ignore else (np.int32(y) if (y >= 0) & (y <= 1)
                                                       else np.int32(3)))
        bad, counted = _count_codes(codes, m, ignored, bad, counted)
        if contiguous:
            # views from offset 0 (indexed from a run-time offset, LLVM leaves this loop
            # scalar: 30 against 5 ns per row)
            gv = crow(g, gb + 2 * s0, 2 * m if mode != _FWD else 0)
            _pair_loop(crow(x, xb + 2 * s0, 2 * m), 0, 2, 1, m, codes, 0, 1, w0, w1, ignored,
                       crow(out, ob + s0, m), 0, 1, gv, 0, 2, 1,
                       srow(sc, sb + s0 * sr, m, sr), 0, 1, mode)
        else:
            _pair_loop(x, xb + s0 * xr, xr, xc, m, codes, 0, 1, w0, w1, ignored,
                       out, ob + s0 * orr, orr, g, gb + s0 * gr, gr, gc,
                       sc, sb + s0 * sr, sr, mode)
    return bad, counted


@pjit()
def _pair_kernel(x, xs, P, Q, lab, ls, w, ignore, out, os, g, gs, sc, ss, mode):
    """(labels out of range, labels counted, the sum of the losses), as _pair_block's, over
    every row. The sum only in mode _TOTAL (P = 1; else 0.0): each work item's losses go to
    a scratch of its own, summed as sum_rows sums the same block of written losses (a work
    item is one of its blocks), and out is not written."""
    x, lab, out, g, sc = _b(x), _b(lab), _b(out), _b(g), _b(sc)
    R = _PAIR_ROWS
    nqb = (Q + R - 1) // R
    w0, w1 = at(w, 0), at(w, 1)
    total = mode == _TOTAL
    bads = np.empty(P * nqb, np.int64)
    counts = np.empty(P * nqb, np.int64)
    sums = np.zeros(P * nqb, np.float64)
    for i in prange(P * nqb):
        p = i // nqb
        q = (i - p * nqb) * R
        n = min(R, Q - q)
        codes = np.empty(_PAIR_SUB, np.int32)
        own = cempty(out, R if total else 0)
        bad, counted = _pair_block(x, xs[0] + p * xs[1] + q * xs[2], xs[2], xs[3],
                                   n, lab, ls[0] + p * ls[1] + q * ls[2], ls[2], w0, w1,
                                   ignore, own if total else out,
                                   0 if total else os[0] + p * os[1] + q * os[2],
                                   1 if total else os[2],
                                   g, gs[0] + p * gs[1] + q * gs[2], gs[2], gs[3],
                                   sc, ss[0] + p * ss[1] + q * ss[2], ss[2],
                                   _FWD if total else mode, codes)
        put(bads, i, bad)
        put(counts, i, counted)
        if total:
            put(sums, i, _sum_run(own, n, 0.0))
    return bads.sum(), counts.sum(), _sum_run(sums, P * nqb, 0.0)


# ============================================================================ few classes
# 3 <= C <= _FEW_C (see _takes_few), rows one contiguous run, no smoothing or z-loss. The
# losses come from a kernel compiled per C (_few_loss_kernel): rows walked in place as for
# two classes, with C a compile-time constant, so that LLVM unrolls the class loops and
# vectorises across rows (interleaved loads), 2x the small-C kernel. Gradients come from
# each row's shift and sum, which it keeps (_few_grad_flat; _few_grad_pass for blocks with
# a flagged row); rows with an infinite max from the general row code, in a serial kernel
# compiled once for every C: code linked into the per-C kernel is optimised again with
# every C (linking _ce_row in cost 6 s per C), and the kernel calls no jitted closure (a
# closure over a dispatcher gets a new cache key in every process: NBXENT_CACHE missed).

# Which calls the few-classes kernels take (_takes_few): C up to _FEW_C for the forward,
# up to _FEW_GRAD_C with a gradient. On Zen 3 (AVX2) LLVM left the class loops rolled from
# C = 11 on (a third of the small-C kernel's speed); with AVX-512 its interleaved loads
# stop at 8 classes and C = 9 and 10 load each class with gathers. 10_000_000 elements, 2
# threads, forward: on Zen 5 those gathers lost (7.8-9.3 ms against the small-C kernel's
# 5.8-6.3); on Zen 3 C = 9 and 10 ran at 2x the small-C kernel (8.5-9.0 ms against
# 19.5-19.7; 2026-12-02); on Zen 4 (znver4), gathers and all, at 1.28-1.35x in float32,
# 1.0-1.1x in float64 and 2x in float16 (2026-12-03). Below 9 the forward is 1.5-3x the
# small-C kernel's on all three. With a gradient (_few_grad_flat), on Zen 3, 1_000_000
# rows, 2 threads (2026-12-03): float32 1.3-2x the small-C kernel's speed over C = 3-10,
# float16 1.2-2x but for C = 9 (0.8-1.1x), float64 0.8-1.5x (noisy; about even); on Zen 4
# C = 9 and 10 were even in float32 (0.92-1.04x), behind in float64 (0.76-0.86x). Zen 5
# has not measured _few_grad_flat (its row-by-row predecessor ran at 0.6-1.4x there). On
# an Intel Xeon with AVX-512 (2026-12-08; both kernels 512 bits wide, see wide_vectors),
# the forward of C = 9 and 10 ran at 1.8-3.9x the small-C kernel's speed in float32,
# 2.0-2.4x in float16, 1.5-2.2x in float64; the gradients at 0.95-1.15x in float32,
# 0.87-1.13x in float64, 0.66-0.73x in float16 at C = 10 (1_000_000 rows, 2 threads, 3
# alternated processes). So the forward goes to 10 classes but on Zen 5, the gradient to
# 8 with AVX-512. Both kernels give a row's loss the same bits, so the choice changes
# speed only (and the gradient's last bits in places): a fused call's loss keeps the
# forward's bits.
_FEW_GRAD_C = 8 if host_has("avx512f") else 10
_FEW_C = _FEW_GRAD_C if host_cpu() == "znver5" else 10
# float16 rows of 9 and 10 classes: LLVM gathers a class's values from the rows of a
# vector (as it does for float32) only in 32-bit lanes, so for float16 it loaded each value
# on its own, and the forward took 1.08-1.19x float32's time on an Intel Xeon. With
# interleaved loads allowed up to 16 members (compile_interleaving) it loads whole rows and
# shuffles: 0.91-0.99x float32's time (2026-12-08, 1_000_000 rows, 2 threads). float32 and
# float64 keep the gathers: float32 ran 1.1-1.2x slower with the shuffles. Not measured on
# AMD's AVX-512 cores (Zen 4 takes these kernels, Zen 5 does not), so not used there.
_FEW_HALF_INTERLEAVED = host_has("avx512f") and not host_cpu().startswith("znver")
_FEW_SUB = 1024    # rows per label-coding sub-block
_FEW_ITEM = 16     # sub-blocks per parallel work item
_FEW_KERNELS = {}
assert _FEW_SUB * _FEW_ITEM == _PAIR_ROWS == _RED_BLOCK   # work items are sum_rows' blocks
_FLAGGED = -1.0    # the sum of exps of a row left to _few_fixup_kernel (infinite max)


def _takes_few(C, mode):
    """Whether a call of C classes (rows one run, no smoothing or z-loss) in `mode` goes
    to the few-classes kernels (see _FEW_C)."""
    return 3 <= C <= (_FEW_C if mode == _FWD else _FEW_GRAD_C)


def _few_loss_kernel(C):
    """The kernel for C classes (built, and compiled on first call, once per C)."""
    kernel = _FEW_KERNELS.get(C)
    if kernel is None:
        kernel = _make_few_loss_kernel(C)
        if C > 8 and _FEW_HALF_INTERLEAVED:
            kernel = compile_interleaving(kernel, 16, _half_logits)
        _FEW_KERNELS[C] = kernel
    return kernel


def _half_logits(argtypes):
    """Whether a few-classes kernel's argument types are float16's (logits a uint16 view)."""
    return argtypes[0].dtype == numba.types.uint16


# Whether the few-classes gradient of C classes takes cexp_nonpos (cexp's bits, cheaper)
# rather than cexp. Not where rows of C tile a float32 vector (C = 4 on AVX2): LLVM then
# vectorised the flat loop over 4 lanes, not 8, and the gradient was 12% slower (Zen 3);
# elsewhere 1-8% faster (C = 3-10, float32, 10_000_000 elements, 2026-12-03).
_F32_LANES = 16 if host_has("avx512f") else 8


def _few_nonpos(C):
    return not (C < _F32_LANES and _F32_LANES % C == 0)


@hjit()
def _few_grad_exp(d, nonpos):
    """exp(d) for d = x - shift <= 0 (or NaN): cexp_nonpos or cexp, the same bits; nonpos
    is a constant of the kernel (_few_nonpos), so that LLVM keeps one of the two."""
    return cexp_nonpos(d) if nonpos else cexp(d)


@hjit()
def _few_grad_pass(X, n, C, codes, WY, SH, SS, SC, nonpos):
    """Gradients of rows [0, n) of a few-classes block from their shift SH and sum SS,
    written over X: a new gradient is the logits copied first, then this (written
    straight into another array LLVM left the loop scalar: 5x slower). A flagged row keeps
    its logits, for _few_fixup_kernel. (Used for blocks with a flagged row only: see
    _few_grad_flat.)"""
    wide_vectors()
    zero = cval(X, 0.0)
    nan = cval(X, np.nan)
    flag = cval(X, _FLAGGED)
    for j in range(n):
        code = at(codes, j)
        k = cval(X, at(SC, j)) * at(WY, j)
        kd = k / at(SS, j)
        sh = at(SH, j)
        row = crow(X, j * C, C)
        if code >= C:   # ignored or out of range, flagged or not (the fix-up skips them)
            _fill(X, j * C, C, 1, zero if code == C else nan)
            continue
        if at(SS, j) == flag:
            continue
        for c in range(C):
            store(row, c, _few_grad_exp(load(row, c) - sh, nonpos) * kd)
        store(row, code, load(row, code) - k)


_few_factors = stack_scratch(2 * _FEW_SUB)   # _few_grad_flat's shifts and factors


@hjit()
def _few_grad_flat(X, G, n, C, codes, WY, SH, SS, SC, mode, nonpos):
    """Gradients of rows [0, n) of a few-classes block none of which is flagged, into G (X
    itself in place): exp(x - shift) * factor over the n * C elements as one loop, the row
    of element e being e // C (C is a literal here: a multiply), then each row's label
    term, or its fill (0 ignored, NaN out of range). The arithmetic of _few_grad_pass, so
    the same bits; for C = 10 1.5x its speed (a row of 10 walked as 8 + 2 lanes), while for
    C = 3, 4 walking rows was faster in isolation (Zen 3, 2026-12-03; whole calls: see
    docs/benchmarks.md).

    LLVM vectorises the loop only when it can tell that the arrays it gathers from alias
    neither X nor G: they are copied to the stack first (from heap scratch it stayed
    scalar, 5x slower); and in place it is a loop over X alone (with G the same array, the
    run-time overlap check sent it to the scalar loop)."""
    wide_vectors()
    F = _few_factors(X)
    for j in range(n):
        put(F, j, at(SH, j))
        put(F, _FEW_SUB + j, cval(X, at(SC, j)) * at(WY, j) / at(SS, j))
    if mode == _INPLACE:
        for e in range(n * C):
            j = e // C
            store(X, e, _few_grad_exp(load(X, e) - at(F, j), nonpos) * at(F, _FEW_SUB + j))
    else:
        for e in range(n * C):
            j = e // C
            store(G, e, _few_grad_exp(load(X, e) - at(F, j), nonpos) * at(F, _FEW_SUB + j))
    zero = cval(X, 0.0)
    nan = cval(X, np.nan)
    for j in range(n):
        code = at(codes, j)
        if code < C:
            e = j * C + code
            store(G, e, load(G, e) - cval(X, at(SC, j)) * at(WY, j))
        else:
            _fill(G, j * C, C, 1, zero if code == C else nan)


def _make_few_loss_kernel(C):
    # The loop is written out here, branch-free, with a per-row result for everything: a
    # helper inlined by Numba left it scalar (5x slower), a select over w[c] per class for
    # w_y too (6x: the weights come from a column filled beforehand), a running count of
    # flagged rows 2x (they are marked in SS instead).
    nonpos = _few_nonpos(C)

    @pjit()
    def kernel(x, xb, N, lab, lb, lr, w, ignore, out, ob, g, gb, sc, sb, sr, mode):
        """Losses (and gradients with mode _GRAD or _INPLACE) of the N rows of C at x[xb:].
        Returns how many rows have an infinite max (left to _few_fixup_kernel), how many
        labels are out of range, how many are counted (in range, not ignored), and in
        mode _TOTAL the sum of the losses, which are then not written: each work item's
        go to a scratch of its own, summed as sum_rows sums the same block of written
        losses (a work item is one of its blocks); 0.0 in other modes. (A flagged row's
        loss is the fix-up's, so with one the sum is not the call's: _few_classes then
        returns None.)"""
        x, lab, w, out, g, sc = _b(x), _b(lab), _b(w), _b(out), _b(g), _b(sc)
        nsub = (N + _FEW_SUB - 1) // _FEW_SUB
        nitem = (nsub + _FEW_ITEM - 1) // _FEW_ITEM
        total = mode == _TOTAL
        flagged = np.zeros(nitem, np.int64)
        bads = np.zeros(nitem, np.int64)
        counts = np.zeros(nitem, np.int64)
        sums = np.zeros(nitem, np.float64)
        zero = cval(x, 0.0)
        nan = cval(x, np.nan)
        inf = cval(x, np.inf)
        flag = cval(x, _FLAGGED)
        for i in prange(nitem):
            wide_vectors()
            codes = np.empty(_FEW_SUB, np.int32)
            WY = cempty(x, _FEW_SUB)
            SH = cempty(x, _FEW_SUB)
            SS = cempty(x, _FEW_SUB)
            own = cempty(out, _FEW_SUB * _FEW_ITEM if total else 0)
            for k in range(i * _FEW_ITEM, min(nsub, (i + 1) * _FEW_ITEM)):
                r0 = k * _FEW_SUB
                n = min(_FEW_SUB, N - r0)
                for j in range(n):
                    y = at(lab, lb + (r0 + j) * lr)
                    ok = (y >= 0) & (y < C)
                    put(codes, j, np.int32(C) if y == ignore else (
                        np.int32(y) if ok else np.int32(C + 1)))
                    put(WY, j, at(w, y if ok else 0))
                bad, counted = _count_codes(codes, n, np.int32(C), at(bads, i), at(counts, i))
                put(bads, i, bad)
                put(counts, i, counted)
                X = crow(x, xb + r0 * C, n * C)
                O = crow(own, r0 - i * _FEW_SUB * _FEW_ITEM, n) if total else \
                    crow(out, ob + r0, n)
                for j in range(n):
                    code = at(codes, j)
                    m = cval(X, -np.inf)
                    for c in range(C):
                        m = fmax(m, load(X, j * C + c))
                    inf_max = (m == inf) | (m == -inf)    # NaN is not: its sum is NaN
                    sh = zero if inf_max else m
                    s = zero
                    xy = zero
                    for c in range(C):
                        v = load(X, j * C + c)
                        s += cexp_term(v - sh)
                        xy = v if code == c else xy
                    loss = diff_add(sh, xy, clog(s))
                    loss = loss * at(WY, j)
                    loss = zero if code == C else loss
                    put(O, j, nan if code > C else loss)
                    put(SH, j, sh)
                    put(SS, j, flag if inf_max else s)
                here = 0
                for j in range(n):
                    here += 1 if at(SS, j) == flag else 0
                put(flagged, i, at(flagged, i) + here)
                if mode == _FWD or total:
                    continue
                SC = srow(sc, sb + r0 * sr, n, sr)
                G = X if mode == _INPLACE else crow(g, gb + r0 * C, n * C)
                if here:   # flagged rows keep their logits for _few_fixup_kernel
                    if mode == _GRAD:
                        G[:] = X
                    _few_grad_pass(G, n, C, codes, WY, SH, SS, SC, nonpos)
                else:
                    _few_grad_flat(X, G, n, C, codes, WY, SH, SS, SC, mode, nonpos)
            if total:
                i0 = i * _FEW_SUB * _FEW_ITEM
                put(sums, i, _sum_run(own, min(_FEW_SUB * _FEW_ITEM, N - i0), 0.0))
        return flagged.sum(), bads.sum(), counts.sum(), _sum_run(sums, nitem, 0.0)

    return kernel


@hjit()
def _few_label(lab, lb, lr, r, C, ignore):
    """Row r's label code as the loss kernel makes it (C ignored, C + 1 out of range)."""
    y = at(lab, lb + r * lr)
    return C if y == ignore else (y if 0 <= y < C else C + 1)


@jit()
def _few_fixup_kernel(x, xb, N, C, lab, lb, lr, w, ignore, out, ob, g, gb, sc, sb, sr, mode):
    """The rows with an infinite max, by the general row code (serial: a rare path)."""
    scratch = cempty(x, max(C, _BLOCK))   # _ce_row's exps
    for r in range(N):
        code = _few_label(lab, lb, lr, r, C, ignore)
        row = crow(x, xb + r * C, C)
        if code >= C:
            continue
        m = _row_max(row)
        if m != np.inf and m != -np.inf:
            continue
        grow = crow(g, gb + r * C, C if mode == _GRAD else 0)
        ebuf = compute_or(grow, scratch) if mode == _GRAD else scratch
        loss, _ = _ce_row(row, m, row, ebuf, grow, code, w, 0.0, 0.0, 0.0,
                          at(sc, sb + r * sr), mode)
        put(out, ob + r, loss)


def _few_classes(xb, xo, N, C, lb, lo, lr, w, ignore, ob, oo, gb, go, sb, so, sr, mode):
    """Cross-entropy (and gradient with mode _GRAD or _INPLACE) of N rows of C classes
    that are one run: x from xb[xo], labels lb[lo + r * lr], losses ob[oo + r], gradient
    gb[go], grad_scale sb[so + r * sr]. Returns (labels out of range, labels counted, the
    sum of the losses in mode _TOTAL, else 0.0); None in mode _TOTAL when a row has an
    infinite max (its fix-up needs the losses written: the caller runs the call again
    so)."""
    args = (xb, xo, N, lb, lo, lr, w, ignore, ob, oo, gb, go, sb, so, sr, mode)
    flagged, bad, counted, total = _few_loss_kernel(C)(*args)
    if flagged:
        if mode == _TOTAL:
            return None
        _few_fixup_kernel(xb, xo, N, C, *args[3:])
    return bad, counted, total


# ============================================================================ launchers

_NO_SCALE = np.zeros(1, np.float64)


def _weights(weight, C, dtype):
    """(w, W): the class weights as a flat buffer (ones when `weight` is empty, "no
    weight"), and their float64 sum (C without weight)."""
    if weight.size == 0:
        return np.ones(C, dtype), float(C)
    w = _flat(weight)[0]
    return w, float(np.sum(w, dtype=np.float64))


def _rows_per_chunk(n, C):
    """Rows per parallel work item: about 256k elements but at least _CHUNK_MIN_ROWS rows,
    and at least 4 items per thread. (Per-row results do not depend on it.)

    A work item's first row has no row before it to read its max ahead with (_exp_sums),
    so its max pass waits on memory: with 2 rows per item, a (1024, 128256) forward took
    1.13-1.18x as long on Zen 4 as with 32."""
    return max(1, min(n // (4 * numba.get_num_threads()),
                      max(_CHUNK_MIN_ROWS, 262144 // max(C, 1))))


def _rows(x, out, mode):
    P, Q, C = x.shape
    n = P * Q
    if n == 0 or (C == 0 and mode != _LSE):
        return
    if mode != _LSE and not _same_memory(out, x) and _overlaps(out, (x,)):
        tmp = np.empty(out.shape, out.dtype)
        _rows(x, tmp, mode)
        np.copyto(out, tmp)
        return
    xb, xs = _flat(x)
    ob, os = _flat(out)
    if mode == _LSE:
        os = os + (0,)
    _rows_kernel(xb, xs, P, Q, C, ob, os, mode, _rows_per_chunk(n, C))


def logsumexp(x, out, stream=None):
    """out[p, q] = logsumexp(x[p, q, :]) (PyTorch's conventions), in x's dtype."""
    _rows(x, out, _LSE)


def log_softmax(x, out, stream=None):
    """out = x - logsumexp(x) along the class axis, in x's dtype (out may be x itself)."""
    _rows(x, out, _LOG_SOFTMAX)


def softmax(x, out, stream=None):
    """out = exp(x - logsumexp(x)) along the class axis, in x's dtype (out may be x)."""
    _rows(x, out, _SOFTMAX)


def label_stats(labels, num_classes, ignore_index, weight, stream=None):
    """(first_bad, total): the first row whose label is outside [0, num_classes) and not
    ignore_index (-1 if none), and the float64 sum of weight[y] over the other non-ignored
    rows (their count without weight), summed over fixed blocks combined in order."""
    P, Q = labels.shape
    if P * Q == 0:
        return -1, 0.0
    lb, ls = _flat(labels)
    first, total = _label_stats_kernel(lb, ls, P, Q, int(num_classes), int(ignore_index),
                                       weight if weight.size == 0 else
                                       _weights(weight, int(num_classes), weight.dtype)[0])
    return int(first), float(total)


def label_total(labels, num_classes, ignore_index, weight, stream=None):
    """label_stats' total as a 1-element float64 array, without the bad-label report
    (unchecked calls: check=False; the GPU twin leaves it on the device, unsynchronised)."""
    return np.array([label_stats(labels, num_classes, ignore_index, weight)[1]])


def mean_rows(values, denominator, out, stream=None):
    """out[0] = sum(values) / denominator[0] (NaN when it is 0): sum_rows with the
    denominator a 1-element array (label_total's), bit for bit the checked call's mean."""
    d = float(denominator[0])
    sum_rows(values, 1.0 / d if d != 0 else math.nan, out)


def quotient_or_zero(value, denominator, stream=None):
    """value / denominator[0] (0 when it is 0) as a 1-element float64 array."""
    d = float(denominator[0])
    return np.array([value / d if d != 0 else 0.0])


def _grad_layout(x, xb, xs, grad_scale, grad_out):
    """(mode, g, gs, sc, ss): the gradient buffer/layout and grad_scale buffer/layout of a
    call; mode _FWD without grad_out, _INPLACE when grad_out is x itself, else _GRAD."""
    if grad_out is None:
        return _FWD, xb, xs, _NO_SCALE, (0, 0, 0)
    sb, ss = _flat(grad_scale)
    if _same_memory(grad_out, x):
        return _INPLACE, xb, xs, sb, ss
    gb, gs = _flat(grad_out)
    return _GRAD, gb, gs, sb, ss


def _via_temporary(grad_out, inputs) -> bool:
    """Whether grad_out overlaps an input without being x itself: the launcher then writes
    the gradient to a temporary and copies it (never the case for the public layer)."""
    return grad_out is not None and grad_out.size > 0 and not _same_memory(grad_out, inputs[0]) \
        and _overlaps(grad_out, inputs)


def _run_stride(P, Q, s0, s1):
    """The stride of row r = p*Q + q in a (P, Q) layout with strides (s0, s1) when the rows
    are one arithmetic run, else None (a single row: 0)."""
    if Q == 1:
        return s0 if P > 1 else 0
    return s1 if P == 1 or s0 == Q * s1 else None


def _one_run(P, Q, C, xs, ls, os, ss, gs):
    """(label stride, grad_scale stride) when the P * Q rows are one run: contiguous rows of
    C in x (and in the gradient gs unless None), losses one element apart, labels and
    grad_scale each one stride apart; else None."""
    def rows(st):
        return st is not None and (st == C or P * Q == 1)

    if xs[3] != 1 or not rows(_run_stride(P, Q, xs[1], xs[2])):
        return None
    if gs is not None and (gs[3] != 1 or not rows(_run_stride(P, Q, gs[1], gs[2]))):
        return None
    o = _run_stride(P, Q, os[1], os[2])
    lr = _run_stride(P, Q, ls[1], ls[2])
    sr = _run_stride(P, Q, ss[1], ss[2])
    if o is None or (o != 1 and P * Q > 1) or lr is None or sr is None:
        return None
    return lr, sr


def _may_count(C):
    """Whether a call of C classes may take a kernel that counts its labels (two classes,
    or few, with a gradient or not: see _route); False rules out both without looking at
    the layout."""
    return C <= max(2, _FEW_C, _FEW_GRAD_C)


def _route(x, xs, ls, os, ss, gs, smoothing, z_loss, mode):
    """Which kernel takes a cross_entropy call: "pair", "few" (with _one_run's strides),
    "small" or "rows"."""
    P, Q, C = x.shape
    if C == 2 and smoothing == 0 and z_loss == 0 and x.dtype != np.float64:
        # (float64's softplus is libm's scalar exp and log1p: the small-C kernel, with the
        # vectorised exp64/log64, is 2x faster there)
        return "pair", None
    if _takes_few(C, mode) and smoothing == 0 and z_loss == 0:
        run = _one_run(P, Q, C, xs, ls, os, ss, gs if mode == _GRAD else None)
        if run:
            return "few", run
    return ("small" if C <= _SMALL_C else "rows"), None


def cross_entropy(x, labels, weight, ignore_index, smoothing, z_loss, loss_out,
                  grad_scale=None, grad_out=None, stream=None, only_if_counting=False):
    """Per-row cross-entropy into loss_out; with grad_out, also the gradient (one pass).

    A label outside [0, C) that is not ignore_index (an unchecked call) gives its row a NaN
    loss and a NaN gradient; nothing is read or written outside the row.
    grad_out may be x itself (in-place gradient: its own compiled loops).
    Returns (labels out of range, labels counted) where the kernel counts them (two and
    few classes), else None; only_if_counting: run nothing where it would not count."""
    P, Q, C = x.shape
    if P * Q == 0 or (only_if_counting and not _may_count(C)):   # (no layout work then)
        return None
    if _via_temporary(grad_out, (x, labels, weight, loss_out)):
        tmp = np.empty(grad_out.shape, grad_out.dtype)
        counts = cross_entropy(x, labels, weight, ignore_index, smoothing, z_loss, loss_out,
                               grad_scale, tmp)
        np.copyto(grad_out, tmp)
        return counts
    xb, xs = _flat(x)
    lb, ls = _flat(labels)
    ob, os = _flat(loss_out)
    mode, gb, gs, sb, ss = _grad_layout(x, xb, xs, grad_scale, grad_out)
    path, run = _route(x, xs, ls, os, ss, gs, smoothing, z_loss, mode)
    if only_if_counting and path not in ("pair", "few"):
        return None
    w, W = _weights(weight, C, loss_out.dtype)
    if path == "pair":
        bad, counted, _ = _pair_kernel(xb, xs, P, Q, lb, ls, w, int(ignore_index), ob, os,
                                       gb, gs, sb, ss, mode)
        return int(bad), int(counted)
    if path == "few":
        bad, counted, _ = _few_classes(xb, xs[0], P * Q, C, lb, ls[0], run[0], w,
                                       int(ignore_index), ob, os[0], gb, gs[0], sb, ss[0],
                                       run[1], mode)
        return int(bad), int(counted)
    args = (xb, xs, P, Q, C, lb, ls, w, W, int(ignore_index), float(smoothing),
            float(z_loss), ob, os, gb, gs, sb, ss, mode)
    if path == "small":
        _small_kernel(*args)
    else:
        _ce_kernel(*args, _rows_per_chunk(P * Q, C))
    return None


def cross_entropy_counting(x, labels, weight, ignore_index, smoothing, z_loss, loss_out,
                           stream=None):
    """A forward `cross_entropy` whose kernel counts the labels as it codes them (two and
    few classes): runs it and returns (labels out of range, labels counted), so that the
    caller needs no pass of its own over the labels. None, having run nothing, for every
    other call. (CPU only: the GPU's label check stays a pass of its own.)"""
    return cross_entropy(x, labels, weight, ignore_index, smoothing, z_loss, loss_out,
                         only_if_counting=True)


def cross_entropy_counting_sum(x, labels, weight, ignore_index, smoothing, z_loss, dtype,
                               stream=None):
    """cross_entropy_counting for a "sum" or "mean": (labels out of range, labels counted,
    the float64 sum of the losses), the sum with the bits of sum_rows over the losses that
    cross_entropy writes, but none written (at (4_000_000, 2) their write and read back were
    a third of the memory traffic). `dtype` is the losses' (the compute dtype). None, having
    run nothing, where cross_entropy_counting would return None, or where the kernel's work
    items are not sum_rows' blocks (P > 1); None too, having run the kernel, where a row has
    an infinite max (the few-classes fix-up): the caller then takes the general path."""
    P, Q, C = x.shape
    if P != 1 or Q == 0 or not _may_count(C):
        return None
    xb, xs = _flat(x)
    lb, ls = _flat(labels)
    os = (0, Q, 1)   # the losses' layout, as for a new (1, Q) array
    path, run = _route(x, xs, ls, os, (0, 0, 0), None, smoothing, z_loss, _FWD)
    if path not in ("pair", "few"):
        return None
    w, _ = _weights(weight, C, dtype)
    none = np.empty(0, dtype)   # the losses' dtype for the kernels; never indexed
    if path == "pair":
        res = _pair_kernel(xb, xs, P, Q, lb, ls, w, int(ignore_index), none, os,
                           xb, xs, _NO_SCALE, (0, 0, 0), _TOTAL)
    else:
        res = _few_classes(xb, xs[0], Q, C, lb, ls[0], run[0], w, int(ignore_index),
                           none, 0, xb, xs[0], _NO_SCALE, 0, run[1], _TOTAL)
    return None if res is None else (int(res[0]), int(res[1]), float(res[2]))


def cross_entropy_soft(x, probs, weight, smoothing, z_loss, loss_out, grad_scale=None,
                       grad_out=None, stream=None):
    """Per-row soft-target cross-entropy into loss_out; with grad_out, also the gradient.

    grad_out may be x itself (in-place gradient)."""
    P, Q, C = x.shape
    if P * Q == 0:
        return
    if _via_temporary(grad_out, (x, probs, weight, loss_out)):
        tmp = np.empty(grad_out.shape, grad_out.dtype)
        cross_entropy_soft(x, probs, weight, smoothing, z_loss, loss_out, grad_scale, tmp)
        np.copyto(grad_out, tmp)
        return
    xb, xs = _flat(x)
    pb, ps = _flat(probs)
    ob, os = _flat(loss_out)
    mode, gb, gs, sb, ss = _grad_layout(x, xb, xs, grad_scale, grad_out)
    w, _ = _weights(weight, C, loss_out.dtype)
    _soft_kernel(xb, xs, P, Q, C, pb, ps, w, float(smoothing), float(z_loss), ob, os,
                 gb, gs, sb, ss, mode, _rows_per_chunk(P * Q, C))


def nll(logp, labels, weight, ignore_index, loss_out, stream=None):
    """loss_out[p, q] = -weight[y] * logp[p, q, y] (0 where y == ignore_index, NaN where y is
    outside [0, C): unchecked calls)."""
    P, Q, C = logp.shape
    if P * Q == 0:
        return
    xb, xs = _flat(logp)
    lb, ls = _flat(labels)
    ob, os = _flat(loss_out)
    w, _ = _weights(weight, C, loss_out.dtype)
    _nll_kernel(xb, xs, P, Q, C, lb, ls, w, int(ignore_index), ob, os)


def top1(x, labels, ignore_index, hits_out, stream=None):
    """hits_out[p, q] = 1 where labels[p, q] is numpy.argmax(x[p, q, :]), else 0 (0 for
    ignored rows and labels outside [0, C))."""
    P, Q, C = x.shape
    if P * Q == 0:
        return
    xb, xs = _flat(x)
    lb, ls = _flat(labels)
    hb, hs = _flat(hits_out)
    _top1_kernel(xb, xs, P, Q, C, lb, ls, int(ignore_index), hb, hs, _rows_per_chunk(P * Q, C))


def cross_entropy_top1(x, labels, weight, ignore_index, smoothing, z_loss, loss_out, hits_out,
                       stream=None):
    """cross_entropy (forward) into loss_out and top1 into hits_out. For C above the
    small-C kernel's range both come from one pass over each row (the row is read from
    memory once); small C runs the two kernels."""
    P, Q, C = x.shape
    if P * Q == 0:
        return
    if C <= _SMALL_C:   # the kernels cross_entropy takes, so that the losses are its bits
        cross_entropy(x, labels, weight, ignore_index, smoothing, z_loss, loss_out)
        top1(x, labels, ignore_index, hits_out)
        return
    xb, xs = _flat(x)
    lb, ls = _flat(labels)
    ob, os = _flat(loss_out)
    hb, hs = _flat(hits_out)
    w, W = _weights(weight, C, loss_out.dtype)
    _ce_top1_kernel(xb, xs, P, Q, C, lb, ls, w, W, int(ignore_index), float(smoothing),
                    float(z_loss), ob, os, hb, hs, _rows_per_chunk(P * Q, C))


def sum_rows(values, scale, out, stream=None):
    """out[0] = scale * sum(values) for a (P, Q) array, accumulated in float64 over fixed
    blocks of rows combined in order (bit-identical at every thread count)."""
    P, Q = values.shape
    total = 0.0
    if P * Q:
        vb, vs = _flat(values)
        total = _sum_kernel(vb, vs, P, Q)
    out[0] = scale * total
