"""Consistency distillation (diffusely.distill): the parameterisation's boundary condition, a tiny student of the
exact Gaussian-mixture denoiser landing on the teacher's ODE endpoints in 1 and 2 evaluations, and `diffusely
distill` on run directories: resumed bit for bit, the student sampled and evaluated through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely.cli import main
from diffusely.distill import heun_step
from diffusely.distill.toy import SIGMA_MIN, distill_mixture, endpoint_errors, point_student
from diffusely.state import load_state
from diffusely.toy import GaussianMixture

FIXTURES = Path(__file__).parent / "fixtures" / "v0"


@pytest.fixture(scope="module")
def ring():
    return GaussianMixture.ring()


@pytest.fixture(scope="module")
def toy_student(ring):
    return distill_mixture(ring, steps=1500)


def test_the_boundary_condition_holds_for_any_network():
    student = point_student()
    x = torch.randn(16, 2)
    assert torch.equal(student(x, torch.full((16,), SIGMA_MIN)), x)
    assert not torch.allclose(student(x, torch.full((16,), 1.0)), x, atol=1e-3)


def test_the_teachers_heun_step_follows_its_ode(ring):
    """200 Heun steps of the exact denoiser from sigma 10 to 0.5 stay on the trajectory: the ODE's end from where
    they land is the end from where they began."""
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    sigmas = torch.linspace(10, 0.5, 201, dtype=torch.float64)
    y = x
    for s, s_next in zip(sigmas, sigmas[1:]):
        y = heun_step(ring, y, s.expand(64), s_next.expand(64), {})
    assert (ring.ode_endpoint(y, 0.5) - ring.ode_endpoint(x, 10.0)).norm(dim=1).max().item() < 1e-3


def test_a_distilled_student_lands_on_the_teachers_ode_endpoints(ring, toy_student):
    """1500 steps from scratch (about 5 s): at 1 NFE the student's sample is within 0.3 (mean distance; the ring
    has radius 2, its components stds 0.15 and 0.45) of the endpoint of the teacher's ODE from the same noise
    (measured 0.18), and at 2 NFE both evaluations are (0.18, 0.16). An untrained student misses by 2.0 and 1.1."""
    untrained = endpoint_errors(point_student().eval(), ring, 2)
    one, two = endpoint_errors(toy_student, ring, 1), endpoint_errors(toy_student, ring, 2)
    assert min(untrained) > 1.0, untrained
    assert one[0] < 0.3 and max(two) < 0.3, (one, two)


# ---------------------------------------------------------------------------------------------
# run directories: `diffusely distill` on the tiny fixture runs


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a run's training state (model, EMA, target network, AdamW's moments), by name."""
    state = load_state(run_dir / "checkpoint.safetensors")
    tensors = {f"{m}.{k}": v for m, module in state.modules.items() for k, v in module.items()}
    for name, optim in state.optimizers.items():
        for index, moments in optim["state"].items():
            tensors.update({f"{name}.{index}.{k}": v for k, v in moments.items() if torch.is_tensor(v)})
    return {**tensors, "step": torch.tensor(state.step)}


@pytest.fixture
def teacher(tmp_path):
    shutil.copytree(FIXTURES / "uncond", tmp_path / "teacher")
    return tmp_path / "teacher"


FAST = ["--steps", 4, "--batch-size", 4, "--checkpoint-every", 2, "--quiet"]


def test_a_resumed_distillation_equals_an_uninterrupted_one(teacher, tmp_path):
    from diffusely.distill.train import distill, student_config

    assert cli("distill", teacher, "--nfe", 2, "--out", tmp_path / "through", *FAST).exit_code == 0

    def killed(step):
        if step == 2:
            raise KeyboardInterrupt  # the job dies right after its first checkpoint

    with pytest.raises(KeyboardInterrupt):
        distill(student_config(teacher, 2, steps=4, batch_size=4, checkpoint_every=2), tmp_path / "resumed",
                progress=False, on_checkpoint=killed)
    assert weights(tmp_path / "resumed")["step"] == 2
    r = cli("distill", "--out", tmp_path / "resumed", "--resume", "--steps", 4, "--quiet")
    assert r.exit_code == 0, r.output
    through, resumed = weights(tmp_path / "through"), weights(tmp_path / "resumed")
    assert through.keys() == resumed.keys() and any(k.startswith("target.") for k in through)
    assert all(torch.equal(through[k], resumed[k]) for k in through), [k for k in through
                                                                       if not torch.equal(through[k], resumed[k])]
    # a job stopped before its first checkpoint (its config.json and log written) starts again from the teacher
    shutil.copytree(tmp_path / "through", tmp_path / "early")
    for f in (tmp_path / "early").glob("*.safetensors"):
        f.unlink()
    assert cli("distill", "--out", tmp_path / "early", "--resume", "--steps", 4, "--quiet").exit_code == 0
    early = weights(tmp_path / "early")
    assert all(torch.equal(through[k], early[k]) for k in through)
    # the student began as the teacher's EMA weights, and the steps moved it
    teacher_ema = load_state(teacher / "checkpoint.safetensors").modules["ema"]
    assert teacher_ema.keys() == {k[len("model."):] for k in through if k.startswith("model.")}
    assert any(not torch.equal(through[f"model.{k}"], v) for k, v in teacher_ema.items())


