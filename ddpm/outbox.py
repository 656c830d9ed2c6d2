"""The MLflow calls of a command once its work has begun: none of them can stop it.

`Operations` are what can be sent: each one MLflow call, or a query and the writes it decides (which
run a configuration's scores go to), so that the query waits with them while the store is away. A
`Run` is one run, named by its id, or by a placeholder until the call that makes it is sent. The
`Outbox` sends them in order, each retried briefly; one that still fails while the store is away is
kept, and the ones after it wait behind it; what is kept when the command ends goes to a file in its
run folder (ddpm.pending), which the next command there sends first, those of its lines that are
writes ddpm makes. There a placeholder still stands for the run that its call makes, once sent.

The outbox itself knows nothing of MLflow but its error codes: it calls the methods of its client by
name, with arguments that are JSON values or numpy arrays (pictures, kept as .npy files beside the
pending file); tests give it a client of their own.
"""

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.files import write_json
from ddpm.layout import MLFLOW_PENDING
from ddpm.pending import PLACEHOLDER, Write, read_pending, remove_sent, write_pending

WRITE_ATTEMPTS, WRITE_BACKOFF = 3, 1.0  # a write is tried this many times, waiting 1 s, 2 s in between
RETRY_KEPT_AFTER = 60.0  # seconds between tries of the kept writes
PARENT = "mlflow.parentRunId"  # MLflow's tag of a nested run
# MLflow's error codes for a store that is away or busy rather than refusing the write
PASSING_CODES = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")


