"""CPU kernels of the binary family (nbxent.binary): elementwise losses over flat buffers.

Launcher contract (identical in nbxent/gpu/binary.py; `stream` is ignored here):

- Element arrays (`p`, `x`, `t`, `loss_out`, `grad_out`) are 1-D, C-contiguous, of the same
  length n (the public layer hands over the C-ordered N-D arrays flattened). `t` has the
  dtype of `p`/`x`; float16 arrives as uint16 bit patterns. `loss_out` is in the compute
  dtype (float32 for float16/float32, float64 for float64), `grad_out` in the input dtype;
  `grad_out` may be `x` itself (in-place gradient).
- Broadcast operands (`w` weight, `pw` pos_weight, `gs` gradient scale) are 1-D contiguous
  buffers of the compute dtype with an `(inner, period)` pair of Python ints: the value for
  element i is `buf[(i // inner) % period]`. That covers a scalar (1, 1), a vector along
  the last axis (1, C), a per-row vector ((C, N)), a full array (1, n), and every
  broadcast whose non-1 axes are consecutive; the public layer materialises the others.
  Absent options are passed as the scalar 1 (so one compiled kernel serves every case).
- `loss_out` None: no per-element output; `sum_out` None: no reduction. Otherwise
  `sum_out[0] = scale * sum(loss)`: a fixed partition into blocks of `_B` elements, each
  block summed in the compute dtype over sub-blocks of `_S` elements (as the vector lanes
  of LLVM's reassociated loop) with the sub-block sums added in float64, the block sums
  combined in block order; so it is bit-identical at every thread count.

Vectorisation: blocks are processed by helpers taking borrowed contiguous views (`crow`);
broadcast operands become contiguous views too: (1, period) operands read a periodic tile
(built once per call on the host, `np.resize`) at offset `base % period`; other ones are
filled per block into scratch in runs of equal values. The element math is inlined into
the block loops, which call nothing per element, so that LLVM vectorises them (8 float32
lanes with AVX2: 5-8x PyTorch's CPU functions); float32 exp and log are specialised
polynomial forms below, float64 uses libm.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from nbxent._config import hjit, pjit
from nbxent.cpu._math import (STRICT, cempty, cexp, clog, crow, cval, exp_core, load, log_core,
                              log_reduce, store)
from nbxent.cpu._math import borrow as _b

_B = 4096      # elements per block: the fixed partition of the reductions
_S = 256       # elements per compute-dtype partial sum within a block
_CB = 16       # blocks per parallel work item

_FWD, _GRAD, _INPLACE = 0, 1, 2

_EXACT = STRICT - {"arcp"}
_OPTS = dict(fastmath=set(STRICT), error_model="numpy", inline="always",
             no_cfunc_wrapper=True)   # jit options of the dtype-dispatch overloads


def _exact(**options):
    """Float32 building blocks: no 'reassoc' (it would fold Cody-Waite's two constants and
    the `(1 + u) - 1` rounding-error terms) and no 'arcp' (LLVM turns a vector division
    with it into a reciprocal estimate plus one Newton step: 1/1 would not be exactly 1).
    Small, so LLVM inlines them into the block loops, keeping these per-instruction flags."""
    return hjit(fastmath=set(_EXACT), **options)


def _inl(**options):
    """Element math: inlined into the calling block loop at the Numba IR level (LLVM's own
    inliner gives up on bodies this size, and a call per element stops vectorisation). It
    compiles with the caller's flags: the block loops' `_EXACT`."""
    return hjit(inline="always", **options)


def _blockjit(**options):
    """Block loops: `_EXACT` flags, so that the inlined element math is not reassociated
    (with 'reassoc' LLVM rewrites `t a + (1 - t) b` as `t (a - b) + b`, which cancels);
    only the accumulations are reassociable, through `_radd`."""
    return hjit(fastmath=set(_EXACT), **options)


@hjit()
def _radd(acc, v):
    """acc + v with 'reassoc' (LLVM inlines it): the one operation of the block loops that
    may be reassociated, so that a sum vectorises (as lanes of partial sums)."""
    return acc + v


# ============================================================================ float32 math
# exp and log specialised to the arguments that occur here (no overflow, no negative
# arguments, no infinities after the reduction): fewer instructions per element than the
# general exp32/log32 of nbxent/cpu/_math.py, built on the same cores (exp_core,
# log_reduce, log_core), about 1 ulp.

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_ONEHALF = np.float32(1.5)
_TWO = np.float32(2.0)
_EXP_LO = np.float32(-103.97208)     # below: exp underflows to 0
_SQRT2 = np.float32(1.41421356237309505)


@_exact()
def _exp_neg(y):
    """exp(y) for y <= 0 (NaN gives NaN, -inf and y < -103.97 give 0): exp32 without the
    overflow branch."""
    v = exp_core(y)
    v = _F0 if y < _EXP_LO else v
    return y if y != y else v


@_exact()
def _log_unit(x, extra):
    """log(x) + extra for x in [0, 1] (subnormals exact; x = 0 gives about -104, which the
    callers clamp to -100; NaN gives finite garbage: callers select NaN themselves)."""
    f, k = log_reduce(x)
    return log_core(f, k, extra)


@_exact()
def _nan_or(x, v):
    """x where x is NaN, else v. A function of its own: an if-expression in the body of
    _bce_logs32 trips Numba's IR-inlining scope check (NumbaIRAssumptionWarning)."""
    return x if x != x else v


