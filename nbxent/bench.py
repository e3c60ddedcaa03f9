"""`nbxent bench`: cross_entropy against its peers on built-in random data.

Every library runs on the same inputs; their losses are checked against each other before
any timing counts; rounds are interleaved (one call of each library per round) and the
median is reported, so that the noise of a shared machine hits every library alike. The
read bandwidth of the machine is measured in the same run (a parallel float64-accumulated
sum over the same logits) so that throughput can be quoted as a fraction of it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

DEFAULT_SHAPES = [(65536, 1000), (4096, 32000), (1024, 128256), (1_000_000, 10), (4_000_000, 2)]
QUICK_SHAPES = [(8192, 1000), (256, 32000), (200_000, 10)]
READ_BANDWIDTH = "read bandwidth (sum)"


@dataclass
class Peer:
    """One library's way of computing the benchmarked operation on (x, y)."""

    name: str
    run: Callable[[], float]                 # computes the loss (timed)
    bytes_moved: float                       # bytes a perfect kernel moves per call
    reset: Callable[[], None] | None = None  # untimed, before each timed call
    settle: float = 0.0                      # seconds to wait (untimed) after each call,
    settle_per_second: float = 0.0           # and this many more per second the call took


def _nbxent_peers(mode: str, x, y):
    import nbxent

    if mode == "forward":
        return [Peer("nbxent", lambda: nbxent.cross_entropy(x, y), x.nbytes)]
    grad = np.empty_like(x)
    grad.fill(0)  # pre-fault the pages; the gradient buffer below is then a fresh array
    buf = x.copy()
    return [
        Peer("nbxent", lambda: nbxent.cross_entropy_with_grad(x, y)[0], 2 * x.nbytes),
        Peer("nbxent inplace", lambda: nbxent.cross_entropy_with_grad(buf, y, inplace=True)[0],
             2 * x.nbytes, reset=lambda: np.copyto(buf, x)),
    ]


def _torch_peer(mode: str, threads: int, x, y):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    F = torch.nn.functional
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    name = f"torch {torch.__version__.split('+')[0]}"
    if x.dtype == np.float16:
        # torch's float16 mean accumulates in float16 and overflows to inf past 65504: take
        # the per-row losses and average them in float32, as a user would have to
        name += " (mean in f32)"

        def loss_of(logits):
            return F.cross_entropy(logits, ty, reduction="none").float().mean()
    else:
        def loss_of(logits):
            return F.cross_entropy(logits, ty)

    if mode == "forward":
        def forward():
            with torch.no_grad():
                return loss_of(tx).item()
        return Peer(name, forward, x.nbytes)

    def forward_backward():
        leaf = tx.detach().requires_grad_(True)
        loss = loss_of(leaf)
        loss.backward()
        return loss.item()
    return Peer(name + " fwd+bwd", forward_backward, 2 * x.nbytes)


