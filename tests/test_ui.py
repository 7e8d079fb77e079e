"""diffusely ui: the clean-stop hook of train(), the path and upload guard, and the page itself driven in headless
Chromium (Debian's package, through Playwright with executable_path: no browser download) against a server on a
loopback port: generate and reproduce through the CLI bit for bit, paint a mask and inpaint, train / stop /
resume, a typed layout to an image. Each browser test saves a screenshot of its tab into docs/ui/.

Without Chromium or Playwright the browser tests skip here, and fail under CI=true (.ci/run installs both)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.nets import UNetConfig
from diffusely.train import train

FIXTURES = Path(__file__).parent / "fixtures" / "v0"
DOCS = Path(__file__).parent.parent / "docs" / "ui"
CHROMIUM = "/usr/bin/chromium"


def tiny(steps: int, **settings) -> RunConfig:
    return RunConfig(model=UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(), groups=4),
                     data=DataConfig(source="shapes", image_size=8),
                     train=TrainConfig(steps=steps, batch_size=4, warmup_steps=1, checkpoint_every=100,
                                       sample_every=1000, log_every=1, **settings))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoint.safetensors"))


def test_should_stop_checkpoints_the_step_and_resumes_exactly(tmp_path):
    asked = []
    stop_at_third = lambda: asked.append(1) or len(asked) >= 3  # noqa: E731
    result = train(tiny(8), tmp_path / "stopped", progress=False, should_stop=stop_at_third)
    assert result["step"] == 3 and len(asked) == 3
    assert int(weights(tmp_path / "stopped")["optim.0.step"].item()) == 3  # a checkpoint of the step it stopped at
    train(tiny(8), tmp_path / "stopped", resume=True, progress=False)
    train(tiny(8), tmp_path / "straight", progress=False)
    a, b = weights(tmp_path / "stopped"), weights(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # stop + resume = never stopped


def test_should_stop_is_not_asked_after_the_last_step(tmp_path):
    result = train(tiny(2), tmp_path / "run", progress=False, should_stop=lambda: True)
    assert result["step"] == 1  # asked after step 1 (stops), never after the last
    result = train(tiny(3), tmp_path / "run", resume=True, progress=False, should_stop=lambda: False)
    assert result["step"] == 3 and int(weights(tmp_path / "run")["optim.0.step"].item()) == 3
