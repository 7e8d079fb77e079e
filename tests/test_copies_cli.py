"""The copy check through the commands: `eval` reports it (eval.json, the printed table, copies.png) and
`synth` draws near-copies again, from seeds that depend on the image alone, so a resumed job is bit-exact.

A model that memorises needs thousands of steps on a handful of images, too slow here; instead the synth tests
replace the run's generator by one that returns training images for chosen (image, draw) pairs, as a memorising
model would. The detector stays the one synth builds from the run's own training images, so these tests also
fail if synth checks against the wrong images (another seed, another size) or checks what it does not write."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely.checkpoint import load_run
from diffusely.cli import main
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.data import load_dataset, to_tensor, to_uint8
from diffusely.data.shapes import write_shapes_folder
from diffusely.nets import UNetConfig
from diffusely.pipelines import synth as synth_module
from diffusely.pipelines.synth import copy_detector, synthesize
from diffusely.train import train

from helpers import train_tiny_folder_run

FAST = ["--domain-steps", 5, "--batch-size", 8, "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run trained for 3 steps on a folder of 24 shapes (16 x 16), and that folder."""
    return train_tiny_folder_run(tmp_path_factory.mktemp("copies"))


def test_eval_reports_copies_beside_fd_and_draws_copies_png(tiny, tmp_path):
    run_dir, images = tiny
    write_shapes_folder(tmp_path / "held", 24, size=16, seed=2)  # shapes the run never saw
    r = run("eval", run_dir, "--reference", images, "-n", 12, "--steps", 2, "--held-out", tmp_path / "held", *FAST)
    assert r.exit_code == 0, r.output
    copies = json.loads((run_dir / "eval.json").read_text())["copies"]
    pixel = copies["pixel"]
    assert copies["samples"] == 12 and copies["train_count"] == 24 and copies["held_out"] == str(tmp_path / "held")
    assert set(pixel["ratio"]) == {"samples", "train", "held_out"} and pixel["k"] == 2 and pixel["flips"] is True
    # an untrained model's samples are noise, far from every training image: none is a copy
    assert pixel["near_copies"] == 0 and pixel["ratio"]["samples"]["min"] > 0.5
    assert copies["features"]["near_copies"] == 0 and copies["feature_space"].startswith("domain-")
    with Image.open(run_dir / "copies.png") as im:  # 8 pairs of 16 x 16 images at 8x, with labels around them
        assert im.width > 8 * 128 and im.height > 2 * 128
    for text in ("copies: 0.0% of 12 samples are near-copies of one of 24 training images", "train vs the rest",
                 "held out vs train", "RMS distance to nearest", f"closest pairs: {run_dir / 'copies.png'}", "fd "):
        assert text in r.output, r.output


def test_eval_of_samples_that_are_training_images_flags_them_all(tiny, tmp_path):
    run_dir, images = tiny
    (tmp_path / "s").mkdir()
    for k, path in enumerate(sorted(images.rglob("*.png"))[:10]):
        shutil.copy(path, tmp_path / "s" / f"{k:06d}.png")
    r = run("eval", run_dir, "--reference", images, "--samples", tmp_path / "s", *FAST)
    assert r.exit_code == 0, r.output
    copies = json.loads((run_dir / "eval.json").read_text())["copies"]
    assert copies["near_copies"] == 1.0 and copies["pixel"]["near_copy_count"] == 10
    assert all(pair["ratio"] == 0 and pair["distance"] == 0 for pair in copies["closest"])
    assert "100.0% of 10 samples are near-copies" in r.output
    assert "held out: none: pass --held-out FOLDER" in r.output  # a folder of training images brings no held-out set


