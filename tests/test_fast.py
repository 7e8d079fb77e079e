"""Fast sampling (nets.fast): bf16 autocast on any device; CUDA graphs where a GPU is present (skipped otherwise)."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffusely.checkpoint import load_run
from diffusely.cli import main
from diffusely.nets import UNet, UNetConfig
from diffusely.nets import fast
from diffusely.nets.fast import FastNet, autocast_dtype, fast_net, sampling_precision
from diffusely.pipelines import generate

from helpers import TINY_ARGS, wake_zero_layers

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _net(device="cpu", **kw):
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(16, 32), blocks_per_level=1, attention_levels=(1,), head_channels=16, groups=4, **kw))
    return wake_zero_layers(net).to(device).eval().requires_grad_(False)


@pytest.fixture
def trained(tmp_path, tiny_folder):
    """A 4-step run, trained on the GPU where there is one (bf16 autocast, fused AdamW, TF32)."""
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tiny_folder), "--out", str(out), "--steps", "4", *TINY_ARGS],
                           catch_exceptions=False)
    assert r.exit_code == 0 and "trained 4 steps" in r.output, r.output
    return out


def _relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_precision_selection(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp32", cpu) is None
    for native, expected in ((True, torch.bfloat16), (False, None)):
        # a GPU from Ampere on has native bf16; older ones emulate it, and auto keeps float32 there
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n)
        assert autocast_dtype("auto", gpu) is expected and autocast_dtype("fp32", gpu) is None
    for native, expected in ((True, torch.bfloat16), (False, None)):
        # a CPU with AVX512-BF16 or AMX likewise (this machine's own answer is whatever it is: here it is decided)
        monkeypatch.setattr(fast, "bf16_is_fast", lambda device, n=native: n)
        assert autocast_dtype("auto", cpu) is expected
    with pytest.raises(ValueError, match="choose one of: auto, fp32, bf16"):
        autocast_dtype("fp16", cpu)


def test_auto_trains_a_video_network_on_a_cpu_in_float32(monkeypatch):
    # bf16 Conv3d weight gradients came back NaN on an AVX512-BF16 CPU: auto keeps 3-D training in float32 there
    from diffusely.train.common import autocast

    monkeypatch.setattr(fast, "bf16_is_fast", lambda device: True)
    cpu = torch.device("cpu")
    assert autocast("auto", cpu, dims=2).fast_dtype is torch.bfloat16
    assert not isinstance(autocast("auto", cpu, dims=3), torch.autocast)
    assert autocast("bf16", cpu, dims=3).fast_dtype is torch.bfloat16  # asked for: given


def test_load_run_wraps_the_network_as_asked(trained):
    assert isinstance(load_run(trained).denoiser.net, UNet)  # the default: float32, as trained
    net = load_run(trained, precision="bf16").denoiser.net
    assert isinstance(net, FastNet) and net.dtype is torch.bfloat16 and not net.cuda_graphs
    assert sampling_precision(net) == "bf16" and sampling_precision(load_run(trained).denoiser.net) == "fp32"


def test_nothing_to_do_leaves_the_network_alone():
    net = _net()
    assert fast_net(net, "fp32") is net and fast_net(net, "fp32", None) is net  # on a CPU: no autocast, no graphs
    wrapped = fast_net(net, "bf16")
    assert isinstance(wrapped, FastNet) and wrapped.net is net
    assert fast_net(wrapped, "fp32") is net  # unwrapped again, not wrapped twice
    with pytest.raises(ValueError, match="CUDA graphs need the network on a CUDA device; it is on cpu"):
        FastNet(net, cuda_graphs=True)


def test_a_failed_capture_falls_back_to_the_eager_network(monkeypatch):
    """Where a capture fails (an op that waits on the GPU), sampling goes on without graphs, with a warning."""
    net = _net()
    wrapped = FastNet(net)
    wrapped.cuda_graphs = True  # as on a GPU; the capture itself is made to fail as CUDA would

    def fail(inputs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(wrapped, "_capture", fail)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.1, -0.4])
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="capture failed, so the network runs without graphs: operation not"):
            out = wrapped(x, t)
        torch.testing.assert_close(out, net(x, t))
        assert not wrapped.cuda_graphs and not wrapped._graphs
        wrapped(x, t)  # no second attempt, no second warning


def test_bf16_autocast_runs_the_network_in_bf16():
    net = _net()
    x, t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0.1, -0.4, 0.7])
    with torch.inference_mode():
        full, half = net(x, t), FastNet(net, torch.bfloat16)(x, t)
    assert half.dtype is torch.float32  # back in the input's dtype for the sampler's arithmetic
    err = _relative_error(half, full)
    assert 1e-4 < err < 3e-2, err  # bf16's 8-bit mantissa: near, and not identical (the autocast really ran)


def test_sample_precision_option(tmp_path, trained):
    out = trained
    samples = {}
    for precision in ("auto", "fp32", "bf16"):
        r = CliRunner().invoke(main, ["sample", str(out), "-n", "2", "--steps", "3", "--format", "npy", "--quiet",
                                      "--precision", precision, "--out", str(tmp_path / precision)], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        samples[precision] = np.stack([np.load(tmp_path / precision / f"{i:06d}.npy") for i in range(2)]).astype(int)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert np.array_equal(samples["auto"], samples["bf16" if fast.bf16_is_fast(device) else "fp32"])
    assert np.abs(samples["bf16"] - samples["fp32"]).mean() < 3  # of 255 levels
    r = CliRunner().invoke(main, ["sample", str(out), "--precision", "fp16"])
    assert r.exit_code != 0 and "'fp16' is not one of 'auto', 'fp32', 'bf16'" in r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(main, ["sample", str(out), "-n", "1", "--cuda-graphs", "--quiet"])
        assert r.exit_code != 0 and "CUDA graphs need the network on a CUDA device" in r.output
        assert "Traceback" not in r.output


# ----------------------------------------------------------------------------------------- CUDA graphs


@cuda
def test_graph_replay_equals_the_eager_network():
    net = _net("cuda", context_dim=8)
    graphed = FastNet(net, cuda_graphs=True)
    g = torch.Generator("cuda").manual_seed(0)
    outputs = []
    with torch.inference_mode():
        for batch in (4, 4, 3, 4):  # a shape, the same shape again, the last smaller batch, the first shape again
            x = torch.randn(batch, 3, 16, 16, device="cuda", generator=g)
            t = torch.randn(batch, device="cuda", generator=g)
            context = torch.randn(batch, 5, 8, device="cuda", generator=g)
            mask = torch.rand(batch, 5, device="cuda", generator=g) > 0.3
            mask[:, 0] = True
            eager = net(x, t, context=context, context_mask=mask)
            replayed = graphed(x, t, context=context, context_mask=mask)
            torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-6)
            outputs.append((replayed, eager))
    assert len(graphed._graphs) == 2  # one graph per input signature
    for replayed, eager in outputs:  # each output is its own copy: later replays did not overwrite it
        torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():  # weights updated in place (as the EMA does) are seen by the next replay
        for p in net.parameters():
            p.mul_(0.5)
        x, t = torch.randn(4, 3, 16, 16, device="cuda", generator=g), torch.zeros(4, device="cuda")
        context, mask = torch.randn(4, 5, 8, device="cuda", generator=g), torch.ones(4, 5, dtype=torch.bool, device="cuda")
        torch.testing.assert_close(graphed(x, t, context=context, context_mask=mask),
                                   net(x, t, context=context, context_mask=mask), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="CUDA graphs are for sampling"):
        graphed(x, t, context=context, context_mask=mask)


@cuda
def test_graphs_under_no_grad_and_inference_mode_with_class_labels():
    """A graph captured under one of torch.no_grad and torch.inference_mode replays under the other; class
    labels are static inputs too (a guided batch: each label and the null label)."""
    net = _net("cuda", num_classes=3)
    graphed = FastNet(net, torch.bfloat16, cuda_graphs=True)
    g = torch.Generator("cuda").manual_seed(0)
    outputs = []
    # a batch and its guided double, alternating as guidance inside and outside its sigma interval calls them
    for mode, batch in ((torch.no_grad, 6), (torch.inference_mode, 12), (torch.no_grad, 6), (torch.inference_mode, 12)):
        with mode():
            x, t = torch.randn(batch, 3, 16, 16, device="cuda", generator=g), torch.randn(batch, device="cuda", generator=g)
            labels = torch.randint(0, 4, (batch,), device="cuda", generator=g)  # 3: the null label
            with torch.autocast("cuda", dtype=torch.bfloat16):
                eager = net(x, t, class_labels=labels).float()
            outputs.append((graphed(x, t, class_labels=labels), eager))
            torch.testing.assert_close(*outputs[-1], rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 2
    for replayed, eager in outputs:  # the graphs share a memory pool: earlier outputs are copies, still intact
        torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-5)


@cuda
def test_graphed_bf16_sampling_matches_eager(trained):
    """End to end on the GPU, from a run trained there: samples with graphs equal those without, and bf16 stays
    near float32."""
    out = trained
    loss = float((out / "log.csv").read_text().splitlines()[-1].split(",")[1])
    assert 0 < loss < 10  # the GPU training step (bf16 autocast, fused AdamW) gave a finite loss
    samples = {}
    for precision, graphs in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
        run = load_run(out, "cuda", precision=precision, cuda_graphs=graphs)
        samples[precision, graphs] = torch.cat(list(generate(run, 5, steps=4, batch_size=2, progress=False)))
    torch.testing.assert_close(samples["fp32", True], samples["fp32", False], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(samples["bf16", True], samples["bf16", False], rtol=1e-5, atol=1e-5)
    err = _relative_error(samples["bf16", False], samples["fp32", False])
    assert 0 < err < 5e-2, err  # a run of 4 steps is still near its zero-initialised output layer: small, not 0

