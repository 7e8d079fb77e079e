"""diffusers models in and shareable models out (diffusely.interop).

A diffusers UNet2DModel with random weights, saved to a folder, imports as a run whose DPM-Solver++(2M) follows
diffusers' DPMSolverMultistepScheduler on the same timesteps to 1e-4 in float32, for each prediction type and
beta schedule; an exported model directory samples bit for bit like its run; a run whose U-Net maps onto
UNet2DModel exports to a diffusers folder that gives the same outputs, and one that does not is refused.
"""

import importlib
import math
import os
from pathlib import Path

import pytest
import torch

from diffusely import sample
from diffusely._files import RunError, load_tensors, save_tensors
from diffusely.checkpoint import MODEL, load_run, write_config
from diffusely.config import DataConfig, DiffusionConfig, RunConfig, _recipe_ddpm
from diffusely.interop import export_model, import_diffusers, to_diffusers
from diffusely.nets.unet import UNet, UNetConfig
from diffusely.pipelines import generate
from helpers import held_lock

diffusers = importlib.import_module("diffusers") if os.environ.get("CI") else pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

V0 = Path(__file__).parent / "fixtures" / "v0"
STEPS = 20  # >= 15: diffusers' lower_order_final keeps out of the way, as ours does


def tiny_unet(seed: int = 0, out_scale: float = 1.0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=8).eval()
    with torch.no_grad():
        for p in unet.conv_out.parameters():
            p.mul_(out_scale)
    return unet


def pipeline_folder(tmp_path, out_scale: float = 1.0, **scheduler) -> Path:
    folder = tmp_path / "pipeline"
    tiny_unet(out_scale=out_scale).save_pretrained(folder / "unet", safe_serialization=True)
    diffusers.DPMSolverMultistepScheduler(**scheduler).save_pretrained(folder / "scheduler")
    return folder


# an untrained eps-network does not predict the noise, so its x0 = x - sigma eps stays at sigma_max's scale (~150,
# where float32 steps by 1e-5): it starts from a small state with small outputs, to compare at the data's scale
@pytest.mark.parametrize("scheduler, start", [
    ({"prediction_type": "epsilon", "beta_schedule": "linear", "out_scale": 0.01}, 0.01),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, 1),
    ({"prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"}, 1),
])
def test_imported_unet_samples_as_diffusers_dpm_solver(tmp_path, scheduler, start):
    folder = pipeline_folder(tmp_path, **scheduler)
    run = load_run(import_diffusers(folder, tmp_path / "run"))
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    solver = diffusers.DPMSolverMultistepScheduler.from_pretrained(folder / "scheduler")
    solver.set_timesteps(STEPS)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * start
    latents = noise.clone()  # diffusers starts from unit-variance noise at its first timestep (init_noise_sigma 1)
    with torch.no_grad():
        for t in solver.timesteps:
            latents = solver.step(unet(latents, t).sample, t, latents).prev_sample
        sigmas = solver.sigmas.double()
        # the same VP state in our VE frame: x = x_vp sqrt(1 + sigma^2), which `sample` builds as noise * sigmas[0]
        scaled = noise * math.sqrt(1 + float(sigmas[0]) ** 2) / float(sigmas[0])
        ours = sample(run.denoiser, scaled, method="dpmpp_2m", steps=STEPS, sigma_min=float(sigmas[-2]),
                      sigma_max=float(sigmas[0]), spacing=lambda *_: sigmas)
    assert (latents - noise).abs().mean() > 0.1 and latents.abs().max() < 10  # moved, and at the data's scale
    assert torch.allclose(ours, latents, rtol=0, atol=1e-4), (ours - latents).abs().max()
    assert run.config.diffusion.sigma_max == pytest.approx(float(solver.sigmas[0]), rel=1e-5)


def test_bare_unet_folder_reads_as_ddpm_epsilon(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "unet", safe_serialization=True)
    run = load_run(import_diffusers(tmp_path / "unet", tmp_path / "run"))
    table = diffusers.DDPMScheduler().alphas_cumprod.double()
    assert run.config.diffusion.parameterization == "eps"
    assert run.config.sample_shape == (3, 8, 8)
    assert run.config.diffusion.sigma_max == pytest.approx(float(((1 - table[-1]) / table[-1]).sqrt()), rel=1e-12)
    x = generate(run, 2, steps=3, sampler="heun", progress=False)
    assert next(iter(x)).shape == (2, 3, 8, 8)


