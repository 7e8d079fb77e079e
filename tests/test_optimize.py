"""Optimised sigma schedules: the search beats Karras's spacing, and a run's stored schedule is used by default."""

import pytest
import torch

from diffusely.checkpoint import LoadedRun, build_denoiser, build_model, read_schedules, write_schedule
from diffusely.config import DataConfig, RunConfig
from diffusely.nets import UNetConfig
from diffusely.pipelines import generate
from diffusely.samplers.optimize import optimize_sigmas, sampler_error
from diffusely.schedules import get_sigmas
from diffusely.toy import GaussianMixture

SIGMA_MIN, SIGMA_MAX = 0.01, 157.4


def test_optimised_schedule_beats_karras_on_the_exact_mixture():
    mixture = GaussianMixture.ring()
    g = torch.Generator().manual_seed(0)
    search, held_out = (torch.randn(64, 2, generator=g, dtype=torch.float64) for _ in range(2))
    refs = [mixture.ode_endpoint(noise * SIGMA_MAX, SIGMA_MAX) for noise in (search, held_out)]
    found = optimize_sigmas(mixture, search, 5, "unipc", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, reference=refs[0])
    sigmas = found.sigmas
    assert sigmas[0] == SIGMA_MAX and sigmas[-2] == SIGMA_MIN and sigmas[-1] == 0 and (sigmas.diff() < 0).all()
    assert found.error < 0.7 * found.error_karras
    karras = get_sigmas(5, SIGMA_MIN, SIGMA_MAX, "karras")
    assert (sampler_error(mixture, held_out, sigmas, "unipc", refs[1])
            < 0.8 * sampler_error(mixture, held_out, karras, "unipc", refs[1]))


def test_a_runs_stored_schedule_is_used_by_default(tmp_path):
    config = RunConfig(model=UNetConfig(channels=(16, 32), blocks_per_level=1, attention_levels=(1,)),
                       data=DataConfig(image_size=8))
    sigmas = [80.0, 3.0, 0.5, 0.002, 0.0]
    write_schedule(tmp_path, "dpmpp_2m", 4, sigmas)
    write_schedule(tmp_path, "unipc", 2, [80.0, 0.002, 0.0])
    assert read_schedules(tmp_path) == {"dpmpp_2m": {"4": sigmas}, "unipc": {"2": [80.0, 0.002, 0.0]}}
    run = LoadedRun(config, build_denoiser(config, build_model(config)), 0, read_schedules(tmp_path))

    def seen(**kw):
        out = []
        next(generate(run, 1, sampler="dpmpp_2m", progress=False, callback=lambda i: out.append(i["sigma"]), **kw))
        return out
    assert seen(nfe=4) == sigmas[:-1]  # a budget of 4 evaluations is 4 steps: the stored schedule
    assert seen(steps=4, spacing="karras")[1] != 3.0  # an explicit spacing wins
    assert seen(steps=3)[1] != 3.0  # no schedule stored for 3 steps


def test_a_bad_sampler_option_is_refused_before_the_search():
    calls = []

    def D(x, sigma):
        calls.append(1)
        return x * 0

    noise = torch.randn(4, 2)
    for options, match in [({"S_churn": float("nan")}, "sampler option S_churn must be a finite number >= 0, got nan"),
                           ({"eta": 0.5}, "sampler 'heun' takes no option eta")]:
        with pytest.raises(ValueError, match=match):
            optimize_sigmas(D, noise, 5, "heun", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **options)
    assert not calls  # not even the reference solve ran
