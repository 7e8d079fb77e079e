"""The speed and memory options a CPU can check: autocast selection, activation checkpointing, torch.compile."""

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import diffusely.nets.unet as unet
from diffusely.cli import main
from diffusely.config import TrainConfig
from diffusely.nets import UNet, UNetConfig
from diffusely.nets import fast as fast_module
from diffusely.train import common

from helpers import TINY_ARGS, wake_zero_layers, write_captions


def test_autocast_selection(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert common.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert common.autocast_dtype("fp32", cpu) is None
    for fast, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, fast=fast: fast)
        assert fast_module.bf16_is_fast(cuda) is fast  # Ampere and newer have native bf16; older GPUs emulate it
        assert common.autocast_dtype("auto", cuda) is expected
        assert common.autocast_dtype("fp32", cuda) is None
    with common.autocast("bf16", cpu):  # the context the loop enters: a matmul comes out in bf16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    with common.autocast("fp32", cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32


def _spy_checkpoint(monkeypatch) -> list:
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(unet, "checkpoint", lambda f, *a, **k: calls.append(type(f).__name__) or real(f, *a, **k))
    return calls


def test_fused_adamw_where_torch_has_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for version, on_cpu in (("2.3.1+cpu", False), ("2.4.0", True), ("2.13.0+cpu", True), ("3.0.0", True)):
        monkeypatch.setattr(torch, "__version__", version)
        assert common.fused_adamw(cpu) is on_cpu
        assert common.fused_adamw(cuda)
    monkeypatch.undo()
    if not common.fused_adamw(cpu):
        pytest.skip(f"torch {torch.__version__} has no fused AdamW for CPUs")
    torch.manual_seed(0)
    nets = [torch.nn.Linear(3, 2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = nets[0].weight.detach().clone()
    fused = common.adamw(nets[0], TrainConfig(betas=(0.8, 0.95), weight_decay=0.5), 1e-2, cpu)
    assert fused.defaults["fused"] and fused.defaults["betas"] == (0.8, 0.95) and fused.defaults["weight_decay"] == 0.5
    loop = torch.optim.AdamW(nets[1].parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.5)
    x = torch.randn(5, 3)
    for net, opt in zip(nets, (fused, loop)):  # the fused kernel takes the per-tensor loop's steps
        for _ in range(3):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert (nets[0].weight - start).abs().max() > 1e-3  # it moved


def test_resume_keeps_this_optimizers_kernel():
    """A state saved by the per-tensor AdamW (runs from before fused CPU AdamW) resumes fused, and a fused one
    resumes on the loop where the loop is what this optimizer runs; the moments and step counts carry over."""
    cpu = torch.device("cpu")
    if not common.fused_adamw(cpu):
        pytest.skip(f"torch {torch.__version__} has no fused AdamW for CPUs")
    net = torch.nn.Linear(3, 2)
    loop = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(4, 3)).sum().backward()
    loop.step()
    fused = common.adamw(net, TrainConfig(), 1e-2, cpu)
    common.load_optimizer(fused, loop.state_dict())
    assert fused.param_groups[0]["fused"] is True and not fused.param_groups[0]["foreach"]
    assert torch.equal(fused.state[net.weight]["exp_avg"], loop.state[net.weight]["exp_avg"])
    fused.step()  # the fused kernel takes the loaded state
    assert float(fused.state[net.weight]["step"]) == 2
    again = torch.optim.AdamW(net.parameters(), lr=1e-2)
    common.load_optimizer(again, fused.state_dict())
    assert not again.param_groups[0]["fused"]


def test_activation_checkpointing_gives_the_same_gradients(monkeypatch):
    """With dropout (recomputed with the same random numbers) and cross-attention to text tokens."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(1,), head_channels=8, groups=4,
                          dropout=0.2, context_dim=6))
    wake_zero_layers(net)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([0.3, -0.5])
    context, mask = torch.randn(2, 4, 6, generator=g), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)

    def grads():
        net.zero_grad()
        torch.manual_seed(7)  # the dropout masks
        net(x, t, context=context, context_mask=mask).square().mean().backward()
        return {k: p.grad.clone() for k, p in net.named_parameters()}

    plain = grads()
    calls = _spy_checkpoint(monkeypatch)
    net.checkpointing = True
    recomputed = grads()
    # every residual, self-attention and cross-attention block ran under checkpoint, and nothing else did
    blocks = [type(m).__name__ for m in net.modules() if isinstance(m, (unet.ResBlock, unet.Attention, unet.CrossAttention))]
    assert sorted(calls) == sorted(blocks) and "CrossAttention" in calls
    for k in plain:
        assert plain[k].abs().sum() > 0, k
        torch.testing.assert_close(recomputed[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)
    calls.clear()
    with torch.no_grad():  # no backward pass to save memory for: checkpoint is not called
        net(x, t, context=context, context_mask=mask)
    assert not calls


def test_compile_and_checkpointing_flags_train_the_same_weights(tiny_folder, tmp_path, monkeypatch):
    """--compile goes through torch.compile (here with dynamo's eager backend: tracing without a C compiler),
    --activation-checkpointing through checkpoint (in a text model too); both train what the plain run trains,
    gradients included (the optimizer's moments are in the checkpoint)."""
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **k: compiled.append(m) or real_compile(m, backend="eager"))
    calls = _spy_checkpoint(monkeypatch)
    write_captions(tiny_folder)
    for text in ([], ["--text"]):
        common_args = [str(tiny_folder), "--steps", "2", "--sample-every", "100", *TINY_ARGS, "--precision", "fp32", *text]
        runs = {"plain": [], "compiled": ["--compile"], "checkpointed": ["--activation-checkpointing"]}
        checkpointed = {}
        for name, flags in runs.items():
            compiled.clear(), calls.clear()
            out = tmp_path / f"{name}{'-text' if text else ''}"
            r = CliRunner().invoke(main, ["train", *common_args, *flags, "--out", str(out)], catch_exceptions=False)
            assert r.exit_code == 0, r.output
            assert len(compiled) == (name == "compiled")
            checkpointed[name] = len(calls)
        assert checkpointed["plain"] == checkpointed["compiled"] == 0 and checkpointed["checkpointed"] > 0
        if text:
            assert "CrossAttention" in calls
        suffix = "-text" if text else ""
        plain = load_file(str(tmp_path / f"plain{suffix}" / "checkpoint.safetensors"))
        assert any(k.endswith("exp_avg") and v.abs().sum() > 0 for k, v in plain.items())
        for name in ("compiled", "checkpointed"):
            other = load_file(str(tmp_path / f"{name}{suffix}" / "checkpoint.safetensors"))
            assert plain.keys() == other.keys()  # the compiled wrapper leaves no _orig_mod. prefix in the checkpoint
            for k in plain:
                torch.testing.assert_close(other[k], plain[k], rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")


def test_speed_settings_change_on_resume(tiny_folder, tmp_path):
    out = tmp_path / "run"
    args = [str(tiny_folder), "--steps", "1", "--sample-every", "100", *TINY_ARGS, "--out", str(out)]
    assert CliRunner().invoke(main, ["train", *args, "--activation-checkpointing"]).exit_code == 0
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--steps", "2", "--quiet",
                                  "--no-activation-checkpointing"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    from diffusely.checkpoint import read_config
    assert read_config(out).train.activation_checkpointing is False and read_config(out).train.steps == 2
