"""The Train tab: start or resume a run on a folder inside the allowed roots or a built-in dataset, watch its loss
and sample grids as they are written, stop it at a checkpoint (train()'s should_stop) and resume it later.
Training runs in a background thread (ui.jobs); the run's lock refuses a second writer, here or elsewhere."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..data import BUILTIN
from ..options import new_run_config, resumed_config
from .state import Context, loss_frame, read_loss


def _channels(text: str) -> tuple[int, ...] | None:
    text = (text or "").strip()
    try:
        return tuple(int(c) for c in text.split(",")) if text else None
    except ValueError:
        raise ValueError(f"U-Net channels are widths separated by commas, e.g. 32,64, got {text!r}") from None


def options(image_size, steps, batch_size, lr, channels, classes, layout, text, checkpoint_every, sample_every) -> dict:
    """diffusely.options' option dict from the form; blanks and zeros are the defaults."""
    pick = lambda v, cast=int: None if v in (None, "", 0) else cast(v)  # noqa: E731
    return {"image_size": pick(image_size), "steps": pick(steps), "batch_size": pick(batch_size),
            "lr": pick(lr, float), "channels": _channels(channels), "classes": bool(classes) or None,
            "layout": bool(layout) or None, "text": bool(text) or None,
            "checkpoint_every": pick(checkpoint_every), "sample_every": pick(sample_every), "log_every": 1}


def start(ctx: Context, resume: bool, data, out, *form) -> str:
    """Start (or resume) training `out` (under RUNS_DIR) on `data` in a background job; a line saying so."""
    from ..train import train
    from ..train.latents import prepare_own_autoencoder

    said = []  # what the config chose from the data (one channel for grayscale images), told on the page
    try:
        run_dir = ctx.roots.inside(out, "run folder")
        if not resume and data not in BUILTIN:
            data = str(ctx.roots.inside(data, "data folder"))
        opts = options(*form)
        if resume:
            config, begin = resumed_config(run_dir, None, {k: v for k, v in opts.items()
                                                          if k in ("steps", "checkpoint_every", "sample_every")})
        else:  # with run_dir, a text run gets the CLI's latent default: an autoencoder of its own, trained first
            config, begin = new_run_config(data, opts, run_dir=run_dir, say=said.append), 0

        def work(job) -> str:
            job.message = f"training {run_dir.name}"
            say = lambda line: setattr(job, "message", line)  # noqa: E731 - the autoencoder's progress, as job status
            if not prepare_own_autoencoder(config, run_dir, progress=False, say=say, should_stop=job.stop.is_set):
                return ("stopped while training the run's autoencoder: Start (not Resume) goes on from its checkpoint, "
                        "then trains the run")
            result = train(config, run_dir, resume=resume, progress=False, should_stop=job.stop.is_set)
            if job.stop.is_set() and result["step"] < config.train.steps:
                return (f"stopped at step {result['step']} with a checkpoint: Resume continues from there "
                        f"(to {config.train.steps})")
            return f"finished: {result['step']} steps, last loss {result['loss']:.4f}"

        ctx.jobs.start(str(run_dir), work)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    return " ".join([f"{'resumed from step ' + str(begin) if resume else 'started'}: training {run_dir}", *said])


def stop(ctx: Context, out) -> str:
    """Ask the run's job to stop after its current step (it writes a checkpoint there)."""
    try:
        job = ctx.jobs.get(str(ctx.roots.inside(out, "run folder")))
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None
    if job is None or not job.running:
        return "no training of this run is running here"
    job.stop.set()
    return "stopping after this step (writing a checkpoint) ..."


def watch(ctx: Context, out):
    """The run's status line, loss curve and sample grids, as they are now (polled by a timer)."""
    try:
        run_dir = ctx.roots.inside(out, "run folder")
    except ValueError:
        return "", loss_frame(None), []
    job, rows = ctx.jobs.get(str(run_dir)), read_loss(run_dir)
    last = f"step {rows[-1][0]}, loss {rows[-1][1]:.4f}" if rows else "no loss logged yet"
    state = ("running" if job.running else job.message) if job is not None else "idle"
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    return f"**{state}** · {last}", loss_frame(run_dir), [(str(p), p.stem) for p in grids[-8:]]


def build(ctx: Context) -> None:
    with gr.Row():
        with gr.Column():
            data = gr.Dropdown([*BUILTIN], value="shapes", allow_custom_value=True, elem_id="train-data",
                               label="Data: a built-in dataset, or a folder path inside the allowed roots")
            out = gr.Textbox("runs-ui/shapes", label="Run folder (relative to RUNS_DIR)", elem_id="train-out")
            with gr.Row():
                image_size = gr.Number(16, precision=0, label="Image size", elem_id="train-size")
                steps = gr.Number(2000, precision=0, label="Steps (the total to reach)", elem_id="train-steps")
                batch = gr.Number(16, precision=0, label="Batch size", elem_id="train-batch")
            with gr.Row():
                lr = gr.Number(None, label="Learning rate (blank: default)", elem_id="train-lr")
                channels = gr.Textbox("", label="U-Net channels (e.g. 32,64; blank: default)", elem_id="train-ch")
            with gr.Row():
                classes = gr.Checkbox(False, label="classes", elem_id="train-classes")
                layout = gr.Checkbox(False, label="layout (boxes)", elem_id="train-layout")
                text = gr.Checkbox(False, label="text (captions)", elem_id="train-text")
            with gr.Row():
                ckpt = gr.Number(0, precision=0, label="Checkpoint every (0: default)", elem_id="train-ckpt")
                every = gr.Number(0, precision=0, label="Sample grid every (0: default)", elem_id="train-every")
            with gr.Row():
                go = gr.Button("Start", variant="primary", elem_id="train-start")
                again = gr.Button("Resume", elem_id="train-resume")
                halt = gr.Button("Stop", variant="stop", elem_id="train-stop")
            said = gr.Markdown(elem_id="train-said")
        with gr.Column():
            status = gr.Markdown(elem_id="train-status")
            curve = gr.LinePlot(x="step", y="loss", label="Loss", elem_id="train-loss")
            grids = gr.Gallery(label="Sample grids as written", columns=4, elem_id="train-grids")
    form = [data, out, image_size, steps, batch, lr, channels, classes, layout, text, ckpt, every]
    go.click(lambda *a: start(ctx, False, *a), form, said)
    again.click(lambda *a: start(ctx, True, *a), form, said)
    halt.click(lambda o: stop(ctx, o), out, said)
    gr.Timer(1.0).tick(lambda o: watch(ctx, o), out, [status, curve, grids], show_progress="hidden")
