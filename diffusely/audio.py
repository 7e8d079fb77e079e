"""Sound as a modality: reading and writing audio files, μ-law codes, resampling, log-mel spectrograms and the
pictures (waveform over log-mel) that stand for a clip wherever an image would be shown.

A clip is stored as the rest of the data is, (L, 1) uint8 channels last: 8-bit μ-law codes (ITU-T G.711's curve
with mu = 255, as WaveNet quantises audio), so quiet passages keep their detail that linear 8-bit would lose. The
network sees each clip's log-magnitude spectrogram (the default) or its linear amplitudes (`data.amplitude`, see
`network_input`); its samples (a spectrogram through Griffin-Lim) are companded back for the pictures and the
classifier, and expanded from there (never from 8-bit codes) to be written as 16-bit PCM WAV.

soundfile (libsndfile) and soxr come with `pip install 'diffusely[audio]'` and are imported where used.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import torch

MU = 255.0
DEFAULT_RATE = 8000  # Hz: the fast CPU default; 16000 is DiffWave's SC09 rate
EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")  # what the bundled libsndfile 1.2 reads
N_MELS = 64
WAVE_ROWS = 32  # height of the waveform panel above a tile's spectrogram


class AudioMissing(ValueError):
    """soundfile or soxr is not installed; the message says how to install them."""


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise AudioMissing("reading and writing audio needs soundfile: pip install 'diffusely[audio]'") from None
    return soundfile


# ------------------------------------------------------------------------------ μ-law codes


def mu_compress(x: np.ndarray | torch.Tensor):
    """Linear amplitude in [-1, 1] -> companded in [-1, 1]: sign(x) ln(1 + mu |x|) / ln(1 + mu) (G.711)."""
    lib = torch if torch.is_tensor(x) else np
    return lib.sign(x) * lib.log1p(MU * lib.abs(x)) / math.log1p(MU)


def mu_expand(y: np.ndarray | torch.Tensor):
    """The inverse of mu_compress: companded in [-1, 1] -> linear amplitude in [-1, 1]."""
    lib = torch if torch.is_tensor(y) else np
    return lib.sign(y) * ((1.0 + MU) ** lib.abs(y) - 1.0) / MU


def network_dims(config) -> int:
    """The spatial axes of what a run's network denoises: an audio run's 2 on spectrograms, 1 on waveforms; the
    model's otherwise."""
    if config.data.modality != "audio":
        return config.model.dims
    return 2 if spectrogram_network(config) else 1


def check_audio_network(config) -> None:
    """An audio run's network has the dims of what it learns (data.amplitude), and its clips a rate; raises
    ConfigError if not."""
    from .jsonconfig import ConfigError

    if config.data.modality == "audio" and config.data.sample_rate < 1000:  # a hand-written config's 0 or typo
        raise ConfigError(f"an audio run needs data.sample_rate, its clips' rate in Hz, from 1000 (--sample-rate's "
                          f"floor), not {config.data.sample_rate}: set it in the config file ({DEFAULT_RATE} is the "
                          f"default)")
    if config.data.modality == "audio" and config.model.dims != network_dims(config):
        raise ConfigError(f"an audio run with data.amplitude {config.data.amplitude} runs a {network_dims(config)}-D "
                          f"network, not model.dims {config.model.dims}: set model.dims {network_dims(config)}, or "
                          f"choose its audio model with --audio-model")


def data_dims(config) -> int:
    """The spatial axes of a sample as the data holds it: a clip's one, even where its network sees it as a 2-D
    spectrogram; the model's otherwise."""
    return 1 if config.data.modality == "audio" else config.model.dims


def spectrogram_input(config) -> tuple[int, int, int]:
    """(C, bins, frames) of what a spectrogram run's network denoises: frames padded to the U-Net's factor."""
    d = config.data
    return (config.model.in_channels, *spectrogram_shape(d.image_size, d.sample_rate, config.model.downsample_factor))


def spectrogram_network(config) -> bool:
    """Does the run's network see log-magnitude spectrograms (`data.amplitude` spectrogram, the audio default for new
    runs; a 2-D U-Net on them, Griffin-Lim back to a waveform)?"""
    return config.data.modality == "audio" and config.data.amplitude == "spectrogram"


def linear_network(config) -> bool:
    """Does the run's network see linear amplitudes? An audio run of config version 5 on does (`data.amplitude`):
    waveform diffusion on the companded waveform left a loud hiss. mu-law companding stretches a clip's quiet tail
    to half of full scale, so what the network misses near sigma 0 stays in the sample as loud noise (on the quick
    clips, 6000 steps: FD 412 companded against 357 linear at the same noise levels; docs/audio.md)."""
    return config.data.modality == "audio" and config.data.amplitude == "linear"


