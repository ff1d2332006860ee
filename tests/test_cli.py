"""The fastln command: argument errors, the JSON schema, the PNG, the no-torch path."""

import json
import subprocess
import sys

import pytest

from fastln import bench, cli


@pytest.fixture
def tiny_bench(monkeypatch):
    monkeypatch.setattr(bench, "QUICK_SHAPES", [(2, 3), (64, 128)])
    monkeypatch.setattr(bench, "WARMUP_S", 0.0)


@pytest.mark.parametrize(
    "argv",
    [[], ["nonsense"], ["bench", "--rounds", "0"], ["bench", "--dtype", "float16"], ["bench", "--device", "tpu"]],
)
def test_argument_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_bench_writes_table_json_and_png(tmp_path, tiny_bench, capsys):
    assert cli.main(["bench", "--quick", "--rounds", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vs torch" in out and "fastln" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert set(data) == {"machine", "notes", "results"}
    assert {"numba", "numpy", "threads", "threading_layer"} <= set(data["machine"])
    impls = {(tuple(r["shape"]), r["direction"], r["impl"]) for r in data["results"]}
    for shape in [(2, 3), (64, 128)]:
        for direction in ("forward", "backward"):
            assert {(shape, direction, i) for i in ("fastln", "torch", "numpy")} <= impls
    copies = [r for r in data["results"] if r["impl"] == "copy"]
    assert {r["direction"] for r in copies} == {"forward"}, "the roofline is a forward reference"
    for r in data["results"]:
        assert r["median_s"] > 0 and r["gb_per_s"] > 0
        assert (r["speedup_vs_torch"] is None) == (r["impl"] == "copy")
        if r["impl"] == "fastln" and r["direction"] == "forward":
            assert 0 <= r["max_abs_error"] < 1e-5
            assert r["fraction_of_copy_roofline"] > 0
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bench_without_torch_compares_with_numpy_only(tmp_path, tiny_bench, monkeypatch, capsys):
    monkeypatch.setattr(bench, "have_torch", lambda: False)
    assert cli.main(["bench", "--quick", "--rounds", "1", "--out", str(tmp_path)]) == 0
    assert "torch is not installed" in capsys.readouterr().out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["impl"] for r in data["results"]} == {"fastln", "numpy", "copy"}
    assert all(r["speedup_vs_torch"] is None for r in data["results"])
    assert data["notes"]


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
