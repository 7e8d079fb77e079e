"""Generation from a trained run: load, wrap, sample, save (`write_samples`: the files `diffusely sample` writes).

Every PNG `write_samples` writes carries how it was drawn, in two text chunks: `parameters`, the lines A1111
writes (prompt, "Negative prompt: ...", "Steps: 25, Sampler: ..., Seed: 7, ...") for tools that read those, and
`diffusely`, the same as JSON (`sample_parameters`), from which `reproduce` draws the image again bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from .. import __version__
from .._files import RunError, atomic_write, atomic_write_text, run_lock
from .._util import generators, randn
from ..checkpoint import LoadedRun, load_run
from ..config import DiffusionConfig
from ..data import MODALITIES, to_uint8
from ..nets.fast import sampling_precision
from ..samplers import check_options, nfe as nfe_of, resolve_sampler, resolve_steps, sample
from ..samplers.defaults import TEXT_SAMPLER, budget_default
from ..schedules import Spacing, get_sigmas
from ..viz import save_grid
from .conditioning import Conditioning, conditioning


class SamplesExist(ValueError):
    """The output folder already holds samples of these names; the message says how to keep or replace them."""


def sample_shape(run: LoadedRun) -> tuple[int, ...]:
    """The shape of what the sampler draws for one sample of the run: (C, *spatial), a latent in a latent run."""
    return run.config.sample_shape


class Sampler(str):
    """A sampler's name in SAMPLERS (a str, so it goes wherever a name does) that keeps what the name typed brings:
    `given` ("DPM++ 2M Karras", or the name itself), its `spacing` (None: none of its own) and its `options`;
    `fallback`: the spacing of a sampler picked for a budget, where the run stores no schedule for it."""

    def __new__(cls, given: str, fallback: Optional[str] = None) -> "Sampler":
        if isinstance(given, Sampler):
            return given
        name, spacing, options = resolve_sampler(given)  # a ValueError lists every name taken
        self = super().__new__(cls, name)
        self.given, self.spacing, self.options, self.fallback = str(given), spacing, options, fallback
        return self


def sampling_plan(run: LoadedRun, sampler: Optional[str], steps: Optional[int], nfe: Optional[int],
                  default: Optional[tuple[str, int]] = None) -> tuple[Sampler, Optional[int]]:
    """The sampler (the run's unless given; any name `resolve_sampler` takes, such as "DPM++ 2M Karras") and its
    step count: `steps`, or what an `nfe` budget buys, or the run's default; None for a sampler that picks its own
    steps (adaptive). A run of a stock sampler (Heun, a latent text run's Euler ancestral), none named, takes for a
    budget the sampler measured best at it (below 35 NFE), else the caller's `default` (sampler, steps)."""
    if sampler is None and run.config.diffusion.sampler in (DiffusionConfig.sampler, TEXT_SAMPLER[0]):
        if nfe is not None:
            sampler = budget_default(nfe)  # (name, spacing where the run stores no schedule), or None from 35 NFE
        elif default:
            sampler, steps = default[0], steps or default[1]
    sampler = Sampler(*sampler) if isinstance(sampler, tuple) else Sampler(sampler or run.config.diffusion.sampler)
    if steps is None and nfe is None and nfe_of(sampler, 1) is not None:
        steps = run.config.diffusion.sample_steps
    return sampler, resolve_steps(sampler, steps, nfe)


def stored_spacing(run: LoadedRun, sampler: str, steps: Optional[int]) -> Optional[Callable]:
    """The run's optimised schedule for (sampler, steps) as a spacing, or None if it has none, or if the sampler's
    name brings a spacing of its own ("... Karras": the user named one)."""
    sigmas = run.schedules.get(sampler, {}).get(str(steps))
    if sigmas is None or getattr(sampler, "spacing", None):
        return None
    return lambda *_: torch.tensor(sigmas, dtype=torch.float64)


@dataclass
class Recipe:
    """Everything but the seed that decides a sample, resolved and checked: sampler, steps (None: adaptive),
    spacing (a name, a callable, or None for Karras), the sampler's options and the conditioning."""

    sampler: Sampler
    steps: Optional[int]
    spacing: Spacing
    options: dict
    conditions: Conditioning
    optimised: bool = False  # spacing: the run's optimised schedule (schedules.json)


def recipe(run: LoadedRun, *, steps: Optional[int] = None, nfe: Optional[int] = None, sampler: Optional[str] = None,
           spacing: Spacing = None, classes: Optional[Sequence] = None, prompts: Optional[Sequence[str]] = None,
           negative_prompts: Optional[Sequence[str]] = None, guidance: Optional[float] = None,
           layouts: Optional[Sequence] = None, first_frames: Optional[Sequence[torch.Tensor]] = None,
           **options) -> Recipe:
    """Resolve and check the arguments of `generate` (see there) before anything is sampled. A sampler name's own
    spacing and options ("DPM++ 2M Karras": karras) apply unless `spacing` or `options` give others. first_frames:
    a video run trained with given frames continues these clips, each (C, k, H, W) in [-1, 1], cycled."""
    sampler, steps = sampling_plan(run, sampler, steps, nfe)
    stored = None if spacing else stored_spacing(run, sampler, steps)
    spacing = spacing or stored or sampler.spacing or sampler.fallback
    options = {**sampler.options, **options}
    check_options(sampler, options)  # a bad -o name or value is refused before any folder is made
    conditions = conditioning(run, classes=classes, prompts=prompts, negative_prompts=negative_prompts,
                              guidance=guidance, layouts=layouts)
    if first_frames is not None:
        if "frames" not in run.config.conditions:
            raise ValueError("this run was trained without given frames; train with --given-frames K to continue clips")
        conditions.asked["frames"] = [torch.as_tensor(f) for f in first_frames]
    return Recipe(sampler, steps, spacing, options, conditions, stored is not None)


def generate(run: LoadedRun, n: int, *, seed: int = 0, batch_size: int = 64, progress: bool = True,
             callback: Optional[Callable] = None, indices: Optional[Sequence[int]] = None,
             **kwargs) -> Iterator[torch.Tensor]:
    """An iterator over batches of samples (B, C, *spatial) in [-1, 1], n in all (images: a latent run decodes
    its samples). The arguments are checked at the call; sampling happens as the batches are taken.

    Sample i draws its noise from its own generator seeded `seed + i`, so it is the same image
    whatever the batch size or n. kwargs (`recipe`): sampler defaults to the run's config (a name of
    ours or one A1111, ComfyUI, k-diffusion or diffusers use; for a budget, `nfe`, see `sampling_plan`); steps
    too, unless `nfe` (denoiser evaluations) is given. With no `spacing`, the sampler name's own ("... Karras"), else
    a schedule optimised for this run, sampler and step count (schedules.json, `diffusely optimize-schedule`)
    is used where there is one. classes (names or indices) and prompts cycle over the samples;
    negative_prompts replace the null caption in classifier-free guidance of scale `guidance` (see
    pipelines.conditioning for defaults). layouts (lists of boxes (class, x0, y0, x1, y1[, direction]) in
    pixels) cycle too; other keywords are the sampler's options. indices: draw samples with these indices
    (noise seed + i, conditioning i) instead of 0..n-1, e.g. the ones a stopped job did not finish.
    """
    return draw(run, recipe(run, **kwargs), n, seed=seed, batch_size=batch_size, progress=progress,
                callback=callback, indices=indices)


def draw(run: LoadedRun, plan: Recipe, n: int, *, seed: int = 0, batch_size: int = 64, progress: bool = True,
         callback: Optional[Callable] = None, indices: Optional[Sequence[int]] = None) -> Iterator[torch.Tensor]:
    """`generate` for a recipe already made: checks n and the batch size now, samples as the batches are taken."""
    indices = list(range(n)) if indices is None else list(indices)
    if len(indices) < 1:
        raise ValueError(f"the number of samples must be >= 1, got {len(indices)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return _batches(run, indices, plan, seed=seed, batch_size=batch_size, progress=progress, callback=callback)


def _batches(run: LoadedRun, indices: list[int], plan: Recipe, *, seed: int, batch_size: int, progress: bool,
             callback) -> Iterator[torch.Tensor]:
    d = run.config.diffusion
    device = next(run.denoiser.parameters()).device
    with tqdm(total=len(indices), desc="sampling", unit="img", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            gens = generators([seed + i for i in batch])
            noise = randn((len(gens), *sample_shape(run)), gens, device)
            denoiser, cond = plan.conditions.batch(batch, device)
            with torch.inference_mode():
                x = sample(denoiser, noise, cond=cond, method=plan.sampler, steps=plan.steps, sigma_min=d.sigma_min,
                           sigma_max=d.sigma_max, spacing=plan.spacing, generator=gens, callback=callback,
                           **plan.options)
                x = run.decode(x)  # a latent run's samples become images here
            bar.update(len(x))
            yield x.clamp(-1, 1).cpu()


SAMPLE_FORMATS = ("png", "npy")
METADATA = "metadata.jsonl"
PARAMETERS = "diffusely"  # the PNG text chunk of the JSON parameters (A1111's own chunk is "parameters")
NEEDED = ("run", "digest", "step", "sampler", "steps", "spacing", "seed", "options", "precision", "device")


def sample_names(n: int, seed: int, fmt: str) -> list[str]:
    """The file names of samples seed .. seed + n - 1: 000000.png, 000001.png, ..."""
    return [f"{seed + i:06d}.{fmt}" for i in range(n)]


def write_samples(run: LoadedRun, out_dir: str | Path, n: int, *, fmt: Optional[str] = None, seed: int = 0,
                  grid: Optional[str | Path] = None, overwrite: bool = False, batch_size: int = 64,
                  progress: bool = True, **kwargs) -> dict:
    """Draw n samples with `generate` (kwargs are its arguments) and write each to out_dir as it is made,
    sample i as `{seed + i:06d}.{fmt}` (images: PNG with its generation parameters, or a (H, W, C) uint8 .npy;
    audio: 16-bit WAV with them in its INFO comment, or an (L, C) float32 .npy; fmt None: the run's modality's
    first), so a stopped job keeps what it made. With classes or prompts, out_dir/metadata.jsonl says which sample
    got which; `grid` also saves them all as one PNG (audio: waveforms over log-mel spectrograms). Files of an
    earlier job are never replaced unless `overwrite`: a folder that holds any of these names is refused before
    anything is sampled (choose another --seed or folder to add samples). Returns {"count", "out_dir",
    "metadata" (a path or None), "grid", "plan" (the Recipe drawn with)}."""
    kind = MODALITIES[run.config.data.modality]
    fmt = fmt or kind.formats[0]
    if fmt not in kind.formats:
        raise ValueError(f"unknown sample format {fmt!r} for {kind.name} samples; choose one of: "
                         f"{', '.join(kind.formats)}")
    out_dir = Path(out_dir)
    plan = recipe(run, **kwargs)  # checks every argument before a file is touched
    batches = draw(run, plan, n, seed=seed, batch_size=batch_size, progress=progress)
    asked = {key: list(kwargs[arg]) for key, arg in (("text", "prompts"), ("class", "classes")) if kwargs.get(arg)}
    names = sample_names(n, seed, fmt)
    targets = [out_dir / name for name in names + ([METADATA] if asked else [])] + ([Path(grid)] if grid else [])
    # the lock makes the check and the writes one step: two jobs into one folder cannot both pass the check
    with run_lock(out_dir, f"sample --out {out_dir}"):
        if not overwrite:
            _refuse_existing(targets, out_dir)
        return _write_all(run, plan, batches, out_dir, names, fmt=fmt, seed=seed, asked=asked, grid=grid)


def _write_all(run: LoadedRun, plan: Recipe, batches: Iterator[torch.Tensor], out_dir: Path, names: list[str], *,
               fmt: str, seed: int, asked: dict, grid: Optional[str | Path]) -> dict:
    """`write_samples`' writing, once the folder is locked and checked: each sample as it is made, then the
    metadata and the grid."""
    kind = MODALITIES[run.config.data.modality]
    digest = weights_digest(run) if fmt != "npy" else None
    writer = importlib.import_module(kind.writer) if kind.writer else None
    everything, i = [], 0
    for batch in batches:
        samples = to_uint8(batch) if writer is None else batch
        for x in samples:  # written as produced: a stopped job keeps what it made
            p = sample_parameters(run, plan, digest, seed + i, i) if digest else None
            write = (functools.partial(_write_sample, x, fmt, text=png_text(p) if p else None) if writer is None else
                     functools.partial(writer.write_sample, x, fmt=fmt, rate=run.config.data.sample_rate, parameters=p))
            atomic_write(out_dir / names[i], write)
            i += 1
        if grid:
            everything.append(samples)
    metadata = None
    if asked:
        rows = [{"file_name": names[k], **{key: v[k % len(v)] for key, v in asked.items()}} for k in range(i)]
        metadata = out_dir / METADATA
        atomic_write_text(metadata, "".join(json.dumps(row) + "\n" for row in rows))
    if grid:
        if writer is None:
            save_grid(np.concatenate(everything), grid)
        else:
            writer.save_grid(torch.cat(everything), grid, run.config.data.sample_rate)
    return {"count": i, "out_dir": out_dir, "metadata": metadata, "grid": grid, "plan": plan}


def _write_sample(image: np.ndarray, fmt: str, path: str, text: Optional[dict] = None) -> None:
    """(H, W, C) uint8 -> a PNG (mode L or RGB, with `text` as its text chunks) or an .npy at `path` (a temporary
    name: the format is given)."""
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)  # iTXt (UTF-8) where the value is not Latin-1
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG", pnginfo=info)
    else:
        with open(path, "wb") as f:
            np.save(f, image, allow_pickle=False)


def _refuse_existing(targets: list[Path], out_dir: Path) -> None:
    existing = [p for p in targets if p.exists()]
    if existing:
        shown = ", ".join(p.name for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise SamplesExist(f"{out_dir} already holds {len(existing)} of the files this would write ({shown}); "
                               f"pass --overwrite to replace them, or choose another --out or --seed")


# ------------------------------------------------------------------------------ generation parameters in PNGs


def weights_digest(run: LoadedRun) -> str:
    """The first 16 hex digits of the SHA-256 of the weights the run samples with (their bytes, in the network's
    order), and of a latent run's autoencoder digest: the same digest draws the same samples, whatever the files
    are called (an fp32 export has its run's; a bf16 one does not)."""
    h = hashlib.sha256()
    for tensor in run.denoiser.state_dict().values():
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if run.config.latent:
        h.update(str(run.config.latent.autoencoder_digest).encode())
    return h.hexdigest()[:16]


def _spacing_facts(run: LoadedRun, plan: Recipe) -> dict:
    """The spacing by name, or the sigmas themselves for an optimised (or any callable) spacing."""
    if plan.steps is None:
        return {"spacing": None}
    if plan.spacing is None or isinstance(plan.spacing, str):
        return {"spacing": plan.spacing or "karras"}
    d = run.config.diffusion
    sigmas = get_sigmas(plan.steps, d.sigma_min, d.sigma_max, plan.spacing).tolist()
    return {"spacing": "optimised" if plan.optimised else "sigmas", "sigmas": sigmas}


def _condition_facts(run: LoadedRun, conditions: Conditioning, index: int) -> dict:
    """What sample `index` was conditioned on: its class (by name where the run has names), prompt, negative
    prompt, layout, and the guidance scale."""
    asked, negatives = conditions.asked, conditions.negatives
    pick = lambda values: values[index % len(values)]  # noqa: E731: as Conditioning.batch cycles them
    names, facts = run.config.data.class_names, {}
    if "class" in asked:
        facts["class"] = names[pick(asked["class"])] if names else pick(asked["class"])
    if "text" in asked:
        facts["prompt"] = pick(asked["text"])
    if "text" in negatives:
        facts["negative_prompt"] = pick(negatives["text"])
    if "layout" in asked:
        facts["layout"] = [list(box) for box in pick(asked["layout"])]
    if asked:
        facts["guidance"] = conditions.guidance
    return facts


def sample_parameters(run: LoadedRun, plan: Recipe, digest: str, seed: int, index: int) -> dict:
    """How sample `index` (noise seed `seed`) was drawn, as JSON values: enough for `reproduce` to draw it again."""
    return {"format": "diffusely-parameters-1", "run": os.path.abspath(run.run_dir) if run.run_dir else None,
            "digest": digest, "step": run.step, "sampler": plan.sampler.given, "method": str(plan.sampler),
            "steps": plan.steps, "nfe": nfe_of(plan.sampler, plan.steps) if plan.steps else None,
            **_spacing_facts(run, plan), "seed": seed, **_condition_facts(run, plan.conditions, index),
            "options": plan.options, "precision": sampling_precision(run.denoiser.net), "device": run.device.type,
            "size": list(run.config.sample_shape[1:]) if run.latent is None else None, "version": __version__}


def _a1111_value(value) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text  # A1111 quotes what would split a field


def png_text(p: dict) -> dict[str, str]:
    """The PNG text chunks of parameters `p`: A1111's `parameters` (prompt, negative prompt, one line of
    "Key: value" fields) and ours, the JSON."""
    fields = {"Steps": p["steps"], "Sampler": p["sampler"], "Schedule type": p["spacing"],
              "CFG scale": p.get("guidance"), "Seed": p["seed"], "Class": p.get("class"),
              "Size": "x".join(map(str, reversed(p["size"]))) if p["size"] else None,
              "Model hash": p["digest"][:10], "Model": Path(p["run"]).name if p["run"] else None,
              "Sampler options": " ".join(f"{k}={v}" for k, v in p["options"].items()) or None,
              "Version": f"diffusely {p['version']}"}
    line = ", ".join(f"{k}: {_a1111_value(v)}" for k, v in fields.items() if v is not None)
    negative = f"\nNegative prompt: {p['negative_prompt']}" if "negative_prompt" in p else ""
    return {"parameters": f"{p.get('prompt', '')}{negative}\n{line}".strip(), PARAMETERS: json.dumps(p)}


def read_parameters(image: str | Path) -> dict:
    """The generation parameters `write_samples` put in a PNG; RunError if it holds none."""
    with Image.open(image) as im:
        text = dict(getattr(im, "text", {}) or {})
    try:
        p = json.loads(text[PARAMETERS])
        if not isinstance(p, dict) or p.get("format") != "diffusely-parameters-1":
            raise ValueError
    except (KeyError, ValueError, RecursionError):
        raise RunError(f"{image} holds no diffusely generation parameters (its '{PARAMETERS}' PNG text chunk): only "
                       f"PNGs written by `diffusely sample` can be drawn again") from None
    missing = [key for key in NEEDED if key not in p]
    if missing or not isinstance(p["options"], dict):
        raise RunError(f"{image}: its generation parameters lack {', '.join(missing) or 'options'} (edited?); "
                       f"they cannot draw it again")
    return p


def replay(p: dict) -> dict:
    """The keyword arguments of `write_samples` (seed aside) that draw the sample of parameters `p` again."""
    sigmas = p.get("sigmas")
    # the options come from a file anyone can edit: sampler options only (a key such as "grid" or "fmt" would bind
    # to write_samples' own arguments and write where the file says), in their ranges
    check_options(Sampler(p["sampler"]), p["options"])
    kwargs = {"sampler": p["sampler"], "steps": p["steps"], **p["options"], "guidance": p.get("guidance"),
              "spacing": (lambda *_: torch.tensor(sigmas, dtype=torch.float64)) if sigmas else p["spacing"]}
    names = {"class": "classes", "prompt": "prompts", "negative_prompt": "negative_prompts", "layout": "layouts"}
    if p.get("guidance") == 1:  # a negative prompt changed nothing there (and is refused there now)
        names.pop("negative_prompt")
    return {**kwargs, **{arg: [p[key]] for key, arg in names.items() if key in p}}


def check_same_weights(run: LoadedRun, p: dict, image: str | Path) -> None:
    """RunError naming what differs where `run` is not the model that drew `image`."""
    digest = weights_digest(run)
    if digest != p["digest"]:
        raise RunError(f"{image} was drawn from other weights than {run.run_dir}'s: digest {p['digest']} at step "
                       f"{p['step']} ({p['run']}) against {digest} at step {run.step}; pass the run it was drawn from "
                       f"(or its fp32 export)")


def reproduce(image: str | Path, out_dir: Optional[str | Path] = None, *, run_dir: Optional[str | Path] = None,
              device="cpu", cuda_graphs: Optional[bool] = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Draw the sample in the PNG `image` again from its parameters, from `run_dir` (default: the run it names,
    whose weights must be the same), into out_dir (default RUN_DIR/reproduced) under its seed's name.
    Returns write_samples' result with "path" and "same" (pixel for pixel the same as `image`)."""
    p = read_parameters(image)
    if run_dir is None:
        run_dir = p["run"]
        if not run_dir or not Path(run_dir).is_dir():
            raise RunError(f"{image} was drawn from {run_dir}, which is not here: pass the run (or its export) too, "
                           f"diffusely sample RUN_DIR --from-png {image}")
    run = load_run(run_dir, device, precision=p["precision"], cuda_graphs=cuda_graphs)
    check_same_weights(run, p, image)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "reproduced"
    result = write_samples(run, out_dir, 1, seed=p["seed"], overwrite=overwrite, batch_size=1, progress=progress,
                           **replay(p))
    path = out_dir / sample_names(1, p["seed"], "png")[0]
    with Image.open(path) as new, Image.open(image) as old:
        same = new.size == old.size and np.array_equal(np.asarray(new), np.asarray(old))
    return {**result, "path": path, "same": same, "parameters": p}
