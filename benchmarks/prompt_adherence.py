"""Prompt adherence of text-to-image models on the built-in shapes, against minutes of training on this machine.

Three contenders train on the same data (the built-in shapes, one to three shapes an image, with their captions;
10% of captions dropped for classifier-free guidance), each for --minutes of wall-clock time, snapshotted at each
of --marks minutes:

  latent     what `diffusely train shapes --text` makes: an autoencoder of its own first (its minutes count), then a
             U-Net (one block a level, self- and cross-attention at every level) on its 8 x 8 x 4 latents
  pixel      the old pixel setting: 32 x 32 pixels, U-Net channels 32,64,64, attention at level 2 only
             (`--pixels`; docs/text.md's first measurements)
  diffusers  diffusers' UNet2DConditionModel on the latent run's latents with the same text encoder, trained by
             diffusers' own recipe (benchmarks/_text_peer.py); the autoencoder's minutes count for it too

Prompts are the captions of held-out images (another seed), one sample each, read back and scored per attribute by
diffusely.metrics.adherence, for prompts of one or two objects (the bar) and of three apart: at guidance
--curve-guidance at every mark (the curve), and at each --guidance and with the prompts reworded at the last.
The held-out images themselves are the ceiling, and, through the latent run's autoencoder, the latent contenders'.
A binding probe closes it: "a large red circle REL a large blue square", REL each of the four relations, whether
both objects come out as asked and the circle lies where REL says (or at least along its axis).
Everything is cached in --out (runs, snapshots, the checker, per-image scores), so a rerun, or a run stopped
halfway, goes on where it was.

    python benchmarks/prompt_adherence.py --out runs/adherence               # the full run (see --help's epilog)
    python benchmarks/prompt_adherence.py --out runs/adherence --grid docs/prompts.png   # then the picture
    python benchmarks/prompt_adherence.py --out /tmp/adh --quick             # a smoke test: about two minutes
    python benchmarks/prompt_adherence.py --out runs/adherence --encoder-ceiling   # what MiniLM alone carries
    python benchmarks/prompt_adherence.py --out runs/p-mean --contenders latent --minutes 20 --marks 10,20 \
        --guidance 3 --set diffusion.P_mean=-0.51                                  # a study: the default, one change
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

from diffusely.checkpoint import CHECKPOINT, CONFIG, MODEL, load_latent_space, load_run, read_config
from diffusely.data import Dataset, load_dataset, render_shapes, to_tensor, to_uint8
from diffusely.metrics.adherence import (ATTRIBUTES, RELATIONS, SYNONYMS, fit_adherence_checker, load_checker,
                                         parse_caption, reword, save_checker, summarise)
from diffusely.options import new_run_config
from diffusely.pipelines import generate
from diffusely.samplers import SAMPLERS, nfe
from diffusely.text import TOKENIZER, WordTokenizer
from diffusely.train import train
from diffusely.train.autoencoder import reconstruct
from diffusely.train.latents import LATENTS, TEXT_MAX_SHAPES, prepare_own_autoencoder

from _settings import apply, settings

PROMPT_SEED = 12_345  # held-out images: the training data is seed 0
CONTENDERS = ("latent", "pixel", "diffusers")
GRID_PROMPTS = [
    "a large red circle on a navy background",
    "a small yellow square on a dark green background",
    "a large blue cross above a small orange circle on a beige background",
    "a small green square left of a large pink triangle on a dark gray background",
    "a small red circle left of a small blue square on a light gray background",
    "a small blue circle left of a small red square on a light gray background",
    "a small white triangle above a small red square and below a small cyan circle on a navy background",
    "a big crimson disc against a midnight blue backdrop",
]
GROUPS = {"1-2 objects": (1, 2), "3 objects": (3,)}


# ---------------------------------------------------------------------------------------------
# training for minutes


def options(args, name: str) -> dict:
    """The CLI options of each contender: the latent default as `train shapes --text` takes them, the old pixel
    setting as `--pixels` with docs/text.md's network."""
    common = {"text": True, "text_encoder": args.encoder, "batch_size": args.batch_size, "max_shapes": TEXT_MAX_SHAPES,
              "checkpoint_every": args.checkpoint_every, "sample_every": 10**7, "keep": 1,
              "image_size": args.image_size}
    if args.channels:
        common["channels"] = args.channels
    if name == "pixel":
        return {**common, "pixels": True, "channels": args.channels or (32, 64, 64), "blocks_per_level": 1,
                "attention_levels": (len(args.channels or (32, 64, 64)) - 1,)}
    return common


