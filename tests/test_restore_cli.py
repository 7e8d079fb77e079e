"""`diffusely restore` and `diffusely img2img` through the CLI on a tiny run: what is measured stays as measured,
the files each writes, and bad input as one line naming the fix (exit status 1, no traceback)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely.cli import main
from diffusely.data import load_dataset, to_tensor
from diffusely.restoration import MEASURED_BLUR_CUTOFF, Blur, Downsample

from helpers import held_lock, time_limit

TINY = ["--image-size", "16", "--channels", "8,16", "--blocks-per-level", "1", "--batch-size", "4", "--quiet"]
V0 = Path(__file__).parent / "fixtures" / "v0"
GREY_LEVEL = 1 / 255  # one uint8 grey level in [0, 1] units


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.uint8)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 -> (1, 1, H, W) in [-1, 1]."""
    return to_tensor(array[None, ..., None])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A grayscale phantoms run (16 x 16, 2 steps), two phantoms, a half mask and a wrong-size one."""
    root = tmp_path_factory.mktemp("restore")
    with time_limit(120):
        r = invoke("train", "phantoms", "--out", root / "run", "--steps", "2", "--grayscale", "--sample-every", "2", *TINY)
    assert r.exit_code == 0, r.output
    (root / "clean").mkdir()
    for i, image in enumerate(load_dataset("phantoms", 16, 1).images[:2]):
        Image.fromarray(image[..., 0]).save(root / "clean" / f"p{i}.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :9] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:8, :8]).save(root / "small_mask.png")
    return root


@pytest.mark.parametrize("how", ["project", "repaint"])
def test_inpainting_never_changes_known_pixels(root, how):
    out = root / f"inpaint-{how}"
    r = invoke("restore", root / "run", root / "clean", "--task", "inpaint", "--mask", root / "mask.png", "--how", how,
               "--out", out, "-n", "2", "--steps", "3", "--quiet")
    assert r.exit_code == 0, r.output
    assert "consistency" in r.output and r.output.count("0.0000") >= 3  # the mean row's consistency too
    known = read(root / "mask.png") > 127
    for name in ("p0", "p1"):
        truth = read(root / "clean" / f"{name}.png")
        for part in ("0", "1", "mean"):
            x = read(out / f"{name}.{part}.png")
            assert np.array_equal(x[known], truth[known]), (name, part)
        assert not np.array_equal(read(out / f"{name}.0.png")[~known], truth[~known])
        assert np.array_equal(read(out / f"{name}.input.png")[known], truth[known])
        assert np.all(np.abs(read(out / f"{name}.input.png")[~known].astype(int) - 128) <= 1)  # A^+ y: 0 there
        assert read(out / f"{name}.std.png")[known].max() == 0  # the draws agree where the pixels were measured


def test_projection_agrees_with_the_measurement(root):
    out = root / "sr"
    r = invoke("restore", root / "run", root / "clean" / "p0.png", "--task", "upscale", "--scale", "4", "--out", out,
               "--steps", "3", "--quiet")
    assert r.exit_code == 0, r.output
    A = Downsample(4)
    truth, x = as_tensor(read(root / "clean" / "p0.png")), as_tensor(read(out / "p0.png"))
    rms = ((A(x) - A(truth)) / 2).pow(2).mean().sqrt()  # in [0, 1] units
    assert rms <= GREY_LEVEL, float(rms)
    assert (x - truth).abs().max() > 0.1  # the detail under each block is drawn, not copied from the truth
    # the same measurement given as a 4 x 4 image
    Image.fromarray(np.asarray(Image.open(root / "clean" / "p0.png").reduce(4))).save(root / "low.png")
    r = invoke("restore", root / "run", root / "low.png", "--task", "upscale", "--measured", "--out", root / "sr2",
               "--steps", "3", "--quiet")
    assert r.exit_code == 0 and "psnr" not in r.output, r.output
    y = as_tensor(read(root / "low.png"))
    assert ((A(as_tensor(read(root / "sr2" / "low.png"))) - y) / 2).pow(2).mean().sqrt() <= GREY_LEVEL


def test_a_measured_blurred_image_is_read_without_amplifying_its_rounding(root):
    truth = as_tensor(read(root / "clean" / "p0.png")).double()
    blurred = Blur(1.5, 1e-12)(truth)[0, 0].clamp(-1, 1)  # the real blur keeps every frequency
    Image.fromarray(np.round((blurred.numpy() + 1) * 127.5).astype(np.uint8)).save(root / "blurred.png")
    r = invoke("restore", root / "run", root / "blurred.png", "--task", "deblur", "--measured", "--out",
               root / "deblur", "--steps", "2", "--quiet")
    assert r.exit_code == 0, r.output
    y = as_tensor(read(root / "blurred.png")).double()
    shown = as_tensor(read(root / "deblur" / "blurred.input.png")).double()  # A^+ y
    expected = Blur(1.5, MEASURED_BLUR_CUTOFF).pinv(y).clamp(-1, 1)
    assert (shown - expected).abs().max() <= 2 * GREY_LEVEL + 1e-6  # one grey level: the PNG's rounding
    # the exact operator's inverse would show the file's rounding amplified
    assert (Blur(1.5, 1e-3).pinv(y).clamp(-1, 1) - expected).abs().max() > 0.2


def test_mri_writes_the_zero_filled_input_and_scores(root):
    out = root / "mri"
    r = invoke("restore", root / "run", root / "clean" / "p1.png", "--task", "mri", "--acceleration", "4", "--how",
               "dps", "--out", out, "--steps", "2", "--quiet")
    assert r.exit_code == 0, r.output
    row = next(line.split() for line in r.output.splitlines() if line.startswith("p1"))
    assert len(row) == 4 and all(np.isfinite(float(v)) for v in row[1:])  # psnr, ssim, consistency
    assert read(out / "p1.input.png").shape == (16, 16) and read(out / "p1.png").shape == (16, 16)
    # the input written is the zero-filled image A^T y, and --measured reads such an image back to y
    from diffusely.restoration import KSpace

    A, truth = KSpace.random(16, 4, seed=0), as_tensor(read(root / "clean" / "p1.png"))
    zero_filled = as_tensor(read(out / "p1.input.png"))
    assert (zero_filled - A.adjoint(A(truth)).clamp(-1, 1)).abs().max() <= 2 * GREY_LEVEL + 1e-6
    # (at half contrast, so that its ringing is not clipped by the PNG)
    Image.fromarray((read(root / "clean" / "p1.png") // 2 + 64).astype(np.uint8)).save(root / "half.png")
    half = as_tensor(read(root / "half.png"))
    assert A.adjoint(A(half)).abs().max() < 0.95
    for source, measured, written in ((root / "half.png", [], root / "mri-h"),
                                      (root / "mri-h" / "half.input.png", ["--measured"], root / "mri-m")):
        r = invoke("restore", root / "run", source, "--task", "mri", *measured, "--out", written, "--steps", "2",
                   "--quiet")
        assert r.exit_code == 0, r.output
    first, again = (as_tensor(read(path)) for path in (root / "mri-h" / "half.input.png",
                                                        root / "mri-m" / "half.input.input.png"))
    assert (again - first).abs().max() <= 2 * GREY_LEVEL + 1e-6  # measured from it, shown zero-filled again


def test_mri_projection_agrees_with_the_measured_lines(root):
    from diffusely.restoration import KSpace

    r = invoke("restore", root / "run", root / "clean" / "p1.png", "--task", "mri", "--acceleration", "4",
               "--mask-seed", "3", "--out", root / "mri-p", "--steps", "3", "--quiet")
    assert r.exit_code == 0, r.output
    A = KSpace.random(16, 4, seed=3)  # the mask the command drew
    truth, x = as_tensor(read(root / "clean" / "p1.png")), as_tensor(read(root / "mri-p" / "p1.png"))
    rms = ((A(x) - A(truth)).abs() / 2).pow(2).sum().div(A.measurements(x)).sqrt()  # per measured value, [0, 1] units
    assert rms <= GREY_LEVEL, float(rms)
    assert (x - truth).abs().max() > 0.1


def test_img2img_passes_the_class_and_guidance(tmp_path, monkeypatch):
    """The class asked for reaches the sampler as the run's label, under guidance of the scale asked for (the
    fixture's 3-step network barely reads its labels, so this looks at what is passed, not at the pixels)."""
    import diffusely.pipelines.restore as pipeline
    from diffusely.denoisers import ClassifierFreeGuidance

    seen = []

    def recording(denoiser, image, **kwargs):
        seen.append((denoiser, kwargs["cond"], kwargs["strength"], kwargs["steps"]))
        return image

    monkeypatch.setattr(pipeline, "sdedit", recording)
    shutil.copytree(V0 / "classes", tmp_path / "run")
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "grey.png")
    r = invoke("img2img", tmp_path / "run", tmp_path / "grey.png", "--strength", "0.7", "--class", "square",
               "--guidance", "3", "--out", tmp_path / "out", "-n", "2", "--steps", "5", "--quiet")
    assert r.exit_code == 0, r.output
    denoiser, cond, strength, steps = seen[0]
    assert torch.equal(cond["class_labels"], torch.tensor([1, 1])) and (strength, steps) == (0.7, 5)
    guided = denoiser.denoiser  # Thresholded(ClassifierFreeGuidance(...)): guided estimates clipped to [-1, 1]
    assert isinstance(guided, ClassifierFreeGuidance) and guided.scale == 3
    assert torch.equal(guided.uncond["class_labels"], torch.tensor([4, 4]))  # the null label: 4 classes
    r = invoke("img2img", tmp_path / "run", tmp_path / "grey.png", "--class", "hexagon", "--out", tmp_path / "x")
    assert r.exit_code == 1 and "unknown class 'hexagon'" in r.output, r.output


