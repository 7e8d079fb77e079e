"""`diffusely ui`: a web page over the library (Gradio, `pip install 'diffusely[ui]'`).

    ui/guard.py     allowed roots and the upload limit: what a browser may touch
    ui/jobs.py      background jobs (training, synth) the page polls
    ui/state.py     what the tabs share: roots, jobs, loaded runs, output folders, log.csv
    ui/generate.py  Generate        ui/images.py    Image to image     ui/training.py  Train
    ui/datasets.py  Datasets        ui/runs.py      Runs

    from diffusely.ui import build_app, Roots
    build_app(Roots.of("runs")).launch(server_name="127.0.0.1")
"""

from __future__ import annotations

from .guard import MAX_UPLOAD_MB, Refused, Roots

LOOPBACK = "127.0.0.1"
# tiny runs make 8 to 64 px images: show them enlarged, without blur (the layout is drawn 8x already, and shown
# at its own size: Gradio maps a click to its pixels only when an image is not enlarged)
CSS = ("img { image-rendering: pixelated; } "
       "#gen-grid img, #gen-again img { width: 100%; height: 100%; object-fit: contain; }")


def build_app(roots: Roots):
    """The gr.Blocks of the five tabs over the runs under roots.runs."""
    import gradio as gr

    from . import datasets, generate, images, runs, training
    from .state import Context

    ctx, listed = Context(roots), roots.list_runs()
    layout_runs = [r for r in listed if "layout" in _conditions(roots.runs / r)]
    with gr.Blocks(title="diffusely") as demo:
        gr.Markdown(f"## diffusely · runs under `{roots.runs}`")
        with gr.Tab("Generate", id="generate"):
            pickers = [generate.build(ctx, listed, demo)]
        with gr.Tab("Image to image", id="images"):
            pickers.append(images.build(ctx, listed, demo))
        with gr.Tab("Train", id="train"):
            training.build(ctx)
        with gr.Tab("Datasets", id="datasets"):
            datasets.build(ctx, layout_runs, demo)
        with gr.Tab("Runs", id="runs"):
            pickers.append(runs.build(ctx, listed))
        # runs trained since the server started appear when the page is (re)loaded
        demo.load(lambda: [gr.update(choices=roots.list_runs())] * len(pickers), None, pickers)
    demo.ctx = ctx  # tests and callers reach the jobs through it
    return demo


def _conditions(run_dir) -> list[str]:
    from ..checkpoint import read_config

    try:
        return list(read_config(run_dir).conditions)
    except (ValueError, TypeError):
        return []  # an autoencoder run, or one this version cannot read: listed, refused when picked


def serve(roots: Roots, *, host: str = LOOPBACK, port: int = 7860, share: bool = False, block: bool = True):
    """Serve the page on host:port (loopback unless asked); uploads over roots' limit are refused by the server.
    Returns (app, local url)."""
    demo = build_app(roots)
    demo.queue(default_concurrency_limit=2)
    app, url, _ = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                              max_file_size=roots.max_upload_bytes, allowed_paths=[str(p) for p in roots.all],
                              quiet=True, footer_links=[], css=CSS)
    return demo, url


__all__ = ["LOOPBACK", "MAX_UPLOAD_MB", "Refused", "Roots", "build_app", "serve"]
