"""Training: a killed run resumes to the same weights, bit for bit, as a run never interrupted; 1-D and 3-D data
train through the same loop."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from diffusely.cli import main
from diffusely.config import RunConfig
from diffusely.train import train
from diffusely.train.ema import ema_beta

from helpers import TINY_ARGS

KILLED_RUN = r"""
import os, signal, sys, torch
torch.set_num_threads(int(os.environ["TEST_THREADS"]))  # the parent's: float sums depend on the thread count
from diffusely.cli import main
from diffusely.train import loop
original, calls = loop.update_ema, [0]
def update_then_die(*args, **kwargs):
    original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == 6:  # inside step 6: the checkpoint of step 3 is on disk, steps 4 and 5 are logged, not saved
        os.kill(os.getpid(), signal.SIGKILL)
loop.update_ema = update_then_die
main(sys.argv[1:])
"""


def train_killed_in_step_6(args: list[str]) -> None:
    """`diffusely train ARGS` in a subprocess with this process's thread count, SIGKILLed inside step 6."""
    env = dict(os.environ, PYTHONPATH=os.getcwd(), TEST_THREADS=str(torch.get_num_threads()))
    p = subprocess.run([sys.executable, "-c", KILLED_RUN, "train", *args], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr


def test_killed_and_resumed_equals_uninterrupted(tiny_folder, tmp_path):
    common = [str(tiny_folder), "--steps", "9", "--checkpoint-every", "3", "--sample-every", "100", "--log-every", "1",
              *TINY_ARGS]
    # the run that is never interrupted
    r = CliRunner().invoke(main, ["train", *common, "--out", str(tmp_path / "whole")], catch_exceptions=False)
    assert r.exit_code == 0, r.output

    # the same run, SIGKILLed right after its checkpoint at step 4 (and with steps 5.. never saved)
    train_killed_in_step_6([*common, "--out", str(tmp_path / "killed")])
    assert load_file(str(tmp_path / "killed" / "checkpoint.safetensors"))["optim.0.step"].item() == 3
    assert len((tmp_path / "killed" / "log.csv").read_text().splitlines()) == 1 + 5  # rows 4 and 5 beyond it

    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "killed"), "--resume", "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    whole = load_file(str(tmp_path / "whole" / "checkpoint.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "checkpoint.safetensors"))
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    # the log rows of steps 4 and 5 from before the kill were dropped and written again by the resumed run
    loss_column = lambda run: [line.split(",")[:2] for line in (tmp_path / run / "log.csv").read_text().splitlines()]
    assert loss_column("whole") == loss_column("killed") and len(loss_column("whole")) == 1 + 9


def test_resume_extends_a_finished_run(tiny_folder, tmp_path):
    out = str(tmp_path / "run")
    CliRunner().invoke(main, ["train", str(tiny_folder), "--out", out, "--steps", "2", *TINY_ARGS], catch_exceptions=False)
    r = CliRunner().invoke(main, ["train", "--out", out, "--resume", "--steps", "4", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert RunConfig.load(f"{out}/config.json").train.steps == 4
    assert load_file(f"{out}/checkpoint.safetensors")["optim.0.step"].item() == 4


def test_resume_without_a_run(tmp_path):
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert r.exit_code == 1 and "nothing to resume" in r.output


def test_ema_halflife():
    # half-life 1000 images at 100 images a step: after 10 steps the old weights count half
    assert ema_beta(100, 10**9, 1000, None) ** 10 == __import__("pytest").approx(0.5)
    # EDM's ramp-up: early on the half-life is at most 5% of the images seen
    assert ema_beta(100, 2000, 1000, 0.05) == 0.5 ** (100 / 100)


def test_learning_rate_schedule():
    from diffusely.config import TrainConfig
    from diffusely.train.common import lr_at
    tc = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_from=0.5)
    assert lr_at(0, tc) == 0.1 and lr_at(9, tc) == 1.0 and lr_at(49, tc) == 1.0
    assert lr_at(50, tc) == 1.0 and lr_at(75, tc) == 0.5 and lr_at(99, tc) == 0.02
    assert lr_at(99, TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_from=1.0)) == 1.0
    assert lr_at(99, TrainConfig(steps=100, lr=1.0, warmup_steps=10)) == 0.025  # the default decays from 60%


@pytest.mark.parametrize("dims", [1, 3])
def test_the_same_loop_trains_on_1d_and_3d_data(dims, tmp_path):
    """Audio-like (C, L) and video-like (C, T, H, W) samples go through the loop, its flips, class conditions and
    sampling as images do; only the U-Net's dims differ."""
    import numpy as np

    from diffusely.checkpoint import load_run
    from diffusely.conditions import conditions
    from diffusely.config import DataConfig, TrainConfig
    from diffusely.data import Dataset, to_tensor
    from diffusely.nets import UNetConfig
    from diffusely.pipelines import generate
    from diffusely.train.common import Dist
    from diffusely.train.data import TrainingSet

    size, rng = (16 if dims == 1 else 8), np.random.default_rng(dims)
    samples = rng.integers(0, 256, (12, *[size] * dims, 2), dtype=np.uint8)  # (N, *spatial, C)
    data = Dataset(samples, rng.integers(0, 3, 12), ["a", "b", "c"], None, None, f"random {dims}-D")
    config = RunConfig(model=UNetConfig(dims=dims, channels=(8, 16), blocks_per_level=1, attention_levels=(1,),
                                        groups=4, head_channels=8),
                       data=DataConfig(source=data.source, image_size=size, classes=True, flip=True),
                       train=TrainConfig(steps=3, batch_size=4, checkpoint_every=3, sample_every=3, warmup_steps=1))
    result = train(config, tmp_path / "run", data=data, progress=False)
    assert result["step"] == 3 and result["loss"] == result["loss"]  # finite, not NaN
    assert config.sample_shape == (2, *[size] * dims) and config.model.num_classes == 3
    weights = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    assert weights["model.out.2.weight"].abs().sum() > 0  # the zero-initialised output layer has learned

    # each sample of a batch is its data, mirrored along its last axis or not, as its generator drew
    batches = TrainingSet(config, data, conditions(config, {"class": torch.from_numpy(data.labels)}), None, "cpu",
                          Dist())
    flipped = []
    for step in range(6):
        x0, sigma, noise, cond = batches.draw_batch(step)
        assert x0.shape == noise.shape == (4, 2, *[size] * dims) and sigma.shape == (4,)
        rows = batches.batches.indices(batches.batches.positions(step))
        for x, original in zip(x0, to_tensor(samples[rows.numpy()])):
            assert torch.equal(x, original) or torch.equal(x, original.flip(-1))
            flipped.append(not torch.equal(x, original))
        assert ((cond["class_labels"] == 3) | (cond["class_labels"] == torch.from_numpy(data.labels)[rows])).all()
    assert 0 < sum(flipped) < len(flipped)

    x = torch.cat(list(generate(load_run(tmp_path / "run"), 2, steps=2, classes=["b"], progress=False)))
    assert x.shape == (2, 2, *[size] * dims) and x.isfinite().all()
