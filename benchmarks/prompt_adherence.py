"""Prompt adherence of text-conditional models on the built-in shapes (1 or 2 shapes an image), read back
by diffusely.metrics.adherence: against the guidance scale, against training steps, for the text encoder
trained from scratch and for the frozen MiniLM one, on prompts worded as the captions are and on the
same prompts reworded ("a crimson disc over a tiny azure block against a midnight blue backdrop").

Prompts are the captions of held-out images (another seed); one sample a prompt. Everything is cached in
--out: trained runs (with snapshots at the --evals steps), the checker, and every result, so a rerun (or a
run stopped halfway) skips what is done.

    python benchmarks/prompt_adherence.py --out runs/adherence    # the real run: about 1 h on an idle 2-core CPU
    python benchmarks/prompt_adherence.py --out runs/adherence --grid docs/prompts.png   # then docs/text.md's picture
    python benchmarks/prompt_adherence.py --out /tmp/adh --tiny   # a smoke test, a few minutes
    python benchmarks/prompt_adherence.py --out runs/adherence --encoder-ceiling   # what MiniLM alone carries

With --paraphrases K the models train on each caption and K paraphrases of it (diffusely.data.shapes.
PARAPHRASES: "a huge scarlet wedge", never a word of the rewording), which shows how far caption
augmentation carries an encoder to words it never saw in training.

Measured while sharing 2 cores with other jobs: 800 steps of batch 16 took 9 minutes, and scoring
60 prompts about a minute a setting. The real run is 4000 steps of batch 32 for each encoder, about
20 minutes each on an idle machine, plus 16 settings of 200 prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

from diffusely.checkpoint import CHECKPOINT, CONFIG, load_checkpoint, load_run
from diffusely.config import DataConfig, RunConfig, TextConfig, TrainConfig
from diffusely.data import render_shapes, to_uint8
from diffusely.metrics.adherence import (ATTRIBUTES, SYNONYMS, fit_adherence_checker, load_checker, parse_caption, reword,
                                         save_checker)
from diffusely.nets import UNetConfig
from diffusely.pipelines import generate
from diffusely.text import TOKENIZER
from diffusely.train import train

PROMPT_SEED = 12_345  # held-out images: the training data is seed 0
GRID_PROMPTS = [
    "a large red circle on a navy background",
    "a small yellow square on a dark green background",
    "a large white triangle on a light blue background",
    "a large blue cross above a small orange circle on a beige background",
    "a small green square left of a large pink triangle on a dark gray background",
    "a big crimson disc against a midnight blue backdrop",
    "a tiny azure block to the right of a big golden pyramid against a sand backdrop",
]


def run_config(args, encoder: str) -> RunConfig:
    return RunConfig(
        model=UNetConfig(channels=args.channels, blocks_per_level=1, attention_levels=(len(args.channels) - 1,)),
        # flips would swap left and right
        data=DataConfig(source="shapes", image_size=32, max_shapes=2, flip=False, paraphrases=args.paraphrases),
        train=TrainConfig(steps=args.steps, batch_size=args.batch_size, checkpoint_every=math.gcd(*args.evals),
                          sample_every=args.steps),
        text=TextConfig(encoder=encoder.removesuffix(f"-para{args.paraphrases}") if args.paraphrases else encoder))


def snapshot_dir(out: Path, encoder: str, step: int) -> Path:
    return out / encoder / f"step-{step:06d}"


def train_encoder(args, encoder: str) -> None:
    """Train (or resume) the run for `encoder`, copying it into step-N/ at each eval step."""
    run_dir = args.out / encoder
    if all((snapshot_dir(args.out, encoder, s) / CHECKPOINT).is_file() for s in args.evals):
        return
    resume = (run_dir / CONFIG).is_file()
    if resume and (run_dir / CHECKPOINT).is_file() and load_checkpoint(run_dir).step >= args.steps:
        raise SystemExit(f"{run_dir} is trained but lacks snapshots at {args.evals}; delete it to train again")

    def snapshot(step: int) -> None:
        if step in args.evals:
            target = snapshot_dir(args.out, encoder, step)
            target.mkdir(parents=True, exist_ok=True)
            for name in (CONFIG, TOKENIZER, CHECKPOINT):
                if (run_dir / name).is_file():
                    shutil.copy2(run_dir / name, target / name)

    t = time.perf_counter()
    print(f"training {encoder} for {args.steps} steps{' (resumed)' if resume else ''} ...", flush=True)
    train(run_config(args, encoder), run_dir, resume=resume, progress=args.progress, on_checkpoint=snapshot)
    print(f"  {time.perf_counter() - t:.0f} s", flush=True)


def evaluate(args, checker, results: dict, encoder: str, step: int, guidance: float, wording: str,
             prompts: list[str], scenes) -> dict:
    key = f"{encoder}/{step}/{guidance:g}/{wording}/{len(prompts)}"
    if key not in results:
        run = load_run(snapshot_dir(args.out, encoder, step))
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # words the scratch tokenizer never saw: that is what "reworded" measures
            images = torch.cat(list(generate(run, len(prompts), prompts=prompts, guidance=guidance, seed=PROMPT_SEED,
                                             batch_size=args.sample_batch, progress=False)))
        results[key] = checker.adherence(to_uint8(images), scenes)
        results[key]["seconds"] = time.perf_counter() - t
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    return results[key]


def row(label: str, scores: dict) -> str:
    return f"{label:<34}" + "".join(f"{scores.get(k, float('nan')):>11.2f}" for k in (*ATTRIBUTES, "all"))


def header(label: str) -> str:
    return f"{label:<34}" + "".join(f"{k:>11}" for k in (*ATTRIBUTES, "all"))


def grid(args, path: Path) -> None:
    """Rows: GRID_PROMPTS; columns: --grid-samples samples from each trained encoder's final run (guidance 3)."""
    from diffusely import viz

    rows, labels = [], []
    encoders = [e for e in args.encoders if (snapshot_dir(args.out, e, args.steps) / CHECKPOINT).is_file()]
    if not encoders:
        raise SystemExit(f"no trained run in {args.out}: run the benchmark first")
    per_encoder = {}
    for encoder in encoders:
        run = load_run(snapshot_dir(args.out, encoder, args.steps))
        prompts = [p for p in GRID_PROMPTS for _ in range(args.grid_samples)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scratch encoder's unknown words are the point
            per_encoder[encoder] = torch.cat(list(generate(run, len(prompts), prompts=prompts, guidance=3.0,
                                                           seed=0, batch_size=args.sample_batch, progress=False)))
        labels += [{"scratch": "from scratch", "minilm": "MiniLM"}.get(encoder, encoder)] + [""] * (args.grid_samples - 1)
    for i in range(len(GRID_PROMPTS)):
        rows.append(torch.cat([x[i * args.grid_samples:(i + 1) * args.grid_samples] for x in per_encoder.values()]))
    viz.save_strip(rows, path, labels=labels, row_labels=GRID_PROMPTS, scale=3)
    print(f"grid: {path}")


def encoder_ceiling(prompts: list[str], reworded: list[str], count: int = 10_000) -> None:
    """How much of a prompt MiniLM's sentence embedding alone carries: for each held-out prompt (and its
    rewording), the nearest distinct training caption by cosine similarity, and whether that caption asks
    for the same first shape, its color and the background. A model conditioned on these embeddings can
    hardly follow a rewording better than this."""
    from diffusely.text import load_sentence_transformer

    model = load_sentence_transformer("minilm", "cpu")
    captions = sorted(set(render_shapes(count, size=32, seed=0, max_shapes=2).captions))
    bank = model.encode(captions, batch_size=256, normalize_embeddings=True, convert_to_tensor=True)
    print(f"\nMiniLM's nearest training caption ({len(captions)} distinct) asks for the same ...")
    print(f"{'wording':<12}{'shape':>8}{'color':>8}{'background':>12}")
    for wording, texts in (("captions", prompts), ("reworded", reworded)):
        nearest = (model.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_tensor=True) @ bank.T).argmax(1)
        pairs = [(parse_caption(p), parse_caption(captions[j])) for p, j in zip(prompts, nearest.tolist())]
        agree = lambda f: sum(f(a) == f(b) for a, b in pairs) / len(pairs)  # noqa: E731
        print(f"{wording:<12}{agree(lambda s: s.shapes[0].shape):8.2f}{agree(lambda s: s.shapes[0].color):8.2f}"
              f"{agree(lambda s: s.background):12.2f}")
    word_ceiling(model)


