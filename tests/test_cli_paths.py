"""The CLI paths no test ran before (issue 18): each runs once on a tiny config and its result is checked, not only
its exit status; and every sampler option given with -o changes the samples."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from diffusely.checkpoint import CHECKPOINT
from diffusely.config import RunConfig
from diffusely.data.shapes import CLASS_NAMES
from diffusely.state import step_of

from diffusely.cli import main

from helpers import TINY_ARGS


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def config_of(run_dir) -> dict:
    return json.loads((run_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A run trained 2 steps on 16 x 16 shapes, for the sampler options."""
    out = tmp_path_factory.mktemp("plain") / "run"
    run("train", "shapes", "--out", out, "--steps", 2, *TINY_ARGS)
    return out


def test_train_autoencoder_resume_continues_the_run(tmp_path):
    ae = tmp_path / "ae"
    args = ["--image-size", 16, "--channels", "8,16", "--batch-size", 2, "--checkpoint-every", 1, "--quiet"]
    r = run("train-autoencoder", "shapes", "--out", ae, "--steps", 2, *args)
    assert r.output.startswith("augmentations: none\ntrained 2 steps: factor 2")
    r = run("train-autoencoder", "--out", ae, "--resume", "--steps", 3, "--quiet")
    assert r.output.startswith("augmentations: none\ntrained 1 steps now, from step 2 to 3 (the run's total: 3 steps)"), r.output
    assert step_of(ae / CHECKPOINT) == 3
    log = (ae / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3"]


def test_recipe_ddpm_trains_an_eps_model_that_samples(tmp_path):
    out = tmp_path / "ddpm"
    run("train", "shapes", "--out", out, "--recipe", "ddpm", "--steps", 1, *TINY_ARGS)
    d = config_of(out)["diffusion"]
    assert (d["parameterization"], d["schedule"], d["train_sigmas"], d["weighting"]) == ("eps", "linear", "discrete", "eps")
    assert d["sigma_data"] == 1.0
    run("sample", out, "-n", 2, "--steps", 2, "--format", "npy", "--out", tmp_path / "s", "--quiet")
    assert np.load(tmp_path / "s" / "000001.npy").shape == (16, 16, 3)


def test_config_file_is_the_start_and_options_override_it(tmp_path):
    start = RunConfig()
    start.diffusion.sample_steps = 7
    start.model.channels = (8, 16)
    start.train.warmup_steps = 3
    (tmp_path / "start.json").write_text(start.to_json())
    out = tmp_path / "run"
    run("train", "shapes", "--out", out, "--config", tmp_path / "start.json", "--steps", 1, "--image-size", 16,
        "--blocks-per-level", 1, "--attention-levels", 1, "--batch-size", 2, "--quiet")
    c = config_of(out)
    assert c["diffusion"]["sample_steps"] == 7 and c["train"]["warmup_steps"] == 3  # from the file
    assert c["model"]["channels"] == [8, 16] and c["model"]["blocks_per_level"] == 1  # the file's, and an option's
    assert c["train"]["steps"] == 1 and c["train"]["batch_size"] == 2 and c["data"]["image_size"] == 16


def test_classes_from_subfolders(tiny_folder, tmp_path):
    out = tmp_path / "run"
    run("train", tiny_folder, "--out", out, "--classes", "--steps", 1, *TINY_ARGS)
    c = config_of(out)
    names = sorted(p.name for p in tiny_folder.iterdir() if p.is_dir())
    assert c["data"]["classes"] is True and c["data"]["class_names"] == names
    assert c["model"]["num_classes"] == len(names) and set(names) <= set(CLASS_NAMES)
    r = run("sample", out, "-n", 2, "--steps", 2, "--class", names[0], "--out", tmp_path / "s", "--quiet")
    rows = [json.loads(line) for line in (tmp_path / "s" / "metadata.jsonl").read_text().splitlines()]
    assert rows == [{"file_name": "000000.png", "class": names[0]}, {"file_name": "000001.png", "class": names[0]}]
    assert "wrote 2 samples" in r.output


def test_grayscale_trains_and_samples_one_channel(tiny_folder, tmp_path):
    out = tmp_path / "run"
    run("train", tiny_folder, "--out", out, "--grayscale", "--steps", 1, *TINY_ARGS)
    c = config_of(out)
    assert c["data"]["channels"] == 1 and c["model"]["in_channels"] == 1 and c["model"]["out_channels"] == 1
    run("sample", out, "-n", 1, "--steps", 2, "--out", tmp_path / "s", "--quiet")
    assert Image.open(tmp_path / "s" / "000000.png").mode == "L"


def test_synth_with_layouts_file_labels_each_image_with_its_layout(tmp_path):
    out = tmp_path / "layout"
    run("train", "defects", "--layout", "--out", out, "--steps", 1, *TINY_ARGS, "--image-size", 32)
    layouts = [[{"class": "crack", "box": [0.25, 0.25, 0.75, 0.5]}],
               [{"class": "spot", "box": [0.5, 0.5, 1.0, 1.0]}, {"class": "scratch", "box": [0, 0, 0.5, 0.25]}]]
    (tmp_path / "layouts.json").write_text(json.dumps(layouts))
    data = tmp_path / "synth"
    r = run("synth", out, "--out", data, "-n", 3, "--layouts", tmp_path / "layouts.json", "--steps", 2,
            "--val-fraction", 0.5, "--quiet")
    assert r.output.startswith("3 images (3 made now;") and "4 boxes" in r.output
    labels = sorted((data / "labels").glob("*/*.txt"), key=lambda p: p.name)
    assert len(labels) == 3 and len(list((data / "images").glob("*/*.png"))) == 3
    rows = [[[float(v) for v in line.split()] for line in p.read_text().splitlines()] for p in labels]
    names = config_of(out)["data"]["class_names"]
    crack, spot, scratch = (names.index(n) for n in ("crack", "spot", "scratch"))
    # YOLO rows: class, centre x, centre y, width, height (normalised); layouts cycle over the images
    assert rows[0] == [[crack, 0.5, 0.375, 0.5, 0.25]] == rows[2]
    assert sorted(rows[1]) == sorted([[spot, 0.75, 0.75, 0.5, 0.5], [scratch, 0.25, 0.125, 0.5, 0.25]])


SAMPLER_OPTIONS = [("heun", "S_churn=40"), ("euler", "S_churn=40"), ("heun", "S_noise=1.5"),
                   ("ddim", "eta=1"), ("euler_ancestral", "eta=0"), ("dpmpp_2m_sde", "eta=0"), ("unipc", "order=1"),
                   ("lms", "order=1"), ("dpmpp_2m", "lower_order_final=0")]


@pytest.mark.parametrize("sampler, option", SAMPLER_OPTIONS)
def test_sampler_options_change_the_samples(plain, tmp_path, sampler, option):
    def draw(folder, *extra):
        run("sample", plain, "-n", 2, "--steps", 4, "--sampler", sampler, "--format", "npy", "--out", tmp_path / folder,
            "--quiet", *extra)
        return np.stack([np.load(tmp_path / folder / f"{i:06d}.npy") for i in range(2)]).astype(int)
    default, optioned = draw("default"), draw("optioned", "-o", option)
    if option == "S_noise=1.5":  # S_noise scales the churn's noise: there must be churn for it to act on
        default, optioned = draw("churn", "-o", "S_churn=40"), draw("churn-noise", "-o", "S_churn=40", "-o", option)
    assert not np.array_equal(default, optioned), (sampler, option)  # deterministic: any change is the option's
