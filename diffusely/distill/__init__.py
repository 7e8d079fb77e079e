"""Distillation of a diffusion run into a few-step student (`diffusely distill`).

    distill/consistency.py  the math: the consistency parameterisation, the teacher's Heun step, the loss
    distill/config.py       the `distill` section of a student's config.json
    distill/train.py        the training job on run directories (imported by itself: it needs the training layer)
"""

from .config import DistillConfig
from .consistency import (ConsistencyDenoiser, consistency_coefficients, consistency_loss, distill_grid, heun_step,
                          student_sigmas)

__all__ = ["DistillConfig", "ConsistencyDenoiser", "consistency_coefficients", "consistency_loss", "distill_grid",
           "heun_step", "student_sigmas"]
