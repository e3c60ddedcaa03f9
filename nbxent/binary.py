"""Binary cross-entropy family: binary_cross_entropy, binary_cross_entropy_with_logits
(+ fused gradient), sigmoid_focal_loss.

Semantics follow PyTorch (`F.binary_cross_entropy`, `F.binary_cross_entropy_with_logits`)
and torchvision (`torchvision.ops.sigmoid_focal_loss`). The losses are elementwise: inputs
of any shape (0-d included), target of the same shape, `weight` (and `pos_weight`,
`grad_output` for reduction "none") broadcasting to it. NumPy arrays run on the CPU, CUDA
arrays on the GPU; results come back in the input's own array type.

Conventions shared by every function here:

- dtypes: input float16/32/64. The compute dtype is float32 for float16/float32 input and
  float64 for float64. Per-element losses ("none") and reductions come back in the compute
  dtype (float16 input gives float32 losses, as in the softmax family); gradients in the
  input's dtype. target may be any float dtype or integer/bool (taken as the values 0/1;
  PyTorch requires a float target: nbxent's choice); it is converted to the input's dtype
  (so float16 input rounds soft targets to float16, as PyTorch's same-dtype rule would).
  weight, pos_weight and grad_output are converted to the compute dtype.
- reduction: "none", "sum", or "mean" (the average over all elements, weighted or not, as
  PyTorch). A mean over no elements is NaN, a sum 0. Reductions accumulate in float64 in a
  fixed order (fixed blocks of elements combined in order): bit-identical at every thread
  count. They return a 0-d value (NumPy scalar, or a 0-d device array on the GPU).
- targets must lie in [0, 1] (soft targets allowed); `binary_cross_entropy`'s probabilities
  too. A scan before the loss kernel raises ValueError naming the first bad position and
  value. NaN is not "outside": it propagates to its element's loss (and gradient).
- Inputs are never modified (except the logits with `inplace=True`). Arrays that are not
  C-contiguous are copied to C order first (elementwise kernels run over flat buffers).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from nbxent import _checks
from nbxent._dispatch import backend_for
from nbxent.softmax import _scalar_grad_output

_FAMILY = "binary"
_MAX = float(np.finfo(np.float64).max)


# ----------------------------------------------------------------------------- helpers


def _is_scalar(v) -> bool:
    return isinstance(v, (numbers.Number, np.generic)) and not isinstance(v, np.ndarray)


def _flat_view(be, a, n: int):
    """1-D kernel view of the C-contiguous array `a` (any ndim, 0-d included)."""
    itemsize = np.dtype(be.dtype(a)).itemsize
    return be.view(a, (n,), (itemsize,))


def _c_order(be, a):
    shape, _ = be.shape_strides(a)
    return a if len(shape) == 0 else be.contiguous(a)


class _Call:
    """The input array of one call (probabilities or logits) as a flat C-ordered buffer."""

    def __init__(self, be, x, name: str):
        self.be = be
        self.name = name
        self.original = be.asarray(x)
        shape, _ = be.shape_strides(self.original)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = _checks.check_float_input(name, be.dtype(self.original))
        self.ct = _checks.compute_dtype(self.dtype)
        self.n = int(np.prod(self.shape, dtype=np.int64))
        self.x = _c_order(be, self.original)

    @property
    def copied(self) -> bool:
        return self.x is not self.original

    def view(self, a):
        return _flat_view(self.be, a, self.n)

    def target(self, target):
        """(original target, C-ordered target in the input's dtype); shape/dtype checked."""
        be = self.be
        if _is_scalar(target) and be.name == "gpu":
            target = be.full((), target, np.asarray(target).dtype)
        t = be.asarray(target)
        t_shape = tuple(be.shape_strides(t)[0])
        _checks.check_same_shape("target", t_shape, self.name, self.shape)
        _checks.check_binary_target_dtype(be.dtype(t))
        return t, _c_order(be, be.astype(t, self.dtype))

    def operand(self, value, name: str, default: float = 1.0):
        """A broadcast operand as (flat compute-dtype buffer view, (inner, period)): the value
        of element i is buf[(i // inner) % period] (see nbxent/cpu/binary.py)."""
        be, ct = self.be, self.ct
        if value is None or _is_scalar(value):
            if value is not None and (isinstance(value, (bool, np.bool_)) or
                                      not isinstance(value, (numbers.Real, np.number))):
                raise TypeError(f"{name} must be a real number or array, got {value!r}")
            v = default if value is None else float(value)
            return be.full((1,), v, ct), (1, 1)
        a = be.asarray(value)
        a_shape = tuple(int(s) for s in be.shape_strides(a)[0])
        _checks.check_real_dtype(name, be.dtype(a))
        _checks.check_broadcast_to(name, a_shape, self.name, self.shape)
        nd = len(self.shape)
        ws = (1,) * (nd - len(a_shape)) + a_shape
        real = [d for d in range(nd) if ws[d] != 1]
        size = int(np.prod(a_shape, dtype=np.int64))
        if not real:
            buf = _c_order(be, be.astype(a, ct))
            return _flat_view(be, buf, 1), (1, 1)
        lo, hi = real[0], real[-1] + 1
        if all(ws[d] == self.shape[d] for d in range(lo, hi)):
            buf = _c_order(be, be.astype(a, ct))
            inner = int(np.prod(self.shape[hi:], dtype=np.int64))
            return _flat_view(be, buf, size), (max(inner, 1), max(size, 1))
        # non-1 axes not consecutive: materialise the broadcast (an odd layout)
        full = be.contiguous(be.broadcast_to(be.astype(a, ct), self.shape))
        return _flat_view(be, full, self.n), (1, max(self.n, 1))

    def check_unit_interval(self, kernels, flat_view, arr, name: str) -> None:
        """ValueError naming the first element of `arr` outside [0, 1] (found by a kernel)."""
        bad = kernels.range_check(flat_view, self.be.stream)
        if bad >= 0:
            position = tuple(int(i) for i in np.unravel_index(bad, self.shape)) if self.shape else ()
            raise _checks.probability_error(name, position, self.be.item(arr, position))

    def outputs(self, reduction: str):
        """(loss array or None, its flat view or None, sum buffer or None, scale)."""
        be = self.be
        if reduction == "none":
            loss = be.empty(self.shape, self.ct, self.original)
            return loss, self.view(loss), None, 1.0
        out1 = be.empty((1,), self.ct)
        if reduction == "sum":
            scale = 1.0
        else:
            scale = 1.0 / self.n if self.n else math.nan
        return None, None, out1, scale

    def result(self, loss, out1):
        return self.be.wrap(loss) if loss is not None else self.be.scalar(out1)


# ----------------------------------------------------------------------------- BCE


def binary_cross_entropy(probs, target, *, weight=None, reduction="mean", eps=None):
    """Binary cross-entropy of probabilities `probs` against `target` (PyTorch's
    `F.binary_cross_entropy`): per element `-w (t log p + (1 - t) log(1 - p))`, each log
    clamped at -100 (so p = 0 or 1 gives a finite loss, 100 w at most).

    eps: None, or a clip applied to p first, to [eps, 1 - eps] (scikit-learn's `log_loss`
    style; eps in [0, 0.5]; the bounds are rounded to the compute dtype, so eps below
    float32's resolution near 1 leaves p = 1 unclipped in float32: the -100 clamp applies).
    log(1 - p) is computed as log1p(-p), accurate for tiny p.

    Raises ValueError for probs or target outside [0, 1] (naming the first position and
    value), shapes that differ (naming both), a weight that does not broadcast to probs,
    bad options; TypeError for non-float probs or a non-real target/weight.
    """
    be = backend_for(probs=probs, target=target, weight=weight)
    call = _Call(be, probs, "probs")
    reduction = _checks.check_reduction(reduction)
    eps = _checks.check_optional_real("eps", eps, 0.0, 0.5)
    t_orig, t = call.target(target)
    w, w_ip = call.operand(weight, "weight")
    kernels = be.kernels(_FAMILY)
    pv, tv = call.view(call.x), call.view(t)
    call.check_unit_interval(kernels, pv, call.original, "probs")
    call.check_unit_interval(kernels, tv, t_orig, "target")
    loss, loss_view, out1, scale = call.outputs(reduction)
    kernels.bce(pv, tv, w, w_ip, 0.0 if eps is None else eps, loss_view, out1, scale,
                be.stream)
    return call.result(loss, out1)


# ----------------------------------------------------------------------------- BCE with logits


def _with_logits(logits, target, weight, pos_weight, reduction, want_grad=False,
                 grad_output=None, inplace=False):
    be = backend_for(logits=logits, target=target, weight=weight, pos_weight=pos_weight,
                     grad_output=None if _is_scalar(grad_output) else grad_output)
    call = _Call(be, logits, "logits")
    reduction = _checks.check_reduction(reduction)
    inplace = _checks.check_bool("inplace", inplace)
    if inplace and not be.writeable(call.original):
        raise ValueError("inplace=True writes the gradient over logits, but logits are read-only")
    t_orig, t = call.target(target)
    w, w_ip = call.operand(weight, "weight")
    pw, pw_ip = call.operand(pos_weight, "pos_weight")
    gs = gs_ip = None
    if want_grad:
        if reduction == "none":
            gs, gs_ip = call.operand(grad_output, "grad_output")
        else:
            g = _scalar_grad_output(be, grad_output, reduction)
            if reduction == "mean":
                g = g / call.n if call.n else 0.0
            gs, gs_ip = call.operand(g, "grad_output")
    kernels = be.kernels(_FAMILY)
    xv, tv = call.view(call.x), call.view(t)
    call.check_unit_interval(kernels, tv, t_orig, "target")
    loss, loss_view, out1, scale = call.outputs(reduction)
    grad = grad_view = None
    if want_grad:
        grad = call.x if inplace else be.empty(call.shape, call.dtype, call.original)
        grad_view = xv if inplace else call.view(grad)
    kernels.bce_logits(xv, tv, w, w_ip, pw, pw_ip, loss_view, out1, scale, gs, gs_ip,
                       grad_view, be.stream)
    result = call.result(loss, out1)
    if not want_grad:
        return result
    if inplace:
        if call.copied:
            be.copy_into(call.original, grad)
        return result, call.original
    return result, be.wrap(grad)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction="mean"):
    """Binary cross-entropy of sigmoid(logits) against `target`, computed from the logits
    (PyTorch's `F.binary_cross_entropy_with_logits`):
    per element `w (pw t softplus(-x) + (1 - t) softplus(x))`, where `softplus(z) =
    log(1 + exp(z))` is evaluated stably (`max(z, 0) + log1p(exp(-|z|))`). This equals
    PyTorch's `(1 - t) x + (1 + (pw - 1) t) softplus(-x)` but adds two non-negative terms,
    so float32 results stay accurate to a few ulps where PyTorch's form cancels (large
    negative x with t = 0, large positive x with t = 1); logits of +-200 give exact losses.

    pos_weight: weight of the positive term, broadcasting to the logits (usually shape (C,)
    for the last axis, as in PyTorch). weight: broadcasts to the logits. A term whose
    coefficient is exactly 0 is skipped (nbxent's choice: +-inf logits then give 0 or inf
    where PyTorch gives NaN). Soft targets in [0, 1] are allowed; others raise ValueError.
    """
    return _with_logits(logits, target, weight, pos_weight, reduction)


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None,
                                               reduction="mean", grad_output=None,
                                               inplace=False):
    """`(loss, grad)`: `binary_cross_entropy_with_logits` and its gradient with respect to
    `logits`, in one fused pass.

    grad = d(sum(loss * grad_output)) / d(logits), shaped and typed like `logits`:
    `w ((1 - t) sigmoid(x) - pw t sigmoid(-x)) grad_output` (divided by the number of
    elements for "mean"). This form has no cancellation for hard targets (one term is 0),
    unlike the textbook `(1 + (pw - 1) t) sigmoid(x) - pw t`. grad_output defaults to 1; a
    scalar (Python number or 1-element array) for "mean"/"sum", broadcasting to the logits
    for "none". `inplace=True` writes the gradient over `logits` (which must be writeable)
    and returns `logits` as grad.
    """
    return _with_logits(logits, target, weight, pos_weight, reduction, want_grad=True,
                        grad_output=grad_output, inplace=inplace)


