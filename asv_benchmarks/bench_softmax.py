"""Softmax cross-entropy family on the CPU: time and throughput per shape and dtype."""

import numpy as np

import nbxent

from .common import logits_and_labels

SHAPES = [(65536, 1000), (4096, 32000), (1_000_000, 10)]
DTYPES = ["float32", "float64", "float16"]


class CrossEntropyCPU:
    params = (SHAPES, DTYPES)
    param_names = ["shape", "dtype"]
    timeout = 300

    def setup(self, shape, dtype):
        self.x, self.y = logits_and_labels(*shape, dtype=np.dtype(dtype))
        nbxent.cross_entropy(self.x[:8], self.y[:8])  # compile outside the timing
        nbxent.cross_entropy_with_grad(self.x[:8], self.y[:8])

    def time_forward(self, shape, dtype):
        nbxent.cross_entropy(self.x, self.y)

    def time_forward_backward(self, shape, dtype):
        nbxent.cross_entropy_with_grad(self.x, self.y)

    def track_forward_elements_per_ns(self, shape, dtype):
        import time

        t0 = time.perf_counter()
        nbxent.cross_entropy(self.x, self.y)
        return self.x.size / (time.perf_counter() - t0) / 1e9

    track_forward_elements_per_ns.unit = "elements/ns"


class NormalisersCPU:
    params = ([(65536, 1000)], ["log_softmax", "softmax", "logsumexp"])
    param_names = ["shape", "function"]

    def setup(self, shape, function):
        self.x, _ = logits_and_labels(*shape)
        self.fn = getattr(nbxent, function)
        self.fn(self.x[:8])

    def time_function(self, shape, function):
        self.fn(self.x)
