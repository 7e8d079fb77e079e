"""Shared test settings."""

# a U-Net small enough that a training step takes milliseconds
TINY_ARGS = ["--image-size", "16", "--channels", "16,32", "--blocks-per-level", "1", "--attention-levels", "1",
             "--batch-size", "4", "--quiet"]
