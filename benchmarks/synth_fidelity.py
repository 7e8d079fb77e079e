"""Layout fidelity: is each generated defect inside the box it was asked for, and of its class?

1. a layout-conditioned run on the built-in defects at 64 x 64 (or --run, an existing one);
2. synthetic images for layouts drawn from the run's training layouts;
3. a detector trained on 4000 real built-in images only, and run on them. --detector centernet (default):
   diffusely.metrics.detection's CenterNet, minutes; --detector yolo11n: Ultralytics YOLO11n from its yaml
   (random weights, nothing downloaded) in a virtual environment of its own that the benchmark makes once
   (--yolo-env, --yolo-epochs: benchmarks/_yolo.py), hours on a CPU (4000 images an epoch).
Reports the detector's recall and precision of the requested boxes (a match: same class, IoU >= 0.5,
score >= 0.3) and its mAP with the requested boxes as ground truth (the "YOLO score" of the
layout-to-image literature), per class, beside the same detector on held-out real images (its ceiling)
and on images the same run drew without a layout (guidance towards nothing: the floor, chance).
The bar (issue 9): recall >= 0.8 on the requested boxes.

    python benchmarks/synth_fidelity.py --out bench/fidelity            # ~30 minutes on 2 free CPU cores
    python benchmarks/synth_fidelity.py --out /tmp/fid --tiny           # minutes: the script works
    python benchmarks/synth_fidelity.py --out bench/fidelity --plain-boxes   # from box labels only
    python benchmarks/synth_fidelity.py --out bench/fidelity --detector yolo11n   # the same run and images, YOLO11n

The run, the synthetic images and each detector are kept in --out under names holding what they depend on,
so a second invocation (another --detector) reuses what the first made.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _yolo  # noqa: E402
from _synth import HELDOUT_START, fit_and_score, layout_run, per_class_table, real, synthesize_images  # noqa: E402

from diffusely.data.defects import CLASS_NAMES  # noqa: E402
from diffusely.metrics.detection import detect, layout_fidelity, mean_average_precision  # noqa: E402


def plain_box_folder(root: Path) -> str:
    """The built-in defects' training set (builtin_defects: 4000 images, seed 0) as an Ultralytics folder of
    plain box lines, as a user with box labels only would have it; written once."""
    from PIL import Image

    from diffusely.data import builtin_defects
    from diffusely.data.detection import data_yaml_text, yolo_label_text

    if not (root / "data.yaml").is_file():
        data = builtin_defects(64)
        for kind in ("images", "labels"):
            (root / kind / "train").mkdir(parents=True, exist_ok=True)
        for i, (image, boxes) in enumerate(zip(data.images, data.boxes)):
            Image.fromarray(image).save(root / "images" / "train" / f"{i:05d}.png")
            (root / "labels" / "train" / f"{i:05d}.txt").write_text(yolo_label_text([b[:5] for b in boxes], 64, 64))
        (root / "data.yaml").write_text(data_yaml_text(root, CLASS_NAMES, splits=("train",)))
    return str(root)


def detections(args, train_images, train_boxes, images: dict) -> tuple[dict, str]:
    """The detector of --detector trained on the real images (kept in OUT), run on each of `images` ({name:
    (split name, images, boxes)}, "heldout" among them): {name: per image detections}, and its description."""
    if args.detector == "yolo11n":
        python = _yolo.ensure_env(_yolo.env_path(args.yolo_env))
        root = args.out / "yolo"
        train = f"real-{len(train_images)}"
        _yolo.write_split(root, train, train_images, train_boxes)
        paths = {name: _yolo.write_split(root, split, x, b) for name, (split, x, b) in images.items()}
        r = _yolo.fit_and_detect(python, root, [train], heldout=None, predict=paths, seed=0, epochs=args.yolo_epochs,
                                 threads=args.yolo_threads, tag=f"{train}-e{args.yolo_epochs}-seed0",
                                 predict_tag="--" + "+".join(split for split, _, _ in images.values()))
        return r["detections"], f"YOLO11n from its yaml, {r['epochs']} epochs"
    _, test_images, test_boxes = images["heldout"]
    net = fit_and_score(train_images, train_boxes, test_images, test_boxes, steps=args.detector_steps,
                        cache=args.out / f"detector-real4000-steps{args.detector_steps}.safetensors")["net"]
    return {name: detect(net, x) for name, (_, x, _) in images.items()}, f"CenterNet, {args.detector_steps} steps"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run", type=Path, help="an existing layout run (default: train one in OUT/run)")
    p.add_argument("--steps", type=int, default=6000, help="diffusion training steps")
    p.add_argument("--detector-steps", type=int, default=2000, help="CenterNet training steps")
    p.add_argument("-n", type=int, default=500, help="synthetic images")
    p.add_argument("--guidance", type=float, default=None, help="default: the library's (2)")
    p.add_argument("--plain-boxes", action="store_true",
                   help="train from the same 4000 built-in images written as a YOLO folder of plain boxes (no "
                        "polygons), so directions come from the pixels (estimate_direction); run in OUT/run-plain")
    p.add_argument("--tiny", action="store_true", help="a few hundred steps of everything")
    _yolo.add_options(p)
    args = p.parse_args()
    if args.tiny:
        args.steps, args.detector_steps, args.n, args.yolo_epochs = 200, 200, 64, 1
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or args.out / ("run-plain" if args.plain_boxes else "run")
    source = plain_box_folder(args.out / "plain-yolo") if args.plain_boxes else "defects"
    seconds = 0.0 if args.run else layout_run(run_dir, source, args.steps)

    # cached under names that hold what they depend on: the run, its step, n and the guidance
    from diffusely.checkpoint import load_run

    run = load_run(run_dir)  # the layout channels name the layout format (with or without directions)
    tag = f"{run_dir.resolve().name}-step{run.step}-c{run.config.model.layout_channels}-n{args.n}"
    images, layouts = synthesize_images(run_dir, args.n, seed=1, guidance=args.guidance,
                                        cache=args.out / f"synth-{tag}-g{args.guidance}.npz")
    # the floor: the same layouts scored on images drawn with no layout (guidance 0 = the null layout)
    free, _ = synthesize_images(run_dir, args.n, seed=1, guidance=0.0, cache=args.out / f"synth-{tag}-g0.npz")
    train_images, train_boxes = real(4000)
    test_images, test_boxes = real(500, HELDOUT_START)
    found, detector = detections(args, train_images, train_boxes, {
        "heldout": ("heldout-500", test_images, test_boxes), "synthetic": (f"synth-{tag}-g{args.guidance}", images, layouts),
        "free": (f"synth-{tag}-g0", free, [[] for _ in free])})
    fidelity = layout_fidelity(found["synthetic"], layouts, len(CLASS_NAMES))
    yolo_score = mean_average_precision(found["synthetic"], layouts, len(CLASS_NAMES))
    floor = layout_fidelity(found["free"], layouts, len(CLASS_NAMES))
    real_fit = {"map": mean_average_precision(found["heldout"], test_boxes, len(CLASS_NAMES)),
                "fidelity": layout_fidelity(found["heldout"], test_boxes, len(CLASS_NAMES))}

    print(f"\nlayout run: {run_dir} ({seconds / 60:.1f} min of training here); detector: {detector} on 4000 real images")
    print(f"\nrequested boxes found (IoU >= 0.5, same class, score >= 0.3), {args.n} synthetic images:")
    print(f"{'':24s}" + "".join(f"{n:>10s}" for n in CLASS_NAMES) + f"{'all':>10s}")
    for label, r in (("recall, synthetic", fidelity), ("precision, synthetic", fidelity),
                     ("recall, real held-out", real_fit["fidelity"]), ("recall, no layout", floor)):
        key = label.split(",")[0]
        print(f"{label:24s}" + "".join(f"{r['per_class'][c][key]:10.3f}" for c in range(len(CLASS_NAMES)))
              + f"{r[key]:10.3f}")
    print("\nAP50 with the requested boxes as truth (synthetic) and with the real boxes (real held-out):")
    print(per_class_table({"synthetic (YOLO score)": yolo_score, "real held-out": real_fit["map"]}, "AP50"))
    print(f"\nbar: recall >= 0.8 on requested boxes: {'met' if fidelity['recall'] >= 0.8 else 'NOT met'} "
          f"({fidelity['recall']:.3f})")
    result = {"recall": fidelity["recall"], "precision": fidelity["precision"], "floor_recall": floor["recall"],
              "real_recall": real_fit["fidelity"]["recall"], "yolo_score_map50": yolo_score["mAP50"],
              "real_map50": real_fit["map"]["mAP50"], "per_class": {CLASS_NAMES[c]: fidelity["per_class"][c] for c in range(4)},
              "n": args.n, "steps": args.steps, "detector": detector, "detector_steps": args.detector_steps}
    name = "results.json" if args.detector == "centernet" else f"results-{args.detector}.json"
    (args.out / name).write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
