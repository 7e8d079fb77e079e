"""Run lucidrains' lightweight-gan or stylegan2-pytorch, through its own command line, on the CPU.

vs_gan.py runs this with the peers' Python (--peer-python), in their environment. Both packages assume an NVIDIA
GPU: they assert CUDA when imported and move every tensor and module with `.cuda(rank)`. Their command line, models,
losses, augmentation, EMA and sampling run unchanged from a copy of the installed package in which only device
placement is rewritten to the CPU (PATCHES; each must match where MUST_MATCH says, so a release that moves them
fails here, loudly). The copy is made once per package version, in the system's temporary folder, and reused:

    python _gan_peer.py lightweight-gan --data FOLDER --image_size 32 ...   # the peer's own flags after its name
"""

from __future__ import annotations

import importlib.metadata
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
# per file, the patterns that must match there (a test module that matches too does not count)
MUST_MATCH = {"lightweight_gan": {"lightweight_gan.py": (0, 1, 2), "cli.py": (3,)},
              "stylegan2_pytorch": {"stylegan2_pytorch.py": (0, 1), "cli.py": (3,)}}


def cpu_copy(package: str) -> Path:
    """The folder holding a copy of the installed `package` with PATCHES applied to its modules: made once per
    package version, next to the system's temporary files, and reused (a peer stopped by the clock leaves no copy)."""
    spec = importlib.util.find_spec(package)  # found, not imported
    source = Path(spec.origin).parent
    version = importlib.metadata.version(package.replace("_", "-"))
    home = Path(tempfile.gettempdir()) / f"diffusely-cpu-{package}-{version}"
    if (home / package).is_dir():
        return home
    work = Path(tempfile.mkdtemp(prefix=f"{home.name}-"))
    try:
        _patch(package, version, shutil.copytree(source, work / package, ignore=shutil.ignore_patterns("__pycache__")))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        work.rename(home)  # whole or absent; another process may have made it first
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
    return home


def _patch(package: str, version: str, target: Path) -> None:
    for path in target.glob("*.py"):
        text = path.read_text()
        for i, (pattern, replacement) in enumerate(PATCHES):
            text, n = re.subn(pattern, replacement, text)
            if not n and i in MUST_MATCH[package].get(path.name, ()):
                raise SystemExit(f"{package} {version}: no match for {pattern!r} in {path.name}; its device placement "
                                 f"moved, see {__file__}")
        path.write_text(text)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in PACKAGES:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(PACKAGES)}}} [the peer's own flags]")
    package = PACKAGES[sys.argv[1]]
    sys.path.insert(0, str(cpu_copy(package)))
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    importlib.import_module(f"{package}.cli").main()


if __name__ == "__main__":
    main()
