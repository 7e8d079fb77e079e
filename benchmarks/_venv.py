"""A virtual environment of its own for a peer or client that diffusely's environment cannot hold (torchvision's
PyPI wheels are CUDA builds whose operators do not load under the CPU torch, so they bring a torch of their own).
Made once, and probed by importing its packages each time, so a half-made one (an install stopped halfway) is made
again rather than failing later inside a worker. Standard library only: workers import their own modules from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ensure_venv(path: Path, packages, modules: str, env: dict, what: str, size: str) -> Path:
    """The python of the virtual environment at `path`, holding `packages` (pip specifiers) and importing
    `modules` ("torch, torchvision, ..."); made (minutes, about `size` on disk) when missing or broken. `env` is
    the environment the probe runs in (the worker's); `what` names it in messages ("the YOLO environment")."""
    python = path / "bin" / "python"
    probe = [str(python), "-c", f"import {modules}"]
    if python.is_file() and subprocess.run(probe, capture_output=True, env=env).returncode == 0:
        return python
    print(f"making {what} in {path} (once: {', '.join(packages)}; minutes, ~{size})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    done = subprocess.run(probe, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"Error: {what} {path} does not import its packages:\n{done.stderr}")
    return python
