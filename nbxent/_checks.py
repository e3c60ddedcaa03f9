"""Argument validation and normalisation shared by every public function.

Everything a user can get wrong is caught here, before any kernel runs, with a message that
says what was wrong and where. Functions here look only at shapes, strides, dtypes and
option values; the few checks that need the data (labels in range) are run by a kernel and
reported by `bad_label_error`.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

REDUCTIONS = ("none", "sum", "mean")
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
KERNEL_LABEL_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def compute_dtype(dtype) -> np.dtype:
    """The dtype kernels compute in and per-row losses come back in (float16 -> float32)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def check_float_input(name: str, dtype) -> np.dtype:
    """Logits and similar inputs must be float16, float32 or float64."""
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a float16, float32 or float64 array, got dtype {dtype}"
        )
    return dtype


def check_ndim_axis(name: str, shape: tuple, axis) -> int:
    """Normalise `axis` against `shape`; 0-d inputs and bad axes are ValueErrors."""
    if len(shape) == 0:
        raise ValueError(f"{name} must have at least 1 dimension (the class axis), got a 0-d array")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise ValueError(f"axis must be an integer, got {axis!r}") from None
    if not -len(shape) <= axis < len(shape):
        raise ValueError(
            f"axis {axis} is out of bounds for {name} of shape {tuple(shape)} ({len(shape)} dimensions)"
        )
    return axis % len(shape)


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_ignore_index(ignore_index) -> int:
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, numbers.Integral):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
    return int(ignore_index)


def check_real(name: str, value, low: float, high: float) -> float:
    """A finite real option within [low, high]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (low <= value <= high):
        raise ValueError(f"{name} must be {_interval(low, high)}, got {value}")
    return value


def _interval(low: float, high: float) -> str:
    """[low, high] in words; the largest float as a bound means 'finite'."""
    biggest = float(np.finfo(np.float64).max)
    if high >= biggest and low <= -biggest:
        return "a finite number"
    if high >= biggest:
        return f"a finite number >= {low}"
    if low <= -biggest:
        return f"a finite number <= {high}"
    return f"in [{low}, {high}]"


def target_kind(target_dtype, target_shape: tuple, logits_shape: tuple, axis: int) -> str:
    """'hard' for integer class indices, 'soft' for probabilities; errors otherwise.

    Hard targets have the logits' shape without the class axis; soft targets the logits' shape.
    """
    index_shape = logits_shape[:axis] + logits_shape[axis + 1:]
    dtype = np.dtype(target_dtype)
    if dtype.kind in "iu":
        if tuple(target_shape) != index_shape:
            raise ValueError(
                f"target of class indices has shape {tuple(target_shape)} but logits of shape "
                f"{tuple(logits_shape)} with classes on axis {axis} need shape {index_shape}"
            )
        return "hard"
    if dtype.kind == "f":
        if tuple(target_shape) == tuple(logits_shape):
            return "soft"
        if tuple(target_shape) == index_shape:
            raise TypeError(
                f"target has float dtype {dtype} and the shape of class indices {index_shape}: "
                f"class indices must be integers (soft targets must have the logits' shape "
                f"{tuple(logits_shape)})"
            )
        raise ValueError(
            f"soft target (probabilities) has shape {tuple(target_shape)} but logits have shape "
            f"{tuple(logits_shape)}; they must match"
        )
    raise TypeError(
        f"target must be integer class indices or float probabilities, got dtype {dtype}"
    )


def check_real_dtype(name: str, dtype) -> np.dtype:
    """An option array (weight, pos_weight, alpha, grad_output) must hold real numbers."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real array, got dtype {dtype}")
    return dtype


def check_class_vector(name: str, shape: tuple, num_classes: int, dtype) -> None:
    """A per-class option array (`weight`, focal `alpha`): real, shape (C,)."""
    check_real_dtype(name, dtype)
    if tuple(shape) != (num_classes,):
        raise ValueError(
            f"{name} has shape {tuple(shape)} but the input has {num_classes} classes: "
            f"it must have shape ({num_classes},)"
        )


def check_weight_shape(weight_shape: tuple, num_classes: int, weight_dtype) -> None:
    check_class_vector("weight", weight_shape, num_classes, weight_dtype)


def check_out(out_shape: tuple, out_dtype, want_shape: tuple, want_dtype, writeable: bool) -> None:
    if tuple(out_shape) != tuple(want_shape):
        raise ValueError(f"out has shape {tuple(out_shape)} but the result has shape {tuple(want_shape)}")
    if np.dtype(out_dtype) != np.dtype(want_dtype):
        raise TypeError(f"out has dtype {np.dtype(out_dtype)} but the result has dtype {np.dtype(want_dtype)}")
    if not writeable:
        raise ValueError("out is read-only")


def bad_label_error(position: tuple, value, num_classes: int, ignore_index: int) -> ValueError:
    where = "target" + (f"[{', '.join(str(int(i)) for i in position)}]" if position else "")
    return ValueError(
        f"{where} = {value} is not a class index in [0, {num_classes}) "
        f"nor ignore_index ({ignore_index})"
    )


# --------------------------------------------------------------------------- row layout


def _mergeable(shape: tuple, strides: tuple, outer: int, inner: int) -> bool:
    return strides[outer] == strides[inner] * shape[inner]