def training_data(args) -> Dataset:
    """The built-in shapes as `train shapes --text` loads them (--quick: the first --images of them)."""
    if not args.images:
        return load_dataset("shapes", args.image_size, captions=True, max_shapes=TEXT_MAX_SHAPES)
    data = render_shapes(args.images, size=args.image_size, seed=0, max_shapes=TEXT_MAX_SHAPES)
    return Dataset(data.images, data.labels, data.class_names, data.captions, data.boxes, "shapes")


class Clock:
    """Seconds of training a contender has had, kept at each checkpoint in RUN/clock.json (with the autoencoder's
    seconds as its start), so a benchmark stopped and run again goes on counting from the checkpoint it resumes.
    `first` is the step and seconds of the first checkpoint: the speed is measured from there, past the one-time
    costs before it (encoding the latents, the first compile)."""

    def __init__(self, run_dir: Path, start_seconds: float = 0.0):
        self.path = run_dir / "clock.json"
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.start = saved.get("start", start_seconds)
        self.seconds, self.step = saved.get("seconds", self.start), saved.get("step", 0)
        self.first = saved.get("first")

    def mark(self, step: int, seconds: float) -> None:
        self.step, self.seconds = step, seconds
        self.first = self.first or [step, seconds]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"start": self.start, "seconds": seconds, "step": step, "first": self.first}))

    def total_steps(self, budget_seconds: float) -> int:
        """Steps the run will have taken at the budget, at its speed since its first checkpoint (a large number
        before 20 steps past it): the length the learning-rate schedule decays over. Measured from the start
        instead, a first segment cut short after its compile (the autoencoder's minutes past the first mark) made
        a run of 13,700 steps plan 1,095 and decay its learning rate to 0 there."""
        if self.first is None or self.step - self.first[0] < 20 or self.seconds <= self.first[1]:
            return 10**7
        rate = (self.step - self.first[0]) / (self.seconds - self.first[1])
        return max(self.step + 1, int(self.step + (budget_seconds - self.seconds) * rate))


def snapshot_dir(args, name: str, minutes: float) -> Path:
    return args.out / name / f"minute-{minutes:g}"


def budgeted(args, name: str, segment, start_seconds: float = 0.0) -> None:
    """Train contender `name` up to each of args.marks minutes and copy it into minute-M/ there.
    segment(resume, total_steps, should_stop, on_checkpoint) trains until should_stop() says the mark is reached."""
    run_dir = args.out / name
    for minutes in args.marks:
        target = snapshot_dir(args, name, minutes)
        if (target / "done").is_file():
            continue
        clock = Clock(run_dir, start_seconds)
        began, t = clock.seconds, time.perf_counter()
        elapsed = lambda: began + time.perf_counter() - t  # noqa: E731
        print(f"  {name}: training to minute {minutes:g} (at {began / 60:.1f})", flush=True)
        segment(resume=clock.step > 0 or (run_dir / CONFIG).is_file(), total_steps=clock.total_steps(args.minutes * 60),
                should_stop=lambda: elapsed() >= minutes * 60, on_checkpoint=lambda step: clock.mark(step, elapsed()))
        target.mkdir(parents=True, exist_ok=True)
        for file in (CONFIG, TOKENIZER, MODEL, CHECKPOINT if name == "diffusers" else None):
            if file and (run_dir / file).is_file():
                shutil.copy2(run_dir / file, target / file)
        (target / "done").write_text(json.dumps({"step": clock.step, "seconds": clock.seconds}))


