"""Float64 NumPy reference ("oracle") of every public function of nbxent's core.

Plain, vectorised NumPy, no Numba: every test compares the fast kernels to these functions,
and users may call them directly. Whatever the input dtype, the computation is done in
float64 and the results are float64 (reductions return ``np.float64``).

Semantics are those of ``docs/kernels.md`` (PyTorch's ``F.cross_entropy`` / ``F.nll_loss`` /
``log_softmax`` / ``softmax`` / ``logsumexp`` plus a z-loss term), per row, where a "row" is a
1-D slice along the class axis:

* ``lse`` is computed PyTorch style: the row max ``m`` is subtracted, with an infinite ``m``
  replaced by 0. An all ``-inf`` row gives ``lse = -inf``, a row holding ``+inf`` gives
  ``+inf``, a NaN anywhere in a row gives NaN for all of that row's results (and only that
  row's). ``lse - x_c`` is evaluated as ``log(sum(exp(x - m))) - (x_c - m)`` so that logits of
  magnitude 1e30 give losses that are finite and accurate.
* The label-smoothing and z-loss terms are *skipped* (not multiplied by 0) when their
  coefficient is 0, so ``-inf`` logits on non-target classes give finite losses.
* Labels equal to ``ignore_index`` are never used to index (they may be negative or >= C).

Inputs are not validated exhaustively (that is the job of the fast path's checks), but a
label outside ``[0, C)`` that is not ``ignore_index`` raises ``IndexError`` rather than
silently wrapping around.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cross_entropy",
    "cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
]

_REDUCTIONS = ("none", "sum", "mean")


# --------------------------------------------------------------------------------- helpers

def _rows(x, axis):
    """x as float64 with the class axis moved last, and the normalised axis."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("expected at least a 1-D array (the class axis), got a 0-d array")
    axis = _normalize_axis(axis, x.ndim)
    return np.moveaxis(x.astype(np.float64, copy=False), axis, -1), axis


def _normalize_axis(axis, ndim):
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(axis, ndim)
    return axis % ndim


def _shifted(x):
    """(x - m, log(sum(exp(x - m))), m) per row of the (..., C) float64 array x.

    m is the row max with +-inf replaced by 0 (PyTorch); an empty row has m = 0 and a
    log-sum of -inf. Returns the shifted array (..., C), the log-sum and m (...,); the row's
    lse is m + logsum and lse - x_c is logsum - shifted_c.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=-1, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0.0)
        shifted = x - m[..., None]
        logsum = np.log(np.sum(np.exp(shifted), axis=-1))
    return shifted, logsum, m


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _weight(weight, num_classes):
    if weight is None:
        return None
    w = np.asarray(weight, dtype=np.float64).reshape(-1)
    if w.shape[0] != num_classes:
        raise ValueError(f"weight has {w.shape[0]} entries but there are {num_classes} classes")
    return w


def _hard_labels(target, index_shape, num_classes, ignore_index):
    """(valid mask, safe labels) of integer targets; safe labels are 0 on ignored rows."""
    y = np.asarray(target)
    if y.shape != index_shape:
        raise ValueError(f"target has shape {y.shape} but the logits without their class axis "
                         f"have shape {index_shape}")
    y = y.astype(np.int64, copy=False)
    valid = y != ignore_index
    bad = valid & ((y < 0) | (y >= num_classes))
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.ndim else ()
        raise IndexError(f"target {int(y[first])} at {first} is out of range for "
                         f"{num_classes} classes (and is not ignore_index={ignore_index})")
    return valid, np.where(valid, y, 0)


def _class_weights(w, y, index_shape):
    """w[y] for safe labels y (1 without weight)."""
    if w is None:
        return np.ones(index_shape)
    return w[y] if w.shape[0] else np.zeros(index_shape)


def _is_soft(target):
    kind = np.asarray(target).dtype.kind
    if kind in "iu":
        return False
    if kind == "f":
        return True
    raise TypeError(f"target must be integer class indices or float probabilities, got dtype "
                    f"{np.asarray(target).dtype}")


def _gather(a, idx):
    """a[..., idx[...]] for (..., C) a and (...) idx (0 where C == 0)."""
    if a.shape[-1] == 0:
        return np.zeros(idx.shape, dtype=np.float64)
    return np.take_along_axis(a, idx[..., None], axis=-1)[..., 0]


def _reduce(losses, reduction, denominator):
    """Reduce per-row float64 losses; mean divides by `denominator` (0/0 gives NaN)."""
    if reduction == "none":
        return np.asarray(losses, dtype=np.float64)
    total = np.float64(np.sum(losses, dtype=np.float64))
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total / np.float64(denominator))


def _grad_scale(reduction, grad_output, index_shape, denominator):
    """The per-row factor multiplying each row's gradient, broadcast to `index_shape`."""
    if reduction == "none":
        g = 1.0 if grad_output is None else np.asarray(grad_output, dtype=np.float64)
        return np.broadcast_to(g, index_shape)
    g = 1.0 if grad_output is None else np.asarray(grad_output, dtype=np.float64)
    if np.ndim(g) != 0:
        if np.size(g) != 1:
            raise ValueError(f"grad_output of a reduced ({reduction!r}) loss must be a scalar, "
                             f"got shape {np.shape(g)}")
        g = np.reshape(g, ())
    g = np.float64(g)
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            g = g / np.float64(denominator)
    return np.broadcast_to(g, index_shape)


