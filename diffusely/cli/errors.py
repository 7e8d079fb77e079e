"""The CLI's one error boundary: every expected failure becomes one line, `Error: ...`, exit status 1, saying what
to do; a bug keeps its traceback, and `diffusely --debug` shows the traceback of anything."""

from __future__ import annotations

import errno
import warnings
from pathlib import Path
from typing import Optional

import click

# what to do about an OSError, by its errno
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space, or write somewhere else (another --out)",
    errno.EDQUOT: "the disk quota is used up: free some space, or write somewhere else (another --out)",
    errno.EROFS: "the file system is read-only: choose a writable folder (another --out)",
    errno.EACCES: "permission denied: check the permissions, or choose another folder (another --out)",
    errno.EPERM: "not permitted: check the permissions, or choose another folder (another --out)",
    errno.ENOENT: "not found: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "a folder where a file was expected: give a file's path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower --batch-size",
    errno.ENAMETOOLONG: "the file name is too long: choose a shorter path",
}


def _os_message(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    advice = _OS_ADVICE.get(e.errno, e.strerror or str(e))
    return f"{where}: {advice}" if where else f"{advice} ({e.strerror or e})"


def _path_read(e: BaseException) -> Optional[str]:
    """The innermost `path` a frame of e's traceback held: the file being read when a parser ran out of stack (json
    and yaml recurse once a nesting level) or met bytes that are not UTF-8; neither error names the file."""
    found, tb = None, e.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_locals.get("path")
        found = str(path) if isinstance(path, (str, Path)) else found
        tb = tb.tb_next
    return found


def _memory_message(command: Optional[click.Command], args: list[str]) -> str:
    """Out of memory: name the batch size to lower, as given or the command's default."""
    param = next((p for p in command.params if p.name == "batch_size"), None) if command else None
    if param is None:
        return "out of memory: use a smaller --image-size or size, or a machine with more memory"
    given = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--batch-size"), None)
    given = given or next((a.split("=", 1)[1] for a in args if a.startswith("--batch-size=")), None)
    if given or param.default is not None:
        return f"out of memory: lower --batch-size (now {given or f'{param.default}, the default'}), e.g. to half of it"
    return "out of memory: lower --batch-size below the config's train.batch_size, e.g. to half of it"


def _cpu_out_of_memory(e: BaseException) -> bool:
    """torch's CPU allocator reports a failed allocation as a RuntimeError, not a MemoryError."""
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)


def explain(e: BaseException, command: Optional[click.Command] = None, args: list[str] = ()) -> Optional[str]:
    """The one-line message for an expected failure, or None for anything else (a bug: keep its traceback)."""
    import torch
    from PIL import Image, UnidentifiedImageError
    from safetensors import SafetensorError

    if isinstance(e, UnidentifiedImageError):  # an OSError: say what it is before the errno rules
        return f"{e}: not an image Pillow can read; pass a PNG, JPEG, BMP or WebP file"
    if isinstance(e, Image.DecompressionBombError):  # pillow's message names the size, not the file
        size = str(e).split(", could")[0]
        return (f"{_path_read(e) or 'an image'} is refused as too large to decode safely ({size}): shrink it "
                "first, or raise PIL.Image.MAX_IMAGE_PIXELS for images you trust")
    if isinstance(e, SafetensorError):
        return (f"a safetensors file cannot be read ({e}): it may be damaged or cut off; restore it from a copy, or "
                "train the run again")
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)) or _cpu_out_of_memory(e):
        return _memory_message(command, list(args))
    if isinstance(e, RecursionError):
        where = _path_read(e)
        return (f"{where or 'a file'} is nested too deep to read (thousands of levels of lists or objects?): "
                "check the file")
    if isinstance(e, UnicodeDecodeError):
        return f"{_path_read(e) or 'a file'} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8"
    if isinstance(e, OSError):
        return _os_message(e)
    if isinstance(e, ValueError):  # the library's own errors (DataError, RunError, ConfigError...) say what to fix
        return str(e) or type(e).__name__
    return None


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"Warning: {message}\n"


class Group(click.Group):
    """A click group whose commands' expected failures end as one line (see `explain`) unless --debug is given."""

    def resolve_command(self, ctx, args):
        ctx.meta["diffusely.args"] = list(args)  # the command's own arguments, for the out-of-memory message
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        shown = warnings.formatwarning
        if not ctx.params.get("debug"):  # a warning is for the user: its text, not the library line that raised it
            warnings.formatwarning = _warning_line
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as e:
            args = ctx.meta.get("diffusely.args", [])
            command = self.get_command(ctx, args[0]) if args else None
            message = None if ctx.params.get("debug") else explain(e, command, args)
            if message is None:
                raise
            raise click.ClickException(message) from None
        finally:
            warnings.formatwarning = shown
