"""Atomic file output: a reader sees the old file or the complete new one, never half of one."""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` (same suffix, so writers pick the same format).
    When the block succeeds the file is fsynced and renamed onto `path`; when it fails it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it what open() would have
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


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
