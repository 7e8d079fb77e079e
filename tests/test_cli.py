"""The CLI end to end on a tiny image folder: train, sample, info, strips, and bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from diffusely.cli import main
from diffusely.data.shapes import write_shapes_folder

from helpers import TINY_ARGS


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """A tiny run of 6 steps on 24 shape images, trained once for this module."""
    root = tmp_path_factory.mktemp("cli")
    write_shapes_folder(root / "images", 24, size=16, seed=1)  # tiny_folder's images
    r = run("train", root / "images", "--out", root / "run", "--steps", 6, "--checkpoint-every", 3, "--sample-every", 3,
            *TINY_ARGS)
    assert r.exit_code == 0, r.output
    return root / "run"


@pytest.fixture
def trained(trained_once, tmp_path):
    """A copy of the tiny run of its own for each test: tests resume it, edit its config and fit schedules to it."""
    return Path(shutil.copytree(trained_once, tmp_path / "run"))


def test_train_sample_info_end_to_end(trained, tmp_path):
    for name in ["config.json", "checkpoint.safetensors", "log.csv", "loss.png", "samples/step-0000003.png",
                 "samples/step-0000006.png"]:
        assert (trained / name).is_file(), name
    log = (trained / "log.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,images_per_second,seconds" and log[-1].startswith("6,")

    r = run("sample", trained, "-n", 5, "--steps", 3, "--out", tmp_path / "s", "--grid", tmp_path / "g.png", "--quiet",
            "--batch-size", 2)
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "s").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    assert Image.open(files[0]).size == (16, 16) and Image.open(files[0]).mode == "RGB"
    assert Image.open(tmp_path / "g.png").size == (3 * 18 + 2, 2 * 18 + 2)  # 3 columns, 2 rows, 2-px padding

    r = run("sample", trained, "-n", 2, "--steps", 2, "--format", "npy", "--out", tmp_path / "n", "--quiet")
    assert r.exit_code == 0, r.output
    a = np.load(tmp_path / "n" / "000000.npy")
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8

    r = run("info", trained, "--json")
    facts = json.loads(r.output)
    assert facts["steps_trained"] == 6 and facts["image_size"] == 16 and facts["parameterization"] == "edm"
    assert facts["last_loss"] > 0 and facts["parameters"] > 10_000
    assert "steps trained     6" in run("info", trained).output


def test_same_seed_same_samples(trained, tmp_path):
    for d in ("a", "b", "c"):
        run("sample", trained, "-n", 3, "--steps", 3, "--seed", 4 if d != "c" else 5, "--format", "npy",
            "--out", tmp_path / d, "--quiet", "--sampler", "euler_ancestral")
    a, b, c = (np.load(tmp_path / d / f"{4 if d != 'c' else 5:06d}.npy") for d in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # sample 5 of seed 4 (i = 1) is sample 5 of seed 5 (i = 0): samples depend on their own seed only
    assert np.array_equal(np.load(tmp_path / "a" / "000005.npy"), c)


def test_forward_and_reverse_strips(trained, tiny_folder, tmp_path):
    image = next(tiny_folder.rglob("*.png"))
    r = run("forward", image, "--out", tmp_path / "f.png", "--size", 16)
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "f.png").size[0] > 11 * 16 * 8  # eleven noise levels, tiles enlarged 8x
    r = run("reverse", trained, "--out", tmp_path / "r.png", "--steps", 4)
    assert r.exit_code == 0, r.output
    w, h = Image.open(tmp_path / "r.png").size
    assert h > 2 * 16 * 8  # two rows: x and the x0 estimate


def test_corrupt_image_is_skipped_with_one_warning(tiny_folder, tmp_path):
    (tiny_folder / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.warns(UserWarning, match="skipped 1 "):
        r = run("train", tiny_folder, "--out", tmp_path / "run", "--steps", 1, *TINY_ARGS)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("setup, args, message", [
    (lambda p: (p / "empty").mkdir(), ["empty"], "no image files under"),
    (lambda p: None, ["missing"], "no such folder"),
    (lambda p: None, ["shapez"], "shapes"),
])
def test_bad_data_gives_clear_error(tmp_path, setup, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    r = CliRunner().invoke(main, ["train", *args, "--out", "run", "--steps", "1", *TINY_ARGS])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert message in r.output


def test_image_size_not_divisible(tiny_folder, tmp_path):
    r = CliRunner().invoke(main, ["train", str(tiny_folder), "--out", str(tmp_path / "r"), "--steps", "1", *TINY_ARGS,
                                  "--image-size", "18", "--channels", "16,32,32"])
    assert r.exit_code == 1
    assert "image size 18 is not divisible by 4" in r.output and "--image-size 16 or 20" in r.output


def test_existing_run_needs_resume(trained):
    r = CliRunner().invoke(main, ["train", "shapes", "--out", str(trained), "--steps", "1"])
    assert r.exit_code == 1 and "already holds a run; pass --resume" in r.output


@pytest.mark.parametrize("edit, message", [
    (lambda cfg_path: cfg_path.unlink(), "has no config.json"),
    (lambda cfg_path: cfg_path.write_text(cfg_path.read_text().replace('"heun"', '"warp"')), "diffusion.sampler is 'warp'"),
])
def test_run_dir_with_missing_or_edited_config(trained, edit, message):
    edit(trained / "config.json")
    r = CliRunner().invoke(main, ["sample", str(trained), "-n", "1", "--quiet"])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_unknown_sampler(trained):
    r = CliRunner().invoke(main, ["sample", str(trained), "-n", "1", "--sampler", "plmz", "--quiet"])
    assert r.exit_code == 1 and "unknown sampler 'plmz'; choose one of: euler, heun" in r.output


def test_every_command_has_help():
    for cmd in main.commands:
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output
    for cmd in ("train", "train-autoencoder"):  # what --resume may change is said beside each such option, and only there
        marked = {p.opts[0] for p in main.commands[cmd].params if (p.help or "").endswith("May be changed on --resume.")}
        assert marked == {"--steps", "--checkpoint-every", "--sample-every", "--log-every", "--keep", "--quiet",
                          *(("--compile", "--activation-checkpointing") if cmd == "train" else ())}, cmd
        assert "May be changed on --resume." in run(cmd, "--help").output


def test_resume_reports_this_invocation_and_takes_the_resumable_options(trained):
    r = run("train", "--out", trained, "--resume", "--steps", 8, "--checkpoint-every", 1, "--log-every", 1, "--keep", 3,
            "--quiet")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("augmentations: none\ntrained 2 steps now, from step 6 to 8 (the run's total: 8 steps)"), r.output
    train = json.loads((trained / "config.json").read_text())["train"]
    assert (train["steps"], train["checkpoint_every"], train["log_every"], train["keep"]) == (8, 1, 1, 3)
    assert (trained / "log.csv").read_text().splitlines()[-2].startswith("7,")  # a row each step now


def test_sample_never_overwrites_earlier_samples_unless_asked(trained, tmp_path):
    out = tmp_path / "s"
    assert run("sample", trained, "-n", 2, "--steps", 2, "--format", "npy", "--out", out, "--quiet").exit_code == 0
    first = np.load(out / "000001.npy")
    r = CliRunner().invoke(main, ["sample", str(trained), "-n", "3", "--steps", "2", "--format", "npy", "--out", str(out),
                                  "--sampler", "euler_ancestral", "--quiet"])
    assert r.exit_code == 1 and "already holds 2 of the files this would write (000000.npy, 000001.npy)" in r.output
    assert np.array_equal(np.load(out / "000001.npy"), first) and not (out / "000002.npy").exists()
    # new seeds add new names beside the old ones; --overwrite replaces
    assert run("sample", trained, "-n", 1, "--seed", 2, "--steps", 2, "--format", "npy", "--out", out, "--quiet").exit_code == 0
    assert (out / "000002.npy").is_file()
    r = run("sample", trained, "-n", 2, "--steps", 2, "--format", "npy", "--out", out, "--sampler", "euler_ancestral",
            "--overwrite", "--quiet")
    assert r.exit_code == 0 and not np.array_equal(np.load(out / "000001.npy"), first)


def test_sampler_options(trained, tmp_path):
    r = run("sample", trained, "-n", 2, "--steps", 3, "--out", tmp_path / "s", "--quiet", "-o", "S_churn=10", "-o", "S_tmax=5")
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["sample", str(trained), "-n", "1", "--quiet", "-o", "eta=0.5"])
    assert r.exit_code == 1 and "sampler 'heun' takes no option eta; its options: S_churn, S_noise, S_tmax, S_tmin" in r.output
    r = CliRunner().invoke(main, ["sample", str(trained), "-n", "1", "--quiet", "-o", "S_churn"])
    assert r.exit_code == 2 and "expected KEY=NUMBER" in r.output


def test_resume_with_edited_config(trained):
    cfg = json.loads((trained / "config.json").read_text())
    cfg["model"]["channels"] = [16, 48]
    (trained / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["train", "--out", str(trained), "--resume", "--steps", "8", "--quiet"])
    assert r.exit_code == 1 and "does not fit the model that config.json describes" in r.output


def test_nfe_budget_and_optimised_schedule(trained, tmp_path):
    r = run("sample", trained, "-n", 2, "--sampler", "heun", "--nfe", 6, "--out", tmp_path / "s", "--quiet")
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["sample", str(trained), "-n", "1", "--steps", "3", "--nfe", "6", "--quiet"])
    assert r.exit_code == 1 and "give exactly one of steps and nfe" in r.output
    r = run("optimize-schedule", trained, "--sampler", "dpmpp_2m", "--nfe", 3, "-n", 2)
    assert r.exit_code == 0, r.output
    assert "Karras" in r.output and "optimised" in r.output
    sigmas = json.loads((trained / "schedules.json").read_text())["dpmpp_2m"]["3"]
    assert len(sigmas) == 4 and sigmas[-1] == 0
    r = run("reverse", trained, "--out", tmp_path / "r.png", "--sampler", "dpmpp_2m", "--nfe", 3)
    assert r.exit_code == 0 and (tmp_path / "r.png").is_file(), r.output
    # the name A1111 users type finds the same sampler, and its schedule lands under our name
    r = run("optimize-schedule", trained, "--sampler", "DPM++ 2M", "--steps", 2, "-n", 2)
    assert r.exit_code == 0, r.output
    assert len(json.loads((trained / "schedules.json").read_text())["dpmpp_2m"]["2"]) == 3


def test_a_run_on_the_text_default_sampler_takes_budgets_as_a_heun_run_and_fits_no_schedule_to_it(trained):
    """A latent text run samples with Euler ancestral (35 steps): `--nfe K` alone still takes the sampler measured best
    below 35 NFE, and at 35 its own; optimize-schedule refuses to fit sigmas to a sampler that adds noise each step
    (with none named it would fit the run's), saying which to name, and writes no schedules.json."""
    from diffusely.checkpoint import load_run
    from diffusely.pipelines.generate import sampling_plan

    config = json.loads((trained / "config.json").read_text())
    config["diffusion"]["sampler"], config["diffusion"]["sample_steps"] = "euler_ancestral", 35
    (trained / "config.json").write_text(json.dumps(config))
    loaded = load_run(trained)
    plans = {k: sampling_plan(loaded, None, None, k) for k in (5, 10, 35)}
    assert {k: (str(s), steps) for k, (s, steps) in plans.items()} == {
        5: ("unipc", 5), 10: ("deis", 10), 35: ("euler_ancestral", 35)}
    own, steps = sampling_plan(loaded, None, None, None)
    assert (str(own), steps) == ("euler_ancestral", 35)
    for args, said in (([], "euler_ancestral with eta 1 "), (["--sampler", "Euler a"], "eta 1 "),
                       (["--sampler", "heun", "-o", "S_churn=40"], "heun with S_churn 40 "),
                       (["--sampler", "ddim", "-o", "eta=0.5"], "ddim with eta 0.5 "),
                       (["--sampler", "ddpm"], "ddpm ")):
        r = CliRunner().invoke(main, ["optimize-schedule", str(trained), "--steps", "3", "-n", "1", *args])
        assert r.exit_code == 2 and f"{said}adds noise each step" in r.output and "--sampler heun" in r.output, r.output
    assert not (trained / "schedules.json").exists()
