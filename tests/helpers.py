"""Shared test settings."""

import contextlib
import fcntl
import os
import signal

# a U-Net small enough that a training step takes milliseconds
TINY_ARGS = ["--image-size", "16", "--channels", "16,32", "--blocks-per-level", "1", "--attention-levels", "1",
             "--batch-size", "4", "--quiet"]


def write_captions(folder, size=16, seed=1):
    """Give the images of the `tiny_folder` fixture (write_shapes_folder's layout) their shapes captions, in a
    metadata.jsonl as Hugging Face's imagefolder has it. Returns the captions in image order."""
    import json

    from diffusely.data.shapes import CLASS_NAMES, render_shapes

    data = render_shapes(24, size=size, seed=seed)
    rows = [{"file_name": f"{CLASS_NAMES[label]}/{i:05d}.png", "text": caption}
            for i, (label, caption) in enumerate(zip(data.labels, data.captions))]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data.captions


def wake_zero_layers(net, std: float = 0.1):
    """Give the zero-initialised output convs random weights: at zero, every output of a fresh network is 0 and
    most parameters get zero gradients, so equality checks would pass whatever the code did."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=std)
    return net


@contextlib.contextmanager
def held_lock(folder, holder: str):
    """Hold `folder`'s lock as another job's run_lock does (`holder`: its "PID command" line) in the block."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{holder}\n".encode())
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the block if it runs longer than `seconds`, so a hang fails its test instead of
    stopping the suite (SIGALRM: Unix, main thread)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def train_tiny_folder_run(root):
    """A run trained for 3 steps on a folder of 24 shapes (16 x 16) under `root`: (run directory, the folder)."""
    from click.testing import CliRunner

    from diffusely.cli import main
    from diffusely.data.shapes import write_shapes_folder

    write_shapes_folder(root / "images", 24, size=16, seed=1)
    r = CliRunner().invoke(main, ["train", str(root / "images"), "--out", str(root / "run"), "--steps", "3",
                                  "--flip", *TINY_ARGS], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return root / "run", root / "images"


def train_tiny_autoencoder(out, steps: int = 2):
    """An image autoencoder (16 x 16 shapes, channels 8,16: factor 2) trained `steps` steps into `out` by the CLI."""
    from click.testing import CliRunner

    from diffusely.cli import main

    r = CliRunner().invoke(main, ["train-autoencoder", "shapes", "--out", str(out), "--steps", str(steps),
                                  "--image-size", "16", "--channels", "8,16", "--batch-size", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    return out
