"""Settings of a run's config named on a benchmark's command line ("model.patch_size=4,diffusion.P_std=1.8"), for the
studies that train a default with a few settings changed (audio_study.py's --variants, prompt_adherence.py's --set)."""

from __future__ import annotations

import argparse
import json


def settings(text: str) -> dict:
    """"model.patch_size=4,diffusion.P_std=1.8" -> {("model", "patch_size"): 4, ("diffusion", "P_std"): 1.8}; a
    value is JSON where it reads as JSON, else a string (data.amplitude=mu-law). A key the run config lacks is
    refused, so a misspelt one does not train the default under its name. "" -> {}."""
    from diffusely.config import RunConfig

    config, found = RunConfig(), {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        path = tuple(key.split("."))
        if len(path) != 2 or not hasattr(getattr(config, path[0], None), path[1]):
            raise argparse.ArgumentTypeError(f"{key!r} is not a setting of the run config (section.name)")
        try:
            found[path] = json.loads(value)
        except json.JSONDecodeError:
            found[path] = value
    return found


def apply(config, changes: dict):
    """Set each (section, name): value of `changes` on `config`; returns it."""
    for (section, name), value in changes.items():
        setattr(getattr(config, section), name, value)
    return config
