"""Our multistep solvers against diffusers' (installed by the dev extra) on identical sigmas, with an exact denoiser.

Where both implement the same method the trajectories agree to diffusers' float32 rounding: DPM-Solver++(2M),
UniPC orders 2 and 3, DEIS orders 2 and 3. (Their 3M differs from ours: see multistep.dpmpp_update.)
"""

import importlib
import math
import os

import pytest
import torch

from diffusely import sample
from diffusely.toy import GaussianMixture

# the dev extra installs diffusers, so CI (CI=true) runs this check: there a missing diffusers is an error, not a skip
diffusers = importlib.import_module("diffusers") if os.environ.get("CI") else pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

STEPS = 20  # >= 15: diffusers' lower_order_final keeps out of the way, as ours does


def diffusers_states(scheduler, mixture, noise):
    """VE states x at each of the scheduler's sigmas as the scheduler holds them after its step there
    (UniPC: after its corrector), and its final output; the model sees the scheduler's own sigma."""
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.sigmas.double()
    latents = noise * float(sigmas[0]) / math.sqrt(1 + float(sigmas[0]) ** 2)
    states = []
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(sigmas[i])
        x = latents * math.sqrt(1 + sigma**2)
        latents = scheduler.step((x - mixture(x, sigma)) / sigma, t, latents).prev_sample
        held = getattr(scheduler, "last_sample", None)
        states.append(x if held is None else held * math.sqrt(1 + sigma**2))
    return states, latents, sigmas


@pytest.mark.parametrize("name, method, options", [
    ("DPMSolverMultistepScheduler", "dpmpp_2m", {}),
    ("UniPCMultistepScheduler", "unipc", {"solver_order": 2}),
    ("UniPCMultistepScheduler", "unipc", {"solver_order": 3}),
    ("DEISMultistepScheduler", "deis", {"solver_order": 2}),
    ("DEISMultistepScheduler", "deis", {"solver_order": 3}),
])
def test_same_trajectory_as_diffusers(name, method, options):
    mixture = GaussianMixture.ring()
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scheduler = getattr(diffusers, name)(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                         beta_schedule="linear", **options)
    states, final, sigmas = diffusers_states(scheduler, mixture, noise)
    if sigmas[-1] > 0:  # DEIS stops at its sigma_min; ours then takes one more step, a denoise to 0
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    ours = []
    out = sample(mixture, noise, method=method, steps=len(sigmas) - 1, sigma_min=float(sigmas[-2]),
                 sigma_max=float(sigmas[0]), spacing=lambda *_: sigmas, callback=lambda s: ours.append(s["x"]),
                 **({"order": options["solver_order"]} if "solver_order" in options else {}))
    # all states up to the last two, where the two libraries' end-of-run order rules differ
    for i, (a, b) in enumerate(zip(ours[:STEPS - 1], states[:STEPS - 1])):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (i, (a - b).abs().max())
    if method == "dpmpp_2m":
        assert torch.allclose(out, final.double(), atol=1e-4)
