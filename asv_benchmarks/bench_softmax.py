"""Softmax cross-entropy family: time, throughput and speed-up against PyTorch.

time_* time nbxent. track_*_gb_per_s count the bytes a call must read (logits and labels);
track_*_vs_torch_ratio is torch's time over nbxent's, both measured in the same call, so the
history stays meaningful on a noisy machine (higher is better for nbxent). The GPU class runs
CuPy inputs against torch on CUDA and also tracks the share of the device-to-device copy
bandwidth measured in the same call; it skips where there is no GPU. setup compiles.
"""

import numpy as np

import nbxent

from .common import best_seconds, cuda_peers, logits_and_labels, sized

SHAPES = sized([(65536, 1000), (4096, 32000), (1024, 128256), (1_000_000, 10), (4_000_000, 2)],
               [(64, 100), (1000, 3)])
DTYPES = ["float32", "float64", "float16"]
GPU_SHAPES = sized([(16384, 32000), (8192, 128256), (1_000_000, 32)], [(64, 100)])


def _bytes_read(x, y):
    return x.size * x.dtype.itemsize + y.size * y.dtype.itemsize


class CrossEntropyCPU:
    params = (SHAPES, DTYPES)
    param_names = ["shape", "dtype"]
    timeout = 600

    def setup(self, shape, dtype):
        self.x, self.y = logits_and_labels(*shape, dtype=np.dtype(dtype))
        nbxent.cross_entropy(self.x[:8], self.y[:8])  # compile outside the timing
        nbxent.cross_entropy_with_grad(self.x[:8], self.y[:8])

    def time_forward(self, shape, dtype):
        nbxent.cross_entropy(self.x, self.y)

    def time_forward_backward(self, shape, dtype):
        nbxent.cross_entropy_with_grad(self.x, self.y)

    def track_forward_elements_per_ns(self, shape, dtype):
        return self.x.size / best_seconds(lambda: nbxent.cross_entropy(self.x, self.y)) / 1e9

    def track_forward_gb_per_s(self, shape, dtype):
        seconds = best_seconds(lambda: nbxent.cross_entropy(self.x, self.y))
        return _bytes_read(self.x, self.y) / seconds / 1e9

    track_forward_elements_per_ns.unit = "elements/ns"
    track_forward_gb_per_s.unit = "GB/s"


class CrossEntropyVsTorchCPU:
    """float32 against torch.nn.functional.cross_entropy (mean), same threads, same call."""

    params = [SHAPES]
    param_names = ["shape"]
    timeout = 600

    def setup(self, shape):
        import torch

        self.torch = torch
        self.x, self.y = logits_and_labels(*shape)
        self.tx, self.ty = torch.from_numpy(self.x), torch.from_numpy(self.y)
        nbxent.cross_entropy_with_grad(self.x[:8], self.y[:8])
        nbxent.cross_entropy(self.x[:8], self.y[:8])

    def track_forward_vs_torch_ratio(self, shape):
        F = self.torch.nn.functional
        return best_seconds(lambda: F.cross_entropy(self.tx, self.ty)) / \
            best_seconds(lambda: nbxent.cross_entropy(self.x, self.y))

    def track_fused_vs_torch_ratio(self, shape):
        F = self.torch.nn.functional

        def torch_forward_backward():
            a = self.tx.detach().requires_grad_()
            F.cross_entropy(a, self.ty).backward()

        return best_seconds(torch_forward_backward) / \
            best_seconds(lambda: nbxent.cross_entropy_with_grad(self.x, self.y))

    track_forward_vs_torch_ratio.unit = "x"
    track_fused_vs_torch_ratio.unit = "x"


class CrossEntropyClassCountCPU:
    """float32 forward and fused call over the class counts where the CPU kernel changes
    (two-class; few-classes, compiled per C, forward up to 8 with AVX-512 and 10 without,
    fused at 8 only; small-C up to 64; per row beyond):
    a cliff between neighbouring class counts shows here (17 classes once ran at a sixth of
    16's speed on the per-row kernel). About 10M elements each."""

    params = [sized([4, 10, 16, 17, 64, 65, 128], [4, 17])]
    param_names = ["classes"]
    timeout = 600

    def setup(self, classes):
        self.x, self.y = logits_and_labels(sized(10_000_000 // classes, 500), classes)
        nbxent.cross_entropy(self.x[:8], self.y[:8])
        nbxent.cross_entropy_with_grad(self.x[:8], self.y[:8])

    def track_forward_elements_per_ns(self, classes):
        return self.x.size / best_seconds(lambda: nbxent.cross_entropy(self.x, self.y)) / 1e9

    track_forward_elements_per_ns.unit = "elements/ns"

    def track_fused_elements_per_ns(self, classes):
        return self.x.size / best_seconds(
            lambda: nbxent.cross_entropy_with_grad(self.x, self.y)) / 1e9

    track_fused_elements_per_ns.unit = "elements/ns"


class NormalisersCPU:
    params = (sized([(65536, 1000)], [(64, 100)]), ["log_softmax", "softmax", "logsumexp"])
    param_names = ["shape", "function"]

    def setup(self, shape, function):
        self.x, _ = logits_and_labels(*shape)
        self.fn = getattr(nbxent, function)
        self.fn(self.x[:8])

    def time_function(self, shape, function):
        self.fn(self.x)


class CrossEntropyGPU:
    params = (GPU_SHAPES, ["float32", "float16"])
    param_names = ["shape", "dtype"]
    timeout = 600

    def setup(self, shape, dtype):
        self.cupy, self.torch = cuda_peers()
        x, y = logits_and_labels(*shape, dtype=np.dtype(dtype))
        self.x, self.y = self.cupy.asarray(x), self.cupy.asarray(y)
        self.tx = self.torch.as_tensor(self.x, device="cuda")
        self.ty = self.torch.as_tensor(self.y, device="cuda")
        self.copy_dst = self.cupy.empty_like(self.x)
        for fn in (self._forward, self._fused, self._torch_fused, self._copy):  # compile, warm
            fn()
        self._sync()

    def _sync(self):
        self.cupy.cuda.Device().synchronize()
        self.torch.cuda.synchronize()

    def _seconds(self, fn):
        return best_seconds(fn, repeats=5, sync=self._sync)

    def _forward(self):
        nbxent.cross_entropy(self.x, self.y)

    def _fused(self):
        nbxent.cross_entropy_with_grad(self.x, self.y)

    def _torch_fused(self):
        a = self.tx.detach().requires_grad_()
        self.torch.nn.functional.cross_entropy(a, self.ty).backward()

    def _copy(self):
        self.copy_dst[...] = self.x

    def time_forward(self, shape, dtype):
        self._forward()
        self._sync()

    def time_forward_backward(self, shape, dtype):
        self._fused()
        self._sync()

    def track_forward_gb_per_s(self, shape, dtype):
        return _bytes_read(self.x, self.y) / self._seconds(self._forward) / 1e9

    def track_forward_fraction_of_copy_bandwidth(self, shape, dtype):
        copy_rate = self.x.nbytes / self._seconds(self._copy)   # bytes read by the copy
        return _bytes_read(self.x, self.y) / self._seconds(self._forward) / copy_rate

    def track_fused_vs_torch_ratio(self, shape, dtype):
        return self._seconds(self._torch_fused) / self._seconds(self._fused)

    track_forward_gb_per_s.unit = "GB/s"
    track_forward_fraction_of_copy_bandwidth.unit = "fraction"
    track_fused_vs_torch_ratio.unit = "x"
