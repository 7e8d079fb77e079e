"""Defaults that fit the user's data (issue 22): no flips unless asked for (as EDM and diffusers), the augmentations
said at the start of training and in train.log, and a folder of grayscale images trained on one channel."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffusely.cli import main
from diffusely.config import CONFIG_VERSION, ConfigError, RunConfig
from diffusely.data.folder import grayscale_images
from diffusely.data.images import is_grayscale
from diffusely.options import new_run_config, resumed_config
from diffusely.train.common import TEXT_LOG
from helpers import TINY_ARGS

V0 = Path(__file__).parent / "fixtures" / "v0"
GRAY_NOTE = "all {} images are grayscale: training one channel; give --rgb to keep three"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def mirrored_share(config: RunConfig, steps: int = 4) -> float:
    """The share of training samples the run's batches draw mirrored (shapes are not mirror-symmetric images)."""
    from diffusely.data import Dataset, to_tensor
    from diffusely.train.common import Dist
    from diffusely.train.data import TrainingSet

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    data = Dataset(images, None, None, None, None, "random")
    batches, mirrored = TrainingSet(config, data, [], None, "cpu", Dist()), []
    for step in range(steps):
        x0 = batches.draw_batch(step)[0]
        rows = batches.batches.indices(batches.batches.positions(step)).numpy()
        for x, original in zip(x0, to_tensor(images[rows])):
            assert torch.equal(x, original) or torch.equal(x, original.flip(-1))
            mirrored.append(not torch.equal(x, original))
    return sum(mirrored) / len(mirrored)


def test_a_new_run_trains_without_flips_and_says_so(tiny_folder, tmp_path):
    config = new_run_config("shapes", {})
    assert config.data.flip is False and config.version == CONFIG_VERSION == 5
    config.train.batch_size = 4
    assert mirrored_share(config) == 0.0
    r = cli("train", tiny_folder, "--out", tmp_path / "run", "--steps", 1, *TINY_ARGS)
    assert r.exit_code == 0, r.output
    assert "augmentations: none\n" in r.output and "images are grayscale" not in r.output  # colour shapes
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["flip"] is False
    [line] = (tmp_path / "run" / TEXT_LOG).read_text().splitlines()
    assert line.endswith("started at step 0; augmentations: none")


def test_flip_turns_flips_on_says_so_and_stays_on_resume(tiny_folder, tmp_path):
    config = new_run_config("shapes", {"flip": True, "batch_size": 4})
    assert config.data.flip is True and 0.3 < mirrored_share(config) < 0.7  # 16 draws, each a fair coin
    assert new_run_config("shapes", {"flip": False}).data.flip is False  # --no-flip: accepted, the default
    run = tmp_path / "run"
    r = cli("train", tiny_folder, "--out", run, "--steps", 1, "--flip", *TINY_ARGS)
    assert r.exit_code == 0 and "augmentations: horizontal flips\n" in r.output, r.output
    r = cli("train", "--out", run, "--resume", "--steps", 2, "--quiet")
    assert r.exit_code == 0 and "augmentations: horizontal flips\n" in r.output, r.output
    lines = (run / TEXT_LOG).read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["started at step 0; augmentations: horizontal flips",
                                                         "resumed at step 1; augmentations: horizontal flips"]
    r = cli("train", "--out", run, "--resume", "--steps", 3, "--no-flip", "--quiet")
    assert r.exit_code == 1 and "--no-flip conflicts with the run" in r.output and "data.flip true" in r.output
    with pytest.raises(ConfigError, match="--flip mirrors images, and a text run's captions"):
        new_run_config("shapes", {"flip": True, "text": True})


def test_a_config_written_before_without_flip_still_flips(tmp_path):
    """config.json of version 1 meant flips on when it left data.flip out; one of version 2 means off."""
    written = json.loads((V0 / "uncond" / "config.json").read_text())
    assert written["version"] == 1 and written["data"].pop("flip") is True
    assert RunConfig.from_dict(written).data.flip is True
    assert RunConfig.from_dict({**written, "data": {**written["data"], "flip": False}}).data.flip is False
    assert RunConfig.from_dict({**written, "version": 2}).data.flip is False
    assert RunConfig.from_dict({k: v for k, v in written.items() if k != "data"}).data.flip is True
    # a run of then whose config.json leaves data.flip out resumes with its flips, and says so
    old = json.loads((V0 / "classes" / "config.json").read_text())
    del old["data"]["flip"]
    shutil.copytree(V0 / "classes", tmp_path / "old")
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    config, start = resumed_config(tmp_path / "old", None, {})
    assert config.data.flip is True and config.version == 1
    r = cli("train", "--out", tmp_path / "old", "--resume", "--steps", start + 1, "--quiet")
    assert r.exit_code == 0 and "augmentations: horizontal flips\n" in r.output, r.output
    assert json.loads((tmp_path / "old" / "config.json").read_text())["data"]["flip"] is True  # now written out


