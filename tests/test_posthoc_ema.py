"""EDM2's post-hoc EMA: the power-function EMAs tracked in training (train/ema.py), their reconstruction at any length
from stored snapshots (train/posthoc.py), `diffusely ema` and `eval --ema-length`, and a killed run resuming them
bit for bit."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from diffusely.checkpoint import load_run
from diffusely.cli import main
from diffusely.config import ConfigError, RunConfig
from diffusely.data.shapes import write_shapes_folder
from diffusely.train.ema import PowerEMA, gamma_of, power_beta, sigma_rel_of
from diffusely.train.posthoc import load_posthoc_run, profile_products, reconstruct, snapshots

from helpers import TINY_ARGS, train_tiny_folder_run
from test_train import train_killed_in_step_6

STEPS, EVERY = 200, 10  # the toy trajectory's steps, and its snapshots' interval


def test_sigma_rel_and_gamma():
    # EDM2 (sec. 3.1): sigma_rel 0.05 and 0.10 are exponents 16.97 and 6.94
    assert gamma_of(0.05) == pytest.approx(16.97, abs=0.005) and gamma_of(0.10) == pytest.approx(6.94, abs=0.005)
    for sigma_rel in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert sigma_rel_of(gamma_of(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)


def test_power_beta_gives_each_step_its_profile_mass():
    # tracking the one-hot trajectory theta_k = e_k reads off the weight each step gets after T steps: exactly the
    # profile's mass on (k-1, k], (k^(gamma+1) - (k-1)^(gamma+1)) / T^(gamma+1)
    T, gamma = 50, gamma_of(0.1)
    ema = np.zeros(T)
    for t in range(1, T + 1):
        beta = power_beta(gamma, t)
        ema = beta * ema + (1 - beta) * np.eye(T)[t - 1]
    k = np.arange(1, T + 1)
    mass = (k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / T ** (gamma + 1)
    np.testing.assert_allclose(ema, mass, rtol=1e-12, atol=1e-300)
    assert power_beta(gamma, 1) == 0  # the first step forgets the random init


def test_profile_products_match_quadrature():
    tau = np.linspace(0, 300, 3_000_001)
    profile = lambda t, g: np.where(tau <= t, (g + 1) * tau ** g / t ** (g + 1), 0.0)  # noqa: E731
    for (ta, ga), (tb, gb) in [((100, 6.9), (300, 16.9)), ((300, 6.9), (100, 16.9)), ((200, 2.0), (200, 2.0))]:
        numeric = np.trapezoid(profile(ta, ga) * profile(tb, gb), tau)
        assert profile_products(ta, ga, tb, gb) == pytest.approx(numeric, rel=1e-4)


class Vector(torch.nn.Module):
    """A model of one float64 parameter, set by hand to each step's weights."""

    def __init__(self, n: int):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))


