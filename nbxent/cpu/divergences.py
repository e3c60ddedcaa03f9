"""CPU kernels of the divergence family: focal loss, entropy, KL divergence, log loss.

Launchers (identical in nbxent/gpu/divergences.py; `stream` is ignored here):

    prob_stats(a, sum_tol, stream=None) -> (first_outside, first_nan, first_unnormalised)
        scan of a (P, Q, C) probability array: flat index r*C + c of the first element
        outside [0, 1] (NaN is not "outside"), of the first NaN, and the first row number r
        whose sum differs from 1 by more than sum_tol (not checked when sum_tol < 0); -1
        for none. Host Python ints (the GPU syncs).
    entropy(p, out, stream=None)              out[p, q] = -sum_c p_c log p_c (0 log 0 = 0)
    entropy_logits(x, out, stream=None)       out[p, q] = entropy of softmax(x[p, q, :])
    kl_div(p, q, out, stream=None)            out = sum_c p_c (log p_c - log q_c), terms with
                                              p_c == 0 count 0 (a NaN q_c still propagates)
    kl_div_logits(p, x, out, stream=None)     the same with log q = log_softmax(x)
    focal(x, labels, alpha, ignore_index, gamma, loss_out, stream=None)
        loss_out = -alpha[y] (1 - p_y)**gamma log p_y, p = softmax(x); 0 where ignored;
        labels must have been checked (softmax.label_stats). `alpha` as `weight` of the
        softmax family (length 0: every class 1).
    log_loss_rows(probs, codes, eps, sample_weight, loss_out, stream=None)
        loss_out[p, q] (float64) = sample_weight[p, q] * -log(clip(probs[p, q, y], eps,
        1 - eps)), y = codes[p, q] in [0, C); C == 1 means binary with the positive class
        in the only column: p_0 = 1 - v, p_1 = v (1 - v in the compute dtype).

Outputs are in the compute dtype (float32 for float16/float32, float64 for float64) except
log_loss_rows' float64. Per-row sums use compute-dtype vector partials over blocks of
`_BLOCK` elements accumulated in float64, as nbxent.cpu.softmax does; the row's work depends
only on the row (deterministic at any thread count). Reductions across rows are the softmax
family's `sum_rows`/`label_stats`.

Layout handling, chunking and the row helpers `_shift`/`_sumexp` are those of
nbxent.cpu.softmax (imported, not copied): flat buffers plus element offsets/strides, rows
with a class stride other than 1 gathered into contiguous scratch.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from nbxent._config import hjit, pjit
from nbxent.cpu._math import borrow as _b
from nbxent.cpu._math import (STRICT, at, cexp, clog, crow, cval, diff_add, load, put,
                              stack_scratch, wide_vectors)
from nbxent.cpu.softmax import (_BLOCK, _LANES, _flat, _next_pq, _rows_per_chunk,
                                _shift, _sumexp, _weights)
from nbxent.cpu.softmax import _gather as _gather_row

_ENT, _ENT_LOGITS, _KL, _KL_LOGITS = 0, 1, 2, 3


# ============================================================================ row helpers


@hjit(fastmath=False)
def _log_k_plus(k, s):
    """log(k + s) as log1p((k - 1) + s), without fast-math (which may reassociate it into
    log((k + s) - 1 + 1) or lower log1p to log(1 + v) and lose the small s)."""
    return math.log1p((k - 1.0) + s)


# The row sums below are compiled without 'reassoc' and kept in _LANES partial sums per
# block of _BLOCK elements, folded pairwise, blocks added in order in float64 (the order of
# nbxent.cpu.softmax._exp_sums): a row's result is then fixed by this source. With sums
# left to reassociation it was not: a kernel's copy of a row function, optimised again in
# the kernel's own module, rounded differently from the function's own compile, and which
# of the two a call ran depended on whether the kernel came from Numba's disk cache
# (entropy from logits, 2026-12-08 on an Intel Xeon: 349 of 3000 rows 1 ulp apart).

_div_lanes = stack_scratch(4 * _LANES)   # the partial sums of _make_row_sums' functions


@hjit(fastmath=set(STRICT), inline="always")
def _terms(kind, v, u, m, zero, one):
    """What element (v, u) of a row adds to each of its sums: for _ENT v = p_c (-p log p);
    for _ENT_LOGITS v = x_c (e, e where d < 0, 1 where d == 0, e d; d = x - m, e = exp(d));
    for _KL (p_c, q_c) (p (log p - log q)); for _KL_LOGITS (p_c, x_c) (e = exp(x - m),
    p (log p + m - x), p). Terms of p == 0 are 0; m is the row's shift."""
    if kind == _ENT:
        return (zero if v == zero else v * clog(v)), zero, zero, zero
    if kind == _ENT_LOGITS:
        d = v - m
        e = cexp(d)
        return e, (e if d < zero else zero), (one if d == zero else zero), \
            (zero if e == zero else e * d)
    if kind == _KL:
        return (zero * u if v == zero else v * (clog(v) - clog(u))), zero, zero, zero
    return cexp(u - m), (zero if v == zero else v * (clog(v) + (m - u))), v, zero


