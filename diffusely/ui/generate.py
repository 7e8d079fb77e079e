"""The Generate tab: a run, prompt or class, sampler, steps or NFE, guidance, seed, count; a grid and each PNG
with its parameters (pipelines.generate writes them as A1111 does), and "load parameters from a PNG" to draw one
again bit for bit (pipelines.generate.reproduce). An audio run's samples come as WAV files, a player and the grid of
waveforms over spectrograms; a video run's as GIFs, shown playing, and the grid of film strips."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..pipelines.generate import read_parameters, reproduce, write_samples
from ..samplers import SAMPLERS
from .state import Context

# ours, then names people bring from A1111 (any name pipelines.generate.Sampler takes is accepted when typed)
SAMPLER_CHOICES = ["", *SAMPLERS, "Euler a", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "DPM++ 2M", "DDIM", "UniPC"]
NO_CLASS = "(none)"
MAX_COUNT = 64


def number(value, cast=int):
    """A form number: None when left blank (or 0 where 0 means "the run's default")."""
    return None if value in (None, "", 0) else cast(value)


def guidance_value(text) -> float | None:
    """The guidance field: blank for the default, else a number (a ValueError naming the field)."""
    text = str(text if text is not None else "").strip()
    try:
        return float(text) if text else None
    except ValueError:
        raise ValueError(f"guidance must be a number (1: none) or blank for the default, got {text!r}") from None


def run_summary(ctx: Context, name: str):
    """What the run takes: its class dropdown, whether prompts apply, a one-line description."""
    if not name:
        return gr.update(choices=[NO_CLASS], value=NO_CLASS), gr.update(interactive=False), ""
    cfg = ctx.run(name).config
    classes = [NO_CLASS, *(cfg.data.class_names or [str(i) for i in range(cfg.model.num_classes)])]
    text = "text" in cfg.conditions
    kind = ", ".join(cfg.conditions) or "unconditional"
    data = cfg.data
    shape = {"audio": f"{data.image_size} samples at {data.sample_rate} Hz",
             "video": f"{data.image_size} px x {data.frames or data.image_size} frames"}
    shape = shape.get(data.modality, f"{data.image_size} px")
    line = (f"**{name}**: {data.modality}, {kind}, {shape}, {data.channels} channel(s); default sampler "
            f"{cfg.diffusion.sampler}, {cfg.diffusion.sample_steps} steps")
    return gr.update(choices=classes, value=NO_CLASS), gr.update(interactive=text), line


def request(prompt, negative, klass, sampler, steps, nfe, guidance) -> dict:
    """write_samples' keyword arguments from the form (blank fields: the run's defaults)."""
    kwargs = {"sampler": sampler or None, "steps": number(steps), "nfe": number(nfe),
              "guidance": guidance_value(guidance)}
    if prompt:
        kwargs["prompts"] = [prompt]
    if negative:
        kwargs["negative_prompts"] = [negative]
    if klass and klass != NO_CLASS:
        kwargs["classes"] = [klass]
    return kwargs


def run_generate(ctx: Context, name, prompt, negative, klass, sampler, steps, nfe, guidance, seed, count,
                 progress=gr.Progress(track_tqdm=True)):
    """Sample `count` images (audio clips, videos) into a new output folder; returns the grid, the files, the first's
    parameters, the audio player (the first clip of an audio run, else hidden) and the GIFs of a video run."""
    try:
        count = int(count)
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count must be 1..{MAX_COUNT}, got {count}")
        run, out = ctx.run(name), ctx.out_dir(name, "generate")
        kwargs = request(prompt, negative, klass, sampler, steps, nfe, guidance)
        write_samples(run, out, count, seed=int(seed), grid=out / "grid.png", batch_size=min(count, 8),
                      progress=True, **kwargs)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    files = sorted(str(p) for p in out.iterdir() if p.stem.isdigit())
    audio, video = files[0].endswith(".wav"), files[0].endswith(".gif")
    return (str(out / "grid.png"), files, parameters_text(files[0]),
            gr.update(value=files[0] if audio else None, visible=audio),
            gr.update(value=files if video else None, visible=video))


def parameters_text(path: str) -> str:
    """The parameters write_samples put in a sample: a PNG's A1111 `parameters` text chunk, the JSON in a WAV's
    INFO comment or a GIF's comment."""
    import json

    from PIL import Image

    if path.endswith(".wav"):
        from ..audio import read_comment

        return json.dumps(read_comment(path))
    with Image.open(path) as im:
        if path.endswith(".gif"):
            comment = im.info.get("comment", b"")
            return comment.decode() if isinstance(comment, bytes) else str(comment)
        return im.text.get("parameters", "")