def _bce_logs32(pv):
    """(log p, log1p(-p)) for p in [0, 1]; each <= -100 where the value is -inf; NaN for
    NaN p (log p only: the loss takes it whatever t is). log1p(-p) = log(w) + c / w with
    w = 1 - p rounded and c = -p - (w - 1) its (exact) rounding error; c != 0 only for
    w > 1/2, where 1/w = 2 - w to within (1 - w)**2 (c is at most 2**-25).
    Not jitted itself: the float32 implementation of `bce_logs`, inlined into the block
    loop at the Numba IR level (as a separate function it is too big for LLVM's inliner,
    and a call per element stops vectorisation: 7x slower)."""
    lp = _nan_or(pv, _log_unit(pv, _F0))   # no branch here: see above
    u = -pv
    w = _F1 + u
    c = u - (w - _F1)
    return lp, _log_unit(w, c * (_TWO - w))


@_exact()
def _log1p_e(e, w, rw):
    """log1p(e) for e in [0, 1] (NaN for NaN) given w = 1 + e rounded and rw ~ 1/w:
    log(w) + c rw, c = e - (w - 1) the exact rounding error of w (|c| <= 2**-24, so rw
    needs few bits). e below 2**-24 gives e exactly."""
    c = e - (w - _F1)
    big = w > _SQRT2
    m = w * _HALF if big else w
    k = _F1 if big else _F0
    return log_core(m - _F1, k, c * rw)


@_exact()
def _softplus32(xv):
    """(E, L) = (exp(-|x|), log1p(E)): softplus(x) = max(x, 0) + L. 1/w is taken as the
    chord 1.5 - w/2 (within 12% on [1, 2]: enough for the correction term)."""
    ax = xv if xv > _F0 else -xv
    e = _exp_neg(-ax)
    w = _F1 + e
    return e, _log1p_e(e, w, _ONEHALF - _HALF * w)


@_exact()
def _softplus32_r(xv):
    """(E, L, R) as _softplus32 with R = 1 / (1 + E) = sigmoid(|x|), correctly rounded."""
    ax = xv if xv > _F0 else -xv
    e = _exp_neg(-ax)
    w = _F1 + e
    r = _F1 / w
    return e, _log1p_e(e, w, r), r


# ------------------------------------------------------------- dtype dispatch (float64: libm)


def bce_logs(pv):
    """(log p, log1p(-p)) in p's dtype (each <= -100 where the value is -inf)."""


def softplus_parts(xv):
    """(exp(-|x|), log1p(exp(-|x|)))."""


def softplus_parts_r(xv):
    """(exp(-|x|), log1p(exp(-|x|)), 1 / (1 + exp(-|x|)))."""


@overload(bce_logs, jit_options=_OPTS, inline="always")
def _ol_bce_logs(pv):
    if pv == types.float32:
        return _bce_logs32
    return lambda pv: (math.log(pv), math.log1p(-pv))


