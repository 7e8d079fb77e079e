"""Run configs built from options, as the CLI (and a UI) take them: a new run's, or a resumed run's with every
option that would contradict the run named.

Options arrive as a dict of flag names (the CLI's parameter names, e.g. "image_size", "flip") to values,
None where the user left the option out. FIELDS and RESUMABLE say where each lands in the config; the few
that are not one field each (grayscale, rgb, flip, text, text_encoder, recipe, autoencoder, factor) are mapped
by hand below. A new run from options on a folder of grayscale images trains one channel (_fit_channels).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

from .audio import check_audio_network
from .checkpoint import CHECKPOINT, CONFIG, RunError, read_config, relocate_autoencoder
from .config import (CONFIG_VERSION, RECIPES, TEXT_ENCODERS, AutoencoderRunConfig, ConfigError, DataConfig, JsonConfig,
                     RunConfig, TextConfig)
from .state import step_of

# option -> (config section, field); the same names in a diffusion run and an autoencoder run
FIELDS = {
    "image_size": ("data", "image_size"), "max_shapes": ("data", "max_shapes"), "classes": ("data", "classes"),
    "layout": ("data", "layout"), "paraphrases": ("data", "paraphrases"), "directions": ("data", "directions"),
    "task": ("data", "task"), "scale": ("data", "scale"), "allow_outside": ("data", "outside"),
    "frames": ("data", "frames"), "factorised": ("model", "factorised"),
    "given_frames": ("data", "given_frames"), "sample_rate": ("data", "sample_rate"),
    "channels": ("model", "channels"), "blocks_per_level": ("model", "blocks_per_level"),
    "attention_levels": ("model", "attention_levels"), "patch_size": ("model", "patch_size"),
    "latent_channels": ("model", "latent_channels"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "seed": ("train", "seed"),
    "precision": ("train", "precision"), "kl_weight": ("train", "kl_weight"),
    "frequency_weight": ("train", "frequency_weight"), "crop_size": ("train", "crop_size"),
    "disc_weight": ("train", "disc_weight"), "disc_start": ("train", "disc_start"),
    "posthoc_ema": ("train", "posthoc_ema"), "posthoc_every": ("train", "posthoc_every"),
}
# options a resumed run may change: how long it trains, how fast a step runs and how often it writes, never what
# a step computes
RESUMABLE = {
    "steps": ("train", "steps"), "compile": ("train", "compile"),
    "activation_checkpointing": ("train", "activation_checkpointing"),
    "checkpoint_every": ("train", "checkpoint_every"), "sample_every": ("train", "sample_every"),
    "log_every": ("train", "log_every"), "keep": ("train", "keep"),
}
RESUMABLE_HELP = "May be changed on --resume."


def flag(name: str) -> str:
    """The command-line spelling of an option name: image_size -> --image-size."""
    return "--" + name.replace("_", "-")


def new_run_config(data: Optional[str], options: dict, config_file: Optional[str] = None,
                   run_dir: Optional[str | Path] = None, say: Optional[Callable[[str], None]] = None) -> RunConfig:
    """The RunConfig of a new diffusion run on `data` (a folder or a built-in name), from `config_file`'s
    config.json (or the defaults) with the given options over it. Raises ConfigError naming the option.
    A text run into `run_dir` diffuses in the latents of its own autoencoder (RUN_DIR/autoencoder, trained first:
    train.latents) unless --pixels, --autoencoder or small images say otherwise. `say(line)` is told each choice
    made from the data (one channel for a folder of grayscale images)."""
    if data is None:
        raise ConfigError("give the DATA to train on: a folder of images or a built-in name (shapes)")
    if options.get("scale") is not None and (options.get("task") or "generate") != "upscale":
        raise ConfigError("--scale is the factor of --task upscale: add --task upscale, or drop --scale")
    config = RunConfig.load(config_file) if config_file else RunConfig()
    _refuse_student(config, config_file)
    if options.get("recipe"):
        config.diffusion = RECIPES[options["recipe"]]()
    config.data = DataConfig(**{**config.data.__dict__, "source": data})
    set_modality(config, data)
    _audio_model(config, options.get("audio_model"))
    for name, what, modalities in (("sample_rate", "the rate of an audio run's clips", ("audio",)),
                                   ("frames", "a video run's clip length", ("video",)),
                                   ("given_frames", "what a video run continues from", ("video",)),
                                   ("grayscale", "for images: a video run learns RGB clips", ("image", "audio"))):
        if options.get(name) and config.data.modality not in modalities:
            raise ConfigError(f"{flag(name)} is {what}; {data} is {config.data.modality} data: drop {flag(name)}")
    _set_options(config, options, {**FIELDS, **RESUMABLE})
    _set_flags(config, options)
    if not config_file:  # a config file says how many channels it means
        _fit_channels(config, data, options, say)
    config.version = CONFIG_VERSION  # every field is set now: an older file was read, this run is new
    if options.get("text") or options.get("text_encoder"):
        config.text = TextConfig(**{**config.text.__dict__, "encoder": _text_encoder(config, options)})
        config.data.flip = False  # a mirrored image would contradict captions that say left and right
        _text_defaults(config, options, config_file, run_dir)
    if options.get("autoencoder"):
        if config.data.given_frames:  # the given frames are concatenated in pixels, the clip is drawn in latents
            raise ConfigError("--given-frames continues clips in pixels; a latent video run (--autoencoder) draws "
                              "whole clips: drop one of them")
        config.use_autoencoder(options["autoencoder"])
    _validate(config, options)
    _check_frames(config)
    check_audio_network(config)
    return config


def _text_encoder(config: RunConfig, options: dict) -> str:
    """--text-encoder (a folder stored as an absolute path, so sampling finds it from any working directory), else
    the --config file's own encoder, else scratch."""
    encoder = options.get("text_encoder") or (config.text.encoder if config.text.enabled else "scratch")
    if encoder == "none":
        raise ConfigError("--text-encoder none trains no text: drop --text and --text-encoder to train without it")
    return encoder if encoder in TEXT_ENCODERS else str(Path(encoder).expanduser().resolve())


