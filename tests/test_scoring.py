"""nbxent.score and `nbxent score`: streaming statistics, output files, resume, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nbxent
from nbxent import reference
from nbxent.scoring import block_rows, score
from tests.backends import BACKENDS, backend_params, small, to_backend, to_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n=3000, c=37, dtype=np.float32, seed=0, ignore_every=9):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    if ignore_every:
        y[::ignore_every] = -100
    return x, y


def _save(tmp_path, x, y, xname="x.npy", yname="y.npy"):
    xp, yp = tmp_path / xname, tmp_path / yname
    np.save(xp, x)
    np.save(yp, y)
    return str(xp), str(yp)


def _expected(x, y, ignore_index=-100, **options):
    """Reference statistics in float64."""
    loss = reference.cross_entropy(x, y, reduction="none", ignore_index=ignore_index, **options)
    scored = y != ignore_index
    w = options.get("weight")
    denominator = float(np.sum(np.asarray(w, np.float64)[y[scored]])) if w is not None \
        else float(scored.sum())
    hits = (np.argmax(x.astype(np.float64), axis=-1) == y) & scored
    return loss, float(loss.sum()) / denominator, hits.sum() / scored.sum()


# ----------------------------------------------------------------------------- results


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_statistics_match_reference_from_files(tmp_path, dtype):
    x, y = _data(dtype=dtype)
    xp, yp = _save(tmp_path, x, y)
    out = tmp_path / "losses.npy"
    r = score(xp, yp, out=str(out), chunk_rows=500)
    loss, mean, acc = _expected(x, y)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert r.n_rows == 3000 and r.n_scored == int((y != -100).sum())
    assert r.mean_loss == pytest.approx(mean, rel=tol)
    assert r.sum_loss == pytest.approx(float(loss.sum()), rel=tol)
    assert r.perplexity == pytest.approx(math.exp(mean), rel=tol * 10)
    assert r.accuracy == acc
    assert r.seconds > 0 and r.rows_per_second > 0
    written = np.load(out)
    assert written.dtype == np.dtype(np.float64 if dtype == np.float64 else np.float32)
    np.testing.assert_allclose(written, loss, rtol=tol, atol=tol)
    assert np.all(written[y == -100] == 0)
    assert sorted(os.listdir(tmp_path)) == ["losses.npy", "x.npy", "y.npy"]


def test_options_weight_smoothing_zloss_and_ignore_index(tmp_path):
    x, y = _data(c=11, ignore_every=0)
    y[::5] = 3          # ignore class 3 via ignore_index=3
    w = np.random.default_rng(3).random(11)
    r = score(x, y, weight=w, label_smoothing=0.2, z_loss=1e-3, ignore_index=3, chunk_rows=700)
    _, mean, acc = _expected(x, y, ignore_index=3, weight=w, label_smoothing=0.2, z_loss=1e-3)
    assert r.mean_loss == pytest.approx(mean, rel=2e-6)
    assert r.accuracy == acc
    assert r.mean_loss == pytest.approx(float(nbxent.cross_entropy(
        x, y, weight=w, label_smoothing=0.2, z_loss=1e-3, ignore_index=3)), rel=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000, 10**9, None])
def test_results_do_not_depend_on_chunk_rows(chunk_rows):
    x, y = _data(n=2500)
    base = score(x, y, chunk_rows=300)
    r = score(x, y, chunk_rows=chunk_rows)
    assert (r.sum_loss, r.mean_loss, r.n_scored, r.accuracy) == \
        (base.sum_loss, base.mean_loss, base.n_scored, base.accuracy)


def test_arrays_memmaps_and_3d_logits(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 50, 9)).astype(np.float32)
    y = rng.integers(0, 9, (6, 50))
    xp, yp = _save(tmp_path, x, y)
    from_files = score(xp, yp, out=str(tmp_path / "o.npy"), chunk_rows=16)
    from_maps = score(np.load(xp, mmap_mode="r"), np.load(yp, mmap_mode="r"), chunk_rows=16)
    from_arrays = score(x, y)
    assert from_files.mean_loss == from_maps.mean_loss == from_arrays.mean_loss
    assert np.load(tmp_path / "o.npy").shape == (300,)
    assert from_arrays.mean_loss == pytest.approx(float(nbxent.cross_entropy(x, y)), rel=1e-6)


def test_fortran_ordered_file_and_strided_array(tmp_path):
    x, y = _data(n=400, c=13)
    xp, yp = _save(tmp_path, np.asfortranarray(x), y)
    # strided rows take the general kernel, C-ordered small-C rows the vectorised one
    expected = score(x, y).mean_loss
    assert score(xp, yp, chunk_rows=64).mean_loss == pytest.approx(expected, rel=1e-6)
    wide = np.zeros((400, 26), np.float32)
    wide[:, ::2] = x
    assert score(wide[:, ::2], y, chunk_rows=64).mean_loss == pytest.approx(expected, rel=1e-6)


def test_nothing_scored_gives_nan_and_empty_input(tmp_path):
    x, y = _data(n=50)
    y[:] = -100
    r = score(x, y)
    assert r.n_scored == 0 and math.isnan(r.mean_loss) and math.isnan(r.accuracy)
    xp, yp = _save(tmp_path, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    out = tmp_path / "o.npy"
    r = score(xp, yp, out=str(out))
    assert r.n_rows == 0 and math.isnan(r.mean_loss)
    assert np.load(out).shape == (0,)


def test_accuracy_ties_and_nan_follow_numpy_argmax():
    x = np.array([[1, 3, 3], [3, 3, 1], [np.nan, 5, 1], [0, np.nan, np.nan], [-np.inf] * 3],
                 np.float32)
    y = np.array([2, 0, 0, 1, 0])
    r = score(x, y)
    assert r.accuracy == pytest.approx(np.mean(np.argmax(x, axis=1) == y))


def test_progress_callable_and_bar(capsys):
    x, y = _data(n=1000)
    seen = []
    score(x, y, chunk_rows=block_rows(x.shape[1] * 4) * 2, progress=lambda d, n: seen.append((d, n)))
    assert seen[-1] == (1000, 1000) and len(seen) > 1
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    score(x, y, progress=True)
    assert "1,000/1,000 rows" in capsys.readouterr().err


@pytest.mark.skipif("gpu" not in BACKENDS, reason="no GPU backend (real or simulated)")
def test_gpu_device_matches_cpu(tmp_path):
    x, y = _data(n=300, c=7)
    xp, yp = _save(tmp_path, x, y)
    cpu = score(xp, yp, chunk_rows=64, device="cpu")
    gpu = score(xp, yp, chunk_rows=64, device="gpu", out=str(tmp_path / "g.npy"))
    assert gpu.n_scored == cpu.n_scored and gpu.accuracy == cpu.accuracy
    assert gpu.mean_loss == pytest.approx(cpu.mean_loss, rel=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"),
                               reference.cross_entropy(x, y, reduction="none"), rtol=2e-6, atol=2e-6)
    on_device = score(to_backend(x, "gpu"), to_backend(y, "gpu"), chunk_rows=100)
    assert on_device.mean_loss == pytest.approx(cpu.mean_loss, rel=1e-6)
    with pytest.raises(ValueError, match="device='cpu' but"):
        score(to_backend(x, "gpu"), to_backend(y, "gpu"), device="cpu")


# ----------------------------------------------------------------------------- resume


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    x, y = _data(n=20_000, c=23, seed=9)
    xp, yp = _save(tmp_path, x, y)
    full_out = tmp_path / "full.npy"
    full = score(xp, yp, out=str(full_out), chunk_rows=1024)
    out = tmp_path / "resumed.npy"
    child = textwrap.dedent(f"""
        import os, signal
        from nbxent.scoring import score
        def kill_after_three(done, total):
            if done >= 3 * 1024:
                os.kill(os.getpid(), signal.SIGKILL)
        score({xp!r}, {yp!r}, out={str(out)!r}, chunk_rows=1024, progress=kill_after_three)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not out.exists()
    record = json.loads((tmp_path / "resumed.npy.progress.json").read_text())
    assert record["totals"]["rows"] == 3 * 1024
    seen = []
    resumed = score(xp, yp, out=str(out), chunk_rows=4096 + 2048, resume=True,
                    progress=lambda d, n: seen.append(d))
    assert seen[0] > 3 * 1024          # it did not start again from row 0
    assert (resumed.n_rows, resumed.n_scored, resumed.sum_loss, resumed.mean_loss,
            resumed.accuracy) == (full.n_rows, full.n_scored, full.sum_loss, full.mean_loss,
                                  full.accuracy)
    assert out.read_bytes() == full_out.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["full.npy", "resumed.npy", "x.npy", "y.npy"]