@hjit(fastmath=set(STRICT))
def _fold_lanes(S, o, k):
    """The sum of S[o:o + k] (k a power of two, at most _LANES) pairwise: lane l and lane
    l + h for h = k / 2, ..., 1, as nbxent.cpu.softmax._fold over its _LANES (a bound
    fixed at compile time there, which the tuned kernels' code depends on). Overwrites
    the lanes."""
    h = k // 2
    while h > 0:
        for l in range(o, o + h):
            put(S, l, at(S, l) + at(S, l + h))
        h //= 2
    return at(S, o)


@hjit(inline="always")
def _nsums(kind):
    """How many of _terms' four terms `kind` uses (the others are 0)."""
    return 4 if kind == _ENT_LOGITS else (3 if kind == _KL_LOGITS else 1)


@hjit(fastmath=set(STRICT), inline="always")
def _add_terms(kind, S, l, v, u, m, zero, one):
    """Adds the terms of element (v, u) to lane l of the partial sums in S (lane arrays
    of _LANES one after the other, as many as `kind` has sums)."""
    t0, t1, t2, t3 = _terms(kind, v, u, m, zero, one)
    put(S, l, at(S, l) + t0)
    if _nsums(kind) > 1:
        put(S, _LANES + l, at(S, _LANES + l) + t1)
        put(S, 2 * _LANES + l, at(S, 2 * _LANES + l) + t2)
    if _nsums(kind) > 3:
        put(S, 3 * _LANES + l, at(S, 3 * _LANES + l) + t3)


def _make_row_sums(kind):
    """`sums(a, b, m)`: the float64 sums of _terms over a row (a, b) of `kind`, in the
    order described above; a block shorter than _LANES puts element i in lane i and folds
    the least power of two of lanes that holds them (the other lanes would add exact
    zeros). (The closure holds an int: a closure over a jitted function would get a new
    disk-cache key in every process.)"""
    @hjit(fastmath=set(STRICT))
    def sums(a, b, m):
        wide_vectors()   # on an Intel Xeon 1.1-1.8x as fast on rows of 1000 classes or more
        n = a.size
        zero = cval(a, 0.0)
        one = cval(a, 1.0)
        S = _div_lanes(a)
        L = _LANES
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        nsums = _nsums(kind)
        for b0 in range(0, n, _BLOCK):
            nb = min(_BLOCK, n - b0)
            k = L
            if nb >= L:
                nv = nb - nb % L
                for l in range(nsums * L):
                    put(S, l, zero)
                for i in range(0, nv, L):
                    for l in range(L):
                        _add_terms(kind, S, l, load(a, b0 + i + l), load(b, b0 + i + l), m,
                                   zero, one)
                for i in range(nv, nb):   # the block's last nb % L elements
                    _add_terms(kind, S, i - nv, load(a, b0 + i), load(b, b0 + i), m, zero,
                               one)
            else:   # stored, not added to zeroed lanes: faster on rows of 10 and 20
                k = 1
                while k < nb:
                    k *= 2
                for i in range(k):
                    if i < nb:
                        t0, t1, t2, t3 = _terms(kind, load(a, b0 + i), load(b, b0 + i), m,
                                                zero, one)
                    else:
                        t0, t1, t2, t3 = zero, zero, zero, zero
                    put(S, i, t0)
                    if nsums > 1:
                        put(S, L + i, t1)
                        put(S, 2 * L + i, t2)
                    if nsums > 3:
                        put(S, 3 * L + i, t3)
            s0 += float(_fold_lanes(S, 0, k))
            if nsums > 1:
                s1 += float(_fold_lanes(S, L, k))
                s2 += float(_fold_lanes(S, 2 * L, k))
            if nsums > 3:
                s3 += float(_fold_lanes(S, 3 * L, k))
        return s0, s1, s2, s3

    return sums