def word_ceiling(model) -> None:
    """Word by word: for each color (background, shape) the sentence with its reworded word, and the nearest by
    MiniLM's cosine similarity of the same sentence with each training word (the captions' and the
    paraphrases' of diffusely.data.shapes.PARAPHRASES): is that word one of the right color?"""
    from diffusely.data.shapes import BACKGROUNDS, CLASS_NAMES, COLORS, PARAPHRASES

    print("\nword by word: reworded words whose nearest training word (captions' and paraphrases') means the same")
    for kind, names, template in (("color", list(COLORS), "a small {} circle on a gray background"),
                                  ("background", list(BACKGROUNDS), "a small red circle on a {} background"),
                                  ("shape", list(CLASS_NAMES), "a small red {} on a gray background")):
        bank = [(template.format(w), name) for name in names for w in [name, *PARAPHRASES.get(name, [])]]
        keys = model.encode([t for t, _ in bank], normalize_embeddings=True, convert_to_tensor=True)
        queries = model.encode([template.format(SYNONYMS[n]) for n in names], normalize_embeddings=True,
                               convert_to_tensor=True)
        nearest = [bank[j][1] for j in (queries @ keys.T).argmax(1).tolist()]
        print(f"  {kind}: {sum(a == b for a, b in zip(names, nearest))} of {len(names)}  ("
              + ", ".join(f"{SYNONYMS[n]} -> {m}" for n, m in zip(names, nearest)) + ")")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="Folder for runs, the checker and results.json (reused).")
    p.add_argument("--steps", type=int, default=4000, help="Training steps (the default budget, TrainConfig's).")
    p.add_argument("--evals", default="1000,2000,4000", help="Steps at which to measure (the last must be --steps).")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", default="32,64,64", help="U-Net channels (the demo's network).")
    p.add_argument("--encoders", default="scratch,minilm")
    p.add_argument("--paraphrases", type=int, default=0,
                   help="Train on each caption and K paraphrases of it (words the reworded prompts never use); "
                        "runs and results are named ENCODER-paraK.")
    p.add_argument("--guidance", default="1,3,7")
    p.add_argument("--step-guidance", type=float, default=3.0, help="Guidance of the adherence-against-steps table.")
    p.add_argument("--prompts", type=int, default=200, help="Held-out prompts (one sample each).")
    p.add_argument("--sample-batch", type=int, default=100)
    p.add_argument("--checker-images", type=int, default=3000)
    p.add_argument("--checker-steps", type=int, default=400)
    p.add_argument("--grid", type=Path, help="Write docs/text.md's grid of prompts and samples here (after training).")
    p.add_argument("--grid-samples", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="A smoke test: tiny network, few steps and prompts.")
    p.add_argument("--encoder-ceiling", action="store_true",
                   help="Only measure how much MiniLM's sentence embeddings carry of a reworded prompt (a minute).")
    p.add_argument("--progress", action="store_true", help="Show training progress bars.")
    args = p.parse_args()
    if args.tiny:
        args.steps, args.evals, args.channels, args.batch_size = 20, "10,20", "16,32", 8
        args.prompts, args.checker_images, args.checker_steps, args.grid_samples = 8, 300, 50, 2
    args.evals = sorted(int(s) for s in args.evals.split(","))
    args.channels = tuple(int(c) for c in args.channels.split(","))
    args.encoders = [e + (f"-para{args.paraphrases}" if args.paraphrases else "") for e in args.encoders.split(",")]
    args.guidance = [float(g) for g in args.guidance.split(",")]
    if args.evals[-1] != args.steps:
        p.error(f"the last of --evals must be --steps ({args.steps}), got {args.evals}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    t = time.perf_counter()
    checker_path = args.out / "checker.safetensors"
    if checker_path.is_file():
        checker = load_checker(checker_path)
    else:
        checker = fit_adherence_checker(32, count=args.checker_images, steps=args.checker_steps, seed=1)
        save_checker(checker_path, checker)
    held_out = render_shapes(args.prompts, size=32, seed=PROMPT_SEED, max_shapes=2)
    prompts = held_out.captions
    scenes = [parse_caption(c) for c in prompts]
    reworded = [reword(c) for c in prompts]
    print(f"checker ready ({time.perf_counter() - t:.0f} s); {len(prompts)} held-out prompts, e.g.\n"
          f"  {prompts[0]!r}\n  reworded: {reworded[0]!r}", flush=True)
    if args.encoder_ceiling:
        encoder_ceiling(prompts, reworded)
        return
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    for encoder in args.encoders:
        train_encoder(args, encoder)
    if args.grid:
        grid(args, args.grid)
        return

    print("\nadherence (fraction of asked attributes shown; all: images with every one right)")
    print(header("real images (the checker's ceiling)"))
    print(row("", checker.adherence(held_out.images, scenes)), flush=True)
    final = args.steps
    print(f"\nagainst guidance, after {final} steps (batch {args.batch_size})")
    print(header("encoder, guidance, wording"))
    for encoder in args.encoders:
        for wording, texts in (("captions", prompts), ("reworded", reworded)):
            for g in args.guidance:
                scores = evaluate(args, checker, results, encoder, final, g, wording, texts, scenes)
                print(row(f"{encoder}, w={g:g}, {wording}", scores), flush=True)
    print(f"\nagainst training steps, guidance {args.step_guidance:g}, caption wording")
    print(header("encoder, steps"))
    for encoder in args.encoders:
        for step in args.evals:
            scores = evaluate(args, checker, results, encoder, step, args.step_guidance, "captions", prompts, scenes)
            print(row(f"{encoder}, {step} steps", scores), flush=True)
    print(f"\n(total {time.perf_counter() - t:.0f} s; results cached in {results_path})")


if __name__ == "__main__":
    sys.exit(main())
