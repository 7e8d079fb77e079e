"""Shareable models out: an inference-only model directory, and a diffusers UNet2DModel folder where ours maps exactly.

`export_model(run_dir, out, dtype)` writes config.json and the EMA weights alone (model.safetensors, no optimizer
state, in fp32, bf16 or fp16), plus the run's small JSON companions (tokenizer.json, schedules.json,
layouts.json); `load_run` reads the directory like a run, since it prefers model.safetensors and needs no
checkpoint. A latent run's model still decodes through the autoencoder run its config.json names.

`to_diffusers(run_dir, out)` writes `unet/` and `scheduler/` for diffusers. Our U-Net is ADM's, as diffusers'
UNet2DModel with resnet_time_scale_shift="scale_shift" is, so the mapping is one to one where (a) the run is
unconditional 2-D pixel diffusion without patching, (b) every GroupNorm has the same group count (ours takes
gcd(channels, groups) per layer, diffusers one count for all), (c) every attention block has the same head
width (or one head each), (d) the noise embedding is 4 x channels[0] wide, and (e) the noise label is one a
diffusers scheduler computes: EDM's ln(sigma)/4 (EDMEulerScheduler) or a linear or cosine DDPM timestep table
(DDPMScheduler). Anything else is refused with the reason; no approximation is written. The written network
is loaded back with diffusers and its outputs compared with ours before to_diffusers returns.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .._files import LOCK, RunError, atomic_write, atomic_write_text, check_writable, run_lock, save_tensors
from ..checkpoint import MODEL, read_config, sampling_weights, write_config
from ..config import RunConfig
from ..nets.unet import UNet
from ..state import count_nonfinite

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPANIONS = ("tokenizer.json", "schedules.json", "layouts.json")  # small files a reading command may need


def _own_run(run_dir: Path) -> RunConfig:
    """The run's config; a RunError for a diffusers network imported as a run (it is already shareable)."""
    from .diffusers import is_diffusers_run
    if is_diffusers_run(run_dir):
        raise RunError(f"{run_dir} wraps a diffusers network (diffusely import-diffusers): share its unet/ folder "
                       f"with the scheduler in its config.json instead")
    return read_config(run_dir)


def _refuse_full(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(p.name != LOCK for p in out.iterdir())):
        raise RunError(f"{out} already exists and is not empty; choose a new --out folder")


@contextmanager
def _fresh(out: Path, command: str):
    """Hold out's lock (made if need be) for the whole write, so two exports into one folder cannot both find it
    empty; refused unless out is new or empty (checked before the lock too: a refusal leaves no lock file) and
    writable."""
    _refuse_full(out)
    with run_lock(out, f"{command} --out {out}"):
        _refuse_full(out)
        check_writable(out)
        yield


