"""More than 2**31 elements: index arithmetic must not overflow (CPU; the GPU when present).

The logits are a sparse memory-mapped .npy file: (32769, 65536) float16, 2**31 + 65536
elements, zeros except the first and last rows, so it costs no disk and about 4.3 GB of
reclaimable page cache. Marked slow (about 30 s): it runs in CI and with NBXENT_SLOW=1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nbxent
from backends import BACKENDS
from nbxent import reference as ref

C = 65536
N = 2**31 // C + 1


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    if _available_memory() < 6 * 2**30:
        pytest.skip("needs about 6 GiB of available memory for the page cache of a 4.3 GB map")
    path = tmp_path_factory.mktemp("large") / "logits.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (N, C)})
        f.truncate(f.tell() + N * C * 2)
    x = np.load(path, mmap_mode="r+")
    rng = np.random.default_rng(0)
    x[0] = rng.standard_normal(C).astype(np.float16)
    x[-1] = (3 * rng.standard_normal(C)).astype(np.float16)   # at element offset > 2**31
    x.flush()
    del x
    y = np.zeros(N, np.int64)
    y[0], y[-1] = 5, C - 7
    return str(path), np.load(path, mmap_mode="r"), y


@pytest.mark.slow
def test_cross_entropy_past_2_to_the_31_elements(huge):
    path, x, y = huge
    assert x.size > 2**31
    rows = nbxent.cross_entropy(x, y, reduction="none")
    first = ref.cross_entropy(x[:1], y[:1], reduction="none")[0]
    last = ref.cross_entropy(x[-1:], y[-1:], reduction="none")[0]
    np.testing.assert_allclose(rows[[0, -1]], [first, last], rtol=2e-6)
    np.testing.assert_allclose(rows[1:-1], math.log(C), rtol=2e-6)
    want_mean = (first + last + (N - 2) * math.log(C)) / N
    np.testing.assert_allclose(float(nbxent.cross_entropy(x, y)), want_mean, rtol=1e-6)
    lse = nbxent.logsumexp(x)
    np.testing.assert_allclose(lse[-1], ref.logsumexp(x[-1:])[0], rtol=1e-3)  # float16 out
    result = nbxent.score(path, y)
    assert result.n_rows == N
    np.testing.assert_allclose(result.mean_loss, want_mean, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif("gpu" not in BACKENDS or __import__("backends").SIMULATOR,
                    reason="needs a real GPU (the simulator cannot hold 2**31 elements)")
def test_cross_entropy_past_2_to_the_31_elements_on_the_gpu(huge):
    from numba import cuda

    path, x, y = huge
    if cuda.current_context().get_memory_info()[0] < 6 * 2**30:
        pytest.skip("needs 6 GiB of free GPU memory")
    d_x, d_y = cuda.to_device(np.ascontiguousarray(x)), cuda.to_device(y)
    rows = nbxent.cross_entropy(d_x, d_y, reduction="none").copy_to_host()
    np.testing.assert_allclose(rows, nbxent.cross_entropy(x, y, reduction="none"), rtol=1e-5)
