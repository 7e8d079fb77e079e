"""Conditional super-resolution (SR3): the low-res condition, a --task upscale run trained, resumed and used through
the CLI, and runs written before it still reading as they did."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely.checkpoint import load_run
from diffusely.config import CONFIG_VERSION
from diffusely.cli import main
from diffusely.conditions import LowRes, conditions
from diffusely.config import LatentConfig, RunConfig
from diffusely.data import DataError, to_tensor
from diffusely.nets import UNet
from diffusely.restoration import Downsample
from diffusely.train.data import check_task

from helpers import time_limit

TINY = ["--image-size", "16", "--channels", "8,16", "--blocks-per-level", "1", "--batch-size", "4", "--quiet"]
V0 = Path(__file__).parent / "fixtures" / "v0"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def sr_config(channels=1, size=16, scale=4) -> RunConfig:
    config = RunConfig()
    config.data.image_size, config.data.task, config.data.scale = size, "upscale", scale
    config.model.in_channels = config.model.out_channels = channels
    config.model.lowres_channels = channels + 1
    return config


def test_lowres_renders_the_same_in_training_and_sampling():
    images = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cond = LowRes(sr_config(3), images)
    cond.dropout = 0.0  # every sample keeps its low-res image
    rows, flip = torch.tensor([4, 1, 4]), torch.tensor([False, True, True])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    trained = cond.train(rows, gens, flip)["lowres"]
    x0 = to_tensor(images[rows])
    x0[1:] = x0[1:].flip(-1)  # the low-res image mirrors with its image
    sampled = cond.given(Downsample(4)(x0), "cpu")["lowres"]
    assert torch.equal(trained, sampled)
    assert trained.shape == (3, 4, 16, 16)
    # by hand: the top-left 4x4 block's mean of image 4's first channel, repeated over the block, and "given" = 1
    block = images[4, :4, :4, 0].double() / 127.5 - 1
    assert torch.allclose(trained[0, 0, :4, :4], block.mean().float().expand(4, 4), atol=1e-6)
    assert torch.equal(trained[:, 3], torch.ones(3, 16, 16))


def test_lowres_drops_out_to_its_null():
    images = torch.randint(0, 256, (4, 16, 16, 1), dtype=torch.uint8)
    cond = LowRes(sr_config(1), images)
    gens = [torch.Generator().manual_seed(i) for i in range(400)]
    rows = torch.arange(400) % 4
    drawn = cond.train(rows, gens, None)["lowres"]
    null = cond.null(400, "cpu")["lowres"]
    dropped = (drawn == null).flatten(1).all(1)
    assert 0.06 < dropped.float().mean() < 0.14  # DROPOUT = 0.1
    assert torch.equal(drawn[~dropped][:, 1], torch.ones(int((~dropped).sum()), 16, 16))
    cond.dropout = 1.0
    assert torch.equal(cond.train(rows[:5], gens[:5], None)["lowres"], null[:5])


def test_unet_reads_lowres_after_the_layout():
    torch.manual_seed(0)
    config = sr_config(1).model
    config.channels, config.groups, config.attention_levels = (8, 16), 8, ()
    net = UNet(config)
    assert net.input.in_channels == 1 + 2
    x, label = torch.randn(2, 1, 16, 16), torch.zeros(2)
    with pytest.raises(ValueError, match=r"lowres-conditional: give lowres \(2, 2, 16, 16\)"):
        net(x, label)
    plain = UNet(RunConfig().model)
    with pytest.raises(ValueError, match="trained without low-resolution images"):
        plain(torch.randn(1, 3, 16, 16), torch.zeros(1), lowres=torch.zeros(1, 4, 16, 16))


def test_old_configs_read_unchanged():
    for name in ("uncond", "classes", "layout", "text", "latent"):
        config = RunConfig.load(V0 / name / "config.json")
        assert config.data.task == "generate" and config.model.lowres_channels == 0
        assert "lowres" not in config.conditions and "lowres" not in UNet(config.model).config.concatenated
    assert [c.name for c in conditions(RunConfig.load(V0 / "classes" / "config.json"))] == ["class"]


def test_check_task_refuses_text_runs_and_scales_that_miss_the_latent_grid():
    config = sr_config(3)
    check_task(config)
    config.text.encoder = "scratch"
    with pytest.raises(DataError, match=r"--task upscale trains on images, not with text \(--text\): drop that"):
        check_task(config)
    config = sr_config(3, size=48, scale=3)
    config.latent = LatentConfig(autoencoder="/ae", factor=4)
    with pytest.raises(DataError, match="--scale 3 does not nest with the autoencoder's factor 4"):
        check_task(config)
    for scale in (2, 4, 8):
        config.data.scale = scale
        check_task(config)


@pytest.mark.parametrize("scale, channels", [(8, 1), (4, 1), (2, 4)])
def test_lowres_on_a_latent_grid_keeps_every_pixel(scale, channels):
    # a latent run (factor 4: a 32 x 32 image is 8 x 8 latents) reads y on its grid: pixels repeated (scale >= 4)
    # or 2 x 2 blocks stacked as channels (scale 2); either way y comes back exactly, and the null is all zeros
    config = sr_config(4, size=32, scale=scale)
    config.latent = LatentConfig(autoencoder="/ae", factor=4, latent_channels=4)
    config.model.lowres_channels = LowRes.channels_for(config, 3)
    assert config.model.lowres_channels == 3 * channels + 1
    y = torch.rand(2, 3, 32 // scale, 32 // scale, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lowres = LowRes(config)
    rendered = lowres.given(y, "cpu")["lowres"]
    assert rendered.shape == (2, 3 * channels + 1, 8, 8) and torch.equal(rendered[:, -1], torch.ones(2, 8, 8))
    ys = rendered[:, :-1]
    back = torch.nn.functional.pixel_shuffle(ys, 2) if scale == 2 else Downsample(scale // 4)(ys)
    assert torch.equal(back, y)
    assert torch.equal(lowres.render(y, torch.tensor([False, True]))[0], torch.zeros(3 * channels + 1, 8, 8))


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr")
    with time_limit(120):
        r = invoke("train", "phantoms", "--out", root / "run", "--steps", "2", "--grayscale", "--task", "upscale",
                   "--scale", "4", "--sample-every", "2", *TINY)
    assert r.exit_code == 0, r.output
    return root


def test_upscale_run_trains_resumes_and_upscales(sr_run):
    run = sr_run / "run"
    config = json.loads((run / "config.json").read_text())
    assert (config["data"]["task"], config["data"]["scale"], config["model"]["lowres_channels"]) == ("upscale", 4, 2)
    assert config["diffusion"]["residual"] is True and config["version"] == CONFIG_VERSION >= 3
    # a run of version 2 or before, which left the field out, denoised the whole image and still does
    older = {**config, "version": 2, "diffusion": {k: v for k, v in config["diffusion"].items() if k != "residual"}}
    assert RunConfig.from_dict(older).diffusion.residual is False
    assert RunConfig.from_dict({**older, "version": 3}).diffusion.residual is True
    assert load_run(run).denoiser.residual == "lowres"
    r = invoke("train", "--out", run, "--resume", "--steps", "3", "--quiet")
    assert r.exit_code == 0 and "from step 2 to 3" in r.output, r.output
    r = invoke("train", "--out", run, "--resume", "--steps", "4", "--scale", "2")
    assert r.exit_code == 1 and "--scale 2 conflicts" in r.output, r.output
    low = np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8)
    Image.fromarray(low).save(sr_run / "low.png")
    r = invoke("upscale", run, sr_run / "low.png", "--out", sr_run / "up", "-n", "3", "--steps", "2", "--quiet")
    assert r.exit_code == 0, r.output
    draws = np.stack([np.asarray(Image.open(sr_run / "up" / f"low.{i}.png"), dtype=np.float64) for i in range(3)])
    assert draws.shape == (3, 16, 16)
    mean = np.asarray(Image.open(sr_run / "up" / "low.mean.png"), dtype=np.float64)
    assert np.abs(mean - draws.mean(0)).max() <= 1.5  # each draw was rounded to uint8 once more than the mean
    std = np.asarray(Image.open(sr_run / "up" / "low.std.png"), dtype=np.float64)
    expected = np.clip(draws.std(0, ddof=1) / 127.5 / 0.25, 0, 1) * 255  # white at a std of 0.25 in [-1, 1] units
    assert np.abs(std - expected).mean() < 3


def test_a_latent_upscale_run_trains_and_upscales(tmp_path):
    # scale 2 on an autoencoder of factor 4: the 8 x 8 input reaches the 4 x 4 latents as 2 x 2 blocks in channels
    with time_limit(120):
        r = invoke("train-autoencoder", "phantoms", "--out", tmp_path / "ae", "--steps", "2", "--grayscale",
                   "--image-size", "16", "--channels", "8,16,16", "--batch-size", "4", "--quiet")
        assert r.exit_code == 0, r.output
        r = invoke("train", "phantoms", "--out", tmp_path / "run", "--steps", "2", "--grayscale", "--task", "upscale",
                   "--scale", "2", "--autoencoder", tmp_path / "ae", "--sample-every", "2", *TINY)
        assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["latent"]["factor"], config["model"]["in_channels"], config["model"]["lowres_channels"]) == (4, 4, 5)
    assert config["diffusion"]["residual"] is False and load_run(tmp_path / "run").denoiser.residual is None
    low = np.random.default_rng(2).integers(30, 220, (8, 8), dtype=np.uint8)
    Image.fromarray(low).save(tmp_path / "low.png")
    r = invoke("upscale", tmp_path / "run", tmp_path / "low.png", "--out", tmp_path / "up", "-n", "2", "--steps", "2",
               "--consistent", "--quiet")
    assert r.exit_code == 0, r.output
    for i in range(2):  # decoded to 16 x 16, then projected: each pools back to the input
        x = to_tensor(np.asarray(Image.open(tmp_path / "up" / f"low.{i}.png"))[None, ..., None])
        assert x.shape == (1, 1, 16, 16)
        assert float(((Downsample(2)(x) - to_tensor(low[None, ..., None])) / 2).pow(2).mean().sqrt()) <= 1 / 255


def test_consistent_upscale_pools_back_to_its_input(sr_run):
    low = np.random.default_rng(1).integers(30, 220, (4, 4), dtype=np.uint8)
    Image.fromarray(low).save(sr_run / "low2.png")
    # Heun: the 2-step model's estimates under Euler ancestral's last step are flat enough to project onto the blocks
    r = invoke("upscale", sr_run / "run", sr_run / "low2.png", "--out", sr_run / "up2", "--consistent", "--steps", "2",
               "--sampler", "heun", "--quiet")
    assert r.exit_code == 0, r.output
    x = to_tensor(np.asarray(Image.open(sr_run / "up2" / "low2.png"))[None, ..., None])
    y = to_tensor(low[None, ..., None])
    assert float(((Downsample(4)(x) - y) / 2).pow(2).mean().sqrt()) <= 1 / 255  # within a grey level, [0, 1] units
    assert (x - Downsample(4).pinv(y)).abs().max() > 0.1  # the detail is drawn, not the blocks copied


def test_upscale_defaults_to_euler_ancestral(sr_run):
    """No --sampler, --steps or --nfe: UPSCALE_SAMPLER (Euler ancestral, 35 steps; 1 dB ahead of Heun for SR3's
    samples on the phantoms, docs/restoration.md), the same draw as naming it."""
    Image.fromarray(np.full((4, 4), 90, np.uint8)).save(sr_run / "low3.png")
    outs = []
    for i, args in enumerate(((), ("--sampler", "euler_ancestral", "--steps", "35"), ("--sampler", "heun"))):
        outs.append(sr_run / f"default-{i}")
        r = invoke("upscale", sr_run / "run", sr_run / "low3.png", "--out", outs[-1], "--quiet", *args)
        assert r.exit_code == 0, r.output
    read = [np.asarray(Image.open(out / "low3.png")) for out in outs]
    assert np.array_equal(read[0], read[1]) and not np.array_equal(read[0], read[2])


def test_upscale_refuses_what_it_cannot_use(sr_run):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(sr_run / "wrong.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(sr_run / "rgb.png")
    run, out = sr_run / "run", sr_run / "x"
    cases = {
        ("upscale", run, sr_run / "wrong.png", "--out", out): "wrong is 8x8 but this run upscales 4x to 16x16, so "
                                                             "inputs must be 4x4",
        ("upscale", run, sr_run / "rgb.png", "--out", out): "is a colour image but the run makes greyscale ones",
        ("train", "phantoms", "--out", sr_run / "bad", "--task", "upscale", "--scale", "3", *TINY):
            "--scale: data.scale 3 does not divide data.image_size 16",
        ("train", "phantoms", "--out", sr_run / "bad", "--scale", "2", *TINY): "add --task upscale",
    }
    for args, message in cases.items():
        r = invoke(*args, "--steps", "1")
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert not (sr_run / "bad").exists() and not out.exists()


def test_std_map_is_written_at_its_fixed_scale(tmp_path):
    from diffusely.pipelines.restore import STD_WHITE, write_draws

    base = torch.linspace(-0.5, 0.5, 16 * 16).reshape(1, 1, 16, 16)
    spread = torch.linspace(0, 0.4, 16).reshape(1, 1, 1, 16)  # a std rising from 0 to past STD_WHITE across x
    draws = torch.cat([base - spread, base + spread])  # two draws: std = spread * sqrt(2)
    parts = write_draws(tmp_path, "x", draws)
    assert torch.allclose(parts["mean"], base[0]) and torch.allclose(parts["std"], (spread * 2 ** 0.5)[0].expand(1, 16, 16))
    written = np.asarray(Image.open(tmp_path / "x.std.png"), dtype=np.float64)
    expected = np.clip(spread.numpy()[0, 0, 0] * 2 ** 0.5 / STD_WHITE, 0, 1) * 255
    assert np.abs(written - expected[None, :]).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.0.png", "x.1.png", "x.mean.png", "x.std.png"]
