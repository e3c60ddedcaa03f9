"""Checks that need a process of their own (a threading layer is fixed per process).

    python tests/concurrency_worker.py threads        8 threads, every public call many times
    python tests/concurrency_worker.py thread-counts  every numba.set_num_threads value
    python tests/concurrency_worker.py fork|spawn     children after a parallel call here
    python tests/concurrency_worker.py bits           every call's result bits (sha256) and
                                                      the on-disk cache's hits and misses

Each prints one JSON object on its last line: the threading layer and the names of the calls
whose results differed from the serial ones (or the child's error); exit status 0 when none.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numba  # noqa: E402

import nbxent  # noqa: E402
import public_calls  # noqa: E402


def check_threads(table: dict, workers: int = 8, repeats: int = 15) -> list[str]:
    """Every call `repeats` times, shuffled, on `workers` threads, against a serial run."""
    serial = public_calls.run(table)
    jobs = [name for name in table for _ in range(repeats)]
    random.Random(0).shuffle(jobs)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [(name, pool.submit(table[name])) for name in jobs]
        results = [(name, future.result()) for name, future in futures]
    bad = set()
    for name, got in results:
        bad.update(public_calls.mismatches({name: serial[name]}, {name: got}))
    return sorted(bad)


def check_thread_counts(table: dict) -> list[str]:
    """Bit-identical results at every thread count from 1 to NUMBA_NUM_THREADS, twice over."""
    before = numba.get_num_threads()
    bad = set()
    try:
        numba.set_num_threads(1)
        expected = public_calls.run(table)
        for threads in [*range(1, numba.config.NUMBA_NUM_THREADS + 1), 1]:
            numba.set_num_threads(threads)
            bad.update(f"{name} at {threads} threads"
                       for name in public_calls.mismatches(expected, public_calls.run(table)))
    finally:
        numba.set_num_threads(before)
    return sorted(bad)


def _child_results(_):
    try:
        return public_calls.run(public_calls.calls())
    except Exception as e:  # reported to the parent as data, not as a dead worker
        return f"{type(e).__name__}: {e}"


def check_children(start_method: str, table: dict) -> list[str]:
    expected = public_calls.run(table)  # starts the parent's thread pool first
    context = multiprocessing.get_context(start_method)
    with context.Pool(2) as pool:
        results = pool.map(_child_results, range(2))
    bad = []
    for got in results:
        bad += [got] if isinstance(got, str) else public_calls.mismatches(expected, got)
    return sorted(set(bad))


def result_bits(table: dict) -> dict:
    """name -> sha256 of the call's result bytes (dtype and shape included)."""
    bits = {}
    for name, arrays in public_calls.run(table).items():
        h = hashlib.sha256()
        for a in arrays:
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        bits[name] = h.hexdigest()
    return bits


def cache_stats() -> tuple[int, int]:
    """(hits, misses) of the on-disk cache over every CPU kernel of nbxent so far."""
    from numba.core.registry import CPUDispatcher

    import nbxent.cpu.binary
    import nbxent.cpu.divergences
    import nbxent.cpu.softmax

    kernels = {id(v): v for m in (nbxent.cpu.softmax, nbxent.cpu.binary, nbxent.cpu.divergences)
               for v in [*vars(m).values(), *getattr(m, "_FEW_KERNELS", {}).values()]
               if isinstance(v, CPUDispatcher)}
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels.values())
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels.values())
    return hits, misses


def main(mode: str) -> int:
    table = public_calls.calls()
    if mode == "bits":
        bits = result_bits(table)
        hits, misses = cache_stats()
        print(json.dumps({"layer": nbxent.info()["threading_layer"], "mismatches": [],
                          "bits": bits, "cache_hits": hits, "cache_misses": misses}))
        return 0
    if mode == "threads":
        bad = check_threads(table)
    elif mode == "thread-counts":
        bad = check_thread_counts(table)
    elif mode in ("fork", "spawn", "forkserver"):
        bad = check_children(mode, table)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps({"layer": nbxent.info()["threading_layer"], "mismatches": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
