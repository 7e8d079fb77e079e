"""What a run directory keeps safe: no non-finite checkpoint, the last K kept, model.safetensors for sampling,
no sampling from NaN weights, a full disk that loses nothing, schedules.json checked."""

import errno
import json
from pathlib import Path

import pytest
import torch

from diffusely import _files as files
from diffusely import checkpoint as ck
from diffusely.config import RunConfig, TrainConfig
from diffusely.nets import UNetConfig
from diffusely.train.ema import make_ema


def tiny_run(run_dir: Path, seed=0):
    """A config.json and the parts of a tiny U-Net run: (model, ema, optimizer), with Adam state in the optimizer."""
    torch.manual_seed(seed)
    cfg = RunConfig(model=UNetConfig(channels=(8, 16), groups=4, attention_levels=()), train=TrainConfig(steps=2))
    ck.write_config(run_dir, cfg)
    model = ck.build_model(cfg)
    torch.nn.init.normal_(model.out[-1].weight)  # the zero-initialised output conv would hide the weights
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 8, 8), torch.zeros(2)).square().mean().backward()
    opt.step()
    return model, make_ema(model), opt


def train_step(model, ema, value: float):
    """Stand-in for a training step: every weight moves, so each saved step is told apart by out.2.weight."""
    with torch.no_grad():
        model.out[-1].weight.fill_(value)
        ema.out[-1].weight.fill_(value / 2)


def files_of(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_keep_rotates_the_last_k_checkpoints_and_rolls_back(tmp_path):
    model, ema, opt = tiny_run(tmp_path)
    for step in (10, 20, 30, 40):
        train_step(model, ema, step)
        ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=step, keep=3)
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert names == ["checkpoint-20.safetensors", "checkpoint-30.safetensors", "checkpoint.safetensors",
                     "model.safetensors"]
    assert ck.kept_steps(tmp_path) == [30, 20]
    for step in (20, 30):
        kept = ck.load_state(tmp_path / f"checkpoint-{step}.safetensors")
        assert kept.step == step and kept.modules["model"]["out.2.weight"].unique().item() == step
    train_step(model, ema, 50)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=50)  # keep=2: one older one
    assert ck.kept_steps(tmp_path) == [40]
    # a late divergence: roll back; sampling and resume both take step 40 (model.safetensors, of step 50, yields)
    assert ck.roll_back(tmp_path) == 40
    assert ck.load_checkpoint(tmp_path).step == 40 and ck.kept_steps(tmp_path) == [50]
    run = ck.load_run(tmp_path)
    assert run.step == 40 and run.denoiser.net.state_dict()["out.2.weight"].unique().item() == 20
    with pytest.raises(ck.RunError, match="keeps no checkpoint of step 7; it keeps steps 50"):
        ck.roll_back(tmp_path, 7)


def test_keep_1_keeps_only_the_newest(tmp_path):
    model, ema, opt = tiny_run(tmp_path)
    for step in (1, 2, 3):
        ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=step, keep=1)
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == ["checkpoint.safetensors"]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=4, keep=0)


@pytest.mark.parametrize("where", ["model", "ema", "optimizer"])
def test_a_non_finite_state_is_refused_and_nothing_is_written(tmp_path, where):
    model, ema, opt = tiny_run(tmp_path)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=5)
    train_step(model, ema, 1.0)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=10)
    before = files_of(tmp_path)
    with torch.no_grad():
        if where == "model":
            model.out[-1].weight[0, 0, 0, 0] = float("nan")
            model.out[-1].bias.fill_(float("inf"))
        elif where == "ema":
            ema.out[-1].weight[0, 0, 0, 0] = float("nan")
        else:
            opt.state[model.out[-1].weight]["exp_avg_sq"].fill_(float("nan"))
    bad = 2 if where == "model" else 1
    with pytest.raises(ck.NonFiniteError, match=f"at step 15, {bad} of \\d+ tensors hold NaN or inf, so no checkpoint "
                                                "was written \\(checkpoint.safetensors still holds step 10\\); "
                                                "lower the learning rate"):
        ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=15)
    assert files_of(tmp_path) == before  # the good checkpoint, its kept predecessor and model.safetensors intact


def test_an_autoencoder_state_is_refused_too(tmp_path):
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(ck.NonFiniteError, match="at step 3, 1 of 2 tensors"):
        ck.save_state(tmp_path / ck.CHECKPOINT, step=3, modules={"model": net}, optimizers={})
    assert list(tmp_path.iterdir()) == []


