"""Fast inference for a trained network: bf16 autocast and CUDA graphs for fixed-shape sampling.

A sampler calls the network tens of times on tensors of the same shapes. On a GPU a small U-Net's
forward pass is hundreds of short kernels, and launching them from Python can take longer than running
them; a CUDA graph records the launches once per input shape and replays them in one call.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 autocast pays on CUDA GPUs from Ampere on and on CPUs with native bf16 (AVX512-BF16, AMX): 1.6x a
    training step and 2.2x sampling on a 2-core AMD EPYC. Elsewhere bf16 is emulated and slower: float32 stays."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The dtype to autocast training or sampling to, or None for float32: 'bf16' always, 'auto' where bf16 is
    fast (bf16_is_fast), 'fp32' never. bf16 keeps float32's range, so training needs no loss scaling (unlike
    fp16); it moves samples by about a quarter of one 8-bit level on average (0.22 on a CPU, 0.28 on an H200;
    benchmarks/NOTES.md)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and bf16_is_fast(device)):
        return torch.bfloat16
    return None


class FastNet(nn.Module):
    """net(x, noise_label, **cond) for sampling: under bf16 autocast when `dtype` is bfloat16 (the output
    comes back in x's dtype), and replayed from a CUDA graph per input signature when `cuda_graphs`.

    Graphs are for inference only: gradients are refused, and the weights must stay where they are (an
    in-place update, as the EMA does, is seen by the next replay; replacing a parameter tensor is not).
    Each distinct set of input shapes captures one graph (a batch, the last smaller batch, the doubled batch of
    classifier-free guidance); they share one memory pool. Outputs are copies, so a sampler may keep them.
    """

    def __init__(self, net: nn.Module, dtype: Optional[torch.dtype] = None, cuda_graphs: bool = False):
        super().__init__()
        device = next(net.parameters()).device
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need the network on a CUDA device; it is on {device.type}")
        self.net = net
        self.dtype = dtype
        self.cuda_graphs = cuda_graphs
        self._graphs: dict = {}
        self._pool = None

    def _eager(self, x: torch.Tensor, noise_label: torch.Tensor, cond: dict) -> torch.Tensor:
        if self.dtype is None:
            return self.net(x, noise_label, **cond)
        # no weight-cast cache under graphs: a graph would read cached copies that the autocast frees on exit
        with torch.autocast(x.device.type, dtype=self.dtype, cache_enabled=not self.cuda_graphs):
            return self.net(x, noise_label, **cond).to(x.dtype)

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, **cond) -> torch.Tensor:
        if not self.cuda_graphs:
            return self._eager(x, noise_label, cond)
        if torch.is_grad_enabled():
            raise RuntimeError("CUDA graphs are for sampling: call under torch.no_grad() or torch.inference_mode()")
        inputs = {"x": x, "noise_label": noise_label, **{k: v for k, v in cond.items() if v is not None}}
        if not all(isinstance(v, torch.Tensor) for v in inputs.values()):
            return self._eager(x, noise_label, cond)  # a non-tensor argument cannot be a static graph input
        key = tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in sorted(inputs.items()))
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(inputs)
            except RuntimeError as e:  # e.g. an op that waits on the GPU, which a capture cannot hold
                warnings.warn(f"CUDA graph capture failed, so the network runs without graphs: {str(e).splitlines()[0]}",
                              RuntimeWarning, stacklevel=2)
                self.cuda_graphs = False
                return self._eager(x, noise_label, cond)
        graph, static_inputs, static_output = self._graphs[key]
        with torch.inference_mode():  # the static tensors are inference tensors, whatever mode the caller is in
            for k, v in inputs.items():
                static_inputs[k].copy_(v)
            graph.replay()
        # a copy, now: the next replay of this graph, or of another in the shared pool, overwrites static_output
        return static_output.clone()

    @torch.inference_mode()
    def _capture(self, inputs: dict):
        with torch.cuda.device(inputs["x"].device):  # the network's GPU, which need not be the current one
            return self._capture_here(inputs)

    def _capture_here(self, inputs: dict):
        static = {k: v.clone() for k, v in inputs.items()}  # outside the graph pool: no capture writes over them

        def run():
            s = dict(static)
            return self._eager(s.pop("x"), s.pop("noise_label"), s)

        side = torch.cuda.Stream()  # warm-up off the default stream: cuDNN and cuBLAS set up outside the capture
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # one memory pool for all of this network's graphs: safe because they never run at the same time and each
        # output is copied out before the next replay, whose intermediates may then reuse that memory
        with torch.cuda.graph(graph, pool=self._pool):
            output = run()
        return graph, static, output


def sampling_precision(net: nn.Module) -> str:
    """'bf16' for a network that fast_net runs under bf16 autocast, else 'fp32' (what changes the samples;
    CUDA graphs replay the same kernels and do not)."""
    return "bf16" if isinstance(net, FastNet) and net.dtype == torch.bfloat16 else "fp32"


def fast_net(net: nn.Module, precision: str = "fp32", cuda_graphs: Optional[bool] = None) -> nn.Module:
    """net wrapped for sampling (FastNet), or net itself when there is nothing to do. precision: one of
    PRECISIONS (see autocast_dtype); cuda_graphs: None for on where the network is on a CUDA device."""
    if isinstance(net, FastNet):
        net = net.net
    device = next(net.parameters()).device
    dtype = autocast_dtype(precision, device)
    graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
    return FastNet(net, dtype, graphs) if dtype is not None or graphs else net
