from .describe import describe_run
from .generate import generate, write_samples
from .schedule import optimize_schedule
from .strips import FORWARD_SIGMAS, forward_strip, reverse_strip, strip_image

__all__ = ["describe_run", "generate", "write_samples", "optimize_schedule", "FORWARD_SIGMAS", "forward_strip",
           "reverse_strip", "strip_image"]
