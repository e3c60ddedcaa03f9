"""First-call time of nbxent kernels in a new process, without and with the on-disk cache.

Each case runs in fresh Python processes: `import nbxent` is timed, then the first call
(compilation, or loading from the cache, plus the call itself), then a second call for
comparison. "cached" runs with NBXENT_CACHE=1 and NUMBA_CACHE_DIR set to a temporary
folder that one untimed process filled first. Children run with bytecode writing on
(PYTHONDONTWRITEBYTECODE dropped from their environment), as an installed package has its
.pyc files: with it set, every process compiled nbxent's modules to bytecode again, which
added 0.1-0.2 s to a first call on Zen 4.

    python benchmarks/cold_start.py [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CASES = {
    "cross_entropy (4096, 1000)": "nbxent.cross_entropy(x, y)",
    "cross_entropy (100000, 10)": "nbxent.cross_entropy(xs, ys)",
    "cross_entropy_with_grad (4096, 1000)": "nbxent.cross_entropy_with_grad(x, y)",
    "logsumexp (4096, 1000)": "nbxent.logsumexp(x)",
}

CHILD = """
import time, json, sys
t0 = time.perf_counter()
import numpy as np
import nbxent
t1 = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((4096, 1000), dtype=np.float32)
y = rng.integers(0, 1000, 4096)
xs = rng.standard_normal((100000, 10), dtype=np.float32)
ys = rng.integers(0, 10, 100000)
t2 = time.perf_counter()
{call}
t3 = time.perf_counter()
{call}
t4 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "first": t3 - t2, "second": t4 - t3}}))
"""


def _child(call: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(call=call)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'case':<40}{'cache':>8}{'import s':>10}{'first call s':>14}{'second call s':>15}")
    for name, call in CASES.items():
        with tempfile.TemporaryDirectory() as cache_dir:
            base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            cold = dict(base, NBXENT_CACHE="0")
            cached = dict(base, NBXENT_CACHE="1", NUMBA_CACHE_DIR=cache_dir)
            _child(call, cached)   # fills the cache (untimed)
            for label, env in (("off", cold), ("on", cached)):
                runs = [_child(call, env) for _ in range(args.repeats)]
                row = {"case": name, "cache": label,
                       **{k: statistics.median(r[k] for r in runs) for k in runs[0]}}
                rows.append(row)
                print(f"{name:<40}{label:>8}{row['import']:>10.2f}{row['first']:>14.2f}"
                      f"{row['second']:>15.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
