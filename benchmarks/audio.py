"""Diffusion on sound: diffusely on the built-in `sounds` against the real clips and two peers.

The protocol of the SaShiMi paper (Goel et al. 2022), as DiffWave's SC09 table reports it: a classifier trained on
the reference data (here the log-mel spectrogram classifier of diffusely.audio, trained on the training clips)
scores every set of clips by
  FD        Fréchet distance between its 128-d features and the training clips' (lower is better; comparable within
            one invocation only: the classifier is trained anew)
  IS        exp E_x KL(p(y|x) || p(y)): confident and varied (the six classes: at most 6)
  mIS       modified IS, exp E_{x,x'} KL(p(y|x) || p(y|x')) (Gurumurthy et al. 2017): within-class variety too
  AM        KL(p_train(y) || p(y)) + E_x H(p(y|x)) (Zhou et al. 2018): lower is better
  accuracy  share of conditional samples the classifier puts in the class asked for
The real rows are the ceiling: the training clips themselves (FD 0 by construction) and held-out clips (another
seed, never trained on: the FD floor a perfect model reaches with this many samples).

diffusely trains for --minutes of CPU time (steps estimated from a short timing run) with class labels, then draws
--samples clips, classes in turn, with guidance (Heun, --steps). The peers, lucidrains' `audio-diffusion-pytorch`
(DiffusionModel, UNetV0, v-diffusion) and `denoising-diffusion-pytorch`'s GaussianDiffusion1D (Unet1D), train the
same minutes on the same clips (linear waveforms in [-1, 1], as their users feed them and as diffusely's waveform
model sees them; both unconditional, the way their 1-D models come; their samples are companded to be scored) in an
environment this script makes (--peers): torch 2.11 (what torchaudio pairs with today), torchaudio, torchvision
(denoising-diffusion-pytorch imports it), both packages from PyPI.

    python benchmarks/audio.py --out bench/audio              # diffusely and the real rows: ~2 hours
    python benchmarks/audio.py --out bench/audio --peers      # and the peers: ~3.5 hours more
    python benchmarks/audio.py --out bench/audio --peers audio-diffusion-pytorch   # one peer (kept for the next)
    python benchmarks/audio.py --out /tmp/audio --quick       # ~4 minutes on one busy core: the script works

Rerun with the same --out, it keeps what is done: a killed diffusely run resumes from its last checkpoint (its
planned steps and minutes so far are in OUT/diffusely-plan.json), its drawn clips and each peer's are scored
again, not redrawn. So `--peers` can be added to a finished run, and only the peers train.

Writes OUT/results.json, OUT/table.md, OUT/samples.png (generated clips: waveform over log-mel spectrogram) and
OUT/real.png (training clips, the same picture), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PEERS = ("audio-diffusion-pytorch", "denoising-diffusion-pytorch")
# torchaudio 2.11.1 is built against a torch 2.11.1 that PyPI does not have: beside torch 2.11.0 its library fails
# to load (undefined symbol torch_exception_get_what_without_backtrace), so both are pinned to 2.11.0
PEER_PACKAGES = ["torch==2.11.0", "torchaudio==2.11.0", "torchvision==0.26.0", "audio-diffusion-pytorch",
                 "denoising-diffusion-pytorch", "numpy"]


# ------------------------------------------------------------------------------ scores


def scores(features: np.ndarray, probs: np.ndarray, reference: dict, asked: np.ndarray | None = None) -> dict:
    """FD against the reference features, IS, modified IS, AM score and (where classes were asked) accuracy."""
    from diffusely.metrics.frechet import feature_statistics, frechet_distance

    eps = 1e-12
    mu, sigma = feature_statistics(features)
    marginal = probs.mean(0)
    kl = (probs * (np.log(probs + eps) - np.log(marginal + eps))).sum(1)
    logp = np.log(probs + eps)
    pairwise = (probs[:, None, :] * (logp[:, None, :] - logp[None, :, :])).sum(-1)  # KL(p_i || p_j)
    entropy = -(probs * logp).sum(1).mean()
    am = (reference["marginal"] * (np.log(reference["marginal"] + eps) - np.log(marginal + eps))).sum() + entropy
    fd = max(0.0, frechet_distance(mu, sigma, reference["mu"], reference["sigma"]))  # not -0.00 from rounding
    row = {"FD": fd, "IS": float(np.exp(kl.mean())),
           "mIS": float(np.exp(pairwise.mean())), "AM": float(am), "accuracy": None}
    if asked is not None:
        row["accuracy"] = float((probs.argmax(1) == asked).mean())
    return row


def embed(net, clips: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) companded clips in [-1, 1] -> the classifier's (features, probabilities) as numpy arrays."""
    import torch

    from diffusely.audio import classify

    features, probs = classify(net, torch.from_numpy(clips).float()[:, None], rate)
    return features.numpy().astype(np.float64), probs.numpy().astype(np.float64)


