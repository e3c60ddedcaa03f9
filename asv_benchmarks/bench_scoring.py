"""`nbxent.score` over a .npy file: rows/s, and as a fraction of in-memory `cross_entropy`.

The file (256 MB of float32 logits) is written in setup; after the first call it sits in the
page cache, so this tracks the streaming machinery (chunking, labels scan, top-1, output),
not the disk (benchmarks/score_throughput.py measures files larger than memory).
"""

import os
import shutil
import tempfile

import numpy as np

import nbxent

from .common import best_seconds, logits_and_labels, sized


class ScoreCPU:
    params = [sized([(262144, 256)], [(2000, 16)])]
    param_names = ["shape"]
    timeout = 600

    def setup(self, shape):
        self.folder = tempfile.mkdtemp(prefix="nbxent-asv-")
        self.x, self.y = logits_and_labels(*shape)
        self.x_path = os.path.join(self.folder, "logits.npy")
        self.y_path = os.path.join(self.folder, "labels.npy")
        np.save(self.x_path, self.x)
        np.save(self.y_path, self.y)
        nbxent.score(self.x[:8], self.y[:8])      # compile outside the timing
        nbxent.cross_entropy(self.x[:8], self.y[:8])

    def teardown(self, shape):
        shutil.rmtree(self.folder, ignore_errors=True)

    def time_score_file(self, shape):
        nbxent.score(self.x_path, self.y_path)

    def track_score_rows_per_s(self, shape):
        return shape[0] / best_seconds(lambda: nbxent.score(self.x_path, self.y_path))

    def track_score_fraction_of_in_memory(self, shape):
        streamed = best_seconds(lambda: nbxent.score(self.x_path, self.y_path))
        in_memory = best_seconds(lambda: nbxent.cross_entropy(self.x, self.y, reduction="none"))
        return in_memory / streamed

    track_score_rows_per_s.unit = "rows/s"
    track_score_fraction_of_in_memory.unit = "fraction"