def _jax_peer(mode: str, x, y):
    """JAX written the obvious way (log_softmax, gather, mean), jitted; None without JAX.
    XLA's CPU thread pool is sized at start-up, not by `threads`. After each call the
    machine stays busy for a while (its threads spin; after a 250 ms float16 call the next
    nbxent call took 34 ms after 50 ms, 26 ms after 0.5 s and 20.5 ms after 1 s, against
    18.7 ms without JAX): the peer waits, untimed, 50 ms plus 4 times its call's time
    (at most 2 s), so that the library timed next does not pay for it."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    name = f"jax {jax.__version__}"
    jx, jy = jnp.asarray(x), jnp.asarray(y)

    def loss_of(logits, labels):   # labels an argument: as a closure constant XLA folds them
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    if mode == "forward":
        f = jax.jit(loss_of)
        return Peer(name, lambda: float(f(jx, jy)), x.nbytes, **_JAX_SETTLE)
    g = jax.jit(jax.value_and_grad(loss_of))

    def forward_backward():
        loss, grad = g(jx, jy)
        grad.block_until_ready()
        return float(loss)
    return Peer(name + " fwd+bwd", forward_backward, 2 * x.nbytes, **_JAX_SETTLE)


_JAX_SETTLE = dict(settle=0.05, settle_per_second=4.0)
_MAX_SETTLE = 2.0


def _bandwidth_peer(x):
    from nbxent.cpu.softmax import sum_rows

    out = np.empty(1, np.float64)
    # One long row, so that the read rate does not depend on C; float16 bytes are summed as
    # float32 words (the values do not matter, only the bytes read).
    if x.dtype == np.float16:
        flat = x.reshape(-1).view(np.uint8)[: x.nbytes // 4 * 4].view(np.float32).reshape(1, -1)
    else:
        flat = x.reshape(1, -1)

    def read_all():
        sum_rows(flat, 1.0, out)
        return float("nan")

    return Peer(READ_BANDWIDTH, read_all, x.nbytes)


def _time(peer: Peer) -> float:
    if peer.reset is not None:
        peer.reset()
    t0 = time.perf_counter()
    peer.run()
    t = time.perf_counter() - t0
    if peer.settle or peer.settle_per_second:
        time.sleep(min(_MAX_SETTLE, peer.settle + peer.settle_per_second * t))
    return t


DTYPES = ("float32", "float64", "float16")
_AGREE = {"float16": 5e-3, "float32": 1e-5, "float64": 1e-5}   # relative, between libraries


def run(shapes=None, mode: str = "forward", rounds: int = 5, threads: int | None = None,
        include_reference: bool = True, printer=print, dtype: str = "float32",
        progress=None) -> list[dict]:
    """Benchmark cross_entropy (mode "forward" or "fused") on `dtype` logits, print a table,
    return its rows. `progress(fraction, note)`, if given, is called as the run advances."""
    import numba

    from nbxent import reference

    threads = threads or numba.get_num_threads()
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    if progress:
        progress.clear()
    printer(f"cross_entropy {mode}, {dtype}, reduction='mean', {threads} threads, "
            f"median of {rounds} interleaved rounds")
    printer(f"{'shape':>16}  {'library':<36}{'ms':>10}{'elem/ns':>9}{'GB/s':>8}{'% read bw':>10}"
            f"{'x nbxent':>10}")
    shapes = shapes or DEFAULT_SHAPES
    for k, (n, c) in enumerate(shapes):
        note = f"{mode} {dtype} {(n, c)}"
        if progress:
            progress(k / len(shapes), note + " compiling, checking")
        x = (rng.standard_normal((n, c), dtype=np.float32) * 2).astype(dtype, copy=False)
        y = rng.integers(0, c, n)
        peers = _nbxent_peers(mode, x, y)
        for extra in (_torch_peer(mode, threads, x, y), _jax_peer(mode, x, y)):
            if extra is not None:
                peers.append(extra)
        if include_reference and n * c <= 70_000_000:
            peers.append(Peer("reference (float64 NumPy)", lambda: reference.cross_entropy(x, y), x.nbytes))
        want = float(peers[0].run())  # also compiles
        for p in peers:
            if p.reset is not None:
                p.reset()
            got = float(p.run())
            if not np.isclose(got, want, rtol=_AGREE[dtype]):
                raise RuntimeError(f"{p.name} gives {got} on {(n, c)} but nbxent gives {want}")
        peers.append(_bandwidth_peer(x))
        peers[-1].run()
        times = {p.name: [] for p in peers}
        for r in range(rounds):
            if progress:
                progress((k + (r + 1) / (rounds + 1)) / len(shapes), f"{note} round {r + 1}/{rounds}")
            for p in peers:
                times[p.name].append(_time(p))
        medians = {name: statistics.median(t) for name, t in times.items()}
        bandwidth = x.nbytes / medians[READ_BANDWIDTH]
        for p in peers:
            t = medians[p.name]
            row = {
                "shape": [n, c], "library": p.name, "mode": mode, "dtype": dtype,
                "threads": threads,
                "seconds": t, "elements_per_ns": n * c / t / 1e9, "gb_per_s": p.bytes_moved / t / 1e9,
                "fraction_of_read_bandwidth": p.bytes_moved / t / bandwidth,
                "time_over_nbxent": t / medians[peers[0].name],
            }
            rows.append(row)
            if progress:
                progress.clear()
            printer(f"{str((n, c)):>16}  {p.name:<36}{t * 1e3:>10.2f}{row['elements_per_ns']:>9.2f}"
                    f"{row['gb_per_s']:>8.1f}{100 * row['fraction_of_read_bandwidth']:>9.0f}%"
                    f"{row['time_over_nbxent']:>10.2f}")
    return rows


# ----------------------------------------------------------------------------- GPU

GPU_SHAPES = [(16384, 32000), (8192, 128256), (4096, 262144), (65536, 4096), (262144, 1000),
              (4_000_000, 10)]
GPU_QUICK_SHAPES = [(4096, 32000), (262144, 10)]
COPY_BANDWIDTH = "device copy (read+write)"


def _gpu_time(fn, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of fn, timed with CUDA events on the current stream."""
    import cupy

    out = []
    for _ in range(reps):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        out.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return out


