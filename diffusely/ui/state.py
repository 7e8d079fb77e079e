"""What every tab shares: the allowed roots, the jobs, loaded runs (cached by checkpoint time), output folders."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Optional

from ..checkpoint import LoadedRun, load_run
from .guard import Roots
from .jobs import Jobs

OUTPUTS = "ui-outputs"  # RUNS_DIR/ui-outputs/RUN/TIME/: what the page made, kept after the server stops


class Context:
    """The server's state: roots, background jobs, and runs loaded once per checkpoint (sampling reads them)."""

    def __init__(self, roots: Roots):
        self.roots, self.jobs = roots, Jobs()
        self._runs: dict[tuple[str, float], LoadedRun] = {}
        self._lock = threading.Lock()

    def run_dir(self, name: str) -> Path:
        """A run named on the page (relative to RUNS_DIR, or absolute inside the roots), checked."""
        if not name:
            raise ValueError("pick a run first")
        path = self.roots.inside(name, "run")
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a run: it has no config.json")
        return path

    def run(self, name: str) -> LoadedRun:
        """The run loaded on the CPU, again only when its weights changed (a run still training)."""
        path = self.run_dir(name)
        stamp = max((p.stat().st_mtime for p in path.glob("*.safetensors")), default=0.0)
        with self._lock:
            key = (str(path), stamp)
            if key not in self._runs:
                self._runs = {k: v for k, v in self._runs.items() if k[0] != str(path)}
                self._runs[key] = load_run(path)
            return self._runs[key]

    def out_dir(self, name: str, what: str) -> Path:
        """A new folder for one request's files: RUNS_DIR/ui-outputs/RUN/WHAT-TIME."""
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.monotonic_ns() % 10**6:06d}"
        return self.roots.runs / OUTPUTS / Path(name).name / f"{what}-{stamp}"


def read_loss(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of the run's log.csv; none for a run that has logged nothing yet."""
    log = Path(run_dir) / "log.csv"
    if not log.is_file():
        return []
    with open(log, newline="", encoding="utf-8") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss") not in (None, "")]


def loss_frame(run_dir: Optional[Path]):
    """log.csv as a pandas frame (step, loss) for gr.LinePlot."""
    import pandas as pd

    rows = read_loss(run_dir) if run_dir is not None else []
    return pd.DataFrame(rows, columns=["step", "loss"])
