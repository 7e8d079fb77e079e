"""Training never loses work: a diverging run stops at its first non-finite loss and keeps its last good
checkpoint, bad config values are refused where they enter, two jobs never share a run directory, and a disk
without room is found before the first step."""

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from diffusely._files import load_tensors

from diffusely.checkpoint import RunError
from diffusely.config import (AutoencoderRunConfig, AutoencoderTrainConfig, ConfigError, DataConfig, RunConfig,
                              TrainConfig)
from diffusely.cli import main
from diffusely.nets import UNetConfig
from diffusely.pipelines import describe_run
from diffusely.nets.autoencoder import AutoencoderConfig
from diffusely.train import loop, train, train_autoencoder


def tiny(folder, **train_settings) -> RunConfig:
    settings = dict(steps=40, batch_size=4, warmup_steps=1, checkpoint_every=2, sample_every=1000, log_every=1)
    return RunConfig(model=UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(), groups=4),
                     data=DataConfig(source=str(folder), image_size=8), train=TrainConfig(**{**settings, **train_settings}))


def tiny_autoencoder(folder, **train_settings) -> AutoencoderRunConfig:
    settings = dict(steps=6, batch_size=4, warmup_steps=1, checkpoint_every=2, sample_every=1000, log_every=1)
    return AutoencoderRunConfig(model=AutoencoderConfig(channels=(8, 8), groups=2),
                                data=DataConfig(source=str(folder), image_size=8),
                                train=AutoencoderTrainConfig(**{**settings, **train_settings}))


def saved_step(run_dir) -> int:
    return int(load_file(str(run_dir / "checkpoint.safetensors"))["optim.0.step"].item())


def all_finite(run_dir) -> bool:
    return all(t.isfinite().all() for t in load_file(str(run_dir / "checkpoint.safetensors")).values())


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tiny_folder, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RunError) as e:
        train(tiny(tiny_folder, lr=10.0), run_dir, progress=False)  # the loss is NaN by step 4 at lr 10
    message = str(e.value)
    failed = int(message.split(" at step ")[1].split(":")[0])
    good = saved_step(run_dir)
    assert f"the last good checkpoint, of step {good}, is kept" in message and "lower --lr" in message
    assert good < failed < 40 and good == (failed - 1) // 2 * 2  # checkpoints every 2 steps, up to the failure
    assert all_finite(run_dir)
    logged = [row.split(",")[1] for row in (run_dir / "log.csv").read_text().splitlines()[1:]]
    assert len(logged) == failed - 1 and all(v != "nan" for v in logged)  # the NaN step is not logged
    # `info` says where the run stands, and sampling uses the last good weights (model.safetensors of that step)
    assert describe_run(run_dir)["stopped"] == message
    weights, meta = load_tensors(run_dir / "model.safetensors")
    saved = load_file(str(run_dir / "checkpoint.safetensors"))
    assert meta["step"] == good and all(w.isfinite().all() and w.equal(saved[f"ema.{k}"]) for k, w in weights.items())
    r = CliRunner().invoke(main, ["sample", str(run_dir), "-n", "2", "--steps", "2", "--out", str(tmp_path / "s"),
                                  "--quiet"])
    assert r.exit_code == 0 and len(list((tmp_path / "s").glob("*.png"))) == 2, r.output
    # a later checkpoint (a resume past the stop, here a run trained again in place) clears the note
    train(tiny(tiny_folder, steps=2), tmp_path / "again", progress=False)
    (tmp_path / "again" / "stopped.txt").write_text(message)
    train(tiny(tiny_folder, steps=4), tmp_path / "again", resume=True, progress=False)
    assert "stopped" not in describe_run(tmp_path / "again")


def test_a_config_edited_to_nan_is_refused_on_resume_and_the_checkpoint_kept(tiny_folder, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(tiny_folder, steps=2), run_dir, progress=False)
    before = (run_dir / "checkpoint.safetensors").read_bytes()
    config = json.loads((run_dir / "config.json").read_text())
    config["diffusion"]["sigma_data"] = float("nan")
    (run_dir / "config.json").write_text(json.dumps(config))  # json writes NaN, as a hand edit would
    with pytest.raises(RunError, match=r"config.json cannot be used: diffusion.sigma_data must be a finite number > 0"):
        train(tiny(tiny_folder, steps=4), run_dir, resume=True, progress=False)
    assert (run_dir / "checkpoint.safetensors").read_bytes() == before


