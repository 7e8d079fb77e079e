"""The layer-level measurements behind benchmarks/NOTES.md, each a ratio taken side by side in one process.

  conv      how close oneDNN's 3x3 convolutions come to the machine's matrix rate: GFLOP/s of a convolution
            (forward, and forward plus backward) next to a matrix product of the same FLOPs (im2col shape).
            Where convolutions already run at the matrix rate, only fewer FLOPs make them faster.
  upsample  nearest x2 then a 3x3 conv, against the stride-2 transposed conv it equals (diffusely's Upsample):
            forward, and forward plus backward, with the largest difference between the two
  adamw     one AdamW step on the U-Net of throughput.py at 32x32 and 64x64: torch's default (a loop over the
            tensors on a CPU), foreach, and fused (`diffusely train`'s)
  attention scaled_dot_product_attention against attention computed as two matrix products and a softmax in
            the input's precision, with each one's error against float64 on the same (rounded) inputs
  profile   where a training step and a sampling pass of throughput.py's U-Net spend their time (torch.profiler,
            self time): convolutions, attention, other matrix products, AdamW, everything else. What is not
            matrix work bounds what any change outside the kernels can gain

    python benchmarks/kernels.py                   # all, fp32 and bf16; about 2 minutes on 2 cores
    python benchmarks/kernels.py --only upsample --precision bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from diffusely.nets.layers import upsampling_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import ours, sample_step_fn, train_step_fn  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def ms(fn, iters: int = 15) -> float:
    """Median milliseconds of a call, after three warm-up calls (oneDNN builds its kernels on the first)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def forward_backward(fn, *inputs):
    leaves = [x.detach().requires_grad_() for x in inputs]

    def step():
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
    return step


def no_grad(fn, *inputs):
    def call():
        with torch.no_grad():
            fn(*inputs)
    return call


def conv(dtype) -> None:
    print("conv 3x3 (batch, channels, size): GFLOP/s forward, forward+backward, and a matrix product of the same FLOPs")
    for b, c, s in ((32, 64, 32), (32, 128, 16), (32, 128, 8), (8, 256, 16), (8, 128, 64)):
        x, w = torch.randn(b, c, s, s, dtype=dtype), torch.randn(c, c, 3, 3, dtype=dtype) * 0.05
        flops = 2 * 9 * b * s * s * c * c
        a, m = torch.randn(b * s * s, 9 * c, dtype=dtype), torch.randn(9 * c, c, dtype=dtype)
        fwd = flops / ms(no_grad(F.conv2d, x, w, None, 1, 1)) / 1e6
        both = 3 * flops / ms(forward_backward(lambda x, w: F.conv2d(x, w, padding=1), x, w)) / 1e6
        mm = flops / ms(lambda: a @ m) / 1e6
        print(f"  {b:3d} {c:4d} {s:3d}   conv {fwd:5.0f}   conv+backward {both:5.0f}   matmul {mm:5.0f}")


def nearest_then_conv(x, w, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, bias, padding=1)


def transposed(x, w, bias):
    return F.conv_transpose2d(x, upsampling_kernel(w), bias, stride=2, padding=1)


def upsample(dtype) -> None:
    print("upsample (batch, channels, input size): ms of nearest x2 + conv, of the transposed conv, and the ratio;\n"
          "  each one's largest error against float64, relative to the largest output (as a network runs them: "
          "float32 weights, bf16 under autocast)")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16)
    for b, c, s in ((32, 128, 8), (32, 128, 16), (8, 256, 8), (8, 256, 16), (8, 256, 32)):
        x, w, bias = torch.randn(b, c, s, s), torch.randn(c, c, 3, 3) * 0.05, torch.randn(c)
        exact = nearest_then_conv(x.double(), w.double(), bias.double())
        with autocast:
            errors = [((f(x, w, bias).double() - exact).abs().max() / exact.abs().max()).item()
                      for f in (nearest_then_conv, transposed)]
        row = []
        for wrap in (no_grad, forward_backward):
            with autocast:
                t = [ms(wrap(f, x, w, bias)) for f in (nearest_then_conv, transposed)]
            row.append(f"{t[0]:7.2f} {t[1]:7.2f} {t[0] / t[1]:5.2f}x")
        print(f"  {b:3d} {c:4d} {s:3d}   forward {row[0]}   forward+backward {row[1]}   "
              f"error {errors[0]:.1e} and {errors[1]:.1e}")


def adamw(_dtype) -> None:
    print("AdamW step on throughput.py's U-Net: ms per step")
    for size in (32, 64):
        net = ours(size)
        for p in net.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        times = {}
        for name, kw in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, **kw)
            times[name] = ms(opt.step)
        params = sum(p.numel() for p in net.parameters())
        print(f"  {size}x{size} ({params / 1e6:.1f} M parameters)  " + "  ".join(f"{k} {v:6.1f}" for k, v in times.items())
              + f"   fused is {times['default'] / times['fused']:.2f}x the default")


def matmul_attention(q, k, v):
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).softmax(-1) @ v


def attention(dtype) -> None:
    print("attention (batch, heads, tokens, head channels): ms forward+backward, and relative error against float64")
    for b, h, n, d in ((32, 2, 256, 64), (8, 4, 256, 64)):
        q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
        k = k * 3  # logits with std 3
        exact = matmul_attention(q.double(), k.double(), v.double())
        row = []
        for name, f in (("sdpa", F.scaled_dot_product_attention), ("matmul+softmax", matmul_attention)):
            err = ((f(q, k, v).double() - exact).norm() / exact.norm()).item()
            row.append(f"{name} {ms(forward_backward(f, q, k, v)):7.2f} ms, error {err:.1e}")
        print(f"  {b:3d} {h:2d} {n:4d} {d:3d}   " + "   ".join(row))


# lower-case name fragments, matched in this order; autograd's backward nodes (ConvolutionBackward0, MmBackward0,
# ...) hold little self time but are counted with their kind
KINDS = {"convolution": ("conv",), "attention": ("scaled_dot_product", "scaleddotproduct"),
         "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "mmbackward"), "adamw": ("_fused_adamw", "adamw.step")}


def profile(dtype) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    precision = next(k for k, v in DTYPES.items() if v is dtype)
    print("share of the step's time (self CPU time of torch.profiler, two steps after two warm-ups)")
    cpu = torch.device("cpu")
    for size, batch in ((32, 32), (64, 8)):
        torch.manual_seed(0)
        net = ours(size)
        for kind, fn in (("train", train_step_fn("ours", net, batch, size, precision, cpu)),
                         ("sample", sample_step_fn("ours", net, 2 * batch, size, precision, cpu))):
            fn(), fn()
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(), fn()
            share = dict.fromkeys([*KINDS, "other"], 0.0)
            for event in prof.key_averages():
                name = event.key.lower()
                kind_of = next((k for k, keys in KINDS.items() if any(key.lower() in name for key in keys)), "other")
                share[kind_of] += event.self_cpu_time_total
            total = sum(share.values())
            print(f"  {size}x{size} {kind:6s} " + "  ".join(f"{k} {v / total:5.1%}" for k, v in share.items())
                  + f"   matrix work {(share['convolution'] + share['attention'] + share['matmul']) / total:5.1%}")


PARTS = {"conv": conv, "upsample": upsample, "adamw": adamw, "attention": attention, "profile": profile}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=list(PARTS), action="append", help="one part (repeatable); default all")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for part in args.only or list(PARTS):
        for precision in ("fp32",) if part == "adamw" else args.precision.split(","):
            print(f"\n[{precision}] ", end="")
            PARTS[part](DTYPES[precision])


if __name__ == "__main__":
    main()
