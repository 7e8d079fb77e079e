"""`diffusely eval` end to end on a tiny run: sampling or a samples folder, eval.json, reuse of the domain
features and reference statistics, and one-line errors for bad input."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from diffusely.cli import main
from diffusely.data.shapes import write_shapes_folder
from diffusely.metrics import fit_domain_features, save_domain_features

from helpers import train_tiny_folder_run

FAST = ["--domain-steps", 5, "--batch-size", 8, "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run trained for 3 steps on a folder of 24 shapes (16 x 16), and that folder."""
    return train_tiny_folder_run(tmp_path_factory.mktemp("eval"))


def test_eval_samples_and_writes_eval_json(tiny):
    run_dir, images = tiny
    r = run("eval", run_dir, "--reference", images, "-n", 12, "--steps", 2, *FAST)
    assert r.exit_code == 0, r.output
    report = json.loads((run_dir / "eval.json").read_text())
    assert set(report["metrics"]) == {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    assert all(isinstance(v, float) for v in report["metrics"].values())
    assert report["samples"] == {"source": "generated", "sampler": "heun", "sampler_given": "heun", "steps": 2, "nfe": 3,
                                 "schedule": "default", "seed": 0, "options": {}, "count": 12}
    assert report["reference"]["count"] == 24 and report["step"] == 3
    assert report["features"].startswith("domain-contrastive-") and "comparable only" in report["comparable"]
    for line in ("fd", "kid", "precision", "recall", "density", "coverage", "comparable only", "eval.json"):
        assert line in r.output

    # the domain network is kept and reused: the same features, the same numbers for the same samples
    # (heun's 2 steps are 3 network evaluations)
    assert (run_dir / "eval" / "domain_features.safetensors").is_file()
    again = run("eval", run_dir, "--reference", images, "-n", 12, "--nfe", 3, "--sampler", "heun", *FAST)
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "eval.json").read_text())["metrics"] == report["metrics"]

    # the reference statistics it wrote stand in for the images
    stats = run_dir / "eval" / f"reference-{report['features']}.npz"
    r = run("eval", run_dir, "--reference", stats, "-n", 12, "--steps", 2, *FAST)
    assert r.exit_code == 0, r.output
    assert json.loads((run_dir / "eval.json").read_text())["metrics"] == pytest.approx(report["metrics"])

    # a pytorch-fid style file (mu and sigma only) gives FD alone
    with np.load(stats) as f:
        np.savez(run_dir / "fid.npz", mu=f["mu"], sigma=f["sigma"])
    r = run("eval", run_dir, "--reference", run_dir / "fid.npz", "-n", 12, "--steps", 2, *FAST)
    assert r.exit_code == 0, r.output
    metrics = json.loads((run_dir / "eval.json").read_text())["metrics"]
    assert metrics["fd"] == pytest.approx(report["metrics"]["fd"]) and metrics["kid"] is None


def test_eval_reads_a_samples_folder(tiny, tmp_path):
    run_dir, images = tiny
    assert run("sample", run_dir, "-n", 10, "--steps", 2, "--out", tmp_path / "s", "--quiet").exit_code == 0
    r = run("eval", run_dir, "--reference", images, "--samples", tmp_path / "s", "--domain-features",
            tmp_path / "d.safetensors", *FAST)
    assert r.exit_code == 0, r.output
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["samples"] == {"source": str(tmp_path / "s"), "count": 10}
    assert (tmp_path / "d.safetensors").is_file()


def test_eval_json_records_the_sampler_name_as_given_and_its_options(tiny):
    run_dir, images = tiny
    r = run("eval", run_dir, "--reference", images, "-n", 6, "--nfe", 3, "--sampler", "DPM++ 2M Karras", *FAST)
    assert r.exit_code == 0, r.output
    drawn = json.loads((run_dir / "eval.json").read_text())["samples"]
    # the name brings karras sigmas and lower_order_final=False (docs/samplers-aliases.md)
    assert drawn == {"source": "generated", "sampler": "dpmpp_2m", "sampler_given": "DPM++ 2M Karras", "steps": 3,
                     "nfe": 3, "schedule": "karras", "seed": 0, "options": {"lower_order_final": False},
                     "count": 6}


def fails(*args, match):
    r = run("eval", *args, *FAST)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    for text in match:
        assert text in r.output, r.output


def test_eval_errors_are_one_line(tiny, tmp_path, monkeypatch):
    run_dir, images = tiny
    (tmp_path / "empty").mkdir()
    fails(run_dir, "--reference", images, "--samples", tmp_path / "empty", match=["no samples in"])

    write_shapes_folder(tmp_path / "big", 3, size=32, seed=0)
    (tmp_path / "gray").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "gray" / "0.png")
    for folder, found in (("big/circle", "32x32x3"), ("gray", "16x16x1")):
        fails(run_dir, "--reference", images, "--samples", tmp_path / folder, match=[found, "makes 16x16x3"])

    monkeypatch.delenv("DIFFUSELY_INCEPTION_WEIGHTS", raising=False)
    fails(run_dir, "--reference", images, "--features", "inception",
          match=["pt_inception-2015-12-05-6726825d.pth", "--inception-weights"])
    fails(run_dir, "--reference", images, "--features", "inception", "--inception-weights", tmp_path / "no.pth",
          match=["no Inception weights file at"])

    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    fails(run_dir, "--reference", tmp_path / "inception.npz", "--domain-features", tmp_path / "none.safetensors",
          match=["trained on reference images"])
    save_domain_features(tmp_path / "d.safetensors", fit_domain_features(np.zeros((4, 16, 16, 3), np.uint8), steps=1))
    fails(run_dir, "--reference", tmp_path / "inception.npz", "--domain-features", tmp_path / "d.safetensors",
          match=["2048-d", "128-d"])


def test_eval_of_too_few_samples_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    from diffusely.pipelines import evaluate

    run_dir, images = tiny

    def reached(*args, **kwargs):
        raise AssertionError("the reference was loaded before the counts were checked")
    monkeypatch.setattr(evaluate, "load_reference", reached)
    for count in (0, -3, 5):  # 0 once meant "the default, 1000"; 4 failed after sampling, naming k, not -n
        with pytest.raises(ValueError, match=f"-n \\(count\\) must be >= 6: density and .* got {count}$"):
            evaluate.evaluate_run(run_dir, str(images), count=count)
    with pytest.raises(ValueError, match="--reference-count \\(reference_count\\) must be >= 6: .* got 3$"):
        evaluate.evaluate_run(run_dir, str(images), reference_count=3)
    write_shapes_folder(tmp_path / "few", 5, size=16, seed=0)
    with pytest.raises(ValueError, match=f"{tmp_path / 'few'} holds 5 samples, but the metrics need at least 6"):
        evaluate.evaluate_run(run_dir, str(images), samples=str(tmp_path / "few"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=f"the reference {tmp_path / 'few'} holds 5 images, but the metrics need at "
                                         "least 6"):
        evaluate.evaluate_run(run_dir, str(tmp_path / "few"), domain_file=str(tmp_path / "d.safetensors"))
    assert not (tmp_path / "d.safetensors").exists()  # refused before domain features were trained on 5 images