def network_input(x: torch.Tensor, config) -> torch.Tensor:
    """Companded clips (B, C, L) in [-1, 1], as to_tensor gives the codes -> what the run's network sees."""
    if spectrogram_network(config):
        return spectrogram(mu_expand(x), config.data.sample_rate, spectrogram_input(config)[-1])
    return mu_expand(x) if linear_network(config) else x


def network_output(x: torch.Tensor, config) -> torch.Tensor:
    """The inverse of network_input: what the network draws -> companded clips in [-1, 1], as pictured and written."""
    if spectrogram_network(config):
        return mu_compress(griffin_lim(x, config.data.sample_rate, config.data.image_size))
    return mu_compress(x.clamp(-1, 1)) if linear_network(config) else x


# ------------------------------------------------------------------------------ the network's spectrograms

# natural-log magnitude, the STFT divided by its window's sum (a full-scale sine: ln 0.5), mapped to [-1, 1]: 12 nats
# (104 dB) reach below the quietest detail of 8-bit mu-law codes
LOG_FLOOR, LOG_TOP = -12.0, 0.0


def spectrogram_shape(length: int, rate: int, multiple: int = 1) -> tuple[int, int]:
    """(frequency bins, frames) of a clip's network spectrogram: stft_size(rate) / 2 bins (the Nyquist bin left out),
    length // hop + 1 frames padded to a multiple of `multiple` (the U-Net's downsampling factor)."""
    n_fft = stft_size(rate)
    frames = length // (n_fft // 4) + 1
    return n_fft // 2, -(-frames // multiple) * multiple