def test_img2img(root):
    out = root / "edit"
    r = invoke("img2img", root / "run", root / "clean", "--strength", "0", "--out", out, "--steps", "4", "--quiet")
    assert r.exit_code == 0, r.output
    assert np.array_equal(read(out / "p0.png"), read(root / "clean" / "p0.png"))  # strength 0 keeps the image
    r = invoke("img2img", root / "run", root / "clean" / "p0.png", "--strength", "0.6", "--out", out, "-n", "2",
               "--steps", "4", "--quiet")
    assert r.exit_code == 0, r.output
    a, b = read(out / "p0.0.png").astype(int), read(out / "p0.1.png").astype(int)
    assert np.abs(a - read(root / "clean" / "p0.png")).mean() > 2 and np.abs(a - b).mean() > 1
    assert (out / "p0.mean.png").is_file() and (out / "p0.std.png").is_file()


def latent_run(tmp_path) -> Path:
    """A copy of the fixture latent run, its autoencoder path pointing at the fixture's."""
    shutil.copytree(V0 / "ae", tmp_path / "ae")
    shutil.copytree(V0 / "latent", tmp_path / "latent")
    config = json.loads((tmp_path / "latent" / "config.json").read_text())
    config["latent"]["autoencoder"] = str(tmp_path / "ae")
    (tmp_path / "latent" / "config.json").write_text(json.dumps(config))
    return tmp_path / "latent"