def test_a_student_samples_and_evaluates_through_the_cli(tmp_path):
    """A 2-NFE student of the class-conditional fixture: `sample` draws each class in 2 evaluations at the
    student's own sigmas (its schedules.json) by default, `eval` measures it."""
    shutil.copytree(FIXTURES / "classes", tmp_path / "teacher")
    student = tmp_path / "student"
    r = cli("distill", tmp_path / "teacher", "--nfe", 2, "--out", student, *FAST)
    assert r.exit_code == 0, r.output
    config = json.loads((student / "config.json").read_text())
    sigmas = [80.0, pytest.approx(2.5152, abs=1e-4), 0.0]
    assert config["distill"]["nfe"] == 2 and config["distill"]["sigmas"] == sigmas
    assert config["distill"]["teacher"] == str((tmp_path / "teacher").resolve())
    assert (config["diffusion"]["sampler"], config["diffusion"]["sample_steps"]) == ("consistency", 2)
    stored = json.loads((student / "schedules.json").read_text())["consistency"]
    assert stored.keys() == {"1", "2", "4"} and stored["2"] == sigmas and stored["1"] == [80.0, 0.0]
    names = config["data"]["class_names"]
    r = cli("sample", student, "-n", 2, "--class", names[0], "--out", tmp_path / "s", "--quiet")
    assert r.exit_code == 0, r.output
    drawn = json.loads(Image.open(tmp_path / "s" / "000000.png").text["diffusely"])
    assert (drawn["sampler"], drawn["nfe"], drawn["sigmas"], drawn["step"]) == ("consistency", 2, sigmas, 4)
    r = cli("sample", student, "-n", 1, "--steps", 4, "--class", names[0], "--out", tmp_path / "s4", "--quiet")
    drawn = json.loads(Image.open(tmp_path / "s4" / "000000.png").text["diffusely"])
    assert r.exit_code == 0 and (drawn["nfe"], drawn["sigmas"]) == (4, pytest.approx(stored["4"])), r.output
    r = cli("eval", student, "--reference", "shapes", "-n", 8, "--domain-steps", 5, "--batch-size", 8, "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((student / "eval.json").read_text())


def test_distill_refuses_what_it_cannot_do_in_one_line(teacher, tmp_path):
    student = tmp_path / "student"
    assert cli("distill", teacher, "--out", student, *FAST).exit_code == 0
    cases = [(["distill", student, "--out", tmp_path / "grand"], "is itself a student"),
             (["distill", "--out", student, "--resume", "--steps", 6, "--nfe", 4],
              "--nfe 4 differs from the student's 1"),
             (["distill", teacher, "--out", student], "already holds a run"),
             (["distill", FIXTURES / "ddpm", "--out", tmp_path / "eps"], "predicts eps"),
             # the denoising loss would undo the student
             (["train", "--out", student, "--resume", "--steps", 6, "--quiet"], "is a student run"),
             # diffusers would read its network through the teacher's coefficients, not the student's c_skip, c_out
             (["export", student, "--out", tmp_path / "hf", "--format", "diffusers"], "a consistency student")]
    before = (student / "checkpoint.safetensors").read_bytes()
    for args, words in cases:
        r = cli(*args)
        assert r.exit_code == 1 and words in r.output and r.output.startswith("Error: "), r.output
    assert (student / "checkpoint.safetensors").read_bytes() == before
    # a teacher trained on after the student began from it (its step recorded in config.json)
    config = json.loads((student / "config.json").read_text())
    config["distill"]["teacher_step"] = 2
    (student / "config.json").write_text(json.dumps(config))
    r = cli("distill", "--out", student, "--resume", "--steps", 6, "--quiet")
    assert r.exit_code == 1 and "is at step 3, but this student was distilled from its step 2" in r.output, r.output
    shutil.move(teacher, tmp_path / "moved")
    r = cli("distill", "--out", student, "--resume", "--steps", 6, "--quiet")
    assert r.exit_code == 1 and "the teacher run" in r.output and "is gone" in r.output, r.output


def distilled(fixture: str, tmp_path, nfe: int):
    """A student of `nfe` distilled for 2 steps from a copy of tests/fixtures/v0/FIXTURE: (teacher, student)."""
    shutil.copytree(FIXTURES / fixture, tmp_path / "teacher")
    student = tmp_path / "student"
    assert cli("distill", tmp_path / "teacher", "--nfe", nfe, "--out", student, "--steps", 2, "--batch-size", 4,
               "--quiet").exit_code == 0
    return tmp_path / "teacher", student


def test_a_student_of_a_layout_run_synthesises_a_labelled_dataset(tmp_path):
    teacher, student = distilled("layout", tmp_path, nfe=1)
    assert (student / "layouts.json").read_bytes() == (teacher / "layouts.json").read_bytes()
    r = cli("synth", student, "--out", tmp_path / "syn", "-n", 2, "--allow-copies")
    assert r.exit_code == 0, r.output
    images, labels = sorted((tmp_path / "syn").rglob("*.png")), sorted((tmp_path / "syn" / "labels").rglob("*.txt"))
    assert len(labels) == 2 and len([p for p in images if p.parent.parent.name == "images"]) == 2


def test_a_student_of_a_text_run_takes_prompts(tmp_path):
    teacher, student = distilled("text", tmp_path, nfe=2)
    assert (student / "tokenizer.json").read_bytes() == (teacher / "tokenizer.json").read_bytes()
    r = cli("sample", student, "-n", 2, "--prompt", "a red circle", "--out", tmp_path / "s", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s" / "metadata.jsonl").read_text().splitlines()[0])["text"] == "a red circle"
