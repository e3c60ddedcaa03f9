"""One test per row of docs/errors.md, and a check that the table and these tests agree.

In-process rows run their example from CASES; rows that need a child process or the command
line name the test that covers them in ELSEWHERE.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import nbxent
from backends import BACKENDS, to_backend

TABLE = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "errors.md")


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    t = (rng.random((6, 5)) < 0.5).astype(np.float32)
    return x, y, t, nbxent.softmax(x)


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def files(tmp):
    """The .npy files of the file rows, in folder `tmp`."""
    x, y, _, _ = data()
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", y)
    np.save(tmp / "y5.npy", y[:5])
    np.save(tmp / "xi.npy", x.astype(np.int32))
    np.save(tmp / "yf.npy", y.astype(np.float32))
    np.save(tmp / "ybad.npy", np.array([0, 1, 2, 9, 4, 0]))
    (tmp / "junk.npy").write_bytes(b"not numpy")
    return {name: str(tmp / f"{name}.npy") for name in ("x", "y", "y5", "xi", "yf", "ybad", "junk")}


def score_files(tmp, logits: str, labels: str, **options):
    """`nbxent.score` on two of the files of `files(tmp)`, named by their keys."""
    paths = files(tmp)
    return nbxent.score(paths[logits], paths[labels], **options)


def no_gpu(monkeypatch):
    from nbxent.gpu import _arrays

    monkeypatch.setattr(_arrays, "available", lambda: False)
    monkeypatch.setattr(_arrays, "simulator_enabled", lambda: False)


X, Y, T, P = data()
BAD_Y = np.array([0, 1, 2, 7, 4, 0])

# row -> (call(tmp_path, monkeypatch), exception type, message pattern)
CASES = {
    "target-shape": (lambda tmp, mp: nbxent.cross_entropy(X, Y[:4]), ValueError,
                     r"target of class indices has shape \(4,\) but logits of shape \(6, 5\) "
                     r"with classes on axis 1 need shape \(6,\)"),
    "soft-target-shape": (lambda tmp, mp: nbxent.cross_entropy(X, T[:, :4]), ValueError,
                          r"soft target \(probabilities\) has shape \(6, 4\) but logits have "
                          r"shape \(6, 5\)"),
    "weight-shape": (lambda tmp, mp: nbxent.cross_entropy(X, Y, weight=np.ones(4)), ValueError,
                     r"weight has shape \(4,\) but the input has 5 classes"),
    "out-shape": (lambda tmp, mp: nbxent.cross_entropy(X, Y, reduction="none",
                                                       out=np.empty(5, np.float32)),
                  ValueError, r"out has shape \(5,\) but the result has shape \(6,\)"),
    "out-dtype": (lambda tmp, mp: nbxent.log_softmax(X, out=np.empty((6, 5))), TypeError,
                  "out has dtype float64 but the result has dtype float32"),
    "out-read-only": (lambda tmp, mp: nbxent.log_softmax(X, out=read_only(X)), ValueError,
                      "out is read-only"),
    "grad-output-shape": (lambda tmp, mp: nbxent.cross_entropy_with_grad(
        X, Y, reduction="none", grad_output=np.ones(4)), ValueError,
        r"grad_output has shape \(4,\) but the per-row losses have shape \(6,\)"),
    "zero-d-logits": (lambda tmp, mp: nbxent.cross_entropy(np.float32(1), Y), ValueError,
                      "logits must have at least 1 dimension"),
    "bad-axis": (lambda tmp, mp: nbxent.cross_entropy(X, Y, axis=2), ValueError,
                 r"axis 2 is out of bounds for logits of shape \(6, 5\)"),
    "binary-shape": (lambda tmp, mp: nbxent.binary_cross_entropy(P, T[:, :4]), ValueError,
                     r"target has shape \(6, 4\) but probs has shape \(6, 5\)"),
    "binary-broadcast": (lambda tmp, mp: nbxent.binary_cross_entropy_with_logits(
        X, T, pos_weight=np.ones(3)), ValueError,
        r"pos_weight has shape \(3,\), which does not broadcast to the shape \(6, 5\) of logits"),
    "kl-shape": (lambda tmp, mp: nbxent.kl_divergence(P, P[:, :4]), ValueError,
                 r"p has shape \(6, 5\) but q has shape \(6, 4\)"),
    "log-loss-samples": (lambda tmp, mp: nbxent.log_loss(Y[:4], P), ValueError,
                         r"y_true has 4 samples but y_prob has shape \(6, 5\) \(6 samples\)"),
    "log-loss-classes": (lambda tmp, mp: nbxent.log_loss(Y, P[:, :4]), ValueError,
                         "different number of classes: 5 vs 4"),
    "non-float-logits": (lambda tmp, mp: nbxent.cross_entropy(X.astype(np.int32), Y), TypeError,
                         "logits must be a float16, float32 or float64 array, got dtype int32"),
    "float-class-indices": (lambda tmp, mp: nbxent.cross_entropy(X, Y.astype(np.float32)),
                            TypeError, "class indices must be integers"),
    "bool-target": (lambda tmp, mp: nbxent.cross_entropy(X, Y.astype(bool)), TypeError,
                    "target must be integer class indices or float probabilities, got dtype bool"),
    "complex-weight": (lambda tmp, mp: nbxent.cross_entropy(X, Y, weight=np.ones(5, complex)),
                       TypeError, "weight must be a real array, got dtype complex128"),
    "label-out-of-range": (lambda tmp, mp: nbxent.cross_entropy(X, BAD_Y), ValueError,
                           r"target\[3\] = 7 is not a class index in \[0, 5\) nor "
                           r"ignore_index \(-100\)"),
    "label-out-of-range-gpu": (lambda tmp, mp: nbxent.cross_entropy(
        to_backend(X, "gpu"), to_backend(BAD_Y, "gpu")), ValueError,
        r"target\[3\] = 7 is not a class index in \[0, 5\)"),
    "probability-out-of-range": (lambda tmp, mp: nbxent.binary_cross_entropy(X, T), ValueError,
                                 r"probs\[0, 1\] = -0\.13\d* is outside \[0, 1\]"),
    "log-loss-unknown-label": (lambda tmp, mp: nbxent.log_loss(Y, P, labels=[0, 1]), ValueError,
                               r"y_true contains values \{2, 3, 4\} not belonging to the passed "
                               r"labels \[0, 1\]"),
    "unknown-reduction": (lambda tmp, mp: nbxent.cross_entropy(X, Y, reduction="avg"),
                          ValueError, "reduction must be one of .*got 'avg'"),
    "label-smoothing-range": (lambda tmp, mp: nbxent.cross_entropy(X, Y, label_smoothing=1.5),
                              ValueError, r"label_smoothing must be in \[0.0, 1.0\], got 1.5"),
    "negative-coefficient": (lambda tmp, mp: nbxent.cross_entropy(X, Y, z_loss=-1.0), ValueError,
                             "z_loss must be a finite number >= 0.0, got -1.0"),
    "eps-range": (lambda tmp, mp: nbxent.binary_cross_entropy(P, T, eps=0.7), ValueError,
                  r"eps must be in \[0.0, 0.5\], got 0.7"),
    "ignore-index-type": (lambda tmp, mp: nbxent.cross_entropy(X, Y, ignore_index=1.5),
                          ValueError, "ignore_index must be an integer, got 1.5"),
    "non-bool-flag": (lambda tmp, mp: nbxent.cross_entropy_with_grad(X.copy(), Y, inplace="yes"),
                      TypeError, "inplace must be True or False, got 'yes'"),
    "inplace-read-only": (lambda tmp, mp: nbxent.cross_entropy_with_grad(read_only(X), Y,
                                                                         inplace=True),
                          ValueError, "writes the gradient over logits, but logits are read-only"),
    "missing-file": (lambda tmp, mp: nbxent.score(str(tmp / "nope.npy"), files(tmp)["y"]),
                     FileNotFoundError, "logits file '.*nope.npy' does not exist"),
    "not-npy": (lambda tmp, mp: score_files(tmp, "junk", "y"), ValueError,
                "logits file '.*junk.npy' is not a .npy file"),
    "row-count-mismatch": (lambda tmp, mp: score_files(tmp, "x", "y5"),
                           ValueError, r"logits of shape \(6, 5\) need labels of shape \(6,\), "
                                       r"got labels of shape \(5,\)"),
    "file-label-out-of-range": (lambda tmp, mp: score_files(tmp, "x", "ybad"),
                                ValueError, r"labels row 3 has class index 9, outside \[0, 5\)"),
    "non-float-logits-file": (lambda tmp, mp: score_files(tmp, "xi", "y"),
                              TypeError, "logits must be float16, float32 or float64, got dtype "
                                         "int32"),
    "non-integer-labels-file": (lambda tmp, mp: score_files(tmp, "x", "yf"),
                                TypeError, "labels must be integer class indices, got dtype "
                                           "float32"),
    "out-folder-missing": (lambda tmp, mp: nbxent.score(X, Y, out=str(tmp / "nodir" / "o.npy")),
                           FileNotFoundError, "output folder '.*nodir' does not exist"),
    "out-overwrites-input": (lambda tmp, mp: score_files(tmp, "x", "y",
                                                          out=str(tmp / "x.npy")),
                             ValueError, "would overwrite the logits file"),
    "resume-without-out": (lambda tmp, mp: nbxent.score(X, Y, resume=True), ValueError,
                           "resume=True continues a run that writes out="),
    "bad-chunk-rows": (lambda tmp, mp: nbxent.score(X, Y, chunk_rows=0), ValueError,
                       "chunk_rows must be a positive integer, got 0"),
    "bad-device": (lambda tmp, mp: nbxent.score(X, Y, device="tpu"), ValueError,
                   "device must be 'cpu', 'gpu' or 'auto', got 'tpu'"),
    "no-gpu": (lambda tmp, mp: (no_gpu(mp), nbxent.score(X, Y, device="gpu")), RuntimeError,
               "device='gpu' but no GPU is usable"),
    "host-device-mix": (lambda tmp, mp: nbxent.cross_entropy(to_backend(X, "gpu"), Y), TypeError,
                        "logits is a GPU array but target is a host"),
    "score-cpu-device-arrays": (lambda tmp, mp: nbxent.score(
        to_backend(X, "gpu"), to_backend(Y, "gpu"), device="cpu"), ValueError,
        "device='cpu' but the logits or labels are GPU arrays"),
}

NEEDS_GPU = {"label-out-of-range-gpu", "host-device-mix", "score-cpu-device-arrays"}

# Rows covered by tests that need a child process, the command line, or an earlier run.
ELSEWHERE = {
    "nan-in-input": ("test_error_table.py", "test_nan_in_input_gives_nan_in_its_row_only"),
    "resume-other-run": ("test_scoring.py",
                         "test_resume_refuses_other_inputs_and_starts_afresh_without_record"),
    "cli-bad-input": ("test_scoring.py", "test_cli_bad_input_one_line_no_traceback_no_output"),
    "cli-interrupt": ("test_scoring.py", "test_cli_interrupt_leaves_resumable_state"),
    "fork-after-gnu-openmp": ("test_concurrency.py",
                              "test_fork_after_gnu_openmp_is_a_clear_error_not_a_killed_child"),
}


def table_rows() -> dict:
    """row -> its last column: what the bad input gets."""
    rows = {}
    with open(TABLE) as f:
        for line in f:
            m = re.match(r"\| `([a-z0-9-]+)` \|.*\| ([^|]+) \|\s*$", line)
            if m:
                assert m.group(1) not in rows, f"row {m.group(1)} appears twice"
                rows[m.group(1)] = m.group(2)
    return rows


def test_table_and_tests_list_the_same_rows():
    rows = table_rows()
    assert len(rows) >= 40
    assert set(rows) == set(CASES) | set(ELSEWHERE)
    for name, (_, exc, _) in CASES.items():
        assert rows[name].startswith(f"`{exc.__name__}`: "), name


@pytest.mark.parametrize("row", sorted(ELSEWHERE))
def test_rows_covered_elsewhere_name_existing_tests(row):
    filename, test = ELSEWHERE[row]
    with open(os.path.join(os.path.dirname(__file__), filename)) as f:
        assert re.search(rf"^def {test}\(", f.read(), re.M), f"{filename}::{test} is missing"


@pytest.mark.parametrize("row", sorted(CASES))
def test_row(row, tmp_path, monkeypatch):
    if row in NEEDS_GPU and "gpu" not in BACKENDS:
        pytest.skip("needs the GPU backend (a real GPU or the simulator)")
    call, exc, pattern = CASES[row]
    before = [a.copy() for a in (X, Y, T, P)]
    with pytest.raises(exc, match=pattern):
        call(tmp_path, monkeypatch)
    for a, b in zip(before, (X, Y, T, P)):
        np.testing.assert_array_equal(a, b)
    assert not any(p.name.startswith("o.npy") for p in tmp_path.iterdir())


def test_nan_in_input_gives_nan_in_its_row_only():
    x = X.copy()
    x[2, 1] = np.nan
    rows = nbxent.cross_entropy(x, Y, reduction="none")
    assert np.isnan(rows[2]) and np.isfinite(np.delete(rows, 2)).all()
    assert np.isnan(nbxent.cross_entropy(x, Y))
    p = P.copy()
    p[4, 0] = np.nan
    per_element = nbxent.binary_cross_entropy(p, T, reduction="none")
    assert np.isnan(per_element[4, 0]) and np.isfinite(np.delete(per_element.ravel(), 20)).all()