def test_img2img_of_a_latent_run_edits_the_latent(tmp_path):
    run = latent_run(tmp_path)
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "rgb.png")
    r = invoke("img2img", run, tmp_path / "rgb.png", "--strength", "0.5", "--out", tmp_path / "out", "--steps", "2",
               "--quiet")
    assert r.exit_code == 0, r.output
    assert read(tmp_path / "out" / "rgb.png").shape == (16, 16, 3)
    r = invoke("restore", run, tmp_path / "rgb.png", "--task", "deblur", "--out", tmp_path / "x", "--steps", "2")
    assert r.exit_code == 1 and "this is a latent run" in r.output and "Traceback" not in r.output, r.output


def test_bad_input_names_the_fix(root):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "rgb.png")
    clean = root / "clean" / "p0.png"
    cases = {
        ("--task", "inpaint", "--mask", root / "small_mask.png"): "--mask",
        ("--task", "inpaint"): "--task inpaint needs --mask",
        ("--task", "upscale", "--scale", "3"): "--scale 3 does not divide the run's image size 16: pick a scale >= 2 "
                                               "that divides it (2, 4, 8)",
        ("--task", "mri", "--acceleration", "0.5"): "--acceleration must be >= 1",
        ("--task", "mri", "--scale", "2"): "--task mri takes no --scale: drop it",
        ("--task", "deblur", "--mask-seed", "3", "--resample", "5"): "--resample, --mask-seed do nothing with "
                                                                     "--task deblur --how project: drop them",
        ("--task", "mri", "--dps-scale", "0.5"): "--dps-scale does nothing with --task mri --how project: drop it",
    }
    for args, message in cases.items():
        r = invoke("restore", root / "run", clean, *args, "--out", root / "bad", "--steps", "2")
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (args, r.output)
    assert "is 8x8 but the images are 16x16" in invoke("restore", root / "run", clean, "--task", "inpaint", "--mask",
                                                       root / "small_mask.png", "--out", root / "bad").output
    r = invoke("restore", root / "run", root / "rgb.png", "--task", "deblur", "--out", root / "bad", "--steps", "2")
    assert r.exit_code == 1 and "rgb.png is a colour image but the run makes greyscale ones" in r.output, r.output
    r = invoke("upscale", root / "run", clean, "--out", root / "bad")
    assert r.exit_code == 1 and "not trained to upscale" in r.output, r.output
    assert not (root / "bad").exists()