@overload(softplus_parts, jit_options=_OPTS)
def _ol_softplus_parts(xv):
    if xv == types.float32:
        return lambda xv: _softplus32(xv)

    def impl(xv):
        e = math.exp(-abs(xv))
        return e, math.log1p(e)
    return impl


@overload(softplus_parts_r, jit_options=_OPTS)
def _ol_softplus_parts_r(xv):
    if xv == types.float32:
        return lambda xv: _softplus32_r(xv)

    def impl(xv):
        e = math.exp(-abs(xv))
        return e, math.log1p(e), 1.0 / (1.0 + e)
    return impl


# ============================================================================ element math


@_inl()
def _bce_value(pv, tv, lo, hi, one, m100):
    pv = lo if pv < lo else pv
    pv = hi if pv > hi else pv
    lp, l1 = bce_logs(pv)
    lp = m100 if lp < m100 else lp          # max(., -100), NaN kept
    l1 = m100 if l1 < m100 else l1
    return -(tv * lp + (one - tv) * l1)


@_inl()
def _logits_terms(xv, tv, pwv, lg, one, zero):
    """(loss, a, b): loss = a softplus(-x) + b softplus(x), a = pw t, b = 1 - t; a zero
    coefficient skips its term (lg = log1p(exp(-|x|)))."""
    sp_pos = (xv if xv > zero else zero) + lg     # softplus(x)
    sp_neg = (zero if xv > zero else -xv) + lg    # softplus(-x)
    a = pwv * tv
    b = one - tv
    la = zero if a == zero else a * sp_neg
    lb = zero if b == zero else b * sp_pos
    return la + lb, a, b


@_inl()
def _logits_loss(xv, tv, pwv, one, zero):
    _e, lg = softplus_parts(xv)
    loss, _a, _b = _logits_terms(xv, tv, pwv, lg, one, zero)
    return loss


@_inl()
def _logits_loss_grad(xv, tv, pwv, one, zero):
    """(loss, gradient): the gradient `(1 - t) sigmoid(x) - pw t sigmoid(-x)`, each term
    skipped when its coefficient is 0."""
    e, lg, hi = softplus_parts_r(xv)    # hi = sigmoid(|x|)
    loss, a, b = _logits_terms(xv, tv, pwv, lg, one, zero)
    lo = e * hi                         # sigmoid(-|x|)
    pos = xv >= zero
    s_x = hi if pos else lo
    s_nx = lo if pos else hi
    ga = zero if a == zero else a * s_nx
    gb = zero if b == zero else b * s_x
    return loss, gb - ga


@_inl()
def _focal_value(xv, tv, alpha, gamma, gmode, use_alpha, one, zero):
    """ce (1 - p_t)**gamma alpha_t; `gmode` a constant at each call site (0: gamma = 0,
    1, 2: gamma = 1, 2, 3: exp(gamma log m)), so the branches fold away."""
    e, lg, r = softplus_parts_r(xv)
    sp_pos = (xv if xv > zero else zero) + lg
    sp_neg = (zero if xv > zero else -xv) + lg
    b = one - tv
    ce = (zero if tv == zero else tv * sp_neg) + (zero if b == zero else b * sp_pos)
    er = e * r
    pos = xv >= zero
    p = r if pos else er              # sigmoid(x)
    q = er if pos else r              # 1 - sigmoid(x)
    m = p * b + q * tv                # 1 - p_t
    if gmode == 1:
        f = m
    elif gmode == 2:
        f = m * m
    elif gmode == 3:
        f = cexp(gamma * clog(m))
    else:
        f = one
    at = alpha * tv + (one - alpha) * b
    return ce * f * (at if use_alpha else one)


# ============================================================================ block loops
# One fixed block of elements (contiguous borrowed views). Each loop is branch-free and
# calls nothing, so LLVM vectorises it (8 float32 lanes with AVX2). A block's sum is
# accumulated in the compute dtype over sub-blocks of _S elements (a float64 accumulator
# would hold the float32 loop to 4 lanes), the sub-block sums added in float64. Loops that
# write per-element losses ("none") compute no sum (none is asked for).


