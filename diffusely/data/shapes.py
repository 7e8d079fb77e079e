"""A built-in dataset drawn in code: colored circles, squares, triangles and crosses, with captions and boxes.

Image i depends only on (seed, i), so the data is the same on every machine and any index can be
regenerated alone. Shapes are drawn at 4x and downscaled with LANCZOS, so edges are antialiased.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ["circle", "square", "triangle", "cross"]

COLORS = {
    "red": (220, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (250, 215, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 215),
    "blue": (35, 85, 230),
    "purple": (145, 55, 195),
    "pink": (240, 120, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

BACKGROUNDS = {
    "dark gray": (50, 50, 55),
    "navy": (20, 28, 70),
    "dark green": (22, 58, 38),
    "dark brown": (62, 42, 30),
    "dark purple": (52, 28, 64),
    "light gray": (205, 205, 205),
    "beige": (232, 218, 185),
    "light blue": (185, 210, 232),
    "light green": (195, 228, 195),
    "light pink": (240, 205, 215),
    "lavender": (215, 205, 240),
}

# a shape color must differ from the background in brightness (so it survives conversion to grayscale)
# and in at least one channel by a clear margin; yellow on beige passes neither and is never drawn.
MIN_LUMA_DIFF = 40.0
MIN_CHANNEL_DIFF = 100.0

SUPERSAMPLE = 4
MARGIN = 1.0  # output pixels kept free at the border, so antialiased edges stay inside the image
GAP = 1.0  # output pixels between the boxes of two shapes
PLACEMENT_TRIES = 50


@dataclass
class ShapesData:
    """Rendered shapes: images (N, S, S, 3) uint8 RGB, labels (N,) int64 = class of the first shape,
    one caption per image, per image a list of boxes (class_index, x0, y0, x1, y1) in output pixels."""

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]
    boxes: list[list[tuple[int, float, float, float, float]]]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.images)


def render_shapes(count: int, size: int = 32, seed: int = 0, max_shapes: int = 1, start: int = 0) -> ShapesData:
    """Draw images start .. start+count-1, each size x size pixels holding 1..max_shapes non-overlapping shapes.

    Image i is a pure function of (seed, i, size, max_shapes), so render_shapes(1, start=i) regenerates
    image i of any larger batch. Costs roughly 0.3 ms per 32x32 image on one CPU core.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels to draw a recognisable shape, got {size}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if max_shapes < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    captions, boxes = [], []
    for i in range(count):
        image, shapes, caption = _render_one(np.random.default_rng([seed, start + i]), size, max_shapes)
        images[i] = image
        labels[i] = shapes[0][0]
        captions.append(caption)
        boxes.append([(cls, *box) for cls, box, _, _ in shapes])
    return ShapesData(images, labels, captions, boxes, list(CLASS_NAMES))


def write_shapes_folder(root, count: int, size: int = 32, seed: int = 0) -> list[Path]:
    """Write `count` single-shape images as PNGs into class subfolders: root/circle/00000.png, ...

    Returns the written paths, in index order.
    """
    data = render_shapes(count, size=size, seed=seed)
    root = Path(root)
    paths = []
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        path = root / CLASS_NAMES[label] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# one image


def _render_one(rng: np.random.Generator, size: int, max_shapes: int):
    """Returns the (size, size, 3) uint8 image, its shapes [(class, box, size_word, color_name)] and its caption."""
    bg_name = _pick(rng, list(BACKGROUNDS))
    background = _background(rng, size, BACKGROUNDS[bg_name])
    # a linear gradient is extreme at the corners: a shape color must contrast with all four
    corners = background[[0, 0, -1, -1], [0, -1, 0, -1]]
    ok = _contrasts(corners)
    ok_colors = [name for name, good in zip(COLORS, ok) if good]
    if not ok_colors:  # unreachable with the palettes above, kept so a palette edit cannot crash rendering
        ok_colors = ["white" if _luma(corners).mean() < 128 else "black"]

    n = int(rng.integers(1, max_shapes + 1))
    # more shapes must fit without overlapping, so each is drawn smaller
    shrink = 1.0 if n == 1 else 0.9 / math.sqrt(n)
    shapes = []
    for _ in range(n):
        cls = int(rng.integers(len(CLASS_NAMES)))
        size_word = "large" if rng.random() < 0.5 else "small"
        low, high = (0.55, 0.75) if size_word == "large" else (0.35, 0.45)
        side = size * rng.uniform(low, high) * shrink
        color = _pick(rng, ok_colors)
        box = _place(rng, size, side, [b for _, b, _, _ in shapes])
        if box is not None:  # a crowded image simply holds fewer shapes
            shapes.append((cls, box, size_word, color))

    # coverage is drawn at 4x and downscaled; downscaling is linear, so summing color * coverage per color
    # equals downscaling a premultiplied color image, at one single-channel resize per distinct color
    big = size * SUPERSAMPLE
    alpha = np.zeros((size, size, 1), dtype=np.float32)
    paint = np.zeros((size, size, 3), dtype=np.float32)
    for color in dict.fromkeys(color for _, _, _, color in shapes):
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        for cls, box, _, shape_color in shapes:
            if shape_color == color:
                _draw_shape(draw, cls, box, 255)
        coverage = np.asarray(mask.resize((size, size), Image.LANCZOS), dtype=np.float32)[..., None] / 255.0
        alpha += coverage
        paint += coverage * np.asarray(COLORS[color], dtype=np.float32)
    image = background * (1.0 - alpha) + paint
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, shapes, _caption(shapes, bg_name)


