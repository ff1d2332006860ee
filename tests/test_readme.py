"""The README's two commands are the ones CI and users run."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    block = ci.split("# --- README test command (begin) ---\n")[1].split("\n# --- README test command (end) ---")[0]
    assert block.strip() in [c.strip() for c in _readme_commands()]


def test_readme_main_command_runs_the_quick_benchmark():
    assert any("fastln bench --quick" in c and "pip install" in c for c in _readme_commands())


def test_torch_is_pinned_everywhere_it_is_installed():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for line in re.findall(r'"torch[^"]*"', pyproject):
        assert line == '"torch==2.13.0"', line


def _python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.+?)\n```", text, flags=re.S)


def test_readme_has_python_blocks():
    assert len(_python_blocks()) >= 2


def test_every_python_block_runs_as_written():
    """Each block runs on its own, in a fresh namespace, exactly as a reader would paste it."""
    for block in _python_blocks():
        if "import torch" in block:
            import pytest

            pytest.importorskip("torch")
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


def test_gpu_table_is_the_committed_h200_results():
    """The README's GPU table quotes ``benchmarks/results/gpu-h200/s14b-bench.json`` (LayerNorm
    float32, us, rounded), with the 64x65536 backward from ``s14c-bench.json``, the final code."""
    import json

    results = ROOT / "benchmarks" / "results" / "gpu-h200"

    def medians(name):
        data = json.loads((results / name).read_text())
        return {tuple(r["shape"]): {k: v * 1e6 for k, v in r["median_s"].items()} for r in data["results"]
                if r["norm"] == "layer_norm" and r["dtype"] == "float32"}

    full, final = medians("s14b-bench.json"), medians("s14c-bench.json")
    gpu = (ROOT / "README.md").read_text().split("## GPU")[1].split("## Limits")[0]
    rows = re.findall(r"^\| (\d+)x(\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", gpu, flags=re.M)
    assert len(rows) == 7
    keys = ("torch forward", "fastln forward", "kernel forward", "torch backward", "fastln backward", "kernel backward")
    for r, c, *cells in rows:
        shape = (int(r), int(c))
        for key, cell in zip(keys, cells, strict=True):
            source = final if shape == (64, 65536) and "backward" in key else full
            assert int(cell) == round(source[shape][key]), (shape, key)


def test_half_table_is_the_committed_half_bench_results():
    """The README's half-precision table is ``benchmarks/results/cpu-2core/half_bench.json``,
    each row as ``tools/half_bench.py`` prints it."""
    import importlib.util
    import json

    pytest.importorskip("torch")  # the tool imports it
    spec = importlib.util.spec_from_file_location("half_bench", ROOT / "tools" / "half_bench.py")
    half_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(half_bench)
    data = json.loads((ROOT / "benchmarks" / "results" / "cpu-2core" / "half_bench.json").read_text())
    want = [half_bench.table_row(r) for r in data["rows"]]
    readme = (ROOT / "README.md").read_text().splitlines()
    header = "| dtype | pass | shape | in kernel | upcast | torch native | upcast / in kernel | torch / in kernel |"
    at = readme.index(header) + 2
    assert readme[at:at + len(want)] == want and len(want) == 16


def test_bridge_tables_are_the_committed_bridge_bench_results():
    """The README's fastln.torch tables are ``bridge_bench_s16.json`` (calls, pair) and
    ``bridge_models_s16.json`` (models, with their A/A rows), as ``tools/bridge_bench.py``'s
    ``table_rows`` renders them."""
    import importlib.util
    import json

    pytest.importorskip("torch")  # the tool imports it
    spec = importlib.util.spec_from_file_location("bridge_bench", ROOT / "tools" / "bridge_bench.py")
    bridge_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bridge_bench)
    results = ROOT / "benchmarks" / "results" / "cpu-2core"
    calls = json.loads((results / "bridge_bench_s16.json").read_text())
    models = json.loads((results / "bridge_models_s16.json").read_text())
    readme = (ROOT / "README.md").read_text().splitlines()
    for section, rows, header in (
        ("calls", calls["calls"], "| shape | call | torch | fastln.torch | speedup [min-max] |"),
        ("models", models["models"], "| model (norms swapped with `replace_layer_norms`) | what | torch | fastln.torch | "
                                     "speedup [min-max] | 95% interval |"),
        ("pair", calls["pair"], "| pair | torch alone | fastln alone | pair | pair / (sum alone) [min-max] |"),
    ):
        want = bridge_bench.table_rows(section, rows)
        at = readme.index(header) + 2
        assert want and readme[at:at + len(want)] == want, section