def load_png(ctx: Context, png):
    """Fill the form from a PNG's parameters (its run must lie inside the allowed roots)."""
    try:
        p = read_parameters(ctx.roots.upload(png, "PNG"))
        run = ctx.roots.inside(p["run"], "the PNG's run")
        name = str(run.relative_to(ctx.roots.runs)) if ctx.roots.runs in run.parents else str(run)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    klass, guidance = p.get("class"), p.get("guidance")
    values = (name, p.get("prompt", ""), p.get("negative_prompt", ""), klass if klass is not None else NO_CLASS,
              p["sampler"], p["steps"] or 0, 0, "" if guidance is None else str(guidance), p["seed"], 1)
    return values, parameters_text(png)


def run_reproduce(ctx: Context, png):
    """Draw the PNG's image again from its own run; says whether every pixel is the same."""
    if png is None:
        raise gr.Error("upload a PNG made by diffusely first", print_exception=False)
    try:
        p = read_parameters(ctx.roots.upload(png, "PNG"))
        run_dir = ctx.roots.inside(p["run"], "the PNG's run")
        result = reproduce(png, ctx.out_dir(run_dir.name, "reproduce"), run_dir=run_dir, progress=False)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    same = "the same, pixel for pixel" if result["same"] else "NOT the same (other weights, device or precision?)"
    return str(result["path"]), f"Drawn again from {run_dir} (seed {p['seed']}): {same} as the uploaded PNG."


def build(ctx: Context, runs: list[str], demo: gr.Blocks) -> gr.Dropdown:
    """The tab's components and events (call inside a gr.Tab of `demo`); returns its run dropdown."""
    with gr.Row():
        with gr.Column(scale=2):
            run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", elem_id="gen-run")
            about = gr.Markdown(elem_id="gen-about")
            prompt = gr.Textbox(label="Prompt", interactive=False, elem_id="gen-prompt")
            negative = gr.Textbox(label="Negative prompt", elem_id="gen-negative")
            klass = gr.Dropdown([NO_CLASS], value=NO_CLASS, label="Class", elem_id="gen-class")
            with gr.Row():
                sampler = gr.Dropdown(SAMPLER_CHOICES, value="", allow_custom_value=True, elem_id="gen-sampler",
                                      label="Sampler (blank: the run's; A1111 names such as 'DPM++ 2M Karras' too)")
                steps = gr.Number(0, precision=0, label="Steps (0: the run's)", elem_id="gen-steps")
                nfe = gr.Number(0, precision=0, label="or NFE budget", elem_id="gen-nfe")
            with gr.Row():
                guidance = gr.Textbox("", label="Guidance (blank: the default; 1: none)", elem_id="gen-guidance")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="gen-seed")
                count = gr.Number(4, precision=0, minimum=1, maximum=MAX_COUNT, label="Count", elem_id="gen-count")
            go = gr.Button("Generate", variant="primary", elem_id="gen-go")
        with gr.Column(scale=3):
            grid = gr.Image(label="Grid", type="filepath", height=320, elem_id="gen-grid")
            files = gr.File(label="Samples (PNG, WAV or GIF: parameters inside)", file_count="multiple",
                            elem_id="gen-files")
            sound = gr.Audio(label="First clip", type="filepath", visible=False, elem_id="gen-audio")
            clips = gr.Gallery(label="Videos", columns=4, visible=False, elem_id="gen-clips")
            params = gr.Textbox(label="Parameters (a PNG's as A1111 writes them; a WAV's or GIF's as JSON)", lines=3,
                                elem_id="gen-params")
    with gr.Accordion("Load parameters from a PNG", open=False):
        with gr.Row():
            png = gr.File(label="A PNG made by diffusely", file_types=[".png"], type="filepath", elem_id="gen-png")
            again = gr.Image(label="Drawn again", type="filepath", height=160, elem_id="gen-again")
        with gr.Row():
            redo = gr.Button("Reproduce exactly", elem_id="gen-reproduce")
            verdict = gr.Markdown(elem_id="gen-verdict")
    form = [run, prompt, negative, klass, sampler, steps, nfe, guidance, seed, count]
    run.input(lambda n: run_summary(ctx, n), run, [klass, prompt, about])
    demo.load(lambda n: run_summary(ctx, n), run, [klass, prompt, about])
    go.click(lambda *a: run_generate(ctx, *a), form, [grid, files, params, sound, clips], concurrency_limit=1)
    png.upload(lambda f: _fill(ctx, f), png, [*form, params])
    redo.click(lambda f: run_reproduce(ctx, f), png, [again, verdict], concurrency_limit=1)
    return run


def _fill(ctx: Context, png):
    """The form as the PNG's parameters set it, the class list and prompt box those of the PNG's run."""
    if png is None:
        return [gr.update()] * 11
    values, text = load_png(ctx, png)
    classes, prompt, _ = run_summary(ctx, values[0])
    return (values[0], {**prompt, "value": values[1]}, values[2], {**classes, "value": values[3]}, *values[4:], text)
