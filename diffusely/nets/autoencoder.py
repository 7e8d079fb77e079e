"""A KL-regularised convolutional autoencoder for latent diffusion (Rombach et al. 2022, sec. 3 and app. G),
its losses, and the patch discriminator that may sharpen it (PatchGAN, Isola et al. 2017).

The encoder maps (B, C, *spatial) images in [-1, 1] to a diagonal Gaussian posterior over latents
(B, latent_channels, *spatial / factor); the decoder maps latents back to images. Both are ResBlock
stacks (the U-Net's blocks, without a noise embedding) with self-attention in the middle, for 1-D,
2-D and 3-D data from one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Attention, Downsample, ResBlock, Upsample, conv_nd, group_norm

# default widths per level for each downsampling factor: one level per halving, plus the full-size one
DEFAULT_CHANNELS: dict[int, tuple[int, ...]] = {4: (32, 64, 128), 8: (32, 64, 128, 128)}
INITIAL_LOGVAR = -8.0


@dataclass
class AutoencoderConfig:
    """Everything needed to build an Autoencoder; stored in an autoencoder run's config.json.

    channels: widths per level; each level but the last halves the resolution, so the downsampling
    factor is 2^(levels - 1) (4 for three levels, 8 for four). latent_channels: channels of the latent.
    attention: self-attention in the middle blocks (at the latent resolution). groups: at most this many
    GroupNorm groups, fewer than LDM's 32: a group of one channel is an instance norm, which strips each
    feature map of its mean, and with it the flat colours that most of an image is (shapes at 32 x 32,
    widths 32,64,64, 250 steps: 24.4 dB with 8 groups and the near-point posterior start below, 19.1 dB
    with 32 groups and a unit-variance start; on the tests' tiny set the groups alone are worth 4 dB).
    """

    dims: int = 2
    in_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = DEFAULT_CHANNELS[4]
    blocks_per_level: int = 1
    attention: bool = True
    head_channels: int = 64
    groups: int = 8

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) < 2:
            raise ValueError(f"channels must name at least two levels (factor 2), got {self.channels}")
        if self.dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {self.dims}")
        if self.latent_channels < 1 or self.blocks_per_level < 1:
            raise ValueError(f"latent_channels and blocks_per_level must be >= 1, got {self.latent_channels}, "
                             f"{self.blocks_per_level}")

    @property
    def factor(self) -> int:
        """How many times smaller each spatial side of the latent is than the image's."""
        return 2 ** (len(self.channels) - 1)


def _middle(cfg: AutoencoderConfig, c: int) -> list[nn.Module]:
    block = lambda: ResBlock(cfg.dims, c, c, 0, groups=cfg.groups)  # noqa: E731
    return [block(), *([Attention(cfg.dims, c, cfg.head_channels, cfg.groups)] if cfg.attention else []), block()]


class Encoder(nn.Module):
    """(B, in_channels, *S) -> (B, 2 * latent_channels, *S / factor): the posterior's mean and log-variance."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, c = cfg.channels, cfg.channels[0]
        self.input = conv_nd(cfg.dims, cfg.in_channels, c, 3, padding=1)
        layers: list[nn.Module] = []
        for level, cout in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                layers.append(ResBlock(cfg.dims, c, cout, 0, groups=cfg.groups))
                c = cout
            if level < len(ch) - 1:
                layers.append(Downsample(cfg.dims, c))
        self.blocks = nn.Sequential(*layers, *_middle(cfg, c))
        self.out = nn.Sequential(group_norm(c, cfg.groups), nn.SiLU(),
                                 conv_nd(cfg.dims, c, 2 * cfg.latent_channels, 3, padding=1))
        # the posterior starts nearly a point (std e^-4 ~ 0.02, not 1): with the KL weight of latent diffusion its
        # variance ends up tiny anyway, and a unit variance at the start hides the mean under noise until the
        # encoder learns to shrink it (tests' tiny set, 60 steps: 15.8 dB against 14.8 dB from a unit variance)
        nn.init.constant_(self.out[-1].bias[cfg.latent_channels:], INITIAL_LOGVAR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.input(x)))


class Decoder(nn.Module):
    """(B, latent_channels, *S / factor) -> (B, in_channels, *S), one block more per level than the encoder."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, c = cfg.channels, cfg.channels[-1]
        self.input = conv_nd(cfg.dims, cfg.latent_channels, c, 3, padding=1)
        layers: list[nn.Module] = _middle(cfg, c)
        for level, cout in reversed(list(enumerate(ch))):
            for _ in range(cfg.blocks_per_level + 1):
                layers.append(ResBlock(cfg.dims, c, cout, 0, groups=cfg.groups))
                c = cout
            if level > 0:
                layers.append(Upsample(cfg.dims, c))
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Sequential(group_norm(c, cfg.groups), nn.SiLU(), conv_nd(cfg.dims, c, cfg.in_channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.input(z)))

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the output conv, where LDM's adaptive GAN weight compares gradient norms."""
        return self.out[-1].weight


class Autoencoder(nn.Module):
    """encode(x) -> (mean, logvar) of the posterior q(z | x); decode(z) -> x_hat.

    x: (B, in_channels, *spatial) in [-1, 1], each spatial size divisible by `factor`;
    z: (B, latent_channels, *spatial / factor).
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected images (batch, {cfg.in_channels}, {', '.join(['size'] * cfg.dims)}), "
                             f"got {tuple(x.shape)}")
        if any(s % cfg.factor for s in x.shape[2:]):
            raise ValueError(f"image size {tuple(x.shape[2:])} is not divisible by the autoencoder's factor {cfg.factor}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_input(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # as LDM's DiagonalGaussianDistribution, so exp() stays finite

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


# ---------------------------------------------------------------------------------------------
# losses, per sample: (B,) tensors that the training loop weights and averages


def l1_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample."""
    return (x_hat - x).abs().flatten(1).mean(1)


def frequency_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the orthonormal spatial FFTs, per sample.

    L1 in pixels lets a blurred edge cost little; in frequency every coefficient counts alike, so the
    small high-frequency ones that make an edge sharp are pulled into place as firmly as the large
    low-frequency ones (the idea of the focal frequency loss, Jiang et al. 2021, without its focal weights).
    """
    dims = tuple(range(2, x.ndim))
    diff = torch.fft.fftn(x_hat.float(), dim=dims, norm="ortho") - torch.fft.fftn(x.float(), dim=dims, norm="ortho")
    return diff.abs().flatten(1).mean(1)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the latent, per sample (LDM's `kl()`)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample, for images in [-1, 1] (peak-to-peak 2)."""
    mse = (x_hat.float().clamp(-1, 1) - x.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-12))