_entropy_sums = _make_row_sums(_ENT)
_entropy_logits_sums = _make_row_sums(_ENT_LOGITS)
_kl_sums = _make_row_sums(_KL)
_kl_logits_sums = _make_row_sums(_KL_LOGITS)


@hjit()
def _entropy_row(row):
    """-sum p log p (float64); p == 0 terms count 0, NaN propagates."""
    total, _, _, _ = _entropy_sums(row, row, cval(row, 0.0))
    return 0.0 - total


@hjit()
def _entropy_logits_row(row):
    """H(softmax(row)) = log S - T / S with S = sum e_c, T = sum e_c d_c, d = x - m,
    e = exp(d) (terms with e_c == 0 count 0 in T, so -inf logits are fine). log S is taken
    as log1p(S - 1), S - 1 summed without the max's own 1s, so that a nearly one-hot row
    keeps its (tiny) entropy accurate."""
    s_all, s_low, k, t = _entropy_logits_sums(row, row, _shift(row))
    if k >= 1.0 and math.isfinite(s_all):
        lg = _log_k_plus(k, s_low)
    else:
        lg = math.log(s_all)
    return lg - t / s_all


@hjit()
def _kl_row(prow, qrow):
    total, _, _, _ = _kl_sums(prow, qrow, cval(prow, 0.0))
    return total


@hjit()
def _kl_logits_row(prow, row):
    """sum p (log p - (x - lse)) = A + P log S with A = sum_{p>0} p (log p + m - x),
    P = sum p, S = sum exp(x - m)."""
    s, a, ps, _ = _kl_logits_sums(prow, row, _shift(row))
    if ps == 0.0:
        return a + 0.0 * s   # all p == 0: 0 (NaN if the logits hold NaN)
    return a + ps * math.log(s)


@hjit()
def _focal_row(row, y, wy, gamma):
    m = _shift(row)
    lg = math.log(_sumexp(row, m))
    nll = diff_add(float(m), float(load(row, y)), lg)   # lse - x_y = -log p_y
    if gamma == 0.0:
        return wy * nll
    om = -math.expm1(-nll)                             # 1 - p_y, accurate near p_y = 1
    om = 0.0 if om < 0.0 else om
    return wy * om ** gamma * nll


# ============================================================================ kernels


@hjit()
def _pair_chunk(a, as_, Q, C, b, bs, out, os, mode, r0, r1):
    """Rows r0..r1 of a per-row function of one (P, Q, C) array `a` (modes _ENT,
    _ENT_LOGITS) or of two (`a` = p and `b` = q or the logits: _KL, _KL_LOGITS)."""
    p = r0 // Q
    q = r0 - p * Q
    two = mode == _KL or mode == _KL_LOGITS
    strided = as_[3] != 1 or (two and bs[3] != 1)
    ta = np.empty(C if strided else 0, a.dtype)
    tb = np.empty(C if strided and two else 0, b.dtype)
    for _ in range(r0, r1):
        ab = as_[0] + p * as_[1] + q * as_[2]
        row = _gather_row(a, ab, C, as_[3], ta) if strided else crow(a, ab, C)
        if mode == _ENT:
            v = _entropy_row(row)
        elif mode == _ENT_LOGITS:
            v = _entropy_logits_row(row)
        else:
            bb = bs[0] + p * bs[1] + q * bs[2]
            row2 = _gather_row(b, bb, C, bs[3], tb) if strided else crow(b, bb, C)
            if mode == _KL:
                v = _kl_row(row, row2)
            else:
                v = _kl_logits_row(row, row2)
        out[os[0] + p * os[1] + q * os[2]] = v
        p, q = _next_pq(p, q, Q)