def real_clips(codes: np.ndarray) -> np.ndarray:
    """(N, L, 1) μ-law codes -> (N, L) companded clips in [-1, 1], as training reads them (to_tensor)."""
    from diffusely.data import to_tensor

    return to_tensor(codes)[:, 0].numpy()


def classifier(train_set, rate: int, steps: int):
    """The classifier fitted to the training clips, and their features and probabilities under it with the
    reference statistics the scores compare against: (net, features, probs, reference)."""
    import torch

    from diffusely import audio

    clips = real_clips(train_set.images)
    net = audio.train_sound_classifier(torch.from_numpy(clips)[:, None], torch.from_numpy(train_set.labels), 6, rate,
                                       steps=steps)
    features, probs = embed(net, clips, rate)
    reference = {"mu": features.mean(0), "sigma": np.cov(features, rowvar=False), "marginal": probs.mean(0)}
    return net, features, probs, reference


def steps_in(minutes: float, config, probe_dir: Path, data) -> int:
    """The steps of `config` that fit in `minutes`: a 20-step timing run in probe_dir, steps 10 to 20 of its log.csv
    (past the start-up). On a CPU shared with other work the estimate can be off by 2x."""
    import csv
    import shutil

    from diffusely.train import train

    shutil.rmtree(probe_dir, ignore_errors=True)
    config.train.steps = 20
    train(config, probe_dir, progress=False, data=data)
    with open(probe_dir / "log.csv") as f:
        seconds = {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(f)}
    return max(10, int(minutes * 60 / ((seconds[20] - seconds[10]) / 10)))


# ------------------------------------------------------------------------------ diffusely


def diffusely_config(args, length: int):
    from diffusely.options import new_run_config

    widths = (32, 64, 128) if args.quick else (64, 128, 256)
    config = new_run_config("sounds", {"image_size": length, "classes": True, "channels": widths, "batch_size": 16,
                                       "audio_model": args.audio_model,
                                       "seed": 0, "log_every": 10, "checkpoint_every": 10 ** 6,
                                       "sample_every": 10 ** 6})
    config.data.sample_rate = args.rate
    if args.patch_size:
        config.model.patch_size = args.patch_size
    return config


