"""GPU launchers of the softmax family: the contract of docs/kernels.md, on Numba device arrays.

Arguments are the canonical views (x: (P, Q, C), per-row arrays (P, Q), any strides, e.g.
from `nbxent.gpu._arrays.strided_view`); kernels run on `stream` (None: the default stream)
and nothing is synchronised except in `label_stats`, which returns host values.

Two kernel shapes, chosen by the number of classes C (`_reduce.SMALL_C`):

- C <= SMALL_C: one thread per row, rows in sequence within the thread (grid-stride).
- wider rows: one block per row (grid-stride over rows). Pass 1 reads the row once with an
  online max/sum-of-exp per lane and reduces the lanes in a fixed tree (`_reduce`); pass 2,
  when there is a per-element output, reads the row again and writes it. Every read that
  the loss needs happens in pass 1, before the barrier that ends it, and pass 2 has each
  element read and then written by one thread: a gradient written over x is correct.

Compute is in float32 for float16/float32 input, float64 for float64; outputs are converted
on store (round to nearest even). lse is kept as (max, log sum exp(x - max)) and x - lse is
computed as (x - max) - log(...), as PyTorch does, so rows of huge logits (1e30) stay exact. Labels outside [0, C) that are not ignore_index (which
`label_stats` reports before any other launcher runs) give NaN losses and gradient rows,
never an out-of-bounds read. Results do not depend on THREADS_PER_BLOCK or scheduling; they
do depend on the path (C vs SMALL_C) and on LANES, both fixed for a given shape.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int64
from numba.cuda import libdevice

from nbxent.gpu import _reduce
from nbxent.gpu._arrays import strided_view
from nbxent.gpu._reduce import MAX_LANES

_NO_BAD = np.iinfo(np.int64).max
#: elements each thread loads before using any, in the block-per-row kernels' loops
UNROLL = 8


def _compute_types(dtype):
    """(numba type, NumPy scalar type) of the compute dtype for input `dtype`."""
    if np.dtype(dtype) == np.float64:
        return float64, np.float64
    return float32, np.float32


_KERNELS = {}


def _fast_exp(ct):
    """exp for the hot loops: float32 `__nv_fast_expf` (ex2.approx of x*log2(e)) on a real
    GPU. Its error grows with |x| (about |x| * 6e-8 relative), but the terms with a large
    |x - max| are exponentially small in a sum of exp(x - max), so a row's sum stays within
    a few 1e-7 relative; the precise expf made these kernels compute-bound. float64, and
    the simulator (whose fast_expf stub returns NaN), use math.exp."""
    if ct == float32 and not _reduce.SIMULATOR:
        return libdevice.fast_expf
    return math.exp


def _kernels(ct):
    """The kernels of this family in compute type `ct` (built once per type, compiled lazily
    per argument types)."""
    if ct in _KERNELS:
        return _KERNELS[ct]
    f = _reduce.row_functions(ct)
    fexp = _fast_exp(ct)
    online, split, finish, tree_ms_ab = f.online, f.split, f.finish, f.tree_ms_ab
    zero, one, two = ct(0), ct(1), ct(2)
    neg_inf, nan = ct(-math.inf), ct(math.nan)

    # ------------------------------------------------------------------ shared helpers

    @cuda.jit(device=True)
    def ref_value(x, p, q, n_cls):
        """A per-row shift for sums of x: x[p, q, 0] if finite, else 0 (keeps W*lse - sum(w*x)
        free of cancellation when all logits share a large offset)."""
        r = zero
        if n_cls > 0:
            v = ct(x[p, q, 0])
            if math.isfinite(v):
                r = v
        return r

    @cuda.jit(device=True)
    def fold_chunk(x, p, q, c, lanes, n_cls, m, s):
        """Add elements c, c + lanes, ..., c + (UNROLL-1)*lanes (those < n_cls) to the online
        state (m, s) in one step: all loads issued before the first use (memory-level
        parallelism), one rescale per chunk. Same semantics as `online` element by element:
        a NaN makes s NaN; an infinite max leaves s to mean nothing (but a NaN still shows)."""
        vals = cuda.local.array(UNROLL, ct)
        mc = m
        for j in range(UNROLL):
            cj = c + j * lanes
            v = ct(x[p, q, cj]) if cj < n_cls else neg_inf
            vals[j] = v
            if v > mc:
                mc = v
        if math.isfinite(mc):
            acc = zero
            for j in range(UNROLL):
                acc += ct(fexp(vals[j] - mc))
            s = s * ct(fexp(m - mc)) + acc
        else:
            for j in range(UNROLL):
                if vals[j] != vals[j]:
                    s = vals[j]
        return mc, s

    @cuda.jit(device=True)
    def load_chunk(x, p, q, c, step, n_cls, vals):
        """vals[j] = x[p, q, c + j*step] for the UNROLL chunk (0 past the row's end): every
        load issued before any use, and before the caller's stores (which may alias x)."""
        for j in range(UNROLL):
            cj = c + j * step
            vals[j] = ct(x[p, q, cj]) if cj < n_cls else zero

    @cuda.jit(device=True)
    def row_state_block(x, p, q, n_cls, lanes, sm, ss):
        """The row's (m, s), lanes reduced in the fixed tree (all threads of the block)."""
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid
        while lane < lanes:
            m = neg_inf
            s = zero
            c = lane
            while c < n_cls:
                m, s = fold_chunk(x, p, q, c, lanes, n_cls, m, s)
                c += lanes * UNROLL
            sm[lane] = m
            ss[lane] = s
            lane += nt
        m, s, _a, _b = tree_ms_ab(sm, ss, sm, ss, lanes, False)
        return m, s

    # lse enters as (base, rest) from `split`: lse - v is computed as (base - v) + rest.

    @cuda.jit(device=True)
    def hard_loss(base, rest, xy, wy, swx, wsum, ref, om_eps, eps_c, eps_on, z, z_on):
        loss = om_eps * wy * ((base - xy) + rest)
        if eps_on:
            loss += eps_c * (wsum * ((base - ref) + rest) - swx)
        if z_on:
            lse = base + rest
            loss += z * wy * (lse * lse)
        return loss

    @cuda.jit(device=True)
    def hard_coef(lse, wy, wsum, om_eps, eps_c, eps_on, z, z_on):
        """A of the contract: grad_c = s * (p_c A - (1-eps) w_y [c == y] - (eps/C) w_c)."""
        a = om_eps * wy
        if eps_on:
            a += eps_c * wsum
        if z_on:
            a += two * z * wy * lse
        return a

    @cuda.jit(device=True)
    def hard_grad(v, base, rest, a, is_y, ayw, eps_c, eps_on, wc):
        g = ct(fexp((v - base) - rest)) * a
        if is_y:
            g -= ayw
        if eps_on:
            g -= eps_c * wc
        return g

    @cuda.jit(device=True)
    def soft_loss(base, rest, swt, swtx, ref, z, z_on):
        """sum_c w_c t'_c (lse - x_c) over t'_c != 0 (shifted by ref), + z lse^2."""
        loss = zero
        if swt != zero:
            loss = ((base - ref) + rest) * swt
        loss -= swtx
        if z_on:
            lse = base + rest
            loss += z * (lse * lse)
        return loss

    # ------------------------------------------------------------------ logsumexp

    @cuda.jit
    def lse_small(x, out):
        n_q = x.shape[1]
        n_cls = x.shape[2]
        n_rows = x.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            m = neg_inf
            s = zero
            for c in range(n_cls):
                m, s = online(m, s, ct(x[p, q, c]))
            out[p, q] = finish(m, s)
            r += cuda.gridsize(1)

    @cuda.jit
    def lse_block(x, out, lanes):
        sm = cuda.shared.array(MAX_LANES, ct)
        ss = cuda.shared.array(MAX_LANES, ct)
        n_q = x.shape[1]
        n_cls = x.shape[2]
        n_rows = x.shape[0] * n_q
        r = cuda.blockIdx.x
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            m, s = row_state_block(x, p, q, n_cls, lanes, sm, ss)
            if cuda.threadIdx.x == 0:
                out[p, q] = finish(m, s)
            r += cuda.gridDim.x

    # ------------------------------------------------------------------ log_softmax, softmax

    @cuda.jit
    def normalize_small(x, out, as_prob):
        n_q = x.shape[1]
        n_cls = x.shape[2]
        n_rows = x.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            m = neg_inf
            s = zero
            for c in range(n_cls):
                m, s = online(m, s, ct(x[p, q, c]))
            base, rest = split(m, s)
            for c in range(n_cls):
                v = (ct(x[p, q, c]) - base) - rest
                if as_prob:
                    out[p, q, c] = ct(math.exp(v))
                else:
                    out[p, q, c] = v
            r += cuda.gridsize(1)

    @cuda.jit
    def normalize_block(x, out, as_prob, lanes):
        vals = cuda.local.array(UNROLL, ct)
        sm = cuda.shared.array(MAX_LANES, ct)
        ss = cuda.shared.array(MAX_LANES, ct)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        n_q = x.shape[1]
        n_cls = x.shape[2]
        n_rows = x.shape[0] * n_q
        r = cuda.blockIdx.x
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            m, s = row_state_block(x, p, q, n_cls, lanes, sm, ss)
            base, rest = split(m, s)
            c = tid
            while c < n_cls:
                load_chunk(x, p, q, c, nt, n_cls, vals)
                for j in range(UNROLL):
                    cj = c + j * nt
                    if cj < n_cls:
                        v = (vals[j] - base) - rest
                        out[p, q, cj] = ct(fexp(v)) if as_prob else v
                c += nt * UNROLL
            r += cuda.gridDim.x

    def cross_entropy_kernels(with_grad):
        """hard_small, hard_block, soft_small, soft_block; `with_grad` is a compile-time
        constant (numba-cuda cannot launch with None for an absent gradient): without it the
        gscale and grad arguments are placeholders that are never touched."""

        # ------------------------------------------------------------------ cross-entropy, hard labels

        @cuda.jit
        def hard_small(x, labels, w, ignore, om_eps, eps_c, eps_on, z, z_on, loss, gscale, grad):
            n_q = x.shape[1]
            n_cls = x.shape[2]
            n_rows = x.shape[0] * n_q
            has_w = w.shape[0] > 0
            r = cuda.grid(1)
            while r < n_rows:
                p = r // n_q
                q = r - p * n_q
                y = labels[p, q]
                if y == ignore or y < 0 or y >= n_cls:
                    fill = zero if y == ignore else nan
                    loss[p, q] = fill
                    if with_grad:
                        for c in range(n_cls):
                            grad[p, q, c] = fill
                else:
                    ref = ref_value(x, p, q, n_cls)
                    m = neg_inf
                    s = zero
                    swx = zero
                    wsum = zero
                    for c in range(n_cls):
                        v = ct(x[p, q, c])
                        m, s = online(m, s, v)
                        if eps_on:
                            wc = w[c] if has_w else one
                            swx += wc * (v - ref)
                            wsum += wc
                    if not has_w:
                        wsum = ct(n_cls)
                    base, rest = split(m, s)
                    wy = w[y] if has_w else one
                    loss[p, q] = hard_loss(base, rest, ct(x[p, q, y]), wy, swx, wsum, ref,
                                           om_eps, eps_c, eps_on, z, z_on)
                    if with_grad:
                        a = hard_coef(base + rest, wy, wsum, om_eps, eps_c, eps_on, z, z_on)
                        ayw = om_eps * wy
                        sc = ct(gscale[p, q])
                        for c in range(n_cls):
                            wc = w[c] if eps_on and has_w else one
                            grad[p, q, c] = sc * hard_grad(ct(x[p, q, c]), base, rest, a, c == y,
                                                           ayw, eps_c, eps_on, wc)
                r += cuda.gridsize(1)

        @cuda.jit
        def hard_block(x, labels, w, ignore, om_eps, eps_c, eps_on, z, z_on, loss, gscale, grad,
                       lanes):
            vals = cuda.local.array(UNROLL, ct)
            sm = cuda.shared.array(MAX_LANES, ct)
            ss = cuda.shared.array(MAX_LANES, ct)
            sa = cuda.shared.array(MAX_LANES, ct)
            sb = cuda.shared.array(MAX_LANES, ct)
            tid = cuda.threadIdx.x
            nt = cuda.blockDim.x
            n_q = x.shape[1]
            n_cls = x.shape[2]
            n_rows = x.shape[0] * n_q
            has_w = w.shape[0] > 0
            r = cuda.blockIdx.x
            while r < n_rows:
                p = r // n_q
                q = r - p * n_q
                y = labels[p, q]
                if y == ignore or y < 0 or y >= n_cls:
                    fill = zero if y == ignore else nan
                    if tid == 0:
                        loss[p, q] = fill
                    if with_grad:
                        c = tid
                        while c < n_cls:
                            grad[p, q, c] = fill
                            c += nt
                else:
                    ref = ref_value(x, p, q, n_cls)
                    xy = zero
                    if tid == 0:
                        xy = ct(x[p, q, y])  # before the barrier: grad may overwrite x
                    lane = tid
                    while lane < lanes:
                        m = neg_inf
                        s = zero
                        swx = zero
                        wsum = zero
                        c = lane
                        while c < n_cls:
                            m, s = fold_chunk(x, p, q, c, lanes, n_cls, m, s)
                            if eps_on:
                                for j in range(UNROLL):
                                    cj = c + j * lanes
                                    if cj < n_cls:
                                        wc = w[cj] if has_w else one
                                        swx += wc * (ct(x[p, q, cj]) - ref)
                                        wsum += wc
                            c += lanes * UNROLL
                        sm[lane] = m
                        ss[lane] = s
                        sa[lane] = swx
                        sb[lane] = wsum
                        lane += nt
                    m, s, swx, wsum = tree_ms_ab(sm, ss, sa, sb, lanes, eps_on)
                    if not has_w:
                        wsum = ct(n_cls)
                    base, rest = split(m, s)
                    wy = w[y] if has_w else one
                    if tid == 0:
                        loss[p, q] = hard_loss(base, rest, xy, wy, swx, wsum, ref,
                                               om_eps, eps_c, eps_on, z, z_on)
                    if with_grad:
                        a = hard_coef(base + rest, wy, wsum, om_eps, eps_c, eps_on, z, z_on)
                        ayw = om_eps * wy
                        sc = ct(gscale[p, q])
                        c = tid
                        while c < n_cls:
                            load_chunk(x, p, q, c, nt, n_cls, vals)
                            for j in range(UNROLL):
                                cj = c + j * nt
                                if cj < n_cls:
                                    wc = w[cj] if eps_on and has_w else one
                                    grad[p, q, cj] = sc * hard_grad(vals[j], base, rest, a,
                                                                    cj == y, ayw, eps_c, eps_on, wc)
                            c += nt * UNROLL
                r += cuda.gridDim.x

        # ------------------------------------------------------------------ cross-entropy, soft targets

        @cuda.jit
        def soft_small(x, probs, w, om_eps, eps_c, eps_on, z, z_on, loss, gscale, grad):
            n_q = x.shape[1]
            n_cls = x.shape[2]
            n_rows = x.shape[0] * n_q
            has_w = w.shape[0] > 0
            r = cuda.grid(1)
            while r < n_rows:
                p = r // n_q
                q = r - p * n_q
                ref = ref_value(x, p, q, n_cls)
                m = neg_inf
                s = zero
                swt = zero
                swtx = zero
                for c in range(n_cls):
                    v = ct(x[p, q, c])
                    m, s = online(m, s, v)
                    t = ct(probs[p, q, c])
                    if eps_on:
                        t = om_eps * t + eps_c
                    if t != zero:
                        wt = (w[c] if has_w else one) * t
                        swt += wt
                        swtx += wt * (v - ref)
                base, rest = split(m, s)
                loss[p, q] = soft_loss(base, rest, swt, swtx, ref, z, z_on)
                if with_grad:
                    b = swt + two * z * (base + rest) if z_on else swt
                    sc = ct(gscale[p, q])
                    for c in range(n_cls):
                        t = ct(probs[p, q, c])
                        if eps_on:
                            t = om_eps * t + eps_c
                        wt = (w[c] if has_w else one) * t
                        pc = ct(math.exp((ct(x[p, q, c]) - base) - rest))
                        grad[p, q, c] = sc * (pc * b - wt)
                r += cuda.gridsize(1)

        @cuda.jit
        def soft_block(x, probs, w, om_eps, eps_c, eps_on, z, z_on, loss, gscale, grad, lanes):
            sm = cuda.shared.array(MAX_LANES, ct)
            ss = cuda.shared.array(MAX_LANES, ct)
            sa = cuda.shared.array(MAX_LANES, ct)
            sb = cuda.shared.array(MAX_LANES, ct)
            tid = cuda.threadIdx.x
            nt = cuda.blockDim.x
            n_q = x.shape[1]
            n_cls = x.shape[2]
            n_rows = x.shape[0] * n_q
            has_w = w.shape[0] > 0
            r = cuda.blockIdx.x
            while r < n_rows:
                p = r // n_q
                q = r - p * n_q
                ref = ref_value(x, p, q, n_cls)
                lane = tid
                while lane < lanes:
                    m = neg_inf
                    s = zero
                    swt = zero
                    swtx = zero
                    c = lane
                    while c < n_cls:
                        v = ct(x[p, q, c])
                        m, s = online(m, s, v)
                        t = ct(probs[p, q, c])
                        if eps_on:
                            t = om_eps * t + eps_c
                        if t != zero:
                            wt = (w[c] if has_w else one) * t
                            swt += wt
                            swtx += wt * (v - ref)
                        c += lanes
                    sm[lane] = m
                    ss[lane] = s
                    sa[lane] = swt
                    sb[lane] = swtx
                    lane += nt
                m, s, swt, swtx = tree_ms_ab(sm, ss, sa, sb, lanes, True)
                base, rest = split(m, s)
                if tid == 0:
                    loss[p, q] = soft_loss(base, rest, swt, swtx, ref, z, z_on)
                if with_grad:
                    b = swt + two * z * (base + rest) if z_on else swt
                    sc = ct(gscale[p, q])
                    c = tid
                    while c < n_cls:
                        t = ct(probs[p, q, c])
                        if eps_on:
                            t = om_eps * t + eps_c
                        wt = (w[c] if has_w else one) * t
                        pc = ct(math.exp((ct(x[p, q, c]) - base) - rest))
                        grad[p, q, c] = sc * (pc * b - wt)
                        c += nt
                r += cuda.gridDim.x

        return hard_small, hard_block, soft_small, soft_block

    # ------------------------------------------------------------------ nll

    @cuda.jit
    def nll_rows(logp, labels, w, ignore, loss):
        n_q = logp.shape[1]
        n_cls = logp.shape[2]
        n_rows = logp.shape[0] * n_q
        has_w = w.shape[0] > 0
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            y = labels[p, q]
            if y == ignore:
                loss[p, q] = zero
            elif y < 0 or y >= n_cls:
                loss[p, q] = nan
            else:
                wy = w[y] if has_w else one
                loss[p, q] = -(wy * ct(logp[p, q, y]))
            r += cuda.gridsize(1)

    @cuda.jit
    def top1_rows(x, labels, ignore, hits):
        # one thread per row: meant for scoring, where the loss kernels dominate
        n_q = x.shape[1]
        n_cls = x.shape[2]
        n_rows = x.shape[0] * n_q
        r = cuda.grid(1)
        while r < n_rows:
            p = r // n_q
            q = r - p * n_q
            y = labels[p, q]
            best = 0
            if y != ignore:
                m = ct(x[p, q, 0])
                c = 1
                while c < n_cls and m == m:
                    v = ct(x[p, q, c])
                    if v > m or v != v:
                        m = v
                        best = c
                    c += 1
            hits[p, q] = 1 if (y != ignore and best == y) else 0
            r += cuda.gridsize(1)

    k = type("SoftmaxKernels", (), {})()
    k.lse_small, k.lse_block = lse_small, lse_block
    k.normalize_small, k.normalize_block = normalize_small, normalize_block
    k.forward = cross_entropy_kernels(False)
    k.with_grad = cross_entropy_kernels(True)
    k.nll_rows = nll_rows
    k.top1_rows = top1_rows
    _KERNELS[ct] = k
    return k


# ----------------------------------------------------------------------------- label_stats


@cuda.jit
def _label_chunks(labels, n_cls, ignore, w, chunk, lanes, bad_out, total_out):
    """Per block b (rows b*chunk ..): first bad row number and float64 sum of w_y (count
    without weight) over rows that are neither ignored nor bad."""
    si = cuda.shared.array(MAX_LANES, int64)
    sf = cuda.shared.array(MAX_LANES, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    has_w = w.shape[0] > 0
    n_q = labels.shape[1]
    n = labels.shape[0] * n_q
    start = cuda.blockIdx.x * chunk
    stop = min(n, start + chunk)
    lane = tid
    while lane < lanes:
        bad = _NO_BAD
        acc = 0.0
        i = start + lane
        while i < stop:
            p = i // n_q
            y = labels[p, i - p * n_q]
            if y != ignore:
                if y < 0 or y >= n_cls:
                    if bad == _NO_BAD:
                        bad = i
                elif has_w:
                    acc += float64(w[y])
                else:
                    acc += 1.0
            i += lanes
        si[lane] = bad
        sf[lane] = acc
        lane += nt
    bad, total = _reduce.tree_min_sum(si, sf, lanes)
    if tid == 0:
        bad_out[cuda.blockIdx.x] = bad
        total_out[cuda.blockIdx.x] = total


@cuda.jit
def _min_sum_chunks(bad_in, total_in, chunk, lanes, bad_out, total_out):
    """The same partition and tree over per-block results (bad_in, total_in: 1-D)."""
    si = cuda.shared.array(MAX_LANES, int64)
    sf = cuda.shared.array(MAX_LANES, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n = bad_in.shape[0]
    start = cuda.blockIdx.x * chunk
    stop = min(n, start + chunk)
    lane = tid
    while lane < lanes:
        bad = _NO_BAD
        acc = 0.0
        i = start + lane
        while i < stop:
            if bad_in[i] < bad:
                bad = bad_in[i]
            acc += total_in[i]
            i += lanes
        si[lane] = bad
        sf[lane] = acc
        lane += nt
    bad, total = _reduce.tree_min_sum(si, sf, lanes)
    if tid == 0:
        bad_out[cuda.blockIdx.x] = bad
        total_out[cuda.blockIdx.x] = total


def _label_partials(labels, num_classes, ignore_index, weight, stream):
    """Device arrays (first_bad, total) of label_stats, 1 element each (no synchronisation)."""
    chunk, lanes = int(_reduce.REDUCE_CHUNK), int(_reduce.LANES)
    nt = _reduce.block_threads(lanes)
    n = int(labels.shape[0]) * int(labels.shape[1])
    blocks = max(1, -(-n // chunk))
    bad = cuda.device_array(blocks, dtype=np.int64, stream=stream)
    total = cuda.device_array(blocks, dtype=np.float64, stream=stream)
    _label_chunks[blocks, nt, stream](labels, np.int64(num_classes), np.int64(ignore_index),
                                      weight, chunk, lanes, bad, total)
    while blocks > 1:
        n = blocks
        blocks = max(1, -(-n // chunk))
        bad_next = cuda.device_array(blocks, dtype=np.int64, stream=stream)
        total_next = cuda.device_array(blocks, dtype=np.float64, stream=stream)
        _min_sum_chunks[blocks, nt, stream](bad, total, chunk, lanes, bad_next, total_next)
        bad, total = bad_next, total_next
    return bad, total


def label_stats(labels, num_classes, ignore_index, weight, stream=None):
    """(first_bad, total) of the (P, Q) labels, as host Python values (synchronises).

    first_bad: row number r = p*Q + q of the first label outside [0, num_classes) that is
    not ignore_index, or -1. total: float64 sum of weight[y] over the other non-ignored rows
    (their count without weight: len(weight) == 0), in a fixed order (REDUCE_CHUNK rows per
    block, block results combined the same way).
    """
    stream = _reduce.launch_stream(stream)
    bad, total = _label_partials(labels, num_classes, ignore_index, weight, stream)
    first_bad = bad.copy_to_host(stream=stream)
    total_host = total.copy_to_host(stream=stream)
    if stream:
        stream.synchronize()
    first_bad = int(first_bad[0])
    return (-1 if first_bad == _NO_BAD else first_bad), float(total_host[0])


def label_total(labels, num_classes, ignore_index, weight, stream=None):
    """label_stats' total as a 1-element float64 device array, computed on `stream` with no
    host synchronisation and no bad-label report (unchecked calls: check=False)."""
    return _label_partials(labels, num_classes, ignore_index, weight,
                           _reduce.launch_stream(stream))[1]


@cuda.jit
def _mean_of_sum(total, denominator, out):
    if cuda.grid(1) == 0:
        d = denominator[0]
        out[0] = (1.0 / d) * total[0] if d != 0.0 else math.nan


@cuda.jit
def _quotient_or_zero(value, denominator, out):
    if cuda.grid(1) == 0:
        d = denominator[0]
        out[0] = value / d if d != 0.0 else 0.0


def mean_rows(values, denominator, out, stream=None):
    """out[0] = sum(values) / denominator[0] (NaN when it is 0), all on the device: bit for
    bit sum_rows(values, 1 / denominator, out) with the denominator left on the device."""
    stream = _reduce.launch_stream(stream)
    total = cuda.device_array(1, dtype=np.float64, stream=stream)
    _reduce.sum_2d(values, 1.0, total, stream)
    _mean_of_sum[1, 1, stream](total, denominator, out)


def quotient_or_zero(value, denominator, stream=None):
    """value / denominator[0] (0 when it is 0) as a 1-element float64 device array."""
    stream = _reduce.launch_stream(stream)
    out = cuda.device_array(1, dtype=np.float64, stream=stream)
    _quotient_or_zero[1, 1, stream](np.float64(value), denominator, out)
    return out


# ----------------------------------------------------------------------------- row launchers


def _rows(x):
    return int(x.shape[0]) * int(x.shape[1]), int(x.shape[2])


def _launch_rows(small, block, x, args, stream):
    """Launch the small-C kernel (one thread per row) or the block-per-row kernel."""
    n_rows, n_cls = _rows(x)
    if n_rows == 0:
        return
    stream = _reduce.launch_stream(stream)
    if n_cls <= _reduce.SMALL_C:
        nt = int(_reduce.THREADS_PER_BLOCK)
        small[_reduce.grid_for(n_rows, nt), nt, stream](*args)
    else:
        lanes = _reduce.row_lanes(-(-n_cls // UNROLL))  # each lane a chunk or more
        nt = _reduce.block_threads(lanes)
        block[_reduce.grid_for(n_rows), nt, stream](*args, lanes)


def logsumexp(x, out, stream=None):
    """out[p, q] = logsumexp(x[p, q, :]) (PyTorch: an infinite max is replaced by 0)."""
    k = _kernels(_compute_types(x.dtype)[0])
    _launch_rows(k.lse_small, k.lse_block, x, (x, out), stream)


def log_softmax(x, out, stream=None):
    """out = x - lse per row."""
    k = _kernels(_compute_types(x.dtype)[0])
    _launch_rows(k.normalize_small, k.normalize_block, x, (x, out, False), stream)


def softmax(x, out, stream=None):
    """out = exp(x - lse) per row."""
    k = _kernels(_compute_types(x.dtype)[0])
    _launch_rows(k.normalize_small, k.normalize_block, x, (x, out, True), stream)


def _unit_scale(x, stream):
    one = cuda.to_device(np.ones(1, np.float64), stream=_reduce.launch_stream(stream))
    return strided_view(one, (int(x.shape[0]), int(x.shape[1])), (0, 0))


def _gradient_arguments(k, x, loss_out, grad_scale, grad_out, stream):
    """(kernel family, grad_scale, grad_out) to launch with: the forward-only family with
    placeholders (loss_out, x: never read or written) when there is no gradient, else the
    gradient family with grad_scale defaulting to 1."""
    if grad_out is None:
        return k.forward, loss_out, x
    if grad_scale is None:
        grad_scale = _unit_scale(x, stream)
    return k.with_grad, grad_scale, grad_out


def _smoothing_scalars(npct, smoothing, z_loss, n_cls):
    eps, z = float(smoothing), float(z_loss)
    eps_c = eps / n_cls if n_cls else 0.0
    return npct(1.0 - eps), npct(eps_c), eps > 0.0, npct(z), z > 0.0


def cross_entropy(x, labels, weight, ignore_index, smoothing, z_loss, loss_out,
                  grad_scale=None, grad_out=None, stream=None):
    """Per-row loss (and, with grad_out, its gradient in the same launch) for hard labels.

    grad_out may be x itself (in-place). grad_scale: (P, Q) float64 (zero strides allowed);
    taken as 1 if None while grad_out is given.
    """
    ct, npct = _compute_types(x.dtype)
    k = _kernels(ct)
    om_eps, eps_c, eps_on, z, z_on = _smoothing_scalars(npct, smoothing, z_loss, int(x.shape[2]))
    fam, grad_scale, grad_out = _gradient_arguments(k, x, loss_out, grad_scale, grad_out, stream)
    args = (x, labels, weight, np.int64(ignore_index), om_eps, eps_c, eps_on, z, z_on,
            loss_out, grad_scale, grad_out)
    _launch_rows(fam[0], fam[1], x, args, stream)


def cross_entropy_soft(x, probs, weight, smoothing, z_loss, loss_out,
                       grad_scale=None, grad_out=None, stream=None):
    """Per-row loss (and, with grad_out, its gradient) for soft targets `probs` (P, Q, C).

    Terms with t'_c == 0 count 0 (also where x_c = -inf); the lse term is skipped when
    sum_c w_c t'_c == 0. grad_out may be x itself.
    """
    ct, npct = _compute_types(x.dtype)
    k = _kernels(ct)
    om_eps, eps_c, eps_on, z, z_on = _smoothing_scalars(npct, smoothing, z_loss, int(x.shape[2]))
    fam, grad_scale, grad_out = _gradient_arguments(k, x, loss_out, grad_scale, grad_out, stream)
    args = (x, probs, weight, om_eps, eps_c, eps_on, z, z_on, loss_out, grad_scale, grad_out)
    _launch_rows(fam[2], fam[3], x, args, stream)


def nll(logp, labels, weight, ignore_index, loss_out, stream=None):
    """loss_out[p, q] = -w_y logp[p, q, y]; 0 for ignored rows. One thread per row."""
    k = _kernels(_compute_types(logp.dtype)[0])
    n_rows, _ = _rows(logp)
    if n_rows == 0:
        return
    nt = int(_reduce.THREADS_PER_BLOCK)
    k.nll_rows[_reduce.grid_for(n_rows, nt), nt, _reduce.launch_stream(stream)](
        logp, labels, weight, np.int64(ignore_index), loss_out)


def top1(x, labels, ignore_index, hits_out, stream=None):
    """hits_out[p, q] = 1 where labels[p, q] is the first maximal class of x[p, q, :] (the
    first NaN when there is one: numpy.argmax), else 0; 0 for ignored rows."""
    k = _kernels(_compute_types(x.dtype)[0])
    n_rows, _ = _rows(x)
    if n_rows == 0:
        return
    nt = int(_reduce.THREADS_PER_BLOCK)
    k.top1_rows[_reduce.grid_for(n_rows, nt), nt, _reduce.launch_stream(stream)](
        x, labels, np.int64(ignore_index), hits_out)


def cross_entropy_top1(x, labels, weight, ignore_index, smoothing, z_loss, loss_out, hits_out,
                       stream=None):
    """cross_entropy (forward) into loss_out and top1 into hits_out: two launches (the CPU
    twin fuses them; on the GPU each row is read by one block either way)."""
    cross_entropy(x, labels, weight, ignore_index, smoothing, z_loss, loss_out, stream=stream)
    top1(x, labels, ignore_index, hits_out, stream)


def sum_rows(values, scale, out, stream=None):
    """out[0] = scale * sum of the (P, Q) `values`, in float64, in a fixed order
    (REDUCE_CHUNK values per block, block sums combined the same way)."""
    _reduce.sum_2d(values, scale, out, stream)