def test_an_autoencoder_with_nan_weights_is_not_loaded(tmp_path):
    import shutil
    ae = tmp_path / "ae"
    shutil.copytree(Path(__file__).parent / "fixtures" / "v0" / "ae", ae)
    assert ck.load_autoencoder(ae).step > 0
    state, meta = files.load_tensors(ae / ck.CHECKPOINT)
    name = next(k for k in state if k.startswith("model.") and k.endswith("weight"))
    state[name][0] = float("nan")
    files.save_tensors(ae / ck.CHECKPOINT, state, meta)
    with pytest.raises(ck.NonFiniteError, match=f"{ae / ck.CHECKPOINT} holds non-finite weights \\(1 of"):
        ck.load_autoencoder(ae)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, ema, opt = tiny_run(tmp_path)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=1)
    before = files_of(tmp_path)

    def no_space(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 4096)
        raise files.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(files, "save_file", no_space)
    train_step(model, ema, 3.0)
    with pytest.raises(files.NotWritable) as e:
        ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=2)
    assert str(e.value) == (f"cannot write {tmp_path / ck.CHECKPOINT}: the disk is full; "
                            "free some space or write elsewhere")
    monkeypatch.undo()
    after = files_of(tmp_path)
    # the checkpoint of step 1 is whole; at most a hard link to it was made for keeping
    assert {k: v for k, v in after.items() if k != "checkpoint-1.safetensors"} == before
    assert ck.load_run(tmp_path).step == 1


def test_load_run_prefers_model_safetensors(tmp_path):
    model, ema, opt = tiny_run(tmp_path)
    train_step(model, ema, 4.0)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=3)
    weights, meta = files.load_tensors(tmp_path / ck.MODEL)
    assert meta["step"] == 3 and sorted(weights) == sorted(ema.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in ema.state_dict().items())
    assert not any(k.startswith(("model.", "ema.", "optim.")) for k in weights)  # inference only: no optimizer
    # what load_run samples with comes from model.safetensors: mark it and see the mark
    weights["out.2.weight"] = torch.full_like(weights["out.2.weight"], 7.0)
    files.save_tensors(tmp_path / ck.MODEL, weights, meta)
    run = ck.load_run(tmp_path)
    assert run.step == 3 and run.denoiser.net.state_dict()["out.2.weight"].unique().item() == 7.0
    # raw weights live in the training checkpoint only
    raw = ck.load_run(tmp_path, weights="model").denoiser.net.state_dict()["out.2.weight"]
    assert raw.unique().item() == 4.0
    # an inference-only copy of a run: config.json and model.safetensors
    (tmp_path / ck.CHECKPOINT).unlink()
    assert ck.load_run(tmp_path).denoiser.net.state_dict()["out.2.weight"].unique().item() == 7.0


def test_load_run_refuses_non_finite_weights(tmp_path):
    model, ema, opt = tiny_run(tmp_path)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=3)
    weights, meta = files.load_tensors(tmp_path / ck.MODEL)
    weights["out.2.bias"] = torch.full_like(weights["out.2.bias"], float("nan"))
    files.save_tensors(tmp_path / ck.MODEL, weights, meta)  # as a diverged run of before this check wrote them
    with pytest.raises(ck.NonFiniteError, match=f"{tmp_path / ck.MODEL} holds non-finite weights \\(1 of \\d+ "
                                                "tensors hold NaN or inf\\).*roll back"):
        ck.load_run(tmp_path)
    # an old run, with the training checkpoint alone, holding NaN
    (tmp_path / ck.MODEL).unlink()
    state, meta = files.load_tensors(tmp_path / ck.CHECKPOINT)
    state["ema.out.2.bias"] = state["ema.out.2.bias"] * float("nan")
    files.save_tensors(tmp_path / ck.CHECKPOINT, state, meta)
    with pytest.raises(ck.NonFiniteError, match=f"{tmp_path / ck.CHECKPOINT} holds non-finite weights"):
        ck.load_run(tmp_path)


GOOD = [80.0, 1.5, 0.002, 0.0]


