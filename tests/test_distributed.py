"""DDP through torchrun on CPU (gloo): one DDP step equals a single-process step on the joined batch,
and only rank 0 writes files."""

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from diffusely.cli import main
from helpers import TINY_ARGS

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                                reason="torchrun not installed")


def test_ddp_step_equals_single_process_step_on_joined_batch(tiny_folder, tmp_path):
    # per-process batch 2 on 2 processes == batch 4 in one process: same images, same sigmas and noise
    args = [str(tiny_folder), "--steps", "1", "--checkpoint-every", "1", "--sample-every", "100",
            "--precision", "fp32", *TINY_ARGS]  # bf16 rounds differently for batches of 2 and 4
    args[args.index("--batch-size") + 1] = "2"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    p = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "diffusely.cli", "train", *args,
                        "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "effective batch 4" in p.stdout

    single = list(args)
    single[single.index("--batch-size") + 1] = "4"
    r = CliRunner().invoke(main, ["train", *single, "--out", str(tmp_path / "one")], catch_exceptions=False)
    assert r.exit_code == 0, r.output

    ddp = load_file(str(tmp_path / "ddp" / "checkpoint.safetensors"))
    one = load_file(str(tmp_path / "one" / "checkpoint.safetensors"))
    assert ddp.keys() == one.keys()
    # AdamW's first moment after one step is (1 - beta1) x the gradient: the gradients agree up to the
    # float rounding of averaging in another order. (The weights themselves are compared loosely: a
    # first Adam step moves each weight by about lr x sign(gradient), whatever the gradient's size.)
    grads = [k for k in ddp if k.endswith(".exp_avg")]
    assert len(grads) > 20
    for k in grads:
        scale = one[k].abs().max().item() + 1e-12
        assert (ddp[k] - one[k]).abs().max().item() <= 1e-4 * scale, k
    for k in ddp:
        if k.startswith("model."):
            assert (ddp[k] - one[k]).abs().max().item() <= 2e-5, k  # lr 1e-3 / warm-up 200 steps = 5e-6 a step

    # only rank 0 wrote: one log, one checkpoint, no stray temporary files
    files = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*") if p.is_file())
    assert files == [".lock", "checkpoint.safetensors", "config.json", "log.csv", "loss.png", "model.safetensors",
                     "samples/step-0000001.png", "train.log"]
    assert len((tmp_path / "ddp" / "train.log").read_text().splitlines()) == 1  # one start, said once
    assert (tmp_path / "ddp" / "log.csv").read_text().count("\n") == 2  # header + the row of step 1
