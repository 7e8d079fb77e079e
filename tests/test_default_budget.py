"""A plain `diffusely sample RUN --nfe 5` on a finished run lands within 1.2x of the best error any sampler and
schedule of ours reaches at 5 NFE on that run, against its ODE reference (issue 22); Heun, the default before,
is far outside that bar."""

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely import SAMPLERS, nfe as nfe_of, sample
from diffusely._util import generators, randn
from diffusely.checkpoint import load_run, read_schedules
from diffusely.cli import main
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.nets import UNetConfig
from diffusely.pipelines import generate
from diffusely.pipelines.generate import recipe
from diffusely.samplers import steps_for_nfe
from diffusely.samplers.defaults import added_noise
from diffusely.samplers.optimize import ode_reference, optimize_sigmas
from diffusely.train.loop import train

N = 16  # samples measured: generate's noise for samples 0..15
SEARCH = 40  # sampler runs of each schedule search, the end of training's and ours alike
# the samplers a schedule is searched for: fixed cost, no fresh noise each step (added_noise: their error is mostly it)
DETERMINISTIC = [m for m in SAMPLERS if nfe_of(m, 1) is not None and added_noise(m, {}) is None]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 100 steps (8 x 8 shapes) whose training ended by optimising its schedule for 5 NFE."""
    run_dir = tmp_path_factory.mktemp("budget") / "run"
    config = RunConfig(model=UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(), groups=4),
                       data=DataConfig(source="shapes", image_size=8),
                       train=TrainConfig(steps=100, batch_size=8, warmup_steps=10, checkpoint_every=1000,
                                         sample_every=1000, log_every=1000, schedule_search=3.0))
    with pytest.MonkeyPatch.context() as mp:  # only the budget measured here, with a short search: the test's time
        mp.setattr("diffusely.pipelines.schedule.SEARCHED_BUDGETS", (5,))
        mp.setattr("diffusely.samplers.defaults.MAX_SEARCH", SEARCH)
        result = train(config, run_dir, progress=False)
    return run_dir, result["schedules"]


def rms(x, reference):
    # generate's samples are clamped to the data range, so the reference is too
    return float((x.clamp(-1, 1) - reference.clamp(-1, 1)).pow(2).mean().sqrt())


def test_a_plain_budget_of_5_lands_within_1_2x_of_our_best(finished):
    run_dir, searched = finished
    run = load_run(run_dir)
    d = run.config.diffusion
    noise = randn((N, *run.config.sample_shape), generators(range(N)), "cpu")
    kw = dict(sigma_min=d.sigma_min, sigma_max=d.sigma_max)
    with torch.inference_mode():
        reference = ode_reference(run.denoiser, noise, **kw)
        plain = rms(torch.cat(list(generate(run, N, nfe=5, progress=False))), reference)
        errors = {(m, spacing): rms(sample(run.denoiser, noise, method=m, nfe=5, spacing=spacing, **kw), reference)
                  for m in DETERMINISTIC for spacing in ("karras", "log-snr", "uniform-t")}
        # schedules searched as training searched its own (the same noise seeds and effort) for the runners-up
        search = randn((8, *run.config.sample_shape), generators(range(1_000_000, 1_000_008)), "cpu")
        search_reference = ode_reference(run.denoiser, search, **kw)
        for m in ("dpmpp_3m", "dpmpp_2m"):
            found = optimize_sigmas(run.denoiser, search, steps_for_nfe(m, 5), m, **kw, reference=search_reference,
                                    max_evaluations=SEARCH)
            errors[(m, "optimised")] = rms(sample(run.denoiser, noise, method=m, nfe=5,
                                                  spacing=lambda *_, s=found.sigmas: s, **kw), reference)
    errors[("unipc", "optimised")] = plain  # the schedule training stored, searched as those were
    best = min(errors.values())
    heun = errors[("heun", "karras")]  # what `--nfe 5` drew before: Heun's 3 steps on Karras's spacing
    print(sorted((round(e, 4), m, spacing) for (m, spacing), e in errors.items())[:5])
    print(f"\n5 NFE, RMS error against the ODE: plain {plain:.4f} ({plain / best:.2f}x the best), best {best:.4f} "
          f"{min(errors, key=errors.get)}, heun before {heun:.4f} ({heun / best:.1f}x)")
    assert plain <= 1.2 * best
    assert heun > 1.2 * best and heun > 3 * plain

    # it is UniPC on the schedule the end of training searched and stored
    plan = recipe(run, nfe=5)
    assert (plan.sampler, plan.steps, plan.optimised) == ("unipc", 5, True)
    assert [(s["sampler"], s["nfe"]) for s in searched] == [("unipc", 5)]
    assert searched[0]["error"] < searched[0]["error_karras"]


def test_the_output_and_the_png_say_which_and_old_pngs_replay_as_drawn(finished, tmp_path):
    finished = finished[0]
    r = CliRunner().invoke(main, ["sample", str(finished), "-n", "1", "--nfe", "5", "--out", str(tmp_path / "a"),
                                  "--quiet"])
    assert r.exit_code == 0 and "(unipc, 5 steps, schedule optimised for this run; picked for --nfe 5" in r.output, \
        r.output
    p = json.loads(Image.open(tmp_path / "a" / "000000.png").text["diffusely"])
    assert (p["sampler"], p["steps"], p["nfe"], p["spacing"]) == ("unipc", 5, 5, "optimised")
    assert p["sigmas"] == read_schedules(finished)["unipc"]["5"]

    # a PNG drawn as `--nfe 5` drew before (Heun, 3 steps) replays with Heun, bit for bit
    r = CliRunner().invoke(main, ["sample", str(finished), "-n", "1", "--nfe", "5", "--sampler", "heun", "--out",
                                  str(tmp_path / "old"), "--quiet"])
    assert r.exit_code == 0 and "(heun, 3 steps, karras spacing)" in r.output, r.output
    r = CliRunner().invoke(main, ["sample", "--from-png", str(tmp_path / "old" / "000000.png"), "--out",
                                  str(tmp_path / "again"), "--quiet"])
    assert r.exit_code == 0 and "heun, 3 steps" in r.output and "identical" in r.output, r.output


def test_which_sampler_each_budget_gets(finished):
    run = load_run(finished[0])
    picked = {k: recipe(run, nfe=k) for k in (1, 5, 7, 8, 10, 34, 35, 50)}
    assert {k: (p.sampler, p.steps) for k, p in picked.items()} == {
        1: ("unipc", 1), 5: ("unipc", 5), 7: ("unipc", 7), 8: ("deis", 8), 10: ("deis", 10), 34: ("deis", 34),
        35: ("heun", 18), 50: ("heun", 25)}
    # without a stored schedule: the spacing measured best for the sampler there
    assert (picked[7].spacing, picked[10].spacing, picked[5].optimised, picked[10].optimised) == \
        ("log-snr", "karras", True, False)
    assert recipe(run, steps=5).sampler == "heun"  # steps, not a budget: the run's sampler
    assert recipe(run, nfe=5, sampler="heun").steps == 3  # a named sampler is kept
    run.config.diffusion.sampler = "euler"  # a run made with a sampler of its own keeps it for budgets too
    assert (recipe(run, nfe=5).sampler, recipe(run, nfe=5).spacing) == ("euler", None)
