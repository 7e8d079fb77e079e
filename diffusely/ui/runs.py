"""The Runs tab: every run under RUNS_DIR in a table (steps, last loss, eval results), and for the one picked its
`info` facts (pipelines.describe), RUN/eval.json, its loss curve and its latest sample grid."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .._files import Unreadable, read_json
from ..pipelines.describe import describe_run
from .state import Context, loss_frame, read_loss


def _eval(run_dir: Path) -> dict:
    path = run_dir / "eval.json"
    try:
        return read_json(path, "run `diffusely eval` on the run again") if path.is_file() else {}
    except Unreadable as e:
        return {"error": str(e)}


def table(ctx: Context):
    """One row per run: name, steps logged, last loss, and eval.json's top-level numbers."""
    import pandas as pd

    rows = []
    for name in ctx.roots.list_runs():
        run_dir = ctx.roots.runs / name
        loss = read_loss(run_dir)
        numbers = {k: v for k, v in _eval(run_dir).items() if isinstance(v, (int, float))}
        rows.append({"run": name, "step": loss[-1][0] if loss else 0, "last loss": loss[-1][1] if loss else None,
                     "eval": ", ".join(f"{k} {v:.4g}" for k, v in list(numbers.items())[:4])})
    return pd.DataFrame(rows, columns=["run", "step", "last loss", "eval"])


def details(ctx: Context, name):
    """The picked run's facts, eval results, loss curve and latest grid."""
    if not name:
        return {}, {}, loss_frame(None), None
    try:
        run_dir = ctx.run_dir(name)
        facts = describe_run(run_dir, ctx.run(name))
    except ValueError as e:
        return {"error": str(e)}, {}, loss_frame(None), None
    grids = sorted((run_dir / "samples").glob("*.png"))
    return facts, _eval(run_dir), loss_frame(run_dir), str(grids[-1]) if grids else None


def build(ctx: Context, runs: list[str]) -> gr.Dropdown:
    refresh = gr.Button("Refresh", elem_id="runs-refresh")
    listing = gr.Dataframe(table(ctx), label=f"Runs under {ctx.roots.runs}", interactive=False, elem_id="runs-table")
    pick = gr.Dropdown(runs, value=None, label="Run", elem_id="runs-pick")
    with gr.Row():
        facts = gr.JSON(label="Facts (diffusely info)", elem_id="runs-facts")
        results = gr.JSON(label="Eval results (eval.json)", elem_id="runs-eval")
    with gr.Row():
        curve = gr.LinePlot(x="step", y="loss", label="Loss", elem_id="runs-loss")
        grid = gr.Image(label="Latest sample grid", type="filepath", elem_id="runs-grid")
    refresh.click(lambda: (table(ctx), gr.update(choices=ctx.roots.list_runs())), None, [listing, pick])
    pick.change(lambda n: details(ctx, n), pick, [facts, results, curve, grid])
    return pick
