"""nbxent: Numba-compiled cross-entropy kernels for NumPy (CPU) and CUDA arrays (GPU).

NumPy arrays run on the CPU; CuPy arrays, Numba device arrays and anything with
`__cuda_array_interface__` run on the GPU; results come back in the input's own array type.
`nbxent.reference` holds the float64 NumPy oracle of every function.
"""

from nbxent.softmax import (
    cross_entropy,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)

__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
]
