"""float64 NumPy implementations of every public nbxent function: the oracle the tests
compare every backend with, usable on its own. One module per family, as in nbxent/."""

from nbxent.reference.binary import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
    sigmoid_focal_loss,
)
from nbxent.reference.divergences import entropy, kl_divergence, log_loss, softmax_focal_loss
from nbxent.reference.softmax import (
    cross_entropy,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)
