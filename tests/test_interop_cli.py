"""The interop commands end to end: `import-diffusers` then every reading command, `export` (diffusely and diffusers
formats), sampler names people know through --sampler, generation parameters in every PNG `sample` writes and
`sample --from-png` drawing them again bit for bit, and the bad input each command refuses in one line."""

import importlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from diffusely.checkpoint import MODEL, load_run, write_config, write_schedule
from diffusely.cli import main
from diffusely.config import DataConfig, DiffusionConfig, RunConfig
from diffusely.data import to_uint8
from diffusely.nets.unet import UNet, UNetConfig
from diffusely._files import save_tensors
from diffusely.pipelines import generate
from diffusely.samplers import SAMPLERS

diffusers = importlib.import_module("diffusers") if os.environ.get("CI") else pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

V0 = Path(__file__).parent / "fixtures" / "v0"


def cli(*args, code: int = 0):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r.output


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture
def imported(tmp_path) -> Path:
    """A random 8x8 UNet2DModel with a v-prediction DDPM scheduler, imported through the CLI."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.01)  # a smooth field: the adaptive reference of optimize-schedule stays short
    unet.save_pretrained(tmp_path / "pipe" / "unet", safe_serialization=True)
    diffusers.DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "pipe" / "scheduler")
    out = cli("import-diffusers", tmp_path / "pipe", "--out", tmp_path / "run")
    assert "v prediction over 1000 timesteps" in out
    return tmp_path / "run"


def test_an_imported_diffusers_model_works_with_every_command(imported, tmp_path):
    facts = json.loads(cli("info", imported, "--json"))
    assert facts["schedule"].startswith("DDPMScheduler: linear betas over 1000 timesteps")
    assert facts["network"].startswith("diffusers UNet2DModel") and "steps_trained" not in facts
    run = load_run(imported, precision="auto")  # as the CLI loads it
    for sampler in SAMPLERS:
        budget = [] if sampler == "adaptive" else ["--nfe", 5]
        cli("sample", imported, "-n", 2, "--sampler", sampler, *budget, "--out", tmp_path / sampler, "--quiet")
        if sampler == "heun":  # the CLI draws what the library draws: --nfe 5 buys heun 3 steps
            ours = to_uint8(torch.cat(list(generate(run, 2, sampler="heun", steps=3, progress=False))))
            assert np.array_equal(np.stack([pixels(tmp_path / "heun" / f"00000{i}.png") for i in (0, 1)]), ours)
    assert len({pixels(tmp_path / s / "000000.png").tobytes() for s in SAMPLERS}) > len(SAMPLERS) // 2
    out = cli("optimize-schedule", imported, "--sampler", "euler", "--steps", 3, "-n", 1)
    assert "optimised" in out and json.loads((imported / "schedules.json").read_text())["euler"]["3"]
    cli("reverse", imported, "--out", tmp_path / "reverse.png", "--steps", 3, "--sampler", "Euler a")
    assert Image.open(tmp_path / "reverse.png").size[0] > 8 * 3
    cli("eval", imported, "--reference", "shapes", "-n", 8, "--domain-steps", 3, "--steps", 2, "--quiet",
        "--sampler", "DPM++ 2M Karras")
    drawn = json.loads((imported / "eval.json").read_text())["samples"]
    assert (drawn["count"], drawn["sampler"]) == (8, "dpmpp_2m")


def test_export_samples_bit_for_bit_and_bf16_is_smaller(tmp_path):
    shutil.copytree(V0 / "uncond", tmp_path / "run")
    out = cli("export", tmp_path / "run", "--out", tmp_path / "model")
    assert "diffusely, fp32" in out
    assert not any("optim" in k for k in load_run(tmp_path / "model").denoiser.state_dict())
    for d in ("run", "model"):
        cli("sample", tmp_path / d, "-n", 3, "--steps", 3, "--sampler", "heun", "--out", tmp_path / f"s-{d}", "--quiet")
    for i in range(3):
        name = f"00000{i}.png"
        assert np.array_equal(pixels(tmp_path / "s-run" / name), pixels(tmp_path / "s-model" / name))
    cli("export", tmp_path / "run", "--out", tmp_path / "half", "--dtype", "bf16")
    assert (tmp_path / "half" / MODEL).stat().st_size < 0.6 * (tmp_path / "model" / MODEL).stat().st_size
    # an fp32 export holds its run's very weights, so a PNG of the run is drawn again from the export
    png = tmp_path / "s-run" / "000001.png"
    assert "identical" in cli("sample", tmp_path / "model", "--from-png", png, "--out", tmp_path / "again")
    assert "other weights" in cli("sample", tmp_path / "half", "--from-png", png, "--out", tmp_path / "x", code=1)


def mappable_run(tmp_path) -> Path:
    """An EDM run whose U-Net maps onto UNet2DModel (8 groups divide every width; attention heads 8 wide)."""
    config = RunConfig(model=UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(1,), head_channels=8,
                                        groups=8), diffusion=DiffusionConfig(), data=DataConfig(image_size=8))
    torch.manual_seed(0)
    net = UNet(config.model)
    for p in net.parameters():  # trained-looking weights: ours starts with zeroed output convs
        torch.nn.init.normal_(p, std=0.1)
    write_config(tmp_path / "edm", config)
    save_tensors(tmp_path / "edm" / MODEL, net.state_dict(), {"step": 7, "format": "diffusely-weights-1",
                                                              "weights": "ema"})
    return tmp_path / "edm"


def test_export_as_diffusers_loads_in_diffusers_or_says_why_not(tmp_path):
    run_dir = mappable_run(tmp_path)
    cli("export", run_dir, "--out", tmp_path / "hf", "--format", "diffusers")
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "hf" / "unet").eval()
    net = UNet(load_run(run_dir).config.model)
    net.load_state_dict(load_run(run_dir).denoiser.net.state_dict())
    x, labels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([-1.0, 0.5])
    with torch.no_grad():
        ours, theirs = net(x, labels), unet(x, labels).sample
    assert ours.abs().mean() > 0.01 and torch.allclose(ours, theirs, atol=1e-4)
    out = cli("export", V0 / "classes", "--out", tmp_path / "no", "--format", "diffusers", code=1)
    assert "class conditioning" in out and out.count("\n") == 1 and not (tmp_path / "no").exists()
    assert "--dtype" in cli("export", run_dir, "--out", tmp_path / "h2", "--format", "diffusers", "--dtype", "bf16",
                            code=2)


@pytest.mark.parametrize("name, sampler, spacing, options", [
    ("DPM++ 2M Karras", "dpmpp_2m", "karras", {"lower_order_final": False}),
    ("Euler a", "euler_ancestral", "uniform-t", {}),
    ("DPMSolverMultistepScheduler(use_lu_lambdas=True)", "dpmpp_2m", "log-snr", {}),
])
def test_a_sampler_alias_is_its_documented_sampler_and_spacing(tmp_path, name, sampler, spacing, options):
    run = load_run(V0 / "uncond", precision="auto")
    cli("sample", V0 / "uncond", "-n", 2, "--steps", 4, "--sampler", name, "--out", tmp_path / "a", "--quiet")
    drawn = np.stack([pixels(tmp_path / "a" / f"00000{i}.png") for i in (0, 1)])
    expected = to_uint8(torch.cat(list(generate(run, 2, steps=4, sampler=sampler, spacing=spacing, progress=False,
                                                **options))))
    default = to_uint8(torch.cat(list(generate(run, 2, steps=4, sampler=sampler, progress=False))))
    assert np.array_equal(drawn, expected)
    assert spacing == "karras" or not np.array_equal(drawn, default)  # the alias's spacing was used
    assert json.loads(Image.open(tmp_path / "a" / "000001.png").text["diffusely"])["spacing"] == spacing


def test_png_parameters_draw_the_image_again_bit_for_bit(tmp_path):
    shutil.copytree(V0 / "classes", tmp_path / "run")
    cli("sample", tmp_path / "run", "-n", 3, "--seed", 4, "--steps", 3, "--sampler", "heun", "--class", "circle,square",
        "--guidance", 2.5, "-o", "S_churn=5", "--out", tmp_path / "s", "--quiet")
    png = tmp_path / "s" / "000005.png"  # the second sample: seed 5, class square
    text = Image.open(png).text
    p = json.loads(text["diffusely"])
    assert (p["seed"], p["class"], p["guidance"], p["steps"], p["nfe"], p["spacing"]) == (5, "square", 2.5, 3, 5,
                                                                                         "karras")
    assert p["options"] == {"S_churn": 5.0} and p["digest"] and p["run"] == os.path.abspath(tmp_path / "run")
    assert "Seed: 5" in text["parameters"] and "CFG scale: 2.5" in text["parameters"]
    out = cli("sample", "--from-png", png, "--out", tmp_path / "again")
    assert "identical" in out and np.array_equal(pixels(tmp_path / "again" / "000005.png"), pixels(png))
    assert not np.array_equal(pixels(tmp_path / "s" / "000004.png"), pixels(png))  # a different sample differs
    # an optimised schedule is recorded as its sigmas, and drawn with them again after the run's has changed
    write_schedule(tmp_path / "run", "heun", 3, [80.0, 3.0, 0.4, 0.0])
    cli("sample", tmp_path / "run", "-n", 1, "--steps", 3, "--sampler", "heun", "--out", tmp_path / "o", "--quiet")
    p = json.loads(Image.open(tmp_path / "o" / "000000.png").text["diffusely"])
    assert p["spacing"] == "optimised" and p["sigmas"][:2] == [80.0, 3.0]
    write_schedule(tmp_path / "run", "heun", 3, [80.0, 10.0, 1.0, 0.0])
    assert "identical" in cli("sample", "--from-png", tmp_path / "o" / "000000.png", "--out", tmp_path / "o2")


def test_from_png_refuses_what_it_cannot_draw_again(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "plain.png")
    out = cli("sample", V0 / "uncond", "--from-png", tmp_path / "plain.png", code=1)
    assert "holds no diffusely generation parameters" in out and out.count("\n") == 1
    edited = PngImagePlugin.PngInfo()
    edited.add_text("diffusely", json.dumps({"format": "diffusely-parameters-1", "seed": 3}))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "edited.png", pnginfo=edited)
    out = cli("sample", V0 / "uncond", "--from-png", tmp_path / "edited.png", code=1)
    assert "lack run, digest, step, sampler, steps" in out and out.count("\n") == 1
    cli("sample", V0 / "uncond", "-n", 1, "--steps", 2, "--out", tmp_path / "s", "--quiet")
    png = tmp_path / "s" / "000000.png"
    out = cli("sample", V0 / "ddpm", "--from-png", png, "--out", tmp_path / "x", code=1)
    p = json.loads(Image.open(png).text["diffusely"])
    assert "other weights" in out and p["digest"] in out and out.count("\n") == 1
    assert "drop --steps" in cli("sample", "--from-png", png, "--steps", 4, code=2)
    # the options come from the file: one naming write_samples' own arguments must not write where it says
    p["options"] = {"grid": str(tmp_path / "planted.png")}
    forged = PngImagePlugin.PngInfo()
    forged.add_text("diffusely", json.dumps(p))
    Image.open(png).save(tmp_path / "forged.png", pnginfo=forged)
    out = cli("sample", "--from-png", tmp_path / "forged.png", "--out", tmp_path / "f", code=1)
    assert "grid" in out and not (tmp_path / "planted.png").exists()
    assert "RUN_DIR" in cli("sample", code=2)


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "empty").mkdir()
    out = cli("import-diffusers", tmp_path / "empty", "--out", tmp_path / "run", code=1)
    assert "not a diffusers UNet2DModel folder" in out and out.count("\n") == 1
    unet = tmp_path / "pickled" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    marker = tmp_path / "unpickled"
    # a pickle that would create `marker` if anything unpickled it
    (unet / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Touch(str(marker))))
    out = cli("import-diffusers", unet.parent, "--out", tmp_path / "run", code=1)
    assert "never loaded" in out and out.count("\n") == 1 and not marker.exists() and not (tmp_path / "run").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    out = cli("export", V0 / "uncond", "--out", tmp_path / "full", code=1)
    assert "not empty" in out and out.count("\n") == 1 and os.listdir(tmp_path / "full") == ["keep.txt"]


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
