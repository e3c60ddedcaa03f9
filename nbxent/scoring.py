"""Streaming scorer: cross-entropy statistics of logits too large for memory.

`score(logits, labels)` walks the rows in chunks and returns a `ScoreResult` (mean loss,
perplexity, top-1 accuracy, ...); with `out=` it also writes the per-row losses to a .npy
file. Inputs are arrays (NumPy, memory-mapped, CuPy, Numba device arrays) or paths of .npy
files, which are read chunk by chunk, never whole: on the CPU through the file's memory map
(read ahead by the OS, finished chunks dropped from the process); for
the GPU with `os.preadv` into pinned buffers, one chunk ahead on a background thread.

Sums are exact functions of the data, not of the chunking: per-row losses are summed in
float64 over fixed *accounting blocks* of `block_rows` rows (a power of two that depends
only on the row width), and the block sums are added in row order. Chunks are whole
numbers of blocks, so any `chunk_rows` (and a resumed run with a different one) gives
bit-identical results.

Output file protocol (`out=PATH`): the losses go to `PATH.partial` and a progress record
`PATH.progress.json` is replaced atomically after each chunk's losses are on disk; at the end
the partial file is renamed to PATH and the record removed. An interrupted run (Ctrl-C, a
killed process) leaves both, and `resume=True` continues from the last recorded chunk. Any
other error removes them: nothing ever appears under PATH unless the run completed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import mmap
import os
import queue
import time

import numpy as np

from nbxent import _checks
from nbxent._progress import Bar
from nbxent._dispatch import _is_device_array
from nbxent.softmax import cross_entropy, scored_rows, top1_hits

_CHUNK_BYTES = 64 << 20          # default logits bytes per chunk
_BLOCK_BYTES = 4 << 20           # accounting blocks: at most this many logits bytes ...
_BLOCK_ROWS_MAX = 256            # ... and at most this many rows
_TILE_BYTES = 8 << 20            # CPU kernels run on tiles of a chunk (cache-sized)
_RECORD_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Statistics of a `score` run.

    n_rows: rows read; n_scored: rows whose label is not ignore_index; sum_loss: float64
    sum of the per-row losses; mean_loss: sum_loss over the sum of weight[y] of scored
    rows (n_scored without weight; PyTorch's "mean"), NaN when nothing was scored;
    perplexity: exp(mean_loss); accuracy: fraction of scored rows whose label is the
    top-1 class (numpy.argmax; NaN when nothing was scored); seconds: wall time of the
    scan (label check, reading, kernels, writing; kernel compilation excluded);
    rows_per_second: rows scanned by this call (after the resume point) / seconds.
    """

    n_rows: int
    n_scored: int
    sum_loss: float
    mean_loss: float
    perplexity: float
    accuracy: float
    seconds: float
    rows_per_second: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ============================================================================ inputs