def test_a_text_config_written_before_version_4_rebuilds_the_network_it_trained():
    """Version 4 turned the scratch encoder's word convolution on (text.ngram 3), the pooled text embedding off
    (model.pooled_text) and placed queries on (model.query_positions); an older config.json leaving them out
    rebuilds the network it was trained as."""
    written = json.loads((V0 / "text" / "config.json").read_text())
    assert "ngram" not in written["text"] and "pooled_text" not in written["model"]
    for version in (1, 3):
        old = RunConfig.from_dict({**written, "version": version})
        assert old.text.ngram == 0 and old.model.pooled_text is True and old.model.query_positions is False
    new = RunConfig.from_dict({**written, "version": 4})
    assert new.text.ngram == 3 and new.model.pooled_text is False and new.model.query_positions is True
    assert new_run_config("shapes", {"text": True}).text.ngram == 3


def write_images(folder: Path, kinds: list[str], size: int = 12) -> Path:
    """One small image per kind: gray ones in every one-channel mode, RGB with equal channels, a gray palette, and
    colour ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(kinds))
    for i, kind in enumerate(kinds):
        g = rng.integers(0, 256, (size, size), dtype=np.uint8)
        rgb = np.stack([g, g, g], -1)
        image = {"L": Image.fromarray(g, "L"), "LA": Image.fromarray(np.stack([g, 255 - g // 2], -1), "LA"),
                 "1": Image.fromarray(g > 127), "I;16": Image.fromarray(g.astype(np.uint16) * 257),
                 "rgb-gray": Image.fromarray(rgb, "RGB"), "palette-gray": Image.fromarray(rgb, "RGB").quantize(16),
                 "color": Image.fromarray(np.stack([g, 255 - g, g], -1), "RGB")}[kind]
        image.save(folder / f"{i:02d}.png")
    return folder


GRAY_KINDS = ["L", "LA", "1", "I;16", "rgb-gray", "palette-gray"]


def test_each_kind_of_gray_image_is_grayscale_and_colour_is_not(tmp_path):
    folder = write_images(tmp_path, GRAY_KINDS + ["color"])
    assert [is_grayscale(p) for p in sorted(folder.iterdir())] == [True] * 6 + [False]
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "gray.jpg", quality=80)
    Image.fromarray(np.full((16, 16, 3), (90, 20, 20), np.uint8)).save(tmp_path / "red.jpg", quality=80)
    assert is_grayscale(tmp_path / "gray.jpg", (8, 8)) and not is_grayscale(tmp_path / "red.jpg", (8, 8))


def test_a_grayscale_folder_trains_one_channel_and_says_so(tmp_path):
    folder = write_images(tmp_path / "scans", GRAY_KINDS * 2)
    (folder / "broken.png").write_bytes(b"not an image")  # skipped, as the loader skips it
    assert grayscale_images(folder, 16) == 12
    said = []
    config = new_run_config(str(folder), {}, say=said.append)
    assert config.data.channels == 1 and said == [GRAY_NOTE.format(12)]
    r = cli("train", folder, "--out", tmp_path / "run", "--steps", 1, *TINY_ARGS)
    assert r.exit_code == 0 and GRAY_NOTE.format(12) in r.output, r.output
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["data"]["channels"] == written["model"]["in_channels"] == written["model"]["out_channels"] == 1


def test_a_folder_with_one_colour_image_stays_three_channels(tmp_path):
    folder = write_images(tmp_path / "mixed", GRAY_KINDS * 2 + ["color"])
    assert grayscale_images(folder, 16) == 0
    said = []
    assert new_run_config(str(folder), {}, say=said.append).data.channels == 3 and said == []


def test_rgb_config_and_grayscale_choose_over_the_folder(tmp_path):
    folder = write_images(tmp_path / "scans", GRAY_KINDS)
    said = []
    assert new_run_config(str(folder), {"rgb": True}, say=said.append).data.channels == 3 and said == []
    (tmp_path / "rgb.json").write_text(RunConfig().to_json())  # a config file says what it means: three channels
    assert new_run_config(str(folder), {}, str(tmp_path / "rgb.json"), say=said.append).data.channels == 3
    assert said == [] and new_run_config("shapes", {"grayscale": True}).data.channels == 1
    with pytest.raises(ConfigError, match="--grayscale trains one channel and --rgb three: give one of them"):
        new_run_config(str(folder), {"grayscale": True, "rgb": True})
    r = cli("train", folder, "--out", tmp_path / "run", "--steps", 1, "--rgb", *TINY_ARGS)
    assert r.exit_code == 0 and "images are grayscale" not in r.output, r.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["in_channels"] == 3


def test_a_grayscale_folder_on_a_colour_autoencoder_names_rgb(tmp_path):
    """A folder detected as grayscale trains one channel; an autoencoder of three channels then needs --rgb, and
    the refusal says so (not --grayscale, which is what was chosen already)."""
    folder = write_images(tmp_path / "scans", GRAY_KINDS)
    r = CliRunner().invoke(main, ["train", str(folder), "--out", str(tmp_path / "run"), "--autoencoder",
                                  str(V0 / "ae"), "--steps", "1", *TINY_ARGS])
    assert r.exit_code == 1 and "encodes 3-channel images, but the data has 1 channels" in r.output, r.output
    [error] = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert "--rgb" in error and "Traceback" not in r.output
