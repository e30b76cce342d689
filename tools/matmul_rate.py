#!/usr/bin/env python3
"""Measures the GPU's dense matmul rates with PyTorch, for the compute floors of docs/perf.md and
`fp4moe plot --fp8-tflops`: FP8 e4m3 (torch._scaled_mm, bf16 output) and FP16 (torch.matmul,
float32 accumulation), square 8192 problems, median of 50 timed calls after warm-up (CUDA
events). Runs on the GPU machine (torch is there); prints one line per rate.

Usage: python3 tools/matmul_rate.py [N]"""
import statistics
import sys

import torch


def median_ms(fn, reps=50, warmup=10):
    """The median of reps timed calls of fn after warmup untimed ones, in ms (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))  # ms
    return statistics.median(times)


def rate(fn, flops, reps=50):
    return flops / (median_ms(fn, reps) * 1e-3) / 1e12


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    dev = torch.device("cuda")
    flops = 2.0 * n * n * n
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    a8 = a.to(torch.float8_e4m3fn)
    b8 = b.to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
    one = torch.tensor(1.0, device=dev)
    fp8 = rate(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), flops)
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False  # float32 sums
    a16, b16 = a.half(), b.half()
    fp16 = rate(lambda: torch.matmul(a16, b16), flops)
    name = torch.cuda.get_device_name(dev)
    print(f"{name}: FP8 e4m3 matmul {fp8:.0f} TFLOP/s (torch._scaled_mm, n={n})")
    print(f"{name}: FP16 matmul {fp16:.0f} TFLOP/s (torch.matmul, n={n})")


if __name__ == "__main__":
    main()
