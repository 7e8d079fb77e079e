"""The Image to image tab: upload an image, then img2img (SDEdit strength), inpaint a mask painted in the browser,
upscale (a run trained with --task upscale) or restore (zero-shot: the restoration tasks that exist,
diffusely.restoration.TASKS), through pipelines.restore."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from ..pipelines import restore as pipeline
from ..restoration import TASKS
from .generate import SAMPLER_CHOICES, number
from .state import Context

IMG2IMG, INPAINT, UPSCALE = "img2img", "inpaint (paint the area to fill)", "upscale (an upscale run)"


def modes(config=None) -> list[str]:
    """What the tab offers the run (`config`; None: every mode): img2img; inpainting and each other restoration task
    that exists for a pixel run; upscaling for a run trained with --task upscale."""
    if config is not None and config.data.modality != "image":  # audio and video: none of these
        return []
    pixels = config is None or config.latent is None
    upscaler = config is None or "lowres" in config.conditions
    restore = [INPAINT, *(f"restore: {t}" for t in TASKS if t != "inpaint")] if pixels else []
    return [IMG2IMG, *restore, *([UPSCALE] if upscaler else [])]


def run_modes(ctx: Context, name):
    """The mode radio for the run picked: only what it can do."""
    if not name:
        return gr.update()
    return gr.update(choices=modes(ctx.run(name).config), value=IMG2IMG)


def _rgb(array: np.ndarray, channels: int) -> Image.Image:
    image = Image.fromarray(np.asarray(array)[..., :3].astype(np.uint8) if np.asarray(array).ndim == 3 else array)
    return image.convert("L" if channels == 1 else "RGB")


def painted_mask(editor: dict, size: int) -> Image.Image:
    """The known-pixels mask pipelines.restore reads (white: keep) from the editor's layers: painted strokes
    (any alpha) are the area to fill. Scaled to the run's size x size, nearest."""
    layers = [np.asarray(layer) for layer in editor.get("layers") or [] if layer is not None]
    background = np.asarray(editor["background"])
    painted = np.zeros(background.shape[:2], bool)
    for layer in layers:
        alpha = layer.ndim == 3 and layer.shape[2] == 4
        painted |= (layer[..., 3] > 0) if alpha else layer.reshape(*layer.shape[:2], -1).any(-1)
    if not painted.any():
        raise ValueError("paint over the part of the image to fill in first (the brush in the image editor)")
    return Image.fromarray(np.where(painted, 0, 255).astype(np.uint8)).resize((size, size), Image.NEAREST)


def _inputs(ctx: Context, editor, run, out: Path, mode: str) -> tuple[Path, Path | None, str]:
    """The uploaded image (and mask) written as the run's files under out/in; a note when it was resized."""
    if editor is None or editor.get("background") is None:
        raise ValueError("upload an image first")
    cfg = run.config
    size = cfg.data.image_size // (cfg.data.scale if mode == UPSCALE else 1)
    image = _rgb(editor["background"], cfg.data.channels)
    note = "" if image.size == (size, size) else f" (the {image.size[0]}x{image.size[1]} upload resized to {size} px)"
    (out / "in").mkdir(parents=True, exist_ok=True)
    source = out / "in" / "image.png"
    image.resize((size, size), Image.LANCZOS).save(source)
    mask = None
    if mode == INPAINT:
        mask = out / "mask.png"
        painted_mask(editor, size).save(mask)
    return source, mask, note


def default_sampler(mode: str):
    """The (sampler, steps) of the command each mode runs where none is asked: `upscale`'s, `restore`'s (inpainting
    too), none for img2img (the run's)."""
    return {IMG2IMG: None, UPSCALE: pipeline.UPSCALE_SAMPLER}.get(mode, pipeline.RESTORE_SAMPLER)


def run_edit(ctx: Context, name, editor, mode, strength, sampler, steps, seed, draws,
             progress=gr.Progress(track_tqdm=True)):
    """Run the chosen mode on the upload; returns the images written (result first) and a line saying what ran."""
    try:
        run, out = ctx.run(name), ctx.out_dir(name, "image")
        source, mask, note = _inputs(ctx, editor, run, out, mode)
        plan = pipeline.Plan.of(run, sampler or None, number(steps), None, k=int(draws), seed=int(seed),
                                default=default_sampler(mode))
        result = out / "result"
        if mode == IMG2IMG:
            pipeline.img2img(run, source, result, plan, strength=float(strength))
        elif mode == UPSCALE:
            pipeline.upscale(run, source, result, plan)
        else:
            task = "inpaint" if mode == INPAINT else mode.split(": ")[1]
            pipeline.restore(run, source, result, plan, task=task, mask=mask, measured=task == "inpaint")
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    written = sorted(result.glob("*.png"), key=lambda p: (p.name.count("."), p.name))
    return [str(p) for p in written], f"{mode} with {name}{note}: {len(written)} image(s) in {result}"


def build(ctx: Context, runs: list[str], demo: gr.Blocks) -> gr.Dropdown:
    with gr.Row():
        with gr.Column():
            run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run (a pixel run)", elem_id="img-run")
            editor = gr.ImageEditor(label="Image (paint the area to fill for inpainting)", type="numpy",
                                    image_mode="RGBA", format="png", sources=("upload", "clipboard"),
                                    brush=gr.Brush(colors=["#ff0000"], default_size=4, color_mode="fixed"),
                                    canvas_size=(256, 256), elem_id="img-editor")
            mode = gr.Radio(modes(), value=IMG2IMG, label="What to do", elem_id="img-mode")
            strength = gr.Slider(0.05, 1.0, 0.5, step=0.05, label="img2img strength (1: from noise)",
                                 elem_id="img-strength")
            with gr.Row():
                sampler = gr.Dropdown(SAMPLER_CHOICES, value="", allow_custom_value=True, label="Sampler",
                                      elem_id="img-sampler")
                steps = gr.Number(0, precision=0, label="Steps (0: the default)", elem_id="img-steps")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="img-seed")
                draws = gr.Number(1, precision=0, minimum=1, maximum=16, label="Draws (>1: mean and std too)",
                                  elem_id="img-draws")
            go = gr.Button("Run", variant="primary", elem_id="img-go")
        with gr.Column():
            gallery = gr.Gallery(label="Result", columns=3, elem_id="img-result")
            said = gr.Markdown(elem_id="img-said")
    run.input(lambda n: run_modes(ctx, n), run, mode)
    demo.load(lambda n: run_modes(ctx, n), run, mode)
    go.click(lambda *a: run_edit(ctx, *a), [run, editor, mode, strength, sampler, steps, seed, draws],
             [gallery, said], concurrency_limit=1)
    return run
