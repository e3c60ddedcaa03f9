"""Softmax cross-entropy and its family: cross_entropy (+ fused gradient), nll_loss,
log_softmax, softmax, logsumexp.

Semantics follow PyTorch (`torch.nn.functional.cross_entropy`, `nll_loss`, `log_softmax`,
`softmax`, `torch.logsumexp`); the class axis is `axis` (default last). NumPy arrays run on
the CPU, CUDA arrays on the GPU; results come back in the input's own array type.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from nbxent import _checks
from nbxent._dispatch import backend_for
from nbxent._rows import Rows

_FAMILY = "softmax"


def _weights(rows: Rows, weight, dtype):
    be = rows.be
    if weight is None:
        return be.empty((0,), dtype)
    w = be.asarray(weight)
    _checks.check_weight_shape(be.shape_strides(w)[0], rows.num_classes, be.dtype(w))
    return be.contiguous(be.astype(w, dtype))


def _labels(rows: Rows, target):
    """Integer targets as int32/int64 (the dtypes kernels take)."""
    be = rows.be
    if np.dtype(be.dtype(target)) in _checks.KERNEL_LABEL_DTYPES:
        return target
    return be.astype(target, np.int64)


def _as_target(be, target):
    if isinstance(target, numbers.Integral) and not isinstance(target, (bool, np.bool_)) and be.name == "gpu":
        return be.full((), int(target), np.int64)
    return be.asarray(target)


def _check_labels(rows: Rows, kernels, target, labels_view, weight_view, ignore_index,
                  check: bool = True, need_total: bool = True):
    """The sum of w[y] over counted rows (the "mean" denominator); raises for the first label
    out of range. Unchecked (check=False): no raise, and the sum comes back as the kernels'
    1-element array (on the GPU left on the device: no host synchronisation) for
    `_mean_grad_scale` and `_reduce`, or None without a pass over the labels when the call
    does not `need_total`."""
    if not check and not need_total:
        return None
    if not check:
        return kernels.label_total(labels_view, rows.num_classes, ignore_index, weight_view,
                                   rows.be.stream)
    first_bad, total = kernels.label_stats(
        labels_view, rows.num_classes, ignore_index, weight_view, rows.be.stream
    )
    if first_bad >= 0:
        position = rows.unravel(first_bad)
        value = rows.be.item(target, position)
        raise _checks.bad_label_error(position, value, rows.num_classes, ignore_index)
    return float(total)


def _raise_counted_bad(rows: Rows, kernels, target, labels_view, weight_view, ignore_index):
    """After a kernel counted a label out of range (cross_entropy_counting or its _sum): the
    separate check's error, naming the first bad label."""
    _check_labels(rows, kernels, target, labels_view, weight_view, ignore_index)
    raise AssertionError("the kernel counted a bad label the check missed")


def _per_row_grad_output(rows: Rows, grad_output):
    """grad_output of reduction "none" as float64 broadcast to the per-row shape."""
    be = rows.be
    g = be.asarray(grad_output)
    g_shape = tuple(be.shape_strides(g)[0])
    try:
        ok = np.broadcast_shapes(g_shape, rows.index_shape) == rows.index_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"grad_output has shape {g_shape} but the per-row losses have shape "
            f"{rows.index_shape}; it must broadcast to it"
        )
    if np.dtype(be.dtype(g)).kind not in "iuf":
        raise TypeError(f"grad_output must be real, got dtype {np.dtype(be.dtype(g))}")
    return be.broadcast_to(be.astype(g, np.float64), rows.index_shape)


def _scalar_grad_output(be, grad_output, reduction: str) -> float:
    """grad_output of a reduced loss as a host float (1 when absent)."""
    if grad_output is None:
        return 1.0
    if isinstance(grad_output, numbers.Real):
        return float(grad_output)
    g = be.asarray(grad_output)
    shape = tuple(be.shape_strides(g)[0])
    if int(np.prod(shape)) != 1:
        raise ValueError(
            f"grad_output of a reduced ({reduction!r}) loss must be a scalar, got shape {shape}"
        )
    return float(be.item(g, (0,) * len(shape)))


