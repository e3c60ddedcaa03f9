"""Threads, processes, Numba threading layers and determinism across thread counts.

Checks that need a threading layer other than this process's, more threads than this
machine has cores, or child processes run tests/concurrency_worker.py in a subprocess; the
subprocesses share one temporary Numba cache (the session's, see tests/conftest.py) so
that only the first one compiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import concurrency_worker
import public_calls
from backends import BACKENDS
from nbxent import _threading

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "concurrency_worker.py")


@pytest.fixture(scope="module")
def table():
    return public_calls.calls()


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory):
    """(environment of the workers, report of the first): the first worker runs every
    public call with the disk cache on, so that each kernel is in the cache (the session's,
    tests/conftest.py, or else one of this module's own) before any other worker starts."""
    env = dict(os.environ, NBXENT_CACHE="1")
    env.setdefault("NUMBA_CACHE_DIR", str(tmp_path_factory.mktemp("numba-cache")))
    env.pop("NUMBA_THREADING_LAYER", None)
    env.pop("NUMBA_NUM_THREADS", None)
    first = run_worker("bits", env)
    assert first["returncode"] == 0, first
    return env, first


@pytest.fixture(scope="module")
def worker_env(filled_cache):
    return filled_cache[0]


def run_worker(mode: str, env: dict, **extra) -> dict:
    proc = subprocess.run([sys.executable, WORKER, mode], env=dict(env, **extra),
                          capture_output=True, text=True, timeout=1200)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"worker {mode} printed nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1])
    report["returncode"] = proc.returncode
    return report


def loadable(layer: str) -> bool:
    return layer in _threading.describe()["layers_available"]


def test_8_threads_give_the_serial_results_in_this_process(table):
    assert concurrency_worker.check_threads(table) == []


def test_every_thread_count_gives_identical_bits_in_this_process(table):
    assert concurrency_worker.check_thread_counts(table) == []


def test_every_thread_count_up_to_8_gives_identical_bits(worker_env):
    report = run_worker("thread-counts", worker_env, NUMBA_NUM_THREADS="8")
    assert report["mismatches"] == [] and report["returncode"] == 0


@pytest.mark.skipif("gpu" not in BACKENDS, reason="needs the GPU backend (real GPU or simulator)")
def test_gpu_gives_identical_bits_on_every_run():
    table = public_calls.calls(backend="gpu")
    first = public_calls.run(table)
    assert public_calls.mismatches(first, public_calls.run(table)) == []


@pytest.mark.parametrize("layer", ["tbb", "omp", "workqueue"])
def test_8_threads_under_each_threading_layer(layer, worker_env):
    if not loadable(layer):
        pytest.skip(f"Numba's {layer} threading layer cannot be loaded on this machine")
    report = run_worker("threads", worker_env, NUMBA_THREADING_LAYER=layer)
    assert report["layer"] == layer
    assert report["mismatches"] == [] and report["returncode"] == 0


def test_kernels_loaded_from_the_disk_cache_give_the_bits_of_a_fresh_compile(filled_cache):
    """A process that loads every kernel from the disk cache gives the bits of this
    process's own compilation (the cache is off here: every kernel compiled fresh), as does
    the process that filled the cache. Numba optimises a parallel kernel loaded from its
    cache differently from a fresh compile: arithmetic left to LLVM's reassociation (the
    small-C kernel's z-loss, once) then differed in the last bit between the two."""
    from nbxent import _config

    if _config.CACHE:
        pytest.skip("NBXENT_CACHE=1 in this process: its kernels are not fresh compiles")
    env, first = filled_cache
    assert first["cache_misses"] + first["cache_hits"] > 0, first
    second = run_worker("bits", env)
    assert second["cache_hits"] > 0 and second["cache_misses"] == 0, second
    here = concurrency_worker.result_bits(public_calls.calls())
    assert [n for n in here if first["bits"][n] != here[n]] == []
    assert [n for n in here if second["bits"][n] != here[n]] == []


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_children_after_a_parallel_call_in_the_parent(method, worker_env):
    report = run_worker(method, worker_env)
    if report["layer"] == "omp" and method == "fork":
        pytest.skip("the default layer here is GNU OpenMP, which cannot run after fork")
    assert report["mismatches"] == [] and report["returncode"] == 0


def test_fork_after_gnu_openmp_is_a_clear_error_not_a_killed_child(worker_env):
    if not loadable("omp"):
        pytest.skip("Numba's omp threading layer cannot be loaded on this machine")
    report = run_worker("fork", worker_env, NUMBA_THREADING_LAYER="omp")
    vendor_is_gnu = report["mismatches"] != []
    if not vendor_is_gnu:
        pytest.skip("this OpenMP is not GNU's: fork is safe and the children matched")
    assert report["returncode"] == 1
    assert all(m.startswith("RuntimeError: nbxent cannot run CPU kernels in this process: it "
                            "was forked after its parent started GNU OpenMP threads")
               for m in report["mismatches"]), report["mismatches"]


def test_info_reports_the_layer_and_its_safety():
    import nbxent
    from numba.np.ufunc import parallel

    facts = nbxent.info()
    assert facts["threading_layer"] == parallel.threading_layer()
    assert facts["threading_layer"] in facts["layers_available"]
    assert facts["serialised_calls"] == (facts["threading_layer"] == "workqueue")
    assert facts["threads_in_use"] >= 1 and facts["numba"]


def test_info_command_prints_json(worker_env):
    proc = subprocess.run([sys.executable, "-m", "nbxent", "info", "--json"], env=dict(
        worker_env, NUMBA_THREADING_LAYER="workqueue"), capture_output=True, text=True,
        timeout=300)
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["threading_layer"] == "workqueue" and facts["serialised_calls"] is True
    assert facts["fork_safe"] is True


LONG_CALLS = """
import numpy as np, nbxent
x = np.random.default_rng(0).standard_normal((4096, 8000)).astype(np.float32)
y = np.zeros(4096, np.int64)
nbxent.cross_entropy_with_grad(x[:8], y[:8])
nbxent.logsumexp(x[:8])   # compiled before the signal: it is to land in running kernels
import faulthandler
faulthandler.dump_traceback_later(45)   # a hang after the signal shows where it is
print("ready", flush=True)
while True:
    nbxent.cross_entropy_with_grad(x, y)
    nbxent.logsumexp(x)
"""


def _native_stacks(pid: int) -> str:
    """Every thread's native stack of a live process, by gdb where it is installed."""
    try:
        return subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                              capture_output=True, text=True, timeout=60).stdout[-12000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no native stacks: {exc})"


def test_ctrl_c_during_long_calls_stops_the_process_cleanly(worker_env):
    """SIGINT lands while nogil kernels run on every thread: the call finishes, Python raises
    KeyboardInterrupt, and the process ends by it: no abort, no hang, no fatal error."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", LONG_CALLS], env=worker_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            native = _native_stacks(proc.pid)
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the worker had not ended 60 s after SIGINT\n--- its stderr:\n"
                        f"{err[-6000:]}\n--- its native stacks:\n{native}")
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT, err[-2000:]
    assert err.rstrip().endswith("KeyboardInterrupt")
    assert "Fatal Python error" not in err and "Terminating" not in err