def _cross_entropy(logits, target, axis, weight, ignore_index, reduction, label_smoothing,
                   z_loss, want_grad, grad_output):
    _check_reduction(reduction)
    eps = float(label_smoothing)
    z = float(z_loss)
    x, axis = _rows(logits, axis)
    num_classes = x.shape[-1]
    index_shape = x.shape[:-1]
    w = _weight(weight, num_classes)
    shifted, logsum, m = _shifted(x)

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lse = m + logsum
        nll_all = logsum[..., None] - shifted            # lse - x_c, (..., C)

        if _is_soft(target):
            t = np.asarray(target, dtype=np.float64)
            if t.shape != np.shape(logits):
                raise ValueError(f"soft target has shape {np.shape(target)} but the logits "
                                 f"have shape {np.shape(logits)}")
            t = np.moveaxis(t, axis, -1)
            if eps > 0:
                t = (1.0 - eps) * t + eps / num_classes
            wt = t if w is None else w * t                # w_c t'_c
            losses = np.sum(np.where(t != 0, wt * nll_all, 0.0), axis=-1)
            if z > 0:
                losses = losses + z * lse**2
            denominator = float(np.prod(index_shape, dtype=np.float64))
            loss = _reduce(losses, reduction, denominator)
            if not want_grad:
                return loss
            s = _grad_scale(reduction, grad_output, index_shape, denominator)
            a = np.sum(wt, axis=-1)
            if z > 0:
                a = a + 2.0 * z * lse
            p = np.exp(-nll_all)                          # exp(x_c - lse)
            grad = s[..., None] * (p * a[..., None] - wt)
            return loss, np.ascontiguousarray(np.moveaxis(grad, -1, axis))

        valid, y = _hard_labels(target, index_shape, num_classes, ignore_index)
        w_y = _class_weights(w, y, index_shape)
        nll_y = _gather(nll_all, y)                       # lse - x_y
        losses = (1.0 - eps) * w_y * nll_y
        if eps > 0:
            smooth = np.sum(nll_all if w is None else w * nll_all, axis=-1)
            losses = losses + (eps / num_classes) * smooth
        if z > 0:
            losses = losses + z * w_y * lse**2
        losses = np.where(valid, losses, 0.0)
        denominator = float(np.sum(np.where(valid, w_y, 0.0), dtype=np.float64))
        loss = _reduce(losses, reduction, denominator)
        if not want_grad:
            return loss

        s = _grad_scale(reduction, grad_output, index_shape, denominator)
        a = (1.0 - eps) * w_y
        if eps > 0:
            big_w = float(num_classes) if w is None else float(np.sum(w))
            a = a + (eps / num_classes) * big_w
        if z > 0:
            a = a + 2.0 * z * w_y * lse
        p = np.exp(-nll_all)
        g = p * a[..., None]
        if num_classes:
            np.put_along_axis(g, y[..., None], _gather(g, y)[..., None]
                              - ((1.0 - eps) * w_y)[..., None], axis=-1)
        if eps > 0:
            g = g - (eps / num_classes) * (1.0 if w is None else w)
        grad = np.where(valid[..., None], s[..., None] * g, 0.0)
        return loss, np.ascontiguousarray(np.moveaxis(grad, -1, axis))


# ------------------------------------------------------------------------- public functions

def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0):
    """Softmax cross-entropy of `logits` against `target`, in float64.

    Classes lie along `axis` (default last; ``axis=1`` gives PyTorch's ``(N, C, d1, ...)``);
    1-D logits are one sample. `target` is either integer class indices shaped like `logits`
    without the class axis (a 0-d integer for 1-D logits), or float probabilities shaped like
    `logits` (soft targets); the dtype kind decides which.

    Per row (``w`` = `weight`, 1 without it; ``W`` = sum of ``w``; ``eps`` = `label_smoothing`;
    ``z`` = `z_loss`), PyTorch's ``F.cross_entropy`` plus a z-loss term:

    * hard label ``y``: ``(1-eps) w_y (lse - x_y) + (eps/C) sum_c w_c (lse - x_c)
      + z w_y lse**2``; rows with ``y == ignore_index`` have loss 0.
    * soft target ``t``: ``sum_c w_c t'_c (lse - x_c) + z lse**2`` with
      ``t' = (1-eps) t + eps/C``; `ignore_index` does not apply.

    The ``eps`` and ``z`` terms are skipped when their coefficient is 0, so ``-inf`` logits on
    non-target classes give a finite loss (``-inf`` at the target gives ``+inf``). With soft
    targets a term with ``t'_c == 0`` counts 0 even where ``x_c == -inf`` (nbxent's choice:
    PyTorch gives NaN there). A NaN in a row makes that row's loss NaN.

    `reduction`: "none" returns the per-row losses (float64, shaped like the label shape);
    "sum" their sum (0.0 over no rows); "mean" for hard labels divides the sum by the sum of
    ``w_y`` over non-ignored rows (their count without weight), for soft targets by the number
    of rows; a mean over no rows (empty, or every row ignored) is NaN.
    """
    return _cross_entropy(logits, target, axis, weight, ignore_index, reduction,
                          label_smoothing, z_loss, False, None)