def _pick(rng: np.random.Generator, names: list[str]) -> str:
    return names[int(rng.integers(len(names)))]


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Brightness of (..., 3) RGB values with the ITU-R 601-2 weights that PIL's convert("L") uses."""
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)


def _contrasts(backgrounds: np.ndarray) -> np.ndarray:
    """Whether each palette color contrasts with all of the (K, 3) background colors: (len(COLORS),) bool."""
    luma_diff = np.abs(_luma(_PALETTE)[:, None] - _luma(backgrounds)[None, :])
    channel_diff = np.abs(_PALETTE[:, None, :] - backgrounds[None, :, :]).max(axis=-1)
    return ((luma_diff >= MIN_LUMA_DIFF) & (channel_diff >= MIN_CHANNEL_DIFF)).all(axis=1)


@lru_cache(maxsize=8)
def _unit_coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-center coordinates in [-1, 1], as (size, size) arrays for x and y."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(t, t, indexing="xy")


def _background(rng: np.random.Generator, size: int, base_rgb) -> np.ndarray:
    """A (size, size, 3) float32 background: the base color jittered, half the time with a gentle linear gradient."""
    start = np.clip(np.asarray(base_rgb, dtype=np.float32) + rng.uniform(-10, 10, 3), 0, 255)
    if rng.random() < 0.5:
        return np.broadcast_to(start, (size, size, 3)).astype(np.float32)
    # the far end of the gradient is 6-12% brighter or darker, along a random direction
    change = rng.uniform(0.06, 0.12) * (1 if rng.random() < 0.5 else -1)
    end = np.clip(start * (1 + change), 0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    x, y = _unit_coords(size)
    t = (x * math.cos(angle) + y * math.sin(angle)) / (abs(math.cos(angle)) + abs(math.sin(angle)))  # in [-1, 1]
    t = (t[..., None] + 1) / 2
    return (start + (end - start) * t).astype(np.float32)


def _place(rng, size: int, side: float, taken: list[tuple]) -> tuple[float, float, float, float] | None:
    """A random box of the given side, fully inside the image and GAP away from the `taken` boxes, or None."""
    for _ in range(PLACEMENT_TRIES):
        x0 = rng.uniform(MARGIN, size - MARGIN - side)
        y0 = rng.uniform(MARGIN, size - MARGIN - side)
        box = (x0, y0, x0 + side, y0 + side)
        if all(_apart(box, other) for other in taken):
            return box
    return None


def _apart(a, b) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def _draw_shape(draw: ImageDraw.ImageDraw, cls: int, box, fill) -> None:
    """Draw class `cls` filling `box` (output pixels) on a SUPERSAMPLE-times larger canvas."""
    # PIL includes the pixel at the end coordinate, so the far edge is pulled in by one canvas pixel
    x0, y0 = box[0] * SUPERSAMPLE, box[1] * SUPERSAMPLE
    x1, y1 = box[2] * SUPERSAMPLE - 1, box[3] * SUPERSAMPLE - 1
    name = CLASS_NAMES[cls]
    if name == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif name == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif name == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    elif name == "cross":
        # arms a third of the side thick, so the plus reads as a plus even at 8 pixels
        third = (x1 - x0) / 3
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=fill)
        draw.rectangle((x0, y0 + third, x1, y1 - third), fill=fill)
    else:
        raise ValueError(f"unknown shape class {cls}")


# ---------------------------------------------------------------------------------------------
# captions


NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}


