"""Work with what users already have: diffusers models in (diffusers.py), shareable models out (export.py)."""

from .diffusers import DIFFUSERS_KIND, import_diffusers, is_diffusers_run, load_diffusers_run
from .export import export_model, to_diffusers

__all__ = ["DIFFUSERS_KIND", "import_diffusers", "is_diffusers_run", "load_diffusers_run", "export_model",
           "to_diffusers"]
