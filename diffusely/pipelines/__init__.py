from .generate import generate
from .strips import FORWARD_SIGMAS, forward_strip, reverse_strip

__all__ = ["generate", "FORWARD_SIGMAS", "forward_strip", "reverse_strip"]