def _text_defaults(config: RunConfig, options: dict, config_file: Optional[str], run_dir) -> None:
    """A new text run: one to three shapes an image on the built-in shapes, and latent diffusion on an autoencoder
    of its own (see train.latents.latent_by_default) unless --pixels or --autoencoder is given."""
    from .train.latents import TEXT_MAX_SHAPES, latent_by_default, use_own_autoencoder

    if config.data.source == "shapes" and options.get("max_shapes") is None and not config_file:
        config.data.max_shapes = TEXT_MAX_SHAPES
    if run_dir is not None and not options.get("pixels") and not options.get("autoencoder") and latent_by_default(config):
        given = [name for name, value in options.items() if value is not None]
        if config_file:  # a config file says its own training noise levels and sampler
            given += ["P_mean", "sampler"]
        use_own_autoencoder(config, run_dir, given)


def _refuse_student(config: RunConfig, config_file: Optional[str]) -> None:
    """A student's config.json (diffusely distill) is its teacher's with a distill section, the consistency sampler
    and the student's learning rate and step count: train would learn a plain denoiser under it and call it a
    student. Its teacher's config.json is the same network, so refusing loses nothing that dropping would keep."""
    if config.distill is not None:
        raise ConfigError(f"--config {config_file} is a student run's config (consistency distillation of "
                          f"{config.distill.teacher}); train starts a diffusion run: give the teacher's "
                          f"--config {Path(config.distill.teacher) / CONFIG}, or distill a student with "
                          f"`diffusely distill`")


def _check_frames(config: RunConfig) -> None:
    """A 3-D U-Net halves time as it halves space: the clip length must divide as the image size does."""
    m, frames = config.model, config.data.frames
    from .nets.video import MAX_FRAMES

    if m.factorised and frames > MAX_FRAMES:
        raise ConfigError(f"--frames {frames} is more than the {MAX_FRAMES} a factorised U-Net's temporal attention "
                          f"knows positions for; use --frames {MAX_FRAMES} or fewer, or --no-factorised")
    if m.dims == 3 and frames and not m.factorised and frames % m.downsample_factor:
        f = m.downsample_factor
        raise ConfigError(f"--frames {frames} is not divisible by {f}, which a 3-D U-Net with {len(m.channels)} levels "
                          f"halves time by; use --frames {max(f, frames // f * f)}, or --factorised (time not halved)")


def new_autoencoder_config(data: Optional[str], options: dict,
                           say: Optional[Callable[[str], None]] = None) -> AutoencoderRunConfig:
    """The AutoencoderRunConfig of a new autoencoder run on `data`, the defaults with the given options over them.
    `factor` (4 or 8) picks the default widths of that many halvings; --channels must agree with it. `say` as
    new_run_config's."""
    from .nets.autoencoder import DEFAULT_CHANNELS

    if data is None:
        raise ConfigError("give the DATA to train on: a folder of images or a built-in name (shapes)")
    factor, channels = options.get("factor"), options.get("channels")
    if factor and channels and 2 ** (len(channels) - 1) != int(factor):
        raise ConfigError(f"--channels {','.join(map(str, channels))} makes factor {2 ** (len(channels) - 1)}, "
                          f"not {factor}: give one level per halving plus one")
    config = AutoencoderRunConfig()
    config.data = DataConfig(**{**config.data.__dict__, "source": data})
    options = {**options, "channels": channels or (DEFAULT_CHANNELS[int(factor)] if factor else None)}
    _set_options(config, options, {**FIELDS, **RESUMABLE})
    _set_flags(config, options)
    _fit_channels(config, data, options, say)
    _validate(config, options)
    return config


