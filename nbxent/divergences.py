"""Divergences and probabilistic losses: softmax_focal_loss, entropy, kl_divergence, log_loss.

NumPy arrays run on the CPU, CUDA arrays on the GPU; results come back in the input's own
array type. Conventions are the softmax family's (nbxent.softmax): class axis `axis`
(default last), float16 computed in float32, per-row results in the compute dtype
(float32 for float16/float32 input, float64 for float64), reductions accumulated in float64
in a fixed order (bit-identical at every thread count), a mean over no rows NaN, a sum 0.

Where probabilities are checked: every function that takes probabilities (`entropy` and
`kl_divergence` without `from_logits`, both `p` and `q`; `kl_divergence`'s `p` always;
`log_loss`'s `y_prob`) scans them first and raises ValueError naming the position and
value of the first element outside [0, 1]. NaN is not "outside": it propagates to its row's
result (except in `log_loss`, which rejects NaN as scikit-learn does). Rows need not sum to
1 (only `log_loss` warns, as scikit-learn does).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from nbxent import _checks
from nbxent._dispatch import backend_for
from nbxent._rows import Rows
from nbxent.softmax import _as_target, _check_labels, _labels, _reduce

_FAMILY = "divergences"


def _check_probabilities(rows: Rows, kernels, view, arr, name: str) -> None:
    """Raise for the first element of `arr` (shaped like the logits of `rows`) outside [0, 1]."""
    bad, _nan, _unnorm = kernels.prob_stats(view, -1.0, rows.be.stream)
    if bad >= 0:
        position = _element_position(rows, bad)
        raise _checks.probability_error(name, position, rows.be.item(arr, position))


def _element_position(rows: Rows, flat: int) -> tuple:
    r, c = divmod(int(flat), max(rows.num_classes, 1))
    pos = rows.unravel(r)
    return pos[: rows.axis] + (c,) + pos[rows.axis:]


# ----------------------------------------------------------------------------- focal loss


def softmax_focal_loss(logits, target, *, axis=-1, gamma=2.0, alpha=None, ignore_index=-100,
                       reduction="mean"):
    """Multi-class focal loss of `logits` against integer class indices.

    Per row with label y and p = softmax(logits): `-alpha[y] (1 - p[y])**gamma log p[y]`
    (alpha[y] = 1 without `alpha`), 0 for rows whose label is `ignore_index`. `1 - p[y]` is
    computed as `-expm1(log p[y])` (accurate for confident rows); gamma = 0 gives exactly
    the per-row cross-entropy, so `gamma=0` equals `cross_entropy(weight=alpha)`.

    alpha: None or a per-class array of shape (C,) (a class weight, any real values).
    reduction: "none" per-row losses shaped like `target` (compute dtype); "sum"; "mean"
    divides the sum by the sum of alpha[y] over non-ignored rows (their count without
    alpha): PyTorch's weighted cross-entropy mean, chosen so that gamma = 0 with alpha is
    `cross_entropy(weight=alpha)`. NaN for a mean over no rows.

    Raises ValueError naming the position and value of the first label outside [0, C) that
    is not ignore_index, for shapes that disagree and bad options (gamma < 0).
    """
    be = backend_for(logits=logits, target=target, alpha=alpha)
    rows = Rows(be, logits, axis)
    reduction = _checks.check_reduction(reduction)
    gamma = _checks.check_real("gamma", gamma, 0.0, float(np.finfo(np.float64).max))
    ignore_index = _checks.check_ignore_index(ignore_index)
    target = _as_target(be, target)
    t_dtype = np.dtype(be.dtype(target))
    if t_dtype.kind not in "iu":
        raise TypeError(f"softmax_focal_loss needs integer class indices as target, got dtype {t_dtype}")
    _checks.target_kind(t_dtype, tuple(be.shape_strides(target)[0]), rows.shape, rows.axis)
    loss_dtype = _checks.compute_dtype(rows.dtype)
    if alpha is None:
        alpha_arr = be.empty((0,), loss_dtype)
    else:
        a = be.asarray(alpha)
        _checks.check_class_vector("alpha", be.shape_strides(a)[0], rows.num_classes, be.dtype(a))
        alpha_arr = be.contiguous(be.astype(a, loss_dtype))
    (labels,), _ = rows.adopt(row_inputs=(_labels(rows, target),))

    softmax_kernels = be.kernels("softmax")
    kernels = be.kernels(_FAMILY)
    alpha_view = be.view(alpha_arr, *be.shape_strides(alpha_arr))
    labels_view = rows.rows_view(labels)
    denominator = _check_labels(rows, softmax_kernels, target, labels_view, alpha_view,
                                ignore_index)
    loss = rows.new_rows(loss_dtype)
    loss_view = rows.rows_view(loss)
    kernels.focal(rows.x_view(), labels_view, alpha_view, ignore_index, gamma, loss_view,
                  be.stream)
    if reduction == "none":
        return be.wrap(loss)
    return _reduce(rows, softmax_kernels, loss_view, loss_dtype, reduction, denominator)


# ----------------------------------------------------------------------------- entropy


def entropy(p, *, axis=-1, from_logits=False):
    """Shannon entropy (nats) `-sum p log p` of each row along `axis` (removed), 0 log 0 = 0.

    from_logits=True: `p` holds logits and the entropy of their softmax is returned (-inf
    logits are classes of probability 0; a row that is all -inf, holds +inf or has no
    classes gives NaN). Without it, `p` must hold values in [0, 1] (ValueError naming the
    first one outside); rows need not sum to 1 (SciPy's `entr(p).sum(axis)`, not
    `scipy.stats.entropy`, which normalises). An empty class axis gives 0. A NaN gives NaN
    for its row. Per-row values in the compute dtype (float32 for float16).
    """
    be = backend_for(p=p)
    from_logits = _checks.check_bool("from_logits", from_logits)
    rows = Rows(be, p, axis, name="logits" if from_logits else "p")
    rows.adopt()
    kernels = be.kernels(_FAMILY)
    view = rows.x_view()
    if not from_logits:
        _check_probabilities(rows, kernels, view, rows.x, "p")
    out = rows.new_rows(_checks.compute_dtype(rows.dtype))
    launcher = kernels.entropy_logits if from_logits else kernels.entropy
    launcher(view, rows.rows_view(out), be.stream)
    return be.wrap(out)


# ----------------------------------------------------------------------------- KL divergence


def kl_divergence(p, q, *, axis=-1, from_logits=False, reduction="none"):
    """Kullback-Leibler divergence D_KL(p || q) = sum p (log p - log q) per row along `axis`.

    p is the true distribution, q the predicted one (from_logits=True: q given as logits,
    log q = log_softmax(q)). D_KL(p || q) = H(p, q) - H(p), with H(p, q) `cross_entropy`
    with soft targets p and H(p) `entropy(p)`. Terms with p = 0 count 0 (also where q = 0 or
    the logit is -inf); p > 0 where q = 0 gives +inf. p (and q without from_logits) must
    hold values in [0, 1] (ValueError naming the first one outside); rows need not sum to 1
    (SciPy's `rel_entr(p, q).sum(axis)`). NaN in a row gives NaN for that row.

    p and q must have the same shape; they are computed in their common dtype (float16
    in float32). reduction: "none" (default) per-row values, "sum", "mean" = the sum
    divided by the number of rows (PyTorch's `kl_div(reduction="batchmean")`, not its
    per-element "mean"); NaN over no rows.
    """
    be = backend_for(p=p, q=q)
    reduction = _checks.check_reduction(reduction)
    from_logits = _checks.check_bool("from_logits", from_logits)
    q_name = "logits" if from_logits else "q"
    pa, qa = be.asarray(p), be.asarray(q)
    _checks.check_float_input("p", be.dtype(pa))
    _checks.check_float_input(q_name, be.dtype(qa))
    _checks.check_same_shape("p", be.shape_strides(pa)[0], q_name, be.shape_strides(qa)[0])
    common = np.result_type(np.dtype(be.dtype(pa)), np.dtype(be.dtype(qa)))
    pa, qa = be.astype(pa, common), be.astype(qa, common)
    rows = Rows(be, qa, axis, name=q_name)
    _, (pa,) = rows.adopt(element_inputs=(pa,))
    kernels = be.kernels(_FAMILY)
    p_view, q_view = rows.elements_view(pa), rows.x_view()
    _check_probabilities(rows, kernels, p_view, pa, "p")
    if not from_logits:
        _check_probabilities(rows, kernels, q_view, rows.x, "q")
    loss_dtype = _checks.compute_dtype(rows.dtype)
    out = rows.new_rows(loss_dtype)
    out_view = rows.rows_view(out)
    (kernels.kl_div_logits if from_logits else kernels.kl_div)(p_view, q_view, out_view,
                                                                be.stream)
    if reduction == "none":
        return be.wrap(out)
    return _reduce(rows, be.kernels("softmax"), out_view, loss_dtype, reduction,
                   float(rows.num_rows))


# ----------------------------------------------------------------------------- log loss


def _host(a):
    """A label-like argument as a NumPy array (device arrays are copied to the host)."""
    if hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray):
        from nbxent.gpu import _arrays

        return _arrays.to_host(a)
    return np.asarray(a)


def _encode_labels(y, labels, n_prob_classes):
    """(classes, codes) as scikit-learn's LabelBinarizer encodes them, with its errors."""
    if labels is not None:
        lab = _host(labels)
        classes = np.unique(lab)
        if classes.shape != lab.shape or not np.all(classes == lab):
            warnings.warn(
                f"Labels passed were {labels}. But this function assumes labels are ordered "
                f"lexicographically. Pass the ordered labels={classes.tolist()} and ensure that "
                f"the columns of y_prob correspond to this ordering.", UserWarning)
        undeclared = ~np.isin(y, classes)
        if undeclared.any():
            raise ValueError(
                f"y_true contains values {set(y[undeclared].tolist())} not belonging to the "
                f"passed labels {labels}.")
        if classes.shape[0] < 2:
            raise ValueError(f"The labels array needs to contain at least two labels, got {classes}.")
    else:
        classes = np.unique(y)
        if classes.shape[0] < 2:
            raise ValueError(
                f"y_true contains only {'one label (' + repr(classes[0].item()) + ')' if classes.size else 'no labels'}. "
                f"Please provide the list of all expected class labels explicitly through the "
                f"labels argument.")
    if classes.shape[0] != n_prob_classes:
        if labels is None:
            raise ValueError(
                f"y_true and y_prob contain different number of classes: {classes.shape[0]} vs "
                f"{n_prob_classes}. Please provide the true labels explicitly through the labels "
                f"argument. Classes found in y_true: {classes}")
        raise ValueError(
            f"The number of classes in labels ({classes.shape[0]}) is different from that in "
            f"y_prob ({n_prob_classes}). Classes found in labels: {classes}")
    codes = np.searchsorted(classes, y).astype(np.int32 if classes.size < 2**31 else np.int64)
    return classes, codes


def log_loss(y_true, y_prob, *, sample_weight=None, labels=None, normalize=True):
    """Log loss (cross-entropy of predicted probabilities), as `sklearn.metrics.log_loss`.

    y_true: 1-D class labels of any sortable type (integers, strings), encoded as scikit-
    learn does (classes sorted; `labels` lists every class, needed when some are absent from
    y_true). Label indicator matrices are not supported.
    y_prob: (n_samples, n_classes) probabilities with columns in the sorted class order, or
    (n_samples,) / (n_samples, 1) probabilities of the positive (greater) class of a binary
    problem. Integer or boolean y_prob is taken as float64 (CPU).
    Per sample: `-log(clip(y_prob[i, y_i], eps, 1 - eps))`, eps = the machine epsilon of
    y_prob's dtype. normalize=True returns the (sample_weight-weighted) mean, False the
    (weighted) sum; accumulated in float64 in a fixed order. Returns a float (np.float64) on
    the CPU, a 0-d float64 device array on the GPU.

    As scikit-learn: ValueError for values outside [0, 1] (naming the first one, where
    scikit-learn names the max or min) or NaN in y_prob, fewer than two classes, a class
    count that disagrees with y_prob, labels in y_true missing from `labels`, all-zero
    sample weights, inconsistent lengths; a UserWarning when a row of a multi-class y_prob
    does not sum to 1 within sqrt(eps) (+1e-8), and when `labels` is not sorted.
    nbxent differences: an empty input with `labels` gives NaN (normalize) or 0.0 (sum)
    where scikit-learn raises.

    GPU: y_prob on the GPU runs the kernels there; y_true, labels and sample_weight may be
    host or device arrays: label encoding is host NumPy (device y_true is copied to the
    host), the codes and weights are then uploaded.
    """
    if isinstance(normalize, (bool, np.bool_)):
        normalize = bool(normalize)
    else:
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    be = backend_for(y_prob=y_prob)
    yp = be.asarray(y_prob)
    if be.name == "cpu" and np.dtype(yp.dtype).kind in "iub":
        yp = yp.astype(np.float64)
    dtype = _checks.check_float_input("y_prob", be.dtype(yp))
    shape, strides = be.shape_strides(yp)
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        n, n_cls, binary = int(shape[0]), 2, True
        view_ss = ((1, n, 1), (0, strides[0], strides[0]))
    elif len(shape) == 2:
        n, n_cls, binary = int(shape[0]), int(shape[1]), False
        view_ss = ((1, n, n_cls), (0, strides[0], strides[1]))
    else:
        raise ValueError(
            f"y_prob must be 1-D (binary: probabilities of the positive class) or 2-D "
            f"(n_samples, n_classes), got shape {tuple(shape)}")

    y = _host(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"y_true must be 1-D class labels, got shape {y.shape} (label indicator matrices "
            f"are not supported)")
    if y.shape[0] != n:
        raise ValueError(
            f"y_true has {y.shape[0]} samples but y_prob has shape {tuple(shape)} "
            f"({n} samples); they must match")
    sw_host = None
    if sample_weight is not None:
        sw_host = _host(sample_weight)
        if sw_host.dtype.kind not in "iuf":
            raise TypeError(f"sample_weight must be real, got dtype {sw_host.dtype}")
        if sw_host.shape != (n,):
            raise ValueError(
                f"sample_weight has shape {sw_host.shape} but y_prob has {n} samples: it must "
                f"have shape ({n},)")
        sw_host = sw_host.astype(np.float64)
        if n and not np.any(sw_host):
            raise ValueError("Sample weights must contain at least one non-zero number.")
    _, codes = _encode_labels(y, labels, n_cls)

    kernels = be.kernels(_FAMILY)
    softmax_kernels = be.kernels("softmax")
    prob_view = be.view(yp, *view_ss)
    eps = float(np.finfo(dtype).eps)
    tol = -1.0 if binary else 1e-8 + math.sqrt(eps)
    bad, nan, unnorm = kernels.prob_stats(prob_view, tol, be.stream)
    if nan >= 0 or bad >= 0:
        r, c = divmod(nan if nan >= 0 else bad, view_ss[0][2])
        position = (r,) if len(shape) == 1 else (r, c)
        value = be.item(yp, position)
        raise _checks.probability_error("y_prob", position, value,
                                        "NaN" if nan >= 0 else "outside [0, 1]")
    if unnorm >= 0:
        warnings.warn("The y_prob values do not sum to one. Make sure to pass probabilities.",
                      UserWarning, stacklevel=2)

    def upload(a):
        return a if be.name == "cpu" else _to_device(a, be)

    codes_dev = upload(codes)
    codes_view = be.view(codes_dev, (1, n), (0, codes.itemsize))
    if sw_host is None:
        sw_view = be.broadcast_scalar(1.0, (1, n))
    else:
        sw_dev = upload(np.ascontiguousarray(sw_host))
        sw_view = be.view(sw_dev, (1, n), (0, 8))
    loss = be.empty((n,), np.float64, yp)
    loss_view = be.view(loss, (1, n), (0, 8))
    kernels.log_loss_rows(prob_view, codes_view, eps, sw_view, loss_view, be.stream)
    if normalize:
        denominator = float(n) if sw_host is None else float(np.sum(sw_host))
        scale = 1.0 / denominator if denominator != 0 else math.nan
    else:
        scale = 1.0
    out1 = be.empty((1,), np.float64)
    softmax_kernels.sum_rows(loss_view, scale, out1, be.stream)
    return be.scalar(out1)


def _to_device(a: np.ndarray, be):
    """A host array uploaded with the library of the call's y_prob (CuPy or Numba)."""
    from nbxent.gpu import _arrays

    if _arrays._is_cupy(be.like):
        import cupy

        return cupy.asarray(a)
    from numba import cuda

    return cuda.to_device(a, stream=0 if be.stream is None else be.stream)
