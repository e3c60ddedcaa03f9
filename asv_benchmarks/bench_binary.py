"""Binary family: nbxent vs PyTorch on the issue's shape, (4_000_000, 8) float32.

time_* time nbxent; track_*_vs_torch_ratio report torch time / nbxent time (higher is better
for nbxent), both measured in the same call. The GPU class runs on CuPy inputs against torch
on CUDA and is skipped (setup raises NotImplementedError) where there is no GPU.
setup compiles outside the timing.
"""

import numpy as np

from nbxent import (binary_cross_entropy, binary_cross_entropy_with_logits,
                    binary_cross_entropy_with_logits_with_grad, sigmoid_focal_loss)

from .common import best_seconds, cuda_peers, sized

SHAPE = sized((4_000_000, 8), (100, 8))


def _data(xp):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32) * 2
    t = (rng.random(SHAPE) < 0.3).astype(np.float32)
    p = (1 / (1 + np.exp(-x))).astype(np.float32)
    return xp.asarray(x), xp.asarray(t), xp.asarray(p)


def _torch_peers(x, t, p):
    """torch functions on the same data (torch tensors), keyed like the time_* methods."""
    import torch
    import torch.nn.functional as F

    def bce_logits_grad():
        a = x.detach().requires_grad_()
        F.binary_cross_entropy_with_logits(a, t).backward()

    def sigmoid_focal():   # torchvision.ops.sigmoid_focal_loss, alpha 0.25, gamma 2, mean
        s = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = s * t + (1 - s) * (1 - t)
        return (ce * (1 - p_t) ** 2 * (0.25 * t + 0.75 * (1 - t))).mean()

    return {
        "bce": lambda: F.binary_cross_entropy(p, t),
        "bce_logits": lambda: F.binary_cross_entropy_with_logits(x, t),
        "bce_logits_grad": bce_logits_grad,
        "sigmoid_focal": sigmoid_focal,
    }


def _nbxent_calls(x, t, p):
    return {
        "bce": lambda: binary_cross_entropy(p, t),
        "bce_logits": lambda: binary_cross_entropy_with_logits(x, t),
        "bce_logits_grad": lambda: binary_cross_entropy_with_logits_with_grad(x, t),
        "sigmoid_focal": lambda: sigmoid_focal_loss(x, t),
    }


class _Binary:
    timeout = 600

    def time_bce(self):
        self.run(self.mine["bce"])

    def time_bce_logits(self):
        self.run(self.mine["bce_logits"])

    def time_bce_logits_grad(self):
        self.run(self.mine["bce_logits_grad"])

    def time_sigmoid_focal(self):
        self.run(self.mine["sigmoid_focal"])

    def _ratio(self, key):
        return self.seconds(self.peers[key]) / self.seconds(self.mine[key])

    def track_bce_vs_torch_ratio(self):
        return self._ratio("bce")

    def track_bce_logits_vs_torch_ratio(self):
        return self._ratio("bce_logits")

    def track_bce_logits_grad_vs_torch_ratio(self):
        return self._ratio("bce_logits_grad")

    def track_sigmoid_focal_vs_torch_ratio(self):
        return self._ratio("sigmoid_focal")

    track_bce_vs_torch_ratio.unit = "x"
    track_bce_logits_vs_torch_ratio.unit = "x"
    track_bce_logits_grad_vs_torch_ratio.unit = "x"
    track_sigmoid_focal_vs_torch_ratio.unit = "x"


class BinaryCPU(_Binary):
    def setup(self):
        import torch

        x, t, p = _data(np)
        self.mine = _nbxent_calls(x, t, p)
        self.peers = _torch_peers(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(p))
        for key, fn in _nbxent_calls(x[:8], t[:8], p[:8]).items():   # compile
            fn()

    @staticmethod
    def run(fn):
        fn()

    @staticmethod
    def seconds(fn):
        return best_seconds(fn, repeats=1)


class BinaryGPU(_Binary):
    def setup(self):
        cupy, torch = cuda_peers()   # NotImplementedError without a GPU: asv skips the class
        self.cupy = cupy
        x, t, p = _data(cupy)
        self.mine = _nbxent_calls(x, t, p)
        self.peers = _torch_peers(*(torch.as_tensor(a, device="cuda") for a in (x, t, p)))
        for fn in (*self.mine.values(), *self.peers.values()):   # compile and warm up
            fn()
        cupy.cuda.Device().synchronize()

    def run(self, fn):
        fn()
        self.cupy.cuda.Device().synchronize()

    def seconds(self, fn):
        import torch

        start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        torch.cuda.synchronize()
        start.record()
        fn()
        torch.cuda.synchronize()
        end.record()
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, end) / 1e3
