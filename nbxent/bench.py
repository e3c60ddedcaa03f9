"""`nbxent bench`: cross_entropy against its peers on built-in random data.

Every library runs on the same inputs; their results are checked against each other before
any timing counts; rounds are interleaved (one call of each library per round) and the
median is reported, so that the noise of a shared machine hits every library alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

DEFAULT_SHAPES = [(65536, 1000), (4096, 32000), (1024, 128256), (1_000_000, 10), (4_000_000, 2)]
QUICK_SHAPES = [(8192, 1000), (256, 32000), (200_000, 10)]


@dataclass
class Peer:
    """One library's way of computing the benchmarked operation."""

    name: str
    prepare: callable  # (logits, labels) -> zero-argument callable returning the loss
    bytes_factor: float = 1.0  # bytes moved per logit element relative to one read
    timings: dict = field(default_factory=dict)


def _nbxent_peers(mode: str):
    import nbxent

    if mode == "forward":
        return [Peer("nbxent", lambda x, y: (lambda: nbxent.cross_entropy(x, y)))]

    def fused(x, y):
        return lambda: nbxent.cross_entropy_with_grad(x, y)[0]

    def fused_inplace(x, y):
        buf = x.copy()

        def run():
            buf[...] = x  # restore the logits the previous call overwrote; timed with it
            return nbxent.cross_entropy_with_grad(buf, y, inplace=True)[0]

        return run

    return [Peer("nbxent", fused, 2.0), Peer("nbxent inplace (+copy)", fused_inplace, 4.0)]


def _torch_peer(mode: str, threads: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    F = torch.nn.functional

    def prepare(x, y):
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return F.cross_entropy(tx, ty).item()
            return run

        def run_backward():
            leaf = tx.detach().requires_grad_(True)
            loss = F.cross_entropy(leaf, ty)
            loss.backward()
            return loss.item()
        return run_backward

    return Peer(f"torch {torch.__version__}", prepare, 1.0 if mode == "forward" else 2.0)


def _reference_peer():
    from nbxent import reference

    return Peer("reference (float64 NumPy)", lambda x, y: (lambda: reference.cross_entropy(x, y)))


def run():
            buf[...] = x  # restore the logits the previous call overwrote; timed with it
            return nbxent.cross_entropy_with_grad(buf, y, inplace=True)[0]

        return run

    return [Peer("nbxent", fused, 2.0), Peer("nbxent inplace (+copy)", fused_inplace, 4.0)]


def _torch_peer(mode: str, threads: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    F = torch.nn.functional

    def prepare(x, y):
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return F.cross_entropy(tx, ty).item()
            return run

        def run_backward():
            leaf = tx.detach().requires_grad_(True)
            loss = F.cross_entropy(leaf, ty)
            loss.backward()
            return loss.item()
        return run_backward

    return Peer(f"torch {torch.__version__}", prepare, 1.0 if mode == "forward" else 2.0)


def _reference_peer():
    from nbxent import reference

    return Peer("reference (float64 NumPy)", lambda x, y: (lambda: reference.cross_entropy(x, y)))


def _read_bandwidth(x: np.ndarray, rounds: int) -> float:
    """Bytes/s of a parallel Numba sum over x: the machine's read bound for this array."""
    from nbxent.cpu.softmax import sum_rows

    view = x.reshape(1, x.shape[0], x.shape[1])[0]
    out = np.empty(1, np.float64)
    sum_rows(view.astype(np.float64, copy=False) if x.dtype != np.float64 else view, 1.0, out)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sum_rows(view, 1.0, out)
        times.append(time.perf_counter() - t0)
    return x.nbytes / statistics.median(times)


def run(shapes=None, mode: str = "forward", rounds: int = 5, threads: int | None = None,
        include_reference: bool = True, printer=print) -> list[dict]:
    """Benchmark and print a table; returns one dict per (shape, library)."""
    import numba

    threads = threads or numba.get_num_threads()
    numba.set_num_threads(threads)
    shapes = shapes or DEFAULT_SHAPES
    rng = np.random.default_rng(0)
    rows = []
    printer(f"cross_entropy {mode}, float32, reduction='mean', {threads} threads, "
            f"median of {rounds} interleaved rounds")
    header = f"{'shape':>16}  {'library':<28}{'ms':>10}{'elem/ns':>9}{'GB/s':>8}{'x nbxent':>10}"
    printer(header)
    for n, c in shapes:
        x = (rng.standard_normal((n, c), dtype=np.float32) * 2).astype(np.float32)
        y = rng.integers(0, c, n)
        peers = _nbxent_peers(mode)
        torch_peer = _torch_peer(mode, threads)
        if torch_peer is not None:
            peers.append(torch_peer)
        if include_reference and n * c <= 70_000_000:
            peers.append(_reference_peer())
        runs = {p.name: p.prepare(x, y) for p in peers}
        values = {name: float(fn()) for name, fn in runs.items()}  # warm-up, compile
        want = values[peers[0].name]
        for name, v in values.items():
            if not np.isclose(v, want, rtol=1e-5):
                raise RuntimeError(f"{name} gives {v} on {(n, c)} but nbxent gives {want}")
        times = {p.name: [] for p in peers}
        for _ in range(rounds):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times[peers[0].name])
        for p in peers:
            t = statistics.median(times[p.name])
            row = {
                "shape": [n, c], "library": p.name, "mode": mode, "seconds": t,
                "elements_per_ns": n * c / t / 1e9,
                "gb_per_s": p.bytes_factor * x.nbytes / t / 1e9,
                "speedup_of_nbxent": t / base,
            }
            rows.append(row)
            printer(f"{str((n, c)):>16}  {p.name:<28}{t * 1e3:>10.2f}{row['elements_per_ns']:>9.2f}"
                    f"{row['gb_per_s']:>8.1f}{row['speedup_of_nbxent']:>10.2f}")
    return rows