# ----------------------------------------------------------------------------- focal loss


def sigmoid_focal_loss(logits, target, *, alpha=0.25, gamma=2.0, reduction="mean"):
    """The RetinaNet focal loss, as `torchvision.ops.sigmoid_focal_loss` defines it:
    per element `ce (1 - p_t)**gamma alpha_t`, with p = sigmoid(x), ce the (unweighted)
    `binary_cross_entropy_with_logits`, `p_t = p t + (1 - p)(1 - t)` and
    `alpha_t = alpha t + (1 - alpha)(1 - t)`; alpha < 0 (or None) drops the alpha_t factor.
    `1 - p_t` is computed as `p (1 - t) + (1 - p) t` (no cancellation); `0**0 = 1`.

    reduction defaults to "mean" (the mean over elements; torchvision's default is "none").
    alpha: real <= 1 (or None); gamma: real >= 0. Targets must lie in [0, 1].
    """
    be = backend_for(logits=logits, target=target)
    call = _Call(be, logits, "logits")
    reduction = _checks.check_reduction(reduction)
    alpha = _checks.check_optional_real("alpha", alpha, -_MAX, 1.0)
    gamma = _checks.check_real("gamma", gamma, 0.0, _MAX)
    t_orig, t = call.target(target)
    kernels = be.kernels(_FAMILY)
    xv, tv = call.view(call.x), call.view(t)
    call.check_unit_interval(kernels, tv, t_orig, "target")
    loss, loss_view, out1, scale = call.outputs(reduction)
    kernels.focal(xv, tv, -1.0 if alpha is None else alpha, gamma, loss_view, out1, scale,
                  be.stream)
    return call.result(loss, out1)