def train_ours(args, name: str, data: Dataset) -> None:
    """The latent default (its autoencoder first, timed) or the old pixel setting, through diffusely's train()."""
    run_dir = args.out / name
    config = apply(new_run_config("shapes", options(args, name), run_dir=run_dir), args.set)
    start = 0.0
    if name == "latent":  # the autoencoder's seconds, over every invocation that trained some of it
        spent = run_dir / "autoencoder-seconds.json"
        t, before = time.perf_counter(), json.loads(spent.read_text()) if spent.is_file() else 0.0
        prepare_own_autoencoder(config, run_dir, steps=args.autoencoder_steps, progress=args.progress, say=print)
        start = before + time.perf_counter() - t
        spent.write_text(json.dumps(start))

    def segment(resume, total_steps, should_stop, on_checkpoint):
        config.train.steps = total_steps
        train(config, run_dir, resume=resume, progress=args.progress, should_stop=should_stop,
              on_checkpoint=on_checkpoint, data=data)

    budgeted(args, name, segment, start)


def train_diffusers(args, data: Dataset) -> None:
    """The peer on the latent run's latents (latents.safetensors) and tokenizer, counting its autoencoder's time."""
    from _text_peer import train_peer

    from diffusely._files import load_tensors

    latent_dir = args.out / "latent"
    if not (latent_dir / LATENTS).is_file():
        raise SystemExit("the diffusers peer trains on the latent run's latents: train the latent contender first")
    latent_run, tokenizer = read_config(latent_dir), WordTokenizer.load(latent_dir / TOKENIZER)
    latents = load_tensors(latent_dir / LATENTS)[0]["images"].float()
    start = Clock(latent_dir).start

    def segment(resume, total_steps, should_stop, on_checkpoint):
        train_peer(latent_run, latents, data.captions, tokenizer, args.out / "diffusers", total_steps=total_steps,
                   should_stop=should_stop, on_checkpoint=on_checkpoint, checkpoint_every=args.checkpoint_every)

    budgeted(args, "diffusers", segment, start)


# ---------------------------------------------------------------------------------------------
# scoring


def load_contender(args, name: str, minutes: float):
    if name != "diffusers":
        return load_run(snapshot_dir(args, name, minutes))
    from _text_peer import load_peer

    latent_dir = args.out / "latent"
    latent_run = read_config(latent_dir)
    return load_peer(latent_run, snapshot_dir(args, name, minutes), WordTokenizer.load(latent_dir / TOKENIZER),
                     load_latent_space(latent_run))