def _mean_grad_scale(be, kernels, g: float, denominator, shape):
    """grad_output / denominator (0 when it is 0) seen as the per-row gradient scale."""
    if isinstance(denominator, float):
        return be.broadcast_scalar(g / denominator if denominator != 0 else 0.0, shape)
    return be.broadcast_element(kernels.quotient_or_zero(g, denominator, be.stream), shape)


def _cross_entropy(logits, target, axis, weight, ignore_index, reduction, label_smoothing,
                   z_loss, out, want_grad=False, grad_output=None, inplace=False, check=True):
    be = backend_for(logits=logits, target=target, weight=weight, out=out, grad_output=grad_output)
    rows = Rows(be, logits, axis)
    reduction = _checks.check_reduction(reduction)
    eps = _checks.check_real("label_smoothing", label_smoothing, 0.0, 1.0)
    z = _checks.check_real("z_loss", z_loss, 0.0, float(np.finfo(np.float64).max))
    ignore_index = _checks.check_ignore_index(ignore_index)
    check = _checks.check_bool("check", check)
    target = _as_target(be, target)
    t_shape = tuple(be.shape_strides(target)[0])
    kind = _checks.target_kind(be.dtype(target), t_shape, rows.shape, rows.axis)
    if out is not None and reduction != "none":
        raise ValueError(f"out= receives per-row losses: it needs reduction='none', got {reduction!r}")
    if inplace and not be.writeable(rows.original):
        raise ValueError("inplace=True writes the gradient over logits, but logits are read-only")
    loss_dtype = _checks.compute_dtype(rows.dtype)
    weight_arr = _weights(rows, weight, loss_dtype)
    if out is not None:
        out = be.asarray(out)
        _checks.check_out(be.shape_strides(out)[0], be.dtype(out), rows.index_shape, loss_dtype,
                          be.writeable(out))

    labels = probs = None
    if kind == "hard":
        labels = _labels(rows, target)
    else:
        probs = be.astype(target, rows.dtype)
    g_rows = g_scalar = None
    if want_grad:
        if reduction == "none" and grad_output is not None:
            g_rows = _per_row_grad_output(rows, grad_output)
        else:
            g_scalar = _scalar_grad_output(be, grad_output, reduction)
    (labels, g_rows), (probs,) = rows.adopt(row_inputs=(labels, g_rows), element_inputs=(probs,))

    kernels = be.kernels(_FAMILY)
    x_view = rows.x_view()
    weight_view = be.view(weight_arr, *be.shape_strides(weight_arr))
    direct_out = out is not None and rows.fits_rows(out)
    labels_view = rows.rows_view(labels) if kind == "hard" else None
    # the label check folded into the kernel (CPU, two and few classes): it writes only its
    # own new losses (none for a "sum" or "mean": it sums them), so a bad label still
    # leaves every input unchanged
    may_count = kind == "hard" and not want_grad and out is None and weight is None
    if may_count and reduction != "none":
        summing = getattr(kernels, "cross_entropy_counting_sum", None)
        res = summing and summing(x_view, labels_view, weight_view, ignore_index, eps, z,
                                  loss_dtype, be.stream)
        if res is not None:
            bad, counted, total = res
            if bad and check:
                _raise_counted_bad(rows, kernels, target, labels_view, weight_view, ignore_index)
            return _reduce(rows, kernels, None, loss_dtype, reduction, float(counted), total)
    loss = out if direct_out else rows.new_rows(loss_dtype)
    loss_view = rows.rows_view(loss)
    if kind == "hard":
        if may_count:
            counting = getattr(kernels, "cross_entropy_counting", None)
            counts = counting and counting(x_view, labels_view, weight_view, ignore_index,
                                           eps, z, loss_view, be.stream)
            if counts is not None:
                bad, counted = counts
                if bad and check:
                    _raise_counted_bad(rows, kernels, target, labels_view, weight_view,
                                       ignore_index)
                return _reduce(rows, kernels, loss_view, loss_dtype, reduction,
                               float(counted)) if reduction != "none" else be.wrap(loss)
        # only a mean needs the labels' total (the gradient scale of a "mean" included)
        denominator = _check_labels(rows, kernels, target, labels_view, weight_view, ignore_index,
                                    check, need_total=reduction == "mean")
    else:
        denominator = float(rows.num_rows)
    grad = grad_view = scale = None
    if want_grad:
        if g_rows is not None:
            scale = rows.rows_view(g_rows)
        elif reduction == "mean":
            scale = _mean_grad_scale(be, kernels, g_scalar, denominator, rows.layout.rows_shape)
        else:
            scale = be.broadcast_scalar(g_scalar, rows.layout.rows_shape)
        grad = rows.x if inplace else rows.new_elements(rows.dtype)
        grad_view = rows.x_view() if inplace else rows.elements_view(grad)

    if kind == "hard":
        kernels.cross_entropy(x_view, labels_view, weight_view, ignore_index, eps, z, loss_view,
                              scale, grad_view, be.stream)
    else:
        kernels.cross_entropy_soft(x_view, rows.elements_view(probs), weight_view, eps, z,
                                   loss_view, scale, grad_view, be.stream)

    if out is not None and not direct_out:
        be.copy_into(out, loss)
        loss = out
    result = _reduce(rows, kernels, loss_view, loss_dtype, reduction, denominator) \
        if reduction != "none" else be.wrap(loss)
    if not want_grad:
        return result
    if inplace:
        if rows.copied:
            be.copy_into(rows.original, grad)
        return result, rows.original
    return result, be.wrap(grad)


