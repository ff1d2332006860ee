"""The fastln command: argument errors, the JSON schema, the PNG, the no-torch path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastln import bench, cli


@pytest.fixture
def tiny_bench(monkeypatch):
    monkeypatch.setattr(bench, "QUICK_SHAPES", [(2, 3), (64, 128)])
    monkeypatch.setattr(bench, "QUICK_FAMILY_SHAPES", [(16, 32)])
    monkeypatch.setattr(bench, "WARMUP_S", 0.0)


@pytest.mark.parametrize(
    "argv",
    [[], ["nonsense"], ["bench", "--rounds", "0"], ["bench", "--dtype", "float16"], ["bench", "--device", "tpu"],
     ["bench", "--norm", "batch_norm"], ["compile", "--jobs", "0"]],
)
def test_argument_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_bench_writes_table_json_and_png(tmp_path, tiny_bench, capsys):
    assert cli.main(["bench", "--quick", "--rounds", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vs torch" in out and "fastln" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert set(data) == {"machine", "notes", "results"}
    assert {"numba", "numpy", "threads", "threading_layer", "cores"} <= set(data["machine"])
    rows = data["results"]
    impls = {(r["norm"], tuple(r["shape"]), r["direction"], r["impl"]) for r in rows}
    for norm, shapes in (("layer_norm", [(2, 3), (64, 128)]), ("rms_norm", [(16, 32)])):
        for shape in shapes:
            for direction in ("forward", "backward"):
                assert {(norm, shape, direction, i) for i in ("fastln", "torch", "numpy")} <= impls
            assert {(norm, shape, "forward", i) for i in ("fastln out=", *bench.CEILINGS)} <= impls
    for norm in ("add_layer_norm", "add_rms_norm"):
        assert (norm, (16, 32), "forward", "fastln") in impls
    ceilings = [r for r in rows if r["impl"] in bench.CEILINGS]
    assert {r["direction"] for r in ceilings} == {"forward"}, "the ceilings are forward references"
    for r in rows:
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["gb_per_s"] > 0
        assert 1 <= r["rounds_kept"] <= 3 and isinstance(r["noisy"], bool)
        assert (r["speedup_vs_torch"] is None) == (r["impl"] in bench.CEILINGS)
        if r["speedup_vs_torch"] is not None:
            lo, q1, q3, hi = r["speedup_spread"]
            assert lo <= q1 <= r["speedup_vs_torch"] <= q3 <= hi
        if r["impl"] == "fastln" and r["direction"] == "forward":
            assert 0 <= r["max_abs_error"] < 1e-5
            assert r["fraction_of_copy"] > 0
        if r["impl"] == "fastln out=":
            assert r["fraction_of_reused_copy"] > 0 and r["fraction_of_elementwise"] > 0
    # GB/s in Triton's convention: forward 2 arrays, backward 3 (4 for an add-norm forward).
    for r in rows:
        n = 4 * r["shape"][0] * r["shape"][1]
        k = 3 if r["direction"] == "backward" else 4 if r["norm"].startswith("add_") else 2
        assert r["gb_per_s"] == pytest.approx(k * n / r["median_s"] / 1e9)
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bench_without_torch_compares_with_numpy_only(tmp_path, tiny_bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "have_torch", lambda: False)
    argv = ["bench", "--quick", "--rounds", "1", "--norm", "layer_norm", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert "torch is not installed" in capsys.readouterr().out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["impl"] for r in data["results"]} == {"fastln", "fastln out=", "numpy", *bench.CEILINGS}
    assert all(r["speedup_vs_torch"] is None for r in data["results"])
    assert data["notes"]


def test_spoiled_rounds_are_dropped_for_every_implementation():
    samples = {"a": np.array([1.0, 1.1, 9.0, 1.0, 0.9]), "b": np.array([2.0, 2.1, 2.0, 2.2, 60.0])}
    assert bench.kept_rounds(samples).tolist() == [True, True, False, True, False]


def test_setup_runs_before_every_burst_of_its_function_only(monkeypatch):
    """``setup[name]`` (tools/pool_threshold.py reconfigures the glue with it) runs, untimed,
    before each burst of its own function, so every timed call of that function sees it."""
    monkeypatch.setattr(bench, "WARMUP_S", 0.0)
    state, seen = {"v": None}, {"a": set(), "b": set()}
    fns = {"a": lambda: seen["a"].add(state["v"]), "b": lambda: seen["b"].add(state["v"])}
    samples = bench.interleaved_samples(fns, 3, setup={"a": lambda: state.update(v="A")})
    assert seen["a"] == {"A"} and seen["b"] == {"A"}  # b has no setup: it sees what a left
    state["v"] = None
    seen = {"a": set(), "b": set()}
    bench.interleaved_samples(fns, 2, setup={"a": lambda: state.update(v="A"), "b": lambda: state.update(v="B")})
    assert seen == {"a": {"A"}, "b": {"B"}}
    assert all(len(v) == 3 for v in samples.values())


def test_a_noisy_case_is_measured_again_then_flagged(monkeypatch):
    # One implementation alternates between 1 and 2.5 units per burst (a busy neighbour that
    # never leaves): under the spoiled-round threshold, over the spread threshold.
    calls = []

    def samples(fns, rounds, setup=None):
        calls.append(rounds)
        wobbly = np.array([1.0, 2.5] * (rounds // 2) + [1.0] * (rounds % 2)) * 1e-3
        return {"torch": np.full(rounds, 1e-3), "fastln": wobbly}

    monkeypatch.setattr(bench, "interleaved_samples", samples)
    monkeypatch.setattr(bench, "loaded", lambda: (0.5, False))
    case = bench.Case("layer_norm", "forward", (8, 8), "float32")
    rows = bench.measure(case, {"torch": None, "fastln": None}, 8)
    assert calls == [8, 8], "measured a second time before flagging"
    assert all(r.noisy and "noisy" in r.note for r in rows)


def test_a_quiet_case_is_measured_once_and_not_flagged(monkeypatch):
    calls = []

    def samples(fns, rounds, setup=None):
        calls.append(rounds)
        return {"torch": np.linspace(1.0, 1.05, rounds) * 2e-3, "fastln": np.linspace(1.0, 1.1, rounds) * 1e-3}

    monkeypatch.setattr(bench, "interleaved_samples", samples)
    monkeypatch.setattr(bench, "loaded", lambda: (0.5, False))
    case = bench.Case("rms_norm", "backward", (8, 8), "float32")
    rows = {r.impl: r for r in bench.measure(case, {"torch": None, "fastln": None}, 8)}
    assert calls == [8] and not any(r.noisy for r in rows.values())
    assert rows["fastln"].speedup_vs_torch == pytest.approx(2.0, rel=0.05)
    assert rows["fastln"].gb_per_s == pytest.approx(3 * 8 * 8 * 4 / rows["fastln"].median_s / 1e9)


def test_a_loaded_machine_flags_rows_and_says_so(monkeypatch, tmp_path, tiny_bench, capsys):
    monkeypatch.setattr(bench, "loaded", lambda: (9.0, True))
    argv = ["bench", "--quick", "--rounds", "1", "--norm", "rms_norm", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert all(r["noisy"] for r in data["results"])
    assert any("loaded" in n for n in data["notes"])
    assert "noisy" in capsys.readouterr().out


def test_peers_run_when_installed(tmp_path, tiny_bench, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    # torch.compile takes seconds per shape: keep this test to the cheap peers.
    monkeypatch.setattr(bench, "PEERS", [p for p in bench.PEERS if p[0] != "torch.compile"])
    argv = ["bench", "--quick", "--peers", "--rounds", "1", "--norm", "layer_norm", "rms_norm",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    fwd = {(r["norm"], r["impl"]) for r in data["results"] if r["direction"] == "forward"}
    assert ("layer_norm", "onnxruntime") in fwd
    skipped = [n for n in data["notes"] if n.startswith("peer skipped")]
    assert ("rms_norm", "onnxruntime") in fwd or skipped, "a peer that cannot run says why"
    if bench.have("jax"):
        assert ("layer_norm", "jax") in fwd and ("rms_norm", "jax") in fwd


@pytest.mark.parametrize("norm", bench.NORMS)
def test_peers_compute_the_same_norm(norm):
    """A peer timed on a different computation would make the comparison meaningless."""
    case = bench.Case(norm, "forward", (33, 70), "float32")
    inputs = bench.make_inputs(case.shape, case.dtype)
    x, w, b, _, r = (a.astype(np.float64) for a in inputs)
    want = bench.numpy_forward(x, w, b, case.centered, r if case.residual else None)[0]
    fns = bench.makers(case, inputs, peers=True)
    ran = 0
    for name in ("onnxruntime", "jax"):
        if name in fns and not isinstance(fns[name], Exception):
            out = fns[name]()
            y = out[0]
            if name == "jax" and not case.residual:
                y = out
            np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4, err_msg=name)
            ran += 1
    if not ran:
        pytest.skip("no peer installed")


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_the_elementwise_ceiling_does_the_norms_elementwise_work(residual, bias):
    """The "elementwise reused" ceiling computes the norm's element-wise part, no statistics:
    h = x + r for the add-norms, then y = h * w (+ b for the centred norms)."""
    x, w, b, _, r = bench.make_inputs((33, 70), "float32")
    y, h = np.full_like(x, np.nan), np.full_like(x, np.nan)
    bench._elementwise_pass(x, r if residual else r[:0], w, b if bias else b[:0], y, h)
    x64, r64, w64, b64 = (a.astype(np.float64) for a in (x, r, w, b))
    h64 = x64 + r64 if residual else x64
    np.testing.assert_allclose(y, h64 * w64 + (b64 if bias else 0.0), rtol=1e-6, atol=1e-6)
    if residual:
        np.testing.assert_array_equal(h, x + r)
    else:
        assert np.isnan(h).all()  # untouched
    case = bench.Case("add_layer_norm" if residual else "layer_norm", "forward", (33, 70), "float32")
    assert "elementwise reused" in bench.makers(case, bench.make_inputs(case.shape, case.dtype))


def test_bench_cuda_on_cpu_machine_is_a_clear_error(capsys):
    assert cli.main(["bench", "--device", "cuda"]) == 2
    assert "GPU" in capsys.readouterr().out


def test_info_reports_versions_and_threading(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("fastln", "numba", "numpy", "threading_layer", "threads", "simd", "cache", "cuda"):
        assert key in out
    assert "tbb" in out


def test_demo_matches_torch(capsys):
    pytest.importorskip("torch")
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert out.count("max |torch - fastln|") == 3


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "fastln", "info"], capture_output=True, text=True, check=True)
    assert "numba" in out.stdout


def test_compile_leaves_every_kernel_in_the_cache(capsys):
    """``fastln compile`` (also what conftest runs first): afterwards a new process finds
    every kernel signature it compiles in the cache, and compiles none of them again."""
    from fastln import _warm

    assert cli.main(["compile", "--jobs", "1"]) == 0
    assert f"{len(_warm.tasks())} kernels compiled or loaded" in capsys.readouterr().out
    code = (
        "from fastln import _warm\n"
        "_warm.run(range(len(_warm.tasks())))\n"
        "from fastln.cpu import entries\n"
        "ks = {id(k): k for _, _, k, _ in _warm.tasks() if not isinstance(k, int)}.values()\n"
        "cs = [entries.entry(k) for _, _, k, _ in _warm.tasks() if isinstance(k, int)]\n"  # C entries: cfuncs
        "print(sum(sum(k.stats.cache_misses.values()) for k in ks) + sum(1 - c.cache_hits for c in cs),\n"
        "      sum(sum(k.stats.cache_hits.values()) for k in ks) + sum(c.cache_hits for c in cs))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    misses, hits = map(int, out.stdout.split())
    assert misses == 0
    assert hits == len(_warm.tasks())


def test_compile_without_a_cache_says_so():
    out = subprocess.run([sys.executable, "-m", "fastln", "compile"], capture_output=True, text=True,
                         env={**os.environ, "FASTLN_CACHE": "0"}, timeout=300)
    assert out.returncode == 1
    assert "kernel cache is off" in out.stderr


def test_gpu_suite_replots_the_committed_results(tmp_path):
    """``tools/gpu_suite.py --replot`` draws a committed GPU run again (CPU only): the plot code
    and the results' schema agree, and the ratios it plots are the medians' ratios."""
    pytest.importorskip("matplotlib")
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = root / "benchmarks" / "results" / "gpu-h200" / "s14b-bench.json"
    data = json.loads(src.read_text())
    for row in data["results"]:
        med = row["median_s"]
        assert row["forward_vs_torch"] == pytest.approx(med["torch forward"] / med["fastln forward"])
        assert row["backward_vs_torch"] == pytest.approx(med["torch backward"] / med["fastln backward"])
    copy = tmp_path / "bench.json"
    shutil.copy(src, copy)
    subprocess.run([sys.executable, str(root / "tools" / "gpu_suite.py"), "--replot", str(copy)], check=True,
                   env={**os.environ, "MPLBACKEND": "Agg"})
    png = tmp_path / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
