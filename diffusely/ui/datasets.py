"""The Datasets tab, for layout runs: draw boxes by clicking two opposite corners on the layout preview (each box
also a line of text, the editable record: typed lines count the same), generate an image from them; launch `synth`
in a background job with its progress, then browse the dataset with its boxes drawn, its class counts and its
contact sheet."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from .. import viz
from ..pipelines.generate import write_samples
from ..pipelines.synth import job_settings, synthesize
from .generate import SAMPLER_CHOICES, guidance_value, number
from .state import Context

EXAMPLE = "scratch 4 4 20 12\nspot 18 18 28 28"
# the drawn layout's geometry: each pixel SCALE wide, under viz.save_contact_sheet's legend rows and padding
SCALE, PAD, LEGEND = 8, 4, 20


def parse_boxes(text: str) -> list[tuple]:
    """Lines "class x0 y0 x1 y1 [direction]" (pixels of the run's images) -> boxes; ValueError naming the line."""
    boxes = []
    for k, line in enumerate(l for l in (text or "").splitlines() if l.strip()):
        parts = line.replace(",", " ").split()
        try:
            if len(parts) not in (5, 6):
                raise ValueError
            boxes.append((parts[0], *map(float, parts[1:5]), *(int(p) for p in parts[5:])))
        except ValueError:
            raise ValueError(f"box line {k + 1} {line!r}: write class x0 y0 x1 y1 [direction] in pixels, e.g. "
                             f"'scratch 4 4 20 12'") from None
    if not boxes:
        raise ValueError("give at least one box, one line each: class x0 y0 x1 y1")
    return boxes


def boxed(image: np.ndarray, boxes: list[tuple], names: list[str], path: Path, scale: int = SCALE) -> str:
    """`image` (H, W, C) uint8 enlarged with its boxes (class index, x0, y0, x1, y1[, direction]) drawn."""
    return str(viz.save_contact_sheet(image[None], [boxes], names, path, ncol=1, scale=scale))


def _indexed(run, boxes: list[tuple]) -> list[tuple]:
    names = list(run.config.data.class_names)
    return [(names.index(b[0]) if b[0] in names else int(b[0]) if str(b[0]).isdigit() else 0, *b[1:]) for b in boxes]


def redraw(ctx: Context, name, text):
    """The boxes drawn on a grey image of the run's size (before any sampling), and a note: what is wrong with the
    lines if anything (the last good drawing stays), else how to add a box."""
    if not name:
        return gr.update(), ""
    try:
        run = ctx.run(name)
        boxes = parse_boxes(text) if (text or "").strip() else []
    except ValueError as e:
        return gr.update(), f"**{e}**"
    size = run.config.data.image_size
    out = ctx.out_dir(name, "layout").parent  # one preview file a run, redrawn as the lines change
    out.mkdir(parents=True, exist_ok=True)
    grey = np.full((size, size, 3), 96, np.uint8)
    try:
        drawn = boxed(grey, _indexed(run, boxes), list(run.config.data.class_names), out / "layout-preview.png")
    except ValueError as e:
        return gr.update(), f"**{e}**"
    return drawn, f"{len(boxes)} box(es); click two opposite corners on the image to add one"


def corner(index, size: int) -> tuple[int, int]:
    """A click at pixel (x, y) of the drawn layout (viz.save_contact_sheet's geometry) -> the nearest pixel corner
    of the run's size x size image, clamped to it."""
    x, y = index[0], index[1]
    return (min(size, max(0, round((x - PAD) / SCALE))), min(size, max(0, round((y - LEGEND - PAD) / SCALE))))


def box_line(first: tuple[int, int], second: tuple[int, int], klass: str, directed: bool) -> str:
    """The line "class x0 y0 x1 y1 [direction]" of the box two clicked corners span (at least a pixel each way).
    A directed box's line joins the clicks: +1 from top-left to bottom-right, -1 from bottom-left to top-right."""
    (ax, ay), (bx, by) = first, second
    (x0, x1), (y0, y1) = sorted((ax, bx)), sorted((ay, by))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    direction = [1 if (bx - ax) * (by - ay) > 0 else -1] if directed else []
    return " ".join(str(v) for v in (klass, x0, y0, x1, y1, *direction))


def click(ctx: Context, name, text, pending, klass, directed, index):
    """A click on the layout: the first corner is remembered, the second adds the box's line.
    Returns (lines, pending corner or None, note)."""
    if not name or not klass:
        return text, None, "**pick a layout run and a class first**"
    point = corner(index, ctx.run(name).config.data.image_size)
    if pending is None:
        return text, list(point), f"first corner at {tuple(point)}: click the opposite corner"
    line = box_line(tuple(pending), point, klass, bool(directed))
    kept = (text or "").rstrip()
    return f"{kept}\n{line}" if kept else line, None, f"added `{line}`"


def undo(text) -> str:
    """The lines without the last box."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join(lines[:-1])


def run_classes(ctx: Context, name):
    """The class dropdown for the run picked."""
    names = list(ctx.run(name).config.data.class_names) if name else []
    return gr.update(choices=names, value=names[0] if names else None)


def generate_layout(ctx: Context, name, text, sampler, steps, guidance, seed, progress=gr.Progress(track_tqdm=True)):
    """One image of the typed layout, with its boxes drawn beside the plain PNG (parameters inside)."""
    try:
        run, boxes = ctx.run(name), parse_boxes(text)
        out = ctx.out_dir(name, "layout")
        result = write_samples(run, out, 1, seed=int(seed), layouts=[boxes], sampler=sampler or None,
                               steps=number(steps), guidance=guidance_value(guidance))
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    png = next(Path(result["out_dir"]).glob("0*.png"))
    image = np.asarray(Image.open(png).convert("RGB"))
    return boxed(image, _indexed(run, boxes), list(run.config.data.class_names), out / "boxed.png"), str(png)


def start_synth(ctx: Context, name, dataset, n, seed, steps, no_copies) -> str:
    """Launch synth into `dataset` (under RUNS_DIR) in a background job."""
    try:
        run, out, n = ctx.run(name), ctx.roots.inside(dataset, "dataset folder"), int(n)
        work = lambda job: _synth_line(synthesize(run, out, n, seed=int(seed), steps=number(steps),  # noqa: E731
                                                  no_copies=bool(no_copies), progress=False))
        ctx.jobs.start(str(out), work)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    return f"synth started: {n} images into {out}"


def _synth_line(result: dict) -> str:
    return (f"done: {result['images']} images ({result['train']} train, {result['val']} val), {result['boxes']} "
            f"boxes, {result['replaced']} near-copies drawn again")


def watch_synth(ctx: Context, dataset, n):
    """Progress (images written of n), then the class counts, contact sheet and images with boxes drawn."""
    try:
        out = ctx.roots.inside(dataset, "dataset folder")
    except ValueError:
        return "", None, None, []
    job, made = ctx.jobs.get(str(out)), len(list(out.glob("images/*/*.png")))
    state = ("running" if job.running else job.message) if job is not None else "idle"
    line = f"**{state}** · {made} of {int(n or 0)} images written"
    if job is None or job.running or not (out / "data.yaml").is_file():
        return line, None, None, []
    sheet = out / "contact_sheet.png"
    try:
        return line, _counts(out), str(sheet) if sheet.is_file() else None, _browse(out)
    except ValueError as e:  # a damaged synth.json names itself and the fix
        return f"{line} · **{e}**", None, None, []


def _labels(out: Path) -> list[tuple[Path, list[tuple]]]:
    """(image, boxes in pixels) of each written image, from its YOLO label file."""
    found = []
    for png in sorted(out.glob("images/*/*.png")):
        label = out / "labels" / png.parent.name / f"{png.stem}.txt"
        size = Image.open(png).size[0]
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.is_file() else []
        boxes = [(int(c), (x - w / 2) * size, (y - h / 2) * size, (x + w / 2) * size, (y + h / 2) * size)
                 for c, x, y, w, h in ((r[0], *map(float, r[1:5])) for r in rows)]
        found.append((png, boxes))
    return found


def _names(out: Path) -> list[str]:
    settings = job_settings(out)
    names = (out / "data.yaml").read_text()
    import yaml

    table = yaml.safe_load(names).get("names", {})
    return [table[k] for k in sorted(table)] if isinstance(table, dict) else list(table) or settings.get("classes", [])


def _counts(out: Path):
    import pandas as pd

    names, labelled = _names(out), _labels(out)
    counts = [sum(b[0] == k for _, boxes in labelled for b in boxes) for k in range(len(names))]
    return pd.DataFrame({"class": names, "boxes": counts})


def _browse(out: Path, count: int = 12) -> list[tuple[str, str]]:
    names, drawn = _names(out), out / ".ui-boxed"
    drawn.mkdir(exist_ok=True)
    shown = []
    for png, boxes in _labels(out)[:count]:
        image = np.asarray(Image.open(png).convert("RGB"))
        shown.append((boxed(image, boxes, names, drawn / png.name, scale=4), f"{png.parent.name}/{png.name}"))
    return shown


def build(ctx: Context, runs: list[str], demo: gr.Blocks) -> None:
    run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Layout run", elem_id="ds-run")
    with gr.Tab("Layout to image"):
        _layout_tab(ctx, run, demo)
    with gr.Tab("Synthetic dataset"):
        _synth_tab(ctx, run)


def _layout_tab(ctx: Context, run: gr.Dropdown, demo: gr.Blocks) -> None:
    with gr.Row():
        with gr.Column():
            with gr.Row():
                klass = gr.Dropdown([], label="Class of the next box", elem_id="ds-class")
                directed = gr.Checkbox(False, label="directed: its line joins the two corners clicked",
                                       elem_id="ds-directed")
            boxes = gr.Textbox(EXAMPLE, lines=5, elem_id="ds-boxes",
                               label="Boxes, one a line: class x0 y0 x1 y1 [direction +1/-1] in pixels (edit freely)")
            with gr.Row():
                back = gr.Button("Undo last box", elem_id="ds-undo")
                clear = gr.Button("Clear", elem_id="ds-clear")
            with gr.Row():
                sampler = gr.Dropdown(SAMPLER_CHOICES, value="", allow_custom_value=True, label="Sampler")
                steps = gr.Number(0, precision=0, label="Steps (0: the run's)", elem_id="ds-steps")
                guidance = gr.Textbox("", label="Guidance (blank: the default)", elem_id="ds-guidance")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="ds-seed")
            go = gr.Button("Generate", variant="primary", elem_id="ds-go")
        with gr.Column():
            layout = gr.Image(label="Layout (after Generate: the result)", show_label=False,  # the legend shows
                              type="filepath", interactive=False, elem_id="ds-boxed")
            note = gr.Markdown(elem_id="ds-note")
            plain = gr.File(label="The image (PNG, parameters inside)", elem_id="ds-png")
    pending = gr.State(None)

    def clicked(name, text, first, chosen, line, evt: gr.SelectData):
        return click(ctx, name, text, first, chosen, line, evt.index)

    layout.select(clicked, [run, boxes, pending, klass, directed], [boxes, pending, note])
    boxes.change(lambda r, t: redraw(ctx, r, t), [run, boxes], [layout, note], show_progress="hidden")
    back.click(undo, boxes, boxes)
    clear.click(lambda: ("", None), None, [boxes, pending])
    for event in (run.input, demo.load):
        event(lambda r: run_classes(ctx, r), run, klass).then(lambda r, t: redraw(ctx, r, t), [run, boxes],
                                                               [layout, note])
    go.click(lambda *a: generate_layout(ctx, *a), [run, boxes, sampler, steps, guidance, seed], [layout, plain],
             concurrency_limit=1)


def _synth_tab(ctx: Context, run: gr.Dropdown) -> None:
    with gr.Row():
        dataset = gr.Textbox("datasets/synth", label="Dataset folder (relative to RUNS_DIR)", elem_id="ds-out")
        n = gr.Number(16, precision=0, minimum=1, label="Images", elem_id="ds-n")
        sseed = gr.Number(0, precision=0, label="Seed", elem_id="ds-sseed")
        ssteps = gr.Number(0, precision=0, label="Steps (0: the run's)", elem_id="ds-ssteps")
        no_copies = gr.Checkbox(True, label="no near-copies of training images", elem_id="ds-nocopies")
    launch = gr.Button("Launch synth", variant="primary", elem_id="ds-launch")
    said, status = gr.Markdown(elem_id="ds-said"), gr.Markdown(elem_id="ds-status")
    with gr.Row():
        counts = gr.Dataframe(label="Boxes per class", elem_id="ds-counts")
        sheet = gr.Image(label="Contact sheet", type="filepath", elem_id="ds-sheet")
    browse = gr.Gallery(label="Images with their boxes", columns=6, elem_id="ds-browse")
    launch.click(lambda *a: start_synth(ctx, *a), [run, dataset, n, sseed, ssteps, no_copies], said)
    gr.Timer(1.0).tick(lambda d, k: watch_synth(ctx, d, k), [dataset, n], [status, counts, sheet, browse],
                       show_progress="hidden")
