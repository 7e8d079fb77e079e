"""The built-in `sounds` dataset: short clips synthesised in code, six classes, each clip from its own seed.

    pluck   a plucked string, Karplus-Strong (Karplus & Strong 1983): a noise burst circulating in a delay line
            of one period, averaged (a low-pass) on each pass, so high partials die first
    bell    FM synthesis (Chowning 1973) at an inharmonic ratio, the modulation index decaying with the loudness
    bowed   a sustained tone of harmonics falling as 1/k, with vibrato (5-6 Hz), a slow attack and a release
    kick    a sine swept down from ~150 Hz to ~45 Hz under a fast decay, with a click
    snare   a decaying noise burst over a short tone near 200 Hz
    hat     high-passed noise with a very short decay

Pitch, duration of the envelope, onset (0 to 50 ms) and loudness (peak 0.3 to 0.9) vary per clip. Clips are
stored as (N, L, 1) uint8 μ-law codes (diffusely.audio), labels (N,) int64 in the order of CLASSES.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..audio import DEFAULT_RATE, to_codes

CLASSES = ("pluck", "bell", "bowed", "kick", "snare", "hat")


@dataclass
class SoundsData:
    """images: (N, L, 1) uint8 μ-law codes; labels (N,) int64; a caption per clip; no boxes; the sample rate."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    captions: list[str]
    boxes: None
    sample_rate: int


def _pluck(t: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    f0 = float(np.exp(rng.uniform(np.log(110), np.log(440))))
    period = max(2, int(round(rate / f0)))
    decay = rng.uniform(0.990, 0.999)
    y = np.zeros(len(t) + period + 1)
    y[:period + 1] = rng.uniform(-1, 1, period + 1)
    # y[n] = decay (y[n - N] + y[n - N - 1]) / 2: a block of N samples depends only on earlier blocks
    for start in range(period + 1, len(y), period):
        n = np.arange(start, min(start + period, len(y)))
        y[n] = decay * 0.5 * (y[n - period] + y[n - period - 1])
    return y[period + 1:], f"a plucked string at {rate / period:.0f} Hz"


def _bell(t: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    fc = float(np.exp(rng.uniform(np.log(300), np.log(1200))))
    ratio, index, tau = rng.choice([1.4, 2.76, 3.5]), rng.uniform(2, 5), rng.uniform(0.2, 0.6)
    envelope = np.exp(-t / tau)
    return envelope * np.sin(2 * np.pi * fc * t + index * envelope * np.sin(2 * np.pi * fc * ratio * t)), \
        f"a bell at {fc:.0f} Hz"


def _bowed(t: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    f0 = float(np.exp(rng.uniform(np.log(150), np.log(600))))
    vibrato = 1 + rng.uniform(0.005, 0.012) * np.sin(2 * np.pi * rng.uniform(5, 6) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / rate
    y = sum(np.sin(k * phase) / k for k in range(1, 9) if k * f0 < 0.45 * rate)
    attack, release = rng.uniform(0.05, 0.25), rng.uniform(0.1, 0.3)
    envelope = np.clip(t / attack, 0, 1) * np.clip((t[-1] - t) / release, 0, 1)
    return envelope * y, f"a bowed tone at {f0:.0f} Hz"


def _kick(t: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    f_hi, f_lo, sweep = rng.uniform(120, 180), rng.uniform(40, 55), rng.uniform(0.03, 0.08)
    frequency = f_lo + (f_hi - f_lo) * np.exp(-t / sweep)
    body = np.sin(2 * np.pi * np.cumsum(frequency) / rate) * np.exp(-t / rng.uniform(0.15, 0.35))
    click = rng.uniform(-1, 1, len(t)) * np.exp(-t / 0.003) * 0.3
    return body + click, f"a kick drum at {f_lo:.0f} Hz"


def _snare(t: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    f0 = rng.uniform(170, 230)
    noise = rng.uniform(-1, 1, len(t)) * np.exp(-t / rng.uniform(0.06, 0.15))
    tone = np.sin(2 * np.pi * f0 * t) * np.exp(-t / 0.04)
    return noise + 0.6 * tone, f"a snare drum at {f0:.0f} Hz"


def _hat(t: np.ndarray, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    noise = rng.uniform(-1, 1, len(t) + 2)
    high = noise[2:] - 2 * noise[1:-1] + noise[:-2]  # a second difference: +12 dB per octave
    tau = rng.uniform(0.02, 0.08)
    return high * np.exp(-t / tau), f"a hi-hat, {tau * 1000:.0f} ms"


SYNTHS = (_pluck, _bell, _bowed, _kick, _snare, _hat)  # in the order of CLASSES


def render_clip(label: int, length: int, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One clip of class CLASSES[label]: (length,) float in [-1, 1] at `rate` and its caption."""
    onset = min(int(rng.uniform(0, 0.05) * rate), length // 4)  # a short clip keeps most of its sound
    t = np.arange(length - onset) / rate
    y, caption = SYNTHS[label](t, rate, rng)
    y = np.concatenate([np.zeros(onset), y])
    return rng.uniform(0.3, 0.9) * y / max(np.abs(y).max(), 1e-9), caption


def render_sounds(count: int, length: int, rate: int = DEFAULT_RATE, seed: int = 0) -> SoundsData:
    """`count` clips of `length` samples at `rate` Hz, classes in turn (clip i is class i mod 6), clip i drawn
    from the generator seeded (seed, i) alone: the same clip whatever the count."""
    waves, labels, captions = np.zeros((count, length), np.float32), np.arange(count) % len(CLASSES), []
    for i in range(count):
        waves[i], caption = render_clip(int(labels[i]), length, rate, np.random.default_rng([seed, i]))
        captions.append(caption)
    return SoundsData(to_codes(waves), labels.astype(np.int64), list(CLASSES), captions, None, rate)


@functools.lru_cache(maxsize=1)
def _rendered(count: int, length: int, rate: int, seed: int) -> SoundsData:
    return render_sounds(count, length, rate, seed)


def builtin_sounds(size: int, seed: int = 0, count: int = 1200, rate: int = 0) -> SoundsData:
    """The built-in sounds: `count` clips of `size` samples at `rate` Hz (0: the default rate, 8 kHz), labelled.
    The last rendering stays in memory (a benchmark loads the same set several times); each call gets a copy."""
    data = _rendered(count, size, rate or DEFAULT_RATE, seed)
    return SoundsData(data.images.copy(), data.labels.copy(), list(data.class_names), list(data.captions), None,
                      data.sample_rate)
