"""Files a run is made of: atomic writes, one lock per run directory, a check that a directory can be written.

Readers see the old file or the new one, never half of one; a write that fails (disk full, read-only,
permission) leaves the old file as it was and says so in one line.

Who locks what: a job that makes a run or a dataset (train, train-autoencoder, synth) holds run_lock on it for
its whole life; optimize-schedule only merges its entry into schedules.json, under `merging`, so it may run
beside a training; eval replaces eval.json whole (the last evaluation) and reads weights that are replaced
atomically, so it takes no lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

LOCK = ".lock"
META = "meta"  # the safetensors metadata key that holds a file's JSON metadata


class RunError(ValueError):
    """A run directory that cannot be read or written as asked; the message says what to fix."""


class Busy(ValueError):
    """Another process holds the directory's lock; the message names its PID and command."""


class NotWritable(ValueError):
    """A directory or file that cannot be written (read-only, no permission, disk full); the message says which."""


class Unreadable(ValueError):
    """A tensors or JSON file that is missing, damaged or not what diffusely wrote; the message names it. Callers
    add what to do."""


def read_json(path, fix: str) -> dict:
    """The JSON object in `path`, a file diffusely wrote; one that is missing, damaged (a truncated write from
    outside, an edit) or not an object raises Unreadable naming it and `fix`, what the user can do about it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        detail = "nested too deep" if isinstance(e, RecursionError) else str(e)[:120]
        raise Unreadable(f"{path} is not readable JSON ({type(e).__name__}: {detail}); {fix}") from None
    if not isinstance(value, dict):
        raise Unreadable(f"{path} holds a JSON {type(value).__name__}, not the object diffusely wrote there; {fix}")
    return value


# ------------------------------------------------------------------------------------------------------ locks

# (thread, directory) -> how many times that thread entered run_lock on it: re-entry is per thread, so two
# threads of one process (the UI's jobs) exclude each other as two processes do
_held: dict[tuple[int, Path], int] = {}


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    return f"process {pid} ({command or 'unknown command'})" if pid else "another process"


@contextmanager
def run_lock(directory: str | Path, command: str):
    """Hold an OS lock (flock on directory/.lock) on a run or dataset directory for the life of the work.

    The directory is created if needed. A second process gets Busy naming the holder's PID and command. The
    kernel drops the lock when the holder exits, even on kill -9, so a dead job never leaves a stale lock;
    the PID and command written in the file only feed the message. The thread holding it may enter again;
    another thread of the same process gets Busy, as another process does.
    A directory this call made is removed again if the work left nothing in it (refused input leaves no trace).
    """
    directory = Path(directory)
    made = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NotWritable(_why(directory, e)) from None
    key = (threading.get_ident(), directory.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path = directory / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # a planted symlink is not followed
    except OSError as e:
        raise NotWritable(_why(path, e)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(f"{directory} is in use by {_holder(path)}: wait for it to finish (or stop it), "
                   f"or choose another directory") from None
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, os.fsencode(f"{os.getpid()} {' '.join(command.split())}\n"))  # a path's bytes as they are
        except OSError as e:  # a full disk: the lock is held, only its note for others is missing
            if e.errno not in _REASONS:
                raise NotWritable(_why(path, e)) from None
        _held[key] = 1
        yield
    finally:
        _held.pop(key, None)
        if made and [p.name for p in directory.iterdir()] == [LOCK]:
            _remove_empty(directory)  # while the lock is held: no other job is inside
        os.close(fd)  # closing the descriptor releases the flock


def _remove_empty(directory: Path) -> None:
    """Remove a directory holding only its lock file; another job that made a file in it meanwhile keeps it."""
    try:
        (directory / LOCK).unlink()
        directory.rmdir()
    except OSError:
        pass


@contextmanager
def merging(directory: str | Path):
    """A short lock, waited for, on the directory itself (not its .lock, so a training holding run_lock does not
    block it): for a read-merge-write of one shared file (schedules.json), so two jobs merging at once both land."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


# ---------------------------------------------------------------------------------------- writable, or why not

_REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}


def _why(path: Path, e: OSError) -> str:
    """One line: which file, why it cannot be written, what to do."""
    reason = _REASONS.get(e.errno, e.strerror or str(e))
    fix = ("free some space or write elsewhere" if e.errno in (errno.ENOSPC, errno.EDQUOT)
           else "choose a directory you can write, or fix its permissions")
    return f"cannot write {path}: {reason}; {fix}"


