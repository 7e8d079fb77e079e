"""Bad input through the CLI, as a careless or hostile user types it (issue 19): each row must end with a non-zero
exit status, one line naming the flag or file and what to do (never a traceback), and leave every file of the run
and of the dataset as it was."""

import errno
import hashlib
import importlib
import json
import shutil
import tempfile

import pytest
from click.testing import CliRunner

from diffusely.cli import main
from diffusely.data.shapes import write_shapes_folder

from helpers import TINY_ARGS, held_lock


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def digest(*folders) -> dict:
    """Every file under the folders -> its SHA-256: what must not change (a folder's .lock aside: no content, only
    the note of the last job that held it, for the next)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run trained 4 steps on 24 shapes (16 x 16) with a checkpoint at steps 2 and 4, its data, and a scratch dir."""
    root = tmp_path_factory.mktemp("bad")
    write_shapes_folder(root / "images", 24, size=16, seed=1)
    r = CliRunner().invoke(main, ["train", str(root / "images"), "--out", str(root / "run"), "--steps", "4",
                                  "--checkpoint-every", "2", "--sample-every", "4", *TINY_ARGS], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return root


# (case, arguments with RUN, DATA and TMP for the run, its data and a fresh folder, words the message must hold)
ROWS = [
    ("sample -n -1", ["sample", "RUN", "-n", "-1", "--out", "TMP"], ["'-n'", "-1", "x>=1"]),
    ("sample -n 0", ["sample", "RUN", "-n", "0", "--out", "TMP"], ["'-n'", "0"]),
    ("eval -n 0", ["eval", "RUN", "--reference", "DATA", "-n", "0"], ["'-n'", "0", "x>=1"]),
    ("eval -n 4", ["eval", "RUN", "--reference", "DATA", "-n", "4"], ["-n (count) must be >= 6", "got 4"]),
    ("--guidance inf", ["sample", "RUN", "-n", "1", "--guidance", "inf", "--out", "TMP"], ["'--guidance'", "not finite"]),
    ("--guidance nan", ["sample", "RUN", "-n", "1", "--guidance", "nan", "--out", "TMP"], ["'--guidance'", "not finite"]),
    ("-o S_churn=nan", ["sample", "RUN", "-n", "1", "-o", "S_churn=nan", "--out", "TMP"], ["S_churn=nan", "not finite"]),
    ("-o S_churn=inf on reverse", ["reverse", "RUN", "--out", "TMP/r.png", "-o", "S_churn=inf"], ["S_churn=inf"]),
    ("--seed -1", ["sample", "RUN", "-n", "1", "--seed", "-1", "--out", "TMP"], ["'--seed'", "-1"]),
    ("--seed 2**63", ["sample", "RUN", "-n", "1", "--seed", str(2 ** 63), "--out", "TMP"],
     ["'--seed'", str(2 ** 63 - 1)]),
    ("train --seed -5", ["train", "DATA", "--out", "TMP", "--seed", "-5"], ["'--seed'"]),
    ("--channels 16,-32", ["train", "DATA", "--out", "TMP", "--channels", "16,-32"], ["'--channels'", "1..4096"]),
    ("--channels 16,x", ["train", "DATA", "--out", "TMP", "--channels", "16,x"], ["'--channels'", "integers"]),
    ("--blocks-per-level -1", ["train", "DATA", "--out", "TMP", "--blocks-per-level", "-1"], ["'--blocks-per-level'"]),
    ("--image-size 100000", ["train", "DATA", "--out", "TMP", "--image-size", "100000"], ["'--image-size'", "4096"]),
    ("--image-size 0", ["train", "DATA", "--out", "TMP", "--image-size", "0"], ["'--image-size'"]),
    ("--attention-levels 5 of 2", ["train", "DATA", "--out", "TMP", "--attention-levels", "5"],
     ["--attention-levels: ", "outside the 2 levels"]),
    ("--lr nan", ["train", "DATA", "--out", "TMP", "--lr", "nan"], ["'--lr'", "not finite"]),
    ("--lr 0", ["train", "DATA", "--out", "TMP", "--lr", "0"], ["'--lr'", "> 0"]),
    ("train-autoencoder --kl-weight nan", ["train-autoencoder", "DATA", "--out", "TMP", "--kl-weight", "nan"],
     ["'--kl-weight'"]),
    ("--resume --channels", ["train", "--out", "RUN", "--resume", "--channels", "32,64"],
     ["--channels 32,64 conflicts", "model.channels 16,32"]),
    ("--resume --image-size", ["train", "--out", "RUN", "--resume", "--image-size", "32"],
     ["--image-size 32 conflicts", "data.image_size 16"]),
    ("--resume --lr", ["train", "--out", "RUN", "--resume", "--lr", "0.1"], ["--lr 0.1 conflicts", "train.lr 0.001"]),
    ("--resume --batch-size", ["train", "--out", "RUN", "--resume", "--batch-size", "8"],
     ["--batch-size 8 conflicts", "train.batch_size 4"]),
    ("--resume --text", ["train", "--out", "RUN", "--resume", "--text"], ["--text conflicts", "text.encoder none"]),
    ("--resume --layout", ["train", "--out", "RUN", "--resume", "--layout"], ["--layout conflicts", "data.layout false"]),
    ("--resume --classes", ["train", "--out", "RUN", "--resume", "--classes"], ["--classes conflicts"]),
    ("--resume --grayscale", ["train", "--out", "RUN", "--resume", "--grayscale"],
     ["--grayscale conflicts", "data.channels 3"]),
    ("--resume other DATA", ["train", "shapes", "--out", "RUN", "--resume"], ["DATA shapes is not the data"]),
    ("--resume --steps 2 at step 4", ["train", "--out", "RUN", "--resume", "--steps", "2"],
     ["at step 4", "--steps 2 would end it before that"]),
    ("--resume --autoencoder", ["train", "--out", "RUN", "--resume", "--autoencoder", "RUN"],
     ["--autoencoder starts a new run"]),
    ("--resume --config", ["train", "--out", "RUN", "--resume", "--config", "RUN/config.json"],
     ["--config starts a new run"]),
    ("--resume with nothing there", ["train", "--out", "TMP", "--resume"], ["nothing to resume"]),
    ("sample --out over earlier samples", ["sample", "RUN", "-n", "2", "--steps", "2", "--out", "RUN/samples-old"],
     ["already holds 1 of the files", "--overwrite"]),
    ("forward on a missing file", ["forward", "TMP/none.png", "--out", "TMP/f.png"], ["no such image file"]),
    ("forward on text", ["forward", "RUN/../notes.png", "--out", "TMP/f.png"], ["notes.png", "as an image"]),
    ("info on a missing run", ["info", "TMP/nowhere"], ["no such run directory"]),
    ("sample --batch-size 0", ["sample", "RUN", "-n", "1", "--batch-size", "0", "--out", "TMP"], ["'--batch-size'"]),
    ("train --steps 0", ["train", "DATA", "--out", "TMP", "--steps", "0"], ["'--steps'", "x>=1"]),
    ("train --keep 0", ["train", "DATA", "--out", "TMP", "--keep", "0"], ["'--keep'", "x>=1"]),
    ("synth -n 0", ["synth", "RUN", "--out", "TMP", "-n", "0"], ["'-n'"]),
    ("adaptive -o rtol=0", ["sample", "RUN", "-n", "1", "--sampler", "adaptive", "-o", "rtol=0", "--out", "TMP"],
     ["rtol", ">= 1e-10"]),
    ("adaptive -o rtol=1e-300 -o atol=1e-300", ["sample", "RUN", "-n", "1", "--sampler", "adaptive", "-o", "rtol=1e-300",
                                                "-o", "atol=1e-300", "--out", "TMP"], ["rtol", ">= 1e-10", "1e-300"]),
    ("--prompts not UTF-8", ["sample", "RUN", "-n", "1", "--prompts", "RUN/../latin1.txt", "--out", "TMP"],
     ["latin1.txt is not UTF-8", "--prompts"]),
]


@pytest.mark.parametrize("case, args, words", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line_and_changes_nothing(tiny, tmp_path, case, args, words):
    run, data = tiny / "run", tiny / "images"
    (run / "samples-old").mkdir(exist_ok=True)
    (run / "samples-old" / "000001.png").write_bytes(b"an earlier sample")
    (tiny / "notes.png").write_text("not an image")
    (tiny / "latin1.txt").write_bytes("a red café\n".encode("latin-1"))
    before = digest(run, data)
    command, *args = [a.replace("RUN", str(run)).replace("DATA", str(data)).replace("TMP", str(tmp_path / "new"))
                      for a in args]
    # the row's own values come last, so they win over these (a new run that did start would train one tiny step)
    quiet = {"train": ["--steps", "1", *TINY_ARGS], "train-autoencoder": ["--steps", "1", "--quiet"], "sample": ["--quiet"],
             "eval": ["--quiet"]}
    r = invoke(command, *([] if "--resume" in args else quiet.get(command, [])), *args)
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.exception  # a message, not a crash
    message = r.output.strip().splitlines()[-1]
    assert message.startswith("Error: "), r.output
    for word in words:
        assert word in r.output, (word, r.output)
    assert digest(run, data) == before
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").rglob("*.png"))


# the failures a test can only bring about by patching: the disk, the memory, the file system's permissions
def _eroofs(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))


def test_sampler_options_are_checked_before_a_folder_is_made(tiny, tmp_path, monkeypatch):
    generate = importlib.import_module("diffusely.pipelines.generate")

    def reached(*args, **kwargs):
        raise AssertionError("sampling started before the options were checked")
    monkeypatch.setattr(generate, "_batches", reached)
    for options, words in ((["-o", "bad=1"], "takes no option bad"),
                           (["--sampler", "adaptive", "-o", "rtol=-1"], "rtol must be a finite number")):
        r = invoke("sample", tiny / "run", "-n", "1", *options, "--out", tmp_path / "s", "--quiet")
        assert r.exit_code == 1 and words in r.output, r.output
        assert not (tmp_path / "s").exists()  # was an empty folder left behind


def test_a_second_sample_job_into_one_folder_is_refused(tiny, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    with held_lock(out, "4242 sample --out s"):  # another job
        r = invoke("sample", tiny / "run", "-n", "1", "--steps", "2", "--out", out, "--quiet")
        assert r.exit_code == 1 and f"{out} is in use by process 4242 (sample --out s)" in r.output, r.output
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written beside the other job's
    r = invoke("sample", tiny / "run", "-n", "1", "--steps", "2", "--out", out, "--quiet")
    assert r.exit_code == 0 and (out / "000000.png").is_file(), r.output


def test_read_only_run_directory_is_refused_before_the_work(tiny, monkeypatch):
    run = tiny / "run"
    before = digest(run)
    # the work itself must never start: each command's slow part fails the test if it is reached
    for module, name in (("diffusely.pipelines.generate", "_batches"), ("diffusely.pipelines.schedule", "optimize_sigmas"),
                         ("diffusely.pipelines.evaluate", "evaluate_run"), ("diffusely.train", "train")):
        def reached(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} ran before the write check")
        monkeypatch.setattr(importlib.import_module(module), name, reached)
    monkeypatch.setattr(tempfile, "mkstemp", _eroofs)
    for args in (["sample", run, "-n", "1", "--quiet"], ["optimize-schedule", run, "--steps", "2", "-n", "1"],
                 ["eval", run, "--reference", tiny / "images", "-n", "2", "--quiet"],
                 ["train", "--out", run, "--resume", "--steps", "6", "--quiet"]):
        r = invoke(*args)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert f"cannot write {run}" in r.output and "read-only" in r.output, r.output
    assert digest(run) == before and not (run / "generated").exists()


def test_disk_full_while_writing_samples_is_one_line(tiny, tmp_path, monkeypatch):
    generate = importlib.import_module("diffusely.pipelines.generate")  # the module, not the function of that name

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(generate, "atomic_write", full)
    r = invoke("sample", tiny / "run", "-n", "1", "--steps", "2", "--out", tmp_path / "s", "--quiet")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip() == f"Error: {tmp_path / 's' / '000000.png'}: the disk is full: free some space, or write " \
                               "somewhere else (another --out)"


def test_out_of_memory_names_the_batch_size(tiny, tmp_path, monkeypatch):
    generate = importlib.import_module("diffusely.pipelines.generate")

    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(generate, "to_uint8", no_memory)
    r = invoke("sample", tiny / "run", "-n", "1", "--steps", "2", "--out", tmp_path / "s", "--quiet")
    assert r.exit_code == 1 and "lower --batch-size (now 64, the default)" in r.output
    r = invoke("sample", tiny / "run", "-n", "1", "--steps", "2", "--out", tmp_path / "t", "--quiet", "--batch-size", 8)
    assert r.exit_code == 1 and "lower --batch-size (now 8)" in r.output

    def cpu_allocator(*args, **kwargs):  # what torch raises on a CPU: a RuntimeError, not a MemoryError
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 633318697598976 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(generate, "to_uint8", cpu_allocator)
    r = invoke("sample", tiny / "run", "-n", "1", "--steps", "2", "--out", tmp_path / "u", "--quiet", "--batch-size", 8)
    assert r.exit_code == 1 and r.output == "Error: out of memory: lower --batch-size (now 8), e.g. to half of it\n"


def test_damaged_files_are_one_line(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny / "run", run)
    deep = 100_000
    (run / "config.json").write_text("[" * deep + "]" * deep)
    r = invoke("sample", run, "-n", "1", "--out", tmp_path / "s", "--quiet")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"{run / 'config.json'} is nested too deep" in r.output, r.output
    (run / "config.json").write_bytes(b"\xff\xfe{}")
    r = invoke("info", run)
    assert r.exit_code == 1 and f"{run / 'config.json'} is not UTF-8 text" in r.output, r.output

    shutil.rmtree(run)
    shutil.copytree(tiny / "run", run)
    for schedules, words in (('{"heun": {"2": [80, 1e-300, 0]}}', "holds sigma 1e-300"), ("[1, 2]", "not list")):
        (run / "schedules.json").write_text(schedules)  # a 1e-300 sigma once gave black images, exit 0
        r = invoke("sample", run, "-n", "1", "--steps", "2", "--out", tmp_path / "s", "--quiet")
        assert r.exit_code == 1 and "schedules.json" in r.output and words in r.output, r.output
        assert not (tmp_path / "s").exists()
    for name in ("model.safetensors", "checkpoint.safetensors"):
        if (run / name).exists():
            (run / name).write_bytes((run / name).read_bytes()[:100])
    r = invoke("sample", run, "-n", "1", "--out", tmp_path / "s", "--quiet")
    assert r.exit_code == 1 and "Traceback" not in r.output and "safetensors" in r.output, r.output


def test_resume_without_its_data_is_refused(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny / "run", run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["source"] = str(tmp_path / "moved")
    (run / "config.json").write_text(json.dumps(config))
    before = digest(run)
    r = invoke("train", "--out", run, "--resume", "--steps", 6, "--quiet")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"the data of the run in {run}, {tmp_path / 'moved'}, is not there any more" in r.output, r.output
    assert digest(run) == before


def test_decompression_bomb_is_one_line(tiny, tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels: over twice the limit, as a real bomb is
    r = invoke("forward", tmp_path / "bomb.png", "--out", tmp_path / "f.png")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "decompression bomb" in r.output and "shrink the image" in r.output, r.output
    assert not (tmp_path / "f.png").exists()


def test_decompression_bomb_met_by_any_reader_names_its_file(tiny, tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for args in (["img2img", tiny / "run", tmp_path / "bomb.png"], ["restore", tiny / "run", tmp_path / "bomb.png",
                                                                     "--task", "deblur"]):
        r = invoke(*args, "--out", tmp_path / "out")
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        # pillow refuses at twice MAX_IMAGE_PIXELS (below that it only warns)
        assert r.output.startswith(f"Error: {tmp_path / 'bomb.png'} is refused as too large to decode safely (Image "
                                   "size (4096 pixels) exceeds limit of 2000 pixels): shrink it first"), r.output
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tiny, tmp_path, monkeypatch):
    r = invoke("--debug", "sample", tiny / "run", "-n", "1", "--sampler", "plmz", "--out", tmp_path / "s")
    assert r.exit_code == 1 and isinstance(r.exception, ValueError) and "unknown sampler 'plmz'" in str(r.exception)
    describe = importlib.import_module("diffusely.pipelines.describe")

    def bug(*args):
        raise KeyError("a bug")
    monkeypatch.setattr(describe, "last_loss", bug)
    r = invoke("info", tiny / "run")
    assert r.exit_code == 1 and isinstance(r.exception, KeyError)  # not turned into a message: a traceback


def test_a_warning_reads_as_one_line_and_debug_keeps_its_source(tmp_path):
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    Image.fromarray(np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)).save(tmp_path / "16bit.png")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for debug in ([], ["--debug"]):
        r = subprocess.run([sys.executable, "-m", "diffusely.cli", *debug, "forward", tmp_path / "16bit.png", "--out",
                            tmp_path / "f.png"], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = r.stderr.strip().splitlines()
        if debug:  # python's form: the file and line that warned, then its source
            assert "UserWarning: of 1 image(s)" in lines[0] and ".py:" in lines[0] and len(lines) == 2, r.stderr
        else:
            assert lines == [f"Warning: of 1 image(s) of {tmp_path / '16bit.png'}: 1 16-bit, scaled to 8 bits "
                             f"(e.g. {tmp_path / '16bit.png'}) (diffusely.data.images)"], r.stderr
