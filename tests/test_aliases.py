"""Sampler and schedule names from A1111, ComfyUI, k-diffusion and diffusers (diffusely.samplers.aliases):
each row of docs/samplers-aliases.md resolves to the sampler, spacing and options it documents, and
`diffusely.sample` under an alias draws exactly what it draws under the documented sampler and spacing."""

import ast
import math
import re
from pathlib import Path

import pytest
import torch

from diffusely import SAMPLERS, sample
from diffusely.samplers import ALIASES, check_options, resolve_sampler, resolve_spacing
from diffusely.schedules import SPACINGS
from diffusely.toy import GaussianMixture

DOC = Path(__file__).parent.parent / "docs" / "samplers-aliases.md"
ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| `(?P<sampler>\w+)` \| (?P<spacing>`[\w-]+`|caller) \| (?P<options>[^|]+) \|")


def documented() -> list[tuple[str, str, object, dict]]:
    rows = []
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            options = {} if m["options"].strip() == "-" else {
                k: ast.literal_eval(v) for k, v in (kv.split("=") for kv in m["options"].strip().split(", "))}
            spacing = None if m["spacing"] == "caller" else m["spacing"].strip("`")
            rows.append((m["name"], m["sampler"], spacing, options))
    return rows


ROWS = documented()


def test_the_doc_lists_every_alias():
    names = {name for name, *_ in ROWS}
    assert len(ROWS) > 90 and set(ALIASES) <= names, set(ALIASES) - names


@pytest.mark.parametrize("name, sampler, spacing, options", ROWS, ids=[r[0] for r in ROWS])
def test_alias_resolves_as_documented(name, sampler, spacing, options):
    assert resolve_sampler(name) == (sampler, spacing, options)
    assert sampler in SAMPLERS and (spacing is None or spacing in SPACINGS)
    check_options(sampler, options)


@pytest.mark.parametrize("name, method, spacing, options", [
    ("DPM++ 2M Karras", "dpmpp_2m", "karras", {"lower_order_final": False}),
    ("euler A", "euler_ancestral", "uniform-t", {}),
    ("DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', use_karras_sigmas=True)", "dpmpp_2m_sde",
     "karras", {}),
    ("UniPC", "unipc", "uniform-t", {"order": 3}),
    ("sample_dpmpp_2m", "dpmpp_2m", None, {"lower_order_final": False}),
])
def test_sample_under_an_alias_draws_the_documented_sampler(name, method, spacing, options):
    mixture = GaussianMixture.ring()
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(steps=6, sigma_min=0.01, sigma_max=20.0)
    a = sample(mixture, noise, method=name, generator=torch.Generator().manual_seed(1), **kw)
    b = sample(mixture, noise, method=method, spacing=spacing, generator=torch.Generator().manual_seed(1), **kw, **options)
    assert torch.equal(a, b)
    # the alias's spacing is a real choice: another one moves the samples
    other = "log-snr" if spacing != "log-snr" else "karras"
    c = sample(mixture, noise, method=name, spacing=other, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.allclose(a, c)


def test_the_call_overrides_the_alias_and_takes_spacing_names():
    mixture = GaussianMixture.ring()
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(steps=6, sigma_min=0.01, sigma_max=20.0)
    assert torch.equal(sample(mixture, noise, method="UniPC", order=1, spacing="exponential", **kw),
                       sample(mixture, noise, method="unipc", order=1, spacing="log-snr", **kw))
    assert resolve_spacing("Karras") == "karras" and resolve_spacing("sgm_uniform") == "uniform-t"


def test_names_that_are_not_known_are_refused_naming_what_is():
    with pytest.raises(ValueError, match=r"unknown sampler 'DPM\+\+ 4M'.*dpmpp_2m.*DPM\+\+ 2M Karras"):
        resolve_sampler("DPM++ 4M")
    with pytest.raises(ValueError, match="use_beta_sigmas=True has no equivalent"):
        resolve_sampler("EulerDiscreteScheduler(use_beta_sigmas=True)")
    with pytest.raises(ValueError, match="solver_order=4 has no equivalent"):
        resolve_sampler("DPMSolverMultistepScheduler(solver_order=4)")
    with pytest.raises(ValueError, match="Python keywords"):
        resolve_sampler("DPMSolverMultistepScheduler(karras)")
    with pytest.raises(ValueError, match="unknown diffusers scheduler 'FlowMatchEulerDiscreteScheduler'"):
        resolve_sampler("FlowMatchEulerDiscreteScheduler()")
    with pytest.raises(ValueError, match="unknown spacing 'beta'"):
        resolve_spacing("beta")


def kdiffusion_dpmpp_2m(denoiser, x, sigmas):
    """k-diffusion's sample_dpmpp_2m as published (Crowson), written out: the reference the alias claims."""
    old, t = None, lambda s: -math.log(s)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, float(sigmas[i]))
        if sigmas[i + 1] == 0:
            return denoised
        h = t(sigmas[i + 1]) - t(sigmas[i])
        if old is not None:
            r = (t(sigmas[i]) - t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * old
        x = float(sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * (denoised if old is None else denoised_d)
        old = denoised
    return x


@pytest.mark.parametrize("name", ["sample_dpmpp_2m", "DPM++ 2M Karras"])
def test_dpmpp_2m_aliases_are_k_diffusions_at_few_steps(name):
    mixture = GaussianMixture.ring()
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = SPACINGS["karras"](6, 0.01, 20.0)
    ours = sample(mixture, noise, method=name, steps=6, sigma_min=0.01, sigma_max=20.0, spacing=lambda *_: sigmas)
    theirs = kdiffusion_dpmpp_2m(mixture, noise * 20.0, sigmas)
    assert torch.allclose(ours, theirs, atol=1e-12), (ours - theirs).abs().max()
    # our own name keeps diffusers' end-of-run rule, which moves the result at 6 steps
    assert not torch.allclose(sample(mixture, noise, method="dpmpp_2m", steps=6, sigma_min=0.01, sigma_max=20.0), theirs)


@pytest.mark.parametrize("command", ["sample", "synth", "eval", "reverse", "optimize-schedule"])
def test_sampler_help_says_it_takes_the_names_people_know(command):
    from click.testing import CliRunner

    from diffusely.cli import main

    r = CliRunner().invoke(main, [command, "--help"], terminal_width=1000)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "or a name A1111, ComfyUI, k-diffusion or diffusers users type" in text and "samplers-aliases.md" in text
    given = re.search(r"schedule and options: (.*) \(all of them", text)[1]
    examples = [name.strip(" '") for name in given.split(", ")]
    assert len(examples) == 5 and all(name in documented_names() for name in examples), examples


def documented_names() -> set[str]:
    return {name for name, *_ in documented()}
