#!/usr/bin/env python3
"""Measures what PyTorch's own grouped GEMMs reach at the layer's two GEMMs, for the prefill
ceilings of docs/perf.md: each expert's rows under uniform routing (M·topk/E rows an expert,
every expert the same), GEMM1 (rows × K) · (K × 2I) and GEMM2 (rows × I) · (I × K), with the
weights already in the MMA's input type (no MXFP4 expansion, 2–4× the weight bytes):
  - fp16 bmm: torch.bmm in FP16 with float32 accumulation (cuBLAS), the weights [E, N, K]
    row-major as the layer stores its rows, used transposed;
  - bf16 grouped_mm: torch._grouped_mm (offsets per expert), where the build has it;
  - fp8 grouped_mm: torch._scaled_grouped_mm, E4M3 with row-wise scales, where the build has it.
Each is the median of `reps` timed calls after warm-up (CUDA events); the inputs are random
normal values (never zeros). TFLOP/s counts 2·rows·N·K a GEMM; "both" is 2·P·3·K·I over the two
GEMMs' summed times. Runs on the GPU machine (torch is there); prints one line a shape, M and
kind, and the dense square rates of tools/matmul_rate.py first.

Usage: python3 tools/grouped_rate.py [M ...]   (default 4096 16384)"""
import sys

import torch

from matmul_rate import main as dense_rates
from matmul_rate import median_ms as timed

# (name, K, I, E, topk), the dimensions fp4moe bench uses (GPT-OSS-120B padded to 128).
SHAPES = [
    ("gptoss120b", 2944, 2944, 128, 4),
    ("deepseekv3", 7168, 2048, 256, 8),
    ("qwen3-30b-a3b", 2048, 768, 128, 8),
]


def median_ms(fn):
    """tools/matmul_rate.py's timing: 20 timed calls after 3 untimed ones, their median in ms."""
    return timed(fn, reps=20, warmup=3)


def fp16_bmm(e, rows, k, n):
    a = torch.randn(e, rows, k, device="cuda", dtype=torch.float16)
    w = torch.randn(e, n, k, device="cuda", dtype=torch.float16)
    wt = w.transpose(1, 2)
    return median_ms(lambda: torch.bmm(a, wt))


def offsets(e, rows):
    return torch.arange(1, e + 1, device="cuda", dtype=torch.int32) * rows


def bf16_grouped(e, rows, k, n):
    a = torch.randn(e * rows, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(e, n, k, device="cuda", dtype=torch.bfloat16)
    offs = offsets(e, rows)
    return median_ms(lambda: torch._grouped_mm(a, w.transpose(1, 2), offs=offs, out_dtype=torch.bfloat16))


def fp8_grouped(e, rows, k, n):
    a = torch.randn(e * rows, k, device="cuda").to(torch.float8_e4m3fn)
    w = torch.randn(e, n, k, device="cuda").to(torch.float8_e4m3fn)
    sa = torch.ones(e * rows, device="cuda", dtype=torch.float32)
    sw = torch.ones(e, n, device="cuda", dtype=torch.float32)
    offs = offsets(e, rows)
    return median_ms(lambda: torch._scaled_grouped_mm(a, w.transpose(1, 2), sa, sw, offs=offs,
                                                      out_dtype=torch.bfloat16))


KINDS = [("fp16 bmm", fp16_bmm), ("bf16 grouped_mm", bf16_grouped), ("fp8 grouped_mm", fp8_grouped)]


def main():
    ms = [int(x) for x in sys.argv[1:]] or [4096, 16384]
    sys.argv = sys.argv[:1]
    dense_rates()
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    print(f"{'shape':14s} {'M':>6s} {'rows/e':>6s} {'kind':16s} {'GEMM1 us':>10s} {'TF':>6s} "
          f"{'GEMM2 us':>10s} {'TF':>6s} {'both TF':>8s}")
    for name, k, i, e, topk in SHAPES:
        for m in ms:
            rows = m * topk // e
            f1 = 2.0 * e * rows * k * 2 * i
            f2 = 2.0 * e * rows * i * k
            for kind, fn in KINDS:
                try:
                    t1 = fn(e, rows, k, 2 * i)
                    torch.cuda.empty_cache()
                    t2 = fn(e, rows, i, k)
                    torch.cuda.empty_cache()
                except (AttributeError, RuntimeError, TypeError) as err:
                    print(f"{name:14s} {m:6d} {rows:6d} {kind:16s} not run: {str(err).splitlines()[0][:90]}")
                    torch.cuda.empty_cache()
                    continue
                tf = lambda f, t: f / (t * 1e-3) / 1e12
                print(f"{name:14s} {m:6d} {rows:6d} {kind:16s} {t1 * 1e3:10.1f} {tf(f1, t1):6.0f} "
                      f"{t2 * 1e3:10.1f} {tf(f2, t2):6.0f} {tf(f1 + f2, t1 + t2):8.0f}", flush=True)


if __name__ == "__main__":
    main()