class Outbox:
    """The writes of one command to `client`, sent in order; none raises."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.kept: list[Write] = []  # writes that failed, in order, to send again
        self.made: dict[str, str] = {}  # placeholder → the id of the run its write made
        self.retry_at = 0.0  # when to try the kept writes again
        self.dropped = 0  # writes the store refused
        self.warned = False
        self.files: set[Path] = set()  # the pictures and copies beside the pending file `replay` read

    def actual(self, run: str) -> str:
        """The id of `run`: the run's own once the write that makes it was sent, else the placeholder."""
        return self.made.get(run, run)

    def run_from(self, operation: str, *args: Any) -> "Run":
        """The run client.`operation`(*args) makes or finds (its id, returned), sent like a write: until
        it is sent, a placeholder names it, and the run's writes wait behind it."""
        placeholder = f"{PLACEHOLDER}{uuid.uuid4().hex}"
        self.send(operation, *args, gives=placeholder)
        return Run(self, placeholder)

    def send(self, operation: str, *args: Any, gives: str | None = None) -> None:
        """client.`operation`(*args), retrying briefly. A write that still fails for a passing reason
        (no server, a locked database) is kept to send later, and later writes queue behind it so that
        the order is kept; one the store refuses outright is dropped, with a warning."""
        write = Write(operation, args, gives)
        if self.kept and not self.flush():
            self.kept.append(write)
            return
        try:
            self._make(write, WRITE_ATTEMPTS)
        except Exception as e:
            if not passing(e):
                self._refused(e)
                return
            self.kept.append(write)
            self.retry_at = time.monotonic() + RETRY_KEPT_AFTER
            self._warn(f"MLflow write failed ({first_line(e)}); the work goes on, and what cannot be logged "
                       "is kept and sent later")  # fmt: skip

    def _make(self, write: Write, attempts: int) -> None:
        args = self._resolved(write.args)
        if args is None:  # it names a run whose making the store refused: it is refused too
            self.dropped += 1
            return
        for attempt in range(attempts):
            try:
                result = getattr(self.client, write.operation)(*args)
                break
            except Exception as e:
                if attempt == attempts - 1 or not passing(e):
                    raise
                time.sleep(WRITE_BACKOFF * 2**attempt)
        if write.gives:
            self.made[write.gives] = result

    def _resolved(self, args: tuple) -> tuple | None:
        """`args` with each placeholder replaced by its run's id; None where a run was never made (the
        writes keep their order, so a placeholder still open here belongs to a write that was dropped)."""
        resolved = tuple(self.actual(arg) if isinstance(arg, str) else arg for arg in args)
        open_ = any(isinstance(arg, str) and arg.startswith(PLACEHOLDER) for arg in resolved)
        return None if open_ else resolved

    def _refused(self, error: Exception) -> None:
        self.dropped += 1
        self._warn(f"MLflow refused a write ({first_line(error)}); it is lost, the work goes on")

    def _warn(self, line: str) -> None:
        if not self.warned:
            self.warned = True
            print(f"ddpm: warning: {line}", file=sys.stderr)

    def flush(self, now: bool = False) -> bool:
        """Send the kept writes, in order (not more often than every RETRY_KEPT_AFTER seconds unless
        `now`, so that an absent store does not slow the work down); whether none is left."""
        if self.kept and not now and time.monotonic() < self.retry_at:
            return False
        while self.kept:
            try:
                self._make(self.kept[0], 1)
            except Exception as e:
                if passing(e):
                    self.retry_at = time.monotonic() + RETRY_KEPT_AFTER
                    return False
                self._refused(e)
            self.kept.pop(0)
        return True

    def close(self, folder: Path | None) -> None:
        """Send what was kept; what still cannot be sent replaces `folder`/MLFLOW_PENDING (which `replay`
        read) for the next command there, or is lost without a folder. Says what happened, if anything
        went wrong."""
        lost = f"; {self.dropped} writes the store refused are lost" if self.dropped else ""
        sent = self.flush(now=True)
        if folder is not None:
            self._keep_in(folder)
        if sent:
            if self.warned:
                print(f"ddpm: {'warning' if lost else 'note'}: all MLflow writes made it after a retry{lost}",
                      file=sys.stderr)  # fmt: skip
        elif folder is None:
            print(f"ddpm: warning: {len(self.kept)} MLflow writes could not be made and are lost{lost}",
                  file=sys.stderr)  # fmt: skip
        else:
            pending = folder / MLFLOW_PENDING
            print(f"ddpm: warning: {len(self.kept)} MLflow writes could not be made; kept in {pending}, for the next "
                  f"ddpm command there to send{lost}", file=sys.stderr)  # fmt: skip

    def replay(self, folder: Path) -> None:
        """Send what an earlier command kept in `folder`/MLFLOW_PENDING (the lines that are writes ddpm
        makes: ddpm.pending), ahead of this command's writes; the file goes once all of it was sent (else
        `close` rewrites it)."""
        read = read_pending(folder)
        if read is None:
            return
        writes, self.files = read
        self.kept = writes + self.kept
        if self.flush(now=True):
            self._keep_in(folder)
            if writes:
                note(f"sent {len(writes)} MLflow writes an earlier command had kept in {folder / MLFLOW_PENDING}")

    def _keep_in(self, folder: Path) -> None:
        """`folder`/MLFLOW_PENDING: the kept writes, written whole or not at all; no file if none is kept."""
        read = self.files
        self.files = write_pending(folder, self.kept, self.actual) if self.kept else set()
        if not self.kept:
            (folder / MLFLOW_PENDING).unlink(missing_ok=True)
        remove_sent(read - self.files)


