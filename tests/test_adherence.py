"""The prompt-adherence checker reads the generator's own images back; captions count alike shapes."""

import numpy as np
import pytest

from diffusely.data.shapes import _caption, render_shapes
from diffusely.metrics.adherence import (Scene, ShapeSpec, fit_adherence_checker, load_checker, parse_caption, reword,
                                         save_checker)


def test_captions_count_alike_shapes():
    red = (0, (1, 1, 9, 9), "small", "red")
    assert _caption([red, (0, (20, 1, 28, 9), "small", "red")], "navy") == "two small red circles on a navy background"
    square = (1, (1, 12, 20, 31), "large", "blue")
    assert (_caption([square, (0, (1, 0, 5, 4), "small", "red"), (0, (10, 0, 14, 4), "small", "red")], "beige")
            == "a large blue square below two small red circles on a beige background")
    assert (_caption([square, (0, (1, 0, 5, 4), "small", "red"), (2, (10, 0, 14, 4), "small", "red")], "beige")
            == "a large blue square below a small red circle and below a small red triangle on a beige background")


def test_parse_caption_reads_every_generated_caption():
    data = render_shapes(300, size=32, seed=4, max_shapes=3)
    for caption, boxes in zip(data.captions, data.boxes):
        scene = parse_caption(caption)
        assert len(scene.shapes) == len(boxes) and scene.background in caption
    assert parse_caption("a large red circle above two small blue squares on a navy background") == Scene(
        [ShapeSpec("circle", "red", "large")] + [ShapeSpec("square", "blue", "small")] * 2, ["above", "above"], "navy")
    with pytest.raises(ValueError, match="ends 'on a BACKGROUND background'"):
        parse_caption("a red circle")
    assert (reword("a large orange circle left of a small red cross on a light gray background")
            == "a big tangerine disc to the left of a tiny crimson plus sign against a silver backdrop")


def test_checker_reads_real_images_back(tmp_path):
    checker = fit_adherence_checker(32, count=200, steps=100, seed=1)
    save_checker(tmp_path / "c.safetensors", checker)
    checker = load_checker(tmp_path / "c.safetensors")
    data = render_shapes(120, size=32, seed=99, max_shapes=2)
    scenes = [parse_caption(c) for c in data.captions]
    real = checker.adherence(data.images, scenes)
    assert real["color"] > 0.95 and real["count"] > 0.95 and real["background"] > 0.95
    assert real["size"] > 0.85 and real["position"] > 0.85 and real["shape"] > 0.8
    # the same images against the wrong prompts, and noise, score far lower
    wrong = checker.adherence(data.images, scenes[1:] + scenes[:1])
    assert wrong["all"] < 0.05 and wrong["color"] < 0.4
    noise = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    assert checker.adherence(noise, scenes[:20])["all"] == 0
    with pytest.raises(ValueError, match="not an adherence checker"):
        load_checker(tmp_path / "missing.safetensors")