def _gpu_peers(mode: str, x, y, tx, ty, bytes_read: float):
    """(name, fn, bytes moved) of nbxent, torch and CuPy on CUDA for one input."""
    import cupy
    import torch

    import nbxent

    F = torch.nn.functional
    tv = f"torch {torch.__version__.split('+')[0]}"
    if mode == "forward":
        def torch_none():
            with torch.no_grad():
                return F.cross_entropy(tx, ty, reduction="none")

        def torch_mean():
            with torch.no_grad():
                return F.cross_entropy(tx, ty)
        rows = cupy.arange(x.shape[0])

        def cupy_mean():   # CuPy written the obvious way, in float32
            xf = x.astype(cupy.float32, copy=False)
            m = xf.max(axis=1)
            lse = cupy.log(cupy.exp(xf - m[:, None]).sum(axis=1)) + m
            return (lse - xf[rows, y]).mean()
        return [
            ("nbxent none", lambda: nbxent.cross_entropy(x, y, reduction="none"), bytes_read),
            ("nbxent mean", lambda: nbxent.cross_entropy(x, y), bytes_read),
            ("nbxent mean check=False", lambda: nbxent.cross_entropy(x, y, check=False),
             bytes_read),
            (tv + " none", torch_none, bytes_read),
            (tv + " mean", torch_mean, bytes_read),
            (f"cupy {cupy.__version__} mean", cupy_mean, bytes_read),
        ]
    buf = cupy.empty_like(x)

    def inplace():
        # the copy that restores the logits is timed too: subtract the copy peer's time
        buf[...] = x
        return nbxent.cross_entropy_with_grad(buf, y, inplace=True)

    def torch_fwd_bwd():
        leaf = tx.detach().requires_grad_(True)
        F.cross_entropy(leaf, ty).backward()
        return leaf.grad

    moved = bytes_read + x.nbytes
    return [
        ("nbxent fused", lambda: nbxent.cross_entropy_with_grad(x, y), moved),
        ("nbxent fused inplace + copy", inplace, moved + 2 * x.nbytes),
        (tv + " fwd+bwd", torch_fwd_bwd, moved),
    ]


