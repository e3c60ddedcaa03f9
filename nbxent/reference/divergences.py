"""Float64 NumPy reference of the divergence family (nbxent.divergences): the oracle.

Same signatures and semantics as the fast functions; computed in float64, results float64.
Inputs are not validated exhaustively (the fast path's checks do that).
"""

from __future__ import annotations

import warnings

import numpy as np

from nbxent.reference.softmax import _REDUCTIONS, _rows, _shifted, log_softmax, softmax

__all__ = ["entropy", "kl_divergence", "log_loss", "softmax_focal_loss"]


def _reduce(values, reduction, denominator):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if reduction == "none":
        return np.asarray(values, dtype=np.float64)
    total = np.float64(np.sum(values, dtype=np.float64))
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total / np.float64(denominator))


def _xlogx_sum(p):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(np.where(p == 0, 0.0, p * np.log(np.where(p == 0, 1.0, p))), axis=-1)


def softmax_focal_loss(logits, target, *, axis=-1, gamma=2.0, alpha=None, ignore_index=-100,
                       reduction="mean"):
    """Per row `-alpha[y] (1 - p_y)**gamma log p_y`; mean divides by sum of alpha[y] over
    non-ignored rows (their count without alpha)."""
    x, _ = _rows(logits, axis)
    C = x.shape[-1]
    y = np.asarray(target).astype(np.int64)
    valid = y != ignore_index
    ys = np.where(valid, y, 0)
    if np.any(valid & ((y < 0) | (y >= C))):
        raise IndexError("target out of range")
    shifted, logsum, _ = _shifted(x)
    with np.errstate(invalid="ignore", over="ignore"):
        if C:
            nll = logsum - np.take_along_axis(shifted, ys[..., None], -1)[..., 0]
        else:
            nll = np.zeros(ys.shape)
        w = np.ones(ys.shape) if alpha is None else np.asarray(alpha, np.float64)[ys] \
            if C else np.zeros(ys.shape)
        if gamma == 0:
            loss = w * nll
        else:
            om = np.maximum(-np.expm1(-nll), 0.0)
            om = np.where(np.isnan(nll), np.nan, om)
            loss = w * om ** float(gamma) * nll
    loss = np.where(valid, loss, 0.0)
    denominator = float(np.sum(np.where(valid, w, 0.0)))
    return _reduce(loss, reduction, denominator)


def entropy(p, *, axis=-1, from_logits=False):
    """-sum p log p per row (0 log 0 = 0); from_logits: of softmax(p)."""
    if from_logits:
        x, _ = _rows(p, axis)
        if x.shape[-1] == 0:
            return np.full(x.shape[:-1], np.nan)
        q = softmax(x, axis=-1)
        with np.errstate(invalid="ignore"):
            lq = log_softmax(x, axis=-1)
            return -np.sum(np.where(q == 0, 0.0, q * lq), axis=-1)
    x, _ = _rows(p, axis)
    return -_xlogx_sum(x)


def kl_divergence(p, q, *, axis=-1, from_logits=False, reduction="none"):
    """sum p (log p - log q) per row, p == 0 terms 0; "mean" divides by the number of rows."""
    pp, _ = _rows(p, axis)
    qq, _ = _rows(q, axis)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lq = log_softmax(qq, axis=-1) if from_logits else np.log(qq)
        safe_p = np.where(pp == 0, 1.0, pp)
        terms = np.where(pp == 0, 0.0 * (lq if from_logits else qq), pp * (np.log(safe_p) - lq))
        values = np.sum(terms, axis=-1)
    return _reduce(values, reduction, float(np.prod(values.shape)))


def log_loss(y_true, y_prob, *, sample_weight=None, labels=None, normalize=True):
    """sklearn.metrics.log_loss semantics in float64 (clipping at y_prob's dtype eps)."""
    yp = np.asarray(y_prob)
    if yp.dtype.kind != "f":
        yp = yp.astype(np.float64)
    eps = float(np.finfo(yp.dtype).eps)
    if yp.ndim == 1:
        yp = yp[:, None]
    if yp.shape[1] == 1:
        yp = np.concatenate([1 - yp, yp], axis=1)
    y = np.asarray(y_true).ravel()
    classes = np.unique(np.asarray(labels) if labels is not None else y)
    if classes.size != yp.shape[1]:
        raise ValueError("number of classes differs")
    if np.any(np.abs(yp.astype(np.float64).sum(1) - 1) > np.sqrt(eps) + 1e-8):
        warnings.warn("The y_prob values do not sum to one. Make sure to pass probabilities.",
                      UserWarning)
    codes = np.searchsorted(classes, y)
    pv = np.clip(yp.astype(np.float64)[np.arange(y.size), codes], eps, 1 - eps)
    loss = -np.log(pv)
    w = np.ones(y.size) if sample_weight is None else np.asarray(sample_weight, np.float64)
    total = np.float64(np.sum(loss * w))
    if not normalize:
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total / np.sum(w))