@pjit()
def _pair_kernel(a, as_, P, Q, C, b, bs, out, os, mode, rpc):
    a, b, out = _b(a), _b(b), _b(out)
    n = P * Q
    for k in prange((n + rpc - 1) // rpc):
        _pair_chunk(a, as_, Q, C, b, bs, out, os, mode, k * rpc, min(n, (k + 1) * rpc))


@hjit()
def _focal_chunk(x, xs, Q, C, lab, ls, w, ignore, gamma, out, os, r0, r1):
    p = r0 // Q
    q = r0 - p * Q
    strided = xs[3] != 1
    tx = np.empty(C if strided else 0, x.dtype)
    for _ in range(r0, r1):
        y = lab[ls[0] + p * ls[1] + q * ls[2]]
        loss = 0.0
        if y != ignore:
            b = xs[0] + p * xs[1] + q * xs[2]
            row = _gather_row(x, b, C, xs[3], tx) if strided else crow(x, b, C)
            loss = _focal_row(row, y, float(w[y]), gamma)
        out[os[0] + p * os[1] + q * os[2]] = loss
        p, q = _next_pq(p, q, Q)


@pjit()
def _focal_kernel(x, xs, P, Q, C, lab, ls, w, ignore, gamma, out, os, rpc):
    x, lab, w, out = _b(x), _b(lab), _b(w), _b(out)
    n = P * Q
    for k in prange((n + rpc - 1) // rpc):
        _focal_chunk(x, xs, Q, C, lab, ls, w, ignore, gamma, out, os, k * rpc,
                     min(n, (k + 1) * rpc))


@hjit()
def _log_loss_chunk(pr, ps, Q, C, lab, ls, lo, hi, sw, ss, out, os, r0, r1):
    p = r0 // Q
    q = r0 - p * Q
    one = cval(pr, 1.0)
    for _ in range(r0, r1):
        y = lab[ls[0] + p * ls[1] + q * ls[2]]
        b = ps[0] + p * ps[1] + q * ps[2]
        if C == 1:
            v = load(pr, b)
            v = v if y == 1 else one - v
        else:
            v = load(pr, b + y * ps[3])
        v = lo if v < lo else v
        v = hi if v > hi else v
        out[os[0] + p * os[1] + q * os[2]] = sw[ss[0] + p * ss[1] + q * ss[2]] * -math.log(float(v))
        p, q = _next_pq(p, q, Q)


@pjit()
def _log_loss_kernel(pr, ps, P, Q, C, lab, ls, lo, hi, sw, ss, out, os, rpc):
    pr, lab, sw, out = _b(pr), _b(lab), _b(sw), _b(out)
    n = P * Q
    for k in prange((n + rpc - 1) // rpc):
        _log_loss_chunk(pr, ps, Q, C, lab, ls, lo, hi, sw, ss, out, os, k * rpc,
                        min(n, (k + 1) * rpc))


@hjit()
def _prob_row(row, tol):
    """(first column outside [0, 1] or -1, first NaN column or -1, whether |sum - 1| > tol
    (tol >= 0 only))."""
    n = row.size
    zero = cval(row, 0.0)
    one = cval(row, 1.0)
    nb = 0
    nn = 0
    total = 0.0
    for b0 in range(0, n, _BLOCK):
        acc = zero
        for c in range(b0, min(b0 + _BLOCK, n)):
            v = load(row, c)
            nb += 1 if (v < zero) | (v > one) else 0
            nn += 1 if v != v else 0
            acc += v
        total += acc
    bad = -1
    nan = -1
    if nb > 0 or nn > 0:
        for c in range(n):
            v = load(row, c)
            if bad < 0 and (v < zero or v > one):
                bad = c
            if nan < 0 and v != v:
                nan = c
    unnorm = tol >= 0.0 and nn == 0 and not abs(total - 1.0) <= tol
    return bad, nan, unnorm


@hjit()
def _prob_chunk(a, as_, Q, C, tol, r0, r1):
    p = r0 // Q
    q = r0 - p * Q
    strided = as_[3] != 1
    ta = np.empty(C if strided else 0, a.dtype)
    bad = -1
    nan = -1
    unnorm = -1
    for r in range(r0, r1):
        b = as_[0] + p * as_[1] + q * as_[2]
        row = _gather_row(a, b, C, as_[3], ta) if strided else crow(a, b, C)
        cb, cn, un = _prob_row(row, tol)
        if bad < 0 and cb >= 0:
            bad = r * C + cb
        if nan < 0 and cn >= 0:
            nan = r * C + cn
        if unnorm < 0 and un:
            unnorm = r
        p, q = _next_pq(p, q, Q)
    return bad, nan, unnorm


@pjit()
def _prob_kernel(a, as_, P, Q, C, tol, rpc):
    a = _b(a)
    n = P * Q
    nchunk = (n + rpc - 1) // rpc
    res = np.empty((nchunk, 3), np.int64)
    for k in prange(nchunk):
        res[k, 0], res[k, 1], res[k, 2] = _prob_chunk(a, as_, Q, C, tol, k * rpc,
                                                      min(n, (k + 1) * rpc))
    first = np.full(3, -1, np.int64)
    for k in range(nchunk):
        for j in range(3):
            if first[j] < 0 and res[k, j] >= 0:
                first[j] = res[k, j]
    return first[0], first[1], first[2]


# ============================================================================ launchers


def prob_stats(a, sum_tol, stream=None):
    """(first_outside, first_nan, first_unnormalised) of the (P, Q, C) array `a`: flat
    indices r*C + c of the first element outside [0, 1] and of the first NaN, and the first
    row r whose sum is not within sum_tol of 1 (unchecked when sum_tol < 0, and for rows
    holding NaN); -1 for none."""
    P, Q, C = a.shape
    if P * Q == 0 or C == 0:
        return -1, -1, -1
    ab, as_ = _flat(a)
    res = _prob_kernel(ab, as_, P, Q, C, float(sum_tol), _rows_per_chunk(P * Q, C))
    return int(res[0]), int(res[1]), int(res[2])


def _pair(a, b, out, mode):
    P, Q, C = a.shape
    if P * Q == 0:
        return
    ab, as_ = _flat(a)
    if b is None:
        bb, bs = ab, as_
    else:
        bb, bs = _flat(b)
    ob, os = _flat(out)
    _pair_kernel(ab, as_, P, Q, C, bb, bs, ob, os, mode, _rows_per_chunk(P * Q, C))


def entropy(p, out, stream=None):
    """out[p, q] = -sum_c p_c log p_c (terms with p_c == 0 count 0), compute dtype."""
    _pair(p, None, out, _ENT)


def entropy_logits(x, out, stream=None):
    """out[p, q] = entropy of softmax(x[p, q, :]); NaN for rows with NaN, all -inf or +inf."""
    _pair(x, None, out, _ENT_LOGITS)


def kl_div(p, q, out, stream=None):
    """out[p, q] = sum_c p_c (log p_c - log q_c); 0 for p_c == 0, +inf for p_c > 0 = q_c."""
    _pair(p, q, out, _KL)


def kl_div_logits(p, x, out, stream=None):
    """out[p, q] = sum_c p_c (log p_c - log_softmax(x)_c), p_c == 0 terms counting 0."""
    _pair(p, x, out, _KL_LOGITS)


def focal(x, labels, alpha, ignore_index, gamma, loss_out, stream=None):
    """loss_out[p, q] = -alpha[y] (1 - p_y)**gamma log p_y (0 where y == ignore_index)."""
    P, Q, C = x.shape
    if P * Q == 0:
        return
    xb, xs = _flat(x)
    lb, ls = _flat(labels)
    ob, os = _flat(loss_out)
    w, _ = _weights(alpha, C, loss_out.dtype)
    _focal_kernel(xb, xs, P, Q, C, lb, ls, w, int(ignore_index), float(gamma), ob, os,
                  _rows_per_chunk(P * Q, C))


def log_loss_rows(probs, codes, eps, sample_weight, loss_out, stream=None):
    """loss_out[p, q] = sample_weight[p, q] * -log(clip(probs[p, q, codes[p, q]], eps,
    1 - eps)) in float64 (binary when C == 1: see the module docstring)."""
    P, Q, C = probs.shape
    if P * Q == 0:
        return
    pb, ps = _flat(probs)
    lb, ls = _flat(codes)
    sb, ss = _flat(sample_weight)
    ob, os = _flat(loss_out)
    ct = np.float64 if probs.dtype == np.float64 else np.float32
    lo = ct(eps)
    hi = ct(1.0) - lo
    _log_loss_kernel(pb, ps, P, Q, C, lb, ls, lo, hi, sb, ss, ob, os,
                     max(1, _rows_per_chunk(P * Q, 64)))
