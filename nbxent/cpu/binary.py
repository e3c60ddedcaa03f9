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
  `sum_out[0] = scale * sum(loss)`, the sum accumulated in float64 per fixed block of
  `_B` elements (block sums kept in float64, combined in block order), so it is
  bit-identical at every thread count.

Vectorisation: blocks are processed by helpers taking borrowed contiguous views (`crow`);
broadcast operands become contiguous views too: (1, period) operands read a periodic tile
(built once per call on the host, `np.resize`) at offset `base % period`; other ones are
filled per block into scratch in runs of equal values. float32 math is `exp32`/`log32`;
log1p is computed with Goldberg's trick `log(1 + u) * u / ((1 + u) - 1)` (compiled without
'reassoc', which would fold it away), accurate for tiny u.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from nbxent._config import hjit, pjit
from nbxent.cpu._math import STRICT, cempty, cexp, clog, crow, cval, load, store
from nbxent.cpu._math import borrow as _b

_B = 4096      # elements per block: the fixed partition of the reductions
_CB = 16       # blocks per parallel work item

_FWD, _GRAD, _INPLACE = 0, 1, 2


def _strict(**options):
    return hjit(fastmath=set(STRICT), **options)


# ============================================================================ element math


@_strict()
def _log1p(u, one):
    """log(1 + u), accurate for small |u| (u >= -1); NaN for NaN. `one`: 1 in u's dtype."""
    w = one + u
    d = w - one
    return u if d == one - one else clog(w) * (u / d)


@_strict()
def _clamp(v, lo):
    """max(v, lo), NaN kept."""
    return lo if v < lo else v


@_strict()
def _softplus_parts(xv, one):
    """(E, L) with E = exp(-|x|), L = log1p(E): softplus(x) = max(x, 0) + L."""
    ax = xv if xv > one - one else -xv
    e = cexp(-ax)
    return e, _log1p(e, one)


@_strict()
def _bce_value(pv, tv, lo, hi, one, m100):
    pv = lo if pv < lo else pv
    pv = hi if pv > hi else pv
    lp = _clamp(clog(pv), m100)
    l1 = _clamp(_log1p(-pv, one), m100)
    return -(tv * lp + (one - tv) * l1)


@hjit()
def _bce_block(p, t, w, lo, hi, out, n, write):
    one = cval(p, 1.0)
    m100 = cval(p, -100.0)
    total = 0.0
    if write:
        for i in range(n):
            out[i] = _bce_value(load(p, i), load(t, i), lo, hi, one, m100) * w[i]
    else:
        for i in range(n):
            total += _bce_value(load(p, i), load(t, i), lo, hi, one, m100) * w[i]
    return total


@_strict()
def _logits_loss(xv, tv, pwv, one, zero):
    e, lg = _softplus_parts(xv, one)
    sp_pos = (xv if xv > zero else zero) + lg     # softplus(x)
    sp_neg = (zero if xv > zero else -xv) + lg    # softplus(-x)
    a = pwv * tv
    b = one - tv
    la = zero if a == zero else a * sp_neg
    lb = zero if b == zero else b * sp_pos
    return la + lb, e, a, b


@_strict()
def _logits_grad(xv, e, a, b, one, zero):
    r = one / (one + e)
    hi = r          # sigmoid(|x|)
    lo = e * r      # sigmoid(-|x|)
    pos = xv >= zero
    s_x = hi if pos else lo
    s_nx = lo if pos else hi
    ga = zero if a == zero else a * s_nx
    gb = zero if b == zero else b * s_x
    return gb - ga


@hjit()
def _logits_block(x, t, w, pw, out, n, write):
    one = cval(x, 1.0)
    zero = cval(x, 0.0)
    total = 0.0
    if write:
        for i in range(n):
            loss, _e, _a, _b2 = _logits_loss(load(x, i), load(t, i), pw[i], one, zero)
            out[i] = loss * w[i]
    else:
        for i in range(n):
            loss, _e, _a, _b2 = _logits_loss(load(x, i), load(t, i), pw[i], one, zero)
            total += loss * w[i]
    return total


@hjit()
def _logits_grad_block(x, t, w, pw, out, n, write, g, gs):
    one = cval(x, 1.0)
    zero = cval(x, 0.0)
    total = 0.0
    for i in range(n):
        xv = load(x, i)
        loss, e, a, b = _logits_loss(xv, load(t, i), pw[i], one, zero)
        loss = loss * w[i]
        if write:
            out[i] = loss
        total += loss
        store(g, i, _logits_grad(xv, e, a, b, one, zero) * (w[i] * gs[i]))
    return total


@hjit()
def _logits_inplace_block(x, t, w, pw, out, n, write, gs):
    """As _logits_grad_block with the gradient written over x (no second array argument:
    LLVM's runtime alias check would fail and run scalar code)."""
    one = cval(x, 1.0)
    zero = cval(x, 0.0)
    total = 0.0
    for i in range(n):
        xv = load(x, i)
        loss, e, a, b = _logits_loss(xv, load(t, i), pw[i], one, zero)
        loss = loss * w[i]
        if write:
            out[i] = loss
        total += loss
        store(x, i, _logits_grad(xv, e, a, b, one, zero) * (w[i] * gs[i]))
    return total


@_strict()
def _focal_value(xv, tv, alpha, gamma, gmode, one, zero):
    e, lg = _softplus_parts(xv, one)
    sp_pos = (xv if xv > zero else zero) + lg
    sp_neg = (zero if xv > zero else -xv) + lg
    b = one - tv
    ce = (zero if tv == zero else tv * sp_neg) + (zero if b == zero else b * sp_pos)
    r = one / (one + e)
    pos = xv >= zero
    p = r if pos else e * r           # sigmoid(x)
    q = e * r if pos else r           # 1 - sigmoid(x)
    m = p * b + q * tv                # 1 - p_t
    if gmode == 1:
        f = m
    elif gmode == 2:
        f = m * m
    elif gmode == 3:
        f = cexp(gamma * clog(m))
    else:
        f = one
    loss = ce * f
    if alpha >= zero:
        loss = loss * (alpha * tv + (one - alpha) * b)
    return loss


@hjit()
def _focal_block(x, t, alpha, gamma, gmode, out, n, write):
    one = cval(x, 1.0)
    zero = cval(x, 0.0)
    total = 0.0
    if write:
        for i in range(n):
            out[i] = _focal_value(load(x, i), load(t, i), alpha, gamma, gmode, one, zero)
    else:
        for i in range(n):
            total += _focal_value(load(x, i), load(t, i), alpha, gamma, gmode, one, zero)
    return total


@hjit()
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
        v = buf[idx % period]
        for k in range(run):
            scratch[j + k] = v
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
