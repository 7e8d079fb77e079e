"""What a sample is conditioned on (a class, a prompt, a layout), and classifier-free guidance towards it.

    c = conditioning(run, prompts=["a large red circle"], negative_prompts=["a blue square"], guidance=3)
    denoiser, cond = c.batch(range(0, 16), device)    # per-sample conditioning of samples 0..15
    x = sample(denoiser, noise, ..., cond=cond)

Each condition the run's model reads (diffusely.conditions) builds its inputs; classes, prompts and layouts
cycle over the samples (sample i gets classes[i % len(classes)]). A negative prompt
replaces the null caption in the unconditional half of guidance: D = D(neg) + w (D(prompt) - D(neg)).
Guided estimates are clipped to the data's range (Imagen's static thresholding).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..checkpoint import LoadedRun
from ..conditions import FromSamples, conditions
from ..denoisers import ClassifierFreeGuidance, Thresholded
from ..layout import box_class
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
    """What samples are asked for, per condition of the run (diffusely.conditions) by name: `asked` holds the values
    ("class": label indices, "text": prompts, "layout": lists of boxes (class, x0, y0, x1, y1[, direction]) in
    pixels of the run's images), cycled over the samples; `negatives` the values that replace a condition's null
    value in guidance's unconditional half (negative prompts). The guidance scale (1: no guidance), and the data
    range that guided estimates are clipped to (None: no clipping)."""

    run: LoadedRun
    asked: dict[str, list]
    guidance: float
    clip: Optional[tuple[float, float]] = (-1.0, 1.0)
    negatives: dict[str, list] = field(default_factory=dict)

    @property
    def layouts(self) -> Optional[list[list[tuple]]]:
        return self.asked.get("layout")

    def batch(self, indices: Sequence[int], device) -> tuple[object, dict]:
        """The denoiser (guided where asked) and the conditioning of samples `indices`: every condition the model
        reads gets the values asked for, or its null value to sample unconditionally."""
        run, b = self.run, len(indices)
        cycle = lambda values: [values[i % len(values)] for i in indices]  # noqa: E731
        cond, uncond = {}, {}
        for condition in conditions(run.config, {"text": run.text}):
            asked, negatives = self.asked.get(condition.name), self.negatives.get(condition.name)
            cond.update(condition.given(cycle(asked), device) if asked else condition.null(b, device))
            # what is given of the sample itself (first frames, a low-res image) stays in both halves: guidance
            # steers towards the class, prompt or layout, and its other half continues the same frames
            if asked and not isinstance(condition, FromSamples):
                uncond.update(condition.given(cycle(negatives), device) if negatives else condition.null(b, device))
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
        if "layout" not in run.config.conditions:
            raise ValueError("this run was trained without layouts; train with --layout to sample from boxes")
        layouts = [[_layout_box(run, box) for box in layout] for layout in layouts]
    else:
        layouts = None
    if prompts:
        if "text" not in run.config.conditions:
            raise ValueError("this run was trained without text; train with --text to sample from prompts")
        prompts = [check_prompt(p) for p in prompts]
        _warn_about_prompts(run, prompts)
    else:
        prompts = None
    if negative_prompts:
        if not prompts:
            raise ValueError("a negative prompt replaces the unconditional half of guidance towards a prompt; "
                             "give a prompt too")
        negative_prompts = [check_prompt(p, "negative prompt") for p in negative_prompts]
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
    if negative_prompts and guidance in (0, 1):  # 1 ignores the other half; 0 draws it: the negative prompt itself
        raise ValueError(f"a negative prompt acts through guidance, and --guidance {guidance:g} "
                         f"{'has none' if guidance == 1 else 'would draw the negative prompt itself'}: give a guidance "
                         f"above 1 (the default with a prompt is {TEXT_GUIDANCE:g}), or drop --negative-prompt")
    # pixels lie in [-1, 1]; a latent run's latents have no such bound, so its estimates are not clipped
    clip = None if getattr(run, "latent", None) is not None else (-1.0, 1.0)
    asked = {name: values for name, values in (("class", classes), ("text", prompts), ("layout", layouts)) if values}
    return Conditioning(run, asked, float(guidance), clip, {"text": negative_prompts} if negative_prompts else {})


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
