import pytest
import torch

from diffusely.denoisers import ClassifierFreeGuidance, Denoiser, Thresholded
from diffusely.loss import (denoising_loss, discrete_sigmas, edm_weight, eps_weight, lognormal_sigmas,
                            min_snr_weight, weighting)
from diffusely.schedules import DiscreteSchedule, add_noise

SIGMAS = torch.tensor([0.002, 0.01, 0.3, 1.0, 7.0, 80.0, 157.0], dtype=torch.float64)


class Oracle(torch.nn.Module):
    """A 'network' that knows x0 and the noise and returns what its parameterization asks for."""

    def __init__(self, kind, x0, noise, sigma, sigma_data):
        super().__init__()
        self.kind, self.x0, self.noise, self.sigma, self.sd = kind, x0, noise, sigma, sigma_data
        self.calls = []

    def forward(self, inp, noise_label, **cond):
        self.calls.append((inp, noise_label))
        s = self.sigma.view(-1, 1, 1, 1)
        if self.kind == "eps":
            return self.noise
        if self.kind == "v":  # v = (sd n - s x0 / sd) / sqrt(s^2 + sd^2); DDPM's sqrt(abar) eps - sqrt(1-abar) x0 at sd = 1
            return (self.sd * self.noise - s * self.x0 / self.sd) / (s**2 + self.sd**2).sqrt()
        if self.kind == "x0":
            return self.x0
        if self.kind == "edm":  # F's target, EDM eq. 8
            x = self.x0 + s * self.noise
            c_skip = self.sd**2 / (s**2 + self.sd**2)
            c_out = s * self.sd / (s**2 + self.sd**2).sqrt()
            return (self.x0 - c_skip * x) / c_out
        raise AssertionError


@pytest.mark.parametrize("kind, sigma_data", [("eps", 1.0), ("v", 1.0), ("v", 0.5), ("x0", 1.0), ("edm", 0.5), ("edm", 1.3)])
def test_oracle_network_gives_x0_at_every_sigma(kind, sigma_data):
    torch.manual_seed(0)
    x0 = torch.randn(len(SIGMAS), 3, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    D = Denoiser(Oracle(kind, x0, noise, SIGMAS, sigma_data), kind, sigma_data=sigma_data)
    x = add_noise(x0, SIGMAS, noise)
    assert torch.allclose(D(x, SIGMAS), x0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind, sigma_data", [("edm", 0.5), ("eps", 1.0), ("v", 1.0)])
def test_residual_denoiser_learns_the_detail_over_its_base(kind, sigma_data):
    # an oracle of the residual x0 - b (b: the condition's first channels) denoises to x0 at every sigma, so b is
    # added back; the loss trains raw's F, which must be zero exactly at that oracle's output; the null is b = 0
    torch.manual_seed(0)
    x0, noise = torch.randn(2, len(SIGMAS), 3, 4, 4, dtype=torch.float64)
    lowres = torch.cat([torch.randn_like(x0), torch.ones_like(x0[:, :1])], 1)  # A^+ y, then the "given" channel
    base = lowres[:, :3]
    D = Denoiser(Oracle(kind, x0 - base, noise, SIGMAS, sigma_data), kind, sigma_data=sigma_data, residual="lowres")
    x = add_noise(x0, SIGMAS, noise)
    assert torch.allclose(D(x, SIGMAS, lowres=lowres), x0, rtol=0, atol=1e-10)
    loss = denoising_loss(D, x0, SIGMAS, torch.ones_like(SIGMAS), noise, lowres=lowres)
    assert loss.max() < 1e-9  # (the loss rounds F and its target to float32)
    c_in = (SIGMAS**2 + sigma_data**2).rsqrt().view(-1, 1, 1, 1)
    assert torch.allclose(D.net.calls[0][0], c_in * (x - base), rtol=0, atol=1e-12)  # the network saw x - b
    assert D.base(x, {}) == 0
    plain = Denoiser(Oracle(kind, x0, noise, SIGMAS, sigma_data), kind, sigma_data=sigma_data)
    assert torch.equal(plain(x, SIGMAS, lowres=lowres), plain(x, SIGMAS))  # residual off: the condition adds nothing


def test_residual_consistency_student_keeps_its_boundary_condition():
    # f(x, sigma_min) = x exactly, base or not: forward adds b back rather than folding it through c_out (0 there)
    from diffusely.distill.consistency import ConsistencyDenoiser
    x, lowres = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4, dtype=torch.float64)
    f = ConsistencyDenoiser(lambda inp, label, **cond: torch.ones_like(inp), sigma_data=0.5, sigma_min=0.002,
                            residual="lowres")
    assert torch.allclose(f(x, torch.full((2,), 0.002, dtype=torch.float64), lowres=lowres), x, rtol=0, atol=1e-12)
    assert f(x, torch.full((2,), 1.0, dtype=torch.float64), lowres=lowres).sub(x).abs().max() > 0.1


def test_eps_denoiser_feeds_vp_input_and_timesteps():
    sched = DiscreteSchedule.named("linear")
    t = torch.tensor([0, 250, 999])
    sigma = sched.sigmas[t]
    x0 = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    noise = torch.randn_like(x0)
    net = Oracle("eps", x0, noise, sigma, 1.0)
    D = Denoiser(net, "eps", schedule=sched)
    D(add_noise(x0, sigma, noise), sigma)
    inp, label = net.calls[0]
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(inp, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-12)
    assert torch.equal(label, t.double())


def test_edm_noise_label_and_dtype():
    net = lambda inp, label: inp * 0 + label.view(-1, 1)
    D = Denoiser(net, "edm")
    x = torch.zeros(2, 3)
    out = D(x, torch.tensor([1.0, 2.0]))
    assert out.dtype == torch.float32
    assert D.noise_label(torch.tensor(2.0)).item() == pytest.approx(torch.log(torch.tensor(2.0)).item() / 4)


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="unknown parameterization 'epsilon'; choose one of: eps, v, x0, edm"):
        Denoiser(torch.nn.Identity(), "epsilon")