def test_import_refuses_what_it_cannot_read(tmp_path):
    folder = pipeline_folder(tmp_path)
    # DDPMScheduler's zero-SNR table ends at abar = 0 (DPMSolverMultistepScheduler's at 2^-24: sigma 4096, allowed)
    diffusers.DDPMScheduler(rescale_betas_zero_snr=True).save_pretrained(folder / "scheduler")
    with pytest.raises(RunError, match="zero terminal SNR"):
        import_diffusers(folder, tmp_path / "run")
    pickled = tmp_path / "pickled" / "unet"
    pickled.mkdir(parents=True)
    (pickled / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(RunError, match="never loaded"):
        import_diffusers(pickled.parent, tmp_path / "run")
    (pickled / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    (pickled / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(RunError, match="only a diffusers UNet2DModel"):
        import_diffusers(pickled.parent, tmp_path / "run")
    (pickled / "config.json").write_text('{"_class_name": "UNet2DModel", "time_embedding_type": "fourier"}')
    with pytest.raises(RunError, match="score-SDE network"):
        import_diffusers(pickled.parent, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_imported_run_is_not_exported_again(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "unet", safe_serialization=True)
    run_dir = import_diffusers(tmp_path / "unet", tmp_path / "run")
    for export in (export_model, to_diffusers):
        with pytest.raises(RunError, match="wraps a diffusers network"):
            export(run_dir, tmp_path / "out")
    with pytest.raises(RunError, match="already holds a run"):
        import_diffusers(tmp_path / "unet", run_dir)


# --------------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name, cond", [("uncond", {}), ("ddpm", {}), ("text", {"prompts": ["a red circle"]})])
def test_exported_model_samples_bit_for_bit_like_its_run(tmp_path, name, cond):
    out = export_model(V0 / name, tmp_path / "model")
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == sorted(  # the lock: no content
        ["config.json", MODEL] + (["tokenizer.json"] if name == "text" else []))
    tensors, meta = load_tensors(out / MODEL)
    assert meta["step"] == load_run(V0 / name).step and not any(k.startswith("optim") for k in tensors)
    draw = lambda run_dir: torch.cat(list(generate(load_run(run_dir), 2, steps=3, sampler="heun", seed=0,
                                                   progress=False, **cond)))
    assert torch.equal(draw(out), draw(V0 / name))


def test_export_bf16_halves_the_weights_and_stays_close(tmp_path):
    out = export_model(V0 / "uncond", tmp_path / "model", dtype="bf16")
    tensors, _ = load_tensors(out / MODEL)
    assert {v.dtype for v in tensors.values()} == {torch.bfloat16}
    fp32 = (V0 / "uncond" / "checkpoint.safetensors").stat().st_size
    assert (out / MODEL).stat().st_size < fp32 / 5  # no optimizer state, no raw weights, half the bytes
    a, b = (next(iter(generate(load_run(d), 2, steps=3, sampler="heun", progress=False))) for d in (out, V0 / "uncond"))
    assert 0 < (a - b).abs().max() < 0.05
    with pytest.raises(RunError, match="not empty"):
        export_model(V0 / "uncond", tmp_path / "model")


def mappable_run(tmp_path, diffusion: DiffusionConfig) -> Path:
    """A run whose U-Net maps onto UNet2DModel (groups 8 divide every width; attention heads 8 wide)."""
    config = RunConfig(model=UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(1,), head_channels=8,
                                        groups=8), diffusion=diffusion, data=DataConfig(image_size=8))
    torch.manual_seed(0)
    net = UNet(config.model)
    for name, p in net.named_parameters():  # trained-looking weights: ours starts with zeroed output convs
        torch.nn.init.normal_(p, std=0.5 if "qkv" in name else 0.1)  # attention far from uniform
    write_config(tmp_path / "run", config)
    save_tensors(tmp_path / "run" / MODEL, net.state_dict(), {"step": 7, "format": "diffusely-weights-1", "weights": "ema"})
    return tmp_path / "run"


def test_edm_run_to_diffusers_denoises_as_ours(tmp_path):
    run = load_run(mappable_run(tmp_path, DiffusionConfig()))
    out = to_diffusers(run.run_dir, tmp_path / "hf")
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    edm = diffusers.EDMEulerScheduler.from_pretrained(out / "scheduler")
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    sigma = torch.tensor([0.05, 1.0, 20.0])
    s = sigma[:, None, None, None]
    with torch.no_grad():
        theirs = edm.precondition_outputs(x, unet(edm.precondition_inputs(x, s), edm.precondition_noise(sigma)).sample, s)
        ours = run.denoiser(x, sigma)
    assert (ours - x).abs().mean() > 0.1
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()


def test_ddpm_run_round_trips_through_diffusers(tmp_path):
    run = load_run(mappable_run(tmp_path, _recipe_ddpm()))
    back = load_run(import_diffusers(to_diffusers(run.run_dir, tmp_path / "hf"), tmp_path / "back"))
    assert (tmp_path / "hf" / "model_index.json").is_file()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    sigma = torch.tensor([0.05, 1.0, 100.0])
    with torch.no_grad():
        assert torch.allclose(back.denoiser(x, sigma), run.denoiser(x, sigma), atol=1e-4)


def test_to_diffusers_refuses_what_does_not_map(tmp_path):
    # the fixture's groups=32 over widths 8 and 16 gives GroupNorms of 8 and 16 groups: UNet2DModel has one count
    with pytest.raises(RunError, match="GroupNorm group counts"):
        to_diffusers(V0 / "uncond", tmp_path / "hf")
    with pytest.raises(RunError, match="class conditioning"):
        to_diffusers(V0 / "classes", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_second_job_into_the_output_folder_is_refused(tmp_path):
    from diffusely._files import Busy

    run, pipeline, out = mappable_run(tmp_path, DiffusionConfig()), pipeline_folder(tmp_path), tmp_path / "out"
    out.mkdir()
    with held_lock(out, "4242 export --out out"):  # another job
        for write in (lambda: export_model(run, out), lambda: to_diffusers(run, out),
                      lambda: import_diffusers(pipeline, out)):
            with pytest.raises(Busy, match=f"{out} is in use by process 4242 \\(export --out out\\)"):
                write()
        assert os.listdir(out) == [".lock"]  # nothing written beside the other job's
    assert export_model(run, out) == out and (out / MODEL).is_file()  # the folder holds only the lock: it is free