def run_gpu(shapes=None, dtypes=("float32", "float16"), reps: int = 20, printer=print):
    """Benchmark cross_entropy on CUDA (CuPy arrays) against torch, with the device-to-device
    copy bandwidth of the same logits measured in the same run; print a table, return rows.

    "% copy bw" = (bytes a perfect kernel moves / time) / copy bandwidth, the copy counted
    as bytes read + bytes written. Forward moves N*C*itemsize + labels; fused adds the
    gradient write.
    """
    import cupy
    import torch

    import nbxent

    dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    rows = []
    printer(f"cross_entropy on {dev}, CuPy {cupy.__version__}, median of {reps} event-timed calls")
    printer(f"{'shape':>16} {'dtype':>8}  {'library':<30}{'ms':>9}{'GB/s':>8}{'% copy bw':>10}"
            f"{'x nbxent':>9}")
    rng = cupy.random.default_rng(0)
    for n, c in shapes or GPU_SHAPES:
        for dt in dtypes:
            x = (rng.standard_normal((n, c), dtype=cupy.float32) * 2).astype(dt)
            y = rng.integers(0, c, n).astype(cupy.int64)
            tx, ty = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")
            bytes_read = x.nbytes + y.nbytes
            dst = cupy.empty_like(x)

            def copy():
                dst[...] = x

            want = float(torch.nn.functional.cross_entropy(tx.float(), ty))
            got = float(nbxent.cross_entropy(x, y))
            if not np.isclose(got, want, rtol=1e-4):
                raise RuntimeError(f"nbxent gives {got} on {(n, c)} {dt}, torch {want}")
            for mode in ("forward", "fused"):
                peers = _gpu_peers(mode, x, y, tx, ty, bytes_read)
                peers.append((COPY_BANDWIDTH, copy, 2 * x.nbytes))
                for _, fn, _ in peers:  # warm-up: compilation, allocator pools
                    fn()
                times = {name: [] for name, _, _ in peers}
                for _ in range(reps):
                    for name, fn, _ in peers:
                        times[name] += _gpu_time(fn, 1)
                med = {k: statistics.median(v) for k, v in times.items()}
                bandwidth = 2 * x.nbytes / med[COPY_BANDWIDTH]
                first = med[peers[0][0]]
                for name, _, moved in peers:
                    t = med[name]
                    row = {"shape": [n, c], "dtype": dt, "mode": mode, "library": name,
                           "device": dev, "seconds": t, "elements_per_ns": n * c / t / 1e9,
                           "gb_per_s": moved / t / 1e9,
                           "fraction_of_copy_bandwidth": moved / t / bandwidth,
                           "time_over_nbxent": t / first}
                    rows.append(row)
                    printer(f"{str((n, c)):>16} {dt:>8}  {name:<30}{t * 1e3:>9.3f}"
                            f"{row['gb_per_s']:>8.0f}{100 * row['fraction_of_copy_bandwidth']:>9.0f}%"
                            f"{t / first:>9.2f}")
            del x, y, tx, ty, dst
            cupy.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- reporting


class Stage:
    """One run's share of a progress bar (`nbxent._progress.Bar`): run `index` of `count`
    reports its own fraction 0..1; the bar shows the whole."""

    def __init__(self, bar, index: int, count: int):
        self.bar, self.index, self.count = bar, index, count

    def __call__(self, fraction: float, note: str):
        self.bar(min((self.index + fraction) / self.count, 0.999), 1.0, note)

    def clear(self):
        self.bar.clear()


def plot(rows: list[dict], path: str):
    """Throughput (elements/ns) against the class count C, one line per library (and
    dtype, when several), one panel per device and mode; written to `path` (PNG, SVG...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel(r):
        return (f"GPU {r['device']}" if "device" in r else "CPU", r["mode"])

    panels = sorted({panel(r) for r in rows})
    several_dtypes = len({r["dtype"] for r in rows}) > 1
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, key in zip(axes[0], panels):
        series = {}
        for r in rows:
            if panel(r) == key:
                label = r["library"] + (f" {r['dtype']}" if several_dtypes else "")
                series.setdefault(label, []).append((r["shape"][1], r["elements_per_ns"]))
        for label, points in sorted(series.items()):
            points.sort()
            bound = label.startswith((READ_BANDWIDTH, COPY_BANDWIDTH))
            ax.plot([p[0] for p in points], [p[1] for p in points], "--" if bound else "-o",
                    label=label, alpha=0.6 if bound else 1.0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes C (log)")
        ax.set_ylabel("elements / ns (log)")
        ax.set_title(f"cross_entropy {key[1]}, {key[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
