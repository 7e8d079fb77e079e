"""Text-to-image as `train --text` makes it by default: latent diffusion on an autoencoder of the run's own, with the
prompt reaching the U-Net in word order (cross-attention to position-aware tokens, each starting from its phrase;
optionally their mean on the noise embedding)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely.checkpoint import load_checkpoint, load_run, read_config
from diffusely.cli import main
from diffusely.data.shapes import render_shapes
from diffusely.nets import UNet, UNetConfig
from diffusely.nets.layers import CrossAttention, coordinates, masked_mean
from diffusely.options import checkpoint_step
from diffusely.text import ScratchTextEncoder, TextUNet, WordTokenizer

SWAPPED = ("a red circle left of a blue square", "a blue circle left of a red square")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_swapping_two_objects_colours_changes_the_conditioning():
    """The two prompts hold the same words in another order. Word order must reach the network: the token of
    "circle" (the same word at the same place in both) must know whether red or blue came before it, and the
    pooled embedding the noise embedding gets (where the model has one) must differ. A bag of words (no position
    embeddings) gives both prompts the same pooled embedding and the same "circle" token, to float rounding."""
    torch.manual_seed(0)
    tokenizer = WordTokenizer.build(list(SWAPPED))
    encoder = ScratchTextEncoder(len(tokenizer), tokenizer.max_tokens, width=32, layers=2, heads=4, ngram=3).eval()
    unet = TextUNet(UNet(UNetConfig(in_channels=4, out_channels=4, channels=(16, 32), blocks_per_level=1,
                                    attention_levels=(0, 1), head_channels=16, groups=8, context_dim=32,
                                    pooled_text=True)), encoder)
    ids, mask = tokenizer.encode(list(SWAPPED) + [SWAPPED[0]])
    with torch.no_grad():
        context = encoder(ids, mask)  # (3, tokens, 32)
        pooled = unet.unet.text_emb(masked_mean(context, mask))  # what is added to the noise embedding
    circle = tokenizer.ids(SWAPPED[0]).index(tokenizer.index["circle"])
    assert circle == tokenizer.ids(SWAPPED[1]).index(tokenizer.index["circle"])
    # the same prompt twice: identical to float rounding, the yardstick of "more than float noise"
    assert _relative(context[2], context[0]) < 1e-6 and _relative(pooled[2], pooled[0]) < 1e-6
    assert _relative(context[1, circle], context[0, circle]) > 1e-3
    assert _relative(masked_mean(context, mask)[1], masked_mean(context, mask)[0]) > 1e-3
    assert _relative(pooled[1], pooled[0]) > 1e-3
    # and the network's output: the same noisy latent, the two prompts, different estimates
    x, label = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1), torch.zeros(2)
    for p in unet.parameters():  # the zero-initialised output layers would hide the text entirely
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    with torch.no_grad():
        out = unet(x, label, text=ids[:2], text_mask=mask[:2])
    assert _relative(out[1], out[0]) > 1e-3


@pytest.mark.parametrize("ngram", [0, 3])
def test_the_word_convolution_starts_each_word_from_its_phrase(ngram):
    """With no transformer layers, "circle" is the same token after "red" as after "blue" unless the encoder's
    convolution over neighbouring words (text.ngram) reads its adjective."""
    torch.manual_seed(0)
    prompts = ["a red circle", "a blue circle"]
    tokenizer = WordTokenizer.build(prompts)
    encoder = ScratchTextEncoder(len(tokenizer), tokenizer.max_tokens, width=16, layers=0, heads=4, ngram=ngram)
    ids, mask = tokenizer.encode(prompts)
    with torch.no_grad():
        tokens = encoder(ids, mask)
    assert (_relative(tokens[1, 2], tokens[0, 2]) > 1e-3) == (ngram == 3)  # "circle" after red / after blue


def test_placed_queries_let_a_word_ask_for_a_place():
    """Features alike at every position (a convolution's, away from the borders) give every position the same
    cross-attention unless the queries carry their coordinates (CrossAttention's positions)."""
    torch.manual_seed(0)
    x, context = torch.randn(1, 16, 1, 1).expand(1, 16, 4, 4), torch.randn(1, 3, 8)
    for positions in (False, True):
        attention = CrossAttention(2, 16, 8, head_channels=8, groups=4, positions=positions)
        torch.nn.init.normal_(attention.proj.weight, std=0.1)  # zero-initialised: the block would be the identity
        with torch.no_grad():
            out = attention(x, context)
        assert ((out - out[..., :1, :1]).abs().max() > 1e-4) == positions
    default = UNet(UNetConfig(channels=(16,), attention_levels=(0,), head_channels=8, groups=4, context_dim=8))
    assert default.text_emb is None and all(m.positions is not None for m in default.modules()
                                            if isinstance(m, CrossAttention))  # version 4: placed, no pooled
    features = coordinates((3, 5))  # rows in flatten order; the first feature is sin(pi/2 y), y on [-1, 1]
    assert features.shape == (15, 16)
    assert torch.allclose(features[:, 0].reshape(3, 5), torch.tensor([-1.0, 0.0, 1.0])[:, None].expand(3, 5), atol=1e-6)


def _captioned_folder(root, count=12, size=32):
    """Shapes images with their captions, the first four in a .txt beside the image, the rest in metadata.jsonl."""
    data = render_shapes(count, size=size, seed=3, max_shapes=2)
    root.mkdir()
    rows = []
    for i, (image, caption) in enumerate(zip(data.images, data.captions)):
        Image.fromarray(image).save(root / f"{i:03d}.png")
        if i < 4:
            (root / f"{i:03d}.txt").write_text(caption)
        else:
            rows.append(json.dumps({"file_name": f"{i:03d}.png", "text": caption}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return data.captions


def test_a_64_pixel_text_run_is_latent_on_crops_and_samples_64_pixels(tmp_path):
    """At 64 x 64 the own autoencoder trains on 32-pixel crops and encodes whole images to 16 x 16 x 4 latents; the
    samples decode back to 64 x 64."""
    captions = _captioned_folder(tmp_path / "photos", count=6, size=64)
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tmp_path / "photos"), "--text", "--out", str(run), "--steps", "1",
                                  "--autoencoder-steps", "1", "--image-size", "64", "--channels", "16,32",
                                  "--batch-size", "2", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads((run / "autoencoder" / "config.json").read_text())["train"]["crop_size"] == 32
    assert tuple(read_config(run).sample_shape) == (4, 16, 16)
    r = CliRunner().invoke(main, ["sample", str(run), "-n", "1", "--steps", "1", "--quiet", "--prompt", captions[0],
                                  "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert [Image.open(p).size for p in (tmp_path / "s").glob("*.png")] == [(64, 64)]


def test_a_text_run_trains_its_autoencoder_then_samples_and_resumes(tmp_path):
    """A user's captioned folder of 32 x 32 images through `train --text`: the autoencoder first, into
    RUN/autoencoder, then the text model on its latents; samples decode to images; a prompt with unknown words
    warns; --resume reuses the autoencoder as it is and continues the text model."""
    captions = _captioned_folder(tmp_path / "photos")
    run = tmp_path / "run"
    common = ["--channels", "16,32", "--blocks-per-level", "1", "--batch-size", "4", "--checkpoint-every", "1",
              "--sample-every", "100", "--quiet"]
    r = CliRunner().invoke(main, ["train", str(tmp_path / "photos"), "--text", "--out", str(run), "--steps", "2",
                                  "--autoencoder-steps", "2", *common], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"autoencoder: training {(run / 'autoencoder').resolve()} (2 steps)" in r.output
    config = json.loads((run / "config.json").read_text())
    assert config["latent"]["autoencoder"] == str((run / "autoencoder").resolve())
    assert config["latent"]["autoencoder_step"] == 2 and config["model"]["in_channels"] == 4  # 8 x 8 x 4 latents
    assert config["model"]["attention_levels"] == [0, 1] and config["text"]["encoder"] == "scratch"
    assert config["diffusion"]["sigma_data"] == 1.0 and config["data"]["flip"] is False
    assert sorted(WordTokenizer.load(run / "tokenizer.json").vocab[3:]) == sorted(set(" ".join(captions).split()))
    ae_weights = (run / "autoencoder" / "checkpoint.safetensors").read_bytes()

    r = CliRunner().invoke(main, ["sample", str(run), "-n", "2", "--steps", "2", "--quiet", "--prompt",
                                  "a large red circle on a navy background", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert [Image.open(p).size for p in sorted((tmp_path / "s").glob("*.png"))] == [(32, 32), (32, 32)]
    with pytest.warns(UserWarning, match="never saw in its captions, read as unknown: crimson, disc"):
        r = CliRunner().invoke(main, ["sample", str(run), "-n", "1", "--steps", "2", "--quiet", "--prompt",
                                      "a crimson disc", "--out", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output

    r = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--steps", "3", "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"autoencoder: {(run / 'autoencoder').resolve()} (trained, 2 steps)" in r.output
    assert load_run(run).step == load_checkpoint(run).step == 3
    assert (run / "autoencoder" / "checkpoint.safetensors").read_bytes() == ae_weights

    # the run moved (its config still names the old place): it samples as before, with the autoencoder it carries
    def pixels(run_dir, out):
        r = CliRunner().invoke(main, ["sample", str(run_dir), "-n", "1", "--steps", "2", "--quiet", "--prompt",
                                      "a red circle", "--out", str(tmp_path / out)])
        assert r.exit_code == 0, r.output
        return [np.asarray(Image.open(p)) for p in sorted((tmp_path / out).glob("*.png"))]
    before = pixels(run, "before")
    run.rename(tmp_path / "moved")
    assert np.array_equal(pixels(tmp_path / "moved", "after")[0], before[0])
    # and it resumes there, its config naming the autoencoder's new place from then on
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "moved"), "--resume", "--steps", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "moved" / "config.json").read_text())
    assert config["latent"]["autoencoder"] == str((tmp_path / "moved" / "autoencoder").resolve())


def test_pixels_and_small_images_keep_pixel_diffusion_and_a_half_trained_autoencoder_says_how_to_go_on(tmp_path):
    """--pixels (and images too small for an 8 x 8 latent) train text models in pixels, as before; a run stopped
    while its autoencoder trained tells --resume to run the starting command again."""
    from diffusely.options import new_run_config, resumed_config
    from diffusely.train.latents import prepare_own_autoencoder

    options = {"text": True, "image_size": 32}
    assert new_run_config("shapes", options, run_dir=tmp_path / "a").latent is not None
    assert new_run_config("shapes", {**options, "pixels": True}, run_dir=tmp_path / "a").latent is None
    assert new_run_config("shapes", {**options, "image_size": 16}, run_dir=tmp_path / "a").latent is None
    assert new_run_config("shapes", options).latent is None  # no run directory (a library caller): as before
    assert new_run_config("shapes", options).data.max_shapes == 3
    with pytest.raises(ValueError, match="--autoencoder-steps sets the autoencoder a text run trains for itself"):
        prepare_own_autoencoder(new_run_config("shapes", {**options, "pixels": True}, run_dir=tmp_path / "a"),
                                tmp_path / "a", steps=10)
    (tmp_path / "b" / "autoencoder").mkdir(parents=True)
    (tmp_path / "b" / "autoencoder" / "config.json").write_text("{}")
    try:
        resumed_config(tmp_path / "b", None, {})
    except ValueError as e:
        assert "holds only its autoencoder" in str(e) and "without --resume" in str(e)
    else:
        raise AssertionError("resuming a run with only its autoencoder must say how to go on")


def test_a_latent_text_run_draws_higher_noise_levels_and_samples_ancestrally_unless_its_config_says_otherwise(
        tmp_path):
    """The latent default trains at ln(sigma) ~ N(0.75, 1.2^2), where layouts are decided, and samples with Euler
    ancestral at 35 steps; pixel text runs keep EDM's -1.2 and Heun 18, and a --config keeps its own sampler and
    P_mean (moved by ln(1 / sigma_data) for unit-variance latents, as any latent run's)."""
    import math

    from diffusely.config import RunConfig
    from diffusely.options import new_run_config

    options = {"text": True, "image_size": 32}
    noise_and_sampler = lambda d: (d.P_mean, d.sampler, d.sample_steps)  # noqa: E731
    latent = new_run_config("shapes", options, run_dir=tmp_path / "a").diffusion
    assert noise_and_sampler(latent) == (0.75, "euler_ancestral", 35)
    pixels = new_run_config("shapes", {**options, "pixels": True}, run_dir=tmp_path / "a").diffusion
    assert noise_and_sampler(pixels) == (-1.2, "heun", 18)
    assert noise_and_sampler(new_run_config("shapes", {}, run_dir=tmp_path / "a").diffusion) == (-1.2, "heun", 18)
    config = RunConfig()
    config.diffusion.P_mean, config.diffusion.sampler, config.diffusion.sample_steps = -0.3, "dpmpp_2m", 20
    (tmp_path / "config.json").write_text(config.to_json())
    made = new_run_config("shapes", options, str(tmp_path / "config.json"), run_dir=tmp_path / "a")
    assert made.latent is not None and made.diffusion.P_mean == pytest.approx(-0.3 + math.log(2))
    assert (made.diffusion.sampler, made.diffusion.sample_steps) == ("dpmpp_2m", 20)


def test_a_long_latent_text_run_trains_compiled_and_a_missing_compiler_trains_eager(tmp_path, monkeypatch):
    """From COMPILE_FROM_STEPS steps a latent text run compiles its network (1.29-1.36x the images a second here),
    unless --no-compile says otherwise; short runs and pixel runs stay eager. On a CPU with no C++ compiler a run
    asked to compile warns and trains the plain module rather than failing inside inductor at its first step."""
    import torch._inductor.cpp_builder as cpp_builder
    import torch._inductor.exc as inductor_exc

    from diffusely.config import RunConfig
    from diffusely.options import new_run_config
    from diffusely.train.loop import Dist, training_net

    options, run = {"text": True, "image_size": 32}, tmp_path / "a"
    assert new_run_config("shapes", options, run_dir=run).train.compile  # 4000 steps by default
    assert not new_run_config("shapes", {**options, "steps": 1999}, run_dir=run).train.compile
    assert new_run_config("shapes", {**options, "steps": 2000}, run_dir=run).train.compile
    assert not new_run_config("shapes", {**options, "compile": False}, run_dir=run).train.compile
    assert not new_run_config("shapes", {**options, "pixels": True}, run_dir=run).train.compile

    config, model = RunConfig(), torch.nn.Linear(2, 2)
    config.train.compile = True
    def no_compiler():  # as inductor says it (patching its config instead left the next test's search failing)
        raise inductor_exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.warns(UserWarning, match="needs a C[+][+] compiler"):
        assert training_net(model, config, Dist(0, 1, 0)) is model


def test_resuming_a_latent_text_run_with_pixels_is_refused(tmp_path):
    """--pixels decides a text run's space when it starts; on --resume of a latent run it is refused, naming the
    run's autoencoder, not ignored (the run would go on in latents)."""
    from diffusely.config import ConfigError
    from diffusely.options import new_run_config, resumed_config

    config = new_run_config("shapes", {"text": True, "image_size": 32}, run_dir=tmp_path)
    (tmp_path / "config.json").write_text(config.to_json())
    assert resumed_config(tmp_path, None, {})[0].latent is not None
    with pytest.raises(ConfigError, match="--pixels conflicts with the run .* latent.autoencoder"):
        resumed_config(tmp_path, None, {"pixels": True})
    pixels = new_run_config("shapes", {"text": True, "image_size": 32, "pixels": True}, run_dir=tmp_path / "p")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(pixels.to_json())
    assert resumed_config(tmp_path / "p", None, {"pixels": True})[0].latent is None  # agrees: a no-op


def test_a_network_too_deep_for_the_latent_is_refused_before_the_autoencoder_trains(tmp_path):
    """Five levels need 64 px on latents 4 times smaller: said before minutes of autoencoder training, not after."""
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "shapes", "--text", "--out", str(run), "--steps", "1", "--autoencoder-steps",
                                  "1", "--channels", "8,8,8,8,8", "--batch-size", "2", "--quiet"])
    assert r.exit_code == 1 and "is not divisible by 64" in r.output and "on latents 4 times smaller" in r.output, \
        r.output
    assert "Traceback" not in r.output and not (run / "autoencoder").exists()
    assert "use --image-size 64\n" in r.output  # no size below 32 fits: one to suggest, not "64 or 64"


def test_autoencoder_steps_other_than_the_started_autoencoders_are_refused(tmp_path):
    """An autoencoder begun for N steps keeps them (the command run again goes on to N): another --autoencoder-steps
    is refused, naming both, not ignored."""
    from diffusely.options import new_run_config
    from diffusely.train.latents import own_autoencoder_config, prepare_own_autoencoder

    config = new_run_config("shapes", {"text": True, "image_size": 32}, run_dir=tmp_path)
    (tmp_path / "autoencoder").mkdir()
    (tmp_path / "autoencoder" / "config.json").write_text(own_autoencoder_config(config, 2).to_json())
    with pytest.raises(ValueError, match="--autoencoder-steps 5: .* begun for 2 steps"):
        prepare_own_autoencoder(config, tmp_path, steps=5, progress=False)


def test_a_text_run_started_in_the_ui_trains_its_own_autoencoder_and_stops_inside_it(tmp_path):
    """The page's Train tab makes the CLI's run: a text run on 32 px shapes gets its own autoencoder, trained first,
    and the Stop button ends that training at a checkpoint, which Start then goes on from."""
    pytest.importorskip("gradio")
    from diffusely.ui.guard import Roots
    from diffusely.ui.state import Context
    from diffusely.ui.training import start

    ctx = Context(Roots.of(tmp_path))
    # image size, steps, batch, lr, channels, classes, layout, text, checkpoint every, sample every
    form = (32, 3, 4, 0, "8,16", False, False, True, 0, 0)
    ae = tmp_path / "text" / "autoencoder"
    for steps_done in (1, 2):  # Start, Stop after a step; Start again goes on from that checkpoint
        start(ctx, False, "shapes", "text", *form)
        job = ctx.jobs.get(str(tmp_path / "text"))
        job.stop.set()  # asked after each step of the autoencoder
        job.wait(120)
        assert job.error is None and "stopped while training the run's autoencoder" in job.message
        assert checkpoint_step(ae) == steps_done
    assert not (tmp_path / "text" / "config.json").exists()  # the text model has not begun
    assert json.loads((ae / "config.json").read_text())["data"]["image_size"] == 32
    # a run with no autoencoder of its own goes straight on to training
    from diffusely.config import RunConfig
    from diffusely.train.latents import prepare_own_autoencoder

    assert prepare_own_autoencoder(RunConfig(), tmp_path / "pixels") is True
