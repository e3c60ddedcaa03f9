"""The `nbxent` command (also `python -m nbxent`)."""

from __future__ import annotations

import argparse
import json
import sys


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
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from nbxent import bench

        shapes = args.shapes or (bench.QUICK_SHAPES if args.quick else bench.DEFAULT_SHAPES)
        rounds = 3 if args.quick and args.rounds == 5 else args.rounds
        if rounds < 1:
            print("nbxent bench: --rounds must be at least 1", file=sys.stderr)
            return 2
        modes = ["forward", "fused"] if args.mode == "both" else [args.mode]
        rows = []
        if args.device in ("cpu", "all"):
            for mode in modes:
                rows += bench.run(shapes, mode=mode, rounds=rounds, threads=args.threads,
                                  include_reference=not args.no_reference)
                print()
        if args.device in ("gpu", "all"):
            gpu_shapes = args.shapes or (bench.GPU_QUICK_SHAPES if args.quick else None)
            rows += bench.run_gpu(gpu_shapes, reps=max(rounds, 5) if args.quick else 4 * rounds)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    return 0
