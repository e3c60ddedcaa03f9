"""Bad input: a clear error before any kernel runs, naming what was wrong and where."""

from __future__ import annotations

import numpy as np
import pytest

import nbxent
from tests.backends import BACKENDS, backend_params, to_backend

rng = np.random.default_rng()


def logits_labels(n=6, c=5, dtype=np.float32):
    return rng.standard_normal((n, c)).astype(dtype), rng.integers(0, c, n)


@backend_params
@pytest.mark.parametrize("bad_value, position", [(5, 3), (-1, 0), (-101, 5), (1000, 2)])
def test_label_out_of_range_names_position_and_value(backend, bad_value, position):
    logits, labels = logits_labels()
    labels[position] = bad_value
    with pytest.raises(ValueError, match=rf"target\[{position}\] = {bad_value} .*\[0, 5\)"):
        nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend))


@backend_params
def test_first_bad_label_of_a_3d_target(backend):
    logits = rng.standard_normal((2, 3, 4)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 3))
    labels[1, 2] = 9
    labels[1, 1] = 7
    with pytest.raises(ValueError, match=r"target\[1, 1\] = 7"):
        nbxent.cross_entropy(to_backend(logits, backend), to_backend(labels, backend))


def test_bad_label_with_inplace_leaves_logits_untouched():
    logits, labels = logits_labels()
    labels[2] = 77
    before = logits.copy()
    with pytest.raises(ValueError, match="77"):
        nbxent.cross_entropy_with_grad(logits, labels, inplace=True)
    np.testing.assert_array_equal(logits, before)


def test_bad_label_is_reported_for_huge_unsigned_values():
    logits, labels = logits_labels()
    labels = labels.astype(np.uint64)
    labels[4] = np.uint64(2**63 + 5)
    with pytest.raises(ValueError, match=rf"target\[4\] = {2**63 + 5}"):
        nbxent.cross_entropy(logits, labels)


def test_nll_bad_label():
    logits, labels = logits_labels()
    labels[1] = 5
    with pytest.raises(ValueError, match=r"target\[1\] = 5"):
        nbxent.nll_loss(logits, labels)


@pytest.mark.parametrize("fn", [nbxent.cross_entropy, nbxent.nll_loss])
def test_target_shape_mismatch_names_both_shapes(fn):
    logits, _ = logits_labels()
    with pytest.raises(ValueError, match=r"\(7,\).*\(6, 5\).*\(6,\)"):
        fn(logits, np.zeros(7, np.int64))


def test_soft_target_shape_mismatch_names_both_shapes():
    logits, _ = logits_labels()
    with pytest.raises(ValueError, match=r"\(6, 4\).*\(6, 5\)"):
        nbxent.cross_entropy(logits, np.full((6, 4), 0.25))


def test_weight_length_mismatch():
    logits, labels = logits_labels()
    with pytest.raises(ValueError, match=r"weight has shape \(4,\).*5 classes"):
        nbxent.cross_entropy(logits, labels, weight=np.ones(4))


def test_out_shape_and_dtype_mismatch():
    logits, labels = logits_labels()
    with pytest.raises(ValueError, match=r"out has shape \(5,\).*\(6,\)"):
        nbxent.cross_entropy(logits, labels, reduction="none", out=np.empty(5, np.float32))
    with pytest.raises(TypeError, match="out has dtype float64"):
        nbxent.cross_entropy(logits, labels, reduction="none", out=np.empty(6, np.float64))
    with pytest.raises(ValueError, match="reduction='none'"):
        nbxent.cross_entropy(logits, labels, out=np.empty(6, np.float32))
    with pytest.raises(ValueError, match=r"out has shape"):
        nbxent.softmax(logits, out=np.empty((5, 6), np.float32))


def test_read_only_out():
    logits, labels = logits_labels()
    out = np.empty(6, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nbxent.cross_entropy(logits, labels, reduction="none", out=out)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.complex64, np.bool_, np.longdouble])
def test_non_float_logits_are_a_type_error(dtype):
    logits = np.zeros((3, 4), dtype)
    with pytest.raises(TypeError, match="logits must be a float16, float32 or float64"):
        nbxent.cross_entropy(logits, np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="x must be a float16"):
        nbxent.softmax(logits)


def test_float_class_indices_are_an_error():
    logits, labels = logits_labels()
    with pytest.raises(TypeError, match="class indices must be integers"):
        nbxent.cross_entropy(logits, labels.astype(np.float32))
    with pytest.raises(TypeError, match="integer class indices"):
        nbxent.nll_loss(logits, rng.random((6, 5)))


def test_bool_or_complex_target_is_a_type_error():
    logits, labels = logits_labels()
    with pytest.raises(TypeError, match="target must be integer class indices or float"):
        nbxent.cross_entropy(logits, labels.astype(bool))


@pytest.mark.parametrize("kwargs, match", [
    ({"reduction": "avg"}, "reduction must be one of"),
    ({"reduction": None}, "reduction must be one of"),
    ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0.0, 1.0\]"),
    ({"label_smoothing": -0.1}, "label_smoothing must be in"),
    ({"label_smoothing": float("nan")}, "label_smoothing must be in"),
    ({"z_loss": -1.0}, "z_loss must be a finite number >= 0.0"),
    ({"z_loss": float("inf")}, "z_loss must be a finite number >= 0.0"),
    ({"axis": 2}, "axis 2 is out of bounds"),
    ({"axis": 1.0}, "axis must be an integer"),
    ({"ignore_index": 1.5}, "ignore_index must be an integer"),
])
def test_bad_options(kwargs, match):
    logits, labels = logits_labels()
    with pytest.raises(ValueError, match=match):
        nbxent.cross_entropy(logits, labels, **kwargs)


def test_zero_dimensional_logits():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        nbxent.cross_entropy(np.float32(1.0), np.int64(0))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        nbxent.logsumexp(np.float32(1.0))


def test_grad_output_shape_mismatch():
    logits, labels = logits_labels()
    with pytest.raises(ValueError, match=r"grad_output has shape \(4,\).*\(6,\)"):
        nbxent.cross_entropy_with_grad(logits, labels, reduction="none", grad_output=np.ones(4))
    with pytest.raises(ValueError, match="must be a scalar"):
        nbxent.cross_entropy_with_grad(logits, labels, grad_output=np.ones(6))


@pytest.mark.skipif("gpu" not in BACKENDS, reason="needs the GPU backend (real GPU or simulator)")
def test_mixing_host_and_device_arrays_names_both():
    logits, labels = logits_labels()
    with pytest.raises(TypeError, match="logits is a GPU array but target is a host"):
        nbxent.cross_entropy(to_backend(logits, "gpu"), labels)
    with pytest.raises(TypeError, match="target is a GPU array but logits is a host"):
        nbxent.cross_entropy(logits, to_backend(labels, "gpu"))
