"""The speed and memory options a CPU can check: autocast selection, activation checkpointing, torch.compile."""

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from diffusely.cli import main
from diffusely.nets import UNet, UNetConfig
from diffusely.train import common

from helpers import TINY_ARGS


def test_autocast_selection(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert common.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert common.autocast_dtype("fp32", cpu) is None
    for fast, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, fast=fast: fast)
        assert common.bf16_is_fast(cuda) is fast  # Ampere and newer have native bf16; older GPUs emulate it
        assert common.autocast_dtype("auto", cuda) is expected
        assert common.autocast_dtype("fp32", cuda) is None
    with common.autocast("bf16", cpu):  # the context the loop enters: a matmul comes out in bf16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    with common.autocast("fp32", cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32


def test_activation_checkpointing_gives_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(1,), head_channels=8, groups=4))
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # zero-initialised output layers would give zero gradients
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.1)
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0.3, -0.5])

    def grads():
        net.zero_grad()
        net(x, t).square().mean().backward()
        return {k: p.grad.clone() for k, p in net.named_parameters()}

    plain = grads()
    import diffusely.nets.unet as unet
    calls = []
    monkeypatch.setattr(unet, "checkpoint", lambda f, *a, **k: calls.append(f) or torch.utils.checkpoint.checkpoint(f, *a, **k))
    net.checkpointing = True
    recomputed = grads()
    # every residual and attention block ran under checkpoint: 2 + 2 down/middle res, 3 up res, 2 attention + middle
    assert len(calls) == sum(isinstance(m, (unet.ResBlock, unet.Attention)) for m in net.modules())
    for k in plain:
        torch.testing.assert_close(recomputed[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)
    with torch.no_grad():  # no recomputation to save for: checkpoint is not called
        calls.clear()
        net(x, t)
        assert not calls


def test_compile_and_checkpointing_flags_train_the_same_weights(tiny_folder, tmp_path, monkeypatch):
    """--compile goes through torch.compile (here with dynamo's eager backend: tracing without a C compiler),
    --activation-checkpointing through checkpoint; both train what the plain run trains."""
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **k: compiled.append(m) or real_compile(m, backend="eager"))
    common_args = [str(tiny_folder), "--steps", "2", "--sample-every", "100", *TINY_ARGS, "--precision", "fp32"]
    runs = {"plain": [], "compiled": ["--compile"], "checkpointed": ["--activation-checkpointing"]}
    for name, flags in runs.items():
        r = CliRunner().invoke(main, ["train", *common_args, *flags, "--out", str(tmp_path / name)], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    assert len(compiled) == 1
    plain = load_file(str(tmp_path / "plain" / "checkpoint.safetensors"))
    for name in ("compiled", "checkpointed"):
        other = load_file(str(tmp_path / name / "checkpoint.safetensors"))
        assert plain.keys() == other.keys()  # the compiled wrapper leaves no _orig_mod. prefix in the checkpoint
        for k in plain:
            torch.testing.assert_close(other[k], plain[k], rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