def toy_trajectory(seed: int = 0) -> np.ndarray:
    """(STEPS, 3) weights: a random walk with a slow oscillation, as a parameter wanders in training."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(STEPS, 3)), 0) + 5 * np.sin(np.arange(STEPS) / 20)[:, None]


def track(run_dir, trajectory: np.ndarray, sigma_rels, every: int) -> PowerEMA:
    """Run PowerEMA over the trajectory as training does, storing snapshots into run_dir."""
    model = Vector(trajectory.shape[1])
    phema = PowerEMA(model, sigma_rels)
    for t, theta in enumerate(trajectory, 1):
        model.theta.data = torch.from_numpy(theta)
        phema.update(model, t)
        phema.store(run_dir, t, every, len(trajectory))
    return phema


def test_reconstructing_a_stored_length_gives_its_snapshot(tmp_path):
    trajectory = toy_trajectory()
    phema = track(tmp_path, trajectory, (0.05, 0.1), EVERY)
    assert len(snapshots(tmp_path)) == 2 * STEPS // EVERY
    for i, sigma_rel in enumerate((0.05, 0.1)):
        r = reconstruct(tmp_path, sigma_rel)
        # its profile is in the span, so least squares picks it alone: the snapshot to float64 rounding (4e-15 seen)
        assert r.step == STEPS and r.error < 1e-6
        np.testing.assert_allclose(r.weights["theta"].numpy(), phema.emas[i].theta.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sigma_rel", [0.07, 0.15])
def test_reconstructing_another_length_matches_its_direct_average(tmp_path, sigma_rel):
    trajectory = toy_trajectory()
    track(tmp_path, trajectory, (0.05, 0.1), EVERY)
    direct = track(tmp_path / "direct", trajectory, (sigma_rel,), STEPS).emas[0].theta.numpy()
    r = reconstruct(tmp_path, sigma_rel)
    # the tracked average is exactly <p_target, theta> with theta constant over each step (the test above), and the
    # reconstruction <sum_i x_i p_i, theta>; both profiles have mass 1, so by Cauchy-Schwarz their difference is at
    # most ||p_target - sum_i x_i p_i|| ||theta - c|| for any constant c: a bound, not a tuned tolerance
    norm = np.sqrt(profile_products(STEPS, gamma_of(sigma_rel), STEPS, gamma_of(sigma_rel)))
    bound = r.error * norm * np.linalg.norm(trajectory - trajectory.mean(0), axis=0)
    gap = np.abs(r.weights["theta"].numpy() - direct)
    assert np.all(gap <= bound), (gap, bound)
    # 20 snapshots of each of EDM2's two lengths: the profile is within 0.6% (0.25% at 0.07, 0.58% at 0.15), the
    # weights within 7e-4 and 2.5e-3 of the direct average (bounds 0.05, 0.07) on coordinates that range over 19-31
    assert r.error < 0.01 and gap.max() < 0.005


def test_the_option_round_trips_through_config_json():
    config = RunConfig()
    assert config.train.posthoc_ema == ()  # off by default: runs as before
    config.train.posthoc_ema, config.train.posthoc_every = (0.05, 0.1), 250
    back = RunConfig.from_json(config.to_json())
    assert back.train.posthoc_ema == (0.05, 0.1) and back.train.posthoc_every == 250 and back == config
    for field, value, named in (("posthoc_ema", [0.05, 0.4], "train.posthoc_ema[1]"),
                                ("posthoc_ema", [0.1, 0.1], "repeats"), ("posthoc_every", 0, "train.posthoc_every")):
        d = json.loads(config.to_json())
        d["train"][field] = value
        with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
            RunConfig.from_dict(d)


@pytest.fixture(scope="module")
def posthoc_runs(tmp_path_factory):
    """A tiny run with snapshots of sigma_rel 0.05 and 0.1 every 2 of its 9 steps, trained whole (asked for by
    flags), and the same run (asked for by a --config) SIGKILLed inside step 6 (its checkpoint of step 3 on disk,
    the snapshot of step 4 written) and resumed."""
    root = tmp_path_factory.mktemp("posthoc")
    write_shapes_folder(root / "images", 24, size=16, seed=1)
    config = RunConfig()
    config.train.posthoc_ema, config.train.posthoc_every = (0.05, 0.1), 2
    (root / "config.json").write_text(config.to_json())
    common = [str(root / "images"), "--steps", "9", "--checkpoint-every", "3", "--sample-every", "100",
              "--log-every", "1", *TINY_ARGS]
    r = CliRunner().invoke(main, ["train", *common, "--posthoc-ema", "0.05,0.1", "--posthoc-every", "2",
                                  "--out", str(root / "whole")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    train_killed_in_step_6([*common, "--config", str(root / "config.json"), "--out", str(root / "killed")])
    assert sorted(f.name for f in (root / "killed" / "posthoc").iterdir()) == [
        "ema-0.05-0000002.safetensors", "ema-0.05-0000004.safetensors", "ema-0.1-0000002.safetensors",
        "ema-0.1-0000004.safetensors"]
    r = CliRunner().invoke(main, ["train", "--out", str(root / "killed"), "--resume", "--quiet"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return root / "whole", root / "killed"


def test_killed_and_resumed_gives_the_same_snapshots_and_weights(posthoc_runs):
    whole, killed = posthoc_runs
    names = sorted(f.name for f in (whole / "posthoc").iterdir())
    assert names == sorted(f"ema-{s}-{t:07d}.safetensors" for s in ("0.05", "0.1") for t in (2, 4, 6, 8, 9))
    assert names == sorted(f.name for f in (killed / "posthoc").iterdir())
    for name in [*(f"posthoc/{n}" for n in names), "checkpoint.safetensors", "model.safetensors"]:
        a, b = load_file(str(whole / name)), load_file(str(killed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ckpt = load_file(str(whole / "checkpoint.safetensors"))
    assert any(k.startswith("phema0.") for k in ckpt) and any(k.startswith("phema1.") for k in ckpt)


def test_ema_command_writes_the_reconstruction(posthoc_runs, tmp_path):
    whole = shutil.copytree(posthoc_runs[0], tmp_path / "run")  # the fixture's run stays as trained
    r = CliRunner().invoke(main, ["ema", str(whole), "--length", "0.07", "--out", str(tmp_path / "w.safetensors")])
    assert r.exit_code == 0, r.output
    expected = reconstruct(whole, 0.07)
    written = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(written[k], v) for k, v in expected.weights.items())
    # the run's own weights, by default: load_run samples with them from then on
    r = CliRunner().invoke(main, ["ema", str(whole), "--length", "0.07"])
    assert r.exit_code == 0 and "at step 9, from 10 snapshots" in r.output, r.output
    net = load_run(whole).denoiser.net
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.weights.items())
    assert any(not torch.equal(net.state_dict()[k], v) for k, v in reconstruct(whole, 0.05).weights.items())
    # eval --ema-length's run: the reconstruction in memory, at the snapshots' step
    run = load_posthoc_run(whole, 0.05)
    assert run.step == 9 and all(torch.equal(run.denoiser.net.state_dict()[k], v)
                                 for k, v in reconstruct(whole, 0.05).weights.items())


def test_a_run_without_snapshots_says_how_to_store_them(tmp_path):
    run, _ = train_tiny_folder_run(tmp_path)
    for args in (["ema", str(run), "--length", "0.1"],
                 ["eval", str(run), "--reference", "shapes", "--ema-length", "0.05,0.1"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and "has no post-hoc EMA snapshots" in r.output, r.output
        assert "--posthoc-ema 0.05,0.1" in r.output and "Traceback" not in r.output
    assert not (run / "posthoc").exists()


def test_eval_sweeps_lengths_and_names_the_best(tmp_path, monkeypatch):
    # the sweep's own logic, on stand-in evaluations (a real one trains domain features and samples: test_eval.py)
    from diffusely.pipelines import evaluate

    fd = {0.05: 9.0, 0.1: 7.5, 0.2: 8.0}
    seen = []

    def fake_evaluate(run_dir, reference, *, ema_length=None, seed=0, **options):
        seen.append((ema_length, seed))
        return {"step": 9, "features": "f", "comparable": "", "reference": {"count": 6, "source": reference},
                "samples": {"source": "generated", "sampler": "heun", "steps": 2, "nfe": 3, "count": 6,
                            "ema_length": ema_length}, "metrics": {"fd": fd[ema_length]}, "copies": {"skipped": "-"}}

    monkeypatch.setattr(evaluate, "evaluate_run", fake_evaluate)
    r = CliRunner().invoke(main, ["eval", str(tmp_path), "--reference", "shapes", "--ema-length", "0.05,0.1,0.2",
                                  "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert seen == [(0.05, 3), (0.1, 3), (0.2, 3)]  # the same seed, so the same noise, for every length
    assert "ema length    0.1  FD 7.5  <- best" in r.output and "best: --ema-length 0.1" in r.output
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["ema_sweep"] == {"fd": {"0.05": 9.0, "0.1": 7.5, "0.2": 8.0}, "best": 0.1}
    assert written["samples"]["ema_length"] == 0.1
    r = CliRunner().invoke(main, ["eval", str(tmp_path), "--reference", "shapes", "--ema-length", "0.05,0.5"])
    assert r.exit_code == 2 and "(0, 0.28]" in r.output

    def drawing(run_dir, reference, *, ema_length=None, **options):  # each length's copy-check picture is its own
        figure = tmp_path / f"copies-ema{ema_length:g}.png"
        figure.write_bytes(str(ema_length).encode())
        return {**fake_evaluate(run_dir, reference, ema_length=ema_length), "copies": {"figure": str(figure)}}

    monkeypatch.setattr(evaluate, "evaluate_run", drawing)
    report = evaluate.evaluate_ema_lengths(tmp_path, "shapes", [0.05, 0.1, 0.2])
    assert (tmp_path / "copies.png").read_bytes() == b"0.1"  # the best length's, not the last one's
    assert report["copies"]["figure"] == str(tmp_path / "copies.png")


def test_posthoc_flags_are_checked_and_kept_on_resume(posthoc_runs, tmp_path):
    whole = shutil.copytree(posthoc_runs[0], tmp_path / "run")
    for value, words in (("0.5", "(0, 0.28]"), ("0.1,0.1", "repeats a value")):
        r = CliRunner().invoke(main, ["train", "shapes", "--out", str(tmp_path / "new"), "--posthoc-ema", value])
        assert r.exit_code != 0 and words in r.output, r.output
    r = CliRunner().invoke(main, ["train", "--out", str(whole), "--resume", "--posthoc-ema", "0.05,0.2"])
    assert r.exit_code == 1 and "posthoc" in r.output and "0.2" in r.output, r.output
    r = CliRunner().invoke(main, ["train", "--out", str(whole), "--resume", "--posthoc-ema", "0.05,0.1", "--quiet"])
    assert r.exit_code == 0 and "trained 0 steps now" in r.output, r.output
