"""Divergence family on the CPU: nbxent vs its natural peer (torch / SciPy / scikit-learn).

time_* time nbxent; track_*_ratio report peer time / nbxent time (higher is better for
nbxent), each measured once per call on a large shape. setup compiles outside the timing.
"""

import numpy as np

from nbxent.divergences import entropy, kl_divergence, log_loss, softmax_focal_loss

from .common import best_seconds, logits_and_labels, sized

N, C = sized((65536, 1000), (64, 20))


def _probs(n, c, seed=1):
    p = np.random.default_rng(seed).random((n, c), dtype=np.float32)
    return p / p.sum(1, keepdims=True)


def _seconds(fn):
    return best_seconds(fn, repeats=1)


class DivergencesCPU:
    timeout = 300

    def setup(self):
        self.x, self.y = logits_and_labels(N, C)
        self.p = _probs(N, C)
        self.q = _probs(N, C, seed=2)
        self.yb = self.y % 10
        self.pb = _probs(N, 10)
        softmax_focal_loss(self.x[:8], self.y[:8] % 8)   # compile outside the timing
        entropy(self.p[:8])
        kl_divergence(self.p[:8], self.x[:8], from_logits=True, reduction="mean")
        kl_divergence(self.p[:8], self.q[:8])
        log_loss(np.arange(8) % 2, self.pb[:8, :2] / self.pb[:8, :2].sum(1, keepdims=True))

    def time_focal(self):
        softmax_focal_loss(self.x, self.y)

    def time_entropy(self):
        entropy(self.p)

    def time_kl_logits(self):
        kl_divergence(self.p, self.x, from_logits=True, reduction="mean")

    def time_kl_probs(self):
        kl_divergence(self.p, self.q)

    def time_log_loss(self):
        log_loss(self.yb, self.pb)

    def track_focal_vs_torch_ratio(self):
        import torch

        x, y = torch.from_numpy(self.x), torch.from_numpy(self.y)

        def peer():   # torchvision-style multi-class focal loss
            logp = torch.log_softmax(x, -1).gather(1, y[:, None])[:, 0]
            return (-(1 - logp.exp()) ** 2 * logp).mean()

        return _seconds(peer) / _seconds(lambda: softmax_focal_loss(self.x, self.y))

    def track_entropy_vs_scipy_ratio(self):
        from scipy.special import entr

        return _seconds(lambda: entr(self.p).sum(-1)) / _seconds(lambda: entropy(self.p))

    def track_kl_logits_vs_torch_ratio(self):
        import torch

        x, p = torch.from_numpy(self.x), torch.from_numpy(self.p)
        peer = _seconds(lambda: torch.nn.functional.kl_div(torch.log_softmax(x, -1), p,
                                                           reduction="batchmean"))
        return peer / _seconds(lambda: kl_divergence(self.p, self.x, from_logits=True,
                                                     reduction="mean"))

    def track_kl_probs_vs_scipy_ratio(self):
        from scipy.special import rel_entr

        return _seconds(lambda: rel_entr(self.p, self.q).sum(-1)) / \
            _seconds(lambda: kl_divergence(self.p, self.q))

    def track_log_loss_vs_sklearn_ratio(self):
        import warnings

        from sklearn.metrics import log_loss as sk

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _seconds(lambda: sk(self.yb, self.pb)) / \
                _seconds(lambda: log_loss(self.yb, self.pb))

    track_focal_vs_torch_ratio.unit = "x"
    track_entropy_vs_scipy_ratio.unit = "x"
    track_kl_logits_vs_torch_ratio.unit = "x"
    track_kl_probs_vs_scipy_ratio.unit = "x"
    track_log_loss_vs_sklearn_ratio.unit = "x"