def test_eps_loss_equals_ddpm_simple_loss():
    """|eps - eps_theta(sqrt(abar) x0 + sqrt(1-abar) eps, t)|^2, the textbook way, against ours."""
    sched = DiscreteSchedule.named("linear")
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 8)).double()
    eps_theta = lambda x_t, t: net(x_t * (1 + t.view(-1, 1, 1) / 1000)).view_as(x_t)

    x0 = torch.randn(64, 2, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    sigma = discrete_sigmas(64, sched, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(sigma, sched.sigmas[t])
    eps = torch.randn_like(x0)
    ab = sched.alphas_cumprod[t].view(-1, 1, 1)
    textbook = ((eps - eps_theta(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t.double())) ** 2).mean((1, 2))

    D = Denoiser(eps_theta, "eps", schedule=sched)
    ours = denoising_loss(D, x0, sigma, eps_weight(sigma), eps)
    assert torch.allclose(ours.double(), textbook, rtol=1e-5)
    # and the same loss through the generic (x0-frame) path for any callable denoiser
    generic = denoising_loss(lambda x, s: D(x, s), x0, sigma, eps_weight(sigma), eps)
    assert torch.allclose(generic.double(), textbook, rtol=1e-4)


def test_edm_loss_is_unit_weight_on_network_target():
    torch.manual_seed(2)
    x0 = torch.randn(16, 4)
    sigma = lognormal_sigmas(16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn_like(x0)
    F = torch.randn_like(x0)
    D = Denoiser(lambda inp, label: F, "edm")
    loss = denoising_loss(D, x0, sigma, edm_weight(sigma), noise)
    s = sigma.view(-1, 1)
    x = x0 + s * noise
    target = (x0 - 0.25 / (s**2 + 0.25) * x) / (s * 0.5 / (s**2 + 0.25).sqrt())
    assert torch.allclose(loss, ((F - target) ** 2).mean(1), rtol=1e-4)


def test_lognormal_distribution_moments():
    s = lognormal_sigmas(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.01)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.01)


def test_min_snr_weight():
    sigma = torch.tensor([0.1, 1.0, 10.0])
    assert torch.allclose(min_snr_weight(sigma, gamma=5.0), torch.tensor([5.0, 1.0, 0.01]))
    with pytest.raises(ValueError, match="unknown loss weighting 'snr'; choose one of: eps, edm, min-snr, uniform"):
        weighting("snr")


class CountingDenoiser:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, class_labels):
        self.calls += 1
        return x * 0 + class_labels.view(-1, 1).to(x.dtype) * 10 + sigma.view(-1, 1)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guidance_scales_one_call(scale):
    D = CountingDenoiser()
    cfg = ClassifierFreeGuidance(D, scale, {"class_labels": torch.full((4,), 7)})
    x = torch.zeros(4, 2)
    labels = torch.tensor([0, 1, 2, 3])
    out = cfg(x, 0.5, class_labels=labels)
    assert D.calls == 1
    cond = labels.view(-1, 1) * 10.0 + 0.5
    uncond = torch.full((4, 1), 70.5)
    assert torch.allclose(out, (uncond + scale * (cond - uncond)).expand(4, 2))


def test_timestep_network_beyond_its_table_uses_the_nearest_timestep():
    """A churn step lifts sigma above the table's sigma_max: the label clamps, the coefficients do not."""
    sched = DiscreteSchedule.named("linear")
    labels = []
    D = Denoiser(lambda inp, t: labels.append(t) or inp * 0, "eps", schedule=sched)
    x = torch.ones(2, 3)
    out = D(x, torch.tensor([200.0, 0.005]))
    assert labels[0].tolist() == [999.0, 0.0]
    assert torch.equal(out, x)  # eps = 0: D = x exactly, with the true sigma


def test_ddpm_recipe_samples_with_churn():
    from diffusely import sample
    sched = DiscreteSchedule.named("linear")
    D = Denoiser(lambda inp, t: inp * 0, "eps", schedule=sched)
    out = sample(D, torch.randn(2, 3), method="heun", steps=4, sigma_min=sched.sigma_min, sigma_max=sched.sigma_max,
                 S_churn=10.0)
    assert torch.isfinite(out).all()


class BatchRecorder:
    """D(x | label) = label + sigma, per sample; records the batch size of every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, class_labels):
        self.batches.append(len(x))
        return x * 0 + class_labels.view(-1, 1).to(x.dtype) + sigma.view(-1, 1)


def test_guidance_interval_skips_the_unconditional_half_outside_it():
    D = BatchRecorder()
    cfg = ClassifierFreeGuidance(D, 3.0, {"class_labels": torch.zeros(2)}, interval=(0.5, 2.0))
    labels = torch.tensor([1.0, 2.0])
    outside = cfg(torch.zeros(2, 3), 5.0, class_labels=labels)
    assert D.batches == [2] and torch.allclose(outside, (labels + 5.0).view(-1, 1).expand(2, 3))
    inside = cfg(torch.zeros(2, 3), 2.0, class_labels=labels)  # the interval includes its upper end
    assert D.batches == [2, 4] and torch.allclose(inside, (3 * labels + 2.0).view(-1, 1).expand(2, 3))
    # one batch with samples on both sides: each gets what it would get alone
    mixed = cfg(torch.zeros(2, 3), torch.tensor([5.0, 1.0]), class_labels=labels)
    assert torch.allclose(mixed[:, 0], torch.tensor([1 + 5.0, 3 * 2 + 1.0]))


def test_guidance_rescale_matches_the_conditional_std():
    def D(x, sigma, class_labels):  # the conditional estimate has per-sample std 1, the unconditional 0.5
        pattern = torch.linspace(-1, 1, x.shape[1]).expand_as(x)
        return pattern / pattern.std(1, keepdim=True) * torch.where(class_labels.view(-1, 1) > 0, 1.0, 0.5)
    null = {"class_labels": torch.zeros(2)}
    kw = dict(class_labels=torch.ones(2))
    x = torch.zeros(2, 16)
    plain = ClassifierFreeGuidance(D, 5.0, null)(x, 1.0, **kw)
    full = ClassifierFreeGuidance(D, 5.0, null, rescale=1.0)(x, 1.0, **kw)
    half = ClassifierFreeGuidance(D, 5.0, null, rescale=0.5)(x, 1.0, **kw)
    assert plain.std(1) == pytest.approx([3.0, 3.0])  # 0.5 + 5 (1 - 0.5)
    assert full.std(1) == pytest.approx([1.0, 1.0])
    assert torch.allclose(half, 0.5 * full + 0.5 * plain)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=float("inf")), "the guidance scale must be a finite number"),
    (dict(scale=float("nan")), "the guidance scale must be a finite number"),
    (dict(scale=3.0, rescale=1.5), r"the guidance rescale \(phi\) must lie in \[0, 1\], got 1.5"),
    (dict(scale=3.0, rescale=float("nan")), r"the guidance rescale \(phi\) must lie in \[0, 1\], got nan"),
    (dict(scale=3.0, interval=(2.0, 1.0)), r"the guidance interval \(sigma_lo, sigma_hi\) needs 0 <= sigma_lo < sigma_hi"),
])
def test_guidance_refuses_values_that_give_garbage(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassifierFreeGuidance(lambda x, sigma, **cond: x, uncond={"class_labels": torch.zeros(2)}, **kwargs)


def test_thresholding_clips_the_estimate_to_the_data_range():
    D = Thresholded(lambda x, sigma, **cond: 3 * x + cond["shift"], low=-1.0, high=0.5)
    out = D(torch.tensor([[-2.0, 0.0, 0.1, 1.0]]), 1.0, shift=0.2)
    assert torch.equal(out, torch.tensor([[-1.0, 0.2, 0.5, 0.5]]))