def export_model(run_dir: str | Path, out: str | Path, dtype: str = "fp32") -> Path:
    """Write the inference-only model directory `out` of a run: config.json, model.safetensors (the EMA weights
    the run samples with, cast to `dtype`: fp32 | bf16 | fp16) and the run's JSON companions. Returns out."""
    if dtype not in DTYPES:
        raise RunError(f"unknown --dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    run_dir, out = Path(run_dir), Path(out)
    config = _own_run(run_dir)
    state, step = sampling_weights(run_dir)
    state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    if count_nonfinite(state):
        raise RunError(f"the weights of {run_dir} overflow {dtype} (values past its range): export as bf16 or fp32")
    with _fresh(out, "export"):
        write_config(out, config)
        for name in COMPANIONS:
            if (run_dir / name).is_file():
                atomic_write(out / name, lambda tmp, name=name: shutil.copyfile(run_dir / name, tmp))
        save_tensors(out / MODEL, state, {"step": step, "format": "diffusely-weights-1", "weights": "ema",
                                          "dtype": dtype})
    return out


# ------------------------------------------------------------------------------------------- diffusers UNet2DModel


def _single(values: set, what: str) -> object:
    if len(values) != 1:
        raise RunError(f"this run's U-Net has {what} {sorted(values)} where diffusers' UNet2DModel takes one; "
                       f"it cannot be exported as diffusers without changing it")
    return next(iter(values))


def _refuse_unmappable(config: RunConfig) -> None:
    m, d = config.model, config.diffusion
    why = [text for bad, text in [
        (m.dims != 2, f"{m.dims}-D data"), (config.data.modality != "image", f"{config.data.modality} data"),
        (m.patch_size != 1, "patching (patch_size > 1)"),
        (m.num_classes > 0, "class conditioning"), (config.text.enabled or m.context_dim > 0, "text conditioning"),
        (m.layout_channels > 0, "layout conditioning"), (config.latent is not None, "latent diffusion"),
        (m.lowres_channels > 0, "low-resolution conditioning (super-resolution)"),
        (config.distill is not None, "a consistency student (its network is read through c_skip and c_out of its own)"),
        (m.emb_dim not in (0, 4 * m.channels[0]), "a noise embedding other than 4 x channels[0] wide"),
        (d.parameterization == "edm" and d.schedule is not None, "EDM coefficients over a timestep table"),
        (d.parameterization != "edm" and d.schedule not in ("linear", "cosine"),
         f"{d.parameterization} without a linear or cosine timestep table"),
        (d.parameterization in ("v", "x0") and d.sigma_data != 1, f"{d.parameterization} with sigma_data != 1"),
    ] if bad]
    if why:
        raise RunError(f"this run does not map onto diffusers' UNet2DModel ({'; '.join(why)}): only unconditional "
                       f"2-D pixel runs without patching do (EDM, or DDPM on a linear or cosine schedule)")


def unet2d_config(config: RunConfig, net: UNet) -> dict:
    """The UNet2DModel config that builds our U-Net's exact counterpart (RunError where none does)."""
    _refuse_unmappable(config)
    m = config.model
    groups = _single({g.num_groups for g in net.modules() if isinstance(g, nn.GroupNorm)}, "GroupNorm group counts")
    attention = [a for a in net.modules() if hasattr(a, "heads") and hasattr(a, "qkv")]
    widths = {a.qkv.in_channels // a.heads for a in attention}
    head_dim = None if all(a.heads == 1 for a in attention) else _single(widths, "attention head widths")
    attn = [level in m.attention_levels for level in range(len(m.channels))]
    return {
        "sample_size": config.data.image_size, "in_channels": m.in_channels, "out_channels": m.out_channels,
        "block_out_channels": list(m.channels), "layers_per_block": m.blocks_per_level,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "attention_head_dim": head_dim, "norm_num_groups": groups, "attn_norm_num_groups": groups, "norm_eps": 1e-6,
        "resnet_time_scale_shift": "scale_shift", "flip_sin_to_cos": True, "freq_shift": 0,
        "time_embedding_type": "positional", "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0,
        "act_fn": "silu", "add_attention": True, "center_input_sample": False,
    }


def _block_keys(ours: str, layer: nn.Module, theirs: dict[str, int], target: str) -> list[tuple[str, str]]:
    """(our key prefix, diffusers' key prefix) of one layer of a U-Net block; `theirs` counts the block's
    resnets and attentions so far."""
    name = type(layer).__name__
    if name == "ResBlock":
        i = theirs["resnets"] = theirs.get("resnets", -1) + 1
        names = {"norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
                 "skip": "conv_shortcut"}
        return [(f"{ours}.{a}", f"{target}.resnets.{i}.{b}") for a, b in names.items()]
    if name == "Attention":
        i = theirs["attentions"] = theirs.get("attentions", -1) + 1
        return [(f"{ours}.norm", f"{target}.attentions.{i}.group_norm"),
                (f"{ours}.qkv", f"{target}.attentions.{i}.qkv"),
                (f"{ours}.proj", f"{target}.attentions.{i}.to_out.0")]
    sampler = "downsamplers" if name == "Downsample" else "upsamplers"
    return [(f"{ours}.conv", f"{target}.{sampler}.0.conv")]


def key_map(net: UNet) -> list[tuple[str, str]]:
    """(our key prefix, diffusers' key prefix) for every layer of our U-Net, in UNet2DModel's block layout."""
    cfg, pairs = net.config, [("emb.0", "time_embedding.linear_1"), ("emb.2", "time_embedding.linear_2"),
                              ("input", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")]
    per_level = cfg.blocks_per_level + 1  # the down path's blocks and its downsample
    for group, blocks, size, target in (("down", net.down, per_level, "down_blocks"),
                                        ("up", net.up, cfg.blocks_per_level + 1, "up_blocks")):
        counts: dict[int, dict[str, int]] = {}
        for k, layers in enumerate(blocks):
            level = k // size
            for j, layer in enumerate(layers):
                pairs += _block_keys(f"{group}.{k}.{j}", layer, counts.setdefault(level, {}), f"{target}.{level}")
    counts = {}
    for j, layer in enumerate(net.middle):
        pairs += _block_keys(f"middle.{j}", layer, counts, "mid_block")
    return pairs


def diffusers_state(net: UNet) -> dict[str, torch.Tensor]:
    """Our U-Net's weights under UNet2DModel's names (the fused qkv split into to_q, to_k, to_v; 1x1 convs as
    the linear layers diffusers' attention uses)."""
    ours, out = net.state_dict(), {}
    for a, b in key_map(net):
        for suffix in ("weight", "bias"):
            if f"{a}.{suffix}" not in ours:
                continue
            v = ours[f"{a}.{suffix}"]
            if b.endswith(".qkv"):
                for part, chunk in zip(("to_q", "to_k", "to_v"), v.chunk(3)):
                    out[f"{b[:-4]}.{part}.{suffix}"] = chunk.flatten(1) if suffix == "weight" else chunk
            else:
                out[f"{b}.{suffix}"] = v.flatten(1) if b.endswith("to_out.0") and suffix == "weight" else v
    return out


def scheduler_config(config: RunConfig) -> tuple[str, dict]:
    """(diffusers scheduler class, its config) that computes this run's noise labels and coefficients."""
    d = config.diffusion
    if d.parameterization == "edm":
        return "EDMEulerScheduler", {"sigma_min": d.sigma_min, "sigma_max": d.sigma_max, "sigma_data": d.sigma_data,
                                     "sigma_schedule": "karras", "rho": 7.0, "prediction_type": "epsilon"}
    prediction = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[d.parameterization]
    betas = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[d.schedule]
    return "DDPMScheduler", {"num_train_timesteps": d.timesteps, "beta_schedule": betas, "beta_start": 1e-4,
                             "beta_end": 0.02, "prediction_type": prediction, "clip_sample": False}


def check_outputs(net: UNet, unet: nn.Module, labels: torch.Tensor, atol: float = 1e-4) -> float:
    """The largest difference between our network's and diffusers' outputs on a seeded input at `labels`;
    RunError past atol (float32 rounding of the same arithmetic stays near 1e-6)."""
    cfg = net.config
    x = torch.randn(len(labels), cfg.in_channels, *[net.config.downsample_factor * 2] * 2,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = float((net(x, labels) - unet(x, labels).sample).abs().max())
    if not error <= atol:
        raise RunError(f"the diffusers network differs from this run's by {error:.3g} (> {atol:g}): not exported")
    return error


def to_diffusers(run_dir: str | Path, out: str | Path) -> Path:
    """Write `out/unet` (UNet2DModel: config.json, diffusion_pytorch_model.safetensors) and `out/scheduler` for
    the run's EMA weights, plus model_index.json (a DDPMPipeline) for a DDPM run. The network is loaded back
    with diffusers and compared with ours first. RunError naming the reason for a run that does not map."""
    from .diffusers import _diffusers
    diffusers = _diffusers()
    run_dir, out = Path(run_dir), Path(out)
    config = _own_run(run_dir)
    net = UNet(config.model)
    net.load_state_dict(sampling_weights(run_dir)[0])
    net.eval().requires_grad_(False)
    unet = diffusers.UNet2DModel.from_config(unet2d_config(config, net))
    unet.load_state_dict(diffusers_state(net))  # strict: every key of theirs filled, no key of ours left
    unet.eval().requires_grad_(False)
    check_outputs(net, unet, torch.tensor([-1.5, 0.0, 1.2]) if config.diffusion.schedule is None
                  else torch.tensor([0.0, 411.0, 999.0]))
    scheduler_class, scheduler = scheduler_config(config)
    with _fresh(out, "export --diffusers"):
        unet.save_pretrained(out / "unet", safe_serialization=True)
        getattr(diffusers, scheduler_class).from_config(scheduler).save_pretrained(out / "scheduler")
        if scheduler_class == "DDPMScheduler":
            index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                     "scheduler": ["diffusers", scheduler_class], "unet": ["diffusers", "UNet2DModel"]}
            atomic_write_text(out / "model_index.json", json.dumps(index, indent=2) + "\n")
    return out
