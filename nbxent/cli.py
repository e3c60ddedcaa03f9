"""The `nbxent` command (also `python -m nbxent`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile

import numpy as np

from nbxent import bench as _bench
from nbxent._progress import Bar


def _shape(text: str) -> tuple[int, int]:
    try:
        n, c = (int(v.replace("_", "")) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is NxC, e.g. 4096x32000; got {text!r}") from None
    if n < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} must have N >= 1 and C >= 1")
    return n, c


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbxent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time cross_entropy against its peers on random data")
    bench.add_argument("--shapes", type=_shape, nargs="+", metavar="NxC",
                       help="shapes to time (default: the five of docs/benchmarks.md)")
    bench.add_argument("--mode", choices=["forward", "fused", "both"], default="both",
                       help="forward loss, fused forward+backward, or both (default)")
    bench.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    bench.add_argument("--threads", type=int, default=None, help="threads for every library")
    bench.add_argument("--quick", action="store_true", help="small shapes, 3 rounds")
    bench.add_argument("--no-reference", action="store_true", help="skip the float64 reference")
    bench.add_argument("--device", choices=["cpu", "gpu", "all"], default="cpu",
                       help="CPU (NumPy, default), GPU (CuPy against torch on CUDA), or both")
    bench.add_argument("--dtype", choices=_bench.DTYPES, nargs="+",
                       default=["float32"], help="logits dtypes to time on the CPU "
                                                 "(default float32)")
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="also draw throughput against C per library (needs matplotlib)")
    bench.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                       help="progress bar on stderr (auto: when stderr is a terminal)")

    about = sub.add_parser("info", help="versions, Numba threading layer, threads, GPU")
    about.add_argument("--json", action="store_true", help="print one JSON object")

    score = sub.add_parser("score", help="stream cross-entropy statistics of .npy logits and labels")
    score.add_argument("logits", nargs="?", help="LOGITS.npy: rows x classes (classes last)")
    score.add_argument("labels", nargs="?", help="LABELS.npy: integer class indices, one per row")
    score.add_argument("-o", "--out", metavar="LOSSES.npy", help="write the per-row losses here")
    score.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                       help="rows per chunk (default: about 64 MB of logits)")
    score.add_argument("--ignore-index", type=int, default=-100, metavar="I",
                       help="label of rows to skip (default -100)")
    score.add_argument("--label-smoothing", type=float, default=0.0, metavar="S")
    score.add_argument("--device", choices=["cpu", "gpu", "auto"], default="auto")
    score.add_argument("--resume", action="store_true",
                       help="continue an interrupted run that wrote --out")
    score.add_argument("--json", action="store_true",
                       help="print the summary as one JSON object on the last line of stdout")
    score.add_argument("--demo", action="store_true",
                       help="score a synthetic dataset of a few hundred MB in a temporary folder "
                            "and check its mean against the float64 reference")
    score.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                       help="progress bar on stderr (auto: when stderr is a terminal)")
    return parser


_DEMO_ROWS, _DEMO_CLASSES = 500_000, 128   # 256 MB of float32 logits


def _write_demo(folder: str, rows: int, classes: int):
    """Synthetic logits/labels .npy files (written chunk by chunk): Gaussian logits with
    the labelled class raised by 2, every 10th label ignored (-100)."""
    rng = np.random.default_rng(2026)
    labels = rng.integers(0, classes, rows)
    labels[::10] = -100
    x_path, y_path = os.path.join(folder, "logits.npy"), os.path.join(folder, "labels.npy")
    np.save(y_path, labels)
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, classes))
    step = 65536
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        block = rng.standard_normal((r1 - r0, classes), dtype=np.float32)
        lab = labels[r0:r1]
        hit = lab >= 0
        block[np.nonzero(hit)[0], lab[hit]] += np.float32(2.0)
        x[r0:r1] = block
    x.flush()
    del x
    return x_path, y_path


def _reference_mean(x_path: str, y_path: str, ignore_index: int, label_smoothing: float) -> float:
    """The float64 reference mean loss, computed chunk by chunk."""
    from nbxent import reference

    x = np.load(x_path, mmap_mode="r")
    y = np.load(y_path, mmap_mode="r")
    total, count = 0.0, 0
    for r0 in range(0, x.shape[0], 65536):
        xs, ys = np.asarray(x[r0:r0 + 65536]), np.asarray(y[r0:r0 + 65536])
        total += float(reference.cross_entropy(xs, ys, ignore_index=ignore_index, reduction="sum",
                                               label_smoothing=label_smoothing))
        count += int(np.count_nonzero(ys != ignore_index))
    return total / count if count else math.nan


def _summary(result, out) -> str:
    lines = [
        f"rows        {result.n_rows:,}",
        f"scored      {result.n_scored:,}",
        f"mean loss   {result.mean_loss:.6f}",
        f"perplexity  {result.perplexity:.4f}",
        f"accuracy    {result.accuracy:.4f}",
        f"rows/s      {result.rows_per_second:,.0f}",
        f"seconds     {result.seconds:.2f}",
    ]
    if out:
        lines.append(f"losses      {out}")
    return "\n".join(lines)


def _score_command(args) -> int:
    from nbxent.scoring import score

    if args.demo == bool(args.logits):
        raise _UsageError("give LOGITS.npy LABELS.npy, or --demo")
    if args.logits and not args.labels:
        raise _UsageError("give both LOGITS.npy and LABELS.npy")
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise _UsageError(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    options = dict(out=args.out, chunk_rows=args.chunk_rows, ignore_index=args.ignore_index,
                   label_smoothing=args.label_smoothing, device=args.device, progress=show,
                   resume=args.resume)
    check = None
    with tempfile.TemporaryDirectory(prefix="nbxent-demo-") if args.demo else contextlib.nullcontext() as folder:
        if args.demo:
            if not args.json:
                print(f"writing a synthetic dataset ({_DEMO_ROWS:,} x {_DEMO_CLASSES} float32, "
                      f"{_DEMO_ROWS * _DEMO_CLASSES * 4 // 10**6} MB) to {folder}", flush=True)
            x_path, y_path = _write_demo(folder, _DEMO_ROWS, _DEMO_CLASSES)
        else:
            x_path, y_path = args.logits, args.labels
        result = score(x_path, y_path, **options)
        if args.demo:
            ref = _reference_mean(x_path, y_path, args.ignore_index, args.label_smoothing)
            err = abs(result.mean_loss - ref) / abs(ref)
            check = {"reference_mean_loss": ref, "relative_error": err, "ok": err <= 1e-6}
    if args.json:
        summary = result.as_dict()
        if check is not None:
            summary["demo_check"] = check
        print(json.dumps(summary))
    else:
        print(_summary(result, args.out))
        if check is not None:
            verdict = "ok" if check["ok"] else "MISMATCH"
            print(f"reference   {check['reference_mean_loss']:.6f} (float64 NumPy), relative "
                  f"error {check['relative_error']:.1e}: {verdict}")
    return 0 if check is None or check["ok"] else 1


class _UsageError(Exception):
    pass



def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "score":
        try:
            return _score_command(args)
        except KeyboardInterrupt:
            print("\nnbxent score: interrupted" + ("; rerun with --resume to continue"
                                                    if args.out else ""), file=sys.stderr)
            return 130
        except _UsageError as e:
            print(f"nbxent score: {e}", file=sys.stderr)
            return 2
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            print(f"nbxent score: error: {e}", file=sys.stderr)
            return 1
    if args.command == "info":
        from nbxent import info

        facts = info()
        if args.json:
            print(json.dumps(facts))
        else:
            width = max(map(len, facts))
            for key, value in facts.items():
                shown = ", ".join(value) if isinstance(value, list) else value
                print(f"{key:<{width}}  {shown}")
        return 0
    if args.command == "bench":
        shapes = args.shapes or (_bench.QUICK_SHAPES if args.quick else _bench.DEFAULT_SHAPES)
        rounds = 3 if args.quick and args.rounds == 5 else args.rounds
        if rounds < 1:
            print("nbxent bench: --rounds must be at least 1", file=sys.stderr)
            return 2
        if args.plot:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                print("nbxent bench: --plot needs matplotlib (pip install matplotlib, or the "
                      "nbxent[bench] extra)", file=sys.stderr)
                return 2
        modes = ["forward", "fused"] if args.mode == "both" else [args.mode]
        show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
        # "auto" shows the bar once a run has taken 2 s; "on" from the start
        bar = Bar(1, unit=None, delay=2.0 if args.progress == "auto" else 0.0) if show else None
        runs = [(d, m) for d in args.dtype for m in modes] if args.device in ("cpu", "all") else []
        rows = []
        for i, (dtype, mode) in enumerate(runs):
            rows += _bench.run(shapes, mode=mode, rounds=rounds, threads=args.threads,
                               include_reference=not args.no_reference, dtype=dtype,
                               progress=_bench.Stage(bar, i, len(runs)) if bar else None)
            if mode == modes[-1]:
                print()
        if bar:
            bar.clear()
        if args.device in ("gpu", "all"):
            gpu_shapes = args.shapes or (_bench.GPU_QUICK_SHAPES if args.quick else None)
            rows += _bench.run_gpu(gpu_shapes, reps=max(rounds, 5) if args.quick else 4 * rounds)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        if args.plot:
            _bench.plot(rows, args.plot)
    return 0