@pytest.mark.parametrize("content,message", [
    ([GOOD], "must hold an object {sampler: {steps: \\[sigmas\\]}}, not list"),
    ({"heun": [GOOD]}, "'heun' must be an object {steps: \\[sigmas\\]}, not list"),
    ({"heun": {"three": GOOD}}, "'heun' 'three' is not a step count"),
    ({"heun": {"3": "80,1,0"}}, "'heun' '3' must be a list of numbers"),
    ({"heun": {"3": [80.0, True, 0.1, 0.0]}}, "must be a list of numbers"),
    ({"heun": {"4": GOOD}}, "'heun' '4' must hold steps \\+ 1 = 5 sigmas, not 4"),
    ({"heun": {"3": [80.0, float("nan"), 0.002, 0.0]}}, "holds a sigma that is not finite"),
    ({"heun": {"3": [80.0, 1.5, 0.002, 0.001]}}, "must end in 0, not 0.001"),
    ({"heun": {"3": [80.0, 1.5, 1e-300, 0.0]}}, "holds sigma 1e-300: before the final 0 every sigma must be at least"),
    ({"heun": {"3": [80.0, -1.0, 0.002, 0.0]}}, "holds sigma -1"),
    ({"heun": {"3": [1.5, 80.0, 0.002, 0.0]}}, "must be strictly decreasing"),
    ({"heun": {"3": [80.0, 1.5, 1.5, 0.0]}}, "must be strictly decreasing"),
])
def test_schedules_json_is_checked(tmp_path, content, message):
    (tmp_path / ck.SCHEDULES).write_text(json.dumps(content))
    with pytest.raises(ck.RunError, match=f"{tmp_path / ck.SCHEDULES}: .*{message}.*; delete it or run `diffusely "
                                          "optimize-schedule` again" if content != [GOOD] else message) as e:
        ck.read_schedules(tmp_path)
    assert "\n" not in str(e.value)


def test_schedules_json_good_nested_and_written(tmp_path, monkeypatch):
    (tmp_path / ck.SCHEDULES).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ck.RunError, match="is not valid JSON \\(RecursionError"):
        ck.read_schedules(tmp_path)
    (tmp_path / ck.SCHEDULES).unlink()
    ck.write_schedule(tmp_path, "heun", 3, torch.tensor(GOOD, dtype=torch.float64))
    assert ck.read_schedules(tmp_path) == {"heun": {"3": GOOD}}

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(files.NotWritable, match="the file system is read-only"):
        ck.write_schedule(tmp_path, "heun", 4, [80.0, 2.0, 1.0, 0.1, 0.0])


@pytest.mark.parametrize("kind", [RunConfig, ck.AutoencoderRunConfig])
def test_config_json_nested_too_deep_is_a_run_error(tmp_path, kind):
    # json recurses once a level: the kind probe once let a RecursionError through for the CLI to guess the file
    (tmp_path / ck.CONFIG).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ck.RunError, match=f"^{tmp_path}/config.json cannot be used: .* nested too deeply"):
        ck.read_config(tmp_path, kind)


def test_two_schedule_writers_at_once_both_land(tmp_path, monkeypatch):
    # two optimize-schedule jobs finishing together: each reads schedules.json, adds its entry, writes it back
    import threading

    read = ck.read_schedules
    first_read = threading.Event()

    def slow_read(run_dir):
        schedules = read(run_dir)
        if not first_read.is_set():
            first_read.set()
            threading.Event().wait(0.5)  # the other writer arrives while this one holds what it read
        return schedules

    monkeypatch.setattr(ck, "read_schedules", slow_read)
    other = [80.0, 2.0, 1.0, 0.1, 0.0]
    first = threading.Thread(target=ck.write_schedule, args=(tmp_path, "heun", 3, GOOD))
    first.start()
    first_read.wait(5)
    ck.write_schedule(tmp_path, "euler", 4, other)
    first.join()
    assert read(tmp_path) == {"heun": {"3": GOOD}, "euler": {"4": other}}


def test_roll_back_waits_for_no_one_it_is_refused_while_a_job_holds_the_run(tmp_path):
    """A training saving beside a roll-back would prune the checkpoint rolled back to: roll_back takes the lock."""
    import subprocess
    import sys
    import time

    from diffusely._files import Busy

    model, ema, opt = tiny_run(tmp_path)
    for step in (10, 20):
        train_step(model, ema, step)
        ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=step)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom diffusely._files import run_lock\n"
                               f"with run_lock({str(tmp_path)!r}, 'train'):\n    print('held', flush=True)\n"
                               "    time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match="train"):
            ck.roll_back(tmp_path)
        assert ck.step_of(tmp_path / "checkpoint.safetensors") == 20
    finally:
        holder.kill()
        holder.wait()
    assert ck.roll_back(tmp_path) == 10


def test_a_resume_that_fails_writing_the_log_keeps_the_old_log(tmp_path, monkeypatch):
    import csv

    from diffusely.train.common import start_log

    log = tmp_path / "log.csv"
    log.write_bytes(b"step,loss\r\n10,0.5\r\n20,0.4\r\n")
    monkeypatch.setattr(csv.DictWriter, "writerows", lambda self, rows: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError):
        start_log(tmp_path, RunConfig(), 20, ["step", "loss"])
    assert log.read_bytes() == b"step,loss\r\n10,0.5\r\n20,0.4\r\n"