def _reduce(rows: Rows, kernels, values_view, dtype, reduction: str, denominator,
            total=None):
    """The "sum" or "mean" of the per-row values as the API's 0-d result; `denominator` is a
    float, or the kernels' 1-element array (unchecked calls: see `_check_labels`). With
    `total` (a float denominator only), the values' sum as sum_rows would make it, already
    made (cross_entropy_counting_sum: CPU), and no values_view."""
    be = rows.be
    out1 = be.empty((1,), dtype)
    if reduction == "mean" and not isinstance(denominator, float):
        kernels.mean_rows(values_view, denominator, out1, be.stream)
        return be.scalar(out1)
    if reduction == "sum":
        scale = 1.0
    else:
        scale = 1.0 / denominator if denominator != 0 else math.nan
    if total is not None:
        out1[0] = scale * total   # as sum_rows stores it
        return be.scalar(out1)
    kernels.sum_rows(values_view, scale, out1, be.stream)
    return be.scalar(out1)


def _class_index_call(caller: str, name: str, x, target, axis, weight, ignore_index,
                      check=True, need_total=True):
    """The shared set-up of nll_loss and top1_hits (integer class indices only): backend,
    rows, adopted labels checked against [0, C) (unless check is False), weights. Returns
    (rows, kernels, labels_view, weight_view, denominator: the sum of w[y] over counted
    rows, see `_check_labels`; None when unchecked and not `need_total`)."""
    be = backend_for(**{name: x}, target=target, weight=weight)
    rows = Rows(be, x, axis, name=name)
    ignore_index = _checks.check_ignore_index(ignore_index)
    check = _checks.check_bool("check", check)
    target = _as_target(be, target)
    t_dtype = np.dtype(be.dtype(target))
    if t_dtype.kind not in "iu":
        raise TypeError(f"{caller} needs integer class indices as target, got dtype {t_dtype}")
    _checks.target_kind(t_dtype, tuple(be.shape_strides(target)[0]), rows.shape, rows.axis)
    weight_arr = _weights(rows, weight, _checks.compute_dtype(rows.dtype))
    (labels,), _ = rows.adopt(row_inputs=(_labels(rows, target),))
    kernels = be.kernels(_FAMILY)
    weight_view = be.view(weight_arr, *be.shape_strides(weight_arr))
    labels_view = rows.rows_view(labels)
    denominator = _check_labels(rows, kernels, target, labels_view, weight_view, ignore_index,
                                check, need_total)
    return rows, kernels, labels_view, weight_view, denominator


