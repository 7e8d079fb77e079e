"""Run lucidrains' lightweight-gan or stylegan2-pytorch, through its own command line, on the CPU.

vs_gan.py runs this with the peers' Python (--peer-python), in their environment. Both packages assume an NVIDIA
GPU: they assert CUDA when imported and move every tensor and module with `.cuda(rank)`. Their command line, models,
losses, augmentation, EMA and sampling run unchanged from a copy of the installed package in which only device
placement is rewritten to the CPU (PATCHES; each must match, so a release that moves them fails here, loudly):

    python _gan_peer.py lightweight-gan --data FOLDER --image_size 32 ...   # the peer's own flags after its name
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGES = {"lightweight-gan": "lightweight_gan", "stylegan2": "stylegan2_pytorch"}
PATCHES = (
    (r"assert torch\.cuda\.is_available\(\)[^\n]*", "pass"),  # the import-time refusal
    (r"\.cuda\([^()]*\)", ""),  # x.cuda(rank), module.cuda(rank): stay on the CPU
    (r"torch\.device\(f'cuda:\{self\.rank\}'\)", "torch.device('cpu')"),  # lightweight-gan's loss accumulators
    (r"torch\.cuda\.device_count\(\)", "1"),  # the CLI's world size: one process, no DDP
)
MUST_MATCH = {"lightweight_gan": (0, 1, 2, 3), "stylegan2_pytorch": (0, 1, 3)}


def cpu_copy(package: str, into: Path) -> Path:
    """A copy of the installed `package` under `into` with PATCHES applied to its modules."""
    source = Path(importlib.util.find_spec(package).origin).parent  # found, not imported
    target = into / package
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    hits = [0] * len(PATCHES)
    for path in target.glob("*.py"):
        text = path.read_text()
        for i, (pattern, replacement) in enumerate(PATCHES):
            text, n = re.subn(pattern, replacement, text)
            hits[i] += n
        path.write_text(text)
    missed = [PATCHES[i][0] for i in MUST_MATCH[package] if not hits[i]]
    if missed:
        raise SystemExit(f"{package} {source}: no match for {missed}; its device placement moved, see {__file__}")
    return target


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in PACKAGES:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(PACKAGES)}}} [the peer's own flags]")
    package = PACKAGES[sys.argv[1]]
    with tempfile.TemporaryDirectory(prefix="gan-peer-") as tmp:
        cpu_copy(package, Path(tmp))
        sys.path.insert(0, tmp)
        sys.argv = [sys.argv[1], *sys.argv[2:]]
        importlib.import_module(f"{package}.cli").main()


if __name__ == "__main__":
    main()
