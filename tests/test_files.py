"""diffusely._files: the run lock, check_writable, atomic writes that fail cleanly, the tensors+JSON helper."""

import errno
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from diffusely import _files as files
from diffusely._files import (Busy, NotWritable, Unreadable, check_writable, load_tensors, read_meta, run_lock,
                              save_tensors)

HOLDER = """
import sys, time
from diffusely._files import run_lock
with run_lock(sys.argv[1], "train shapes --out R"):
    print("held", flush=True)
    time.sleep(60)
"""


def start_holder(directory: Path) -> subprocess.Popen:
    """A second process that takes the lock on `directory` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_refuses_a_second_process_naming_its_pid_and_command(tmp_path):
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        with pytest.raises(Busy, match=f"in use by process {holder.pid} \\(train shapes --out R\\)") as e:
            with run_lock(run, "train again"):
                pass
        assert "\n" not in str(e.value)
    finally:
        holder.kill()
        holder.wait()


def test_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / files.LOCK).is_file()  # the file stays; the kernel dropped the lock with the process
    with run_lock(tmp_path, "train --resume"):
        assert (tmp_path / files.LOCK).read_text() == f"{os.getpid()} train --resume\n"


def try_lock(directory: Path) -> subprocess.CompletedProcess:
    code = f"from diffusely._files import run_lock\nwith run_lock({str(directory)!r}, 'sample'): pass"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    run = tmp_path / "new"
    with run_lock(run, "cli"):
        with run_lock(run, "train"):  # the CLI and the library may both take it
            pass
        refused = try_lock(run)  # the inner exit did not release the outer lock
        assert refused.returncode == 1 and f"Busy: {run} is in use by process {os.getpid()} (cli)" in refused.stderr
    assert try_lock(run).returncode == 0


def test_another_thread_of_the_holder_is_refused(tmp_path):
    """The UI runs jobs in threads: a second thread must not slip into a run another thread holds."""
    import threading

    errors = []
    with run_lock(tmp_path, "train"):
        def second():
            try:
                with run_lock(tmp_path, "synth"):
                    pass
            except Busy as e:
                errors.append(str(e))
        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert len(errors) == 1 and f"in use by process {os.getpid()} (train)" in errors[0]
    with run_lock(tmp_path, "synth"):  # released: the next one gets it
        pass


def readonly_mount(path: Path):
    """A read-only directory that even root cannot write: a read-only tmpfs (root) or mode 0o500 (others)."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        return lambda: path.chmod(0o700)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    return lambda: subprocess.run(["umount", "-l", str(path)], check=True)


def test_check_writable_refuses_a_read_only_directory(tmp_path):
    undo = readonly_mount(tmp_path / "ro")
    try:
        with pytest.raises(NotWritable, match=r"cannot write .*ro/run: (the file system is read-only|permission denied)"):
            check_writable(tmp_path / "ro" / "run")  # not made yet: its parent is what must be writable
        with pytest.raises(NotWritable, match="is read-only|permission denied"):
            files.atomic_write_text(tmp_path / "ro" / "schedules.json", "{}")
    finally:
        undo()


