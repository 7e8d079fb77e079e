"""Train YOLO11 from its yaml on a dataset folder (once: a trained project/name is reused) and detect on images; run by benchmarks/_yolo.py in the
YOLO environment (torch 2.14.1, torchvision, ultralytics), never in diffusely's own.

    python _yolo_worker.py SPEC.json

SPEC holds: data (a data.yaml to train on), heldout (a data.yaml whose val split is scored with Ultralytics'
validator), predict ({name: [image paths]}), out (the result JSON), and the training settings (model, epochs,
batch, imgsz, seed, threads, warmup_epochs, close_mosaic, project, name). The result JSON holds the training
seconds, Ultralytics' own mAP50 and mAP50-95 on heldout (overall and per class id), and for each predict entry the
detections of each image, (class, score, x0, y0, x1, y1) in pixels, as diffusely.metrics.detection.detect gives.
Any attempt to reach the network fails the run, naming the host.
"""

import json
import os
import socket
import sys
import time
from pathlib import Path

# offline before ultralytics is imported: it reads these at import (its ONLINE flag, auto-install, settings dir)
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "false"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ATTEMPTS = []  # every network access refused, reported at the end (library code often swallows the error)


def _refuse(what):
    def refused(*args, **kwargs):
        target = args[1] if what == "connect" and len(args) > 1 else args[0] if args else kwargs
        ATTEMPTS.append(f"{what} {target}")
        print(f"_yolo_worker: refused network access: {what} {target}", file=sys.stderr, flush=True)
        raise OSError(f"network access refused by benchmarks/_yolo_worker.py: {what} {target}")
    return refused


def block_network():
    """Refuse name lookups and connections (unix sockets, which nothing here uses for the network, stay open)."""
    connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family == socket.AF_UNIX:
            return connect(sock, address)
        return _refuse("connect")(sock, address)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect
    socket.getaddrinfo = _refuse("getaddrinfo")
    socket.create_connection = _refuse("create_connection")


def train(spec):
    """YOLO(spec['model']) from its yaml (random weights), trained on spec['data']; returns (model, seconds)."""
    import ultralytics.data.utils
    import ultralytics.utils.torch_utils
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    # no usage events (also off through YOLO_OFFLINE), no logger integrations
    SETTINGS.update({"sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
                     "raytune": False, "tensorboard": False, "wandb": False})
    # the dataset check fetches Arial.ttf for plots it may draw; plots are off, so no font is needed
    ultralytics.data.utils.check_font = lambda *args, **kwargs: None
    # ultralytics sets torch's threads to min(8, cores - 1) when it picks the CPU; ours is the spec's
    ultralytics.utils.torch_utils.NUM_THREADS = spec["threads"]
    run = Path(spec["project"]) / spec["name"]
    if (run / "trained.json").is_file():  # trained by an earlier call (which predicted on other images)
        return YOLO(str(run / "weights" / "last.pt")), json.loads((run / "trained.json").read_text())["seconds"]
    model = YOLO(spec["model"])
    start = time.perf_counter()
    # optimizer: what Ultralytics' 'auto' picks for 4 classes under 10000 iterations, pinned so that no arm's
    # iteration count flips it to SGD
    model.train(data=spec["data"], epochs=spec["epochs"], batch=spec["batch"], imgsz=spec["imgsz"],
                optimizer="AdamW", lr0=0.002 * 5 / (4 + spec["classes"]), momentum=0.9,
                seed=spec["seed"], deterministic=True, workers=0, device="cpu", amp=False, plots=False, val=False,
                patience=0, warmup_epochs=spec["warmup_epochs"], close_mosaic=spec["close_mosaic"],
                project=spec["project"], name=spec["name"], exist_ok=True, pretrained=False, verbose=True)
    seconds = time.perf_counter() - start
    (run / "trained.json").write_text(json.dumps({"seconds": seconds}))
    # the last epoch's weights (with val off, best.pt is the last epoch too: only it is validated)
    return YOLO(str(run / "weights" / "last.pt")), seconds


def score(model, spec):
    """Ultralytics' validator on the heldout yaml's val split: mAP50, mAP50-95, per class id."""
    m = model.val(data=spec["heldout"], imgsz=spec["imgsz"], batch=spec["batch"], device="cpu", plots=False,
                  conf=0.001, iou=0.7, workers=0, project=spec["project"], name=spec["name"] + "-val", exist_ok=True)
    per_class = {int(c): {"AP50": float(m.box.ap50[i]), "AP50-95": float(m.box.ap[i])}
                 for i, c in enumerate(m.box.ap_class_index)}
    return {"mAP50": float(m.box.map50), "mAP50-95": float(m.box.map), "per_class": per_class}


def detections(model, paths, spec):
    """Per image, its detections (class, score, x0, y0, x1, y1) in pixels, at Ultralytics' val settings."""
    out = []
    for start in range(0, len(paths), 256):
        for r in model.predict(paths[start:start + 256], imgsz=spec["imgsz"], conf=0.001, iou=0.7, max_det=300,
                               device="cpu", verbose=False, stream=True):
            boxes = r.boxes
            out.append([[int(c), round(float(s), 5), *(round(float(v), 3) for v in xyxy)]
                        for c, s, xyxy in zip(boxes.cls, boxes.conf, boxes.xyxy)])
    return out


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    block_network()
    import torch

    torch.set_num_threads(spec["threads"])
    model, seconds = train(spec)
    result = {"seconds_train": seconds, "epochs": spec["epochs"]}
    if spec.get("heldout"):
        result["ultralytics"] = score(model, spec)
    result["detections"] = {name: detections(model, paths, spec) for name, paths in spec.get("predict", {}).items()}
    if ATTEMPTS:
        sys.exit("Error: ultralytics tried to reach the network (refused): " + "; ".join(ATTEMPTS))
    out = Path(spec["out"])
    out.with_suffix(".tmp").write_text(json.dumps(result))
    out.with_suffix(".tmp").replace(out)


if __name__ == "__main__":
    main()