@_blockjit()
def _bce_block(p, t, w, lo, hi, out, n, write):
    one = cval(p, 1.0)
    zero = cval(p, 0.0)
    m100 = cval(p, -100.0)
    total = 0.0
    if write:
        for i in range(n):
            store(out, i, _bce_value(load(p, i), load(t, i), lo, hi, one, m100) * load(w, i))
    else:
        for s in range(0, n, _S):
            acc = zero
            for i in range(s, min(s + _S, n)):
                acc = _radd(acc, _bce_value(load(p, i), load(t, i), lo, hi, one, m100) * load(w, i))
            total += acc
    return total


@_blockjit()
def _logits_block(x, t, w, pw, out, n, write):
    one = cval(x, 1.0)
    zero = cval(x, 0.0)
    total = 0.0
    if write:
        for i in range(n):
            store(out, i, _logits_loss(load(x, i), load(t, i), load(pw, i), one, zero) * load(w, i))
    else:
        for s in range(0, n, _S):
            acc = zero
            for i in range(s, min(s + _S, n)):
                acc = _radd(acc, _logits_loss(load(x, i), load(t, i), load(pw, i), one, zero)
                            * load(w, i))
            total += acc
    return total


@_blockjit()
def _logits_grad_block(x, t, w, pw, out, n, write, g, gs):
    one = cval(x, 1.0)
    zero = cval(x, 0.0)
    total = 0.0
    if write:
        for i in range(n):
            xv = load(x, i)
            loss, grad = _logits_loss_grad(xv, load(t, i), load(pw, i), one, zero)
            store(out, i, loss * load(w, i))
            store(g, i, grad * (load(w, i) * load(gs, i)))
    else:
        for s in range(0, n, _S):
            acc = zero
            for i in range(s, min(s + _S, n)):
                xv = load(x, i)
                loss, grad = _logits_loss_grad(xv, load(t, i), load(pw, i), one, zero)
                acc = _radd(acc, loss * load(w, i))
                store(g, i, grad * (load(w, i) * load(gs, i)))
            total += acc
    return total


@_blockjit()
def _logits_inplace_block(x, t, w, pw, out, n, write, gs):
    """As _logits_grad_block with the gradient written over x (no second array argument:
    LLVM's runtime alias check would fail and run scalar code)."""
    one = cval(x, 1.0)
    zero = cval(x, 0.0)
    total = 0.0
    if write:
        for i in range(n):
            xv = load(x, i)
            loss, grad = _logits_loss_grad(xv, load(t, i), load(pw, i), one, zero)
            store(out, i, loss * load(w, i))
            store(x, i, grad * (load(w, i) * load(gs, i)))
    else:
        for s in range(0, n, _S):
            acc = zero
            for i in range(s, min(s + _S, n)):
                xv = load(x, i)
                loss, grad = _logits_loss_grad(xv, load(t, i), load(pw, i), one, zero)
                acc = _radd(acc, loss * load(w, i))
                store(x, i, grad * (load(w, i) * load(gs, i)))
            total += acc
    return total


@_inl()
def _focal_loop(x, t, alpha, gamma, gmode, use_alpha, out, n, write, one, zero):
    total = 0.0
    if write:
        for i in range(n):
            store(out, i, _focal_value(load(x, i), load(t, i), alpha, gamma, gmode,
                                       use_alpha, one, zero))
    else:
        for s in range(0, n, _S):
            acc = zero
            for i in range(s, min(s + _S, n)):
                acc = _radd(acc, _focal_value(load(x, i), load(t, i), alpha, gamma, gmode, use_alpha,
                                    one, zero))
            total += acc
    return total


@_blockjit()
def _focal_block(x, t, alpha, gamma, gmode, out, n, write):
    one = cval(x, 1.0)
    zero = cval(x, 0.0)
    use_alpha = alpha >= zero
    if gmode == 2:
        return _focal_loop(x, t, alpha, gamma, 2, use_alpha, out, n, write, one, zero)
    if gmode == 1:
        return _focal_loop(x, t, alpha, gamma, 1, use_alpha, out, n, write, one, zero)
    if gmode == 0:
        return _focal_loop(x, t, alpha, gamma, 0, use_alpha, out, n, write, one, zero)
    return _focal_loop(x, t, alpha, gamma, 3, use_alpha, out, n, write, one, zero)