def test_check_writable_patched_errors_and_free_space(tmp_path, monkeypatch):
    check_writable(tmp_path / "a" / "b")
    with pytest.raises(NotWritable, match=r"needs 1000000000000000.0 MB and the disk has [\d.]+ MB free"):
        check_writable(tmp_path, need_bytes=10**21)
    (tmp_path / "f").write_text("")
    with pytest.raises(NotWritable, match="is a file, not a directory"):
        check_writable(tmp_path / "f" / "run")

    def refused(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(NotWritable, match=f"cannot write {tmp_path}: permission denied; choose a directory you can"):
        check_writable(tmp_path)


def test_full_disk_keeps_the_old_file_and_says_so_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"w": torch.ones(3)}, {"step": 1})
    before = path.read_bytes()

    def fills_the_disk(tensors, tmp, metadata=None):
        Path(tmp).write_bytes(b"\0" * 100)  # some of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "save_file", fills_the_disk)
    with pytest.raises(NotWritable) as e:
        save_tensors(path, {"w": torch.zeros(3)}, {"step": 2})
    assert str(e.value) == f"cannot write {path}: the disk is full; free some space or write elsewhere"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_full_tmpfs_for_real(tmp_path):
    """safetensors reports ENOSPC as text ("os error 28"); it must still become NotWritable."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        save_tensors(disk / "w.safetensors", {"w": torch.ones(10)}, {"step": 1})
        with pytest.raises(NotWritable, match="the disk is full"):
            save_tensors(disk / "w.safetensors", {"w": torch.ones(100_000)}, {"step": 2})
        tensors, meta = load_tensors(disk / "w.safetensors")
        assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(10))
        assert [p.name for p in disk.iterdir()] == ["w.safetensors"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)  # lazy: a mapped tensor may still hold the file


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_killed_writers_are_swept(tmp_path):
    stale = tmp_path / f"checkpoint.safetensors.{dead_pid()}.k2j4h1ab.tmp"
    live = tmp_path / f"checkpoint.safetensors.{os.getppid()}.zz9q8w7e.tmp"  # a writer still running
    users = tmp_path / "notes.1.draft.tmp"  # not named as atomic_write names its files: never touched
    for p in (stale, live, users):
        p.write_bytes(b"half a checkpoint")
    files.atomic_write_text(tmp_path / "log.csv", "step,loss\n")
    assert not stale.exists() and live.exists() and users.exists()


def test_tensors_and_metadata_round_trip_and_old_files(tmp_path):
    from safetensors.torch import save_file
    t = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    meta = {"step": 12, "info": {"kind": "x", "sizes": [1, 2]}, "digest": "0123456789012345"}
    save_tensors(tmp_path / "t.safetensors", t, meta)
    tensors, back = load_tensors(tmp_path / "t.safetensors")
    assert back == meta and read_meta(tmp_path / "t.safetensors") == meta
    assert all(torch.equal(tensors[k], v) for k, v in t.items())
    # a file from before the helper: one string per key, JSON for the structured ones
    save_file(t, tmp_path / "old.safetensors", metadata={"step": "12", "optimizer": '{"lr": 1}', "digest": "0123"})
    assert read_meta(tmp_path / "old.safetensors") == {"step": "12", "optimizer": {"lr": 1}, "digest": "0123"}


def test_damaged_missing_and_special_files_are_named(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{broken}")
    with pytest.raises(Unreadable, match=f"^{tmp_path}/bad.safetensors is damaged or not a safetensors file") as e:
        load_tensors(tmp_path / "bad.safetensors")
    assert "\n" not in str(e.value)
    with pytest.raises(Unreadable, match="missing.safetensors does not exist"):
        read_meta(tmp_path / "missing.safetensors")
    os.mkfifo(tmp_path / "fifo.safetensors")
    # in a child process: a reader that opened the FIFO would block forever
    code = f"from diffusely._files import load_tensors\nload_tensors({str(tmp_path / 'fifo.safetensors')!r})"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "Unreadable: " in child.stderr and "fifo.safetensors is not a regular file" in child.stderr


def test_a_path_that_is_not_utf8_is_read_and_locked(tmp_path):
    # a folder named with bytes that are not UTF-8 (\xff) once read back as "damaged": safetensors takes UTF-8 paths
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/run\xff"))
    t = {"a": torch.randn(2, 3)}
    with run_lock(folder, f"train --out {folder}"):
        save_tensors(folder / "t.safetensors", t, {"step": 3})
        assert read_meta(folder / "t.safetensors") == {"step": 3}
        tensors, meta = load_tensors(folder / "t.safetensors")
    assert torch.equal(tensors["a"], t["a"]) and meta == {"step": 3}
    assert (folder / files.LOCK).read_bytes().endswith(b"/run\xff\n")  # the holder's note, the path's own bytes


def test_a_directory_the_lock_made_goes_if_the_work_left_nothing(tmp_path):
    # a training refused on its data once left RUN/ behind holding only .lock
    with pytest.raises(ValueError, match="refused"):
        with run_lock(tmp_path / "new" / "run", "train --out run"):
            raise ValueError("refused")
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "run").exists()
    with run_lock(tmp_path / "made", "synth --out made"):
        (tmp_path / "made" / "0.png").write_bytes(b"work")
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == [files.LOCK, "0.png"]
    (tmp_path / "mine").mkdir()
    with run_lock(tmp_path / "mine", "train --out mine"):
        pass
    assert (tmp_path / "mine").is_dir()  # the user's own folder stays, empty or not
