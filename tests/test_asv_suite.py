"""Smoke run of the asv suite, so it cannot rot: asv's own `asv check` validates it, and
every benchmark runs once here (setup, each time_/track_ method, teardown) with the tiny
shapes of NBXENT_ASV_SMOKE=1 in a child process. Benchmarks whose setup raises
NotImplementedError (the GPU classes without a GPU) count as skipped, as asv counts them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)

SMOKE_RUN = r"""
import importlib, inspect, itertools, json, math, pkgutil, sys
import asv_benchmarks

ran, skipped = [], []
for info in pkgutil.iter_modules(asv_benchmarks.__path__):
    if not info.name.startswith("bench_"):
        continue
    module = importlib.import_module(f"asv_benchmarks.{info.name}")
    for cls_name, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != module.__name__ or cls_name.startswith("_"):
            continue
        methods = [m for m in dir(cls) if m.startswith(("time_", "track_"))]
        if not methods:
            continue
        params = getattr(cls, "params", [])
        if params and not isinstance(params[0], (list, tuple)):
            params = [params]
        for combo in (itertools.product(*params) if params else [()]):
            bench = cls()
            try:
                if hasattr(bench, "setup"):
                    bench.setup(*combo)
            except NotImplementedError:
                skipped.append(f"{cls_name}{combo}")
                continue
            try:
                for name in methods:
                    value = getattr(bench, name)(*combo)
                    if name.startswith("track_"):
                        assert isinstance(value, (int, float)) and math.isfinite(value) \
                            and value > 0, f"{cls_name}.{name}{combo} returned {value!r}"
                    ran.append(f"{cls_name}.{name}{combo}")
            finally:
                if hasattr(bench, "teardown"):
                    bench.teardown(*combo)
print(json.dumps({"ran": ran, "skipped": skipped}))
"""


def test_every_asv_benchmark_runs_on_tiny_shapes():
    env = dict(os.environ, NBXENT_ASV_SMOKE="1", PYTHONPATH=os.path.abspath(ROOT))
    proc = subprocess.run([sys.executable, "-c", SMOKE_RUN], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    ran = report["ran"]
    for family in ("CrossEntropyCPU.", "CrossEntropyVsTorchCPU.", "NormalisersCPU.",
                   "BinaryCPU.", "DivergencesCPU.", "ScoreCPU."):
        assert any(r.startswith(family) for r in ran), f"no {family} benchmark ran"
    assert all("GPU" in s for s in report["skipped"]), report["skipped"]


@pytest.mark.skipif(shutil.which("asv") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "asv")), reason="asv is not installed")
def test_asv_check_accepts_the_suite():
    asv = shutil.which("asv") or os.path.join(os.path.dirname(sys.executable), "asv")
    proc = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
