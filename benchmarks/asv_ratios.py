"""The asv suite's CPU `track_*_ratio` benchmarks of the binary and divergence families,
run directly: each ratio five times, printed as median (min, max).

usage: python benchmarks/asv_ratios.py
A ratio is a peer's time (torch, SciPy, scikit-learn) over nbxent's, both measured in the
same call. torch runs on 2 threads, as nbxent does on the 2-core machine. Figures:
docs/benchmarks.md, "Binary family and divergences".
"""
import inspect
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from asv_benchmarks import bench_binary, bench_divergences  # noqa: E402

torch.set_num_threads(2)
for module in (bench_binary, bench_divergences):
    for name, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != module.__name__ or name.startswith("_") or "GPU" in name:
            continue
        bench = cls()
        bench.setup()
        ratios = sorted(m for m in dir(bench) if m.startswith("track_") and m.endswith("ratio"))
        for method in ratios:
            values = [getattr(bench, method)() for _ in range(5)]
            print(f"{name}.{method}: {statistics.median(values):.1f}x "
                  f"({min(values):.1f}-{max(values):.1f})", flush=True)
