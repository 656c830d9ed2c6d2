"""The pending file (ddpm.layout.MLFLOW_PENDING): the MLflow writes a command kept because the store was
away, one JSON object a line, for the next command in that run folder to send first.

Whoever can write the run folder can write this file, so it is read as data, never obeyed: a line is
sent only if it is one of the writes ddpm itself makes (`OPERATIONS`) with arguments of the kinds that
write takes: run ids of MLflow's form or runs made by an earlier line, files that ddpm uploads lying
inside the run folder, pictures saved beside the file under their own digest. Any other line is skipped
with one warning naming the file and the line. The file, its pictures and the copies of files from
outside the folder are each written whole or not at all (ddpm.files.atomic_output), so a kill leaves the
old file or the new one, never half a line.
"""

import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ddpm.files import atomic_output
from ddpm.layout import (
    MLFLOW_EVAL_RUN,
    MLFLOW_PENDING,
    PENDING_COPY,
    PENDING_PICTURE,
    PENDING_UPLOADS,
    pending_copy,
    pending_picture,
)

PLACEHOLDER = "pending:"  # a run's name until the write that makes it is sent
MADE = re.compile(rf"{PLACEHOLDER}[0-9a-f]{{32}}")  # a placeholder, as Outbox.run_from names one
RUN_ID = re.compile(r"[A-Za-z0-9][\w-]{0,255}", re.ASCII)  # MLflow's own rule (mlflow.utils.validation)
NAME = re.compile(r"[\w-]{1,64}", re.ASCII)  # an artifact folder or a picture's key: one plain name
STATUSES = ("FINISHED", "KILLED", "FAILED")
KEYS = {"operation", "args", "gives", "pictures"}  # of a line
SHAPE = 'an object of "operation", "args" and, where needed, "gives" and "pictures"'

# Each write that ddpm sends through its outbox (a method of ddpm.outbox.Operations): the kinds of its
# arguments, and whether it makes a run (named by the placeholder in "gives" until it is sent)
OPERATIONS: dict[str, tuple[tuple[str, ...], bool]] = {
    "new_run": (("text", "strings"), True),
    "checkpoint_run": (("run id or null", "strings", "text", "strings"), True),
    "child_run": (("run", "strings", "text", "strings", "strings"), True),
    "log_params": (("run", "strings"), False),
    "log_metrics": (("run", "numbers", "integer", "integer"), False),
    "set_tags": (("run", "strings"), False),
    "log_artifact": (("run", "upload", "name or null"), False),
    "log_image": (("run", "picture", "name", "integer"), False),
    "set_terminated": (("run", "status"), False),
    "record_run": (("record", "run"), False),
}


class Write(NamedTuple):
    """client.`operation`(*args); the run id it returns replaces the placeholder `gives`."""

    operation: str
    args: tuple
    gives: str | None = None


def write_pending(folder: Path, writes: list[Write], actual: Callable[[str], str]) -> set[Path]:
    """`folder`/MLFLOW_PENDING holding `writes` (their runs named by `actual`: the id of a run made since),
    written whole, with the pictures and copies beside it that its lines name, which are returned."""
    files: set[Path] = set()
    lines = [json.dumps(_portable(write, folder, actual, files)) + "\n" for write in writes]
    with atomic_output(folder / MLFLOW_PENDING) as tmp:
        tmp.write_text("".join(lines))
    return files


def _portable(write: Write, folder: Path, actual: Callable[[str], str], files: set[Path]) -> dict[str, Any]:
    """A kept write as JSON: runs made since by their ids, files by their paths inside `folder` (a file
    to upload from outside it copied in), pictures saved beside the pending file (their names under
    "pictures", by argument position)."""
    kinds = OPERATIONS.get(write.operation, ((),))[0]
    args, pictures = [], {}
    for position, arg in enumerate(write.args):
        kind = kinds[position] if position < len(kinds) else None
        if isinstance(arg, np.ndarray):
            path = pending_picture(folder, hashlib.sha256(arg.tobytes()).hexdigest())
            with atomic_output(path) as tmp:
                np.save(tmp, arg)
            files.add(path)
            pictures[str(position)], arg = path.name, None
        elif kind == "upload":
            arg = _inside(_copied(Path(arg), folder, files), folder)
        elif kind == "record":
            arg = _inside(Path(arg), folder)
        args.append(actual(arg) if isinstance(arg, str) else arg)
    return {"operation": write.operation, "args": args, "gives": write.gives, "pictures": pictures}


