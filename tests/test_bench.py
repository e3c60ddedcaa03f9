"""`nbxent bench`: the table, the peers' agreement check, --json, --plot, the progress bar."""

from __future__ import annotations

import io
import json
import sys

import pytest

from nbxent import bench
from nbxent._progress import Bar
from nbxent.cli import main

SHAPES = ["300x10", "40x700"]


def test_cpu_bench_rows_json_plot_and_progress(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    js, png = tmp_path / "rows.json", tmp_path / "plot.png"
    rc = main(["bench", "--shapes", *SHAPES, "--rounds", "2", "--mode", "both",
               "--dtype", "float32", "float64", "--json", str(js), "--plot", str(png),
               "--progress", "on"])
    out, err = capsys.readouterr()
    assert rc == 0
    rows = json.loads(js.read_text())
    assert {(r["mode"], r["dtype"], tuple(r["shape"])) for r in rows} == {
        (m, d, s) for m in ("forward", "fused") for d in ("float32", "float64")
        for s in ((300, 10), (40, 700))}
    libraries = {r["library"].split()[0] for r in rows}
    assert {"nbxent", "torch", "reference", "read"} <= libraries
    if "jax" in sys.modules or _has("jax"):
        assert "jax" in libraries
    for r in rows:
        assert r["seconds"] > 0 and r["elements_per_ns"] > 0
        if r["library"] == "nbxent":
            assert r["time_over_nbxent"] == 1.0
    assert "(300, 10)" in out and "torch" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "%" in err and "ETA" in err and "round" in err   # the bar was drawn on stderr


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_peers_that_disagree_stop_the_run(monkeypatch):
    monkeypatch.setattr(bench, "_jax_peer", lambda mode, x, y: bench.Peer("wrong", lambda: 0.0,
                                                                          x.nbytes))
    with pytest.raises(RuntimeError, match=r"wrong gives 0.0 on \(300, 10\) but nbxent gives"):
        bench.run([(300, 10)], rounds=1, include_reference=False, printer=lambda *a: None)


def test_plot_without_matplotlib_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    assert main(["bench", "--shapes", "10x10", "--plot", "x.png"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_bar_waits_for_its_delay_and_clears_its_line():
    stream = io.StringIO()
    quiet = Bar(1, unit=None, stream=stream, delay=60.0)
    quiet(0.5, 1.0, "half")
    assert stream.getvalue() == ""
    bar = Bar(1, unit=None, stream=stream)
    bar(0.5, 1.0, "half way")
    drawn = stream.getvalue()
    assert drawn.startswith("\r[###############...............]  50.0% half way  ETA")
    bar.clear()
    assert stream.getvalue() == drawn + "\r" + " " * (len(drawn) - 1) + "\r"
    rows = Bar(10, stream=io.StringIO())
    rows(10, 10)
    assert "10/10 rows" in rows.stream.getvalue() and rows.stream.getvalue().endswith("\n")


def test_gpu_rows_have_throughput_for_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"shape": [8, c], "dtype": "float32", "mode": "forward", "library": lib,
             "device": "H100", "seconds": 1e-3, "elements_per_ns": v}
            for c, v in ((1000, 1.0), (32000, 2.0))
            for lib in ("nbxent mean", bench.COPY_BANDWIDTH)]
    bench.plot(rows, str(tmp_path / "gpu.svg"))
    assert "<svg" in (tmp_path / "gpu.svg").read_text()[:500]


def test_a_peer_settles_in_proportion_to_its_call(monkeypatch):
    """JAX's peer waits after each call, untimed, 50 ms plus 4x the call (at most 2 s), so
    that the machine is quiet for the library timed next."""
    slept = []
    monkeypatch.setattr(bench.time, "sleep", slept.append)
    clock = iter([10.0, 10.3, 20.0, 21.0, 30.0, 30.5])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    peer = bench.Peer("p", lambda: 0.0, 1, **bench._JAX_SETTLE)
    assert bench._time(peer) == pytest.approx(0.3)
    assert bench._time(peer) == pytest.approx(1.0)
    assert slept == [pytest.approx(0.05 + 4 * 0.3), bench._MAX_SETTLE]
    slept.clear()
    assert bench._time(bench.Peer("q", lambda: 0.0, 1)) == pytest.approx(0.5)
    assert slept == []
