"""bfloat16 forward: conversion inside the kernel vs a float32 upcast copy vs torch.

    python tools/bf16_vs_upcast.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastln import _api, cpu  # noqa: E402


def case(rows: int, cols: int) -> dict:
    t = torch.randn(rows, cols).to(torch.bfloat16)
    w = np.ones(cols, np.float32)
    b = np.zeros(cols, np.float32)

    def stats():
        return np.empty(rows, np.float32), np.empty(rows, np.float32)

    def in_kernel():
        y = torch.empty((rows, cols), dtype=torch.bfloat16)
        xu = t.view(torch.int16).numpy().view(np.uint16)
        none = np.empty((0, 0), np.uint16)
        cpu.forward_bf16_parallel(xu, none, w, b, 1e-5, True, y.view(torch.int16).numpy().view(np.uint16), none, *stats())
        return y

    def upcast():
        y = torch.empty((rows, cols))
        none = np.empty((0, 0), np.float32)
        _api.run_forward(t.float().numpy(), none, w, b, 1e-5, True, y.numpy(), none, *stats())
        return y.to(torch.bfloat16)

    def native():
        return torch.nn.functional.layer_norm(t, (cols,))

    assert torch.equal(in_kernel().view(torch.int16), upcast().view(torch.int16))
    fns = {"in-kernel": in_kernel, "upcast": upcast, "torch": native}
    samples = {k: [] for k in fns}
    for _ in range(15):  # interleaved, each after a 15 ms warm-up
        for k, f in fns.items():
            end = time.perf_counter() + 0.015
            while time.perf_counter() < end:
                f()
            start = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - start)
    return {k: float(np.median(v)) * 1e6 for k, v in samples.items()}


if __name__ == "__main__":
    torch.set_num_threads(2)
    for rows, cols in [(512, 768), (8192, 1024), (32768, 768)]:
        med = case(rows, cols)
        print(
            f"{rows}x{cols} bf16: in-kernel {med['in-kernel']:.0f} us, upcast {med['upcast']:.0f} us, "
            f"torch {med['torch']:.0f} us; in-kernel vs upcast {med['upcast'] / med['in-kernel']:.2f}x"
        )
