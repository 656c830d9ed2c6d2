"""Files: atomic output (a reader sees the old file or the complete new one, never half of one),
digests, and the lock that keeps two processes out of one output folder."""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ddpm.errors import UserError


@contextmanager
def atomic_output(path: Path, needed: int | None = None) -> Iterator[Path]:
    """Yields a temporary path beside `path` (same suffix, so writers pick the same format).
    When the block succeeds the file is fsynced and renamed onto `path`; when it fails it is removed,
    and a full disk becomes one line that names `path` and the space free and `needed` (bytes; by
    default the size of what was there, or of what got written)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
def atomic_outputs() -> Iterator[Callable[[Path], Path]]:
    """`atomic_output` for a set of files that belong together (a stage's outputs, a report): yields
    `output`, and `output(path)` gives the temporary path to write `path`'s content to, just before it
    is written (so a full disk is reported for that file). Only when the block has written every one
    are they renamed onto their paths (the last one given first); a failure leaves the previous set
    whole. A kill between two renames can still mix two sets: the file that describes a set records
    the sha256 of the others, and its readers check them."""
    with ExitStack() as stack:
        yield lambda path: stack.enter_context(atomic_output(path))


FULL_DISK = {errno.ENOSPC, errno.EDQUOT}


def _full(error: BaseException) -> bool:
    """Whether a failed write looks like a full disk. torch.save reports one as a RuntimeError of its
    zip writer ("... file write failed"), without the errno."""
    if isinstance(error, OSError):
        return error.errno in FULL_DISK
    return isinstance(error, RuntimeError) and "write failed" in str(error)


def disk_full(path: Path, needed: int | None) -> UserError:
    """The one-line error for a write to `path` that found the disk full."""
    folder = path.parent if path.parent.exists() else Path(".")
    free = shutil.disk_usage(folder).free
    more = f", about {_size(needed)} needed" if needed else ""
    return UserError(
        f"{path}: cannot write it, the disk is full ({_size(free)} free in {folder.resolve()}{more}); free some "
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
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    made for the block is removed again if the block leaves nothing in it."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # from the folder up
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
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
        yield
    finally:
        if made and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            lock.unlink()
            for empty in made:
                empty.rmdir()
        os.close(fd)  # releases the lock
