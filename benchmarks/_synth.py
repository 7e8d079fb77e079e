"""What benchmarks/synth_fidelity.py and synth_detector_gain.py share: real defect images, a layout run,
synthetic images for drawn layouts, and a detector trained and scored on them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusely.checkpoint import CHECKPOINT, load_run
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.data import render_defects, to_uint8
from diffusely.data.defects import CLASS_NAMES
from diffusely.metrics.detection import CenterNet, detect, layout_fidelity, mean_average_precision, train_detector
from diffusely.nets import UNetConfig
from diffusely.pipelines import generate
from diffusely.layout.model import LayoutModel
from diffusely.train import train

HELDOUT_START = 100_000  # held-out real images: indices far past any training set's
SIZE = 64


def real(count: int, start: int = 0, size: int = SIZE):
    """Built-in defect images start..start+count-1 (seed 0) and their boxes."""
    data = render_defects(count, size=size, seed=0, start=start)
    return data.images, data.boxes


def layout_run(run_dir: Path, source: str, steps: int, batch_size: int = 16, size: int = SIZE) -> float:
    """Train a layout-conditioned run on `source` unless run_dir holds a finished one; returns seconds spent."""
    if (run_dir / CHECKPOINT).is_file() and load_run(run_dir).step >= steps:
        return 0.0
    config = RunConfig(model=UNetConfig(channels=(32, 64, 128), blocks_per_level=1, attention_levels=(2,), patch_size=2),
                       data=DataConfig(source=source, image_size=size, layout=True, flip=True),
                       train=TrainConfig(steps=steps, batch_size=batch_size, checkpoint_every=500, sample_every=1000))
    t = time.perf_counter()
    train(config, run_dir, resume=(run_dir / CHECKPOINT).is_file())
    return time.perf_counter() - t


def synthesize_images(run_dir: Path, n: int, *, seed: int, balance: bool = False, guidance: float | None = None,
                      steps: int = 12, cache: Path | None = None):
    """n images for layouts drawn from the run's training layouts, as uint8, with those layouts (cached as .npz)."""
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        layouts = json.loads(str(z["layouts"]))
        return z["images"], [[tuple(b) for b in layout] for layout in layouts]
    run = load_run(run_dir)
    model = LayoutModel.from_run(run_dir)
    layouts = [model.draw(np.random.default_rng([seed, i]), balance=balance) for i in range(n)]
    batches = generate(run, n, layouts=layouts, seed=seed, batch_size=32, steps=steps, guidance=guidance)
    images = np.concatenate([to_uint8(b) for b in batches])
    if cache is not None:
        np.savez(cache, images=images, layouts=json.dumps(layouts))
    return images, layouts


def fit_and_score(train_images, train_boxes, test_images, test_boxes, *, steps: int, seed: int = 0,
                  cache: Path | None = None) -> dict:
    """Train a CenterNet on (train_images, train_boxes) and score it on the test set: mAP and fidelity.
    cache: a .safetensors file to load the trained detector from, or to save it to (name it by what it depends on)."""
    from safetensors.torch import load_file, save_file

    if cache is not None and cache.is_file():
        net = CenterNet(len(CLASS_NAMES))
        net.load_state_dict(load_file(str(cache)))
        net.eval().requires_grad_(False)
    else:
        torch.manual_seed(seed)
        net = train_detector(train_images, train_boxes, len(CLASS_NAMES), steps=steps, seed=seed, progress=True)
        if cache is not None:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(cache))
    found = detect(net, test_images)
    return {"map": mean_average_precision(found, test_boxes, len(CLASS_NAMES)),
            "fidelity": layout_fidelity(found, test_boxes, len(CLASS_NAMES)), "net": net}


def per_class_table(rows: dict[str, dict], key: str) -> str:
    """Rows {label: mean_average_precision result}: AP of each class and the mean, as text."""
    head = f"{'':24s}" + "".join(f"{n:>10s}" for n in CLASS_NAMES) + f"{'mean':>10s}"
    lines = [head]
    for label, result in rows.items():
        per = result["per_class"]
        lines.append(f"{label:24s}" + "".join(f"{per[c][key]:10.3f}" for c in range(len(CLASS_NAMES)))
                     + f"{result['m' + key]:10.3f}")
    return "\n".join(lines)
