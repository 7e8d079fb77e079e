"""What a sample is conditioned on (a class, a prompt), and classifier-free guidance towards it.

    c = conditioning(run, prompts=["a large red circle"], negative_prompts=["a blue square"], guidance=3)
    denoiser, cond = c.batch(range(0, 16), device)    # per-sample conditioning of samples 0..15
    x = sample(denoiser, noise, ..., cond=cond)

Classes and prompts cycle over the samples (sample i gets classes[i % len(classes)]). A negative prompt
replaces the null caption in the unconditional half of guidance: D = D(neg) + w (D(prompt) - D(neg)).
Guided estimates are clipped to the data's range (Imagen's static thresholding).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..checkpoint import LoadedRun
from ..denoisers import ClassifierFreeGuidance, Thresholded
from ..layout import box_class, pack_boxes, render_run_layout
from ..text import check_prompt

CLASS_GUIDANCE = 2.0  # default scale when sampling a class
TEXT_GUIDANCE = 3.0  # default scale when sampling a prompt
LAYOUT_GUIDANCE = 2.0  # default scale when sampling a layout


def class_index(run: LoadedRun, value) -> int:
    """A class of the run by name (as stored at training) or by index; a ValueError lists the valid ones."""
    k = run.config.model.num_classes
    if not k:
        raise ValueError("this run was trained without classes; train with --classes to sample by class")
    names = list(run.config.data.class_names) or [str(i) for i in range(k)]
    text = str(value).strip()
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < k:
        return int(text)
    raise ValueError(f"unknown class {text!r}; this run's classes: {', '.join(names)} (or an index 0..{k - 1})")


@dataclass
class Conditioning:
    """Per-sample class labels, prompts and layouts (None: none asked; a layout is a list of boxes (class, x0,
    y0, x1, y1[, direction]) in pixels of the run's images), the guidance scale (1: no guidance), and the data range that
    guided estimates are clipped to (None: no clipping)."""

    run: LoadedRun
    classes: Optional[list[int]]
    prompts: Optional[list[str]]
    negative_prompts: Optional[list[str]]
    guidance: float
    clip: Optional[tuple[float, float]] = (-1.0, 1.0)
    layouts: Optional[list[list[tuple]]] = None

    def batch(self, indices: Sequence[int], device) -> tuple[object, dict]:
        """The denoiser (guided where asked) and the conditioning of samples `indices`."""
        run, b = self.run, len(indices)
        cond, uncond = {}, {}
        if self.classes is not None:
            cond["class_labels"] = torch.tensor([self.classes[i % len(self.classes)] for i in indices], device=device)
            uncond["class_labels"] = torch.full((b,), run.config.model.num_classes, device=device)
        if run.config.text.enabled:
            # a text model always reads a text: the prompts, or the null caption to sample unconditionally
            prompts = [self.prompts[i % len(self.prompts)] for i in indices] if self.prompts else [None] * b
            cond.update(run.text.cond(prompts, device))
            if self.prompts:
                negatives = ([self.negative_prompts[i % len(self.negative_prompts)] for i in indices]
                             if self.negative_prompts else [None] * b)
                uncond.update(run.text.cond(negatives, device))
        if run.config.model.layout_channels:
            # a layout model always reads a layout: the one asked for, or the null layout
            boxes = pack_boxes([self.layouts[i % len(self.layouts)] for i in indices] if self.layouts else [[]] * b)
            cond["layout"] = render_run_layout(boxes, run.config, run.config.sample_shape[1:],
                                               given=torch.full((b,), bool(self.layouts))).to(device)
            if self.layouts:
                uncond["layout"] = torch.zeros_like(cond["layout"])
        if not uncond or self.guidance == 1:
            return run.denoiser, cond
        guided = ClassifierFreeGuidance(run.denoiser, self.guidance, uncond)
        return (Thresholded(guided, *self.clip) if self.clip else guided), cond


def conditioning(run: LoadedRun, *, classes: Optional[Sequence] = None, prompts: Optional[Sequence[str]] = None,
                 negative_prompts: Optional[Sequence[str]] = None, guidance: Optional[float] = None,
                 layouts: Optional[Sequence[Sequence[tuple]]] = None) -> Conditioning:
    """Check what is asked of `run` and resolve class names. guidance defaults to CLASS_GUIDANCE with classes,
    TEXT_GUIDANCE with prompts, LAYOUT_GUIDANCE with layouts; without any, a conditional run samples
    unconditionally (the null label, caption or layout) and guidance is refused."""
    classes = [class_index(run, c) for c in classes] if classes else None
    if layouts:
        if not run.config.model.layout_channels:
            raise ValueError("this run was trained without layouts; train with --layout to sample from boxes")
        layouts = [[_layout_box(run, box) for box in layout] for layout in layouts]
    else:
        layouts = None
    if prompts:
        if not run.config.text.enabled:
            raise ValueError("this run was trained without text; train with --text to sample from prompts")
        prompts = [check_prompt(p) for p in prompts]
        _warn_about_prompts(run, prompts)
    else:
        prompts = None
    if negative_prompts:
        if not prompts:
            raise ValueError("a negative prompt replaces the unconditional half of guidance towards a prompt; "
                             "give a prompt too")
        negative_prompts = [check_prompt(p) for p in negative_prompts]
        _warn_about_prompts(run, negative_prompts)
    else:
        negative_prompts = None
    if guidance is None:
        guidance = TEXT_GUIDANCE if prompts else CLASS_GUIDANCE if classes else LAYOUT_GUIDANCE if layouts else 1.0
    elif not (classes or prompts or layouts):
        raise ValueError("guidance steers towards a class, a prompt or a layout: give one (--class, --prompt, "
                         "or layouts to `diffusely synth`)")
    if not guidance >= 0:
        raise ValueError(f"guidance must be >= 0 (1: none, 0: unconditional), got {guidance}")
    # pixels lie in [-1, 1]; a latent run's latents have no such bound, so its estimates are not clipped
    clip = None if getattr(run, "latent", None) is not None else (-1.0, 1.0)
    return Conditioning(run, classes, prompts, negative_prompts, float(guidance), clip, layouts)


def _layout_box(run: LoadedRun, box) -> tuple:
    """A layout box (class name or index, x0, y0, x1, y1 in pixels of the run's images[, direction: +1, -1 or
    0, see diffusely.layout]), checked; a ValueError says what is wrong with it."""
    names, size = list(run.config.data.class_names), run.config.data.image_size
    try:
        cls, *rest = box
        x0, y0, x1, y1 = (float(v) for v in rest[:4])
        direction = rest[4] if len(rest) == 5 else 0
        if len(rest) not in (4, 5) or direction not in (-1, 0, 1):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"a layout box is (class, x0, y0, x1, y1[, direction]) with corners in pixels and direction "
                         f"+1 (top-left to bottom-right), -1 (bottom-left to top-right) or 0, got {box!r}") from None
    index = box_class(names, cls)
    if index is None:
        raise ValueError(f"unknown class {cls!r} in layout box {box!r}; this run's classes: {', '.join(names)}")
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
        raise ValueError(f"layout box {box!r} must satisfy 0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size} "
                         f"(corners in pixels of the run's {size} x {size} images)")
    return (index, x0, y0, x1, y1, int(direction))


def _warn_about_prompts(run: LoadedRun, prompts: list[str]) -> None:
    """Say which words the run's own tokenizer never saw (it reads them as <unk>), and which prompts are cut."""
    encoder = run.text
    unknown = list(dict.fromkeys(w for p in prompts for w in encoder.unknown_words(p)))
    if unknown:
        warnings.warn(f"words this run never saw in its captions, read as unknown: {', '.join(unknown[:12])}"
                      f"{' ...' if len(unknown) > 12 else ''}", UserWarning, stacklevel=3)
    long = [p for p in dict.fromkeys(prompts) if encoder.length(p) > encoder.max_tokens]
    if long:
        warnings.warn(f"{len(long)} prompt(s) longer than the {encoder.max_tokens} tokens this run reads are cut, "
                      f"e.g. {long[0]!r}", UserWarning, stacklevel=3)