def spectrogram(waves: torch.Tensor, rate: int, frames: int) -> torch.Tensor:
    """(B, C, L) linear amplitudes -> (B, C, n_fft / 2, frames) log magnitude in [-1, 1] (-1: silence, LOG_FLOOR),
    Hann window of stft_size(rate), hop a quarter of it, as log_mel; frames past the clip's end are silence."""
    n_fft = stft_size(rate)
    window = torch.hann_window(n_fft, device=waves.device)
    spec = torch.stft(waves.float().flatten(0, 1), n_fft, n_fft // 4, window=window, return_complex=True)
    magnitude = torch.log(spec.abs()[:, :n_fft // 2] / window.sum() + 1e-30).clamp(LOG_FLOOR, LOG_TOP)
    scaled = (magnitude - LOG_FLOOR) / (LOG_TOP - LOG_FLOOR) * 2 - 1
    scaled = torch.nn.functional.pad(scaled, (0, frames - scaled.shape[-1]), value=-1.0)
    return scaled.reshape(*waves.shape[:2], *scaled.shape[1:])


def griffin_lim(spec: torch.Tensor, rate: int, length: int, iterations: int = 64, momentum: float = 0.99,
                seed: int = 0) -> torch.Tensor:
    """The inverse of spectrogram: (B, C, bins, frames) in [-1, 1] -> (B, C, length) linear amplitudes in [-1, 1].
    The phase is found by fast Griffin-Lim (Perraudin et al. 2013: Griffin & Lim's projections with momentum, as
    torchaudio's GriffinLim), from a random phase of a fixed seed, the same for every clip, so the same spectrogram
    gives the same waveform whatever the batch it comes in; bins at the floor are silent."""
    n_fft, frames = stft_size(rate), spectrogram_shape(length, rate)[1]
    hop = n_fft // 4
    x = spec.float().flatten(0, 1)[..., :frames].clamp(-1, 1)
    magnitude = torch.exp((x + 1) / 2 * (LOG_TOP - LOG_FLOOR) + LOG_FLOOR) * (x > -1 + 1e-3)
    window = torch.hann_window(n_fft, device=spec.device)
    magnitude = torch.nn.functional.pad(magnitude * window.sum(), (0, 0, 0, 1))  # the Nyquist bin: zero
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, *magnitude.shape[1:])  # one start for every clip: a clip's sound is the same in any batch
    angles = torch.polar(torch.ones(shape), 2 * math.pi * torch.rand(shape, generator=g)).expand(magnitude.shape)
    angles, previous = angles.to(spec.device), torch.zeros_like(magnitude, dtype=angles.dtype, device=spec.device)
    for _ in range(iterations):
        rebuilt = torch.stft(torch.istft(magnitude * angles, n_fft, hop, window=window, length=length), n_fft, hop,
                             window=window, return_complex=True)
        angles = rebuilt - momentum / (1 + momentum) * previous
        angles, previous = angles / (angles.abs() + 1e-16), rebuilt
    waves = torch.istft(magnitude * angles, n_fft, hop, window=window, length=length).clamp(-1, 1)
    return waves.reshape(*spec.shape[:2], length)


def to_codes(waves: np.ndarray) -> np.ndarray:
    """(N, L) float amplitudes in [-1, 1] -> (N, L, 1) uint8 μ-law codes (to_tensor maps code k to k / 127.5 - 1)."""
    y = mu_compress(np.clip(waves, -1.0, 1.0))
    return np.round((y + 1.0) * 127.5).astype(np.uint8)[..., None]


def from_codes(codes: np.ndarray) -> np.ndarray:
    """(N, L, 1) uint8 μ-law codes -> (N, L) float32 amplitudes in [-1, 1]."""
    return mu_expand(codes[..., 0].astype(np.float32) / 127.5 - 1.0).astype(np.float32)


# ------------------------------------------------------------------------------ files


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(L,) or (L, C) float -> the same at rate_out, through soxr (libsoxr's "HQ" band-limited filter)."""
    if rate_in == rate_out:
        return wave
    try:
        import soxr
    except ImportError:
        raise AudioMissing(f"resampling {rate_in} Hz audio to {rate_out} Hz needs soxr: "
                           f"pip install 'diffusely[audio]'") from None
    return soxr.resample(wave, rate_in, rate_out, quality="HQ").astype(np.float32)


def read_audio(path, rate: int, length: int) -> np.ndarray:
    """One file (WAV, FLAC, OGG: what libsndfile reads) -> (length,) float32 in [-1, 1] at `rate`: channels
    averaged to mono, resampled, then the first `length` samples kept, a shorter clip padded with silence at its
    end (the policy: a sound's onset is where it begins, so clips are aligned on it, never cut into the middle).
    Raises what soundfile raises (a RuntimeError, LibsndfileError) for a file it cannot decode."""
    wave, file_rate = _soundfile().read(str(path), dtype="float32", always_2d=True)
    if wave.shape[0] == 0:
        raise ValueError("it holds no samples")
    wave = resample(wave.mean(axis=1), file_rate, rate)[:length]
    return np.pad(wave, (0, length - len(wave))).astype(np.float32)


def to_pcm16(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    """(L,) float in [-1, 1] -> (L,) int16, rounded and clipped (full scale 32767)."""
    wave = wave.detach().float().cpu().numpy() if torch.is_tensor(wave) else np.asarray(wave, np.float64)
    return np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16)


def write_wav(path, pcm: np.ndarray, rate: int, comment: str | None = None) -> None:
    """(L,) or (L, C) int16 -> a 16-bit PCM WAV at `path` (a temporary name: the format is given, not guessed);
    `comment` goes in the file's LIST INFO chunk (ICMT), where libsndfile, sox and most players read it."""
    sf = _soundfile()
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, subtype="PCM_16", format="WAV") as f:
        if comment:
            f.comment = comment
        f.software = "diffusely"
        f.write(pcm)


def read_comment(path) -> dict:
    """The JSON in a WAV's INFO comment (what write_wav stored), {} when it has none."""
    text = _soundfile().SoundFile(str(path)).comment
    return json.loads(text) if text else {}


def write_sample(x: torch.Tensor, path, fmt: str, rate: int, parameters: dict | None = None) -> None:
    """One generated sample (C, L), the network's companded output in [-1, 1], at `path`: a 16-bit WAV with the
    parameters as JSON in its INFO comment, or an .npy of (L, C) float32 linear amplitudes."""
    wave = mu_expand(x.detach().float().clamp(-1, 1)).movedim(0, -1).cpu().numpy()
    if fmt == "npy":
        with open(path, "wb") as f:
            np.save(f, wave.astype(np.float32), allow_pickle=False)
    else:
        write_wav(path, to_pcm16(wave), rate, json.dumps(parameters) if parameters else None)


# ------------------------------------------------------------------------------ spectrograms and pictures


@functools.lru_cache(maxsize=8)
def mel_filters(rate: int, n_fft: int, n_mels: int = N_MELS) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the HTK mel scale from 0 Hz to rate / 2."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(0.0, mel(rate / 2), n_mels + 2))
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up, down = (bins - lo) / (mid - lo), (hi - bins) / (hi - mid)
    return torch.from_numpy(np.maximum(0.0, np.minimum(up, down))).float()


def stft_size(rate: int) -> int:
    """The FFT size: a power of two near 32 ms (256 at 8 kHz, 512 at 16 kHz); hops are a quarter of it."""
    return 2 ** round(math.log2(rate * 0.032))


def log_mel(waves: torch.Tensor, rate: int, n_mels: int = N_MELS) -> torch.Tensor:
    """(B, L) linear amplitudes -> (B, n_mels, frames) natural-log mel power (floored at 1e-5), Hann window of
    stft_size(rate), hop a quarter of it, frames = L // hop + 1."""
    n_fft = stft_size(rate)
    spec = torch.stft(waves.float(), n_fft, n_fft // 4, window=torch.hann_window(n_fft, device=waves.device),
                      return_complex=True).abs() ** 2
    return torch.log(mel_filters(rate, n_fft, n_mels).to(waves.device) @ spec + 1e-5)


def _colour(values: np.ndarray) -> np.ndarray:
    """(..., ) floats in [0, 1] -> (..., 3) floats in [0, 1] on matplotlib's magma colour map."""
    from matplotlib import colormaps

    return colormaps["magma"](values)[..., :3]


def tiles(x: torch.Tensor, rate: int) -> torch.Tensor:
    """(B, C, L) companded clips in [-1, 1] -> (B, 3, WAVE_ROWS + N_MELS, frames) pictures in [-1, 1]: each clip's
    waveform (its min and max per spectrogram frame, white on black) over its log-mel spectrogram (low
    frequencies at the bottom, -11.5 to +5 natural-log power on the magma map), for grids and strips."""
    wave = mu_expand(x.detach().float().clamp(-1, 1).mean(1)).cpu()
    mel = log_mel(wave, rate)  # (B, n_mels, frames)
    frames, hop = mel.shape[-1], stft_size(rate) // 4
    spec = _colour(((mel.flip(1).numpy() + 11.5) / 16.5).clip(0, 1))  # (B, n_mels, frames, 3)
    padded = torch.nn.functional.pad(wave, (0, frames * hop - wave.shape[-1])).reshape(len(wave), frames, hop)
    lo, hi = padded.amin(-1).numpy(), padded.amax(-1).numpy()  # (B, frames)
    rows = (1 - (np.arange(WAVE_ROWS) + 0.5) / WAVE_ROWS * 2)[None, :, None]  # amplitude at each row, top +1
    panel = ((rows >= lo[:, None, :] - 1 / WAVE_ROWS) & (rows <= hi[:, None, :] + 1 / WAVE_ROWS)).astype(np.float64)
    picture = np.concatenate([np.repeat(panel[..., None], 3, -1), spec], axis=1)
    return torch.from_numpy(picture).permute(0, 3, 1, 2).float() * 2 - 1


def save_grid(x: torch.Tensor, path, rate: int, nrow: int | None = None) -> Path:
    """Save clips (B, C, L) in [-1, 1] as one PNG of their waveform-over-spectrogram tiles, enlarged twice."""
    from . import viz

    pictures = tiles(x, rate)
    return viz.save_grid(pictures.repeat_interleave(2, -1).repeat_interleave(2, -2), path,
                         nrow=nrow or max(1, min(4, len(pictures))))


# ------------------------------------------------------------------------------ a spectrogram classifier


def mel_input(x: torch.Tensor, rate: int) -> torch.Tensor:
    """(B, C, L) companded clips in [-1, 1] -> (B, 1, N_MELS, frames): log-mel power, centred and scaled to about
    unit spread (log power -11.5 .. +5 maps to -1.5 .. +2.6), what the classifier reads."""
    return ((log_mel(mu_expand(x.float().clamp(-1, 1).mean(1)), rate) + 5.0) / 4.0).unsqueeze(1)


def train_sound_classifier(x: torch.Tensor, labels: torch.Tensor, num_classes: int, rate: int, *, steps: int = 300,
                           batch_size: int = 64, seed: int = 0) -> torch.nn.Module:
    """Fit the domain classifier of diffusely.metrics.domain (three conv stages, 128-d features) to the log-mel
    spectrograms of clips x (N, C, L) with labels (N,); no flips (a clip played backwards is another sound).
    Deterministic given seed; returns the network in eval mode, its `body` giving the features."""
    from torch.nn.functional import cross_entropy

    from .metrics.domain import DomainClassifier, _fit

    torch.manual_seed(seed)
    mels = torch.cat([mel_input(x[i:i + 256], rate) for i in range(0, len(x), 256)])
    net = DomainClassifier(1, num_classes)
    return _fit(net, lambda idx, g: cross_entropy(net(mels[idx]), labels[idx]), len(mels), steps=steps,
                batch_size=batch_size, seed=seed, progress=False, desc="training the sound classifier")


@torch.no_grad()
def classify(net: torch.nn.Module, x: torch.Tensor, rate: int,
             batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips x (N, C, L) -> (features (N, 128), class probabilities (N, K)) from a train_sound_classifier network."""
    features = torch.cat([net.body(mel_input(x[i:i + batch_size], rate)) for i in range(0, len(x), batch_size)])
    return features, net.head(features).softmax(-1)
