"""Files: atomic output (a reader sees the old file or the complete new one, never half of one),
digests, and the lock that keeps two processes out of one output folder."""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ddpm.errors import UserError

if TYPE_CHECKING:
    import numpy as np


@contextmanager
def atomic_output(path: Path, needed: int | None = None) -> Iterator[Path]:
    """Yields a temporary path beside `path` (same suffix, so writers pick the same format).
    When the block succeeds the file is fsynced and renamed onto `path`; when it fails it is removed,
    and a full disk becomes one line that names `path` and the space free and `needed` (bytes; by
    default the size of what was there, or of what got written)."""
    try:
        make_folder(path.parent)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as e:
        raise disk_full(path, needed) if e.errno in FULL_DISK else e from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it what open() would have
        os.replace(tmp, path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if _full(e):
            before = path.stat().st_size if path.exists() else 0
            raise disk_full(path, needed or max(written, before) or None) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_outputs() -> Iterator[Callable[..., Path]]:
    """`atomic_output` for a set of files that belong together (a stage's outputs, a report): yields
    `output`, and `output(path, needed=None)` gives the temporary path to write `path`'s content to,
    just before it is written (so a full disk is reported for that file, with `needed` bytes). Only
    when the block has written every one are they renamed onto their paths (the last one given
    first); a failure leaves the previous set whole. A kill between two renames can still mix two
    sets: the file that describes a set records the sha256 of the others, and its readers check them."""
    with ExitStack() as stack:
        yield lambda path, needed=None: stack.enter_context(atomic_output(path, needed))


FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
# How writers report a full disk without an errno: numpy's short write (ndarray.tofile), and
# torch.save's C++ stream (torch 2.14) and zip writer ("unexpected pos", before 2.14 "file write failed").
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
TORCH_WRITE_FAILED = ("basic_ios::clear: iostream error", "unexpected pos", "file write failed")


def make_folder(folder: Path) -> None:
    """Make `folder` and the folders above it; one line where a file stands in the way (an --out
    under a regular file)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise UserError(f"{folder}: cannot create the folder: {blocker} is a file, not a folder") from None


def _full(error: BaseException) -> bool:
    """Whether a failed write looks like a full disk (or a quota reached)."""
    if isinstance(error, OSError):
        return error.errno in FULL_DISK or (error.errno is None and SHORT_WRITE.fullmatch(str(error)) is not None)
    return isinstance(error, RuntimeError) and any(shape in str(error) for shape in TORCH_WRITE_FAILED)


def disk_full(path: Path, needed: int | None, failed: str = "cannot write it") -> UserError:
    """The one-line error for a write to `path` that found the disk full, with the space free in the
    nearest folder there is and the `needed` bytes, where known."""
    folder = next(p for p in (path, *path.parents) if p.is_dir())
    free = shutil.disk_usage(folder).free
    more = f", about {_size(needed)} needed" if needed else ""
    return UserError(
        f"{path}: {failed}, the disk is full ({_size(free)} free in {folder.resolve()}{more}); free some "
        "space and run the same command again"
    )


def _size(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} bytes"
    for unit in ("KiB", "MiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} GiB"


def write_json(path: Path, value: object, sort_keys: bool = False) -> None:
    """`value` as indented JSON with a final newline, written atomically."""
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=sort_keys) + "\n").encode())


def write_bytes(path: Path, data: bytes) -> None:
    """`data` at `path`, written atomically: a full disk says how much the whole file needs."""
    with atomic_output(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


NPY_HEADER = 128  # np.save's header for an array of a few dimensions (format 1.0 pads it to 64-byte blocks)


def npy_size(array: "np.ndarray") -> int:
    """About the bytes np.save writes for `array`: its data and the header; what a full disk needs."""
    return array.nbytes + NPY_HEADER


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def first_link(folder: Path) -> Path | None:
    """The first symbolic link under `folder`, walked without following any, or None."""
    for parent, folders, files in os.walk(folder):  # a link to a folder is listed, never entered
        for name in sorted([*folders, *files]):
            if os.path.islink(os.path.join(parent, name)):
                return Path(parent, name)
    return None


def remove_partial_outputs(folder: Path) -> None:
    """Delete the temporary files `atomic_output` leaves behind when its process is killed."""
    for tmp in folder.glob(".*.tmp*") if folder.is_dir() else []:
        tmp.unlink(missing_ok=True)


def file_digest(path: Path, checksum: str) -> str:
    """The digest of `path` as "algorithm:hex", with the algorithm of `checksum` (e.g. md5:...)."""
    algorithm = checksum.partition(":")[0]
    with open(path, "rb") as f:
        return f"{algorithm}:{hashlib.file_digest(f, algorithm).hexdigest()}"


def sha256_hex(path: Path) -> str:
    """The sha256 of `path` as bare hex, as manifests, checkpoints and eval.json record it."""
    return file_digest(path, "sha256:").removeprefix("sha256:")


LOCK_FILE = ".ddpm.lock"


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (an OS lock on its LOCK_FILE, which a killed process
    releases) for the block; a second process stops at once, naming the holder's PID. A folder
    made for the block is removed again if the block leaves nothing in it. A disk too full to
    record the lock stops the command here, before its work, in one line."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # from the folder up
    fd = _acquire(folder, made)
    try:
        yield
    finally:
        _remove_if_empty(made, folder)
        os.close(fd)  # releases the lock


def _acquire(folder: Path, made: list[Path]) -> int:
    """The open LOCK_FILE of `folder`, locked by this process; the folders `made` for it are removed
    again if that fails."""
    fd = None
    try:
        make_folder(folder)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        _hold(fd, folder)
        return fd
    except BaseException as e:
        _remove_if_empty(made, folder)
        if fd is not None:
            os.close(fd)
        if isinstance(e, OSError) and e.errno in FULL_DISK:  # even the PID did not fit: stop before the work
            raise disk_full(folder, None, "cannot lock it for this command") from None
        raise


def _hold(fd: int, folder: Path) -> None:
    """Take the lock on the open LOCK_FILE `fd` and write this process's PID into it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise UserError(
            f"{folder} is in use by another ddpm process (PID {holder}); wait for it to end, or use --out "
            "for another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _remove_if_empty(made: list[Path], folder: Path) -> None:
    """Remove the folders `made` for the lock (from `folder` up) where they hold nothing else."""
    if made and folder.is_dir() and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
        (folder / LOCK_FILE).unlink()
    for empty in made:
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()