class Operations:
    """What the outbox sends, by name: each one MLflow call, or a query and the writes it decides (which
    run a configuration's scores go to), sent as one so that it waits with them while the store is away.
    The arguments are JSON values (and pictures); a run is named by its id."""

    def __init__(self, client: Any, experiment_id: str) -> None:
        self.client, self.experiment_id = client, experiment_id

    def new_run(self, name: str, tags: dict[str, str]) -> str:
        return self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id

    def model_run(self, run_id: str | None, name: str, tags: dict[str, str]) -> str:
        """`run_id` (a resumed checkpoint's), reopened, where this store holds it; else a new run."""
        if self._holds(run_id):
            self.client.update_run(run_id, "RUNNING")
            return run_id
        return self.new_run(name, tags)

    def checkpoint_run(self, run_id: str | None, match: dict[str, str], name: str, tags: dict[str, str]) -> str:
        """`run_id` (the run that trained a checkpoint) where this store holds it; else the newest run with
        the tags `match` (the checkpoint file's digest), made with `tags` (and ended) where there is none."""
        if self._holds(run_id):
            return run_id
        found = self._find(match)
        if found:
            return found
        note(f"{name} was not trained into this MLflow store; its evaluations go under a run of its own")
        made = self.new_run(name, {**tags, **match})
        self.client.set_terminated(made)
        return made

    def child_run(
        self, parent: str, match: dict[str, str], name: str, tags: dict[str, str], params: dict[str, str]
    ) -> str:
        """The newest nested run under `parent` with the tags `match` (a configuration's digest), reopened
        with `tags`; else one made with them; either way holding `params`."""
        found = self._find({PARENT: parent, **match})
        if found:
            self.client.update_run(found, "RUNNING")
            self.set_tags(found, tags)
        run_id = found or self.new_run(name, {**tags, **match, PARENT: parent})
        self.log_params(run_id, params)  # all of a new run's; of a run made by a try cut short, the rest
        return run_id

    def _holds(self, run_id: str | None) -> bool:
        """Whether this store holds the active run `run_id`."""
        try:
            return bool(run_id) and self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception as e:
            if passing(e):
                raise  # the store is away: the question waits for it
            return False  # no such run here

    def _find(self, tags: dict[str, str]) -> str | None:
        """The newest run of the experiment with all of `tags`."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self.client.search_runs([self.experiment_id], query, max_results=1, order_by=["start_time DESC"])
        return found[0].info.run_id if found else None

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """The params that the run does not hold yet (MLflow params never change)."""
        from mlflow.entities import Param

        held = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in held]
        if new:
            self.client.log_batch(run_id, params=new)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(run_id, metrics=[Metric(k, v, timestamp, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str, folder: str | None) -> None:
        self.client.log_artifact(run_id, path, folder)

    def log_image(self, run_id: str, picture: np.ndarray, key: str, step: int) -> None:
        self.client.log_image(run_id, picture, key=key, step=step)

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def record_run(self, path: str, run_id: str) -> None:
        """The run's id in the file at `path`, once it is made."""
        write_json(Path(path), {"run_id": run_id})


class Run:
    """One MLflow run, named by its id or, until it is made, a placeholder; every write goes through
    the outbox."""

    def __init__(self, outbox: Outbox, ref: str) -> None:
        self.outbox, self.ref = outbox, ref

    @property
    def id(self) -> str:
        """The run's id, or its placeholder while it is not made."""
        return self.outbox.actual(self.ref)

    def send(self, operation: str, *args: Any) -> None:
        self.outbox.send(operation, self.ref, *args)

    def log_params(self, params: dict[str, Any]) -> None:
        self.send("log_params", {k: show(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        if values:
            self.send("log_metrics", values, step, int(time.time() * 1000))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.send("set_tags", {k: show(v) for k, v in tags.items() if v is not None})

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        for path in paths:  # absolute: the command that sends a kept one may run elsewhere
            self.send("log_artifact", str(path.resolve()), folder)

    def log_image(self, picture: np.ndarray, key: str, step: int) -> None:
        self.send("log_image", picture, key, step)

    def end(self, status: str = "FINISHED") -> None:
        self.send("set_terminated", status)


def passing(error: Exception) -> bool:
    """Whether a failed write may succeed later: the store was away or busy (a network or disk error,
    or MLflow's word for it), not refusing it."""
    return isinstance(error, OSError) or getattr(error, "error_code", None) in PASSING_CODES


def show(value: Any) -> str:
    """A param's or tag's value as MLflow shows it."""
    return value if isinstance(value, str) else json.dumps(list(value) if isinstance(value, tuple) else value)


def note(line: str) -> None:
    print(f"ddpm: note: {line}", file=sys.stderr)


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