def _caption(shapes, bg_name: str) -> str:
    """'a large red circle above a small blue triangle on a navy background': the first shape, then where it
    is relative to each other shape (from box centers). Alike shapes (same size, color and class) are
    counted: 'two small red circles on a navy background', 'a large blue square above two small red circles
    ...' (when the first shape stands in the same relation to both)."""
    words = [f"{size_word} {color} {CLASS_NAMES[cls]}" for cls, _, size_word, color in shapes]
    if len(shapes) > 1 and len(set(words)) == 1:
        return f"{_counted(words[0], len(shapes))} on a {bg_name} background"
    main_box = shapes[0][1]
    groups: list[list] = []  # [relation, words, count], runs of alike shapes in the same relation merged
    for (_, box, _, _), w in zip(shapes[1:], words[1:]):
        relation = _relation(main_box, box)
        if groups and groups[-1][:2] == [relation, w]:
            groups[-1][2] += 1
        else:
            groups.append([relation, w, 1])
    relations = [f"{relation} {_counted(w, count)}" for relation, w, count in groups]
    text = " and ".join([f"a {words[0]} {relations[0]}"] + relations[1:]) if relations else f"a {words[0]}"
    return f"{text} on a {bg_name} background"


def _counted(words: str, count: int) -> str:
    """'small red circle', 1 -> 'a small red circle'; 2 -> 'two small red circles'."""
    if count == 1:
        return f"a {words}"
    *adjectives, noun = words.split(" ")
    return " ".join([NUMBER_WORDS.get(count, str(count)), *adjectives, PLURALS[noun]])


def _relation(box, other) -> str:
    """Where `box` is relative to `other`, along the axis where their centers differ most (y grows downwards)."""
    dx = (box[0] + box[2] - other[0] - other[2]) / 2
    dy = (box[1] + box[3] - other[1] - other[3]) / 2
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


# ---------------------------------------------------------------------------------------------
# paraphrases

# Other words for the captions' words, for caption augmentation (`--paraphrases K`). A text model trained on
# them learns what a pretrained encoder's embeddings of color, shape and place words mean, not one wording.
# None of these is a word that diffusely.metrics.adherence.reword uses: the benchmark rewords prompts with
# words that training never showed, so it measures how far the encoder carries the model past its captions.
PARAPHRASES = {
    "large": ["huge", "sizable", "giant"], "small": ["little", "miniature", "petite"],
    "red": ["scarlet", "ruby", "cherry red"], "orange": ["amber", "apricot", "pumpkin orange"],
    "yellow": ["lemon", "canary yellow", "sunflower yellow"], "green": ["lime", "jade", "grass green"],
    "cyan": ["aqua", "aquamarine", "light teal"], "blue": ["cobalt", "sapphire", "royal blue"],
    "purple": ["amethyst", "mauve", "grape purple"], "pink": ["fuchsia", "hot pink", "bubblegum pink"],
    "white": ["snow white", "pearl", "chalk white"], "black": ["jet black", "onyx", "coal black"],
    "circle": ["round dot", "orb", "round shape"], "circles": ["round dots", "round shapes"],
    "square": ["box shape", "tile", "four-sided shape"], "squares": ["tiles", "box shapes"],
    "triangle": ["wedge", "three-sided shape", "arrowhead"], "triangles": ["wedges", "arrowheads"],
    "cross": ["crossed-bar mark", "two-bar mark"], "crosses": ["crossed-bar marks", "two-bar marks"],
    "above": ["on top of", "higher than"], "below": ["under", "lower than", "underneath"],
    "left of": ["leftward of", "west of"], "right of": ["rightward of", "east of"],
    "dark gray": ["graphite", "slate gray"], "navy": ["dark blue", "indigo"], "dark green": ["pine green", "hunter green"],
    "dark brown": ["coffee brown", "mahogany"], "dark purple": ["eggplant", "aubergine"],
    "light gray": ["pale gray", "ash gray"], "beige": ["tan", "khaki"], "light blue": ["baby blue", "powder blue"],
    "light green": ["pale green", "pistachio"], "light pink": ["pale pink", "peach"],
    "lavender": ["pale purple", "wisteria"],
    "on a": ["in front of a", "set on a"], "background": ["surface", "canvas", "field"], "and": ["and also"],
}
_PARAPHRASE_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, PARAPHRASES), key=len, reverse=True)) + r")\b")


def paraphrase(caption: str, rng: np.random.Generator, p: float = 0.5) -> str:
    """The caption with each word (or phrase) of PARAPHRASES replaced, with probability p, by one of its other
    words: 'a large red circle on a navy background' -> 'a huge scarlet circle in front of a navy canvas'."""
    def swap(match):
        options = PARAPHRASES[match.group(1)]
        return options[int(rng.integers(len(options)))] if rng.random() < p else match.group(1)

    text = _PARAPHRASE_RE.sub(swap, caption)
    return re.sub(r"\ban? (?=\w)", lambda m: "an " if text[m.end()] in "aeiou" else "a ", text)


def caption_variants(captions: list[str], count: int, seed: int = 0) -> list[list[str]]:
    """Per caption, itself and `count` paraphrases of it; those of caption i depend only on (seed, i, caption)."""
    out = []
    for i, caption in enumerate(captions):
        rng = np.random.default_rng([seed, i, 11])
        out.append([caption] + [paraphrase(caption, rng) for _ in range(count)])
    return out
