"""An ADM-style U-Net (Dhariwal & Nichol 2021) for 1-D, 2-D and 3-D data from one definition."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .video import PerFrame, TemporalAttention, TemporalMix
from .layers import (Attention, CrossAttention, Downsample, ResBlock, Upsample, conv_nd, depth_to_space, group_norm,
                     masked_mean, sinusoidal_embedding, space_to_depth, zero_module)


@dataclass
class UNetConfig:
    """Everything needed to build a UNet; stored in a run's config.json.

    channels: channels per level (the number of levels is its length; each level but the last halves
    the resolution). attention_levels: indices of the levels with self-attention (the middle block
    always has it). num_classes: 0 for an unconditional model; otherwise label `num_classes` is the
    null label used for classifier-free guidance. context_dim: 0, or the width of the text tokens that
    cross-attention reads at every attention block. pooled_text: their mean is also added to the noise embedding
    (Imagen's pooled embedding; off by default since config version 4: docs/text.md). query_positions: cross-attention
    queries carry their coordinates (CrossAttention's positions), so words can place things.
    layout_channels: 0, or the channels of a layout map (B, layout_channels, *spatial) concatenated to the
    input (layout-conditioned models: one mask per class and a "layout given" channel).
    lowres_channels: 0, or the channels of a low-resolution image brought to the input's size (B, lowres_channels,
    *spatial), concatenated after the layout (super-resolution models, SR3: the image's channels and a "given" one).
    patch_size: the first level works on p x p patches of pixels as channels (space-to-depth, as
    Hoogeboom et al. 2023's "simple diffusion" does), so the costliest full-size level runs at 1/p^2 of the
    pixels; 1 for none.
    factorised: video (dims 3, x (B, C, T, H, W)) with factorised space-time blocks (Ho et al. 2022): every spatial
    layer 2-D and applied to each frame alike, a temporal convolution after each residual block and temporal
    attention after each spatial one (diffusely.nets.video); only H and W are downsampled. False: 3-D layers.
    frames_channels: 0, or the channels of a clip's given first frames (B, frames_channels, T, H, W), concatenated
    last (frame-conditioned prediction: the frames' channels and a "given" one; diffusely.conditions.Frames).
    """

    dims: int = 2
    in_channels: int = 3
    out_channels: int = 3
    channels: tuple[int, ...] = (64, 128, 128)
    blocks_per_level: int = 2
    attention_levels: tuple[int, ...] = (1,)
    head_channels: int = 64
    dropout: float = 0.0
    num_classes: int = 0
    groups: int = 32
    emb_dim: int = field(default=0)  # 0: 4 x channels[0]
    context_dim: int = 0
    pooled_text: bool = False
    query_positions: bool = True
    layout_channels: int = 0
    patch_size: int = 1
    lowres_channels: int = 0
    factorised: bool = False
    frames_channels: int = 0

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(int(a) for a in self.attention_levels)
        if not self.channels:
            raise ValueError("channels must name at least one level, e.g. 64,128,128")
        bad = [a for a in self.attention_levels if not 0 <= a < len(self.channels)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside the {len(self.channels)} levels 0..{len(self.channels) - 1}")
        if self.dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {self.dims}")
        if self.factorised and (self.dims != 3 or self.patch_size != 1):
            raise ValueError(f"factorised space-time blocks are for video: dims 3 and patch_size 1, got dims {self.dims}, "
                             f"patch_size {self.patch_size}")
        if self.patch_size < 1 or self.layout_channels < 0 or self.lowres_channels < 0:
            raise ValueError(f"patch_size must be >= 1 and layout_channels, lowres_channels >= 0, got {self.patch_size}, "
                             f"{self.layout_channels}, {self.lowres_channels}")

    @property
    def concatenated(self) -> dict[str, int]:
        """The inputs concatenated to x, in order, by keyword: {"layout": channels, "lowres": channels}, those used."""
        used = {"layout": self.layout_channels, "lowres": self.lowres_channels, "first_frames": self.frames_channels}
        return {key: channels for key, channels in used.items() if channels}

    @property
    def downsample_factor(self) -> int:
        """What each input side must be divisible by: the patch size times 2 per level after the first."""
        return self.patch_size * 2 ** (len(self.channels) - 1)


WITHOUT = {"layout": "layouts", "lowres": "low-resolution images", "first_frames": "given first frames"}  # what a model without each input lacks


def _call(layer, *args, use_reentrant: bool = False):
    """layer(*args): what the forward does where torch.utils.checkpoint would otherwise wrap the call."""
    return layer(*args)


class UNet(nn.Module):
    """F(x, noise_label, class_labels=None, context=None, context_mask=None, layout=None, lowres=None) -> tensor
    shaped like x (out_channels).

    x: (B, in_channels, *spatial) with each spatial size divisible by patch_size x 2^(levels - 1);
    noise_label: (B,) as the denoiser wrapper computes it; context: (B, tokens, context_dim) text tokens
    and context_mask (B, tokens) bool, True for real tokens (a text model needs them); layout:
    (B, layout_channels, *spatial), which a layout model needs (all zeros: no layout given); lowres: (B,
    lowres_channels, *spatial), which a super-resolution model needs (all zeros: none given).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        # trade compute for memory in training (TrainConfig.activation_checkpointing): the activations inside
        # the residual and attention blocks are not kept but recomputed in the backward pass
        self.checkpointing = False
        dims, ch0 = cfg.dims, cfg.channels[0]
        emb_dim = cfg.emb_dim or 4 * ch0
        self.emb = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None

        # video with factorised blocks: 2-D layers on each frame, each followed by its temporal layer
        frame, time = (PerFrame, True) if cfg.factorised else ((lambda layer: layer), False)
        space = 2 if cfg.factorised else dims
        block = lambda cin, cout: [frame(ResBlock(space, cin, cout, emb_dim, cfg.dropout, cfg.groups))] + (
            [TemporalMix(cout, cfg.groups)] if time else [])
        # self-attention, then (text models) cross-attention to the text tokens, at the attention levels
        attn = lambda c: [frame(Attention(space, c, cfg.head_channels, cfg.groups))] + (
            [TemporalAttention(c, cfg.head_channels, cfg.groups)] if time else []) + (
            [frame(CrossAttention(space, c, cfg.context_dim, cfg.head_channels, cfg.groups, cfg.query_positions))]
            if cfg.context_dim else [])
        self.text_emb = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_dim and cfg.pooled_text else None

        patch = cfg.patch_size ** dims
        self.input = frame(conv_nd(space, (cfg.in_channels + sum(cfg.concatenated.values())) * patch, ch0, 3, padding=1))
        self.down = nn.ModuleList()
        skips, c = [ch0], ch0
        for level, cout in enumerate(cfg.channels):
            for _ in range(cfg.blocks_per_level):
                self.down.append(nn.ModuleList(block(c, cout) + (attn(cout) if level in cfg.attention_levels else [])))
                c = cout
                skips.append(c)
            if level < len(cfg.channels) - 1:
                self.down.append(nn.ModuleList([frame(Downsample(space, c))]))
                skips.append(c)
        self.middle = nn.ModuleList([*block(c, c), *attn(c), *block(c, c)])
        self.up = nn.ModuleList()
        for level, cout in reversed(list(enumerate(cfg.channels))):
            for i in range(cfg.blocks_per_level + 1):
                layers = block(c + skips.pop(), cout) + (attn(cout) if level in cfg.attention_levels else [])
                c = cout
                if level > 0 and i == cfg.blocks_per_level:
                    layers.append(frame(Upsample(space, c)))
                self.up.append(nn.ModuleList(layers))
        self.out = frame(nn.Sequential(group_norm(c, cfg.groups), nn.SiLU(),
                                       zero_module(conv_nd(space, c, cfg.out_channels * patch, 3, padding=1))))

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected input (batch, {cfg.in_channels}, {', '.join(['size'] * cfg.dims)}), got {tuple(x.shape)}")
        f = cfg.downsample_factor
        if any(s % f for s in x.shape[3 if cfg.factorised else 2:]):  # factorised: frames are not downsampled
            patch = f" times the patch size {cfg.patch_size}" if cfg.patch_size > 1 else ""
            raise ValueError(f"input size {tuple(x.shape[2:])} is not divisible by {f} (2 to the number of levels "
                             f"minus one, for channels {','.join(map(str, cfg.channels))}{patch}); use a size that is a multiple of {f}")

    def concatenate(self, x: torch.Tensor, given: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """x with the channel inputs the model reads (config.concatenated) concatenated after it, each checked."""
        wanted = self.config.concatenated
        for key, value in given.items():
            if key in wanted and (value is None or value.shape[0] != x.shape[0]
                                  or value.shape[1:] != (wanted[key], *x.shape[2:])):
                got = "none" if value is None else tuple(value.shape)
                raise ValueError(f"this model is {key}-conditional: give {key} ({x.shape[0]}, {wanted[key]}, "
                                 f"{', '.join(map(str, x.shape[2:]))}) (all zeros for none), got {got}")
            if key not in wanted and value is not None:
                raise ValueError(f"this model was trained without {WITHOUT[key]}; drop the {key} conditioning")
        return torch.cat([x, *(given[key].to(x.dtype) for key in wanted)], dim=1) if wanted else x

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, class_labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                layout: torch.Tensor | None = None, lowres: torch.Tensor | None = None,
                first_frames: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        cfg = self.config
        x_in = self.concatenate(x, {"layout": layout, "lowres": lowres, "first_frames": first_frames})
        emb = self.emb(sinusoidal_embedding(noise_label, self.config.channels[0]).to(x.dtype))
        if self.label_emb is not None:
            if class_labels is None:  # unconditional: the null label
                class_labels = torch.full((x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_emb(class_labels)
        elif class_labels is not None:
            raise ValueError("this model was trained without class labels; drop the class conditioning")
        if cfg.context_dim:
            if context is None:
                raise ValueError("this model is text-conditional: give it context (B, tokens, "
                                 f"{self.config.context_dim}), the encoded prompt (or the null caption)")
            if self.text_emb is not None:
                emb = emb + self.text_emb(masked_mean(context, context_mask).to(emb.dtype))
        elif context is not None:
            raise ValueError("this model was trained without text; drop the text conditioning")

        # activation checkpointing: keep only each block's input, recompute its inside in the backward pass
        save = checkpoint if self.checkpointing and torch.is_grad_enabled() else _call

        def run(layers, h):
            for layer in layers:
                kind = layer.layer if isinstance(layer, PerFrame) else layer
                if isinstance(kind, ResBlock):
                    h = save(layer, h, emb, use_reentrant=False)
                elif isinstance(kind, CrossAttention):
                    h = save(layer, h, context, context_mask, use_reentrant=False)
                elif isinstance(kind, (Attention, TemporalAttention, TemporalMix)):
                    h = save(layer, h, use_reentrant=False)
                else:
                    h = layer(h)
            return h

        h = self.input(space_to_depth(x_in, cfg.patch_size))
        hs = [h]
        for layers in self.down:
            h = run(layers, h)
            hs.append(h)
        h = run(self.middle, h)
        for layers in self.up:
            h = run(layers, torch.cat([h, hs.pop()], dim=1))
        return depth_to_space(self.out(h), cfg.patch_size)