def remove_sent(files: set[Path]) -> None:
    """The pictures and copies beside the pending file whose writes were sent, and the copies' folders."""
    for path in files:
        path.unlink(missing_ok=True)
        if PENDING_COPY.fullmatch(path.parent.name) and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()


def _copied(path: Path, folder: Path, files: set[Path]) -> Path:
    """`path`, or where it lies outside `folder`, its copy beside the pending file (a missing file stays
    as it is: its line is skipped when read back)."""
    if path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
        return path
    copy = pending_copy(folder, hashlib.sha256(path.read_bytes()).hexdigest(), path.name)
    with atomic_output(copy) as tmp:
        shutil.copyfile(path, tmp)
    files.add(copy)
    return copy


def _inside(path: Path, folder: Path) -> str:
    """`path` relative to `folder` where it lies inside (so the folder may move), else absolute."""
    path, folder = path.resolve(), folder.resolve()
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


def read_pending(folder: Path) -> tuple[list[Write], set[Path]] | None:
    """The writes that `folder`/MLFLOW_PENDING holds, in order, and the files beside it that they name;
    each line that is not a write ddpm makes is skipped with a warning naming the file and line. None
    where there is no such file, or it cannot be read (left as it is, with a warning)."""
    pending, reader = folder / MLFLOW_PENDING, _Reader(folder)
    try:
        content = pending.read_bytes() if pending.is_file() else None
    except OSError as e:
        print(f"ddpm: warning: cannot read {pending} ({e.strerror}); the MLflow writes it holds wait", file=sys.stderr)
        return None
    if content is None:
        return None
    writes = []
    for number, text in enumerate(content.split(b"\n"), 1):
        try:
            if text.strip():
                writes.append(reader.write(text))
        except _Skipped as e:
            print(f"ddpm: warning: {pending}:{number}: {e}; the line is skipped", file=sys.stderr)
    return writes, reader.files


class _Skipped(Exception):
    """Why a line of the pending file is not sent."""


