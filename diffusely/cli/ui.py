"""`diffusely ui`: serve the web page (diffusely.ui) over a runs folder, on this machine only unless asked."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import ConfigError


@click.command("ui")
@click.argument("runs_dir", required=False, default="runs", type=click.Path(file_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True, help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but 127.0.0.1 (e.g. 0.0.0.0) EXPOSES the server, its runs and your "
                   "CPU/GPU to every machine that can reach this one: there is no login.")
@click.option("--share", is_flag=True,
              help="Also open a public Gradio share link: EXPOSES the server to anyone on the internet with the link.")
@click.option("--allow", multiple=True, type=click.Path(file_okay=False),
              help="Another folder the page may read data from and write to, besides RUNS_DIR (repeatable).")
@click.option("--max-upload-mb", type=click.FloatRange(0.01, 1024), default=10, show_default=True,
              help="Uploads larger than this are refused.")
def ui(runs_dir, port, host, share, allow, max_upload_mb):
    """Serve a web UI over the runs in RUNS_DIR (default ./runs): generate, image to image, train, datasets, runs.

    Paths typed into the page must lie inside RUNS_DIR or an --allow folder.

    \b
    pip install 'diffusely[ui]'
    diffusely ui runs                  # then open http://127.0.0.1:7860
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("the UI needs Gradio: pip install 'diffusely[ui]'") from None
    from ..ui import Roots, serve

    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    roots = Roots.of(runs_dir, allow, max_upload_mb)
    if host != "127.0.0.1" or share:
        click.echo(f"warning: serving beyond this machine ({'share link' if share else host}): anyone who reaches it "
                   f"can train, sample and read {roots.runs}", err=True)
    click.echo(f"serving {roots.runs} on http://{host}:{port} (Ctrl-C stops)")
    serve(roots, host=host, port=port, share=share)