def test_eval_without_its_training_images_says_the_check_was_skipped(tiny, tmp_path):
    run_dir, images = tiny
    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    shutil.move(images, tmp_path / "away")
    try:
        r = run("eval", run_dir, "--reference", moved, "-n", 8, "--steps", 2, "--domain-features",
                tmp_path / "d.safetensors", *FAST)
    finally:
        shutil.move(tmp_path / "away", images)
    assert r.exit_code == 0, r.output
    assert "copies: the training images could not be read, so the copy check was skipped" in r.output
    assert "skipped" in json.loads((run_dir / "eval.json").read_text())["copies"]


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("layout") / "run"
    config = RunConfig(model=UNetConfig(channels=(16, 32), blocks_per_level=1, attention_levels=(1,), groups=8),
                       data=DataConfig(source="defects", image_size=32, layout=True, flip=True),
                       train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2, sample_every=2, warmup_steps=1))
    train(config, run_dir, progress=False)
    return run_dir


N = 8
# (noise index) -> a training image: image 1 copies at its own noise, image 4 at its own and its first redraw
# (index 4 + N), image 6 at its first redraw only (never drawn again: its own draw is new)
COPIED = {1: 11, 4: 40, 4 + N: 41, 6 + N: 60}


def memorising(real_generate, train_images, copied=COPIED):
    """generate() as a model that has memorised some training images: the real samples, except that the noise
    indices in `copied` give back their training image exactly."""
    def generate(run, n, *, indices, **kwargs):
        real = real_generate(run, n, indices=indices, **kwargs)  # checks its arguments at the call, as generate does

        def batches():
            start = 0
            for batch in real:
                for b, j in enumerate(indices[start:start + len(batch)]):
                    if j in copied:
                        batch[b] = to_tensor(train_images[copied[j]][None])[0]
                start += len(batch)
                yield batch
        return batches()
    return generate


def training_images():
    """The layout run's training images, loaded here as the run was trained (defects, 32 x 32, seed 0), not
    through the code under test."""
    return load_dataset("defects", 32, seed=0).images


def dataset_images(out):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(out.glob("images/*/*.png"))}


def test_synth_draws_copies_again_from_seeds_of_their_own_and_records_them(layout_run, tmp_path, monkeypatch):
    run = load_run(layout_run)
    train_images = training_images()
    real_generate = synth_module.generate
    monkeypatch.setattr(synth_module, "generate", memorising(real_generate, train_images))
    kept = synthesize(run, tmp_path / "kept", N, steps=2, batch_size=3, progress=False, no_copies=False, seed=5)
    result = synthesize(run, tmp_path / "clean", N, steps=2, batch_size=3, progress=False, seed=5)
    assert kept["replaced"] == 0 and result["replaced"] == 2

    allowed, clean = dataset_images(tmp_path / "kept"), dataset_images(tmp_path / "clean")
    assert np.array_equal(allowed["000001"], train_images[11]) and np.array_equal(allowed["000004"], train_images[40])
    detector = copy_detector(run)
    assert detector.check(to_tensor(np.stack(list(allowed.values())))).near_copy.sum() == 2
    assert not detector.check(to_tensor(np.stack(list(clean.values())))).near_copy.any()
    # the replacements are the real model's draws at noise seed + i + N (image 1) and + 2N (image 4), same layout;
    # the other images are untouched, image 6 too (its copying redraw was never needed)
    layouts = synth_module.draw_layouts(run, N, seed=5)
    redraws = to_uint8(torch.cat(list(real_generate(run, 2, indices=[1 + N, 4 + 2 * N], layouts=layouts, seed=5,
                                                    steps=2, progress=False))))
    assert np.array_equal(clean["000001"], redraws[0]) and np.array_equal(clean["000004"], redraws[1])
    assert all(np.array_equal(clean[k], allowed[k]) for k in clean if k not in ("000001", "000004"))

    manifest = json.loads((tmp_path / "clean" / "synth.json").read_text())
    assert manifest["no_copies"] == {"threshold": 0.166667, "k": 50, "flips": True, "train_images": 4000}
    assert manifest["copies_replaced"] == 2
    assert [(r["image"], r["noise_seed"]) for r in manifest["copies"]] == [(1, 5 + 1 + N), (4, 5 + 4 + 2 * N)]
    assert [[(c["noise_seed"], c["train_image"], c["ratio"]) for c in r["copies"]] for r in manifest["copies"]] == [
        [(6, 11, 0.0)], [(9, 40, 0.0), (9 + N, 41, 0.0)]]
    assert not {"copies", "copies_replaced"} & set(json.loads((tmp_path / "kept" / "synth.json").read_text()))


