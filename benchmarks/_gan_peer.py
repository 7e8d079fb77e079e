"""Run lucidrains' lightweight-gan or stylegan2-pytorch, through its own command line, on the CPU.

vs_gan.py runs this with the peers' Python (--peer-python), in their environment. Both packages assume an NVIDIA
GPU: they assert CUDA when imported and move every tensor and module with `.cuda(rank)`. Their command line, models,
losses, augmentation, EMA and sampling run unchanged from a copy of the installed package in which only device
placement is rewritten to the CPU (PATCHES; each must match where MUST_MATCH says, so a release that moves them
fails here, loudly), with one bug fixed (lightweight-gan's --fmap_max, see PATCHES). The copy is made once per
package version and set of patches, in the system's temporary folder, and reused. Two things the CLIs get wrong
are checked or done here: a flag the CLI does not take is refused (fire would run training first and complain after
it), and --seed seeds torch, numpy and random (the CLIs seed only under DDP):

    python _gan_peer.py lightweight-gan --data FOLDER --image_size 32 ...   # the peer's own flags after its name
    python _gan_peer.py sample lightweight-gan --work WORK --load-from 3 --n 1000 --out samples.npz

`sample` draws from a checkpoint the peer saved under WORK/models/run, loaded by the peer's own Trainer, with its
generator (the EMA one past step EMA_FROM; stylegan2 untruncated), in batches of 100, and writes the images as uint8
(rounded as the peers' own image writer rounds, not through JPEG) with the images per second of the network alone:
their --generate writes JPEG, one image at a time (lightweight-gan) or three grids a call (stylegan2), neither of
which measures the generator.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import inspect
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = {"lightweight-gan": "lightweight_gan", "stylegan2": "stylegan2_pytorch"}
PATCHES = (
    (r"assert torch\.cuda\.is_available\(\)[^\n]*", "pass"),  # the import-time refusal
    (r"\.cuda\([^()]*\)", ""),  # x.cuda(rank), module.cuda(rank): stay on the CPU
    (r"torch\.device\(f'cuda:\{self\.rank\}'\)", "torch.device('cpu')"),  # lightweight-gan's loss accumulators
    (r"torch\.cuda\.device_count\(\)", "1"),  # the CLI's world size: one process, no DDP
    # not device placement but a bug (lightweight-gan issue 82, "Settings don't seem to change anything"): the CLI
    # loads the run's config before training, and config() leaves out fmap_max, so --fmap_max was always 512
    (r"(def config\(self\):\s*return \{)", r"\1'fmap_max': self.fmap_max, "),
)
# per file, the patterns that must match there (a test module that matches too does not count)
MUST_MATCH = {"lightweight_gan": {"lightweight_gan.py": (0, 1, 2, 4), "cli.py": (3,)},
              "stylegan2_pytorch": {"stylegan2_pytorch.py": (0, 1), "cli.py": (3,)}}
EMA_FROM = 20000  # both peers average their generator only after this step; before, GE is a stale copy of G


def cpu_copy(package: str) -> Path:
    """The folder holding a copy of the installed `package` with PATCHES applied to its modules: made once per
    package version and set of patches, next to the system's temporary files, and reused (a peer stopped by the
    clock leaves no copy)."""
    spec = importlib.util.find_spec(package)  # found, not imported
    source = Path(spec.origin).parent
    version = importlib.metadata.version(package.replace("_", "-"))
    patches = hashlib.sha256(repr((PATCHES, MUST_MATCH)).encode()).hexdigest()[:8]  # a new patch, a new copy
    home = Path(tempfile.gettempdir()) / f"diffusely-cpu-{package}-{version}-{patches}"
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
                raise SystemExit(f"{package} {version}: no match for {pattern!r} in {path.name}; the code it "
                                 f"rewrites moved, see {__file__}")
        path.write_text(text)


def generator(tool: str, work: Path, load_from: int, save_every: int):
    """The peer's generator at checkpoint `load_from` in WORK/models/run, loaded by the peer's own Trainer (which
    reads the run's .config.json): a function from a batch size to images in [0, 1], (batch, channels, size, size).
    Its EMA generator from step EMA_FROM on, its generator before (what the peer's EMA copy is then a stale copy of)."""
    import torch

    if tool == "lightweight-gan":
        from lightweight_gan.lightweight_gan import Trainer

        trainer = Trainer(name="run", base_dir=str(work), save_every=save_every, use_aim=False)
        trainer.load(load_from)
        gan = trainer.GAN.eval()
        net = gan.GE if trainer.steps > EMA_FROM else gan.G
        return lambda b: net(torch.randn(b, gan.latent_dim)).clamp_(0.0, 1.0)
    from stylegan2_pytorch.stylegan2_pytorch import Trainer, image_noise, styles_def_to_tensor

    trainer = Trainer(name="run", base_dir=str(work), save_every=save_every)
    trainer.load(load_from)
    gan = trainer.GAN.eval()
    style, net = (gan.SE, gan.GE) if trainer.steps > EMA_FROM else (gan.S, gan.G)
    return lambda b: net(styles_def_to_tensor([(style(torch.randn(b, net.latent_dim)), net.num_layers)]),
                         image_noise(b, trainer.image_size, device=0)).clamp_(0.0, 1.0)  # untruncated


def sample(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="_gan_peer.py sample")
    p.add_argument("tool", choices=PACKAGES)
    p.add_argument("--work", type=Path, required=True, help="the folder the peer trained in (its models/run)")
    p.add_argument("--load-from", type=int, default=-1, help="checkpoint number (-1: the last)")
    p.add_argument("--save-every", type=int, required=True, help="the --save_every it trained with")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(cpu_copy(PACKAGES[args.tool])))
    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    draw = generator(args.tool, args.work, args.load_from, args.save_every)
    with torch.no_grad():
        draw(min(args.batch, args.n))  # warm-up, not timed
        chunks, seconds = [], 0.0
        for start in range(0, args.n, args.batch):
            began = time.perf_counter()
            images = draw(min(args.batch, args.n - start))
            seconds += time.perf_counter() - began
            chunks.append(images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    with open(args.out, "wb") as f:
        np.savez(f, images=np.concatenate(chunks), images_per_second=args.n / seconds)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "sample":
        return sample(sys.argv[2:])
    if len(sys.argv) < 2 or sys.argv[1] not in PACKAGES:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(PACKAGES)}}} [the peer's own flags] | sample ...")
    package = PACKAGES[sys.argv[1]]
    sys.path.insert(0, str(cpu_copy(package)))
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 42  # the CLIs' default
    import random

    import numpy as np
    import torch

    for set_seed in (random.seed, np.random.seed, torch.manual_seed):  # the CLIs' set_seed runs under DDP only
        set_seed(seed)
    cli = importlib.import_module(f"{package}.cli")
    takes = inspect.signature(cli.train_from_folder).parameters
    unknown = [a for a in sys.argv[1:] if a.startswith("--") and a[2:].split("=")[0].replace("-", "_") not in takes]
    if unknown:
        raise SystemExit(f"{sys.argv[0]} takes no {', '.join(unknown)}")
    cli.main()


if __name__ == "__main__":
    main()