class _Reader:
    """Reads the lines of one pending file in order: the runs that earlier lines make, and the pictures
    and copies that the lines name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: set[str] = set()
        self.files: set[Path] = set()  # those of the lines read
        self.named: set[Path] = set()  # those of the line being read, until it is found good
        # each kind of argument: what it is, and its check (a ValueError for an argument not of the kind)
        self.kinds: dict[str, tuple[str, Callable[[Any], Any]]] = {
            "run": ("a run id or a run made by an earlier line", self._run),
            "run id or null": ("a run id or null", lambda v: v if v is None else _matching(RUN_ID, v)),
            "text": ("a string", lambda v: _valid(v, isinstance(v, str))),
            "strings": ("an object of strings", lambda v: _mapping(v, lambda x: isinstance(x, str))),
            "numbers": ("an object of numbers", lambda v: _mapping(v, _number)),
            "integer": ("an integer", lambda v: _valid(v, isinstance(v, int) and not isinstance(v, bool))),
            "status": (f"{', '.join(STATUSES[:-1])} or {STATUSES[-1]}", lambda v: _valid(v, v in STATUSES)),
            "name": ("a plain name", lambda v: _matching(NAME, v)),
            "name or null": ("a plain name or null", lambda v: v if v is None else _matching(NAME, v)),
            "upload": (f"a file that ddpm uploads, inside {folder}", self._upload),
            "record": (f"an {MLFLOW_EVAL_RUN} waiting for its run's id", self._record),
            "picture": ("a picture saved beside the pending file", self._picture),
        }

    def write(self, text: bytes) -> Write:
        """The Write in one line of the file, its arguments checked and read (pictures, paths)."""
        self.named = set()
        try:
            line = json.loads(text)
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, or nested past Python's stack
            raise _Skipped(f"not JSON ({getattr(e, 'msg', type(e).__name__)})") from None
        if not (
            isinstance(line, dict) and {"operation", "args"} <= line.keys() <= KEYS
            and isinstance(line["args"], list) and isinstance(line.get("pictures") or {}, dict)
        ):  # fmt: skip
            raise _Skipped(f"not a write: expected {SHAPE}")
        operation, args, gives = line["operation"], line["args"], line.get("gives")
        if not isinstance(operation, str) or operation not in OPERATIONS:
            raise _Skipped(f"{operation!r} is not an MLflow write that ddpm makes")
        kinds, makes = OPERATIONS[operation]
        if len(args) != len(kinds):
            raise _Skipped(f"{operation} takes {len(kinds)} arguments, not {len(args)}")
        pictures = line.get("pictures") or {}
        values = [self._argument(operation, position, kind, pictures.get(str(position)) if kind == "picture" else arg)
                  for position, (kind, arg) in enumerate(zip(kinds, args, strict=True))]  # fmt: skip
        if makes and not (isinstance(gives, str) and MADE.fullmatch(gives) and gives not in self.made):
            raise _Skipped(f'{operation}: "gives" is not a new placeholder: {_shown(gives)}')
        if not makes and gives is not None:
            raise _Skipped(f'{operation} makes no run: "gives" must be null')
        self.made |= {gives} if makes else set()
        self.files |= self.named
        return Write(operation, tuple(values), gives)

    def _argument(self, operation: str, position: int, kind: str, value: Any) -> Any:
        what, check = self.kinds[kind]
        try:
            return check(value)
        except ValueError:
            raise _Skipped(f"{operation}: argument {position + 1} is not {what}: {_shown(value)}") from None

    def _run(self, value: Any) -> str:
        return value if value in self.made else _matching(RUN_ID, value)

    def _upload(self, value: Any) -> str:
        """A file ddpm uploads, named by its path inside the folder, that lies there, links resolved."""
        path = (self.folder / _valid(value, isinstance(value, str))).resolve()  # an older ddpm's are absolute
        _valid(value, path.is_relative_to(self.folder.resolve()) and path.name in PENDING_UPLOADS and path.is_file())
        if PENDING_COPY.fullmatch(path.parent.name):  # a copy from outside (`_copied`): it goes once sent
            self.named.add(path)
        return str(path)

    def _record(self, value: Any) -> str:
        """The record of an evaluation's run (ddpm.tracking.log_evaluation) that waits for its id: the
        only file the outbox writes, and only there. It may lie outside the folder (evaluate --out), but
        never outside the working folder (the project) either, links resolved: a planted line cannot
        reach a file elsewhere."""
        path = self.folder / _valid(value, isinstance(value, str))
        where = path.resolve()
        inside = where.is_relative_to(self.folder.resolve()) or where.is_relative_to(Path.cwd().resolve())
        try:  # a regular file (a FIFO would never answer), not a link to one elsewhere
            waiting = inside and path.is_file() and not path.is_symlink()
            waiting = waiting and json.loads(path.read_bytes()) == {"run_id": None}
        except (OSError, ValueError, RecursionError):
            waiting = False
        return str(_valid(path, path.name == MLFLOW_EVAL_RUN and waiting))

    def _picture(self, value: Any) -> np.ndarray:
        """A uint8 (H, W, 3) picture saved beside the pending file, under the digest of its pixels."""
        named = isinstance(value, str) and PENDING_PICTURE.fullmatch(value)
        path = self.folder / _valid(value, bool(named) and (self.folder / value).is_file())
        _valid(value, not path.is_symlink())
        try:  # memory-mapped first, so that a foreign header cannot make numpy allocate what it claims
            picture = np.array(np.load(path, mmap_mode="r"))
        except (OSError, ValueError, EOFError):
            raise ValueError(value) from None
        _valid(value, picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3)
        _valid(value, hashlib.sha256(picture.tobytes()).hexdigest().startswith(named["digest"]))
        self.named.add(path)
        return picture


def _valid(value: Any, condition: bool) -> Any:
    if not condition:
        raise ValueError(value)
    return value


def _matching(pattern: re.Pattern, value: Any) -> str:
    return _valid(value, isinstance(value, str) and bool(pattern.fullmatch(value)))


def _mapping(value: Any, check: Callable[[Any], bool]) -> dict:
    """An object with string keys whose values all pass `check`."""
    return _valid(value, isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items()))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