@_blockjit()
def _range_block(a, n):
    """Index of the first element of `a` outside [0, 1] (NaN is not), or -1."""
    zero = cval(a, 0.0)
    one = cval(a, 1.0)
    nb = 0
    for i in range(n):
        v = load(a, i)
        nb += 1 if (v < zero) | (v > one) else 0
    if nb == 0:
        return -1
    for i in range(n):
        v = load(a, i)
        if v < zero or v > one:
            return i
    return -1


# ============================================================================ broadcast views


@hjit()
def _bview(buf, inner, period, base, n, scratch):
    """Contiguous view of the broadcast operand's values for elements [base, base + n)."""
    if inner == 1:
        return crow(buf, base % period, n)
    idx = base // inner
    pos = base - idx * inner
    j = 0
    while j < n:
        run = min(inner - pos, n - j)
        v = load(buf, idx % period)
        for k in range(run):
            store(scratch, j + k, v)
        j += run
        idx += 1
        pos = 0
    return crow(scratch, 0, n)


# ============================================================================ kernels


@pjit()
def _range_kernel(a, n, firsts):
    a = _b(a)
    nblk = (n + _B - 1) // _B
    for b in prange(nblk):
        base = b * _B
        m = min(_B, n - base)
        f = _range_block(crow(a, base, m), m)
        firsts[b] = -1 if f < 0 else base + f


@pjit()
def _bce_kernel(p, t, w, wi, wp, lo, hi, out, write, partials, n):
    p, t, w, out = _b(p), _b(t), _b(w), _b(out)
    nblk = (n + _B - 1) // _B
    nchunk = (nblk + _CB - 1) // _CB
    for k in prange(nchunk):
        scratch = cempty(p, _B if wi != 1 else 0)
        for b in range(k * _CB, min((k + 1) * _CB, nblk)):
            base = b * _B
            m = min(_B, n - base)
            wv = _bview(w, wi, wp, base, m, scratch)
            o = crow(out, base if write else 0, m if write else 0)
            partials[b] = _bce_block(crow(p, base, m), crow(t, base, m), wv, lo, hi, o, m,
                                     write)


@pjit()
def _logits_kernel(x, t, w, wi, wp, pw, pwi, pwp, out, write, partials, n,
                   g, gs, gsi, gsp, mode):
    x, t, w, pw, out, g, gs = _b(x), _b(t), _b(w), _b(pw), _b(out), _b(g), _b(gs)
    nblk = (n + _B - 1) // _B
    nchunk = (nblk + _CB - 1) // _CB
    for k in prange(nchunk):
        sw = cempty(x, _B if wi != 1 else 0)
        spw = cempty(x, _B if pwi != 1 else 0)
        sgs = cempty(x, _B if gsi != 1 else 0)
        for b in range(k * _CB, min((k + 1) * _CB, nblk)):
            base = b * _B
            m = min(_B, n - base)
            wv = _bview(w, wi, wp, base, m, sw)
            pwv = _bview(pw, pwi, pwp, base, m, spw)
            o = crow(out, base if write else 0, m if write else 0)
            xv = crow(x, base, m)
            tv = crow(t, base, m)
            if mode == _FWD:
                partials[b] = _logits_block(xv, tv, wv, pwv, o, m, write)
            else:
                gsv = _bview(gs, gsi, gsp, base, m, sgs)
                if mode == _INPLACE:
                    partials[b] = _logits_inplace_block(xv, tv, wv, pwv, o, m, write, gsv)
                else:
                    partials[b] = _logits_grad_block(xv, tv, wv, pwv, o, m, write,
                                                     crow(g, base, m), gsv)


@pjit()
def _focal_kernel(x, t, alpha, gamma, gmode, out, write, partials, n):
    x, t, out = _b(x), _b(t), _b(out)
    nblk = (n + _B - 1) // _B
    for b in prange(nblk):
        base = b * _B
        m = min(_B, n - base)
        o = crow(out, base if write else 0, m if write else 0)
        partials[b] = _focal_block(crow(x, base, m), crow(t, base, m), alpha, gamma, gmode,
                                   o, m, write)


# ============================================================================ launchers


