"""float64 NumPy implementations of every public nbxent function: the oracle the tests
compare every backend with, usable on its own. One module per family, as in nbxent/."""

from nbxent.reference.softmax import (
    cross_entropy,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)