def scores(args, checker, results: dict, name: str, minutes: float, guidance: float, wording: str,
           prompts: list[str], scenes) -> list:
    """Per-image scores of one sample per prompt from contender `name` at `minutes` (cached in results.json)."""
    key = f"{name}/{minutes:g}/{guidance:g}/{wording}/{len(prompts)}{args.sampling_key}"
    if key not in results:
        run = load_contender(args, name, minutes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reworded prompts' unknown words are what they measure
            images = torch.cat(list(generate(run, len(prompts), prompts=prompts, guidance=guidance, seed=PROMPT_SEED,
                                             batch_size=args.sample_batch, progress=False, **args.sampling)))
        results[key] = checker.scores(to_uint8(images), scenes)
        (args.out / "results.json").write_text(json.dumps(results))
    return results[key]


def by_objects(per_image: list, scenes) -> dict[str, dict]:
    """summarise() over the prompts of each GROUPS entry (by the number of objects the prompt asks for)."""
    return {group: summarise([s for s, scene in zip(per_image, scenes) if len(scene.shapes) in counts])
            for group, counts in GROUPS.items()}


def by_axis(per_image: list, scenes) -> dict[str, tuple[int, int]]:
    """(relations placed as asked, relations asked) in the prompts of two objects, by the relation's axis."""
    placed = {"vertical": [0, 0], "horizontal": [0, 0]}
    for score, scene in zip(per_image, scenes):
        if len(scene.shapes) == 2 and scene.relations and "position" in score:
            tally = placed[AXIS[scene.relations[0]]]
            tally[0], tally[1] = tally[0] + score["position"][0], tally[1] + score["position"][1]
    return {axis: tuple(tally) for axis, tally in placed.items()}


def header(label: str) -> str:
    return f"{label:<30}" + "".join(f"{k:>11}" for k in (*ATTRIBUTES, "all"))


def row(label: str, summary: dict) -> str:
    return f"{label:<30}" + "".join(f"{summary.get(k, float('nan')):>11.2f}" for k in (*ATTRIBUTES, "all"))


def through_autoencoder(args, images):
    """The held-out images encoded and decoded by the latent run's autoencoder (uint8), or None without a latent
    run: no latent contender's sample shows more than its decoder can draw, so this is their ceiling."""
    if not {"latent", "diffusers"} & set(args.contenders) or not (args.out / "latent" / CONFIG).is_file():
        return None
    space = load_latent_space(read_config(args.out / "latent"))
    return to_uint8(reconstruct(space.autoencoder, to_tensor(images)))


def report(args, checker, held_out, prompts: list[str], scenes) -> None:
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    real = by_objects(checker.scores(held_out.images, scenes), scenes)
    decoded = through_autoencoder(args, held_out.images)
    decoded = by_objects(checker.scores(decoded, scenes), scenes) if decoded is not None else None
    counts = {g: sum(len(s.shapes) in c for s in scenes) for g, c in GROUPS.items()}
    seconds = {(n, m): json.loads((snapshot_dir(args, n, m) / "done").read_text()) for n in args.contenders
               for m in args.marks}
    for group in GROUPS:
        print(f"\n{group} ({counts[group]} held-out prompts), guidance {args.curve_guidance:g}: fraction of what the "
              "prompts ask that the samples show (all: samples with everything right)")
        print(header("contender, minutes (step)"))
        print(row("real images (the ceiling)", real[group]))
        if decoded:
            print(row("real images, autoencoded", decoded[group]))
        for name in args.contenders:
            for minutes in args.marks:
                per_image = scores(args, checker, results, name, minutes, args.curve_guidance, "captions", prompts, scenes)
                done = seconds[name, minutes]
                print(row(f"{name}, {done['seconds'] / 60:.1f} min ({done['step']})", by_objects(per_image, scenes)[group]),
                      flush=True)
    print(f"\nposition in the prompts of two objects by the relation's axis, guidance {args.curve_guidance:g}: a run "
          "that has not learned which side a relation word asks for places its objects by chance on that axis")
    for name in args.contenders:
        for minutes in args.marks:
            per_image = scores(args, checker, results, name, minutes, args.curve_guidance, "captions", prompts, scenes)
            placed = by_axis(per_image, scenes)
            print(f"{name + ', ' + format(minutes, 'g') + ' min':<30}"
                  + "".join(f"{axis:>12} {right:>3} / {asked:<3}" for axis, (right, asked) in placed.items()))
    last = args.marks[-1]
    print(f"\nafter {last:g} minutes, against guidance and wording (1-2 objects / 3 objects: all)")
    reworded = [reword(p) for p in prompts]
    for name in args.contenders:
        for wording, texts in (("captions", prompts), ("reworded", reworded)):
            for g in args.guidance if wording == "captions" else [args.curve_guidance]:
                summary = by_objects(scores(args, checker, results, name, last, g, wording, texts, scenes), scenes)
                print(row(f"{name}, w={g:g}, {wording}", summary["1-2 objects"])
                      + f"   3 objects: {summary['3 objects']['all']:.2f}", flush=True)
    for name in args.contenders:
        binding(args, checker, results, name, count=args.binding_samples)


BINDING = "a large red circle {} a large blue square on a light gray background"
AXIS = {"above": "vertical", "below": "vertical", "left of": "horizontal", "right of": "horizontal"}


def binding(args, checker, results: dict, name: str, count: int = 48) -> None:
    """One prompt of two objects under each relation, `count` samples each (guidance 3): how often both objects
    are drawn as asked and nothing else (the red one a circle, the blue one a square), and of those how often the
    circle lies as asked from the square, or at least along the asked axis. A model that binds attributes but not
    direction gets the axis right and the direction half the time."""
    from diffusely.data.shapes import _relation

    print(f"\n{name} after {args.marks[-1]:g} minutes, {BINDING.format('REL')!r}, {count} samples each, guidance 3")
    print(f"{'relation asked':<16}{'red circle + blue square':>26}{'relation right':>16}{'axis right':>12}")
    run = None
    for relation in RELATIONS:
        prompt = BINDING.format(relation)
        key = f"{name}/{args.marks[-1]:g}/3/{prompt}/{count}{args.sampling_key}"
        if key not in results:
            run = run or load_contender(args, name, args.marks[-1])
            images = torch.cat(list(generate(run, count, guidance=3.0, prompts=[prompt], seed=PROMPT_SEED,
                                             progress=False, batch_size=args.sample_batch, **args.sampling)))
            seen = []
            for reading in checker.read(to_uint8(images)):
                got = {(s.color, s.shape): s.box for s in reading.shapes}
                both = len(got) == len(reading.shapes) == 2 and {("red", "circle"), ("blue", "square")} <= set(got)
                seen.append(_relation(got["red", "circle"], got["blue", "square"]) if both else None)
            results[key] = seen
            (args.out / "results.json").write_text(json.dumps(results))
        bound = [r for r in results[key] if r is not None]
        right, axis = sum(r == relation for r in bound), sum(AXIS[r] == AXIS[relation] for r in bound)
        print(f"{relation:<16}{len(bound):>21} /{count:<3}{right:>11} /{len(bound):<3}{axis:>7} /{len(bound):<3}")
    print(f"the network's estimate D(x; σ) of the same prompts, no guidance, {ESTIMATES} noises: how far its red mass "
          "lies from its blue mass towards the side asked, in image sides (two large shapes as the data draws "
          "them: +0.46 between centres)")
    print(f"{'relation asked':<16}" + "".join(f"{f'σ = {s:g}':>10}" for s in ESTIMATE_SIGMAS))
    for relation in RELATIONS:
        key = f"{name}/{args.marks[-1]:g}/estimate/{relation}/{ESTIMATES}"
        if key not in results:
            run = run or load_contender(args, name, args.marks[-1])
            results[key] = [estimate_offset(run, BINDING.format(relation), relation, s) for s in ESTIMATE_SIGMAS]
            (args.out / "results.json").write_text(json.dumps(results))
        print(f"{relation:<16}" + "".join(f"{v:>+10.3f}" for v in results[key]))


ESTIMATE_SIGMAS, ESTIMATES = (20.0, 5.0, 1.0), 32


def estimate_offset(run, prompt: str, relation: str, sigma: float) -> float:
    """The denoiser's estimate of a clean image at noise level `sigma` (~the mean image the prompt asks for at a
    high one), decoded, for ESTIMATES noises: the centroid of its red mass (red over blue) minus that of its blue
    mass along the relation's axis, in image sides, signed so that positive is the side the relation asks of the
    red one, each centroid over all the noises' estimates. Whether the network has learned a relation's side, apart
    from what sampling makes of it: one that ignores the side gives a relation and its opposite the same estimate,
    so their offsets here are equal and of opposite signs."""
    from diffusely.pipelines.conditioning import conditioning

    denoiser, cond = conditioning(run, prompts=[prompt], guidance=1.0).batch(list(range(ESTIMATES)), "cpu")
    noise = torch.randn((ESTIMATES, *run.config.sample_shape), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        image = run.decode(denoiser(noise * sigma, noise.new_full((ESTIMATES,), sigma), **cond)).clamp(-1, 1)
    red, blue = (image[:, 0] - image[:, 2]).clamp(min=0), (image[:, 2] - image[:, 0]).clamp(min=0)
    place = torch.linspace(0, 1, image.shape[-1])
    place = place[:, None] if AXIS[relation] == "vertical" else place  # rows or columns of (n, H, W)
    centroid = lambda m: (m * place).sum() / m.sum().clamp(min=1e-6)  # noqa: E731  (pooled over the noises)
    toward = -1.0 if relation in ("above", "left of") else 1.0  # red's coordinate is smaller for above / left of
    return float(toward * (centroid(red) - centroid(blue)))


def grid(args, path: Path) -> None:
    """Rows: GRID_PROMPTS; columns: --grid-samples samples of each contender's last snapshot (guidance 3)."""
    from diffusely import viz

    samples, labels = [], []
    for name in args.contenders:
        run = load_contender(args, name, args.marks[-1])
        prompts = [p for p in GRID_PROMPTS for _ in range(args.grid_samples)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reworded row's unknown words are the point
            samples.append(torch.cat(list(generate(run, len(prompts), prompts=prompts, guidance=3.0, seed=0,
                                                   batch_size=args.sample_batch, progress=False, **args.sampling))))
        labels += [name] + [""] * (args.grid_samples - 1)
    k = args.grid_samples
    rows = [torch.cat([x[i * k:(i + 1) * k] for x in samples]) for i in range(len(GRID_PROMPTS))]
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The full run: 3 x 60 minutes of training (the latent run's autoencoder "
                                       "inside its 60), then 21 settings of 300 prompts to sample and score (the "
                                       "pixel ones the slowest) and the binding probe's 4 x 48 samples a contender: "
                                       "about 3.5 to 4 hours on an idle 2-core CPU.")
    p.add_argument("--out", type=Path, required=True, help="Folder for runs, snapshots, the checker and results.json.")
    p.add_argument("--minutes", type=float, default=60.0, help="Wall-clock minutes of training per contender.")
    p.add_argument("--marks", default="5,10,20,30,45,60", help="Minutes at which to snapshot and score (the last: "
                                                                  "--minutes).")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--encoder", default="scratch", help="Text encoder of every contender: scratch or minilm.")
    p.add_argument("--image-size", type=int, default=32, choices=(32, 64),
                   help="Side of the shapes in pixels (64: 16 x 16 latents for latent contenders).")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", default="", help="U-Net channels of every contender (default: each one's own).")
    p.add_argument("--autoencoder-steps", type=int, help="The latent run's autoencoder (default: train --text's).")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--images", type=int, default=0, help="Train on the first N built-in images (0: all 10000).")
    p.add_argument("--guidance", default="1,3,7", help="Guidance scales scored after the last mark.")
    p.add_argument("--curve-guidance", type=float, default=3.0, help="Guidance of the adherence-against-minutes curve.")
    p.add_argument("--prompts", type=int, default=300, help="Held-out prompts of one to three objects, one sample each.")
    p.add_argument("--binding-samples", type=int, default=48, help="Samples of each relation of the binding probe.")
    p.add_argument("--sample-batch", type=int, default=100)
    p.add_argument("--checker-images", type=int, default=3000)
    p.add_argument("--checker-steps", type=int, default=400)
    p.add_argument("--grid", type=Path, help="Write the picture of GRID_PROMPTS and samples here (after training).")
    p.add_argument("--grid-samples", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="A smoke test of every part: about two minutes.")
    p.add_argument("--encoder-ceiling", action="store_true",
                   help="Only measure how much MiniLM's sentence embeddings carry of a reworded prompt (a minute).")
    p.add_argument("--set", type=settings, default={}, metavar="SECTION.NAME=VALUE,...",
                   help="Change settings of the latent and pixel contenders' run config (a study of one change; the "
                        "diffusers peer keeps its recipe and reads only the latent run's widths). Kept in "
                        "OUT/settings.json: an --out trained with other settings is refused.")
    p.add_argument("--sampler", metavar="NAME:STEPS",
                   help="Sample every contender with this sampler and step count (default: each run's own; a latent "
                        "run's is Euler ancestral, 35 steps). Scores are cached under it, beside the runs' own.")
    p.add_argument("--progress", action="store_true", help="Show training progress bars.")
    args = p.parse_args()
    args.sampling, args.sampling_key = {}, ""
    if args.sampler:
        name, _, steps = args.sampler.partition(":")
        fixed = [s for s in SAMPLERS if nfe(s, 2) is not None and s != "consistency"]  # adaptive picks its steps
        if name not in fixed or not steps.isdigit() or int(steps) < 1:
            p.error(f"--sampler takes NAME:STEPS with NAME one of {', '.join(fixed)}, got {args.sampler!r}")
        args.sampling, args.sampling_key = {"sampler": name, "steps": int(steps)}, f"/{name}:{int(steps)}"
    if args.quick:
        args.minutes, args.marks, args.channels, args.autoencoder_steps = 0.3, "0.15,0.3", "16,32", 20
        args.images, args.prompts, args.checker_images, args.checker_steps = 256, 12, 300, 50
        args.guidance, args.grid_samples, args.checkpoint_every, args.batch_size = "3", 2, 50, 16
        args.binding_samples = 4
    args.marks = sorted(float(m) for m in args.marks.split(","))
    args.channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
    args.contenders = args.contenders.split(",")
    args.guidance = [float(g) for g in args.guidance.split(",")]
    if args.marks[-1] != args.minutes:
        p.error(f"the last of --marks must be --minutes ({args.minutes:g}), got {args.marks}")
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    chosen, kept = {".".join(k): v for k, v in args.set.items()}, args.out / "settings.json"
    if kept.is_file() and json.loads(kept.read_text()) != chosen:
        p.error(f"{args.out} was trained with --set {kept.read_text()}, not {json.dumps(chosen)}: choose another --out")
    kept.write_text(json.dumps(chosen))
    torch.manual_seed(0)

    t = time.perf_counter()
    checker_path = args.out / "checker.safetensors"
    if checker_path.is_file():
        checker = load_checker(checker_path)
    else:
        checker = fit_adherence_checker(args.image_size, count=args.checker_images, steps=args.checker_steps, seed=1)
        save_checker(checker_path, checker)
    if int(checker.info["size"]) != args.image_size:
        p.error(f"{args.out} holds runs of {checker.info['size']} x {checker.info['size']} images, not "
                f"--image-size {args.image_size}: choose another --out")
    held_out = render_shapes(args.prompts, size=args.image_size, seed=PROMPT_SEED, max_shapes=TEXT_MAX_SHAPES)
    prompts = held_out.captions
    scenes = [parse_caption(c) for c in prompts]
    print(f"checker ready ({time.perf_counter() - t:.0f} s); {len(prompts)} held-out prompts, e.g.\n"
          f"  {prompts[0]!r}\n  reworded: {reword(prompts[0])!r}", flush=True)
    if args.encoder_ceiling:  # docs/text.md's figures: the 200 prompts of one or two objects they were measured on
        two = render_shapes(200, size=32, seed=PROMPT_SEED, max_shapes=2).captions
        encoder_ceiling(two, [reword(c) for c in two])
        return
    data = training_data(args)
    for name in ("latent", "pixel", "diffusers"):  # the peer trains on the latent run's latents
        if name in args.contenders:
            print(f"training {name} for {args.minutes:g} minutes ...", flush=True)
            train_diffusers(args, data) if name == "diffusers" else train_ours(args, name, data)
    if args.grid:
        grid(args, args.grid)
        return
    report(args, checker, held_out, prompts, scenes)
    print(f"\n(total {time.perf_counter() - t:.0f} s; per-image scores cached in {args.out / 'results.json'})")


if __name__ == "__main__":
    sys.exit(main())
