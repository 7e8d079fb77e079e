"""Layout fidelity: is each generated defect inside the box it was asked for, and of its class?

1. a layout-conditioned run on the built-in defects at 64 x 64 (or --run, an existing one);
2. a detector trained on real built-in images only (diffusely.metrics.detection's CenterNet: Ultralytics
   YOLO needs torchvision, which this project does not install);
3. synthetic images for layouts drawn from the run's training layouts, and the detector run on them.
Reports the detector's recall and precision of the requested boxes (a match: same class, IoU >= 0.5,
score >= 0.3) and its mAP with the requested boxes as ground truth (the "YOLO score" of the
layout-to-image literature), per class, beside the same detector on held-out real images (its ceiling)
and on images the same run drew without a layout (guidance towards nothing: the floor, chance).
The bar (issue 9): recall >= 0.8 on the requested boxes.

    python benchmarks/synth_fidelity.py --out bench/fidelity            # ~30 minutes on 2 free CPU cores
    python benchmarks/synth_fidelity.py --out /tmp/fid --tiny           # minutes: the script works
    python benchmarks/synth_fidelity.py --out bench/fidelity --plain-boxes   # from box labels only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run", type=Path, help="an existing layout run (default: train one in OUT/run)")
    p.add_argument("--steps", type=int, default=6000, help="diffusion training steps")
    p.add_argument("--detector-steps", type=int, default=2000)
    p.add_argument("-n", type=int, default=500, help="synthetic images")
    p.add_argument("--guidance", type=float, default=None, help="default: the library's (2)")
    p.add_argument("--plain-boxes", action="store_true",
                   help="train from the same 4000 built-in images written as a YOLO folder of plain boxes (no "
                        "polygons), so directions come from the pixels (estimate_direction); run in OUT/run-plain")
    p.add_argument("--tiny", action="store_true", help="a few hundred steps of everything")
    args = p.parse_args()
    if args.tiny:
        args.steps, args.detector_steps, args.n = 200, 200, 64
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or args.out / ("run-plain" if args.plain_boxes else "run")
    source = plain_box_folder(args.out / "plain-yolo") if args.plain_boxes else "defects"
    seconds = 0.0 if args.run else layout_run(run_dir, source, args.steps)

    train_images, train_boxes = real(4000)
    test_images, test_boxes = real(500, HELDOUT_START)
    fit = fit_and_score(train_images, train_boxes, test_images, test_boxes, steps=args.detector_steps,
                        cache=args.out / f"detector-real4000-steps{args.detector_steps}.safetensors")
    net = fit["net"]

    # cached under names that hold what they depend on: the run, its step, n and the guidance
    from diffusely.checkpoint import load_run

    run = load_run(run_dir)  # the layout channels name the layout format (with or without directions)
    tag = f"{run_dir.resolve().name}-step{run.step}-c{run.config.model.layout_channels}-n{args.n}"
    images, layouts = synthesize_images(run_dir, args.n, seed=1, guidance=args.guidance,
                                        cache=args.out / f"synth-{tag}-g{args.guidance}.npz")
    found = detect(net, images)
    fidelity = layout_fidelity(found, layouts, len(CLASS_NAMES))
    yolo_score = mean_average_precision(found, layouts, len(CLASS_NAMES))
    # the floor: the same layouts scored on images drawn with no layout (guidance 0 = the null layout)
    free, _ = synthesize_images(run_dir, args.n, seed=1, guidance=0.0, cache=args.out / f"synth-{tag}-g0.npz")
    floor = layout_fidelity(detect(net, free), layouts, len(CLASS_NAMES))

    print(f"\nlayout run: {run_dir} ({seconds / 60:.1f} min of training here); detector: CenterNet, "
          f"{args.detector_steps} steps on 4000 real images")
    print(f"\nrequested boxes found (IoU >= 0.5, same class, score >= 0.3), {args.n} synthetic images:")
    print(f"{'':24s}" + "".join(f"{n:>10s}" for n in CLASS_NAMES) + f"{'all':>10s}")
    for label, r in (("recall, synthetic", fidelity), ("precision, synthetic", fidelity),
                     ("recall, real held-out", fit["fidelity"]), ("recall, no layout", floor)):
        key = label.split(",")[0]
        print(f"{label:24s}" + "".join(f"{r['per_class'][c][key]:10.3f}" for c in range(len(CLASS_NAMES)))
              + f"{r[key]:10.3f}")
    print("\nAP50 with the requested boxes as truth (synthetic) and with the real boxes (real held-out):")
    print(per_class_table({"synthetic (YOLO score)": yolo_score, "real held-out": fit["map"]}, "AP50"))
    print(f"\nbar: recall >= 0.8 on requested boxes: {'met' if fidelity['recall'] >= 0.8 else 'NOT met'} "
          f"({fidelity['recall']:.3f})")
    result = {"recall": fidelity["recall"], "precision": fidelity["precision"], "floor_recall": floor["recall"],
              "real_recall": fit["fidelity"]["recall"], "yolo_score_map50": yolo_score["mAP50"],
              "real_map50": fit["map"]["mAP50"], "per_class": {CLASS_NAMES[c]: fidelity["per_class"][c] for c in range(4)},
              "n": args.n, "steps": args.steps, "detector_steps": args.detector_steps}
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
