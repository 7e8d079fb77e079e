"""Layout-conditioned training and `diffusely synth`: a YOLO dataset from a tiny trained model."""

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from diffusely.checkpoint import load_run
from diffusely.cli import main
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.data import DataError
from diffusely.data.detection import read_coco, read_yolo
from diffusely.layout import box_direction
from diffusely.nets import UNetConfig
from diffusely.pipelines import synth as synth_module
from diffusely.layout.model import LayoutModel, read_layouts
from diffusely.pipelines.synth import is_val, synthesize
from diffusely.train import train


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("layout") / "run"
    config = RunConfig(model=UNetConfig(channels=(16, 32), blocks_per_level=1, attention_levels=(1,), groups=8),
                       data=DataConfig(source="defects", image_size=32, layout=True),
                       train=TrainConfig(steps=6, batch_size=4, checkpoint_every=6, sample_every=6, warmup_steps=2))
    train(config, run_dir, progress=False)
    return run_dir


def test_layout_run_records_its_classes_and_layouts(layout_run):
    run = load_run(layout_run)
    assert run.config.model.layout_channels == 6 and run.config.data.class_names == ("scratch", "crack", "spot", "stain")
    spec = json.loads((layout_run / "layouts.json").read_text())
    assert spec["image_size"] == 32 and len(spec["layouts"]) == 4000
    boxes = [b for layout in spec["layouts"] for b in layout]
    assert all(len(b) == 6 and b[5] in (-1, 0, 1) for b in boxes)
    assert {b[5] for b in boxes if b[0] == 0} == {-1, 0, 1} and {b[5] for b in boxes if b[0] == 2} == {0}
    assert (layout_run / "samples" / "step-0000006.png").is_file()
    info = CliRunner().invoke(main, ["info", str(layout_run)])
    assert "boxes of 4 classes as masks, directions as lines" in info.output and "scratch, crack, spot, stain" in info.output


def test_layout_model_follows_the_training_statistics():
    rng = np.random.default_rng(0)
    train_layouts = [[(0, 1.0, 1.0, 11.0, 3.0, 1)], [], [(1, 20.0, 20.0, 24.0, 30.0), (0, 2.0, 2.0, 22.0, 4.0, -1)], []] * 50
    model = LayoutModel.fit(train_layouts, ["scratch", "crack"], 32)
    drawn = [model.draw(rng) for _ in range(2000)]
    counts = np.bincount([len(d) for d in drawn], minlength=3) / 2000
    assert np.allclose(counts, [0.5, 0.25, 0.25], atol=0.04)
    boxes = np.array([b for d in drawn for b in d])
    assert np.all(boxes[:, 1:5] >= 0) and np.all(boxes[:, 1:5] <= 32)
    crack = boxes[boxes[:, 0] == 1]
    assert np.allclose(np.median(crack[:, 3] - crack[:, 1]), 4, atol=0.4)  # widths of that class's boxes
    assert abs(len(crack) / len(boxes) - 1 / 3) < 0.04
    scratch = boxes[boxes[:, 0] == 0]
    assert set(crack[:, 5]) == {0} and abs(np.mean(scratch[:, 5] == 1) - 0.5) < 0.05
    wide = scratch[:, 3] - scratch[:, 1] > 15  # the 20-pixel-wide training box is the one running -1
    assert np.array_equal(scratch[:, 5], np.where(wide, -1, 1))  # each box's direction comes with its size
    balanced = [b for _ in range(1000) for b in model.draw(rng, balance=True)]
    assert abs(np.mean([b[0] for b in balanced]) - 0.5) < 0.05  # the rare class drawn as often as the common
    only = [model.draw(rng, classes=[1]) for _ in range(200)]
    assert all(len(d) >= 1 and all(b[0] == 1 for b in d) for d in only)


