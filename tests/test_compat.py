"""Runs written before the package was reshaped (tests/fixtures/v0, made by its make_expected.py) still
load, sample as they did then, and resume training. Bit for bit on the CPU that drew the expected samples; another
CPU's kernels round differently in the last bits (3.7e-9 to 6e-8 on an AMD EPYC with AVX512-BF16, seen 2026-12; 4.6e-6
in 2 of 6144 values of the layout run on an AMD EPYC without bf16, 2026-12-07, at the commit before the audio
spectrogram model as after it), so the samples must agree to 1e-5, far below any change of the code's arithmetic
(one 8-bit level is 7.8e-3)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusely.checkpoint import load_run
from diffusely.pipelines import generate

V0 = Path(__file__).parent / "fixtures" / "v0"
CASES = {
    "uncond": {},
    "ddpm": {},
    "classes": {"classes": [0, 1]},
    "text": {"prompts": ["a red circle"], "guidance": 2.0},
    "layout": {"layouts": [[(0, 4.0, 4.0, 20.0, 20.0)], [(1, 2.0, 10.0, 30.0, 14.0, 1)]]},
    "latent": {},
}


def copy_run(name: str, tmp_path: Path) -> Path:
    """A copy of a fixture run, a latent run's autoencoder path set to the fixture's (it was absolute)."""
    shutil.copytree(V0 / "ae", tmp_path / "ae", dirs_exist_ok=True)
    run_dir = tmp_path / name
    shutil.copytree(V0 / name, run_dir)
    if name == "latent":
        config = json.loads((run_dir / "config.json").read_text())
        config["latent"]["autoencoder"] = str(tmp_path / "ae")
        (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


@pytest.fixture(autouse=True)
def one_thread():
    # the expected samples were drawn on one thread: a CPU convolution sums in another order on two
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def expected():
    return load_file(V0 / "expected.safetensors")


@pytest.mark.parametrize("name", list(CASES))
def test_old_runs_sample_as_they_did(name, expected, tmp_path):
    run = load_run(copy_run(name, tmp_path))
    for sampler in ("heun", "euler_ancestral"):
        x = torch.cat(list(generate(run, 2, steps=3, sampler=sampler, seed=0, progress=False, **CASES[name])))
        torch.testing.assert_close(x, expected[f"{name}.{sampler}"], rtol=0, atol=1e-5,
                                   msg=lambda m: f"{name} with {sampler} changed: {m}")


def test_old_run_resumes(tmp_path):
    from diffusely.checkpoint import read_config
    from diffusely.train import train

    run_dir = copy_run("classes", tmp_path)
    config = read_config(run_dir)
    config.train.steps = 4
    result = train(config, run_dir, resume=True, progress=False)
    assert result["step"] == 4
    assert load_run(run_dir).step == 4
