"""Ultralytics YOLO11 as the detector of benchmarks/synth_*.py, trained in an environment of its own.

Ultralytics needs torchvision, which diffusely does not install (and whose wheels pin a torch of their own), so
the benchmark makes a second virtual environment for it (`ensure_env`: torch 2.14.1, torchvision 0.29.1 and a
pinned ultralytics, ~5.5 GB; made once, then reused) and runs benchmarks/_yolo_worker.py there as a subprocess.
Data passes as an Ultralytics dataset folder on disk (`write_split`), results come back as JSON.

The network is YOLO11n built from its yaml (`YOLO("yolo11n.yaml")`): random weights, nothing downloaded. The
worker keeps Ultralytics offline (YOLO_OFFLINE, no hub sync, no auto-install, no plots, amp off, its own settings
folder) and refuses any network connection outright, so a step that would fetch something (fonts, AMP-check
weights, a missing package) fails with an error that names what it tried to reach, instead of hanging or
quietly reaching out.

Settings: Ultralytics' own defaults for training from scratch (mosaic, flips, HSV and scale jitter, batch 16, its
loss weights, EMA, the last epoch's weights), with these choices for small images on a CPU:
- imgsz = the images' size (64: the benchmarks' SIZE), so nothing is upsampled; device cpu, workers 0 (what
  Ultralytics itself uses on a CPU), amp off, plots off;
- the same optimizer steps in every arm, not the same epochs (`schedule`): --yolo-epochs epochs of the largest
  training set, and a smaller set runs as many batches (200 real images: 13 batches an epoch against 75 for
  1200, so 577 epochs against 100), with the warmup and the mosaic-free last epochs (a tenth) scaled alike, so
  the lr schedule is the same in steps. Same epochs would give the real + synthetic arm six times the updates,
  and its gain could then be compute, not data; the CenterNet arms take the same steps too. The cost: the
  real-only arm takes as long as the other;
- AdamW at lr 0.002 * 5 / (4 + classes) = 0.00125, momentum 0.9: what Ultralytics' optimizer=auto picks for a
  run under 10000 iterations, pinned so that no arm's iteration count flips it to SGD;
- deterministic=True and seed = the detector seed (0, 1, ...): a rerun gives the same weights on the same
  thread count;
- validation only at the end (val=False), on the arm's real training images: the held-out images are never
  seen in training, not even to pick a checkpoint. They are scored after: Ultralytics' validator (conf 0.001,
  iou 0.7) and its detections at those settings (up to 300 an image), which the benchmarks score with
  diffusely.metrics.detection, as they score the CenterNet.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from diffusely.data.defects import CLASS_NAMES

from _venv import ensure_venv

PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "ultralytics==8.4.190")
ENV_VARIABLE = "DIFFUSELY_YOLO_ENV"
DEFAULT_ENV = Path.home() / ".cache" / "diffusely-bench" / "yolo-env"
WORKER = Path(__file__).with_name("_yolo_worker.py")


def env_path(option: Path | None) -> Path:
    """Where the YOLO environment lives: --yolo-env, else $DIFFUSELY_YOLO_ENV, else ~/.cache/diffusely-bench."""
    return Path(option or os.environ.get(ENV_VARIABLE) or DEFAULT_ENV).expanduser()


def ensure_env(path: Path) -> Path:
    """The python of a virtual environment at `path` holding PACKAGES; made (minutes, ~5.5 GB) when missing."""
    return ensure_venv(path, PACKAGES, "torch, torchvision, ultralytics", worker_env(path), "the YOLO environment",
                       "5.5 GB")


def worker_env(path: Path) -> dict:
    """The environment the worker runs with: Ultralytics' settings kept beside its venv, offline, no auto-install;
    OpenMP threads sleep when idle (a busy-waiting thread steals a core from anything beside it)."""
    env = dict(os.environ, YOLO_CONFIG_DIR=str(path / "ultralytics-config"), YOLO_OFFLINE="1",
               YOLO_AUTOINSTALL="false")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.pop("PYTHONPATH", None)  # nothing of diffusely's environment leaks into the other one
    return env


def add_options(p) -> None:
    """--detector and the YOLO options, shared by benchmarks/synth_*.py."""
    p.add_argument("--detector", choices=("centernet", "yolo11n"), default="centernet",
                   help="centernet: diffusely's own, minutes (default); yolo11n: Ultralytics YOLO11n from its yaml, "
                        "trained in an environment of its own (see benchmarks/_yolo.py)")
    p.add_argument("--yolo-env", type=Path, default=None,
                   help=f"where the YOLO environment is (made when missing); default ${ENV_VARIABLE} or {DEFAULT_ENV}")
    p.add_argument("--yolo-epochs", type=int, default=100,
                   help="epochs of the largest training set; smaller ones take as many optimizer steps (more epochs)")
    p.add_argument("--yolo-threads", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)),
                   help="torch threads of the YOLO worker (default: Ultralytics' own, min(8, cores - 1))")


# ----------------------------------------------------------------------------------------------- the dataset


def write_split(root: Path, split: str, images, boxes) -> list[str]:
    """images (N, S, S, 3) uint8 and boxes (class, x0, y0, x1, y1[, direction]) in pixels as root/images/<split>
    and root/labels/<split> (plain 'class cx cy w h' lines: a detector's training wants the boxes); written once,
    marked done at the end, so a stopped write is redone. Returns the image paths in order."""
    done = root / f"{split}.done"
    paths = [str(root / "images" / split / f"{i:05d}.png") for i in range(len(images))]
    if done.is_file() and int(done.read_text()) == len(images):
        return paths
    from PIL import Image

    from diffusely.data.detection import yolo_label_text

    for kind in ("images", "labels"):
        (root / kind / split).mkdir(parents=True, exist_ok=True)
    size = images.shape[1]
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
        Image.fromarray(image).save(root / "images" / split / f"{i:05d}.png")
        (root / "labels" / split / f"{i:05d}.txt").write_text(yolo_label_text([b[:5] for b in image_boxes], size, size))
    done.write_text(str(len(images)))
    return paths


def data_yaml(root: Path, name: str, train: list[str], val: str) -> Path:
    """root/<name>.yaml: an Ultralytics data.yaml training on the splits `train` and validating on `val`."""
    import yaml

    spec = {"path": str(root.resolve()), "train": [f"images/{s}" for s in train], "val": f"images/{val}",
            "names": dict(enumerate(CLASS_NAMES))}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------- training


def schedule(images: int, largest: int, epochs: int, batch: int = 16) -> dict:
    """Epochs, warmup and mosaic-free epochs for a set of `images`, so that it takes the optimizer steps (and
    the lr schedule, in steps) of `epochs` epochs on the `largest` set: Ultralytics writes its schedule in
    epochs, so a set of a sixth the batches runs six times the epochs."""
    k = -(-largest // batch) / -(-images // batch)  # batches per epoch: largest / this
    return {"epochs": max(1, round(epochs * k)), "warmup_epochs": 3.0 * k,
            "close_mosaic": round(max(1, round(epochs / 10)) * k)}


def fit_and_detect(python: Path, root: Path, train: list[str], *, heldout: str | None, predict: dict[str, list[str]],
                   seed: int, epochs: int, threads: int, tag: str, predict_tag: str = "", largest: int | None = None,
                   batch: int = 16) -> dict:
    """Train YOLO11n (from its yaml) on root's splits `train` in the YOLO environment (kept as
    root/ultralytics/<tag>, reused), score it with Ultralytics' validator on the split `heldout`, and detect on the
    images of `predict`; cached as root/results/<tag><predict_tag>.json. Returns {"seconds_train", "epochs",
    "ultralytics": mAP dict, "detections": {name: per image [(class, score, x0, y0, x1, y1)]}}.
    largest: the image count whose `epochs` set the optimizer steps (default: this set's)."""
    cache = root / "results" / f"{tag}{predict_tag}.json"
    if not cache.is_file():
        count = sum(int((root / f"{s}.done").read_text()) for s in train)
        plan = schedule(count, largest or count, epochs, batch)
        spec = {"model": "yolo11n.yaml", "data": str(data_yaml(root, tag, train, train[0])),
                "heldout": str(data_yaml(root, f"{tag}-heldout", train, heldout)) if heldout else None,
                "predict": predict, "out": str(cache), "batch": batch, "imgsz": _image_size(root, train[0]),
                "seed": seed, "threads": threads, "classes": len(CLASS_NAMES), "project": str(root / "ultralytics"), "name": tag, **plan}
        cache.parent.mkdir(parents=True, exist_ok=True)
        spec_path = cache.with_suffix(".spec.json")
        spec_path.write_text(json.dumps(spec, indent=1))
        print(f"YOLO11n {tag}: {count} images, {plan['epochs']} epochs, seed {seed}", flush=True)
        done = subprocess.run([str(python), str(WORKER), str(spec_path)], env=worker_env(python.parent.parent))
        if done.returncode != 0:
            raise SystemExit(f"Error: the YOLO worker failed on {tag} (exit {done.returncode}); its spec: {spec_path}")
    result = json.loads(cache.read_text())
    result["detections"] = {k: [[(int(d[0]), *d[1:]) for d in image] for image in v]
                            for k, v in result["detections"].items()}
    if "ultralytics" in result:
        u = result["ultralytics"]
        u["per_class"] = {int(c): v for c, v in u["per_class"].items()}
    return result


def _image_size(root: Path, split: str) -> int:
    from PIL import Image

    with Image.open(root / "images" / split / "00000.png") as image:
        return image.size[0]
