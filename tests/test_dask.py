"""nbxent.dask: the softmax family on Dask arrays equals the in-memory functions."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import nbxent  # noqa: E402
import nbxent.dask as nd  # noqa: E402


def _data(shape=(400, 12, 19), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.integers(0, shape[-1], shape[:-1])
    y.reshape(-1)[::7] = -100
    return x, y


# Odd chunkings: the class axis split, target chunks unrelated to the logits'.
CHUNKINGS = [((100, 5, 7), (133, 12)), ((400, 12, 19), (400, 12)), ((37, 3, 19), (50, 5))]


@pytest.mark.parametrize("xc, yc", CHUNKINGS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_matches_in_memory(xc, yc, reduction):
    x, y = _data()
    w = np.random.default_rng(1).random(19)
    options = dict(weight=w, label_smoothing=0.1, z_loss=1e-4, reduction=reduction)
    lazy = nd.cross_entropy(da.from_array(x, chunks=xc), da.from_array(y, chunks=yc), **options)
    assert isinstance(lazy, da.Array)
    got = lazy.compute()
    expected = nbxent.cross_entropy(x, y, **options)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    if reduction == "none":
        np.testing.assert_array_equal(got, expected)   # same kernels, row by row
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_class_axis_elsewhere_and_nll_loss():
    x, y = _data((30, 11, 40))
    xt = np.moveaxis(x, -1, 1)                          # PyTorch's (N, C, d)
    X = da.from_array(xt, chunks=(7, 4, 9))
    got = nd.cross_entropy(X, da.from_array(y, chunks=(8, 40)), axis=1, reduction="none")
    np.testing.assert_array_equal(got.compute(), nbxent.cross_entropy(xt, y, axis=1, reduction="none"))
    lp = nbxent.log_softmax(x)
    got = nd.nll_loss(da.from_array(lp, chunks=(9, 11, 13)), da.from_array(y, chunks=10))
    np.testing.assert_allclose(got.compute(), nbxent.nll_loss(lp, y), rtol=1e-6)


@pytest.mark.parametrize("name", ["log_softmax", "softmax", "logsumexp"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_rowwise_functions(name, axis):
    x, _ = _data((50, 20, 30), dtype=np.float64)
    got = getattr(nd, name)(da.from_array(x, chunks=(9, 7, 8)), axis=axis).compute()
    np.testing.assert_array_equal(got, getattr(nbxent, name)(x, axis=axis))


def test_mean_over_nothing_is_nan_and_lazy_label_errors():
    x, y = _data((20, 5))
    y[:] = -100
    assert np.isnan(nd.cross_entropy(da.from_array(x, chunks=7), da.from_array(y, chunks=7)).compute())
    y[13] = 5
    lazy = nd.cross_entropy(da.from_array(x, chunks=7), da.from_array(y, chunks=7))
    with pytest.raises(ValueError, match=r"target\[6\] = 5 is not a class index"):
        lazy.compute()    # row 13 is row 6 of the second block


@pytest.mark.parametrize("call, error, match", [
    (lambda x, y: nd.cross_entropy(x, y[:-1]), ValueError, "need shape"),
    (lambda x, y: nd.cross_entropy(x.astype(np.int32), y), TypeError, "float16, float32 or float64"),
    (lambda x, y: nd.cross_entropy(x, y.astype(np.float32)), TypeError, "integer class indices"),
    (lambda x, y: nd.cross_entropy(x, y, reduction="avg"), ValueError, "reduction"),
    (lambda x, y: nd.cross_entropy(x, y, label_smoothing=2), ValueError, "label_smoothing"),
    (lambda x, y: nd.cross_entropy(x, y, weight=np.ones(3)), ValueError, "weight"),
    (lambda x, y: nd.cross_entropy(x, y, axis=5), ValueError, "axis"),
    (lambda x, y: nd.logsumexp(x[0, 0]), ValueError, "0-d"),
])
def test_bad_input_raises_when_building_the_graph(call, error, match):
    x, y = _data((20, 6))
    with pytest.raises(error, match=match):
        call(da.from_array(x, chunks=7), da.from_array(y, chunks=7))


def test_numba_threads_per_block_leave_the_caller_alone():
    import numba

    before = numba.get_num_threads()
    x, y = _data((64, 10))
    got = nd.cross_entropy(da.from_array(x, chunks=8), da.from_array(y, chunks=8), numba_threads=1)
    assert got.compute(scheduler="threads") == pytest.approx(float(nbxent.cross_entropy(x, y)), rel=1e-6)
    assert numba.get_num_threads() == before


def test_local_cluster_with_worker_processes(monkeypatch):
    distributed = pytest.importorskip("distributed")
    # the two workers start together and would write the same kernels to the session's
    # disk cache at once (tests/conftest.py), which Numba does not promise to survive
    monkeypatch.setenv("NBXENT_CACHE", "0")
    x, y = _data((2000, 50))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        X = da.from_array(x, chunks=(250, 50))
        Y = da.from_array(y, chunks=300)
        mean = client.compute(nd.cross_entropy(X, Y)).result()
        rows = client.compute(nd.cross_entropy(X, Y, reduction="none")).result()
    np.testing.assert_allclose(mean, nbxent.cross_entropy(x, y), rtol=1e-6)
    np.testing.assert_array_equal(rows, nbxent.cross_entropy(x, y, reduction="none"))
