"""Training and sampling throughput: diffusely's U-Net against diffusers' UNet2DModel of the same shape.

Both networks get the same channels per level, blocks per level, attention resolutions, GroupNorm
groups, head size and FiLM (scale-shift) noise conditioning; their parameter counts are printed and
must agree within 5%. In one process, alternating between the two so that a noisy machine slows both
alike, it measures:
  train   training steps per second: forward, MSE loss, backward, AdamW step (batch --batch). Each network
          steps the AdamW its library trains with: ours as `diffusely train` builds it (fused, on CUDA and on
          CPUs from torch 2.4), diffusers' as its train_unconditional example does (torch.optim.AdamW's
          defaults); --same-optimizer gives diffusers ours, to compare the networks alone
  sample  images per second of sampling: forward passes under torch.inference_mode (batch --sample-batch)
  memory  the peak memory a training step takes beyond the weights and optimizer state (CPU: each network in
          a fresh process; see peak_memory_mb)
and prints ours/diffusers with the spread (min..max) over --repeats rounds, and the achieved matrix rate
(FLOPs of a step counted by torch.utils.flop_counter, times steps per second; each network's own FLOPs, and
ours does fewer: its upsampling is a 4-tap transposed conv where diffusers' is a 9-tap conv over a doubled input),
as a fraction of the device's peak where it is known (--peak-tflops, or the dense bf16 rate of a known GPU). --compile runs
both networks through torch.compile; on CUDA, fp32 rows use TF32 matmuls (as `diffusely train` does), and
--cuda-graphs adds a row of sampling passes replayed from CUDA graphs (diffusely.nets.fast, for both networks).
On a GPU the default batches are 256 (training) and 512 (sampling) at 32x32, 64 and 128 at 64x64.
Needs the `bench` extra (pip install -e .[bench]).

    python benchmarks/throughput.py                      # both sizes, fp32 and bf16; ~20 minutes on 2 cores
    python benchmarks/throughput.py --sizes 32 --precision fp32 --repeats 3
    bash benchmarks/gpu.sh                               # on a GPU: the table with and without compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusely.nets import UNet, UNetConfig
from diffusely.nets.fast import FastNet
from diffusely.train.common import fused_adamw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _diffusers import TensorOutput, parameters, require_diffusers, unet2d  # noqa: E402

SHAPES = {  # size: (channels per level, levels with attention) -- attention at 16x16 in both
    32: ((64, 128, 128), (1,)),
    64: ((128, 256, 256, 256), (2,)),
}
BLOCKS, GROUPS, HEAD = 2, 32, 64
# dense bf16 matrix peaks from the data sheets, matched against torch.cuda.get_device_name (longest name first)
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0}


def peak_tflops(device: torch.device, override: float) -> float | None:
    """The device's dense bf16 matrix peak in TFLOP/s: --peak-tflops, else a known GPU's data-sheet figure."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((PEAK_BF16_TFLOPS[k] for k in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True) if k in name), None)


def step_flops(fn) -> int:
    """FLOPs one call of fn performs (matrix multiplies and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def shape(size: int) -> UNetConfig:
    channels, attention = SHAPES[size]
    return UNetConfig(channels=channels, blocks_per_level=BLOCKS, attention_levels=attention, head_channels=HEAD,
                      groups=GROUPS)


def ours(size: int) -> torch.nn.Module:
    return UNet(shape(size))


def theirs(size: int) -> torch.nn.Module:
    return unet2d(shape(size), size)


def forward(name: str, net, x, t):
    # diffusers returns an output object; ours a tensor. Both take a (B,) noise label.
    return net(x, t) if name == "ours" else net(x, t).sample


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def fused_for(name: str, device: torch.device, same_optimizer: bool) -> bool:
    """Whether a network steps the fused AdamW: ours wherever torch has it, diffusers' only with --same-optimizer
    (see the module's docstring)."""
    return fused_adamw(device) and (name == "ours" or same_optimizer)


def train_step_fn(name, net, batch, size, precision, device, same_optimizer=False):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4,
                            **({"fused": True} if fused_for(name, device, same_optimizer) else {}))
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g, device=device)
    target = torch.randn(batch, 3, size, size, generator=g, device=device)
    t = torch.rand(batch, generator=g, device=device) * 999

    def step():
        with autocast(precision, device):
            loss = torch.nn.functional.mse_loss(forward(name, net, x, t).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def sample_step_fn(name, net, batch, size, precision, device):
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g, device=device)
    t = torch.full((batch,), 500.0, device=device)

    def step():
        with torch.inference_mode(), autocast(precision, device):
            forward(name, net, x, t)
    return step