def test_resume_refuses_other_inputs_and_starts_afresh_without_record(tmp_path):
    x, y = _data(n=5000)
    xp, yp = _save(tmp_path, x, y)
    out = tmp_path / "o.npy"
    with pytest.raises(KeyboardInterrupt):
        score(xp, yp, out=str(out), chunk_rows=512, progress=_interrupt_after(1024))
    assert not out.exists() and (tmp_path / "o.npy.partial").exists()
    with pytest.raises(ValueError, match="other inputs or options"):
        score(xp, yp, out=str(out), resume=True, label_smoothing=0.1)
    r = score(xp, yp, out=str(out), resume=True)
    assert r.mean_loss == score(x, y).mean_loss and out.exists()
    fresh = tmp_path / "fresh.npy"
    assert score(xp, yp, out=str(fresh), resume=True).mean_loss == r.mean_loss


def _interrupt_after(rows):
    def report(done, total):
        if done >= rows:
            raise KeyboardInterrupt
    return report


# ----------------------------------------------------------------------------- memory


def test_memory_stays_bounded_by_chunks(tmp_path):
    """Scoring a 64 MB file in 2 MB chunks must not grow the process by the file's size."""
    n, c = 262_144, 64
    xp = tmp_path / "big.npy"
    x = np.lib.format.open_memmap(xp, mode="w+", dtype=np.float32, shape=(n, c))
    rng = np.random.default_rng(0)
    for r0 in range(0, n, 32768):
        x[r0:r0 + 32768] = rng.standard_normal((32768, c), dtype=np.float32)
    x.flush()
    del x
    np.save(tmp_path / "labels.npy", rng.integers(0, c, n))
    child = textwrap.dedent(f"""
        import resource
        import numpy as np
        import nbxent
        from nbxent.scoring import score
        nbxent.cross_entropy(np.zeros((2, {c}), np.float32), np.zeros(2, np.int64))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = score({str(xp)!r}, {str(tmp_path / "labels.npy")!r}, chunk_rows=8192,
                  out={str(tmp_path / "o.npy")!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(r.n_rows, (after - before) // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    rows, grown_mb = map(int, proc.stdout.split())
    assert rows == n
    # two 2 MB read buffers, per-chunk losses and hits, the labels scan: far below 64 MB
    assert grown_mb < 24, f"peak RSS grew by {grown_mb} MB scoring a 64 MB file"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case, error, match", [
    ("missing", FileNotFoundError, "does not exist"),
    ("not_npy", ValueError, "not a .npy file"),
    ("npz", ValueError, "npz"),
    ("rows_disagree", ValueError, "need labels of shape"),
    ("int_logits", TypeError, "float16, float32 or float64"),
    ("float_labels", TypeError, "integer class indices"),
    ("bad_label", ValueError, "labels row 17 has class index 99"),
    ("negative_label", ValueError, "labels row 4 has class index -3"),
    ("bad_chunk_rows", ValueError, "chunk_rows"),
    ("bad_device", ValueError, "device must be"),
    ("resume_without_out", ValueError, "resume=True"),
    ("bad_smoothing", ValueError, "label_smoothing"),
    ("bad_weight", ValueError, "weight"),
    ("missing_out_folder", FileNotFoundError, "output folder"),
    ("bad_progress", ValueError, "progress"),
])
def test_bad_input(tmp_path, case, error, match):
    x, y = _data(n=100, c=10, ignore_every=0)
    xp, yp = _save(tmp_path, x, y)
    kwargs = dict(out=str(tmp_path / "o.npy"))
    if case == "missing":
        xp = str(tmp_path / "nope.npy")
    elif case == "not_npy":
        (tmp_path / "t.npy").write_text("hello")
        xp = str(tmp_path / "t.npy")
    elif case == "npz":
        np.savez(tmp_path / "a.npz", x=x)
        xp = str(tmp_path / "a.npz")
    elif case == "rows_disagree":
        np.save(yp, y[:99])
    elif case == "int_logits":
        np.save(xp, x.astype(np.int32))
    elif case == "float_labels":
        np.save(yp, y.astype(np.float32))
    elif case == "bad_label":
        y[17] = 99
        np.save(yp, y)
    elif case == "negative_label":
        y[4] = -3
        np.save(yp, y)
    elif case == "bad_chunk_rows":
        kwargs["chunk_rows"] = 0
    elif case == "bad_device":
        kwargs["device"] = "tpu"
    elif case == "resume_without_out":
        kwargs = dict(resume=True)
    elif case == "bad_smoothing":
        kwargs["label_smoothing"] = 1.5
    elif case == "bad_weight":
        kwargs["weight"] = np.ones(3)
    elif case == "missing_out_folder":
        kwargs["out"] = str(tmp_path / "no" / "o.npy")
    elif case == "bad_progress":
        kwargs["progress"] = "yes"
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    with pytest.raises(error, match=match):
        score(xp, yp, **kwargs)
    after = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    assert after == before    # no output, no partial file, inputs untouched


# ----------------------------------------------------------------------------- command line


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nbxent", "score", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True)


def test_cli_json_summary_and_output(tmp_path):
    x, y = _data(n=2000, c=17)
    xp, yp = _save(tmp_path, x, y)
    out = tmp_path / "l.npy"
    proc = _cli(xp, yp, "-o", str(out), "--chunk-rows", "256", "--label-smoothing", "0.1",
                "--ignore-index", "-100", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = score(x, y, label_smoothing=0.1)
    assert set(summary) == set(expected.as_dict())
    assert summary["mean_loss"] == expected.mean_loss
    assert summary["n_scored"] == expected.n_scored
    np.testing.assert_array_equal(np.load(out), nbxent.cross_entropy(x, y, reduction="none",
                                                                      label_smoothing=0.1))
    human = _cli(xp, yp)
    assert human.returncode == 0 and "mean loss" in human.stdout and "perplexity" in human.stdout
    assert "\r" not in human.stderr       # no progress bar when stderr is not a terminal


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("not_npy", "not a .npy file"),
    ("rows_disagree", "need labels of shape"),
    ("bad_label", "labels row 3 has class index 1000"),
    ("int_logits", "float16, float32 or float64"),
    ("no_inputs", "give LOGITS.npy LABELS.npy, or --demo"),
])
def test_cli_bad_input_one_line_no_traceback_no_output(tmp_path, case, match):
    x, y = _data(n=50, c=5, ignore_every=0)
    xp, yp = _save(tmp_path, x, y)
    if case == "missing":
        xp = str(tmp_path / "nope.npy")
    elif case == "not_npy":
        (tmp_path / "x.npy").write_text("not numpy")
    elif case == "rows_disagree":
        np.save(yp, y[:10])
    elif case == "bad_label":
        y[3] = 1000
        np.save(yp, y)
    elif case == "int_logits":
        np.save(xp, x.astype(np.int64))
    out = str(tmp_path / "o.npy")
    args = [] if case == "no_inputs" else [xp, yp, "-o", out]
    proc = _cli(*args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in proc.stderr
    assert not any(p.startswith("o.npy") for p in os.listdir(tmp_path))


def test_cli_interrupt_leaves_resumable_state(tmp_path):
    """SIGINT mid-run: exit 130, one line, nothing under the final name; --resume finishes."""
    n, c = 400_000, 32
    x, y = _data(n=n, c=c, ignore_every=0)
    xp, yp = _save(tmp_path, x, y)
    out = tmp_path / "o.npy"
    proc = subprocess.Popen([sys.executable, "-m", "nbxent", "score", xp, yp, "-o", str(out),
                             "--chunk-rows", "4096"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    record = tmp_path / "o.npy.progress.json"
    import time
    deadline = time.monotonic() + 120
    while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived (machine too fast for this file)")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr and "--resume" in stderr
    assert not out.exists()
    done = _cli(xp, yp, "-o", str(out), "--resume", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["mean_loss"] == score(x, y).mean_loss
    assert not record.exists()


def test_cli_demo_checks_against_reference():
    proc = _cli("--demo", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["demo_check"]["ok"] and summary["demo_check"]["relative_error"] <= 1e-6
    assert summary["n_rows"] == 500_000 and 0 < summary["accuracy"] < 1


@backend_params
@pytest.mark.parametrize("c", [5, 40, 100])   # CPU: two kernels up to 64 classes, then one
@pytest.mark.parametrize("layout", ["c", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_scored_rows_equal_the_two_public_calls(backend, c, layout, dtype):
    from nbxent.softmax import scored_rows, top1_hits

    rng = np.random.default_rng(7)
    n = small(backend, 300, 8)
    c = small(backend, c, min(c, 7))
    x = (rng.standard_normal((n, 2 * c)) * 3).astype(dtype)
    x = x[:, ::2] if layout == "strided" else x[:, :c]
    x[5, 3] = np.nan
    x[6] = x[6, 0]            # ties: the first maximum wins
    y = rng.integers(0, c, n)
    y[::7] = -100
    w = rng.random(c) + 0.5
    opts = dict(weight=w, ignore_index=-100, label_smoothing=0.1, z_loss=1e-3)
    losses = to_backend(np.empty(n, np.float64 if dtype == np.float64 else np.float32), backend)
    hits = to_backend(np.empty(n, np.uint8), backend)
    xb, yb = to_backend(x, backend), to_backend(y, backend)
    opts["weight"] = to_backend(w, backend)
    scored_rows(xb, yb, losses, hits, **opts)
    want = nbxent.cross_entropy(xb, yb, reduction="none", **opts)
    losses, hits = to_host(losses), to_host(hits)
    np.testing.assert_array_equal(losses, to_host(want))
    np.testing.assert_array_equal(hits, to_host(top1_hits(xb, yb)))
    assert hits[6] == (y[6] == 0) and np.isnan(losses[5]) == (y[5] != -100)


def test_timed_run_compiles_nothing():
    """`seconds` excludes compilation: the warm-up compiles every kernel the run launches
    (checked in a fresh process, where nothing is compiled yet)."""
    child = textwrap.dedent("""
        import numpy as np
        from numba.core import event
        import nbxent.scoring as scoring
        compiled, phase = [], ["before"]
        class Listener(event.Listener):
            def on_start(self, e):
                compiled.append((phase[0], str(e.data["dispatcher"])))
            def on_end(self, e):
                pass
        event.register("numba:compile", Listener())
        warm_up = scoring._warm_up
        def traced(*args):
            warm_up(*args)
            phase[0] = "timed"
        scoring._warm_up = traced
        rng = np.random.default_rng(0)
        for c in (5, 40, 100):    # few-classes, small-C (two kernels), the fused one
            phase[0] = "before"
            x = rng.standard_normal((3000, c), dtype=np.float32)
            y = rng.integers(0, c, 3000)
            scoring.score(x, y, chunk_rows=512)
        late = [d for p, d in compiled if p == "timed"]
        assert not late, late
        assert any("_ce_top1_kernel" in d for p, d in compiled), compiled
        print("ok")
    """)
    # NBXENT_CACHE=0: a kernel loaded from a disk cache raises no compile event
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, NBXENT_CACHE="0"), timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
