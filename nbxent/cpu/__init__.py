"""Numba CPU kernels, one module per kernel family (see docs/kernels.md), and `_math`, the
vectorisable float math they share."""
