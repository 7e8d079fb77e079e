import json

import pytest
import torch

from diffusely import _files as files
from diffusely import checkpoint as ck
from diffusely.config import RunConfig, TrainConfig
from diffusely.nets import UNetConfig
from diffusely.train.ema import make_ema


def tiny_config():
    return RunConfig(model=UNetConfig(channels=(8, 16), groups=4, attention_levels=()), train=TrainConfig(steps=2))


def trained_parts(seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config()
    model = ck.build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 8, 8), torch.zeros(2)).square().mean().backward()
    torch.nn.init.normal_(model.out[-1].weight)  # a non-trivial state
    model(torch.randn(2, 3, 8, 8), torch.zeros(2)).square().mean().backward()
    opt.step()
    return cfg, model, make_ema(model), opt


def test_checkpoint_round_trip_bit_for_bit(tmp_path):
    cfg, model, ema, opt = trained_parts()
    ck.write_config(tmp_path, cfg)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=7)
    loaded = ck.load_checkpoint(tmp_path)
    assert loaded.step == 7
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model[k], v)
        assert torch.equal(loaded.ema[k], ema.state_dict()[k])
    opt2 = torch.optim.AdamW(ck.build_model(cfg).parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.optimizer)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, s in a["state"].items():
        for k, v in s.items():
            assert torch.equal(b["state"][i][k], v)
    run = ck.load_run(tmp_path)
    assert run.config == cfg and run.step == 7
    assert all(torch.equal(p, ema.state_dict()[k]) for k, p in run.denoiser.net.state_dict().items())


def test_checkpoint_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle
    cfg, model, ema, opt = trained_parts()
    ck.write_config(tmp_path, cfg)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=1)

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    run = ck.load_run(tmp_path)
    assert run.step == 1
    # a safetensors file: an 8-byte header length, then a JSON header, then raw tensor bytes
    raw = (tmp_path / ck.CHECKPOINT).read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header["__metadata__"]["meta"])["step"] == 1


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg, model, ema, opt = trained_parts()
    ck.write_config(tmp_path, cfg)
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=1)

    def dies_halfway(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\x00" * 1000)  # half a file on disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "save_file", dies_halfway)
    with torch.no_grad():
        model.out[-1].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=2)
    monkeypatch.undo()
    loaded = ck.load_checkpoint(tmp_path)
    assert loaded.step == 1
    assert not torch.equal(loaded.model["out.2.weight"], model.state_dict()["out.2.weight"])
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    # a temporary file left by a SIGKILL mid-write is ignored too
    (tmp_path / "checkpoint.safetensors.abc.tmp").write_bytes(b"garbage")
    assert ck.load_checkpoint(tmp_path).step == 1


def test_damaged_checkpoint_gives_clear_error(tmp_path):
    ck.write_config(tmp_path, tiny_config())
    (tmp_path / ck.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ck.RunError, match="checkpoint.safetensors is damaged or not a safetensors file .*; roll back "
                                          "to a kept checkpoint-STEP.safetensors .* or train the run again"):
        ck.load_checkpoint(tmp_path)


def test_missing_and_edited_config(tmp_path):
    cfg, model, ema, opt = trained_parts()
    ck.save_checkpoint(tmp_path, model=model, ema=ema, optimizer=opt, step=1)
    with pytest.raises(ck.RunError, match="has no config.json: is it a run directory made by `diffusely train`"):
        ck.load_run(tmp_path)
    with pytest.raises(ck.RunError, match="no such run directory"):
        ck.load_run(tmp_path / "nope")
    d = cfg.to_dict()
    d["model"]["channels"] = [8, 32]  # edited: no longer fits the weights
    (tmp_path / ck.CONFIG).write_text(json.dumps(d))
    with pytest.raises(ck.RunError, match="do not fit the model that config.json describes") as e:
        ck.load_run(tmp_path)
    # one line that says how: torch's message was a heading line ending in ':' with the keys on the lines below
    assert "\n" not in str(e.value) and " of another shape (e.g. " in str(e.value), str(e.value)
    d["model"]["channels"] = [8, 16, 16]
    (tmp_path / ck.CONFIG).write_text(json.dumps(d))
    with pytest.raises(ck.RunError, match=r"edited\?\): 60 missing \(e.g. down.5.0.conv.weight\); 40 of another "
                                          r"shape \(e.g. up.2.0.norm1.weight \(24,\) for \(32,\)\)$"):
        ck.load_run(tmp_path)
    d["model"]["channels"] = "8,16"
    (tmp_path / ck.CONFIG).write_text(json.dumps(d))
    with pytest.raises(ck.RunError, match="model.channels must be a list"):
        ck.load_run(tmp_path)
    (tmp_path / ck.CONFIG).write_text("{ broken")
    with pytest.raises(ck.RunError, match="is not valid JSON"):
        ck.load_run(tmp_path)
    d = cfg.to_dict()
    d["diffusion"]["sampler"] = "fast"
    (tmp_path / ck.CONFIG).write_text(json.dumps(d))
    with pytest.raises(ck.RunError, match="diffusion.sampler is 'fast'; choose one of: euler, heun"):
        ck.load_run(tmp_path)


def test_config_validation_catches_bad_sampling_settings():
    from diffusely.config import ConfigError, DiffusionConfig
    with pytest.raises(ConfigError, match="leaves the linear schedule's \\[0.0100005, 157.407\\]"):
        DiffusionConfig(parameterization="eps", schedule="linear", train_sigmas="discrete")  # sigma_min 0.002
    with pytest.raises(ConfigError, match="sample_steps must be an integer >= 1, got 0"):
        DiffusionConfig(sample_steps=0)


def test_config_json_round_trip():
    cfg = tiny_config()
    assert RunConfig.from_json(cfg.to_json()) == cfg
