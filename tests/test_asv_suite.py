"""Smoke run of the asv suite, so it cannot rot: asv's own `asv check` validates it, and
every benchmark runs once here (setup, each time_/track_ method, teardown) with the tiny
shapes of NBXENT_ASV_SMOKE=1. It runs in this process, so the kernels it compiles serve the
rest of the suite (in a child of its own it compiled for two minutes on a slow 2-core VM).
Benchmarks whose setup raises NotImplementedError (the GPU classes without a GPU) count as
skipped, as asv counts them."""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
import os
import pkgutil
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)

def _run_every_benchmark() -> tuple[list[str], list[str]]:
    """Each benchmark once, as asv would: setup, every time_/track_ method, teardown.
    Returns (names that ran, names whose setup raised NotImplementedError)."""
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
    return ran, skipped


@pytest.fixture
def smoke_suite(monkeypatch):
    """asv_benchmarks imported afresh with NBXENT_ASV_SMOKE=1 (read at import), and
    forgotten afterwards so that nothing else sees its tiny shapes."""
    def forget():
        for name in [m for m in sys.modules if m == "asv_benchmarks" or
                     m.startswith("asv_benchmarks.")]:
            del sys.modules[name]

    monkeypatch.setenv("NBXENT_ASV_SMOKE", "1")
    monkeypatch.syspath_prepend(os.path.abspath(ROOT))
    forget()
    yield
    forget()


def test_every_asv_benchmark_runs_on_tiny_shapes(smoke_suite):
    ran, skipped = _run_every_benchmark()
    for family in ("CrossEntropyCPU.", "CrossEntropyVsTorchCPU.", "NormalisersCPU.",
                   "BinaryCPU.", "DivergencesCPU.", "ScoreCPU."):
        assert any(r.startswith(family) for r in ran), f"no {family} benchmark ran"
    assert all("GPU" in s for s in skipped), skipped


@pytest.mark.skipif(shutil.which("asv") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "asv")), reason="asv is not installed")
def test_asv_check_accepts_the_suite():
    asv = shutil.which("asv") or os.path.join(os.path.dirname(sys.executable), "asv")
    proc = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
