"""The diffusers peer of benchmarks/prompt_adherence.py: diffusers' UNet2DConditionModel trained on the latent default's
latents (the same autoencoder, the same encoded training set), with the same text encoder (diffusely's scratch
transformer over the run's tokenizer, trained with the network), for the same wall-clock minutes.

Its settings are diffusers' own, not ours: the network as diffusers builds Stable Diffusion's (cross-attention
transformer blocks at every level but the last, two layers a block, 8 heads, GEGLU feed-forward), at our widths so
it costs about what ours does; the training recipe of diffusers' example for models trained from scratch
(examples/unconditional_image_generation/train_unconditional.py): epsilon-prediction on DDPM's 1000-step linear
schedule, AdamW at lr 1e-4 with betas (0.95, 0.999) and weight decay 1e-6, 500 warm-up steps then a cosine decay, and
an EMA with warm-up (inv_gamma 1, power 3/4, at most 0.9999). Captions are dropped 10% of the time, as ours, so
classifier-free guidance works. It samples through diffusely (the ddpm recipe's Denoiser: any sampler works).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from diffusely.checkpoint import CHECKPOINT, LoadedRun, build_denoiser
from diffusely.config import RECIPES, RunConfig
from diffusely.conditions import DROPOUT
from diffusely.loss import denoising_loss, weighting
from diffusely.nets.autoencoder import LatentSpace
from diffusely.state import load_state, save_run_state
from diffusely.text import ScratchTextEncoder, WordTokenizer
from diffusely.train.data import train_sigmas

LR, BETAS, WEIGHT_DECAY, WARMUP = 1e-4, (0.95, 0.999), 1e-6, 500
EMA_POWER, EMA_MAX = 0.75, 0.9999


def peer_config(latent_run: RunConfig) -> RunConfig:
    """The latent default's config with diffusers' recipe (DDPM's epsilon-prediction): what the peer's denoiser and
    training noise levels read. It samples as the latent run does (its sampler and steps)."""
    config = copy.deepcopy(latent_run)
    config.diffusion = RECIPES["ddpm"]()
    ours = latent_run.diffusion
    config.diffusion.sampler, config.diffusion.sample_steps = ours.sampler, ours.sample_steps
    return config


class PeerNet(nn.Module):
    """F(x, noise_label, text, text_mask): the scratch text encoder, then UNet2DConditionModel cross-attending to
    its tokens (padding masked)."""

    def __init__(self, config: RunConfig, latent_size: int):
        super().__init__()
        from diffusers import UNet2DConditionModel

        t, m = config.text, config.model
        self.encoder = ScratchTextEncoder(t.vocab_size, t.max_tokens, t.width, t.layers, t.heads, t.ngram)
        levels = len(m.channels)
        down = tuple("CrossAttnDownBlock2D" if i < levels - 1 else "DownBlock2D" for i in range(levels))
        up = tuple("UpBlock2D" if i == 0 else "CrossAttnUpBlock2D" for i in range(levels))
        self.unet = UNet2DConditionModel(sample_size=latent_size, in_channels=m.in_channels, out_channels=m.out_channels,
                                         block_out_channels=m.channels, layers_per_block=2, down_block_types=down,
                                         up_block_types=up, cross_attention_dim=t.width,
                                         norm_num_groups=math.gcd(32, *m.channels))

    def forward(self, x, noise_label, text=None, text_mask=None):
        context = self.encoder(text, text_mask)
        return self.unet(x, noise_label, encoder_hidden_states=context, encoder_attention_mask=text_mask).sample


def build_peer(latent_run: RunConfig) -> tuple[RunConfig, PeerNet]:
    config = peer_config(latent_run)
    torch.manual_seed(config.train.seed)
    return config, PeerNet(config, config.sample_shape[-1])


def lr_at(step: int, total: int) -> float:
    """diffusers' cosine schedule with warm-up (get_cosine_schedule_with_warmup)."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / max(1, total - WARMUP))
    return LR * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay(step: int) -> float:
    """diffusers' EMAModel.get_decay with use_ema_warmup (inv_gamma 1, power 3/4)."""
    return min(EMA_MAX, max(0.0, 1 - (1 + max(0, step - 1)) ** -EMA_POWER))


def train_peer(latent_run: RunConfig, latents: torch.Tensor, captions: list[str], tokenizer: WordTokenizer,
               run_dir: Path, *, total_steps: int, should_stop: Callable[[], bool],
               on_checkpoint: Callable[[int], None], checkpoint_every: int = 250) -> int:
    """Train (or resume) the peer in run_dir on `latents` (N, C, h, w) scaled as the latent run's, captioned by
    `captions`, until should_stop() or total_steps; returns the step reached. Checkpoints (model, EMA, AdamW)
    every checkpoint_every steps and at the stop."""
    config, net = build_peer(latent_run)
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    step = 0
    if (run_dir / CHECKPOINT).is_file():
        state = load_state(run_dir / CHECKPOINT)
        net.load_state_dict(state.modules["model"])
        ema.load_state_dict(state.modules["ema"])
        optimizer.load_state_dict(state.optimizers["optim"])
        step = state.step
    unique = list(dict.fromkeys(captions))
    table, mask = tokenizer.encode(unique + [None])
    row = {c: i for i, c in enumerate(unique)}
    index = torch.tensor([row[c] for c in captions])
    denoiser = build_denoiser(config, net)
    weight_fn, schedule = weighting(config.diffusion.weighting), config.diffusion.discrete_schedule()
    save = lambda s: save_run_state(run_dir, step=s, modules={"model": net, "ema": ema},  # noqa: E731
                                    optimizers={"optim": optimizer}, keep=1)
    net.train()
    while step < total_steps:
        g = torch.Generator().manual_seed(config.train.seed * 1_000_003 + step)
        rows = torch.randint(len(latents), (config.train.batch_size,), generator=g)
        drop = torch.rand(len(rows), generator=g) < DROPOUT
        text_rows = torch.where(drop, len(unique), index[rows])
        sigma = train_sigmas(config, schedule, len(rows), g, "cpu")
        noise = torch.randn(latents[rows].shape, generator=g)
        loss = denoising_loss(denoiser, latents[rows], sigma, weight_fn(sigma, config.diffusion.sigma_data), noise,
                              text=table[text_rows], text_mask=mask[text_rows]).mean()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)  # diffusers' max_grad_norm default
        optimizer.step()
        step += 1
        with torch.no_grad():
            beta = ema_decay(step)
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1 - beta)
        stop = should_stop()
        if step % checkpoint_every == 0 or stop or step == total_steps:
            save(step)
            on_checkpoint(step)
        if stop:
            break
    return step


def load_peer(latent_run: RunConfig, snapshot: Path, tokenizer: WordTokenizer, space: LatentSpace) -> LoadedRun:
    """A peer snapshot's EMA weights as a LoadedRun, so diffusely.pipelines.generate samples it (guidance,
    prompts, decoding) as it samples ours."""
    config, net = build_peer(latent_run)
    state = load_state(snapshot / CHECKPOINT)
    net.load_state_dict(state.modules["ema"])
    net.eval().requires_grad_(False)
    return LoadedRun(config, build_denoiser(config, net), state.step, _text=tokenizer, latent=space)

