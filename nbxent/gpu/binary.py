"""GPU launchers of the binary family: the contract of nbxent/cpu/binary.py on device arrays.

Same launchers and signatures as the CPU module (element arrays 1-D contiguous of length n;
broadcast operands as `(buf, (inner, period))`, value `buf[(i // inner) % period]`; loss_out
and/or sum_out; grad_out may be x itself). Kernels run on `stream`; only `range_check`
synchronises (it returns a host value).

One block per chunk of `_reduce.REDUCE_CHUNK` elements (grid-stride over chunks, the grid
capped at MAX_BLOCKS): lane `l` of a chunk takes elements `start + l, start + l + lanes,
...`, computes each loss (and gradient: each element is read and then written by one
thread, so an in-place gradient is safe), and accumulates them in float64; the lanes are
combined in `_reduce`'s fixed tree into one float64 partial per chunk, and the partials
summed by one more block in the same fixed-tree way. `lanes = _reduce.row_lanes(min(n, REDUCE_CHUNK))` depends on the
shape only: results are bit-identical at every THREADS_PER_BLOCK. No float atomics.

Compute is in float32 for float16/float32 input and float64 for float64, with the CPU
module's stable forms (log1p, softplus as max(z, 0) + log1p(exp(-|z|)), the two-term
gradient); CUDA's own exp/log/log1p.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int64

from nbxent.gpu import _reduce
from nbxent.gpu._reduce import MAX_LANES

_NO_BAD = np.iinfo(np.int64).max


def _compute_types(dtype):
    if np.dtype(dtype) == np.float64:
        return float64, np.float64
    return float32, np.float32


_KERNELS = {}


def _kernels(ct):
    if ct in _KERNELS:
        return _KERNELS[ct]
    zero, one, m100 = ct(0), ct(1), ct(-100)

    @cuda.jit(device=True)
    def clamp(v, lo):
        return lo if v < lo else v

    @cuda.jit(device=True)
    def bce_value(pv, tv, lo, hi):
        pv = lo if pv < lo else pv
        pv = hi if pv > hi else pv
        lp = m100
        if pv > zero:
            lp = clamp(ct(math.log(pv)), m100)
        elif pv != pv:
            lp = pv
        l1 = clamp(ct(math.log1p(-pv)) if pv < one else ct(-math.inf), m100)
        return -(tv * lp + (one - tv) * l1)

    @cuda.jit(device=True)
    def logits_terms(xv, tv, pwv):
        """(loss, E, a, b): loss = a softplus(-x) + b softplus(x), a = pw t, b = 1 - t,
        E = exp(-|x|); zero coefficients skip their term."""
        ax = xv if xv > zero else -xv
        e = ct(math.exp(-ax))
        lg = ct(math.log1p(e))
        sp_pos = (xv if xv > zero else zero) + lg
        sp_neg = (zero if xv > zero else -xv) + lg
        a = pwv * tv
        b = one - tv
        la = zero if a == zero else a * sp_neg
        lb = zero if b == zero else b * sp_pos
        return la + lb, e, a, b

    @cuda.jit(device=True)
    def sigmoids(xv, e):
        """(sigmoid(x), sigmoid(-x)) from E = exp(-|x|), without cancellation."""
        r = one / (one + e)
        if xv >= zero:
            return r, e * r
        return e * r, r

    @cuda.jit(device=True)
    def logits_grad(xv, e, a, b):
        s_x, s_nx = sigmoids(xv, e)
        ga = zero if a == zero else a * s_nx
        gb = zero if b == zero else b * s_x
        return gb - ga

    @cuda.jit(device=True)
    def focal_value(xv, tv, alpha, gamma, gmode):
        loss, e, _a, b = logits_terms(xv, tv, one)
        p, q = sigmoids(xv, e)
        m = p * b + q * tv
        f = one
        if gmode == 1:
            f = m
        elif gmode == 2:
            f = m * m
        elif gmode == 3:
            f = ct(math.pow(m, gamma))
        loss = loss * f
        if alpha >= zero:
            loss = loss * (alpha * tv + (one - alpha) * b)
        return loss

    @cuda.jit
    def bce_kernel(p, t, w, wi, wp, lo, hi, out, write, partials, chunk, lanes, n):
        sh = cuda.shared.array(MAX_LANES, float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        nchunks = (n + chunk - 1) // chunk
        c = cuda.blockIdx.x
        while c < nchunks:
            start = c * chunk
            stop = min(n, start + chunk)
            lane = tid
            while lane < lanes:
                acc = 0.0
                i = start + lane
                while i < stop:
                    v = bce_value(ct(p[i]), ct(t[i]), lo, hi) * w[(i // wi) % wp]
                    if write:
                        out[i] = v
                    acc += float64(v)
                    i += lanes
                sh[lane] = acc
                lane += nt
            total = _reduce.tree_sum(sh, lanes)
            if tid == 0:
                partials[c] = total
            c += cuda.gridDim.x

    @cuda.jit
    def logits_kernel(x, t, w, wi, wp, pw, pwi, pwp, out, write, partials, chunk, lanes, n,
                      g, gs, gsi, gsp, do_grad):
        sh = cuda.shared.array(MAX_LANES, float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        nchunks = (n + chunk - 1) // chunk
        c = cuda.blockIdx.x
        while c < nchunks:
            start = c * chunk
            stop = min(n, start + chunk)
            lane = tid
            while lane < lanes:
                acc = 0.0
                i = start + lane
                while i < stop:
                    xv = ct(x[i])
                    wv = w[(i // wi) % wp]
                    loss, e, a, b = logits_terms(xv, ct(t[i]), pw[(i // pwi) % pwp])
                    loss = loss * wv
                    if write:
                        out[i] = loss
                    acc += float64(loss)
                    if do_grad:
                        g[i] = logits_grad(xv, e, a, b) * (wv * gs[(i // gsi) % gsp])
                    i += lanes
                sh[lane] = acc
                lane += nt
            total = _reduce.tree_sum(sh, lanes)
            if tid == 0:
                partials[c] = total
            c += cuda.gridDim.x

    @cuda.jit
    def focal_kernel(x, t, alpha, gamma, gmode, out, write, partials, chunk, lanes, n):
        sh = cuda.shared.array(MAX_LANES, float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        nchunks = (n + chunk - 1) // chunk
        c = cuda.blockIdx.x
        while c < nchunks:
            start = c * chunk
            stop = min(n, start + chunk)
            lane = tid
            while lane < lanes:
                acc = 0.0
                i = start + lane
                while i < stop:
                    v = focal_value(ct(x[i]), ct(t[i]), alpha, gamma, gmode)
                    if write:
                        out[i] = v
                    acc += float64(v)
                    i += lanes
                sh[lane] = acc
                lane += nt
            total = _reduce.tree_sum(sh, lanes)
            if tid == 0:
                partials[c] = total
            c += cuda.gridDim.x

    @cuda.jit
    def range_kernel(a, firsts, chunk, lanes, n):
        si = cuda.shared.array(MAX_LANES, int64)
        sf = cuda.shared.array(MAX_LANES, float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        nchunks = (n + chunk - 1) // chunk
        c = cuda.blockIdx.x
        while c < nchunks:
            start = c * chunk
            stop = min(n, start + chunk)
            lane = tid
            while lane < lanes:
                first = int64(_NO_BAD)
                i = start + lane
                while i < stop:
                    v = ct(a[i])
                    if first == _NO_BAD and (v < zero or v > one):
                        first = i
                    i += lanes
                si[lane] = first
                sf[lane] = 0.0
                lane += nt
            mn, _s = _reduce.tree_min_sum(si, sf, lanes)
            if tid == 0:
                firsts[c] = mn
            c += cuda.gridDim.x

    @cuda.jit
    def sum_partials(partials, n, lanes, scale, out):
        """out[0] = scale * sum(partials[:n]): one block, lanes in the fixed tree."""
        sh = cuda.shared.array(MAX_LANES, float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid
        while lane < lanes:
            acc = 0.0
            i = lane
            while i < n:
                acc += partials[i]
                i += lanes
            sh[lane] = acc
            lane += nt
        total = _reduce.tree_sum(sh, lanes)
        if tid == 0:
            out[0] = scale * total

    ns = type("BinaryKernels", (), {})()
    ns.sum_partials = sum_partials
    ns.bce, ns.logits, ns.focal, ns.range = bce_kernel, logits_kernel, focal_kernel, range_kernel
    _KERNELS[ct] = ns
    return ns


# ============================================================================ launchers


def _launch(n):
    """(stream-independent) (chunk, lanes, threads, blocks, nchunks) for n elements."""
    chunk = int(_reduce.REDUCE_CHUNK)
    lanes = _reduce.row_lanes(max(1, min(n, chunk)))
    nt = _reduce.block_threads(lanes)
    nchunks = max(1, -(-n // chunk))
    return chunk, lanes, nt, _reduce.grid_for(nchunks), nchunks


def _dummy(dtype, stream):
    return cuda.device_array(1, dtype=np.dtype(dtype), stream=stream)


def _run(k, kernel, n, loss_out, sum_out, scale, npct, stream, make_args):
    stream = _reduce.launch_stream(stream)
    chunk, lanes, nt, blocks, nchunks = _launch(n)
    partials = cuda.device_array(nchunks, dtype=np.float64, stream=stream)
    write = loss_out is not None
    out = loss_out if write else _dummy(npct, stream)
    if n:
        kernel[blocks, nt, stream](*make_args(out, write, partials, chunk, lanes))
    if sum_out is not None:
        used = nchunks if n else 0
        lanes = _reduce.row_lanes(max(used, 1))
        k.sum_partials[1, _reduce.block_threads(lanes), stream](
            partials, used, lanes, np.float64(scale), sum_out)


def range_check(a, stream=None):
    """Flat index of the first element of the 1-D `a` outside [0, 1] (NaN is not), or -1.
    Synchronises; returns a host int."""
    n = int(a.shape[0])
    if n == 0:
        return -1
    k = _kernels(_compute_types(a.dtype)[0])
    s = _reduce.launch_stream(stream)
    chunk, lanes, nt, blocks, nchunks = _launch(n)
    firsts = cuda.device_array(nchunks, dtype=np.int64, stream=s)
    k.range[blocks, nt, s](a, firsts, chunk, lanes, n)
    host = firsts.copy_to_host(stream=s)
    if s:
        s.synchronize()
    bad = host[host != _NO_BAD]
    return int(bad[0]) if bad.size else -1


def bce(p, t, w, w_ip, eps, loss_out, sum_out, scale, stream=None):
    """Binary cross-entropy of probabilities (logs clamped at -100, p clipped to [eps, 1-eps])."""
    ct, npct = _compute_types(p.dtype)
    k = _kernels(ct)
    n = int(p.shape[0])
    wi, wp = (max(int(v), 1) for v in w_ip)
    _run(k, k.bce, n, loss_out, sum_out, scale, npct, stream,
         lambda out, write, partials, chunk, lanes: (
             p, t, w, wi, wp, npct(eps), npct(1.0 - eps), out, write, partials, chunk, lanes, n))


def bce_logits(x, t, w, w_ip, pw, pw_ip, loss_out, sum_out, scale, gs=None, gs_ip=(1, 1),
               grad_out=None, stream=None):
    """BCE with logits (and, with grad_out, its gradient in the same launch; grad_out may be x)."""
    ct, npct = _compute_types(x.dtype)
    k = _kernels(ct)
    n = int(x.shape[0])
    s = _reduce.launch_stream(stream)
    wi, wp = (max(int(v), 1) for v in w_ip)
    pwi, pwp = (max(int(v), 1) for v in pw_ip)
    do_grad = grad_out is not None
    if do_grad:
        g = grad_out
        gsi, gsp = (max(int(v), 1) for v in gs_ip)
    else:
        g, gs, gsi, gsp = _dummy(x.dtype, s), _dummy(npct, s), 1, 1
    _run(k, k.logits, n, loss_out, sum_out, scale, npct, stream,
         lambda out, write, partials, chunk, lanes: (
             x, t, w, wi, wp, pw, pwi, pwp, out, write, partials, chunk, lanes, n,
             g, gs, gsi, gsp, do_grad))


def _gamma_mode(gamma):
    return {0.0: 0, 1.0: 1, 2.0: 2}.get(float(gamma), 3)


def focal(x, t, alpha, gamma, loss_out, sum_out, scale, stream=None):
    """torchvision's sigmoid focal loss (alpha < 0: no alpha factor; 0**0 = 1)."""
    ct, npct = _compute_types(x.dtype)
    k = _kernels(ct)
    n = int(x.shape[0])
    gmode = _gamma_mode(gamma)
    _run(k, k.focal, n, loss_out, sum_out, scale, npct, stream,
         lambda out, write, partials, chunk, lanes: (
             x, t, npct(alpha), npct(gamma), gmode, out, write, partials, chunk, lanes, n))