def test_a_killed_synth_resumes_bit_exact_with_its_copies_record(layout_run, tmp_path, monkeypatch):
    run = load_run(layout_run)
    monkeypatch.setattr(synth_module, "generate", memorising(synth_module.generate, training_images()))
    synthesize(run, tmp_path / "whole", N, steps=2, batch_size=3, progress=False)
    # killed as image 4's PNG is written: its batch's record is in synth.json, the image is not on disk
    real_write = synth_module.atomic_write

    def killed(path, *args):
        if path.name == "000004.png":
            raise KeyboardInterrupt
        return real_write(path, *args)

    monkeypatch.setattr(synth_module, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        synthesize(run, tmp_path / "part", N, steps=2, batch_size=3, progress=False)
    assert len(dataset_images(tmp_path / "part")) == 4
    assert [r["image"] for r in json.loads((tmp_path / "part" / "synth.json").read_text())["copies"]] == [1, 4]
    monkeypatch.setattr(synth_module, "atomic_write", real_write)
    with pytest.raises(Exception, match=r"no_copies: \{.*\} now False.*\(without --allow-copies\)"):
        synthesize(run, tmp_path / "part", N, steps=2, batch_size=3, progress=False, resume=True, no_copies=False)
    result = synthesize(run, tmp_path / "part", N, steps=2, batch_size=4, progress=False, resume=True)
    assert result["made"] == 4 and result["replaced"] == 2
    for path in sorted((tmp_path / "whole").rglob("*")):
        if path.suffix in (".png", ".txt", ".json") and path.name != "contact_sheet.png":
            assert (tmp_path / "part" / path.relative_to(tmp_path / "whole")).read_bytes() == path.read_bytes(), path


def test_a_run_that_copies_every_draw_stops_with_a_clear_error(layout_run, tmp_path, monkeypatch):
    run = load_run(layout_run)
    monkeypatch.setattr(synth_module, "MAX_DRAWS", 3)
    always = {2 + d * N: d for d in range(3)}  # image 2 copies a training image at every draw
    monkeypatch.setattr(synth_module, "generate", memorising(synth_module.generate, training_images(), always))
    with pytest.raises(Exception, match=r"image 2 was a near-copy of a training image in all 3 draws \(noise seeds "
                                        r"2, 10, \.\.\.\).*--allow-copies"):
        synthesize(run, tmp_path / "ds", N, steps=2, batch_size=4, progress=False)


def test_cli_synth_says_how_many_were_drawn_again_and_old_datasets_resume_with_allow_copies(layout_run, tmp_path,
                                                                                            monkeypatch):
    run_ = load_run(layout_run)
    monkeypatch.setattr(synth_module, "generate", memorising(synth_module.generate, training_images()))
    out = tmp_path / "ds"
    args = ["synth", layout_run, "--out", out, "-n", N, "--steps", 2, "--quiet"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert f"2 near-copies of training images drawn again (listed in {out}/synth.json)" in r.output
    manifest = json.loads((out / "synth.json").read_text())  # a dataset begun before the copy check
    del manifest["no_copies"], manifest["copies"], manifest["copies_replaced"]
    (out / "synth.json").write_text(json.dumps(manifest))
    (out / "images" / "train" / "000000.png").unlink()
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--resume"]])
    assert r.exit_code == 1 and "no_copies: False now" in r.output and "(--allow-copies)" in r.output, r.output
    r = run(*args, "--resume", "--allow-copies")
    assert r.exit_code == 0 and "1 made now" in r.output and "drawn again" not in r.output, r.output
