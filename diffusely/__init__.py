"""diffusely: diffusion models in sigma space (Karras et al. 2022), trainable on one machine."""

from .denoisers import PARAMETERIZATIONS, ClassifierFreeGuidance, Denoiser
from .samplers import SAMPLERS, nfe, sample
from .schedules import SPACINGS, DiscreteSchedule, EDMSchedule, add_noise, get_sigmas

__version__ = "0.1.0"

__all__ = ["sample", "SAMPLERS", "nfe", "SPACINGS", "get_sigmas", "add_noise", "DiscreteSchedule",
           "EDMSchedule", "Denoiser", "PARAMETERIZATIONS", "ClassifierFreeGuidance"]