def test_resuming_with_fewer_steps_than_the_run_has_is_refused(tiny_folder, tmp_path):
    train(tiny(tiny_folder, steps=4), tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="is at step 4, past the 2 steps asked"):
        train(tiny(tiny_folder, steps=2), tmp_path / "run", resume=True, progress=False)
    assert saved_step(tmp_path / "run") == 4 and RunConfig.load(tmp_path / "run" / "config.json").train.steps == 4


def test_an_autoencoder_with_a_nan_kl_weight_is_refused_and_one_that_diverges_stops(tiny_folder, tmp_path):
    with pytest.raises(ConfigError, match="train.kl_weight must be a finite number >= 0, got nan"):
        AutoencoderTrainConfig(kl_weight=float("nan"))
    config = tiny_autoencoder(tiny_folder)
    config.train.kl_weight = float("nan")  # set after construction: the trainer checks again
    with pytest.raises(ConfigError, match="train.kl_weight"):
        train_autoencoder(config, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "config.json").exists()

    run_dir = tmp_path / "ae"
    with pytest.raises(RunError, match=r"the training loss is not finite \(nan\) at step \d+") as e:
        train_autoencoder(tiny_autoencoder(tiny_folder, lr=1e4, steps=40), run_dir, progress=False)
    assert f"of step {saved_step(run_dir)}, is kept" in str(e.value) and all_finite(run_dir)


@pytest.mark.parametrize("section, field, value, message", [
    ("model", "head_channels", 0, "model.head_channels must be an integer >= 1, got 0"),
    ("model", "dropout", float("nan"), "model.dropout must be a finite number in [0, 0.999], got nan"),
    ("model", "channels", [16, -32], "model.channels[1] must be an integer between 1 and 4096, got -32"),
    ("model", "channels", [16, 2**40], "model.channels[1] must be an integer between 1 and 4096, got 1099511627776"),
    ("model", "blocks_per_level", -1, "model.blocks_per_level must be an integer >= 1, got -1"),
    ("data", "image_size", 0, "data.image_size must be an integer between 1 and 4096, got 0"),
    ("data", "image_size", 100000, "data.image_size must be an integer between 1 and 4096, got 100000"),
    ("train", "seed", 2**63, "train.seed must be an integer between 0 and 9223372036854775807"),
    ("train", "lr", float("inf"), "train.lr must be a finite number > 0, got inf"),
    ("train", "keep", 0, "train.keep must be an integer >= 1, got 0"),
    ("diffusion", "sigma_data", -1.0, "diffusion.sigma_data must be a finite number > 0, got -1.0"),
    ("diffusion", "sigma_max", 1e308, "diffusion.sigma_max must be a finite number in [1e-05, 1e+10], got 1e+308"),
    ("diffusion", "sigma_min", 1e-300, "diffusion.sigma_min must be a finite number in [1e-05, 1e+10], got 1e-300"),
    ("latent", "scale_factor", float("nan"), "latent.scale_factor must be a finite number > 0, got nan"),
])
def test_config_values_are_checked_where_they_enter(section, field, value, message):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({section: {field: value}})
    assert message in str(e.value)


def test_a_config_nested_too_deep_is_a_config_error():
    with pytest.raises(ConfigError, match="nested too deeply"):
        RunConfig.from_json("[" * 100_000 + "]" * 100_000)


def test_the_checkpoints_kept_follow_train_keep(tiny_folder, tmp_path):
    train(tiny(tiny_folder, steps=8, keep=3), tmp_path / "run", progress=False)
    kept = sorted(p.name for p in (tmp_path / "run").glob("checkpoint*.safetensors"))
    assert kept == ["checkpoint-4.safetensors", "checkpoint-6.safetensors", "checkpoint.safetensors"]


def test_a_disk_without_room_is_found_before_the_first_step(tiny_folder, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    steps = []
    original = loop.denoising_loss
    monkeypatch.setattr(loop, "denoising_loss", lambda *a, **k: steps.append(1) or original(*a, **k))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))  # 1 kB free
    with pytest.raises(ValueError, match=r"needs 2\.\d MB and the disk has 0\.0 MB free"):  # 3 states of 0.7 MB
        train(tiny(tiny_folder, steps=2), tmp_path / "run", progress=False)
    assert steps == [] and not (tmp_path / "run" / "checkpoint.safetensors").exists()


