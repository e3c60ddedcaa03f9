"""The canonical kernel views of one call: logits as `(P, Q, C)`, per-row arrays as `(P, Q)`.

`Rows` folds every axis but the class axis of the logits into two row axes without copying
where the strides allow (see `_checks.RowLayout`). Every other array of the call (targets,
outputs, gradients) must fold the same way; where one does not, the inputs are copied to
C order once, before any kernel runs, so that every array shares one layout.
"""

from __future__ import annotations

import numpy as np

from nbxent._checks import RowLayout, check_float_input, check_ndim_axis


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


class Rows:
    """Logits of one call, their class axis and the row layout every other array follows."""

    def __init__(self, backend, logits, axis, name: str = "logits"):
        self.be = backend
        x = backend.asarray(logits)
        shape, strides = backend.shape_strides(x)
        self.dtype = check_float_input(name, backend.dtype(x))
        self.axis = check_ndim_axis(name, shape, axis)
        self.shape = tuple(shape)
        self.num_classes = int(shape[self.axis])
        self.index_shape = self.shape[: self.axis] + self.shape[self.axis + 1:]
        self.original = x
        self.x = x
        self.layout = RowLayout.for_logits(shape, strides, self.axis)
        if self.layout is None:
            self._to_c_order()

    @property
    def copied(self) -> bool:
        """Whether the kernels read a C-ordered copy instead of the caller's logits."""
        return self.x is not self.original

    @property
    def num_rows(self) -> int:
        return int(np.prod(self.index_shape, dtype=np.int64))

    def _to_c_order(self) -> None:
        self.x = self.be.contiguous(self.x)
        shape, strides = self.be.shape_strides(self.x)
        self.layout = RowLayout.for_logits(shape, strides, self.axis)

    def _fits(self, arr, per_element: bool) -> bool:
        shape, strides = self.be.shape_strides(arr)
        if per_element:
            return self.layout.elements_of(shape, strides, self.axis) is not None
        return self.layout.rows_of(shape, strides) is not None

    def adopt(self, row_inputs=(), element_inputs=()):
        """Make inputs fit the layout (copying to C order where needed); returns them in order.

        Also makes sure that C-ordered outputs allocated by `new_rows`/`new_elements` fit.
        """
        itemsize = np.dtype(self.dtype).itemsize
        c_rows = _c_strides(self.index_shape, itemsize)
        c_elems = _c_strides(self.shape, itemsize)
        outputs_fit = (
            self.layout.rows_of(self.index_shape, c_rows) is not None
            and self.layout.elements_of(self.shape, c_elems, self.axis) is not None
        )
        inputs_fit = all(a is None or self._fits(a, False) for a in row_inputs) and all(
            a is None or self._fits(a, True) for a in element_inputs
        )
        if not (outputs_fit and inputs_fit) and not self.copied:
            self._to_c_order()
        fixed_rows = [
            None if a is None else (a if self._fits(a, False) else self.be.contiguous(a))
            for a in row_inputs
        ]
        fixed_elements = [
            None if a is None else (a if self._fits(a, True) else self.be.contiguous(a))
            for a in element_inputs
        ]
        return fixed_rows, fixed_elements

    # ------------------------------------------------------------------ kernel views

    def x_view(self):
        return self.elements_view(self.x)

    def elements_view(self, arr):
        shape, strides = self.be.shape_strides(arr)
        return self.be.view(arr, *self.layout.elements_of(shape, strides, self.axis))

    def rows_view(self, arr):
        shape, strides = self.be.shape_strides(arr)
        return self.be.view(arr, *self.layout.rows_of(shape, strides))

    def fits_rows(self, arr) -> bool:
        return self._fits(arr, False)

    def fits_elements(self, arr) -> bool:
        return self._fits(arr, True)

    # ------------------------------------------------------------------ outputs

    def new_rows(self, dtype):
        return self.be.empty(self.index_shape, dtype, self.original)

    def new_elements(self, dtype):
        return self.be.empty(self.shape, dtype, self.original)

    def unravel(self, row: int) -> tuple:
        """Position in the target (index shape) of kernel row number `row`."""
        if not self.index_shape:
            return ()
        return tuple(int(i) for i in np.unravel_index(row, self.index_shape))