class _Source:
    """Rows of an array or .npy file: `shape` (rows, C) or (rows,), `dtype`, `path`.

    C-ordered .npy files are read through `mapped` (CPU) or `read_into` (GPU); Fortran-ordered
    2-D files and arrays are sliced (`rows`)."""

    def __init__(self, obj, name: str, want_2d: bool):
        self.name = name
        self.path = None
        self.fd = None
        self.map = None
        self.offset = 0
        if isinstance(obj, (str, os.PathLike)):
            self.path = os.fspath(obj)
            self.array = _open_npy(self.path, name)
            self.original_shape = self.array.shape
            if self.array.flags.c_contiguous and self.array.size:
                self.offset = self.array.offset
                self.fd = os.open(self.path, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                self.map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        else:
            self.array = obj
            if not _is_device_array(obj) and not isinstance(obj, np.ndarray):
                self.array = np.asarray(obj)     # lists and other array-likes
            self.original_shape = tuple(int(n) for n in self.array.shape)
        self.on_device = _is_device_array(self.array)
        self.dtype = np.dtype(self.array.dtype)
        shape = self.original_shape
        if want_2d:
            if len(shape) == 0:
                raise ValueError(f"{name} must have at least 1 dimension (the classes), got a 0-d array")
            self.shape = (math.prod(shape[:-1]), int(shape[-1]))
        else:
            self.shape = (math.prod(shape),)
        if shape != self.shape:
            self.array = self._reshaped()

    def _reshaped(self):
        """The array as `self.shape` without copying it (a copy could be the whole file)."""
        if self.on_device:
            try:
                return self.array.reshape(self.shape)
            except Exception:
                raise ValueError(f"{self.name}: a GPU array of shape {self.original_shape} that "
                                 f"cannot be viewed as {self.shape}: make it C-contiguous") from None
        view = self.array.view()
        try:
            view.shape = self.shape
        except AttributeError:
            raise ValueError(
                f"{self.name} of shape {self.original_shape} cannot be viewed as {self.shape} "
                f"rows x classes without a copy: save or pass it C-ordered"
            ) from None
        return view

    @property
    def row_bytes(self) -> int:
        return int(self.shape[1] if len(self.shape) == 2 else 1) * self.dtype.itemsize

    def rows(self, r0: int, r1: int):
        """Rows [r0, r1) as an array view (a memory map or device view for files/arrays)."""
        return self.array[r0:r1]

    def mapped(self, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a C-ordered file as a read-only view of its memory map."""
        count = (r1 - r0) * self.shape[1]
        view = np.frombuffer(self.map, self.dtype, count, self.offset + r0 * self.row_bytes)
        return view.reshape(r1 - r0, self.shape[1])

    def advise(self, r0: int, r1: int, advice: int):
        """madvise the pages of rows [r0, r1) (MADV_DONTNEED: drop them from this process;
        they stay in the page cache)."""
        if self.map is None or r1 <= r0 or not hasattr(self.map, "madvise"):
            return
        start = self.offset + r0 * self.row_bytes
        end = self.offset + r1 * self.row_bytes
        aligned = start - start % mmap.PAGESIZE
        self.map.madvise(advice, aligned, end - aligned)

    def read_into(self, buf: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Copy rows [r0, r1) into the front of the C-contiguous host buffer `buf`."""
        n = r1 - r0
        dst = buf[:n]
        if self.fd is None:
            if self.on_device:
                raise AssertionError("device sources are sliced, never read into host buffers")
            np.copyto(dst, self.array[r0:r1])
            return dst
        view = memoryview(dst.reshape(-1).view(np.uint8))
        want = n * self.row_bytes
        pos = self.offset + r0 * self.row_bytes
        got = 0
        while got < want:
            k = os.preadv(self.fd, [view[got:want]], pos + got)
            if k == 0:
                raise ValueError(f"{self.path}: file ends before its header's {self.shape[0]} rows")
            got += k
        return dst

    def fingerprint(self) -> dict:
        fp = {"shape": list(self.original_shape), "dtype": self.dtype.str}
        if self.path is not None:
            st = os.stat(self.path)
            fp.update(path=os.path.abspath(self.path), size=st.st_size, mtime_ns=st.st_mtime_ns)
        return fp

    def close(self):
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:   # views still alive (an interrupted kernel's frame): the
                pass              # map closes when the last of them goes
            self.map = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _open_npy(path: str, name: str) -> np.ndarray:
    """The .npy file at `path` as a read-only memory map (for its header; data is read
    lazily; a plain empty array for an empty file), with errors that name the file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name} file {path!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{name} file {path!r} is a directory, not a .npy file") from None
    if magic != b"\x93NUMPY":
        hint = " (an .npz archive: extract the array first)" if magic.startswith(b"PK") else ""
        raise ValueError(f"{name} file {path!r} is not a .npy file{hint}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{name} file {path!r}: {e}") from None
    if not isinstance(arr, np.memmap):  # empty arrays come back as plain arrays
        return arr
    expected = arr.offset + arr.size * arr.dtype.itemsize
    if os.path.getsize(path) < expected:
        raise ValueError(f"{name} file {path!r} is truncated: its header promises {arr.shape}")
    return arr


# ============================================================================ accounting


def block_rows(row_bytes: int) -> int:
    """Rows per accounting block: the largest power of two <= _BLOCK_ROWS_MAX whose rows
    fit in _BLOCK_BYTES (at least 1). Depends only on the row width."""
    b = 1
    while b * 2 <= _BLOCK_ROWS_MAX and b * 2 * row_bytes <= _BLOCK_BYTES:
        b *= 2
    return b


def _add_in_order(total: float, values: np.ndarray) -> float:
    """((total + v0) + v1) + ...: a strictly sequential float64 sum (ufunc.accumulate)."""
    return float(np.add.accumulate(np.concatenate(([total], values)))[-1])


class _Totals:
    """Running float64 sums over accounting blocks, added in row order."""

    def __init__(self, block: int, has_weight: bool):
        self.block = block
        self.has_weight = has_weight
        self.rows = 0
        self.loss = 0.0
        self.weight = 0.0
        self.scored = 0
        self.hits = 0

    def _block_sums(self, v: np.ndarray) -> np.ndarray:
        full = (v.shape[0] // self.block) * self.block
        parts = [v[:full].reshape(-1, self.block).sum(axis=1, dtype=np.float64)]
        if full < v.shape[0]:
            parts.append(np.array([v[full:].sum(dtype=np.float64)]))
        return np.concatenate(parts)

    def add(self, losses: np.ndarray, labels: np.ndarray, hits: np.ndarray, ignore: int,
            weight: np.ndarray | None):
        """Account the next rows (starting at a block boundary; whole blocks except at the end)."""
        scored = labels != ignore
        self.loss = _add_in_order(self.loss, self._block_sums(losses))
        if weight is not None:
            wy = np.where(scored, weight[np.where(scored, labels, 0)].astype(np.float64), 0.0)
            self.weight = _add_in_order(self.weight, self._block_sums(wy))
        self.scored += int(np.count_nonzero(scored))
        self.hits += int(np.count_nonzero(hits))
        self.rows += int(labels.shape[0])

    def record(self) -> dict:
        return {"rows": self.rows, "loss": self.loss.hex(), "weight": self.weight.hex(),
                "scored": self.scored, "hits": self.hits}

    def restore(self, rec: dict):
        self.rows = int(rec["rows"])
        self.loss = float.fromhex(rec["loss"])
        self.weight = float.fromhex(rec["weight"])
        self.scored = int(rec["scored"])
        self.hits = int(rec["hits"])

    def result(self, seconds: float, rows_this_call: int) -> ScoreResult:
        denominator = self.weight if self.has_weight else float(self.scored)
        mean = self.loss / denominator if denominator != 0 else math.nan
        try:
            ppl = math.exp(mean)
        except OverflowError:
            ppl = math.inf
        acc = self.hits / self.scored if self.scored else math.nan
        rate = rows_this_call / seconds if seconds > 0 else math.inf
        return ScoreResult(self.rows, self.scored, self.loss, mean, ppl, acc, seconds, rate)


# ============================================================================ output files


class _Output:
    """The per-row losses file under the protocol of the module docstring."""

    def __init__(self, path: str, n_rows: int, dtype: np.dtype):
        self.path = os.fspath(path)
        self.partial = self.path + ".partial"
        self.record_path = self.path + ".progress.json"
        self.n_rows = n_rows
        self.dtype = np.dtype(dtype)
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"output folder {folder!r} does not exist")
        if os.path.isdir(self.path):
            raise ValueError(f"output {self.path!r} is a directory")
        self.fd = None
        self.data_offset = 0

    def create(self):
        with open(self.partial, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                      "shape": (self.n_rows,)}
            np.lib.format.write_array_header_2_0(f, header)
            self.data_offset = f.tell()
            f.truncate(self.data_offset + self.n_rows * self.dtype.itemsize)
        self.fd = os.open(self.partial, os.O_RDWR)

    def reopen(self) -> bool:
        """Open an existing partial file for resuming; False when it is missing or foreign."""
        try:
            with open(self.partial, "rb") as f:
                if np.lib.format.read_magic(f) != (2, 0):    # create() writes version 2.0
                    return False
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                self.data_offset = f.tell()
        except (OSError, ValueError):
            return False
        if shape != (self.n_rows,) or fortran or np.dtype(dtype) != self.dtype:
            return False
        self.fd = os.open(self.partial, os.O_RDWR)
        return True

    def write(self, r0: int, losses: np.ndarray):
        data = memoryview(np.ascontiguousarray(losses, self.dtype).view(np.uint8))
        pos = self.data_offset + r0 * self.dtype.itemsize
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], pos + done)

    def save_record(self, record: dict):
        os.fdatasync(self.fd)
        tmp = self.record_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.record_path)

    def load_record(self):
        try:
            with open(self.record_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot resume: progress record {self.record_path!r} is unreadable ({e})") from None

    def finish(self):
        os.fdatasync(self.fd)
        self.close()
        os.replace(self.partial, self.path)
        _remove(self.record_path)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self):
        self.close()
        _remove(self.partial)
        _remove(self.record_path)
        _remove(self.record_path + ".tmp")


def _remove(path: str):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


# ============================================================================ scoring


def score(logits, labels, *, out=None, chunk_rows=None, ignore_index=-100, device="auto",
          progress=False, resume=False, weight=None, label_smoothing=0.0, z_loss=0.0):
    """Score `logits` (rows x classes, classes on the last axis) against integer `labels`
    in chunks; returns a `ScoreResult`.

    logits, labels: arrays (NumPy, np.memmap, CuPy, Numba device arrays) or paths of .npy
    files (opened memory-mapped for the header and read chunk by chunk, never whole).
    Leading axes are flattened: (B, T, V) logits take (B, T) labels.
    out: path of a .npy file receiving the per-row losses (0 for ignored rows) in the
    dtype `cross_entropy(reduction="none")` gives; it appears only once complete.
    chunk_rows: rows per chunk (default: about 64 MB of logits), rounded up to a whole
    number of accounting blocks (module docstring); results do not depend on it.
    device: "cpu", "gpu" or "auto" (the GPU for CUDA arrays, or for host data when a real
    GPU and numba-cuda are there; the CPU otherwise).
    progress: True for a progress bar on stderr, or a callable `f(rows_done, n_rows)`
    called after each chunk (after its losses and progress record are saved).
    resume: continue the interrupted run recorded beside `out` (needs `out`); without a
    record it starts afresh. The result is identical to an uninterrupted run.
    weight, label_smoothing, z_loss, ignore_index: as in `cross_entropy`.

    Raises before any kernel runs: FileNotFoundError for a missing input file or output
    folder; ValueError for a file that is not .npy, shapes that disagree, a label outside
    [0, C) (naming its row), bad options; TypeError for non-float logits, non-integer labels.
    """
    ignore_index = _checks.check_ignore_index(ignore_index)
    _checks.check_real("label_smoothing", label_smoothing, 0.0, 1.0)
    _checks.check_real("z_loss", z_loss, 0.0, float(np.finfo(np.float64).max))
    if device not in ("cpu", "gpu", "auto"):
        raise ValueError(f"device must be 'cpu', 'gpu' or 'auto', got {device!r}")
    if resume and out is None:
        raise ValueError("resume=True continues a run that writes out=...: pass out")
    if not (isinstance(progress, bool) or callable(progress)):
        raise ValueError(f"progress must be True, False or a callable f(rows_done, n_rows), got {progress!r}")
    if chunk_rows is not None:
        if isinstance(chunk_rows, (bool, np.bool_)) or not isinstance(chunk_rows, (int, np.integer)) \
                or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")

    x = _Source(logits, "logits", want_2d=True)
    try:
        y = _Source(labels, "labels", want_2d=False)
    except BaseException:
        x.close()
        raise
    try:
        _check_out_is_not_an_input(out, (x, y))
        return _score(x, y, out, chunk_rows, ignore_index, device, progress, resume, weight,
                      float(label_smoothing), float(z_loss))
    finally:
        x.close()
        y.close()


def _check_out_is_not_an_input(out, sources):
    """Renaming the finished output over an input file would destroy the data being read."""
    if out is None:
        return
    for src in sources:
        for candidate in (os.fspath(out), os.fspath(out) + ".partial"):
            if src.path is not None and os.path.exists(candidate) \
                    and os.path.samefile(candidate, src.path):
                raise ValueError(f"out {os.fspath(out)!r} would overwrite the {src.name} file "
                                 f"{src.path!r}: choose another output path")


def _check_sources(x: _Source, y: _Source):
    if x.dtype.kind != "f" or x.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"logits must be float16, float32 or float64, got dtype {x.dtype}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    if x.shape[0] != y.shape[0] or (len(x.original_shape) > 1
                                    and tuple(x.original_shape[:-1]) != tuple(y.original_shape)):
        raise ValueError(
            f"logits of shape {tuple(x.original_shape)} need labels of shape "
            f"{tuple(x.original_shape[:-1])}, got labels of shape {tuple(y.original_shape)}"
        )


def _weight_array(weight, C: int, dtype):
    """The class weights in the kernels' compute dtype (None without weight)."""
    if weight is None:
        return None
    w = np.asarray(weight)
    _checks.check_weight_shape(w.shape, C, w.dtype)
    return w.astype(_checks.compute_dtype(dtype))


def _scan_labels(y: _Source, C: int, ignore: int, chunk: int):
    """Raise for the first label outside [0, C) that is not `ignore` (before any kernel)."""
    for r0 in range(0, y.shape[0], chunk):
        lab = _host(y.rows(r0, min(y.shape[0], r0 + chunk)))
        bad = (lab != ignore) & ((lab < 0) | (lab >= C))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"labels row {r0 + i} has class index {int(lab[i])}, outside [0, {C}) and not "
                f"ignore_index ({ignore})"
            )


def _host(a, stream=0) -> np.ndarray:
    """`a` on the host: NumPy as is, CuPy via get(), Numba device arrays copied on `stream`."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):
        return a.get()
    return a.copy_to_host(stream=stream)


def _use_gpu(device: str, x: _Source, y: _Source) -> bool:
    if x.on_device or y.on_device:
        if device == "cpu":
            raise ValueError("device='cpu' but the logits or labels are GPU arrays")
        return True
    if device == "cpu":
        return False
    from nbxent.gpu import _arrays

    if device == "gpu":
        if not _arrays.available():
            raise RuntimeError("device='gpu' but no GPU is usable (numba-cuda and a CUDA GPU are needed)")
        return True
    return _arrays.available() and not _arrays.simulator_enabled()


def _gpu_tile(xd, yd, options: dict):
    """(losses, hits) of device rows: what _run_gpu runs per chunk, and _warm_up once.
    Labels are checked up front, so check=False keeps the host out of the compute stream."""
    losses = cross_entropy(xd, yd, reduction="none", check=False, **options)
    hits = top1_hits(xd, yd, ignore_index=options["ignore_index"], check=False)
    return losses, hits


def _warm_up(gpu: bool, x: _Source, y: _Source, options: dict):
    """Compile the kernels for these dtypes and class count on one row, by the calls the run
    makes (scored_rows on the CPU, _gpu_tile on the GPU), so that the run's timing (and the
    first chunk) excludes compilation."""
    C = x.shape[1]
    xs = np.zeros((1, C), x.dtype)
    ys = np.zeros(1, y.dtype if y.dtype in _checks.KERNEL_LABEL_DTYPES else np.int64)
    ys[0] = options["ignore_index"] if C == 0 else 0
    w = options["weight"]
    if not gpu:   # what _run_cpu runs
        scored_rows(xs, ys, np.empty(1, _checks.compute_dtype(x.dtype)), np.empty(1, np.uint8),
                    **options)
        return
    from numba import cuda

    xs, ys = cuda.to_device(xs), cuda.to_device(ys.astype(np.int64))
    _gpu_tile(xs, ys, dict(options, weight=None if w is None else cuda.to_device(w)))


def _score(x, y, out, chunk_rows, ignore, device, progress, resume, weight, eps, z):
    _check_sources(x, y)
    n, C = x.shape
    w = _weight_array(weight, C, x.dtype)
    block = block_rows(x.row_bytes)
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // max(1, x.row_bytes))
    chunk = max(block, -(-int(chunk_rows) // block) * block)
    chunk = min(chunk, max(block, -(-n // block) * block))
    gpu = _use_gpu(device, x, y)
    options = dict(weight=w, ignore_index=ignore, label_smoothing=eps, z_loss=z)
    _warm_up(gpu, x, y, options)
    t0 = time.perf_counter()
    _scan_labels(y, C, ignore, max(chunk, 1 << 20))
    totals = _Totals(block, w is not None)
    loss_dtype = _checks.compute_dtype(x.dtype)

    output = None
    start = 0
    if out is not None:
        output = _Output(out, n, loss_dtype)
        identity = {"version": _RECORD_VERSION, "logits": x.fingerprint(), "labels": y.fingerprint(),
                    "block_rows": block, "ignore_index": ignore, "label_smoothing": eps.hex(),
                    "z_loss": z.hex(), "weight": None if w is None else
                    hashlib.sha256(w.tobytes()).hexdigest()}
        record = output.load_record() if resume else None
        if record is not None:
            if record.get("identity") != identity:
                raise ValueError(
                    f"cannot resume: {output.record_path!r} was written for other inputs or "
                    f"options; rerun without resume to start afresh"
                )
            if not output.reopen():
                raise ValueError(f"cannot resume: {output.partial!r} is missing or does not match "
                                 f"its progress record; rerun without resume")
            totals.restore(record["totals"])
            start = totals.rows
        else:
            output.create()

    report = Bar(n, start) if progress is True else (progress if callable(progress) else None)

    def chunk_done(r0, losses, labels_host, hits):
        totals.add(losses, labels_host, hits, ignore, w)
        if output is not None:
            output.write(r0, losses)
            output.save_record({"identity": identity, "totals": totals.record()})
        if report is not None:
            report(totals.rows, n)

    try:
        run = _run_gpu if gpu else _run_cpu
        run(x, y, start, n, chunk, block, options, chunk_done)
        if output is not None:
            output.finish()
    except KeyboardInterrupt:
        if output is not None:
            output.close()   # keep partial + record: resumable
        raise
    except BaseException:
        if output is not None:
            output.discard()
        raise
    if report is not None and start == n:
        report(n, n)
    return totals.result(time.perf_counter() - t0, n - start)


def _chunks(start: int, n: int, chunk: int):
    return [(r0, min(n, r0 + chunk)) for r0 in range(start, n, chunk)]


class _Prefetcher:
    """Reads chunks on a background thread, one ahead, into a small pool of host buffers.

    `get(i)` returns (rows, buffer view) of chunk i; `release(buffer)` gives a buffer back."""

    def __init__(self, source: _Source, spans, make_buffer, pool: int):
        self.source = source
        self.spans = spans
        self.free = queue.Queue()
        for _ in range(min(pool, max(1, len(spans)))):
            self.free.put(make_buffer())
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nbxent-read")
        self.futures = {}
        self._submit(0)

    def _submit(self, i):
        if i < len(self.spans) and i not in self.futures:
            self.futures[i] = self.pool.submit(self._read, i)

    def _read(self, i):
        buf = self.free.get()
        r0, r1 = self.spans[i]
        return buf, self.source.read_into(buf, r0, r1)

    def get(self, i):
        buf, view = self.futures.pop(i).result()
        self._submit(i + 1)
        return buf, view

    def release(self, buf):
        self.free.put(buf)

    def close(self):
        for f in self.futures.values():
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _run_cpu(x, y, start, n, chunk, block, options, chunk_done):
    """Chunks on the CPU. A C-ordered file is read through its memory map: the kernels read
    the page cache directly (no copy; the kernel reads ahead, the file being advised
    sequential) and a finished chunk's pages are dropped from the process. (Asking for the
    next chunk with MADV_WILLNEED measured ~20% slower here.)"""
    spans = _chunks(start, n, chunk)
    tile = max(block, (_TILE_BYTES // max(1, x.row_bytes)) // block * block)
    for i, (r0, r1) in enumerate(spans):
        xs = x.mapped(r0, r1) if x.map is not None else x.rows(r0, r1)
        ys = np.ascontiguousarray(_host(y.rows(r0, r1)))
        losses = np.empty(r1 - r0, _checks.compute_dtype(x.dtype))
        hits = np.empty(r1 - r0, np.uint8)
        for t0 in range(0, r1 - r0, tile):
            t1 = min(r1 - r0, t0 + tile)
            # labels were all checked before the first chunk
            scored_rows(xs[t0:t1], ys[t0:t1], losses[t0:t1], hits[t0:t1], **options)
        del xs
        x.advise(r0, r1, mmap.MADV_DONTNEED)
        chunk_done(r0, losses, ys, hits)


def _run_gpu(x, y, start, n, chunk, block, options, chunk_done):
    """Chunks on the GPU: host chunks are read ahead into pinned buffers, copied on a copy
    stream while the previous chunk computes on a compute stream (double-buffered device
    buffers); per-row losses and hits come back for the accounting."""
    from numba import cuda

    from nbxent.gpu import _arrays

    spans = _chunks(start, n, chunk)
    if not spans:
        return
    C = x.shape[1]
    w = options["weight"]
    dev_options = dict(options, weight=None if w is None else cuda.to_device(w))
    compute, copy = cuda.stream(), cuda.stream()

    def compute_chunk(i, xd, yd):
        r0, r1 = spans[i]
        with _arrays.numba_stream(compute):
            losses, hits = _gpu_tile(xd, yd, dev_options)
        losses_h, hits_h = _host(losses, compute), _host(hits, compute)
        compute.synchronize()
        labels_h = np.ascontiguousarray(_host(y.rows(r0, r1)))
        chunk_done(r0, losses_h, labels_h, hits_h)

    if x.on_device:
        for i, (r0, r1) in enumerate(spans):
            ys = y.rows(r0, r1)
            yd = ys if _is_device_array(ys) else cuda.to_device(np.ascontiguousarray(ys), stream=compute)
            compute_chunk(i, x.rows(r0, r1), yd)
        return

    reader = _Prefetcher(x, spans, lambda: cuda.pinned_array((chunk, C), x.dtype), pool=3)
    dev_x = [cuda.device_array((chunk, C), x.dtype) for _ in range(2)]
    dev_y = [cuda.device_array((chunk,), np.int64) for _ in range(2)]
    copied = [cuda.event() for _ in range(2)]

    def compute_copied(i, buf):
        s = i % 2
        m = spans[i][1] - spans[i][0]
        copied[s].wait(compute)
        compute_chunk(i, dev_x[s][:m], dev_y[s][:m])
        reader.release(buf)   # its copy finished before the compute it fed

    try:
        pending = None   # (chunk, host buffer): copied, not yet computed
        for i, (r0, r1) in enumerate(spans):
            buf, xs = reader.get(i)
            s = i % 2    # dev buffers of chunk i - 2, whose compute has finished
            m = r1 - r0
            dev_x[s][:m].copy_to_device(xs, stream=copy)
            dev_y[s][:m].copy_to_device(np.ascontiguousarray(_host(y.rows(r0, r1)), np.int64),
                                        stream=copy)
            copied[s].record(copy)
            if pending is not None:
                compute_copied(*pending)   # overlaps the copy just queued
            pending = (i, buf)
        compute_copied(*pending)
    finally:
        reader.close()
