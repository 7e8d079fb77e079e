"""Does synthetic data help a detector? Real only against real plus synthetic, on held-out real images.

1. 200 real built-in defect images at 64 x 64, written as an Ultralytics YOLO folder (so the run reads
   them the way it reads a user's labelled photos);
2. a layout-conditioned diffusely run trained on those same 200;
3. N synthetic images from it (`--balance`: the rare classes drawn as often as the common ones);
4. the same detector (diffusely.metrics.detection's CenterNet, same steps and seeds) trained on the 200
   real images and on the 200 plus the N synthetic; mAP50 and mAP50-95 on 1000 held-out real images,
   per class, averaged over --seeds detector seeds.
The bar (issue 9): a positive mAP50 gain on the rare classes (crack, spot).

    python benchmarks/synth_detector_gain.py --out bench/gain            # ~40 minutes on 2 free CPU cores
    python benchmarks/synth_detector_gain.py --out /tmp/gain --tiny      # minutes: the script works
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _synth import HELDOUT_START, SIZE, fit_and_score, layout_run, per_class_table, real, synthesize_images  # noqa: E402

from diffusely.data.defects import CLASS_NAMES  # noqa: E402
from diffusely.data.detection import data_yaml_text, yolo_label_text  # noqa: E402

RARE = ("crack", "spot")


def write_yolo(root: Path, images, boxes) -> None:
    for d in ("images/train", "labels/train"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # a training folder for diffusely, which reads only train (YOLO training would also want a val split)
    (root / "data.yaml").write_text(data_yaml_text(root, CLASS_NAMES, splits=("train",)))
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
        Image.fromarray(image).save(root / "images/train" / f"{i:04d}.png")
        (root / "labels/train" / f"{i:04d}.txt").write_text(yolo_label_text(image_boxes, SIZE, SIZE))


def mean_results(results: list[dict]) -> dict:
    keys = ("AP50", "AP50-95")
    per = {c: {k: float(np.mean([r["per_class"][c][k] for r in results])) for k in keys} for c in range(len(CLASS_NAMES))}
    return {"mAP50": float(np.mean([r["mAP50"] for r in results])),
            "mAP50-95": float(np.mean([r["mAP50-95"] for r in results])), "per_class": per}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--real", type=int, default=200, help="real training images")
    p.add_argument("-n", type=int, default=1000, help="synthetic images")
    p.add_argument("--steps", type=int, default=5000, help="diffusion training steps")
    p.add_argument("--detector-steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, default=2, help="detector seeds per arm")
    p.add_argument("--no-balance", action="store_true", help="draw classes at their training frequencies")
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    if args.tiny:
        args.steps, args.detector_steps, args.n, args.seeds = 200, 200, 64, 1
    args.out.mkdir(parents=True, exist_ok=True)
    images, boxes = real(args.real)
    # everything cached under names that hold what it depends on, so a rerun with other settings redoes it
    folder = args.out / f"real-{args.real}"
    if not (folder / "data.yaml").is_file():
        write_yolo(folder, images, boxes)
    run_dir = args.out / f"run-real{args.real}-steps{args.steps}"
    seconds = layout_run(run_dir, str(folder), args.steps)
    balance = not args.no_balance
    synth_images, synth_boxes = synthesize_images(
        run_dir, args.n, seed=1, balance=balance,
        cache=args.out / f"synth-{run_dir.name}-n{args.n}-{'balanced' if balance else 'frequencies'}.npz")
    test_images, test_boxes = real(1000, HELDOUT_START)

    arms = {"real only": (images, boxes),
            f"real + {args.n} synthetic": (np.concatenate([images, synth_images]), list(boxes) + list(synth_boxes))}
    results = {}
    for label, (x, b) in arms.items():
        runs = [fit_and_score(x, b, test_images, test_boxes, steps=args.detector_steps, seed=s)["map"]
                for s in range(args.seeds)]
        results[label] = mean_results(runs)
    counts = np.bincount([b[0] for image in boxes for b in image], minlength=4)
    synth_counts = np.bincount([b[0] for image in synth_boxes for b in image], minlength=4)
    print(f"\nreal training boxes per class: {dict(zip(CLASS_NAMES, counts.tolist()))}; synthetic: "
          f"{dict(zip(CLASS_NAMES, synth_counts.tolist()))}; layout run trained {seconds / 60:.1f} min here")
    print(f"held-out: 1000 real images; detector: CenterNet, {args.detector_steps} steps, mean of {args.seeds} seeds\n")
    for key in ("AP50", "AP50-95"):
        print(per_class_table(results, key), "\n")
    a, b = results.values()
    gains = {c: b["per_class"][CLASS_NAMES.index(c)]["AP50"] - a["per_class"][CLASS_NAMES.index(c)]["AP50"] for c in RARE}
    print("mAP50 gain on the rare classes: " + ", ".join(f"{c} {g:+.3f}" for c, g in gains.items())
          + f"  -> bar {'met' if all(g > 0 for g in gains.values()) else 'NOT met'}")
    (args.out / "results.json").write_text(json.dumps({"results": results, "rare_gain_ap50": gains,
                                                       "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