def graphed_sample_step_fn(name, net, batch, size, precision, device):
    """Sampling forward passes replayed from a CUDA graph (diffusely.nets.fast.FastNet), for both networks."""
    graphed = FastNet(net if name == "ours" else TensorOutput(net), torch.bfloat16 if precision == "bf16" else None,
                      cuda_graphs=True)
    return sample_step_fn("ours", graphed, batch, size, "fp32", device)  # FastNet does the autocast


def timed(fn, iters: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def peak_memory_mb(name: str, size: int, batch: int, precision: str, device: torch.device,
                   same_optimizer: bool = False) -> float:
    """The memory a training step takes beyond what is held before it (weights, optimizer state, caches), at its
    peak. CUDA: the allocator's peak over a step minus what was allocated before it. CPU: in a fresh process whose
    malloc returns every block of 64 KiB or more to the system when it is freed (MALLOC_MMAP_THRESHOLD_, one
    arena), so that resident memory follows the live tensors; its high-water mark (reset through
    /proc/self/clear_refs) over a step, within ops included, minus the resident memory before the step."""
    if device.type == "cuda":
        net = (ours(size) if name == "ours" else theirs(size)).to(device)
        step = train_step_fn(name, net, batch, size, precision, device, same_optimizer)
        step()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}
    probe = json.dumps([name, size, batch, precision, same_optimizer])
    out = subprocess.run([sys.executable, __file__, "--memory-probe", probe],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def memory_probe(name: str, size: int, batch: int, precision: str, same_optimizer: bool) -> None:
    torch.manual_seed(0)
    net = ours(size) if name == "ours" else theirs(size)
    step = train_step_fn(name, net, batch, size, precision, torch.device("cpu"), same_optimizer)
    step()
    step()  # the optimizer state and oneDNN's caches now exist
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the resident memory now (Linux 4.0 and later)
    step()
    print((_status_kb("VmHWM") - before) / 1024)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(size: int, precision: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    nets = {"ours": ours(size).to(device), "diffusers": theirs(size).to(device)}
    params = {k: parameters(n) for k, n in nets.items()}
    if abs(params["ours"] / params["diffusers"] - 1) > 0.05:
        raise SystemExit(f"parameter counts differ by more than 5%: {params}")
    gpu = device.type == "cuda"  # a GPU needs larger batches to be busy: a 32x32 forward pass is 3 GFLOP an image
    batch = args.batch or {(32, False): 32, (64, False): 8, (32, True): 256, (64, True): 64}[size, gpu]
    sbatch = args.sample_batch or 2 * batch
    fns = {("train", k): train_step_fn(k, n, batch, size, precision, device, args.same_optimizer)
           for k, n in nets.items()}
    fns |= {("sample", k): sample_step_fn(k, n, sbatch, size, precision, device) for k, n in nets.items()}
    flops = {key: step_flops(fn) for key, fn in fns.items()}  # before compiling: the counter sees eager ops
    if args.cuda_graphs:
        for name, net in nets.items():
            fns["graphs", name] = graphed_sample_step_fn(name, net, sbatch, size, precision, device)
            flops["graphs", name] = flops["sample", name]
    if args.compile:
        # static shapes: called with a second batch size (training's, then sampling's), a compiled forward is
        # recompiled with a dynamic batch dimension, and dynamic-shape graphs lose inductor's layout optimisation
        # (on an H200, sampling compiled that way ran at 0.64x diffusers; compiled for sampling alone, 1.01x).
        # A fresh cache for each row: each size and precision adds compiled graphs of the same forward code,
        # and past dynamo's recompile limit it would silently fall back to eager
        torch._dynamo.reset()
        for name, net in nets.items():
            fns["train", name] = train_step_fn(name, torch.compile(net, dynamic=False), batch, size, precision, device,
                                               args.same_optimizer)
            fns["sample", name] = sample_step_fn(name, torch.compile(net, dynamic=False), sbatch, size, precision, device)
    kinds = ("train", "sample", "graphs") if args.cuda_graphs else ("train", "sample")
    iters = {kind: args.iters for kind in kinds}
    for fn in fns.values():  # warm-up: allocator, oneDNN primitive caches
        timed(fn, 2, device)
    rates = {key: [] for key in fns}
    for _ in range(args.repeats):  # alternate, so load on a shared machine hits both alike
        for (kind, name), fn in fns.items():
            per_item = batch if kind == "train" and args.per_image else (1 if kind == "train" else sbatch)
            rates[kind, name].append(iters[kind] * per_item / timed(fn, iters[kind], device))
    row = {"size": size, "precision": precision, "compile": args.compile, "params": params, "batch": batch,
           "sample_batch": sbatch, "same_optimizer": args.same_optimizer}
    for kind in kinds:
        ratios = [a / b for a, b in zip(rates[kind, "ours"], rates[kind, "diffusers"])]
        row[kind] = {"ours": statistics.median(rates[kind, "ours"]), "diffusers": statistics.median(rates[kind, "diffusers"]),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
        items = (batch if args.per_image else 1) if kind == "train" else sbatch  # what one unit of the rate is
        per_call = {name: flops[kind, name] / items for name in nets}
        row[kind]["tflops"] = {name: per_call[name] * row[kind][name] / 1e12 for name in nets}
    if not args.no_memory and not args.compile:  # the probe builds eager networks: no memory row under --compile
        row["memory_mb"] = {k: peak_memory_mb(k, size, batch, precision, device, args.same_optimizer) for k in nets}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="32,64")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="steps per timed round")
    p.add_argument("--batch", type=int, default=0, help="training batch (default 32 at 32x32, 8 at 64x64; on a GPU 256 and 64)")
    p.add_argument("--sample-batch", type=int, default=0, help="sampling batch (default twice the training batch)")
    p.add_argument("--same-optimizer", action="store_true",
                   help="diffusers steps our AdamW too (fused where torch has it), to compare the networks alone")
    p.add_argument("--per-image", action="store_true", help="report training in images/s instead of steps/s")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks (after a warm-up compile)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time sampling passes replayed from CUDA graphs (the 'graphs' row; both networks)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's bf16 matrix peak, for the achieved fraction")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        memory_probe(*json.loads(args.memory_probe))
        return
    require_diffusers()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.cuda_graphs and device.type != "cuda":
        raise SystemExit("--cuda-graphs needs a CUDA GPU")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, compile {args.compile}, "
          f"bf16 peak {f'{peak:g} TFLOP/s' if peak else 'unknown'}")
    kernels = {n: "fused" if fused_for(n, device, args.same_optimizer) else "default" for n in ("ours", "diffusers")}
    print(f"AdamW: ours {kernels['ours']}, diffusers {kernels['diffusers']}"
          f"{' (--same-optimizer)' if args.same_optimizer else ''}")
    rows = []
    for size in map(int, args.sizes.split(",")):
        for precision in args.precision.split(","):
            r = measure(size, precision, args, device)
            rows.append(r)
            print(f"\n{size}x{size} {precision}: params ours {r['params']['ours']:,} diffusers {r['params']['diffusers']:,}; "
                  f"batch {r['batch']} train, {r['sample_batch']} sample")
            for kind, unit in (("train", "img/s" if args.per_image else "steps/s"), ("sample", "img/s"), ("graphs", "img/s")):
                if kind not in r:
                    continue
                k = r[kind]
                rate = "  ".join(f"{n} {k['tflops'][n]:.3g} TFLOP/s" + (f" ({k['tflops'][n] / peak:.1%} of the bf16 peak)" if peak else "")
                                 for n in ("ours", "diffusers"))
                print(f"  {kind:6s} ours {k['ours']:8.2f} {unit}  diffusers {k['diffusers']:8.2f} {unit}  "
                      f"ratio {k['ratio']:.2f} (spread {k['ratio_min']:.2f}..{k['ratio_max']:.2f});  {rate}")
            if "memory_mb" in r:
                m = r["memory_mb"]
                print(f"  memory ours {m['ours']:.0f} MB  diffusers {m['diffusers']:.0f} MB  ratio {m['ours'] / max(m['diffusers'], 1e-9):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
