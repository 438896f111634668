"""bf16 vs fp32 matmul on this machine, side by side, at SmolLM2-135M shapes.

Why: bf16 is only fast where the hardware has it (AVX512-BF16 / AMX on x86, CUDA sm80+). On an AVX2-only
CPU PyTorch emulates it and bf16 is many times slower than fp32; ``medrlvr.hardware.fast_bf16`` decides
the ``auto`` dtypes from the CPU flags, and this script shows whether that decision is right here.

    python bench/bf16_vs_fp32.py [--repeats 5]

Prints one line per shape with milliseconds for each dtype, then
``bf16_speedup=<fp32 time / bf16 time, geometric mean> native_bf16=<yes|no>``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.nn.functional as F

from medrlvr.hardware import describe, fast_bf16

# (rows, in, out): decode-step projections at batch 32, the MLP on a training micro-batch, the LM head
SHAPES = ((32, 576, 1536), (1024, 576, 1536), (32, 576, 49152))


def _time(x, w, repeats):
    F.linear(x, w)
    t0 = time.perf_counter()
    for _ in range(repeats):
        F.linear(x, w)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(describe(), f"threads {torch.get_num_threads()}")
    ratios = []
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k), torch.randn(n, k)
        t32 = _time(x, w, a.repeats)
        t16 = _time(x.bfloat16(), w.bfloat16(), a.repeats)
        ratios.append(t32 / t16)
        print(f"({m}x{k}) @ ({k}x{n}): fp32 {t32 * 1e3:.1f} ms, bf16 {t16 * 1e3:.1f} ms, bf16 speed-up {t32 / t16:.3f}x")
    gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"bf16_speedup={gm:.3f} native_bf16={'yes' if fast_bf16('cpu') else 'no'}")


if __name__ == "__main__":
    main()