def cross_entropy_with_grad(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                            reduction="mean", label_smoothing=0.0, z_loss=0.0, grad_output=None):
    """``(loss, grad)``: `cross_entropy` and its gradient with respect to `logits`, in float64.

    ``grad = d(sum(loss * grad_output)) / d(logits)``, shaped like `logits`. `grad_output`
    defaults to 1; it is a scalar for "mean" and "sum" and broadcastable to the per-row shape
    for "none". Closed forms (``p = softmax``, ``s`` = the row's share of `grad_output`, i.e.
    ``grad_output / denominator`` for "mean"):

    * hard: ``s (p_c A - (1-eps) w_y [c == y] - (eps/C) w_c)``,
      ``A = (1-eps) w_y + (eps/C) W + 2 z w_y lse``;
    * soft: ``s (p_c (sum_k w_k t'_k + 2 z lse) - w_c t'_c)``.

    Ignored rows have a zero gradient; when every row is ignored, the "mean" loss is NaN but
    the gradient is all zeros (not NaN).
    """
    return _cross_entropy(logits, target, axis, weight, ignore_index, reduction,
                          label_smoothing, z_loss, True, grad_output)


def nll_loss(log_probs, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of integer `target` under `log_probs` (PyTorch ``F.nll_loss``).

    Per row ``-w_y log_probs[y]``, 0 for rows with ``y == ignore_index``. Classes along
    `axis`; 1-D `log_probs` is one sample (`target` a 0-d integer). Reductions as in
    `cross_entropy`: "mean" divides by the sum of ``w_y`` over non-ignored rows (NaN over no
    rows), "sum" of no rows is 0.0, "none" gives float64 per-row losses.
    """
    _check_reduction(reduction)
    lp, _ = _rows(log_probs, axis)
    num_classes = lp.shape[-1]
    index_shape = lp.shape[:-1]
    w = _weight(weight, num_classes)
    valid, y = _hard_labels(target, index_shape, num_classes, ignore_index)
    w_y = _class_weights(w, y, index_shape)
    with np.errstate(invalid="ignore", over="ignore"):
        losses = np.where(valid, -w_y * _gather(lp, y), 0.0)
    denominator = float(np.sum(np.where(valid, w_y, 0.0), dtype=np.float64))
    return _reduce(losses, reduction, denominator)


def log_softmax(x, *, axis=-1):
    """``x - logsumexp(x)`` along `axis`, float64, shaped like `x`.

    Rows follow `logsumexp`'s rule, so an all ``-inf`` row or a row with a NaN is all NaN, and
    a row holding ``+inf`` is NaN at the ``+inf`` entries and ``-inf`` elsewhere (nbxent's
    kernel semantics; PyTorch gives an all-NaN row there).
    """
    xr, axis = _rows(x, axis)
    shifted, logsum, _ = _shifted(xr)
    with np.errstate(invalid="ignore"):
        out = shifted - logsum[..., None]
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def softmax(x, *, axis=-1):
    """``exp(x - logsumexp(x))`` along `axis`, float64, shaped like `x`.

    An all ``-inf`` row or a row with a NaN is all NaN; a row holding ``+inf`` is NaN at the
    ``+inf`` entries and 0 elsewhere (nbxent's kernel semantics; PyTorch: all NaN).
    """
    xr, axis = _rows(x, axis)
    shifted, logsum, _ = _shifted(xr)
    with np.errstate(invalid="ignore"):
        out = np.exp(shifted - logsum[..., None])
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def logsumexp(x, *, axis=-1):
    """``log(sum(exp(x)))`` along `axis` (the axis is removed), float64, computed stably.

    As ``torch.logsumexp``: an all ``-inf`` row gives ``-inf``, a row holding ``+inf`` gives
    ``+inf``, a NaN gives NaN, and an empty class axis (C == 0) gives ``-inf``.
    """
    xr, _ = _rows(x, axis)
    _, logsum, m = _shifted(xr)
    return np.asarray(m + logsum, dtype=np.float64)