def top1_hits(logits, target, *, axis=-1, ignore_index=-100, check=True):
    """Per-row 1/0 (uint8): whether the label is the top-1 class, `numpy.argmax` along
    `axis` (the first maximal class; the first NaN in a row with NaN); 0 for ignored rows
    and for labels outside [0, C) (check=False).

    Used by `nbxent.score` for accuracy. Checks labels like `cross_entropy`."""
    rows, kernels, labels_view, _, _ = _class_index_call("top1_hits", "logits", logits, target,
                                                         axis, None, ignore_index, check,
                                                         need_total=False)
    hits = rows.new_rows(np.uint8)
    kernels.top1(rows.x_view(), labels_view, int(ignore_index), rows.rows_view(hits), rows.be.stream)
    return rows.be.wrap(hits)


def scored_rows(logits, target, losses_out, hits_out, *, weight=None, ignore_index=-100,
                label_smoothing=0.0, z_loss=0.0):
    """Per-row cross-entropy losses into `losses_out` and top-1 hits (as `top1_hits`) into
    `hits_out`, for `nbxent.score`, whose labels are checked before: unchecked here
    (check=False semantics). On the CPU one pass reads each row once for both. Outputs that
    do not share the logits' row layout get the two public calls instead."""
    be = backend_for(logits=logits, target=target, out=losses_out)
    rows = Rows(be, logits, -1)
    (labels,), _ = rows.adopt(row_inputs=(_labels(rows, _as_target(be, target)),))
    if not (rows.fits_rows(losses_out) and rows.fits_rows(hits_out)):
        losses_out[...] = cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                                        reduction="none", label_smoothing=label_smoothing,
                                        z_loss=z_loss, check=False)
        hits_out[...] = top1_hits(logits, target, ignore_index=ignore_index, check=False)
        return
    weight_arr = _weights(rows, weight, _checks.compute_dtype(rows.dtype))
    be.kernels(_FAMILY).cross_entropy_top1(
        rows.x_view(), rows.rows_view(labels), be.view(weight_arr, *be.shape_strides(weight_arr)),
        int(ignore_index), float(label_smoothing), float(z_loss), rows.rows_view(losses_out),
        rows.rows_view(hits_out), be.stream)


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, out=None, check=True):
    """Softmax cross-entropy of `logits` against class indices or probabilities.

    logits: float16/32/64 array, classes along `axis` (default last: `(N, C)`, `(B, T, V)`;
    `axis=1` for PyTorch's `(N, C, d1, ...)`); 1-D logits are one sample.
    target: integer class indices shaped like logits without the class axis, or float
    probabilities shaped like logits (soft targets; `ignore_index` does not apply to them).

    Per-row loss of a row with label y (PyTorch's, plus the z-loss term):
    `(1-eps) w[y] (lse - x[y]) + eps/C sum_c w[c] (lse - x[c]) + z_loss w[y] lse**2`, with
    lse the row's logsumexp and eps = label_smoothing; rows whose label is `ignore_index`
    give 0. Soft targets t: `sum_c w[c] t'[c] (lse - x[c]) + z_loss lse**2`, t' = (1-eps) t +
    eps/C; a class with t' = 0 contributes 0 even where its logit is -inf (PyTorch gives NaN
    there: nbxent's choice).

    reduction: "none" returns per-row losses shaped like the target's index shape, in the
    logits' dtype (float32 for float16 logits), written into `out` when given; "sum" their
    sum; "mean" the sum divided by the sum of w[y] over non-ignored rows (their count
    without weight; the number of rows for soft targets). A mean over no rows is NaN, a sum
    0. Reductions accumulate in float64 in a fixed order and return a 0-d value (a NumPy
    scalar, or a 0-d device array on the GPU).

    Raises ValueError naming the position and value of the first label outside [0, C) that
    is not ignore_index, and for shapes that disagree or options out of range; TypeError for
    non-float logits, float class indices and host/device mixes.

    check=False trusts the labels, for callers who validated them: no label error is raised
    and, on the GPU, nothing waits for the device (the label check is the call's only host
    synchronisation; the "mean" denominator then stays on the device). A label outside
    [0, C) that is not ignore_index gives its row a NaN loss (and gradient), so a NaN
    "mean"/"sum"; nothing outside the logits is ever read.
    """
    return _cross_entropy(logits, target, axis, weight, ignore_index, reduction,
                          label_smoothing, z_loss, out, check=check)