# ---------------------------------------------------------------------------------------------
# the discriminator


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) as LDM's NLayerDiscriminator: `layers` stride-2 4x4 convolutions, one
    stride-1, then one logit per overlapping patch (70 x 70 pixels for 3 layers). GroupNorm where LDM
    has BatchNorm, so a sample's logits do not depend on the rest of its batch."""

    def __init__(self, dims: int, in_channels: int, channels: int = 64, layers: int = 3, groups: int = 32):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        seq: list[nn.Module] = [conv_nd(dims, in_channels, channels, 4, stride=2, padding=1), act()]
        c = channels
        for i in range(1, layers + 1):
            cout = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            seq += [conv_nd(dims, c, cout, 4, stride=stride, padding=1, bias=False), group_norm(cout, groups), act()]
            c = cout
        seq.append(conv_nd(dims, c, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        self.layers = layers

    def min_size(self) -> int:
        """The smallest image side that leaves at least one patch."""
        # each stride-2 conv maps s to floor(s / 2); the two stride-1 4x4 convs with padding 1 take 1 each
        return 2 ** self.layers * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017), per sample: mean relu(1 - real) + relu(1 + fake), halved."""
    return 0.5 * (F.relu(1.0 - logits_real).flatten(1).mean(1) + F.relu(1.0 + logits_fake).flatten(1).mean(1))


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """LDM's (after VQGAN, Esser et al. 2021, eq. 7) balance of the generator's GAN loss against the
    reconstruction loss: the ratio of their gradient norms at the decoder's last layer, detached."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# ---------------------------------------------------------------------------------------------
# latents for diffusion


def latent_scale(latents: torch.Tensor) -> tuple[float, float]:
    """(scale_factor, shift_factor) under which latents (N, C, ...) have mean 0 and variance 1 over all
    their elements: LDM's scale_factor = 1 / std (Rombach et al. 2022, sec. 4.3.2), with SD3's shift."""
    z = latents.double()
    if z.numel() < 2:
        raise ValueError("need at least two latent values to measure their spread")
    return 1.0 / z.std().item(), z.mean().item()


def per_frame(fn, x: torch.Tensor, dims: int) -> torch.Tensor:
    """fn of a 2-D network applied to each frame of clips (B, C, T, H, W) alike, the frames folded into the batch
    (latent video: an image autoencoder per frame); x of the network's own dims goes straight through."""
    if x.dim() != dims + 3:
        return fn(x)
    b, t = x.shape[0], x.shape[2]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class LatentSpace(nn.Module):
    """An autoencoder seen from diffusion: encode(x) = (mean of q(z | x) - shift_factor) * scale_factor,
    decode(z) = D(z / scale_factor + shift_factor). Deterministic: the posterior mean, never a draw. An image
    autoencoder encodes and decodes clips (B, C, T, H, W) a frame at a time."""

    def __init__(self, autoencoder: Autoencoder, scale_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        self.autoencoder, self.scale_factor, self.shift_factor = autoencoder, scale_factor, shift_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        means = per_frame(lambda v: self.autoencoder.encode(v)[0], x, self.autoencoder.config.dims)
        return (means - self.shift_factor) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return per_frame(self.autoencoder.decode, z / self.scale_factor + self.shift_factor,
                         self.autoencoder.config.dims)


__all__ = ["AutoencoderConfig", "Autoencoder", "Encoder", "Decoder", "PatchDiscriminator", "DEFAULT_CHANNELS",
           "l1_loss", "frequency_loss", "kl_divergence", "psnr", "hinge_d_loss", "adaptive_gan_weight",
           "latent_scale", "LatentSpace", "per_frame"]
