"""GPU launchers of the divergence family: the same launchers as nbxent/cpu/divergences.py
(see its docstring for the contract), on Numba device arrays.

Every kernel is one thread per row (grid-stride over rows r = p*Q + q), rows read in class
order, so results depend only on the row (deterministic; no atomics). That is the right
shape for small C and simulator-friendly; wide rows (C in the thousands) would want the
block-per-row shape of nbxent.gpu.softmax (not done yet). `prob_stats` writes per-row first
offending indices and reduces them with the softmax family's fixed-order min reduction.
Compute is in float32 for float16/float32 input, float64 for float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from nbxent.gpu import _reduce
from nbxent.gpu.softmax import _NO_BAD, _min_sum_chunks

_KERNELS = {}


def _ct(dtype):
    return float64 if np.dtype(dtype) == np.float64 else float32


def _kernels(ct):
    if ct in _KERNELS:
        return _KERNELS[ct]
    f = _reduce.row_functions(ct)
    online, split = f.online, f.split
    zero, one = ct(0), ct(1)
    neg_inf = ct(-math.inf)

    @cuda.jit(device=True)
    def log_(v):
        """log with log(0) = -inf and log(v < 0) = NaN spelled out (the simulator runs
        Python's math.log, which raises there)."""
        if v == zero:
            return neg_inf
        if v < zero:
            return ct(math.nan)
        return ct(math.log(v))

    @cuda.jit(device=True)
    def row_lse(x, p, q, n_cls):
        m = neg_inf
        s = zero
        for c in range(n_cls):
            m, s = online(m, s, ct(x[p, q, c]))
        return split(m, s)

    @cuda.jit
    def entropy_rows(a, out):
        n_q = a.shape[1]
        n_cls = a.shape[2]
        n_rows = a.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            acc = zero
            for c in range(n_cls):
                v = ct(a[p, q, c])
                if v != zero:
                    acc += v * log_(v)
            out[p, q] = zero - acc
            r += cuda.gridsize(1)

    @cuda.jit
    def entropy_logits_rows(x, out):
        n_q = x.shape[1]
        n_cls = x.shape[2]
        n_rows = x.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            base, rest = row_lse(x, p, q, n_cls)
            acc = zero
            for c in range(n_cls):
                lp = (ct(x[p, q, c]) - base) - rest
                e = ct(math.exp(lp))
                if e != zero:
                    acc += e * lp
            if n_cls == 0 or base != base:
                acc = ct(math.nan)
            out[p, q] = zero - acc
            r += cuda.gridsize(1)

    @cuda.jit
    def kl_rows(a, b, out):
        n_q = a.shape[1]
        n_cls = a.shape[2]
        n_rows = a.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            acc = zero
            for c in range(n_cls):
                pv = ct(a[p, q, c])
                qv = ct(b[p, q, c])
                if pv != zero:
                    acc += pv * (log_(pv) - log_(qv))
                elif qv != qv:
                    acc += qv
            out[p, q] = acc
            r += cuda.gridsize(1)

    @cuda.jit
    def kl_logits_rows(a, x, out):
        n_q = a.shape[1]
        n_cls = a.shape[2]
        n_rows = a.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            base, rest = row_lse(x, p, q, n_cls)
            acc = zero
            for c in range(n_cls):
                pv = ct(a[p, q, c])
                if pv != zero:
                    acc += pv * (log_(pv) - ((ct(x[p, q, c]) - base) - rest))
            if base != base:
                acc = base
            out[p, q] = acc
            r += cuda.gridsize(1)

    @cuda.jit
    def focal_rows(x, labels, w, ignore, gamma, loss):
        n_q = x.shape[1]
        n_cls = x.shape[2]
        n_rows = x.shape[0] * n_q
        has_w = w.shape[0] > 0
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            y = labels[p, q]
            if y == ignore:
                loss[p, q] = zero
            elif y < 0 or y >= n_cls:
                loss[p, q] = ct(math.nan)
            else:
                base, rest = row_lse(x, p, q, n_cls)
                nll = (base - ct(x[p, q, y])) + rest
                wy = w[y] if has_w else one
                if gamma == 0.0:
                    loss[p, q] = wy * nll
                else:
                    om = -math.expm1(-float64(nll))
                    if om < 0.0:
                        om = 0.0
                    loss[p, q] = wy * ct(math.pow(om, gamma)) * nll
            r += cuda.gridsize(1)

    @cuda.jit
    def log_loss_rows_k(probs, codes, lo, hi, sw, out):
        n_q = probs.shape[1]
        n_cls = probs.shape[2]
        n_rows = probs.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            y = codes[p, q]
            if n_cls == 1:
                v = ct(probs[p, q, 0])
                if y != 1:
                    v = one - v
            else:
                v = ct(probs[p, q, y])
            if v < lo:
                v = lo
            if v > hi:
                v = hi
            out[p, q] = sw[p, q] * -math.log(float64(v))
            r += cuda.gridsize(1)

    @cuda.jit
    def prob_rows(a, tol, bad, nan, unnorm):
        n_q = a.shape[1]
        n_cls = a.shape[2]
        n_rows = a.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            b = _NO_BAD
            nn = _NO_BAD
            s = 0.0
            for c in range(n_cls):
                v = ct(a[p, q, c])
                if b == _NO_BAD and (v < zero or v > one):
                    b = r * n_cls + c
                if nn == _NO_BAD and v != v:
                    nn = r * n_cls + c
                s += float64(v)
            bad[r] = b
            nan[r] = nn
            unnorm[r] = r if (tol >= 0.0 and nn == _NO_BAD and not abs(s - 1.0) <= tol) \
                else _NO_BAD
            r += cuda.gridsize(1)

    k = type("DivergenceKernels", (), {})()
    k.entropy_rows, k.entropy_logits_rows = entropy_rows, entropy_logits_rows
    k.kl_rows, k.kl_logits_rows, k.focal_rows = kl_rows, kl_logits_rows, focal_rows
    k.log_loss_rows, k.prob_rows = log_loss_rows_k, prob_rows
    _KERNELS[ct] = k
    return k


def _launch(kernel, x, args, stream):
    n_rows = int(x.shape[0]) * int(x.shape[1])
    if n_rows == 0:
        return
    # a block no wider than the rows need (at least a warp): tiny launches stay cheap
    nt = min(int(_reduce.THREADS_PER_BLOCK), max(32, 1 << (n_rows - 1).bit_length()))
    kernel[_reduce.grid_for(n_rows, nt), nt, _reduce.launch_stream(stream)](*args)


def _first(values, stream):
    """min of the 1-D int64 device array `values` (fixed-order reduction), -1 for _NO_BAD."""
    chunk, lanes = int(_reduce.REDUCE_CHUNK), int(_reduce.LANES)
    nt = _reduce.block_threads(lanes)
    dummy = cuda.device_array(values.shape[0], dtype=np.float64, stream=stream)
    blocks = values.shape[0]
    while True:
        n = blocks
        blocks = max(1, -(-n // chunk))
        out_i = cuda.device_array(blocks, dtype=np.int64, stream=stream)
        out_f = cuda.device_array(blocks, dtype=np.float64, stream=stream)
        _min_sum_chunks[blocks, nt, stream](values, dummy, chunk, lanes, out_i, out_f)
        values, dummy = out_i, out_f
        if blocks == 1:
            break
    v = int(values.copy_to_host(stream=stream)[0])
    return -1 if v == _NO_BAD else v


def prob_stats(a, sum_tol, stream=None):
    n_rows = int(a.shape[0]) * int(a.shape[1])
    if n_rows == 0 or int(a.shape[2]) == 0:
        return -1, -1, -1
    s = _reduce.launch_stream(stream)
    k = _kernels(_ct(a.dtype))
    bad = cuda.device_array(n_rows, dtype=np.int64, stream=s)
    nan = cuda.device_array(n_rows, dtype=np.int64, stream=s)
    unnorm = cuda.device_array(n_rows, dtype=np.int64, stream=s)
    _launch(k.prob_rows, a, (a, np.float64(sum_tol), bad, nan, unnorm), stream)
    res = (_first(bad, s), _first(nan, s), _first(unnorm, s) if sum_tol >= 0 else -1)
    if s:
        s.synchronize()
    return res


def entropy(p, out, stream=None):
    _launch(_kernels(_ct(p.dtype)).entropy_rows, p, (p, out), stream)


def entropy_logits(x, out, stream=None):
    _launch(_kernels(_ct(x.dtype)).entropy_logits_rows, x, (x, out), stream)


def kl_div(p, q, out, stream=None):
    _launch(_kernels(_ct(p.dtype)).kl_rows, p, (p, q, out), stream)


def kl_div_logits(p, x, out, stream=None):
    _launch(_kernels(_ct(x.dtype)).kl_logits_rows, p, (p, x, out), stream)


def focal(x, labels, alpha, ignore_index, gamma, loss_out, stream=None):
    _launch(_kernels(_ct(x.dtype)).focal_rows, x,
            (x, labels, alpha, np.int64(ignore_index), np.float64(gamma), loss_out), stream)


def log_loss_rows(probs, codes, eps, sample_weight, loss_out, stream=None):
    ct = _ct(probs.dtype)
    npct = np.float64 if ct is float64 else np.float32
    lo = npct(eps)
    _launch(_kernels(ct).log_loss_rows, probs,
            (probs, codes, lo, npct(1.0) - lo, sample_weight, loss_out), stream)