def train_diffusely(args, data, length: int, out: Path) -> tuple[Path, dict]:
    """Train for --minutes: a timing run first gives the steps that fit (steps_in), so the run trains with its own lr
    schedule (the peers stop on the clock instead); the table's "train s" says what each model got.
    Returns the run directory and its facts."""
    import shutil

    from diffusely._files import atomic_write_text
    from diffusely.train import train

    run_dir, plan_path = out / "diffusely", out / "diffusely-plan.json"
    written = json.loads(diffusely_config(args, length).to_json())  # the run asked for, as config.json holds it
    asked = {"minutes": args.minutes, "rate": args.rate, "seconds": args.seconds, "count": args.count,
             "run": {k: written[k] for k in ("model", "diffusion", "data")}}

    if plan_path.exists():  # planned before: a killed run resumes from its last checkpoint, a finished one is kept
        plan = json.loads(plan_path.read_text())
        if plan.get("asked") != asked:
            raise SystemExit(f"{out} holds another run than the one asked for (other options, or one made by another "
                             f"version of diffusely): choose another --out")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # a run with no plan was started by a version without plans
        for stale in out.glob("diffusely-samples-*.npz"):  # drawn by that run
            stale.unlink()
        steps = steps_in(args.minutes, diffusely_config(args, length), out / "probe", data)
        plan = {"asked": asked, "steps": steps, "done": 0, "train_seconds": 0.0}
        atomic_write_text(plan_path, json.dumps(plan))
    if plan["done"] < plan["steps"]:
        config = diffusely_config(args, length)
        config.train.steps = plan["steps"]
        config.train.warmup_steps = min(config.train.warmup_steps, config.train.steps // 10)
        config.train.checkpoint_every = max(50, plan["steps"] // 20)
        spent, start = plan["train_seconds"], time.perf_counter()

        def saved(step: int) -> None:  # the plan follows the checkpoints, so resumed minutes add up
            plan.update(done=step, train_seconds=spent + time.perf_counter() - start)
            atomic_write_text(plan_path, json.dumps(plan))

        train(config, run_dir, resume=(run_dir / "config.json").exists(), progress=not args.quick, data=data,
              on_checkpoint=saved)
    return run_dir, {"steps": plan["steps"], "train_seconds": plan["train_seconds"]}


def sample_diffusely(run_dir: Path, n: int, steps: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """n conditional clips (classes in turn, guidance 2), their class indices and the sampling seconds."""
    import torch

    from diffusely.checkpoint import load_run
    from diffusely.pipelines import generate

    run = load_run(run_dir)
    asked = np.arange(n) % len(classes)
    start = time.perf_counter()
    x = torch.cat(list(generate(run, n, steps=steps, classes=[classes[i] for i in asked], batch_size=64,
                                progress=False)))
    return x[:, 0].numpy(), asked, time.perf_counter() - start


# ------------------------------------------------------------------------------ peers (run inside their environment)


def peer_environment(out: Path) -> Path:
    """A virtual environment with the peers' packages (made once, reused): its python."""
    env = out / "peer-env"
    python = env / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    return python


def build_peer(name: str, length: int):
    """The peer's model: a module whose forward(x) is the training loss and sample(n) draws (n, 1, length)."""
    import torch

    if name == "audio-diffusion-pytorch":
        from audio_diffusion_pytorch import DiffusionModel, UNetV0, VDiffusion, VSampler

        model = DiffusionModel(net_t=UNetV0, in_channels=1, channels=[32, 64, 128, 256], factors=[1, 4, 4, 2],
                               items=[1, 2, 2, 2], attentions=[0, 0, 1, 1], attention_heads=4, attention_features=32,
                               diffusion_t=VDiffusion, sampler_t=VSampler)
        model.draw = lambda n: model.sample(torch.randn(n, 1, length), num_steps=18)
        return model
    from denoising_diffusion_pytorch import GaussianDiffusion1D, Unet1D

    diffusion = GaussianDiffusion1D(Unet1D(dim=32, dim_mults=(1, 2, 4, 8), channels=1), seq_length=length,
                                    timesteps=1000, sampling_timesteps=18, objective="pred_v")
    # it takes data in [0, 1] (auto_normalize maps it to [-1, 1]) and returns samples in [0, 1]
    diffusion.loss_of = lambda x: diffusion((x + 1) / 2)
    diffusion.draw = lambda n: diffusion.sample(batch_size=n) * 2 - 1
    return diffusion


def run_peer(name: str, data_path: Path, minutes: float, n: int, out_path: Path) -> None:
    """Inside the peer environment: train `name` on the clips in data_path for `minutes`, write n samples and the
    timings to out_path (.npz). Imports no diffusely."""
    import torch

    clips = torch.from_numpy(np.load(data_path)["train"]).float()[:, None]
    torch.manual_seed(0)
    model = build_peer(name, clips.shape[-1])
    loss_of = getattr(model, "loss_of", model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    g, steps, start = torch.Generator().manual_seed(0), 0, time.perf_counter()
    while time.perf_counter() - start < minutes * 60:
        loss = loss_of(clips[torch.randint(0, len(clips), (16,), generator=g)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    train_seconds, start = time.perf_counter() - start, time.perf_counter()
    with torch.no_grad():
        x = torch.cat([model.draw(min(64, n - i)) for i in range(0, n, 64)])[:, 0].clamp(-1, 1)
    # whole or absent: the benchmark reuses a peer's file when rerun (diffusely's atomic_write is not installed here)
    tmp = Path(out_path).with_suffix(".tmp.npz")
    np.savez(tmp, samples=x.numpy(), steps=steps, train_seconds=train_seconds,
             sample_seconds=time.perf_counter() - start)
    tmp.replace(out_path)


def peers(args, train_clips: np.ndarray, out: Path, names) -> dict:
    """Each peer named trained and sampled in the peer environment: {name: (samples, facts)}."""
    python = peer_environment(out)
    np.savez(out / "peer-data.npz", train=train_clips)
    results = {}
    for name in names:
        result = out / f"peer-{name}-{args.samples}.npz"  # its minutes are the plan's
        if not result.exists():  # a peer already trained and sampled is scored again, not retrained
            subprocess.run([str(python), __file__, "--peer", name, "--peer-data", str(out / "peer-data.npz"),
                            "--minutes", str(args.minutes), "--samples", str(args.samples), "--out", str(result)],
                           check=True, env={**os.environ, "PYTHONPATH": ""})
        got = np.load(result)
        results[name] = (got["samples"], {k: float(got[k]) for k in ("steps", "train_seconds", "sample_seconds")})
    return results


# ------------------------------------------------------------------------------ the benchmark


def table(rows: list[dict]) -> str:
    head = ("| clips | FD ↓ | IS ↑ | mIS ↑ | AM ↓ | accuracy ↑ | train steps | train s "
            "| sampling s per s of audio |")
    lines = [head, "|" + " --- |" * 9]
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(f"| {r['name']} | {r['FD']:.2f} | {r['IS']:.2f} | {r['mIS']:.2f} | {r['AM']:.3f} | "
                     f"{fmt(r['accuracy'], '.3f')} | {fmt(r.get('steps'), 'd')} | "
                     f"{fmt(r.get('train_seconds'), '.0f')} | {fmt(r.get('rtf'), '.2f')} |")
    return "\n".join(lines)


def main(args) -> None:
    import torch

    from diffusely import audio
    from diffusely._files import atomic_write
    from diffusely.data import Dataset
    from diffusely.data.sounds import render_sounds

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    length = int(args.rate * args.seconds)
    train_set = render_sounds(args.count, length, args.rate, seed=0)
    held_out = render_sounds(args.held_out, length, args.rate, seed=1)
    start = time.perf_counter()
    net, features, probs, reference = classifier(train_set, args.rate, args.classifier_steps)
    print(f"classifier: {args.classifier_steps} steps in {time.perf_counter() - start:.0f} s")
    rows = [{"name": "real: training clips", **scores(features, probs, reference, train_set.labels)},
            {"name": "real: held-out clips",
             **scores(*embed(net, real_clips(held_out.images), args.rate), reference, held_out.labels)}]
    data = Dataset(train_set.images, train_set.labels, train_set.class_names, None, None, "sounds")
    run_dir, facts = train_diffusely(args, data, length, out)
    drawn = out / f"diffusely-samples-{args.samples}-{args.steps}.npz"
    if not drawn.exists():  # drawn once: a rerun that adds the peers scores the same clips
        samples, asked, seconds = sample_diffusely(run_dir, args.samples, args.steps, train_set.class_names)

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
                np.savez(f, samples=samples, asked=asked, seconds=seconds)
        atomic_write(drawn, write)
    got = np.load(drawn)
    samples, asked, seconds = got["samples"], got["asked"], float(got["seconds"])
    rows.append({"name": f"diffusely ({args.minutes:g} min, Heun {args.steps})",
                 **scores(*embed(net, samples, args.rate), reference, asked), **facts,
                 "rtf": seconds / (args.samples * args.seconds)})
    audio.save_grid(torch.from_numpy(samples[:8])[:, None], out / "samples.png", args.rate)
    audio.save_grid(torch.from_numpy(real_clips(train_set.images[:8]))[:, None], out / "real.png", args.rate)
    if args.peers is not None:  # --peers alone: both
        names = args.peers or PEERS
        for name, (peer_samples, peer_facts) in peers(args, audio.from_codes(train_set.images), out, names).items():
            rows.append({"name": f"{name} ({args.minutes:g} min, unconditional)",
                         **scores(*embed(net, audio.mu_compress(np.clip(peer_samples, -1, 1)), args.rate), reference),
                         **peer_facts,
                         "rtf": peer_facts["sample_seconds"] / (args.samples * args.seconds)})
    for row in rows:
        row["steps"] = int(row["steps"]) if row.get("steps") is not None else None
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=float))
    print(text)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="A few minutes: 0.256 s clips (2048 samples: the U-Net takes "
                   "multiples of 4 x the patch size), a smaller U-Net, 1.5 minutes of training.")
    p.add_argument("--peers", nargs="*", choices=PEERS, metavar="PEER",
                   help="Also train the peers, or those named (makes OUT/peer-env; hours: see the top of the file).")
    p.add_argument("--minutes", type=float, help="Training minutes a model (default 60; --quick 1.5).")
    p.add_argument("--rate", type=int, default=8000)
    p.add_argument("--seconds", type=float,
                   help="Clip length (default 1; --quick 0.256); rate x seconds a multiple of 4 x the patch size.")
    p.add_argument("--count", type=int, help="Training clips (default 1200; --quick 600).")
    p.add_argument("--held-out", type=int, help="Held-out clips (default 600; --quick 240).")
    p.add_argument("--samples", type=int, help="Generated clips a model (default 600; --quick 120).")
    p.add_argument("--audio-model", choices=("spectrogram", "waveform"),
                   help="What diffusely's network learns (default: the audio default, spectrogram).")
    p.add_argument("--patch-size", type=int, help="The U-Net's patch size (default: the audio model's: spectrogram 8, "
                   "waveform 4).")
    p.add_argument("--steps", type=int, default=18, help="Heun steps (2 x steps - 1 network calls).")
    p.add_argument("--classifier-steps", type=int, help="Classifier training steps (default 400; --quick 150).")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)  # the peer environment's entry point
    p.add_argument("--peer-data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (("minutes", 60.0, 1.5), ("seconds", 1.0, 0.256), ("count", 1200, 600),
                              ("held_out", 600, 240), ("samples", 600, 120), ("classifier_steps", 400, 150)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    return args


if __name__ == "__main__":
    arguments = parse()
    if arguments.peer:
        run_peer(arguments.peer, Path(arguments.peer_data), arguments.minutes, arguments.samples, Path(arguments.out))
    else:
        main(arguments)