def _existing(directory: Path) -> Path:
    """The directory itself or, when it is still to be made, its nearest existing ancestor."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def check_writable(directory: str | Path, need_bytes: int = 0) -> None:
    """Raise NotWritable (one line) unless files can be written in `directory` (or, where it does not exist yet,
    in the ancestor it would be made in) with at least `need_bytes` free. Run it before work that ends in a write."""
    directory = Path(directory)
    where = _existing(directory)
    if not where.is_dir():
        raise NotWritable(f"cannot write in {directory}: {where} is a file, not a directory; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".writable.", dir=where)  # os.access lies for root and read-only mounts
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise NotWritable(_why(directory, e)) from None
    free = shutil.disk_usage(where).free
    if free < need_bytes:
        raise NotWritable(f"cannot write in {directory}: it needs {need_bytes / 1e6:.1f} MB and the disk has "
                          f"{free / 1e6:.1f} MB free; free some space or write elsewhere")


# ------------------------------------------------------------------------------------------------ atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_swept: set[Path] = set()
_TMP = re.compile(r".+\.(\d+)\.(?:[a-z0-9_]{8}|link)\.tmp")  # what atomic_write (and state's keeping) name them


def sweep_stale(directory: str | Path) -> None:
    """Remove the temporary files that writers killed mid-write left in `directory` ("NAME.PID.XXXX.tmp" whose
    PID is gone). Done once per directory per process, by its first atomic write."""
    directory = Path(directory)
    for tmp in directory.glob("*.tmp"):
        m = _TMP.fullmatch(tmp.name)
        if m and not _alive(int(m[1])):
            tmp.unlink(missing_ok=True)
    _swept.add(directory)


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path), flush it to disk, then rename over `path`: readers see the old file or the new, never half.

    A failure removes the temporary file and leaves `path` as it was; disk full, read-only and permission errors
    become NotWritable with a one-line message naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent not in _swept:
            sweep_stale(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise NotWritable(_why(path, e)) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _REASONS:
            raise NotWritable(_why(path, e)) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def file_digest(path: str | Path, chars: int = 16) -> str:
    """The first `chars` hex digits of a file's SHA-256: enough to tell two versions of a checkpoint apart."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:chars]


# ------------------------------------------------------------------------------------ tensors plus JSON metadata


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `tensors` (name -> tensor, saved from the CPU, contiguous) and `meta` (anything JSON can hold, kept as
    one JSON string under the safetensors metadata key "meta") into one safetensors file, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {META: json.dumps(meta)}

    def write(tmp):
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as e:  # its I/O errors arrive as text: give atomic_write the errno back
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None

    atomic_write(path, write)


def _parse_meta(raw: dict[str, str]) -> dict:
    if META in raw:
        return json.loads(raw[META])
    # files written before save_tensors kept one string per key, JSON for the structured ones
    return {k: json.loads(v) if v[:1] in ("{", "[") else v for k, v in raw.items()}


def _utf8(path: Path) -> bool:
    """Whether the path is text (a name of bytes that are not UTF-8 comes into Python as surrogates)."""
    try:
        str(path).encode()
        return True
    except UnicodeEncodeError:
        return False


@contextmanager
def _open(path: Path, device="cpu"):
    if not path.is_file():  # regular files only: a FIFO or a device would block or never end
        raise Unreadable(f"{path} does not exist" if not path.exists() else f"{path} is not a regular file")
    if _utf8(path):
        with safe_open(str(path), "pt", device=str(device)) as f:
            yield f
        return
    # safetensors takes UTF-8 paths only: reach a file whose path holds other bytes through its descriptor
    fd = os.open(path, os.O_RDONLY)
    try:
        with safe_open(f"/dev/fd/{fd}", "pt", device=str(device)) as f:
            yield f
    finally:
        os.close(fd)


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a file save_tensors wrote, read from its header alone (no tensors loaded)."""
    path = Path(path)
    try:
        with _open(path) as f:
            return _parse_meta(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise Unreadable(_damaged(path, e)) from None


def load_tensors(path: str | Path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors on `device`, JSON metadata) of a file save_tensors wrote; Unreadable, naming the file, if it is
    missing, damaged or not safetensors. Nothing is unpickled: safetensors holds raw tensor bytes only."""
    path = Path(path)
    try:
        with _open(path, device) as f:
            meta = _parse_meta(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise Unreadable(_damaged(path, e)) from None
    return tensors, meta


def _damaged(path: Path, e: Exception) -> str:
    if isinstance(e, Unreadable):
        return str(e)
    return f"{path} is damaged or not a safetensors file ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
