"""float64 NumPy reference of the binary family (nbxent.binary): the oracle of the tests.

Same signatures as nbxent.binary; every computation is done in float64 and results are
float64 (reductions return ``np.float64``). Inputs are not validated beyond what NumPy does.

Stable forms (the exact values the fast kernels approximate):

* BCE: ``-(t max(log p, -100) + (1 - t) max(log1p(-p), -100))`` (PyTorch's clamp at -100,
  with ``log1p(-p)`` in place of ``log(1 - p)``, the same value computed accurately).
* BCE with logits: ``pw t softplus(-x) + (1 - t) softplus(x)`` (equal to PyTorch's
  ``(1 - t) x + (1 + (pw - 1) t) softplus(-x)``, a sum of two non-negative terms, so no
  cancellation); a term whose coefficient is 0 is skipped, so +-inf logits give 0 or inf
  rather than NaN.
* gradient: ``(1 - t) sigmoid(x) - pw t sigmoid(-x)``, sigmoids computed without overflow.
* sigmoid focal loss (torchvision): ``ce (1 - p_t)**gamma alpha_t`` with
  ``1 - p_t = p (1 - t) + (1 - p) t`` and ``0**0 = 1``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "sigmoid_focal_loss",
]


def _f64(a):
    return np.asarray(a).astype(np.float64)


def _reduce(loss, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.float64(loss.sum())
    if reduction == "mean":
        return np.float64(loss.mean()) if loss.size else np.float64(np.nan)
    raise ValueError(f"reduction must be one of ('none', 'sum', 'mean'), got {reduction!r}")


def _softplus(z):
    """log(1 + exp(z)), stable."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _sigmoid(z):
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _skip0(coef, value):
    """coef * value, 0 where coef == 0 (even where value is inf)."""
    with np.errstate(invalid="ignore"):
        return np.where(coef == 0, 0.0, coef * value)


def binary_cross_entropy(probs, target, *, weight=None, reduction="mean", eps=None):
    p = _f64(probs)
    t = _f64(target)
    if eps is not None:
        p = np.clip(p, eps, 1.0 - eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = np.maximum(np.log(p), -100.0)
        l1 = np.maximum(np.log1p(-p), -100.0)
    lp = np.where(np.isnan(p), np.nan, lp)
    l1 = np.where(np.isnan(p), np.nan, l1)
    loss = -(t * lp + (1.0 - t) * l1)
    if weight is not None:
        loss = loss * _f64(weight)
    loss = np.broadcast_to(loss, np.shape(p)).copy() if loss.shape != np.shape(p) else loss
    return _reduce(loss, reduction)


def _logits_loss(x, t, weight, pos_weight):
    pw = 1.0 if pos_weight is None else _f64(pos_weight)
    loss = _skip0(pw * t, _softplus(-x)) + _skip0(1.0 - t, _softplus(x))
    if weight is not None:
        loss = loss * _f64(weight)
    return loss


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction="mean"):
    x = _f64(logits)
    t = _f64(target)
    return _reduce(_logits_loss(x, t, weight, pos_weight), reduction)


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None,
                                               reduction="mean", grad_output=None,
                                               inplace=False):
    x = _f64(logits)
    t = _f64(target)
    loss = _logits_loss(x, t, weight, pos_weight)
    pw = 1.0 if pos_weight is None else _f64(pos_weight)
    grad = _skip0(1.0 - t, _sigmoid(x)) - _skip0(pw * t, _sigmoid(-x))
    if weight is not None:
        grad = grad * _f64(weight)
    g = 1.0 if grad_output is None else _f64(grad_output)
    if reduction == "mean":
        g = g / x.size if x.size else g * 0.0
    grad = np.broadcast_to(grad * g, x.shape).copy()
    result = _reduce(loss, reduction)
    if inplace:
        np.copyto(logits, grad, casting="unsafe")
        return result, logits
    return result, grad


def sigmoid_focal_loss(logits, target, *, alpha=0.25, gamma=2.0, reduction="mean"):
    x = _f64(logits)
    t = _f64(target)
    ce = _skip0(t, _softplus(-x)) + _skip0(1.0 - t, _softplus(x))
    p = _sigmoid(x)
    q = _sigmoid(-x)
    m = p * (1.0 - t) + q * t
    loss = ce * (m ** gamma if gamma != 0 else np.ones_like(m))
    if alpha is not None and alpha >= 0:
        loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return _reduce(loss, reduction)
