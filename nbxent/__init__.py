"""nbxent: Numba-compiled cross-entropy kernels for NumPy (CPU) and CUDA arrays (GPU).

NumPy arrays run on the CPU; CuPy arrays, Numba device arrays and anything with
`__cuda_array_interface__` run on the GPU; results come back in the input's own array type.
`nbxent.reference` holds the float64 NumPy oracle of every function.
"""

from nbxent._info import info
from nbxent.binary import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
    sigmoid_focal_loss,
)
from nbxent.scoring import ScoreResult, score
from nbxent.divergences import entropy, kl_divergence, log_loss, softmax_focal_loss
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
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "sigmoid_focal_loss",
    "cross_entropy",
    "cross_entropy_with_grad",
    "entropy",
    "kl_divergence",
    "log_loss",
    "softmax_focal_loss",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
    "score",
    "ScoreResult",
    "info",
]
