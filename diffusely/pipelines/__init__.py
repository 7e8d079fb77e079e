from .generate import generate
from .schedule import optimize_schedule
from .strips import FORWARD_SIGMAS, forward_strip, reverse_strip

__all__ = ["generate", "optimize_schedule", "FORWARD_SIGMAS", "forward_strip", "reverse_strip"]