def resumed_config(run_dir: str | Path, data: Optional[str], options: dict, cls: type[JsonConfig] = RunConfig):
    """The config of the run in `run_dir` to resume, with the RESUMABLE options given set on it.

    Any other option given must agree with the run (it is then a no-op); one that differs is a ConfigError naming
    the option, its value and the run's, as is DATA given and not the run's, the run's data folder gone, or
    --steps below the step the checkpoint is at. Returns (config, the checkpoint's step)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        if (run_dir / "autoencoder" / CONFIG).is_file():  # a text run stopped while training its autoencoder
            raise RunError(f"{run_dir} holds only its autoencoder, stopped before the text model began: run the "
                           f"command that started it again, without --resume; it goes on from the autoencoder's checkpoint")
        raise RunError(f"nothing to resume in {run_dir}: it has no {CONFIG}; drop --resume to start a new run")
    for name in ("config_file", "autoencoder"):
        if options.get(name):
            raise ConfigError(f"{flag(name.replace('_file', ''))} starts a new run; a resumed run keeps the config it "
                              f"began with: drop it, or drop --resume and choose another --out")
    config = relocate_autoencoder(read_config(run_dir, cls), run_dir)  # a moved run's own, where it is now
    _check_data(config, data, run_dir)
    _check_agrees(config, options, run_dir)
    start = checkpoint_step(run_dir)
    steps = options.get("steps")
    if steps is not None and steps < start:
        raise ConfigError(f"the run in {run_dir} is at step {start}; --steps {steps} would end it before that: --steps "
                          f"is the step count to reach, not the steps to add (e.g. --steps {start + steps})")
    _set_options(config, options, RESUMABLE)
    _validate(config, options, ("train",))
    return config, start


def checkpoint_step(run_dir: str | Path) -> int:
    """The step of the checkpoint in `run_dir` (0 if it has none yet), read from the file's header alone."""
    path = Path(run_dir) / CHECKPOINT
    return step_of(path) if path.is_file() else 0


def set_modality(config: RunConfig, data: str) -> None:
    """Say what `data` is (data.MODALITIES: the built-in sounds or a folder of audio files are audio) and, where that
    differs from what the config was made for (a --config of another modality's run), put back the fields the old
    modality set and start from the new one's defaults (an audio run: 1-D, mono, 1 s clips at 8 kHz, patches of 4
    samples); options given override them."""
    from .data import MODALITIES, modality_of

    kind, fresh = modality_of(data), RunConfig()
    if kind == config.data.modality:
        return
    undo = [(key, getattr(getattr(fresh, key.split(".")[0]), key.split(".")[1]))
            for key, _ in MODALITIES[config.data.modality].defaults]
    config.data.modality = kind
    for key, value in undo + list(MODALITIES[kind].defaults):
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)


def _audio_model(config: RunConfig, name: Optional[str]) -> None:
    """--audio-model: start an audio run from that model's fields (data.AUDIO_MODELS); options given override them."""
    from .data import AUDIO_MODELS

    if name is None:
        return
    if config.data.modality != "audio":
        raise ConfigError(f"--audio-model chooses what an audio run's network learns; {config.data.source} is "
                          f"{config.data.modality} data: drop --audio-model")
    for key, value in AUDIO_MODELS[name]:
        section, field = key.split(".")
        setattr(getattr(config, section), field, value)


def _set_options(config, options: dict, fields: dict) -> None:
    for name, (section, field) in fields.items():
        value = options.get(name)
        if value is not None and hasattr(getattr(config, section, None), field):
            setattr(getattr(config, section), field, value)


def _set_flags(config, options: dict) -> None:
    """The options that are not one field each: --grayscale or --rgb, and --flip or --no-flip."""
    if options.get("grayscale") and options.get("rgb"):
        raise ConfigError("--grayscale trains one channel and --rgb three: give one of them")
    if options.get("grayscale") or options.get("rgb"):
        config.data.channels = 1 if options.get("grayscale") else 3
    if options.get("flip") and (options.get("text") or options.get("text_encoder")):
        raise ConfigError("--flip mirrors images, and a text run's captions say left and right: drop --flip")
    if options.get("flip") is not None:
        config.data.flip = options["flip"]


