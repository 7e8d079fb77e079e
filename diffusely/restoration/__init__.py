"""Restoration with a trained prior: measurement operators, data consistency, SDEdit, uncertainty.

    A = KSpace.random(64, acceleration=4)              # or Inpaint(mask), Downsample(4), Blur(1.5)
    y = A(scan)                                        # what the scanner measured
    x = restore(denoiser, A, y, noise, method="dpmpp_2m", steps=25, sigma_min=0.002, sigma_max=80)

Every sampler works unchanged: consistency is a denoiser wrapper (Projected, DPS). A research tool,
not a medical device: a reconstruction agrees with what was measured, and a posterior_spread map says
where the prior filled in the rest.
"""

from .consistency import CONSISTENCY, DPS, Projected, consistent, repaint, restore
from .img2img import img2img, strength_to_sigma
from .operators import (MEASURED_BLUR_CUTOFF, TASKS, Blur, Downsample, Inpaint, KSpace, MeasurementError, Operator,
                        cartesian_mask, make_operator)
from .uncertainty import Spread, posterior_spread

__all__ = ["Operator", "Inpaint", "Downsample", "KSpace", "Blur", "MEASURED_BLUR_CUTOFF", "cartesian_mask",
           "make_operator", "TASKS",
           "MeasurementError", "Projected", "DPS", "CONSISTENCY", "consistent", "restore", "repaint",
           "img2img", "strength_to_sigma", "Spread", "posterior_spread"]