def test_earlier_results_are_kept_unless_overwrite(root):
    args = ["restore", root / "run", root / "clean" / "p0.png", "--task", "deblur", "--out", root / "again", "--steps",
            "2", "--quiet"]
    assert invoke(*args).exit_code == 0
    before = (root / "again" / "p0.png").read_bytes()
    r = invoke(*args, "--seed", "5")
    assert r.exit_code == 1 and "already holds 2 of the files this would write" in r.output, r.output
    assert "--overwrite" in r.output and (root / "again" / "p0.png").read_bytes() == before
    assert invoke(*args, "--seed", "5", "--overwrite").exit_code == 0
    assert (root / "again" / "p0.png").read_bytes() != before


def test_a_sampler_name_people_know_brings_its_spacing_and_options(root):
    """'Euler a' is euler_ancestral on uniform-t steps (docs/samplers-aliases.md): restore draws what that spells
    out, not euler_ancestral on its default Karras steps."""
    outs = {}
    for name in ("Euler a", "euler_ancestral"):
        out = outs[name] = root / f"alias-{name.replace(' ', '-')}"
        r = invoke("restore", root / "run", root / "clean" / "p0.png", "--task", "inpaint", "--mask", root / "mask.png",
                   "--sampler", name, "--steps", "3", "--out", out, "--quiet")
        assert r.exit_code == 0, r.output
    assert not np.array_equal(read(outs["Euler a"] / "p0.png"), read(outs["euler_ancestral"] / "p0.png"))


