"""Class conditioning and classifier-free guidance: label and caption dropout, guidance 0 and 1, a toy
two-class model that draws the class asked for, and the --class flags."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely.checkpoint import load_run
from diffusely.cli import main
from diffusely.config import DataConfig, RunConfig, TextConfig, TrainConfig
from diffusely.denoisers import ClassifierFreeGuidance, Denoiser
from diffusely.nets import UNet, UNetConfig
from diffusely.text import ScratchTextEncoder, TextUNet
from diffusely.train import loop, train

from helpers import TINY_ARGS, write_captions


def randomize(net):
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)


def test_label_and_caption_dropout_drop_about_one_in_ten(tiny_folder, tmp_path, monkeypatch):
    write_captions(tiny_folder)
    seen = []
    original = loop.denoising_loss

    def spy(denoiser, x0, sigma, weight, noise, **cond):
        seen.append({k: v.clone() for k, v in cond.items()})
        return original(denoiser, x0, sigma, weight, noise, **cond)
    monkeypatch.setattr(loop, "denoising_loss", spy)
    cfg = RunConfig(model=UNetConfig(channels=(8, 8), blocks_per_level=1, attention_levels=(), groups=4),
                    data=DataConfig(source=str(tiny_folder), image_size=8, classes=True),
                    train=TrainConfig(steps=25, batch_size=16, checkpoint_every=25, sample_every=25),
                    text=TextConfig(encoder="scratch", width=8, layers=1, heads=1))
    train(cfg, tmp_path / "run", progress=False)
    labels = torch.cat([c["class_labels"] for c in seen])
    null_caption = torch.cat([(c["text_mask"].sum(1) == 1) & (c["text"][:, 0] == 2) for c in seen])  # <null> is id 2
    assert len(labels) == 400
    assert 0.06 < (labels == 4).float().mean() < 0.14  # label 4 (num_classes) is the null label
    assert 0.06 < null_caption.float().mean() < 0.14
    assert (labels < 4).float().mean() > 0.8  # and the rest are real labels
    assert cfg.data.class_names == ("circle", "cross", "square", "triangle")


@pytest.mark.parametrize("kind", ["class", "text"])
def test_guidance_0_and_1_are_the_unconditional_and_conditional_denoisers(kind):
    torch.manual_seed(0)
    if kind == "class":
        net = UNet(UNetConfig(channels=(8, 16), num_classes=3, groups=4, attention_levels=(1,), head_channels=8))
        cond, uncond = {"class_labels": torch.tensor([0, 2])}, {"class_labels": torch.tensor([3, 3])}
    else:
        net = TextUNet(UNet(UNetConfig(channels=(8, 16), groups=4, attention_levels=(1,), head_channels=8,
                                       context_dim=8)), ScratchTextEncoder(10, 5, width=8, layers=1, heads=2))
        cond = {"text": torch.tensor([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]]),
                "text_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)}
        uncond = {"text": torch.tensor([[2, 0, 0, 0, 0]] * 2), "text_mask": torch.tensor([[1, 0, 0, 0, 0]] * 2).bool()}
    randomize(net)
    D = Denoiser(net.eval(), "edm")
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        d_cond, d_uncond = D(x, sigma, **cond), D(x, sigma, **uncond)
        assert not torch.allclose(d_cond, d_uncond)
        assert torch.equal(ClassifierFreeGuidance(D, 1.0, uncond)(x, sigma, **cond), d_cond)
        assert torch.equal(ClassifierFreeGuidance(D, 0.0, uncond)(x, sigma, **cond), d_uncond)
        guided = ClassifierFreeGuidance(D, 3.0, uncond)(x, sigma, **cond)
        assert torch.allclose(guided, d_uncond + 3 * (d_cond - d_uncond), atol=1e-5)


@pytest.fixture(scope="module")
def two_class_run(tmp_path_factory):
    """All-black and all-white 8x8 images (a little noise each), class-conditional, trained briefly."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    for name, level in (("black", 20), ("white", 235)):
        (root / "images" / name).mkdir(parents=True)
        for i in range(8):
            noisy = np.clip(level + rng.normal(0, 8, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / "images" / name / f"{i}.png")
    cfg = RunConfig(model=UNetConfig(channels=(16, 16), blocks_per_level=1, attention_levels=(), groups=4),
                    data=DataConfig(source=str(root / "images"), image_size=8, classes=True),
                    train=TrainConfig(steps=120, batch_size=16, lr=3e-3, warmup_steps=10, checkpoint_every=120,
                                      sample_every=120, ema_halflife_images=200))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    train(cfg, root / "run", progress=False)
    return root / "run"


def _mean_brightness(folder):
    return [np.asarray(Image.open(p)).mean() for p in sorted(folder.glob("*.png"))]


def test_class_conditional_model_draws_the_class_asked_for(two_class_run, tmp_path):
    assert RunConfig.load(two_class_run / "config.json").data.class_names == ("black", "white")
    for name in ("black", "white"):
        r = CliRunner().invoke(main, ["sample", str(two_class_run), "-n", "8", "--steps", "6", "--class", name,
                                      "--out", str(tmp_path / name), "--quiet"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    black, white = _mean_brightness(tmp_path / "black"), _mean_brightness(tmp_path / "white")
    # chance would get all 16 right once in 65,536 tries
    assert max(black) < 100 and min(white) > 155, (black, white)
    rows = [json.loads(line) for line in (tmp_path / "white" / "metadata.jsonl").read_text().splitlines()]
    assert rows[0] == {"file_name": "000000.png", "class": "white"} and len(rows) == 8


def test_classes_cycle_by_name_or_index(two_class_run, tmp_path):
    r = CliRunner().invoke(main, ["sample", str(two_class_run), "-n", "4", "--steps", "6", "--class", "black,1",
                                  "--guidance", "3", "--out", str(tmp_path / "s"), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    b0, w1, b2, w3 = _mean_brightness(tmp_path / "s")
    assert max(b0, b2) < 100 < 155 < min(w1, w3)


def test_conditioning_errors_are_one_line(two_class_run, trained_unconditional):
    def sample(run, *args):
        return CliRunner().invoke(main, ["sample", str(run), "-n", "1", "--steps", "2", "--quiet", *args])
    r = sample(two_class_run, "--class", "grey")
    assert r.exit_code == 1 and "unknown class 'grey'; this run's classes: black, white (or an index 0..1)" in r.output
    r = sample(two_class_run, "--guidance", "3")
    assert r.exit_code == 1 and "guidance steers towards a class, a prompt or a layout" in r.output
    r = sample(two_class_run, "--prompt", "a white square")
    assert r.exit_code == 1 and "trained without text; train with --text" in r.output
    r = sample(trained_unconditional, "--class", "0")
    assert r.exit_code == 1 and "trained without classes; train with --classes" in r.output
    # no --class on a class run: unconditional samples, through the null label
    r = sample(two_class_run)
    assert r.exit_code == 0, r.output


@pytest.fixture
def trained_unconditional(tiny_folder, tmp_path):
    out = tmp_path / "plain"
    r = CliRunner().invoke(main, ["train", str(tiny_folder), "--out", str(out), "--steps", "1", *TINY_ARGS])
    assert r.exit_code == 0, r.output
    return out


def test_reverse_takes_a_class(two_class_run, tmp_path):
    r = CliRunner().invoke(main, ["reverse", str(two_class_run), "--out", str(tmp_path / "r.png"), "--steps", "4",
                                  "--class", "white"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert load_run(two_class_run).config.model.num_classes == 2
