"""Does synthetic data help a detector? Real only against real plus synthetic, on held-out real images.

1. 200 real built-in defect images at 64 x 64, written as an Ultralytics YOLO folder (so the run reads
   them the way it reads a user's labelled photos);
2. a layout-conditioned diffusely run trained on those same 200;
3. N synthetic images from it (`--balance`: the rare classes drawn as often as the common ones);
4. the same detector trained on the 200 real images and on the 200 plus the N synthetic; mAP50 and
   mAP50-95 on 1000 held-out real images, per class (diffusely.metrics.detection's COCO-style mAP),
   averaged over --seeds detector seeds. The detector (--detector):
   - centernet (default): diffusely.metrics.detection's CenterNet, the same steps and seed in both arms;
   - yolo11n: Ultralytics YOLO11n built from its yaml (random weights, nothing downloaded), trained in a
     virtual environment of its own that the benchmark makes once (--yolo-env; torch 2.14.1, torchvision,
     ultralytics; ~5.5 GB) through benchmarks/_yolo.py. Both arms take the same optimizer steps: --yolo-epochs
     epochs of the real + synthetic set, as many steps (so about six times the epochs) on the 200 real
     images, so that a gain is the data's and not more updates' (settings and why: benchmarks/_yolo.py).
     Ultralytics' own validator's mAP on the same held-out images is printed below the tables.
The bar (issue 9): a positive mAP50 gain on the rare classes (crack, spot).

Every stage is kept in --out under a name holding what it depends on, so a second invocation with the same
--out, --real, --steps and -n reuses the layout run and the synthetic images of the first: run the CenterNet
table first, then `--detector yolo11n` trains only the YOLO arms (each arm and seed kept too).

    python benchmarks/synth_detector_gain.py --out bench/gain            # ~40 minutes on 2 free CPU cores
    python benchmarks/synth_detector_gain.py --out bench/gain --detector yolo11n    # then YOLO11's: ~2.5 hours more
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
import _yolo  # noqa: E402
from _synth import HELDOUT_START, SIZE, fit_and_score, layout_run, per_class_table, real, synthesize_images  # noqa: E402

from diffusely.data.defects import CLASS_NAMES  # noqa: E402
from diffusely.data.detection import data_yaml_text, yolo_label_text  # noqa: E402
from diffusely.metrics.detection import mean_average_precision  # noqa: E402

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


def centernet_arms(args, arms: dict, test_images, test_boxes) -> dict:
    """{arm label: mAP of the CenterNet trained on the arm's (images, boxes), mean over the seeds}."""
    return {label: mean_results([fit_and_score(x, b, test_images, test_boxes, steps=args.detector_steps, seed=s)["map"]
                                 for s in range(args.seeds)]) for label, (x, b) in arms.items()}


def yolo_arms(args, arms: dict, test_images, test_boxes) -> tuple[dict, dict]:
    """YOLO11n trained on each arm (arms: {label: [(split name, images, boxes)]}), mean over the seeds: the mAP
    of its detections by diffusely.metrics.detection (as the CenterNet's) and by Ultralytics' validator."""
    python = _yolo.ensure_env(_yolo.env_path(args.yolo_env))
    root = args.out / "yolo"
    heldout = _yolo.write_split(root, f"heldout-{len(test_images)}", test_images, test_boxes)
    largest = max(sum(len(x) for _, x, _ in parts) for parts in arms.values())
    ours, theirs = {}, {}
    for label, parts in arms.items():
        for name, x, b in parts:
            _yolo.write_split(root, name, x, b)
        splits = [name for name, _, _ in parts]
        runs = [_yolo.fit_and_detect(python, root, splits, heldout=f"heldout-{len(test_images)}",
                                     predict={"heldout": heldout}, seed=s, epochs=args.yolo_epochs,
                                     threads=args.yolo_threads, largest=largest,
                                     tag=f"{'+'.join(splits)}-e{args.yolo_epochs}of{largest}-seed{s}")
                for s in range(args.seeds)]
        ours[label] = mean_results([mean_average_precision(r["detections"]["heldout"], test_boxes, len(CLASS_NAMES))
                                    for r in runs])
        theirs[label] = mean_results([r["ultralytics"] for r in runs])
        theirs[label]["epochs"] = runs[0]["epochs"]
    return ours, theirs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--real", type=int, default=200, help="real training images")
    p.add_argument("-n", type=int, default=1000, help="synthetic images")
    p.add_argument("--steps", type=int, default=5000, help="diffusion training steps")
    p.add_argument("--detector-steps", type=int, default=1500, help="CenterNet training steps")
    p.add_argument("--seeds", type=int, default=2, help="detector seeds per arm")
    p.add_argument("--no-balance", action="store_true", help="draw classes at their training frequencies")
    p.add_argument("--tiny", action="store_true")
    _yolo.add_options(p)
    args = p.parse_args()
    if args.tiny:
        args.steps, args.detector_steps, args.n, args.seeds, args.yolo_epochs = 200, 200, 64, 1, 2
    args.out.mkdir(parents=True, exist_ok=True)
    images, boxes = real(args.real)
    # everything cached under names that hold what it depends on, so a rerun with other settings redoes it
    folder = args.out / f"real-{args.real}"
    if not (folder / "data.yaml").is_file():
        write_yolo(folder, images, boxes)
    run_dir = args.out / f"run-real{args.real}-steps{args.steps}"
    seconds = layout_run(run_dir, str(folder), args.steps)
    balance = not args.no_balance
    synth_name = f"synth-{run_dir.name}-n{args.n}-{'balanced' if balance else 'frequencies'}"
    synth_images, synth_boxes = synthesize_images(run_dir, args.n, seed=1, balance=balance,
                                                  cache=args.out / f"{synth_name}.npz")
    test_images, test_boxes = real(1000, HELDOUT_START)

    real_part = (f"real-{args.real}", images, boxes)
    parts = {"real only": [real_part], f"real + {args.n} synthetic": [real_part, (synth_name, synth_images, synth_boxes)]}
    if args.detector == "yolo11n":
        results, ultralytics = yolo_arms(args, parts, test_images, test_boxes)
        detector = (f"YOLO11n from its yaml (Ultralytics {_yolo.PACKAGES[-1].split('==')[1]}), {args.yolo_epochs} "
                    f"epochs of the largest set, the same optimizer steps in each arm ("
                    + ", ".join(f"{r['epochs']} epochs on {label}" for label, r in ultralytics.items()) + ")")
    else:
        results = centernet_arms(args, {k: (np.concatenate([x for _, x, _ in v]), [b for _, _, bs in v for b in bs])
                                        for k, v in parts.items()}, test_images, test_boxes)
        detector = f"CenterNet, {args.detector_steps} steps"
    counts = np.bincount([b[0] for image in boxes for b in image], minlength=4)
    synth_counts = np.bincount([b[0] for image in synth_boxes for b in image], minlength=4)
    print(f"\nreal training boxes per class: {dict(zip(CLASS_NAMES, counts.tolist()))}; synthetic: "
          f"{dict(zip(CLASS_NAMES, synth_counts.tolist()))}; layout run trained {seconds / 60:.1f} min here")
    print(f"held-out: 1000 real images; detector: {detector}, mean of {args.seeds} seeds\n")
    for key in ("AP50", "AP50-95"):
        print(per_class_table(results, key), "\n")
    if args.detector == "yolo11n":
        print("the same detections scored by Ultralytics' validator: " + "; ".join(
            f"{label}: mAP50 {r['mAP50']:.3f}, mAP50-95 {r['mAP50-95']:.3f}" for label, r in ultralytics.items()))
    a, b = results.values()
    gains = {c: b["per_class"][CLASS_NAMES.index(c)]["AP50"] - a["per_class"][CLASS_NAMES.index(c)]["AP50"] for c in RARE}
    print("mAP50 gain on the rare classes: " + ", ".join(f"{c} {g:+.3f}" for c, g in gains.items())
          + f"  -> bar {'met' if all(g > 0 for g in gains.values()) else 'NOT met'}")
    saved = {"results": results, "rare_gain_ap50": gains, "detector": detector,
             "args": {k: str(v) for k, v in vars(args).items()}}
    if args.detector == "yolo11n":
        saved["ultralytics"] = ultralytics
    name = "results.json" if args.detector == "centernet" else f"results-{args.detector}.json"
    (args.out / name).write_text(json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
