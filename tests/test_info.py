"""`diffusely info` says what each kind of run is in its own units (an audio clip's length and rate, a video's
frames, an upscale run's factor, a student's teacher and sigmas); `train` takes --sample-rate for audio and refuses
a student's config.json as a new run's start."""

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffusely.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "v0"
TINY = ["--steps", "1", "--channels", "8,16", "--blocks-per-level", "1", "--attention-levels", "1",
        "--batch-size", "2", "--quiet"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def info(run_dir) -> tuple[dict, dict]:
    """The facts `info --json` prints, and the plain listing's lines as {name: value as shown}."""
    r = cli("info", run_dir, "--json")
    assert r.exit_code == 0, r.output
    text = cli("info", run_dir)
    assert text.exit_code == 0, text.output
    shown = dict(re.fullmatch(r"(\S+(?: \S+)*)  +(.*)", line).groups() for line in text.output.splitlines())
    return json.loads(r.output), shown


def test_an_audio_run_shows_its_clip_length_and_sample_rate(tmp_path):
    pytest.importorskip("soundfile")
    pytest.importorskip("soxr")
    r = cli("train", "sounds", "--out", tmp_path / "run", "--image-size", "1024", "--sample-rate", "16000", *TINY)
    assert r.exit_code == 0, r.output
    facts, text = info(tmp_path / "run")
    assert (facts["clip_length"], facts["sample_rate"], facts["channels"]) == (
        "1,024 samples (0.064 s)", "16,000 Hz", 1)
    assert "image_size" not in facts and "image size" not in text
    assert (text["clip length"], text["sample rate"]) == ("1,024 samples (0.064 s)", "16,000 Hz")
    # the rate is the run's: --resume may repeat it, not change it
    r = cli("train", "--out", tmp_path / "run", "--resume", "--steps", "2", "--sample-rate", "8000", "--quiet")
    assert r.exit_code == 1 and "--sample-rate 8000 conflicts with the run" in r.output, r.output
    assert "data.sample_rate 16000" in r.output
    r = cli("train", "--out", tmp_path / "run", "--resume", "--steps", "2", "--sample-rate", "16000", "--quiet")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, words", [
    (["sounds", "--sample-rate", "999"], "'--sample-rate': 999 is not in the range 1000<=x<=192000"),
    (["sounds", "--sample-rate", "192001"], "192001 is not in the range"),
    (["shapes", "--sample-rate", "16000"], "Error: --sample-rate is the rate of an audio run's clips; shapes is image"),
])
def test_bad_sample_rates_are_refused_naming_the_flag(tmp_path, args, words):
    r = cli("train", *args, "--out", tmp_path / "run", "--steps", "1")
    assert r.exit_code in (1, 2) and words in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_a_video_run_shows_its_frames_and_their_size(tmp_path):
    pytest.importorskip("av")
    r = cli("train", "moving-shapes", "--out", tmp_path / "run", "--image-size", "16", "--frames", "4", *TINY)
    assert r.exit_code == 0, r.output
    facts, text = info(tmp_path / "run")
    assert (facts["frames"], facts["frame_size"], facts["channels"]) == (4, "16 x 16", 3)
    assert "image_size" not in facts and text["frame size"] == "16 x 16"
    assert facts["frame_rate"] == "8 frames a second"  # data.sample_rate 0: video's default rate


def test_an_upscale_run_shows_its_task_and_scale(tmp_path):
    r = cli("train", "phantoms", "--out", tmp_path / "run", "--image-size", "16", "--grayscale", "--task", "upscale",
            "--scale", "4", *TINY)
    assert r.exit_code == 0, r.output
    facts, _ = info(tmp_path / "run")
    assert (facts["image_size"], facts["task"], facts["scale"]) == (
        16, "upscale (super-resolution, 4 x 4 to 16 x 16)", 4)
    plain, _ = info(FIXTURES / "uncond")  # a run generating from noise says nothing of tasks
    assert "task" not in plain and "scale" not in plain and "teacher" not in plain


@pytest.fixture
def student(tmp_path):
    shutil.copytree(FIXTURES / "uncond", tmp_path / "teacher")
    r = cli("distill", tmp_path / "teacher", "--nfe", 2, "--out", tmp_path / "student", "--steps", 1,
            "--batch-size", 2, "--quiet")
    assert r.exit_code == 0, r.output
    return tmp_path / "student"


def test_a_student_shows_its_teacher_nfe_and_sigmas(student):
    facts, text = info(student)
    teacher = (student.parent / "teacher").resolve()
    assert facts["teacher"] == f"{teacher} (its step 3; consistency distillation)"
    assert (facts["nfe"], facts["student_sigmas"], facts["sampler"]) == (2, "80, 2.515, 0", "consistency, 2 steps")
    assert text["student sigmas"] == "80, 2.515, 0"


def test_train_refuses_a_students_config_naming_its_teachers(student, tmp_path):
    r = cli("train", "shapes", "--config", student / "config.json", "--out", tmp_path / "new", "--steps", "1")
    teacher = (student.parent / "teacher").resolve()
    assert r.exit_code == 1 and r.output.startswith("Error: --config ") and "is a student run's config" in r.output
    assert f"give the teacher's --config {teacher / 'config.json'}" in r.output, r.output
    assert not (tmp_path / "new").exists()
    r = cli("train", "shapes", "--config", student.parent / "teacher" / "config.json", "--out", tmp_path / "new",
            "--steps", "1", "--batch-size", "2", "--quiet")
    assert r.exit_code == 0, r.output  # the teacher's config, the same network, starts a run