def cross_entropy_with_grad(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                            reduction="mean", label_smoothing=0.0, z_loss=0.0, out=None,
                            grad_output=None, inplace=False, check=True):
    """`(loss, grad)`: `cross_entropy` and its gradient with respect to `logits`, in one pass.

    grad = d(sum(loss * grad_output)) / d(logits), shaped and typed like `logits`.
    grad_output defaults to 1 (for "none": the gradient of the sum of the per-row losses);
    it is a scalar for "mean"/"sum" and broadcasts to the per-row shape for "none".
    Ignored rows get a zero gradient, so every row ignored gives a NaN "mean" but an
    all-zero gradient. `inplace=True` writes the gradient over `logits` (which must be
    writeable) and returns `logits` as grad.
    """
    return _cross_entropy(logits, target, axis, weight, ignore_index, reduction,
                          label_smoothing, z_loss, out, want_grad=True,
                          grad_output=grad_output,
                          inplace=_checks.check_bool("inplace", inplace), check=check)


def nll_loss(log_probs, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
             check=True):
    """Negative log-likelihood of class indices under `log_probs` (PyTorch's `nll_loss`).

    Per-row loss `-w[y] log_probs[y]`, 0 for ignored rows; reductions as `cross_entropy`
    ("mean" divides by the sum of w[y] over non-ignored rows; NaN over no rows); `check` as
    `cross_entropy`'s.
    """
    reduction = _checks.check_reduction(reduction)
    rows, kernels, labels_view, weight_view, denominator = _class_index_call(
        "nll_loss", "log_probs", log_probs, target, axis, weight, ignore_index, check,
        need_total=reduction == "mean")
    be = rows.be
    ignore_index = int(ignore_index)
    loss_dtype = _checks.compute_dtype(rows.dtype)
    loss = rows.new_rows(loss_dtype)
    loss_view = rows.rows_view(loss)
    kernels.nll(rows.x_view(), labels_view, weight_view, ignore_index, loss_view, be.stream)
    if reduction == "none":
        return be.wrap(loss)
    return _reduce(rows, kernels, loss_view, loss_dtype, reduction, denominator)


def _elementwise(launcher: str, x, axis, out):
    be = backend_for(x=x, out=out)
    rows = Rows(be, x, axis, name="x")
    if out is not None:
        out = be.asarray(out)
        _checks.check_out(be.shape_strides(out)[0], be.dtype(out), rows.shape, rows.dtype,
                          be.writeable(out))
    rows.adopt()
    kernels = be.kernels(_FAMILY)
    direct = out is not None and rows.fits_elements(out)
    result = out if direct else rows.new_elements(rows.dtype)
    getattr(kernels, launcher)(rows.x_view(), rows.elements_view(result), be.stream)
    if out is not None and not direct:
        be.copy_into(out, result)
        result = out
    return be.wrap(result)


def log_softmax(x, *, axis=-1, out=None):
    """`x - logsumexp(x)` along `axis`, in x's dtype. A NaN in a row gives a NaN row."""
    return _elementwise("log_softmax", x, axis, out)


def softmax(x, *, axis=-1, out=None):
    """`exp(x - logsumexp(x))` along `axis`, in x's dtype; -inf logits get probability 0."""
    return _elementwise("softmax", x, axis, out)


def logsumexp(x, *, axis=-1, out=None):
    """`log(sum(exp(x)))` along `axis` (removed), computed stably, in x's dtype.

    As torch.logsumexp: an all -inf row gives -inf, a +inf gives +inf, a NaN gives NaN, an
    empty class axis gives -inf.
    """
    be = backend_for(x=x, out=out)
    rows = Rows(be, x, axis, name="x")
    if out is not None:
        out = be.asarray(out)
        _checks.check_out(be.shape_strides(out)[0], be.dtype(out), rows.index_shape, rows.dtype,
                          be.writeable(out))
    rows.adopt()
    kernels = be.kernels(_FAMILY)
    direct = out is not None and rows.fits_rows(out)
    result = out if direct else rows.new_rows(rows.dtype)
    kernels.logsumexp(rows.x_view(), rows.rows_view(result), be.stream)
    if out is not None and not direct:
        be.copy_into(out, result)
        result = out
    return be.wrap(result)