def test_a_second_job_into_one_folder_is_refused(root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with held_lock(out, "4242 restore --out out"):  # another job
        clean = root / "clean" / "p0.png"
        for args in (["restore", root / "run", clean, "--task", "deblur"], ["img2img", root / "run", clean],
                     ["upscale", root / "run", clean]):
            r = invoke(*args, "--steps", "2", "--out", out, "--quiet")
            assert r.exit_code == 1 and f"{out} is in use by process 4242 (restore --out out)" in r.output, r.output
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written beside the other job's


def test_a_budget_without_a_sampler_draws_on_the_spacing_it_was_picked_for(root):
    """--nfe 5 alone picks unipc for its log-SNR spacing (samplers/defaults.py): restore must draw on that spacing,
    not on unipc's default Karras steps."""
    outs = {}
    for name, args in (("budget", ()), ("karras", ("--sampler", "unipc"))):
        out = outs[name] = root / f"budget-{name}"
        r = invoke("restore", root / "run", root / "clean" / "p0.png", "--task", "inpaint", "--mask", root / "mask.png",
                   "--nfe", "5", *args, "--out", out, "--quiet")
        assert r.exit_code == 0, r.output
    from diffusely.checkpoint import load_run
    from diffusely.pipelines.restore import Plan

    run = load_run(root / "run")
    plan = Plan.of(run, nfe=5)
    assert (plan.sampler, plan.steps, plan.sampling(run, [])["spacing"]) == ("unipc", 5, "log-snr")
    assert not np.array_equal(read(outs["budget"] / "p0.png"), read(outs["karras"] / "p0.png"))


def test_restore_and_upscale_draw_on_the_runs_optimised_schedule_and_img2img_does_not(root, tmp_path):
    """A run's schedules.json (optimize-schedule, or training's own search) is what `sample` draws on for that sampler
    and step count; restore and upscale too. img2img starts part-way down, where a whole schedule does not fit."""
    from diffusely.checkpoint import load_run
    from diffusely.pipelines.restore import Plan

    tuned = tmp_path / "tuned"
    shutil.copytree(root / "run", tuned)
    sigmas = [80.0, 9.0, 2.0, 0.4, 0.05, 0.0]
    (tuned / "schedules.json").write_text(json.dumps({"unipc": {"5": sigmas}}))
    run = load_run(tuned)
    plan = Plan.of(run, nfe=5)
    assert plan.sampling(run, [])["spacing"](5, 0.002, 80.0).tolist() == sigmas
    assert plan.sampling(run, [], whole=False)["spacing"] == "log-snr"
    clean = root / "clean" / "p0.png"
    for command, args, differs in (("restore", ("--task", "inpaint", "--mask", root / "mask.png"), True),
                                   ("img2img", (), False)):
        outs = [tmp_path / f"{command}-{i}" for i in range(2)]
        for run_dir, out in zip((root / "run", tuned), outs):
            r = invoke(command, run_dir, clean, *args, "--nfe", "5", "--out", out, "--quiet")
            assert r.exit_code == 0, r.output
        assert np.array_equal(read(outs[0] / "p0.png"), read(outs[1] / "p0.png")) != differs, command


def test_restore_defaults_to_the_stochastic_sampler_measured_best(root, tmp_path):
    """With no --sampler or --nfe, a run of the stock Heun restores with RESTORE_SAMPLER (DPM++ 2M SDE, 35 steps or
    --steps: ahead of Heun's ODE for zero-shot projection, docs/restoration.md); --how repaint, --nfe alone (the
    budget's pick) and a run trained with another sampler keep what they had."""
    from diffusely.checkpoint import load_run
    from diffusely.pipelines.restore import RESTORE_SAMPLER, Plan

    clean, mask = root / "clean" / "p0.png", ("--mask", root / "mask.png")
    deblur = ("--task", "deblur")
    cases = {"default": deblur, "named": (*deblur, "--sampler", "dpmpp_2m_sde", "--steps", "35"),
             "heun": (*deblur, "--sampler", "heun"), "steps": (*deblur, "--steps", "3"),
             "named-3": (*deblur, "--sampler", "dpmpp_2m_sde", "--steps", "3"),
             "repaint": ("--task", "inpaint", *mask, "--how", "repaint", "--steps", "3", "--resample", "2"),
             "repaint-heun": ("--task", "inpaint", *mask, "--how", "repaint", "--steps", "3", "--resample", "2",
                              "--sampler", "heun")}
    for name, args in cases.items():
        r = invoke("restore", root / "run", clean, *args, "--out", tmp_path / name, "--quiet")
        assert r.exit_code == 0, r.output
    got = {name: read(tmp_path / name / "p0.png") for name in cases}
    assert np.array_equal(got["default"], got["named"]) and not np.array_equal(got["default"], got["heun"])
    assert np.array_equal(got["steps"], got["named-3"]) and np.array_equal(got["repaint"], got["repaint-heun"])
    run = load_run(root / "run")
    plans = {args: Plan.of(run, **dict(args), default=RESTORE_SAMPLER) for args in ((), (("steps", 4),), (("nfe", 5),))}
    got = [(plan.sampler, plan.steps) for plan in plans.values()]
    assert got == [RESTORE_SAMPLER, ("dpmpp_2m_sde", 4), ("unipc", 5)]
    run.config.diffusion.sampler = "euler"
    assert (Plan.of(run, default=RESTORE_SAMPLER).sampler, Plan.of(run, default=RESTORE_SAMPLER).steps) == ("euler", 18)


def test_restoring_with_a_run_that_does_not_draw_images_is_refused_naming_it():
    from types import SimpleNamespace

    from diffusely.checkpoint import RunError
    from diffusely.pipelines.restore import image_run, pixel_run

    config = SimpleNamespace(data=SimpleNamespace(modality="video"), model=SimpleNamespace(dims=3), latent=None)
    clips = SimpleNamespace(config=config)
    for check, what in ((pixel_run, "restore"), (image_run, "img2img")):
        with pytest.raises(RunError, match=f"{what} works on images, but this run draws video \\(3-D samples\\)"):
            check(clips, what)


def test_an_input_folder_skips_hidden_files_and_refuses_two_images_of_one_name(tmp_path):
    from diffusely.data import DataError
    from diffusely.pipelines.restore import read_images

    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "._b.png").write_bytes(b"macOS metadata, not an image")
    assert [name for name, _ in read_images(tmp_path, 1)] == ["b"]
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "b.jpg")
    with pytest.raises(DataError, match=r"images of one name in two formats \(b.jpg, b.png\)"):
        read_images(tmp_path, 1)