def _fit_channels(config, data: str, options: dict, say: Optional[Callable[[str], None]]) -> None:
    """One channel for a new run on a folder whose images are all grayscale (data.folder.grayscale_images), with a
    line to `say`, unless --grayscale or --rgb chose; a single colour image among them keeps three."""
    from .data import BUILTIN
    from .data.folder import grayscale_images

    if options.get("grayscale") or options.get("rgb") or config.data.modality != "image" or data in BUILTIN:
        return
    count = grayscale_images(data, config.data.image_size)
    if count and config.data.channels != 1:
        config.data.channels = 1
        if say is not None:
            say(f"all {count} images are grayscale: training one channel; give --rgb to keep three")


def _validate(config, options: dict, sections=("diffusion", "data", "text", "model", "train")) -> None:
    """Rebuild each section, which runs its checks; a failure names the options behind the field it names."""
    for section in sections:
        part = getattr(config, section, None)
        if part is None:
            continue
        try:
            setattr(config, section, type(part)(**vars(part)))
        except ValueError as e:
            given = [name for name, (s, field) in {**FIELDS, **RESUMABLE}.items()
                     if s == section and options.get(name) is not None and re.search(rf"\b{field}\b", str(e))]
            where = f"{', '.join(map(flag, given))}: " if given else ""
            raise ConfigError(f"{where}{e}") from None


def _shown(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _same(a, b) -> bool:
    return (tuple(a) if isinstance(a, list) else a) == (tuple(b) if isinstance(b, list) else b)


def _given(config, options: dict) -> dict:
    """{option: (what was given, whether the run agrees, the config field it is about)} for each non-resumable
    option given; what was given is None for a flag such as --grayscale."""
    given = {name: (options[name], _same(options[name], getattr(getattr(config, s), f)), f"{s}.{f}")
             for name, (s, f) in FIELDS.items() if options.get(name) is not None and hasattr(getattr(config, s, None), f)}
    for name in ("classes", "layout"):  # flags that are one field each
        if name in given:
            given[name] = (None, *given[name][1:])
    for name, channels in (("grayscale", 1), ("rgb", 3)):
        if options.get(name):
            given[name] = (None, config.data.channels == channels, "data.channels")
    if options.get("flip") is not None:
        given["flip" if options["flip"] else "no_flip"] = (None, config.data.flip == options["flip"], "data.flip")
    if options.get("pixels"):  # a text run's latent default is decided when it starts
        given["pixels"] = (None, getattr(config, "latent", None) is None, "latent.autoencoder")
    if options.get("recipe"):
        ddpm = config.diffusion.schedule is not None
        given["recipe"] = (options["recipe"], options["recipe"] == ("ddpm" if ddpm else "edm"), "diffusion.schedule")
    if options.get("audio_model"):  # on a run that is not audio it names the run's modality
        audio, spectrogram = config.data.modality == "audio", config.data.amplitude == "spectrogram"
        agrees = audio and (options["audio_model"] == "spectrogram") == spectrogram
        given["audio_model"] = (options["audio_model"], agrees, "data.amplitude" if audio else "data.modality")
    if options.get("text_encoder"):
        named = options["text_encoder"]  # a folder is stored absolute: the same folder agrees however it is named
        same = named == config.text.encoder or (named not in TEXT_ENCODERS
                                                and str(Path(named).expanduser().resolve()) == config.text.encoder)
        given["text_encoder"] = (named, same, "text.encoder")
    elif options.get("text"):
        given["text"] = (None, config.text.enabled, "text.encoder")
    return given


def _check_agrees(config, options: dict, run_dir: Path) -> None:
    """Every non-resumable option given must equal the run's value; name both where one does not."""
    for name, (value, agrees, field) in _given(config, options).items():
        if not agrees:
            section, key = field.split(".")
            shown = "" if value is None else f" {_shown(value)}"
            raise ConfigError(f"{flag(name)}{shown} conflicts with the run in {run_dir}, whose {CONFIG} has {field} "
                              f"{_shown(getattr(getattr(config, section), key))}; a resumed run keeps its config: drop "
                              f"{flag(name)}, or start a new run with another --out")


def _check_data(config, data: Optional[str], run_dir: Path) -> None:
    """DATA on --resume must be the run's own, and the run's data must still be there."""
    from .data import BUILTIN

    source = config.data.source
    if data is not None and data != source and Path(data).resolve() != Path(source).resolve():
        raise ConfigError(f"DATA {data} is not the data of the run in {run_dir}, {source} ({CONFIG}); drop DATA to "
                          f"resume on the run's own data, or start a new run with another --out")
    if source not in BUILTIN and not Path(source).exists():
        raise RunError(f"the data of the run in {run_dir}, {source}, is not there any more: put it back at that path "
                       f"(or edit data.source in {run_dir / CONFIG}) to resume")

