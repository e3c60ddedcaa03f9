"""Launch settings and deterministic block reductions shared by the GPU kernels.

Determinism: a reduction over a row (or over a chunk of rows) is split into `lanes` partial
results, lane `l` taking elements `l, l + lanes, l + 2*lanes, ...` in increasing order; the
lanes are then combined by a fixed binary tree (lane `i` with lane `i + stride`, stride
halving). `lanes` depends on the data's shape and on `LANES` only, never on the number of
threads: a block of `nt <= lanes` threads computes lanes `t, t + nt, ...` in thread `t`.
Results are therefore bit-identical at every `THREADS_PER_BLOCK`, and with the tree's tail
done by warp shuffles (real GPU) or in shared memory (simulator).

The one switch: `WARP_SHUFFLE` (on unless the CUDA simulator runs, which has no warp
intrinsics). Both tails pair the same lanes in the same order.

Launch settings are module attributes read by the launchers at every call; `launch_config`
overrides them temporarily (tests use it to reach multi-block, multi-lane and grid-stride
paths on tiny inputs). They are process-wide: do not change them while kernels are being
launched from other threads.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
from numba import cuda, float64
from numba.cuda import config as _numba_cuda_config

from nbxent.gpu._arrays import strided_view

SIMULATOR = bool(_numba_cuda_config.ENABLE_CUDASIM)
WARP_SHUFFLE = not SIMULATOR

MAX_LANES = 256  # size of the shared reduction arrays (compile-time); LANES <= MAX_LANES
_FULL_MASK = 0xFFFFFFFF

# ----------------------------------------------------------------------------- settings

#: threads per block (a power of two, at most the lanes of a launch)
THREADS_PER_BLOCK = 256
#: most lanes of a row reduction (power of two <= MAX_LANES); a row of C classes uses
#: min(LANES, max(32, next power of two >= C)) lanes
LANES = 256
#: rows of at most SMALL_C classes are computed one thread per row, wider rows one block per row
SMALL_C = 32
#: values per block (the fixed partition) of the cross-row reductions (sum_rows, label_stats)
REDUCE_CHUNK = 8192
#: grid size cap; rows beyond it are taken by grid-stride loops
MAX_BLOCKS = 1 << 20

_SETTINGS = ("THREADS_PER_BLOCK", "LANES", "SMALL_C", "REDUCE_CHUNK", "MAX_BLOCKS")


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


@contextlib.contextmanager
def launch_config(**settings):
    """Temporarily override launch settings, e.g. `launch_config(THREADS_PER_BLOCK=8, LANES=16)`."""
    g = globals()
    unknown = set(settings) - set(_SETTINGS)
    if unknown:
        raise TypeError(f"unknown launch settings {sorted(unknown)}; known: {_SETTINGS}")
    saved = {k: g[k] for k in _SETTINGS}
    g.update(settings)
    try:
        if not (_is_pow2(THREADS_PER_BLOCK) and _is_pow2(LANES) and LANES <= MAX_LANES):
            raise ValueError("THREADS_PER_BLOCK and LANES must be powers of two, LANES <= 256")
        if REDUCE_CHUNK < 1 or MAX_BLOCKS < 1 or SMALL_C < 0:
            raise ValueError("REDUCE_CHUNK and MAX_BLOCKS must be >= 1, SMALL_C >= 0")
        yield
    finally:
        g.update(saved)


def row_lanes(num_classes: int) -> int:
    """Lanes of a block-per-row reduction over rows of `num_classes` elements."""
    want = 1 << max(int(num_classes) - 1, 0).bit_length()
    return min(LANES, max(32, want))


def block_threads(lanes: int) -> int:
    return min(THREADS_PER_BLOCK, lanes)


def grid_for(items: int, per_block: int = 1) -> int:
    """Blocks for `items` work items, `per_block` per block, capped at MAX_BLOCKS (>= 1)."""
    return max(1, min(-(-int(items) // per_block), MAX_BLOCKS))


def launch_stream(stream):
    return 0 if stream is None else stream


# ----------------------------------------------------------------------------- tree tails
# Every function below is called by all threads of the block (it contains barriers), after
# the caller wrote lanes [0, lanes) of the shared arrays; it returns the combined value(s)
# to every thread and leaves the shared arrays free for reuse.


@cuda.jit(device=True)
def _use_warp_tail(nt):
    return WARP_SHUFFLE and nt >= 32


@cuda.jit(device=True)
def tree_sum(sh, lanes):
    """Sum of sh[0:lanes] (fixed tree)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    warp = _use_warp_tail(nt)
    stop = 16 if warp else 0
    cuda.syncthreads()
    stride = lanes >> 1
    while stride > stop:
        i = tid
        while i < stride:
            sh[i] = sh[i] + sh[i + stride]
            i += nt
        cuda.syncthreads()
        stride >>= 1
    if warp:
        if tid < 32:
            v = sh[tid]
            off = 16
            while off > 0:
                v = v + cuda.shfl_down_sync(_FULL_MASK, v, off)
                off >>= 1
            if tid == 0:
                sh[0] = v
        cuda.syncthreads()
    total = sh[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def tree_min_sum(si, sf, lanes):
    """(min of si[0:lanes], sum of sf[0:lanes]) (fixed tree)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    warp = _use_warp_tail(nt)
    stop = 16 if warp else 0
    cuda.syncthreads()
    stride = lanes >> 1
    while stride > stop:
        i = tid
        while i < stride:
            if si[i + stride] < si[i]:
                si[i] = si[i + stride]
            sf[i] = sf[i] + sf[i + stride]
            i += nt
        cuda.syncthreads()
        stride >>= 1
    if warp:
        if tid < 32:
            vi = si[tid]
            vf = sf[tid]
            off = 16
            while off > 0:
                oi = cuda.shfl_down_sync(_FULL_MASK, vi, off)
                if oi < vi:
                    vi = oi
                vf = vf + cuda.shfl_down_sync(_FULL_MASK, vf, off)
                off >>= 1
            if tid == 0:
                si[0] = vi
                sf[0] = vf
        cuda.syncthreads()
    mn = si[0]
    total = sf[0]
    cuda.syncthreads()
    return mn, total


_ROW_FUNCTIONS = {}


def row_functions(ct):
    """Device functions for per-row softmax statistics in compute type `ct` (float32/float64).

    State of an online logsumexp: (m, s) with s = sum exp(x - m) over the elements seen and
    m their max; a NaN element makes s NaN for good (NaN never becomes m). Infinite m is
    handled as in PyTorch: lse = m when the max is +-inf (s is then meaningless).
    """
    if ct in _ROW_FUNCTIONS:
        return _ROW_FUNCTIONS[ct]
    zero, one = ct(0), ct(1)

    @cuda.jit(device=True)
    def online(m, s, v):
        """Add element v to the state (m, s)."""
        if v > m:
            s = s * ct(math.exp(m - v)) + one
            m = v
        elif v < m:
            s += ct(math.exp(v - m))
        elif v == m:
            if not math.isinf(m):
                s += one  # exp(0); for an infinite m, s no longer matters
        else:
            s = v  # NaN
        return m, s

    @cuda.jit(device=True)
    def combine(m1, s1, m2, s2):
        """Merge two states; symmetric, so operand order never changes the bits."""
        if m2 > m1:
            m1, m2 = m2, m1
            s1, s2 = s2, s1
        if m2 == m1:
            s1 = s1 + s2  # also for equal infinities, where m2 - m1 is NaN
        else:
            s1 = s1 + s2 * ct(math.exp(m2 - m1))
        return m1, s1

    @cuda.jit(device=True)
    def split(m, s):
        """lse as (base, rest), lse = base + rest, for computing x - lse as (x - base) - rest:
        (m, log s) for a finite max (exact for rows of huge logits, where m + log s would round
        log s away), (m, 0) for an infinite max (lse = m), (NaN, NaN) if any element is NaN."""
        if s != s:
            return s, s
        if math.isinf(m):
            return m, zero
        return m, ct(math.log(s))

    @cuda.jit(device=True)
    def finish(m, s):
        """logsumexp from a state: NaN if any NaN, +-inf if the max is +-inf, else m + log s."""
        base, rest = split(m, s)
        return base + rest

    @cuda.jit(device=True)
    def tree_ms_ab(sm, ss, sa, sb, lanes, with_ab):
        """Combine states (sm, ss)[0:lanes] and, if with_ab, sums of sa and sb; returns
        (m, s, a, b) (a, b meaningless without with_ab, when sa/sb may alias sm/ss)."""
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        warp = _use_warp_tail(nt)
        stop = 16 if warp else 0
        cuda.syncthreads()
        stride = lanes >> 1
        while stride > stop:
            i = tid
            while i < stride:
                m, s = combine(sm[i], ss[i], sm[i + stride], ss[i + stride])
                sm[i] = m
                ss[i] = s
                if with_ab:
                    sa[i] = sa[i] + sa[i + stride]
                    sb[i] = sb[i] + sb[i + stride]
                i += nt
            cuda.syncthreads()
            stride >>= 1
        if warp:
            if tid < 32:
                m = sm[tid]
                s = ss[tid]
                a = zero
                b = zero
                if with_ab:
                    a = sa[tid]
                    b = sb[tid]
                off = 16
                while off > 0:
                    m2 = cuda.shfl_down_sync(_FULL_MASK, m, off)
                    s2 = cuda.shfl_down_sync(_FULL_MASK, s, off)
                    m, s = combine(m, s, m2, s2)
                    if with_ab:
                        a = a + cuda.shfl_down_sync(_FULL_MASK, a, off)
                        b = b + cuda.shfl_down_sync(_FULL_MASK, b, off)
                    off >>= 1
                if tid == 0:
                    sm[0] = m
                    ss[0] = s
                    if with_ab:
                        sa[0] = a
                        sb[0] = b
            cuda.syncthreads()
        m = sm[0]
        s = ss[0]
        a = sa[0]
        b = sb[0]
        cuda.syncthreads()
        return m, s, a, b

    fns = type("RowFunctions", (), {})()
    fns.online, fns.combine, fns.split, fns.finish = online, combine, split, finish
    fns.tree_ms_ab = tree_ms_ab
    _ROW_FUNCTIONS[ct] = fns
    return fns


# ----------------------------------------------------------------------------- sum of (P, Q)


@cuda.jit
def _sum_chunks(values, chunk, lanes, scale, out):
    """out[b] = scale * (sum in float64 of values.flat[b*chunk:(b+1)*chunk]), one block per b."""
    sh = cuda.shared.array(MAX_LANES, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    q_len = values.shape[1]
    n = values.shape[0] * q_len
    start = cuda.blockIdx.x * chunk
    stop = min(n, start + chunk)
    lane = tid
    while lane < lanes:
        acc = 0.0
        i = start + lane
        while i < stop:
            p = i // q_len
            acc += float64(values[p, i - p * q_len])
            i += lanes
        sh[lane] = acc
        lane += nt
    total = tree_sum(sh, lanes)
    if tid == 0:
        out[cuda.blockIdx.x] = scale * total


def sum_2d(values, scale, out, stream=None):
    """out[0] = scale * sum of the (P, Q) device array `values`, in float64, fixed order.

    Partition: chunks of REDUCE_CHUNK values (row-major over (P, Q)), one block each; the
    chunk sums are summed again the same way until one is left (scratch buffers of
    n / REDUCE_CHUNK float64 are allocated with Numba for inputs of more than one chunk).
    """
    stream = launch_stream(stream)
    chunk, lanes = int(REDUCE_CHUNK), int(LANES)
    nt = block_threads(lanes)
    n = int(values.shape[0]) * int(values.shape[1])
    while True:
        blocks = max(1, -(-n // chunk))
        if blocks == 1:
            _sum_chunks[1, nt, stream](values, chunk, lanes, np.float64(scale), out)
            return
        partials = cuda.device_array(blocks, dtype=np.float64, stream=stream)
        _sum_chunks[blocks, nt, stream](values, chunk, lanes, np.float64(1.0), partials)
        values = strided_view(partials, (1, blocks), (0, 8))
        n = blocks