TRAIN_INTO = r"""
import sys, torch
torch.set_num_threads(1)
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.nets import UNetConfig
from diffusely.train import train
config = RunConfig(model=UNetConfig(channels=(8, 16), blocks_per_level=1, attention_levels=(), groups=4),
                   data=DataConfig(source=sys.argv[1], image_size=8),
                   train=TrainConfig(steps=int(sys.argv[3]), batch_size=4, checkpoint_every=10, sample_every=1000,
                                     log_every=1, seed=int(sys.argv[4])))
try:
    train(config, sys.argv[2], resume=sys.argv[5:] == ["resume"], progress=False)
except ValueError as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(1)
"""


def test_two_trainings_into_one_directory_leave_one_run_and_a_refusal(tiny_folder, tmp_path):
    run_dir, env = tmp_path / "run", dict(os.environ, PYTHONPATH=os.getcwd())
    first = subprocess.Popen([sys.executable, "-c", TRAIN_INTO, str(tiny_folder), str(run_dir), "60", "1"], env=env,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run_dir / ".lock").is_file() and (run_dir / ".lock").read_text().startswith(str(first.pid))):
        assert time.time() < deadline and first.poll() is None, "the first training never took the lock"
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-c", TRAIN_INTO, str(tiny_folder), str(run_dir), "5", "2"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"in use by process {first.pid}" in second.stderr
    # the run is the first one's, whole: its config, its 60 steps in the checkpoint and the log
    assert RunConfig.load(run_dir / "config.json").train.seed == 1
    assert saved_step(run_dir) == 60
    assert [int(r.split(",")[0]) for r in (run_dir / "log.csv").read_text().splitlines()[1:]] == list(range(1, 61))


def test_two_resumes_of_one_run_leave_one_whole_run_and_a_refusal(tiny_folder, tmp_path):
    run_dir, env = tmp_path / "run", dict(os.environ, PYTHONPATH=os.getcwd())
    train(tiny(tiny_folder, steps=10, checkpoint_every=10), run_dir, progress=False)
    os.remove(run_dir / ".lock")  # as a copied run would hold none: the resume makes it
    first = subprocess.Popen([sys.executable, "-c", TRAIN_INTO, str(tiny_folder), str(run_dir), "60", "0", "resume"],
                             env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run_dir / ".lock").is_file() and (run_dir / ".lock").read_text().startswith(str(first.pid))):
        assert time.time() < deadline and first.poll() is None, "the first resume never took the lock"
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-c", TRAIN_INTO, str(tiny_folder), str(run_dir), "30", "0", "resume"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 1 and f"in use by process {first.pid}" in second.stderr, second.stderr
    # once both had exited 0: config.json said one step count, the checkpoint another, log rows were missing
    assert RunConfig.load(run_dir / "config.json").train.steps == 60 and saved_step(run_dir) == 60
    assert [int(r.split(",")[0]) for r in (run_dir / "log.csv").read_text().splitlines()[1:]] == list(range(1, 61))


def test_the_room_asked_for_counts_the_post_hoc_ema_snapshots(tiny_folder, tmp_path, monkeypatch):
    """Post-hoc EMA snapshots are all kept (docs/ema.md: 445 MB for 4000 steps of the default network): a disk with
    room for the checkpoints but not for them is refused before the first step, not found full at the end."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    free = [10**12]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free[0], free[0]))
    config = tiny(tiny_folder, steps=3, posthoc_ema=(0.05, 0.1), posthoc_every=1)
    train(config, tmp_path / "run", progress=False)
    snapshots = sum(p.stat().st_size for p in (tmp_path / "run" / "posthoc").iterdir())  # 2 averages, 3 steps
    checkpoint = (tmp_path / "run" / "checkpoint.safetensors").stat().st_size
    free[0] = 3 * checkpoint + snapshots // 2  # room for the states and a half of the snapshots
    with pytest.raises(ValueError, match=r"needs \d+\.\d MB and the disk has"):
        train(config, tmp_path / "again", progress=False)
    assert not (tmp_path / "again" / "checkpoint.safetensors").exists()
    free[0] = int(1.05 * (3 * checkpoint + snapshots))  # and with room for both, it trains
    train(config, tmp_path / "again", progress=False)
