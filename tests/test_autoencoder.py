"""The autoencoder and latent diffusion: shapes, training, the latent scale, latent runs through the CLI, resume."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from diffusely.cli import main
from diffusely.config import AutoencoderRunConfig, AutoencoderTrainConfig, DataConfig
from diffusely.data import Dataset, DataError, load_dataset, to_tensor
from diffusely.nets.autoencoder import (DEFAULT_CHANNELS, Autoencoder, AutoencoderConfig, LatentSpace, frequency_loss,
                                        latent_scale, psnr)
from diffusely.train.autoencoder import reconstruct, train_autoencoder

from helpers import TINY_ARGS

GROUPS = 2
TINY_AE = ["--image-size", "16", "--channels", "8,16,16", "--batch-size", "4", "--quiet"]


def tiny_config(folder, steps: int, **train) -> AutoencoderRunConfig:
    return AutoencoderRunConfig(model=AutoencoderConfig(channels=(8, 16, 16), groups=GROUPS),
                                data=DataConfig(source=str(folder), image_size=16),
                                train=AutoencoderTrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=5,
                                                             **train))


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("in_channels,latent_channels", [(3, 4), (1, 2)])
def test_encoder_and_decoder_shapes(factor, in_channels, latent_channels):
    cfg = AutoencoderConfig(in_channels=in_channels, latent_channels=latent_channels,
                            channels=tuple(c // 4 for c in DEFAULT_CHANNELS[factor]))
    assert cfg.factor == factor
    ae = Autoencoder(cfg)
    x = torch.rand(2, in_channels, 32, 16) * 2 - 1
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (2, latent_channels, 32 // factor, 16 // factor)
    assert ae.decode(mean).shape == x.shape
    with pytest.raises(ValueError, match="not divisible"):
        ae.encode(torch.zeros(1, in_channels, 18, 18))


def test_frequency_loss_is_zero_only_for_equal_images():
    x = torch.rand(3, 3, 8, 8)
    assert frequency_loss(x, x).abs().max() == 0
    assert (frequency_loss(x.flip(-1), x) > 0).all()
    # a constant offset d shows only in the DC coefficient: sqrt(64) d over 64 coefficients
    assert torch.allclose(frequency_loss(x + 0.5, x), torch.full((3,), 0.5 / 8), atol=1e-6)


def test_training_reduces_reconstruction_error(tiny_folder, tmp_path):
    images = to_tensor(load_dataset(str(tiny_folder), 16).images)
    torch.manual_seed(0)  # train_autoencoder seeds the same weights
    before = psnr(reconstruct(Autoencoder(AutoencoderConfig(channels=(8, 16, 16))), images), images).mean()
    result = train_autoencoder(tiny_config(tiny_folder, 30, checkpoint_every=30, sample_every=15), tmp_path / "ae",
                               progress=False)
    from diffusely.checkpoint import load_autoencoder
    ae = load_autoencoder(tmp_path / "ae").autoencoder
    after = psnr(reconstruct(ae, images), images).mean()
    assert after > before + 3, (before, after)
    assert result["step"] == 30
    assert sorted(p.name for p in (tmp_path / "ae" / "reconstructions").iterdir()) == ["step-0000015.png",
                                                                                         "step-0000030.png"]


def test_latent_scale_gives_unit_variance():
    z = torch.randn(50, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 3.0 + 1.5
    scale, shift = latent_scale(z)
    scaled = (z - shift) * scale
    assert scaled.double().var().item() == pytest.approx(1.0, rel=1e-6)
    assert scaled.double().mean().item() == pytest.approx(0.0, abs=1e-6)
    ae = Autoencoder(AutoencoderConfig(channels=(8, 16, 16)))
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    space = LatentSpace(ae, scale, shift)
    assert torch.allclose(space.encode(x), (ae.encode(x)[0] - shift) * scale)
    assert torch.allclose(space.decode(space.encode(x)), ae.decode(ae.encode(x)[0]), atol=1e-5)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """An autoencoder and a latent diffusion run on it, both tiny, through the CLI."""
    from diffusely.data.shapes import write_shapes_folder
    root = tmp_path_factory.mktemp("latent")
    write_shapes_folder(root / "images", 24, size=16, seed=1)
    runner = CliRunner()
    r = runner.invoke(main, ["train-autoencoder", str(root / "images"), "--out", str(root / "ae"), "--steps", "4",
                             *TINY_AE], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["train", str(root / "images"), "--out", str(root / "run"), "--autoencoder",
                             str(root / "ae"), "--steps", "2", "--sample-every", "2", "--flip", *TINY_ARGS], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return root


def test_latent_run_config_and_cached_latents(latent_run):
    cfg = json.loads((latent_run / "run" / "config.json").read_text())
    lc = cfg["latent"]
    assert lc["autoencoder"] == str((latent_run / "ae").resolve()) and lc["factor"] == 4 and lc["latent_channels"] == 4
    assert lc["autoencoder_step"] == 4 and len(lc["autoencoder_digest"]) == 16
    assert cfg["model"]["in_channels"] == 4 and cfg["diffusion"]["sigma_data"] == 1.0
    assert cfg["diffusion"]["P_mean"] == pytest.approx(-1.2 + math.log(2))
    cached = load_file(str(latent_run / "run" / "latents.safetensors"))
    assert cached["images"].shape == cached["flipped"].shape == (24, 4, 4, 4)
    assert cached["images"].double().var().item() == pytest.approx(1.0, rel=2e-3)  # float16 storage
    assert (latent_run / "run" / "samples" / "step-0000002.png").is_file()  # decoded: 16 x 16 tiles
    from PIL import Image
    assert Image.open(latent_run / "run" / "samples" / "step-0000002.png").size == (4 * 18 + 2, 4 * 18 + 2)


def test_latent_run_samples_images(latent_run, tmp_path):
    r = CliRunner().invoke(main, ["sample", str(latent_run / "run"), "-n", "3", "--steps", "2", "--format", "npy",
                                  "--out", str(tmp_path / "s"), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    images = [np.load(p) for p in sorted((tmp_path / "s").glob("*.npy"))]
    assert len(images) == 3 and all(im.shape == (16, 16, 3) and im.dtype == np.uint8 for im in images)
    r = CliRunner().invoke(main, ["reverse", str(latent_run / "run"), "--out", str(tmp_path / "rev.png"), "--steps", "3"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["info", str(latent_run / "run")], catch_exceptions=False)
    assert r.exit_code == 0 and "4 x 4 from the autoencoder" in r.output, r.output


def test_latent_run_without_its_autoencoder(latent_run, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(str(latent_run / "ae"), str(moved))
    try:
        r = CliRunner().invoke(main, ["sample", str(latent_run / "run"), "-n", "1", "--quiet"])
        assert r.exit_code == 1
        message = r.output.strip()
        assert len(message.splitlines()) == 1, message
        assert "autoencoder" in message and str((latent_run / "ae").resolve()) in message, message
    finally:
        shutil.move(str(moved), str(latent_run / "ae"))


def test_autoencoder_run_is_not_a_diffusion_run(latent_run):
    r = CliRunner().invoke(main, ["sample", str(latent_run / "ae"), "-n", "1", "--quiet"])
    assert r.exit_code == 1 and "autoencoder run" in r.output


def test_autoencoder_resume_is_exact(tiny_folder, tmp_path):
    # the discriminator switches on at step 3, inside the resumed half; crops and flips are drawn per image
    kw = dict(disc_weight=0.5, disc_start=3, disc_layers=2, disc_channels=8, crop_size=12, checkpoint_every=100,
              sample_every=100, log_every=1)
    train_autoencoder(tiny_config(tiny_folder, 6, **kw), tmp_path / "whole", progress=False)
    train_autoencoder(tiny_config(tiny_folder, 2, **kw), tmp_path / "half", progress=False)
    train_autoencoder(tiny_config(tiny_folder, 6, **kw), tmp_path / "half", resume=True, progress=False)
    whole = load_file(str(tmp_path / "whole" / "checkpoint.safetensors"))
    resumed = load_file(str(tmp_path / "half" / "checkpoint.safetensors"))
    assert whole.keys() == resumed.keys() and any(k.startswith("disc_optim.") for k in whole)
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    log = lambda run: [line.split(",")[:3] for line in (tmp_path / run / "log.csv").read_text().splitlines()]  # noqa: E731
    assert log("whole") == log("half") and len(log("whole")) == 1 + 6


def test_autoencoder_trains_on_given_images_as_on_its_folder(tiny_folder, tmp_path):
    # benchmarks hand the frames of clips in memory; the same images must train the same weights, bit for bit
    config = tiny_config(tiny_folder, 3, checkpoint_every=100, sample_every=100)
    train_autoencoder(config, tmp_path / "folder", progress=False)
    given = load_dataset(str(tiny_folder), 16)
    train_autoencoder(tiny_config(tiny_folder, 3, checkpoint_every=100, sample_every=100), tmp_path / "given",
                      progress=False, data=given)
    a, b = (load_file(str(tmp_path / run / "checkpoint.safetensors")) for run in ("folder", "given"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(given) > 4
    fewer = Dataset(given.images[:4], None, None, None, None, "fewer")
    assert train_autoencoder(tiny_config(tiny_folder, 1), tmp_path / "fewer", progress=False, data=fewer)["images"] == 4
    small = Dataset(given.images[:, :8, :8], None, None, None, None, "small")
    floats = Dataset(given.images.astype(np.float32), None, None, None, None, "floats")
    with pytest.raises(DataError, match=r"uint8 images \(N, 16, 16, C\) at its image size"):
        train_autoencoder(tiny_config(tiny_folder, 3), tmp_path / "floats", progress=False, data=floats)
    with pytest.raises(DataError, match=r"uint8 images \(N, 16, 16, C\) at its image size"):
        train_autoencoder(tiny_config(tiny_folder, 3), tmp_path / "small", progress=False, data=small)