def test_read_layouts_checks_classes_and_corners(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('[{"class": "crack", "box": [0.25, 0.5, 0.5, 1.0]}]\n[]\n')
    assert read_layouts(path, ["scratch", "crack"], 32) == [[(1, 8.0, 16.0, 16.0, 32.0, 0)], []]
    path.write_text('[{"class": 0, "box": [0, 0, 0.5, 0.25], "direction": -1}]\n')
    assert read_layouts(path, ["scratch", "crack"], 32) == [[(0, 0.0, 0.0, 16.0, 8.0, -1)]]
    path.write_text('[{"class": 0, "box": [0, 0, 0.5, 0.25], "direction": "up"}]\n')
    with pytest.raises(DataError, match="direction must be 1 .*, -1 .* or 0, got 'up'"):
        read_layouts(path, ["scratch", "crack"], 32)
    path.write_text('[{"class": "dent", "box": [0, 0, 1, 1]}]\n')
    with pytest.raises(DataError, match="unknown class 'dent'.*scratch, crack"):
        read_layouts(path, ["scratch", "crack"], 32)
    path.write_text('[{"class": 0, "box": [0.5, 0, 0.2, 1]}]\n')
    with pytest.raises(DataError, match="0 <= x0 < x1 <= 1"):
        read_layouts(path, ["scratch", "crack"], 32)


def test_val_split_is_every_tenth_image():
    assert [i for i in range(30) if is_val(i, 0.1)] == [4, 14, 24]
    assert sum(is_val(i, 0.2) for i in range(100)) == 20


def test_synth_writes_a_yolo_dataset_whose_every_image_has_its_label(layout_run, tmp_path):
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["synth", str(layout_run), "--out", str(out), "-n", "12", "--steps", "2",
                                       "--coco", "--quiet", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert spec["names"] == {0: "scratch", 1: "crack", 2: "spot", 3: "stain"}
    assert spec["train"] == "images/train" and spec["val"] == "images/val" and spec["path"] == str(out.resolve())
    images = sorted(out.glob("images/*/*.png"))
    assert len(images) == 12 and len(list(out.glob("images/val/*.png"))) == 1
    for image in images:
        assert (out / "labels" / image.parent.name / f"{image.stem}.txt").is_file()
    # our own reader takes it back, boxes and all, and the COCO export says the same
    labelled = read_yolo(out / "data.yaml")
    coco = read_coco(out / "annotations" / "instances_train.json")
    assert sorted(p.path.name for p in labelled.images) == sorted(p.path.name for p in coco.images)
    for a, b in zip(sorted(labelled.images, key=lambda p: p.path.name), sorted(coco.images, key=lambda p: p.path.name)):
        assert [x[0] for x in a.boxes] == [x[0] for x in b.boxes]
        assert np.allclose([x[1:5] for x in a.boxes], [x[1:5] for x in b.boxes], atol=1 / 32) if a.boxes else not b.boxes
        assert [box_direction(x) for x in a.boxes] == [box_direction(x) for x in b.boxes]
    # directed boxes are written as segment lines, so the dataset keeps the directions it was asked for; a file
    # holds segment lines only or box lines only, since Ultralytics decides per file how to read its lines
    model = LayoutModel.from_run(layout_run)
    for p in labelled.images:
        asked = model.draw(np.random.default_rng([0, int(p.path.stem)]))
        assert [box_direction(x) for x in p.boxes] == [box_direction(b) for b in asked]
        lines = (out / "labels" / p.path.parent.name / f"{p.path.stem}.txt").read_text().splitlines()
        assert all(len(line.split()) == 5 for line in lines) or all(len(line.split()) == 9 for line in lines)
    assert any(box_direction(x) for p in labelled.images for x in p.boxes)
    assert (out / "contact_sheet.png").is_file()


def test_synth_resume_adds_no_duplicates_and_loses_nothing(layout_run, tmp_path, monkeypatch):
    run = load_run(layout_run)
    whole = tmp_path / "whole"
    synthesize(run, whole, 10, steps=2, batch_size=3, progress=False)
    # a job stopped after its second batch: the generator raises where a kill would stop it
    real_generate = synth_module.generate

    def stopping(*args, **kwargs):
        for k, batch in enumerate(real_generate(*args, **kwargs)):
            if k == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(synth_module, "generate", stopping)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        synthesize(run, part, 10, steps=2, batch_size=3, progress=False)
    assert len(list(part.glob("images/*/*.png"))) == 6
    monkeypatch.setattr(synth_module, "generate", real_generate)
    with pytest.raises(Exception, match="pass --resume"):
        synthesize(run, part, 10, steps=2, batch_size=3, progress=False)
    with pytest.raises(Exception, match="other settings.*seed"):
        synthesize(run, part, 10, steps=2, batch_size=3, progress=False, resume=True, seed=1)
    # the network's precision changes the images, so a resume must keep it (CUDA graphs do not, and are not asked)
    with pytest.raises(Exception, match=r"other settings.*precision: 'fp32' now 'bf16'.*same ones \(--precision fp32\)"):
        synthesize(load_run(layout_run, precision="bf16"), part, 10, steps=2, batch_size=3, progress=False, resume=True)
    manifest = part / "synth.json"  # a dataset begun before the precision was recorded was made in float32
    settings = json.loads(manifest.read_text())
    assert settings.pop("precision") == "fp32"
    manifest.write_text(json.dumps(settings))
    result = synthesize(run, part, 10, steps=2, batch_size=3, progress=False, resume=True)
    assert result["made"] == 4
    for path in sorted(whole.rglob("*")):
        if path.suffix in (".png", ".txt") and path.name != "contact_sheet.png":
            twin = part / path.relative_to(whole)
            assert twin.read_bytes() == path.read_bytes(), path.relative_to(whole)
    assert len(list(part.rglob("*.png"))) == len(list(whole.rglob("*.png")))


def test_cli_resume_keeps_the_precision_the_job_began_in(layout_run, tmp_path):
    out = tmp_path / "ds"
    args = ["synth", str(layout_run), "--out", str(out), "-n", "4", "--steps", "2", "--quiet"]
    r = CliRunner().invoke(main, [*args, "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    (out / "images" / "train" / "000000.png").unlink()  # as if the job had stopped before image 0
    r = CliRunner().invoke(main, [*args, "--resume", "--precision", "bf16"])
    assert r.exit_code != 0 and "precision: 'fp32' now 'bf16'" in r.output and "(--precision fp32)" in r.output
    r = CliRunner().invoke(main, [*args, "--resume"])  # no --precision: the job's own, whatever auto would pick
    assert r.exit_code == 0, r.output
    assert "4 images (1 made now" in r.output


def test_a_damaged_layouts_or_manifest_file_is_named_with_what_to_do(layout_run, tmp_path):
    """A truncated layouts.json (the run's) or synth.json (the dataset's) is one line naming the file and the fix,
    not the JSON parser's bare message or a KeyError's traceback."""
    import shutil

    run, out = tmp_path / "run", tmp_path / "ds"
    shutil.copytree(layout_run, run)
    text = (run / "layouts.json").read_text()
    args = ["synth", str(run), "--out", str(out), "-n", "4", "--steps", "2", "--quiet"]
    for damaged, words in ((text[:len(text) // 2], "is not readable JSON (JSONDecodeError"),
                           ('{"layouts": 3}', "is not the layouts file a --layout run writes"),
                           ("[]", "holds a JSON list")):
        (run / "layouts.json").write_text(damaged)
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert f"{run / 'layouts.json'} {words}" in r.output and "train the run again with --layout" in r.output
        assert not out.exists()
    (run / "layouts.json").write_text(text)
    assert CliRunner().invoke(main, args).exit_code == 0
    manifest = (out / "synth.json").read_text()
    (out / "synth.json").write_text(manifest[:-20])
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 1 and f"{out / 'synth.json'} is not readable JSON" in r.output, r.output
    assert "start the dataset again in another --out" in r.output


def test_synth_from_given_layouts_and_bad_requests(layout_run, tmp_path):
    run = load_run(layout_run)
    layouts = tmp_path / "l.json"
    layouts.write_text(json.dumps([[{"class": "crack", "box": [0.1, 0.1, 0.6, 0.3]}], []]))
    synthesize(run, tmp_path / "given", 4, layouts_file=layouts, steps=2, progress=False)
    labels = sorted((tmp_path / "given").glob("labels/*/*.txt"))
    assert [p.read_text() for p in labels] == ["1 0.350000 0.200000 0.500000 0.200000\n", "",
                                               "1 0.350000 0.200000 0.500000 0.200000\n", ""]
    with pytest.raises(ValueError, match="unknown class.*dent"):
        synthesize(run, tmp_path / "x", 4, classes=["dent"], steps=2, progress=False)
    with pytest.raises(ValueError, match="use one or the other"):
        synthesize(run, tmp_path / "y", 4, layouts_file=layouts, balance=True, steps=2, progress=False)


def test_guided_layout_sampling_uses_the_null_layout_for_the_unconditional_half(layout_run):
    """Guidance 1 equals the plain conditional denoiser; guidance 0 the one given the null layout."""
    from diffusely.pipelines.conditioning import conditioning

    run = load_run(layout_run)
    layouts = [[(1, 4.0, 4.0, 20.0, 12.0)]]
    x, sigma = torch.randn(1, 3, 32, 32), torch.tensor([2.0])
    d1, cond = conditioning(run, layouts=layouts, guidance=1.0).batch([0], "cpu")
    d0, _ = conditioning(run, layouts=layouts, guidance=0.0).batch([0], "cpu")
    null, null_cond = conditioning(run).batch([0], "cpu")
    with torch.inference_mode():
        assert torch.equal(d1(x, sigma, **cond), run.denoiser(x, sigma, **cond))
        assert torch.allclose(d0(x, sigma, **cond), null(x, sigma, **null_cond).clamp(-1, 1), atol=1e-5)
    assert null_cond["layout"].abs().sum() == 0


def test_a_bad_request_leaves_no_dataset_behind(layout_run, tmp_path):
    """Sampler, steps and layouts are checked before anything is written, so fixing the command and
    running it again needs no clean-up."""
    run = load_run(layout_run)
    with pytest.raises(ValueError, match="unknown sampler"):
        synthesize(run, tmp_path / "a", 4, sampler="nope", progress=False)
    with pytest.raises(ValueError, match="must be >= 1"):
        synthesize(run, tmp_path / "a", 0, progress=False)
    assert not (tmp_path / "a").exists()
    synthesize(run, tmp_path / "a", 2, steps=2, progress=False)


def test_one_layout_given_as_its_list_of_boxes(tmp_path):
    path = tmp_path / "one.json"
    path.write_text('[{"class": "crack", "box": [0, 0, 0.5, 0.5]}]')
    assert read_layouts(path, ["scratch", "crack"], 32) == [[(1, 0.0, 0.0, 16.0, 16.0, 0)]]
    path.write_text('[{"boxes": []}, 3]')
    with pytest.raises(DataError, match="layout 1: a layout is a list of boxes, got dict"):
        read_layouts(path, ["scratch"], 32)


def test_layout_boxes_are_checked_when_sampling(layout_run):
    from diffusely.pipelines.conditioning import conditioning

    run = load_run(layout_run)
    c = conditioning(run, layouts=[[("crack", 1, 2, 10, 12)]])
    assert c.layouts == [[(1, 1.0, 2.0, 10.0, 12.0, 0)]]
    assert conditioning(run, layouts=[[("scratch", 1, 2, 10, 12, -1)]]).layouts == [[(0, 1.0, 2.0, 10.0, 12.0, -1)]]
    with pytest.raises(ValueError, match=r"direction\]\) with corners in pixels and direction \+1"):
        conditioning(run, layouts=[[("scratch", 1, 2, 10, 12, 2)]])
    with pytest.raises(ValueError, match="unknown class 'dent'"):
        conditioning(run, layouts=[[("dent", 1, 2, 10, 12)]])
    with pytest.raises(ValueError, match=r"0 <= x0 < x1 <= 32.*pixels of the run's 32 x 32 images"):
        conditioning(run, layouts=[[(0, 0.1, 0.1, 0.5, 0.5)], [(0, 5, 5, 40, 9)]])
    with pytest.raises(ValueError, match="must satisfy"):
        conditioning(run, layouts=[[(0, float("nan"), 1, 2, 3)]])


HOLD_LOCK = r"""
import sys, time
from diffusely._files import run_lock
with run_lock(sys.argv[1], "synth --out " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_job_into_a_dataset_folder_is_refused_and_the_lock_is_no_content(layout_run, tmp_path):
    import os
    import subprocess
    import sys

    run, out = load_run(layout_run), tmp_path / "ds"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"in use by process {holder.pid}"):
            synthesize(run, out, 2, steps=2, progress=False, val_fraction=0.5)
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written beside the other job's
    finally:
        holder.kill()
        holder.wait()
    # the folder holds only the lock file: a new dataset may start in it
    assert synthesize(run, out, 2, steps=2, progress=False, val_fraction=0.5)["made"] == 2
