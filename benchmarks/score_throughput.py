"""rows/s of nbxent.score on a .npy file vs in-memory cross_entropy, side by side.

usage: python benchmarks/score_throughput.py FOLDER CLASSES GIB [warm]
Writes FOLDER/x{C}.npy (GIB of float32 logits) and labels unless present, evicts the file
from the page cache, scores it, and with `warm` scores it again from the page cache.
Figures: docs/benchmarks.md, "Streaming scoring".
"""
import os
import statistics
import sys
import time

import numpy as np

import nbxent
from nbxent.scoring import score
from nbxent.softmax import scored_rows, top1_hits
folder, C, gb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n = int(gb * 2**30 / (C * 4)) // 65536 * 65536
xp, yp = os.path.join(folder, f"x{C}.npy"), os.path.join(folder, f"y{C}.npy")
rng = np.random.default_rng(0)
if not os.path.exists(xp) or np.load(xp, mmap_mode="r").shape != (n, C):
    t0 = time.perf_counter()
    y = rng.integers(0, C, n); np.save(yp, y)
    x = np.lib.format.open_memmap(xp, mode="w+", dtype=np.float32, shape=(n, C))
    blk = rng.standard_normal((65536, C), dtype=np.float32)
    for r0 in range(0, n, 65536):
        x[r0:r0 + 65536] = blk + np.float32(r0 % 7)
    x.flush(); del x
    print(f"wrote {n:,} x {C} ({n*C*4/2**30:.1f} GiB) in {time.perf_counter()-t0:.0f} s", flush=True)
m = min(n, 262144 if C <= 100 else 65536)
xm = np.ascontiguousarray(np.load(xp, mmap_mode="r")[:m]); ym = np.load(yp)[:m]
def rate(fn, rows, reps=5):
    fn(); ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return rows / statistics.median(ts)
ce = rate(lambda: nbxent.cross_entropy(xm, ym), m)
ce_top1 = rate(lambda: (nbxent.cross_entropy(xm, ym), top1_hits(xm, ym)), m)
lo, hi = np.empty(m, np.float32), np.empty(m, np.uint8)
fused = rate(lambda: scored_rows(xm, ym, lo, hi), m)   # what score runs per tile
def cold():
    fd = os.open(xp, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
score(xm, ym)  # compile
cold()
r = score(xp, yp)
print(f"C={C} file {n*C*4/2**30:.1f} GiB: score {r.rows_per_second:,.0f} rows/s ({r.rows_per_second*C*4/2**30:.2f} GiB/s); "
      f"in-memory cross_entropy {ce:,.0f} rows/s -> {r.rows_per_second/ce:.0%}; "
      f"cross_entropy+top1 {ce_top1:,.0f} rows/s -> {r.rows_per_second/ce_top1:.0%}; "
      f"scored_rows (fused) {fused:,.0f} rows/s -> {r.rows_per_second/fused:.0%}", flush=True)
if len(sys.argv) > 4:  # hot: file in page cache (only if it fits)
    r2 = score(xp, yp)
    print(f"   second (warm page cache) run: {r2.rows_per_second:,.0f} rows/s -> {r2.rows_per_second/ce:.0%} of cross_entropy", flush=True)
