"""nbxent._pool: large host outputs reuse the memory of outputs that are gone, never of
outputs still alive."""

import gc
import threading

import numpy as np
import pytest

import nbxent
from nbxent import _pool, reference

BIG = (4096, 1024)   # float32: 16 MiB, the smallest pooled size


@pytest.fixture(autouse=True)
def _empty_pool():
    _pool.release()
    yield
    _pool.release()


def _address(a):
    return a.__array_interface__["data"][0]


def test_a_released_output_is_reused_and_is_a_plain_array():
    a = _pool.empty(BIG, np.float32)
    assert a.shape == BIG and a.dtype == np.float32 and a.flags.c_contiguous
    assert a.flags.writeable and isinstance(a, np.ndarray)
    where = _address(a)
    del a
    gc.collect()
    assert _pool.kept_bytes() == 16 << 20
    b = _pool.empty(BIG[::-1], np.float32)   # same size, other shape
    assert _address(b) == where and b.shape == BIG[::-1]
    assert _pool.kept_bytes() == 0


def test_live_outputs_and_their_views_keep_their_memory():
    a = _pool.empty(BIG, np.float32)
    view = a[10:20]
    del a
    gc.collect()
    b = _pool.empty(BIG, np.float32)
    assert not np.shares_memory(b, view)
    view[:] = 1.0
    b[:] = 2.0
    assert (view == 1.0).all()


def test_small_and_other_sized_outputs_are_not_pooled():
    small = _pool.empty((100, 100), np.float32)
    assert small.base is None                 # a plain np.empty
    a = _pool.empty(BIG, np.float32)
    where = _address(a)
    del a, small
    gc.collect()
    c = _pool.empty((4096, 2048), np.float32)   # another size: a new buffer
    assert _address(c) != where
    assert _pool.kept_bytes() == 16 << 20


def test_keeps_at_most_KEEP_buffers_and_CAPACITY_bytes(monkeypatch):
    outs = [_pool.empty(BIG, np.float32) for _ in range(_pool.KEEP + 3)]
    del outs
    gc.collect()
    assert _pool.kept_bytes() == _pool.KEEP * (16 << 20)
    _pool.release()
    monkeypatch.setattr(_pool, "CAPACITY", 0)   # NBXENT_OUTPUT_CACHE_MB=0
    a = _pool.empty(BIG, np.float32)
    assert a.base is None
    del a
    gc.collect()
    assert _pool.kept_bytes() == 0


def test_fused_gradients_in_pooled_memory_are_right():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(BIG, dtype=np.float32)
    y = rng.integers(0, BIG[1], BIG[0])
    _, grad = nbxent.cross_entropy_with_grad(x, y)
    want = grad.copy()
    where = _address(grad)
    del grad
    gc.collect()
    x2 = x[::-1].copy()
    _, grad2 = nbxent.cross_entropy_with_grad(x2, y[::-1].copy())
    assert _address(grad2) == where            # the first gradient's pages, reused
    np.testing.assert_array_equal(grad2, want[::-1])
    _, ref = reference.cross_entropy_with_grad(x2[:64], y[::-1][:64])
    np.testing.assert_allclose(grad2[:64] * BIG[0] / 64, ref, rtol=1e-5, atol=1e-7)


def test_threads_never_share_a_live_buffer():
    errors = []

    def work(k):
        try:
            for i in range(20):
                a = _pool.empty(BIG, np.float32)
                a[:] = k
                if not (a == k).all():
                    errors.append(f"thread {k} round {i}: its output was overwritten")
                del a
        except Exception as e:   # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _pool.kept_bytes() <= _pool.KEEP * (16 << 20)


def test_info_reports_the_cache():
    a = _pool.empty(BIG, np.float32)
    del a
    gc.collect()
    facts = nbxent.info()
    assert facts["output_cache_mb"] == _pool.CAPACITY >> 20
    assert facts["output_cache_kept_mb"] == 16


def test_a_buffer_behind_others_of_other_sizes_is_found():
    sizes = [(4096, 1100), (4096, 1200), BIG]
    outs = [_pool.empty(s, np.float32) for s in sizes]
    where = _address(outs[-1])
    del outs
    gc.collect()
    b = _pool.empty(BIG, np.float32)
    assert _address(b) == where
    assert _pool.kept_bytes() == 4096 * (1100 + 1200) * 4