def _compute(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _operand(buf, inner, period, n):
    """(buf, inner, period) ready for `_bview`: (1, period) operands become a periodic tile
    long enough for any block to read `_B` values from offset `base % period`."""
    inner, period = max(int(inner), 1), max(int(period), 1)
    if inner == 1 and period < n and buf.size < period + _B:
        reps = -(-(period + _B) // period)
        buf = np.resize(buf[:period], period * reps)
    return np.ascontiguousarray(buf), inner, period


def _blocks(n):
    return (n + _B - 1) // _B


def _finish(partials, sum_out, scale):
    if sum_out is not None:
        total = float(np.sum(partials)) if partials.size else 0.0
        sum_out[0] = scale * total


def _out_args(loss_out, dtype):
    if loss_out is None:
        return np.empty(0, _compute(dtype)), False
    return loss_out, True


def range_check(a, stream=None):
    """Flat index of the first element of the 1-D contiguous `a` outside [0, 1] (NaN is not
    outside), or -1. A host int."""
    n = a.size
    if n == 0:
        return -1
    firsts = np.empty(_blocks(n), np.int64)
    _range_kernel(a, n, firsts)
    bad = np.flatnonzero(firsts >= 0)
    return int(firsts[bad[0]]) if bad.size else -1


def bce(p, t, w, w_ip, eps, loss_out, sum_out, scale, stream=None):
    """Binary cross-entropy of probabilities p against targets t (PyTorch: logs clamped at
    -100), p first clipped to [eps, 1 - eps] (eps = 0: no clipping), times the weight."""
    n = p.size
    ct = _compute(p.dtype)
    out, write = _out_args(loss_out, p.dtype)
    partials = np.zeros(_blocks(n), np.float64)
    if n:
        w, wi, wp = _operand(w, *w_ip, n)
        _bce_kernel(p, t, w, wi, wp, ct(eps), ct(1.0 - eps), out, write, partials, n)
    _finish(partials, sum_out, scale)


def bce_logits(x, t, w, w_ip, pw, pw_ip, loss_out, sum_out, scale, gs=None, gs_ip=(1, 1),
               grad_out=None, stream=None):
    """BCE with logits, `pw t softplus(-x) + (1 - t) softplus(x)` times the weight; with
    grad_out, also the gradient `((1 - t) sigmoid(x) - pw t sigmoid(-x)) w gs` in the same
    pass (grad_out may be x itself)."""
    n = x.size
    ct = _compute(x.dtype)
    out, write = _out_args(loss_out, x.dtype)
    partials = np.zeros(_blocks(n), np.float64)
    if n:
        w, wi, wp = _operand(w, *w_ip, n)
        pw, pwi, pwp = _operand(pw, *pw_ip, n)
        if grad_out is None:
            mode, g, gs, gsi, gsp = _FWD, x, np.ones(1, ct), 1, 1
        else:
            gs, gsi, gsp = _operand(gs, *gs_ip, n)
            same = grad_out.__array_interface__["data"][0] == x.__array_interface__["data"][0]
            mode, g = (_INPLACE, x) if same else (_GRAD, grad_out)
        _logits_kernel(x, t, w, wi, wp, pw, pwi, pwp, out, write, partials, n,
                       g, gs, gsi, gsp, mode)
    _finish(partials, sum_out, scale)


def _gamma_mode(gamma):
    if gamma == 0.0:
        return 0
    if gamma == 1.0:
        return 1
    if gamma == 2.0:
        return 2
    return 3


def focal(x, t, alpha, gamma, loss_out, sum_out, scale, stream=None):
    """torchvision's sigmoid focal loss `ce (1 - p_t)**gamma alpha_t` (alpha < 0: no alpha
    term; 0**0 = 1), with `1 - p_t = p (1 - t) + (1 - p) t` computed without cancellation."""
    n = x.size
    ct = _compute(x.dtype)
    out, write = _out_args(loss_out, x.dtype)
    partials = np.zeros(_blocks(n), np.float64)
    if n:
        _focal_kernel(x, t, ct(alpha), ct(gamma), _gamma_mode(float(gamma)), out, write,
                      partials, n)
    _finish(partials, sum_out, scale)