def _merge_groups(shape: tuple, strides: tuple) -> list[list[int]]:
    """Group consecutive axes that can be flattened into one without a copy.

    Axes of length 1 join any group: their stride never matters.
    """
    groups: list[list[int]] = []
    last_real = None  # the innermost axis of length > 1 in the current group
    for d in range(len(shape)):
        if groups and (shape[d] == 1 or last_real is None or _mergeable(shape, strides, last_real, d)):
            groups[-1].append(d)
        else:
            groups.append([d])
            last_real = None
        if shape[d] != 1:
            last_real = d
    return groups


def _group_fits(shape: tuple, strides: tuple, group: list[int]) -> bool:
    real = [d for d in group if shape[d] != 1]
    return all(_mergeable(shape, strides, a, b) for a, b in zip(real, real[1:]))


def _collapse(shape: tuple, strides: tuple, groups: list[list[int]]):
    """Shape and strides of `groups` merged, padded on the left to exactly two entries."""
    out_shape, out_strides = [], []
    for group in groups:
        size = int(math.prod(shape[d] for d in group))
        inner = [d for d in group if shape[d] != 1]
        out_shape.append(size)
        out_strides.append(strides[inner[-1]] if inner else 0)
    while len(out_shape) < 2:
        out_shape.insert(0, 1)
        out_strides.insert(0, 0)
    return tuple(out_shape), tuple(out_strides)


class RowLayout:
    """How the row axes (every axis but the class axis) fold into kernel rows `(P, Q)`.

    Built from the logits; `rows_of` and `elements_of` then give, for the logits and every
    other array of the call (targets, outputs, gradients), the 2-D `(P, Q)` or 3-D `(P, Q, C)`
    shape and byte strides of a zero-copy view, or None where that array's strides do not fit
    the grouping (the caller then copies it).
    """

    def __init__(self, lead_shape: tuple, groups: list[list[int]]):
        self.lead_shape = tuple(lead_shape)
        self.groups = groups
        self._folded: dict = {}   # rows_of's answers: a call asks for the same ones often

    @classmethod
    def for_logits(cls, shape: tuple, strides: tuple, axis: int) -> "RowLayout | None":
        """None when the row axes of the logits do not fold into two groups (copy them)."""
        lead = [d for d in range(len(shape)) if d != axis]
        lead_shape = tuple(shape[d] for d in lead)
        groups = _merge_groups(lead_shape, tuple(strides[d] for d in lead))
        if len(groups) > 2:
            return None
        return cls(lead_shape, groups)

    @property
    def rows_shape(self) -> tuple:
        return _collapse(self.lead_shape, (0,) * len(self.lead_shape), self.groups)[0]

    def rows_of(self, shape: tuple, strides: tuple):
        """(P, Q) shape and strides of an array shaped like the row axes, or None."""
        key = (tuple(shape), tuple(strides))
        if key not in self._folded:
            fits = all(_group_fits(shape, strides, g) for g in self.groups)
            self._folded[key] = _collapse(shape, strides, self.groups) if fits else None
        return self._folded[key]

    def elements_of(self, shape: tuple, strides: tuple, axis: int):
        """(P, Q, C) shape and strides of an array shaped like the logits, or None."""
        lead = [d for d in range(len(shape)) if d != axis]
        rows = self.rows_of(tuple(shape[d] for d in lead), tuple(strides[d] for d in lead))
        if rows is None:
            return None
        return rows[0] + (shape[axis],), rows[1] + (strides[axis],)


# --------------------------------------------------------------------------- divergences


def check_same_shape(name_a: str, shape_a: tuple, name_b: str, shape_b: tuple) -> None:
    if tuple(shape_a) != tuple(shape_b):
        raise ValueError(
            f"{name_a} has shape {tuple(shape_a)} but {name_b} has shape {tuple(shape_b)}; "
            f"they must match"
        )


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def probability_error(name: str, position: tuple, value, what: str = "outside [0, 1]") -> ValueError:
    """A probability array holds a value it must not (found by a kernel's scan)."""
    where = name + (f"[{', '.join(str(int(i)) for i in position)}]" if position else "")
    return ValueError(f"{where} = {value} is {what}: {name} must hold probabilities in [0, 1]")


# --------------------------------------------------------------------------- binary family


def check_broadcast_to(name: str, shape: tuple, target_name: str, target_shape: tuple) -> None:
    """`name` (of `shape`) must broadcast to `target_shape` without enlarging it (NumPy
    rules: trailing axes equal or 1, no more dimensions than the target)."""
    shape, target_shape = tuple(shape), tuple(target_shape)
    ok = len(shape) <= len(target_shape) and all(
        a == 1 or a == b for a, b in zip(reversed(shape), reversed(target_shape))
    )
    if not ok:
        raise ValueError(
            f"{name} has shape {shape}, which does not broadcast to the shape {target_shape} "
            f"of {target_name}"
        )


def check_binary_target_dtype(dtype) -> np.dtype:
    """Targets of the binary losses: any float dtype, or integer/bool 0/1 values."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiub":
        raise TypeError(
            f"target must be a float, integer or bool array of values in [0, 1], got dtype {dtype}"
        )
    return dtype


def check_optional_real(name: str, value, low: float, high: float):
    """None, or a real option within [low, high] (as `check_real`)."""
    return None if value is None else check_real(name, value, low, high)
