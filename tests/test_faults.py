"""Faults that would waste or kill a long GPU run, each reproduced: non-finite models, MLflow
outages and read-only or unreachable stores, two processes in one folder, full disks, damaged
checkpoints, signals at the end, and files that are not what they claim."""

import errno
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU, clean_environment, copy_store, invoke, run, tiny_config, write_params
from PIL import Image

import ddpm.outbox
from ddpm.data import save_images, synthetic_flowers
from ddpm.errors import UserError
from ddpm.train import train


def mlflow_runs(root: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddpm-flowers")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture
def project(tmp_path: Path, flowers16: Path, trained: Path) -> Path:
    """A folder with the tiny params, the prepared flowers and a copy of the session's model in runs/linear."""
    write_params(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    shutil.copy(flowers16, tmp_path / "data" / "prepared" / "images.npy")
    shutil.copytree(trained, tmp_path / "runs" / "linear" / "seed0")
    return tmp_path


@pytest.fixture
def store(project: Path, empty_store: Path) -> None:
    """The project's MLflow store, its tables made ahead (conftest.empty_store), for the tests that log
    to it; a new store is what test_two_processes_creating_one_new_store_both_succeed makes."""
    copy_store(empty_store, project)


def one_line_error(result: object, *parts: str) -> str:
    """The command's error, checked to be one line with exit status 2 that holds every one of `parts`."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("ddpm: error: ") and "Traceback" not in result.stderr, result.stderr
    for part in parts:
        assert part in line, (part, line)
    return line


# --- silent garbage ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("store")
def test_a_model_with_non_finite_weights_samples_nothing_and_logs_nothing(project: Path) -> None:
    checkpoint = project / "runs" / "linear" / "seed0" / "model.pt"
    state = torch.load(checkpoint, weights_only=True)
    next(iter(state["ema"].values())).fill_(float("nan"))
    torch.save(state, checkpoint)
    result = invoke("sample", "--checkpoint", str(checkpoint), cwd=project)
    one_line_error(result, str(checkpoint), "the samples of batch 1 are not finite")
    assert not (project / "runs" / "linear" / "seed0" / "samples").exists()  # no black images, no grid
    assert [r for r in mlflow_runs(project) if r.data.tags.get("ddpm.kind") == "evaluation"] == []


def poison_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make one step with a finite loss leave a weight non-finite, as an overflow in the update would."""
    import ddpm.train

    real, calls = ddpm.train.training_step, [0]

    def training_step(forward, *args):  # noqa: ANN001, ANN202
        calls[0] += 1
        loss, skipped = real(forward, *args)
        if calls[0] == step:
            with torch.no_grad():
                next(forward.parameters()).fill_(float("inf"))
        return loss, skipped

    monkeypatch.setattr(ddpm.train, "training_step", training_step)


@pytest.mark.slow
def test_weights_made_non_finite_by_a_finite_loss_are_never_checkpointed(
    flowers16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_at(monkeypatch, 7)
    config = tiny_config(train={"steps": 20, "checkpoint_every": 5, "log_every": 5})
    with pytest.raises(UserError, match=r"the weights are not finite at step 10 \(the loss was\); stopped\. "
                                        r"Last good checkpoint: .*step-00000005\.pt"):  # fmt: skip
        train(config, flowers16, tmp_path, CPU, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000005.pt"]


@pytest.mark.slow
def test_a_log_window_without_a_finite_loss_is_missing_not_zero(
    flowers16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_training_loop import nan_at

    nan_at(monkeypatch, lambda call: 11 <= call <= 20)
    result = train(tiny_config(train={"steps": 30, "max_nonfinite": 50}), flowers16, tmp_path, CPU, progress=False)
    assert [step for step, _ in result.losses] == [10, 30] and result.nonfinite == 10
    assert (tmp_path / "losses.csv").read_text().splitlines()[1:][1].startswith("30,")


# --- MLflow must not kill training --------------------------------------------------------------------


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ddpm.outbox, "WRITE_BACKOFF", 0.0)
    monkeypatch.setattr(ddpm.outbox, "RETRY_KEPT_AFTER", 0.0)


def failing(monkeypatch: pytest.MonkeyPatch, operations: tuple[str, ...], fails: "callable") -> list[str]:
    """Make MlflowClient's `operations` raise a store-unavailable error while fails(call number) holds."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    calls: list[str] = []
    for name in operations:
        real = getattr(MlflowClient, name)

        def flaky(self, *args, _real=real, _name=name, **kwargs):  # noqa: ANN001, ANN202
            calls.append(_name)
            if fails(len(calls)):
                raise MlflowException("(sqlite3.OperationalError) database is locked", "TEMPORARILY_UNAVAILABLE")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, flaky)
    return calls


@pytest.mark.slow
@pytest.mark.usefixtures("store")
def test_training_goes_on_while_mlflow_is_away_and_sends_what_it_kept(
    project: Path, flowers16: Path, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    failing(monkeypatch, ("log_batch", "log_artifact", "log_image", "set_terminated"), lambda n: 3 <= n <= 12)
    result = invoke("train", "--beta-schedule", "cosine", "--set", "train.sample_every=10", cwd=project)
    assert result.exit_code == 0, result.stderr
    assert "ddpm: warning: MLflow write failed" in result.stderr and "all MLflow writes made it" in result.stderr
    [model] = [r for r in mlflow_runs(project) if r.info.run_name == "cosine, seed 0"]
    assert model.info.status == "FINISHED" and {"final_loss", "train/loss"} <= model.data.metrics.keys()


@pytest.mark.slow
@pytest.mark.usefixtures("store")
def test_what_could_not_be_sent_is_kept_in_the_run_folder_and_the_next_command_sends_it(
    project: Path, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    calls = failing(monkeypatch, ("log_batch", "log_artifact", "log_image", "set_terminated"), lambda n: n >= 3)
    result = invoke("train", "--beta-schedule", "cosine", cwd=project)
    assert result.exit_code == 0, result.stderr  # the run ended, and ended well
    pending = project / "runs" / "cosine" / "seed0" / "mlflow-pending.jsonl"
    # 10 since quality.csv is uploaded with the run's files
    assert f"ddpm: warning: 10 MLflow writes could not be made; kept in {pending.relative_to(project)}" in result.stderr
    assert pending.is_file()
    monkeypatch.undo()
    calls.clear()
    again = invoke("sample", "--beta-schedule", "cosine", cwd=project)  # the next command in that folder
    assert again.exit_code == 0, again.stderr
    assert "sent" in again.stderr and not pending.exists()
    [model] = [r for r in mlflow_runs(project) if r.info.run_name == "cosine, seed 0"]
    assert model.info.status == "FINISHED" and "final_loss" in model.data.metrics


@pytest.mark.slow
@pytest.mark.usefixtures("store")
def test_a_read_only_store_fails_in_one_line_before_any_work(project: Path) -> None:
    assert invoke("schedules", "--out", "pics", cwd=project).exit_code == 0
    from ddpm.config import TrackingConfig
    from ddpm.tracking import open_store

    open_store(TrackingConfig(uri=f"sqlite:///{project / 'mlflow.db'}"))  # the store and its experiment exist
    read_only = f"sqlite:///file:{project / 'mlflow.db'}?mode=ro&uri=true"
    result = invoke("sample", "--set", f"tracking.uri={read_only}", cwd=project)
    one_line_error(result, "cannot use the MLflow tracking store", "readonly database")
    assert not (project / "runs" / "linear" / "seed0" / "samples").exists()
    assert not (project / "file:").exists()  # SQLite's own URI is read as SQLite reads it: no stray folder


@pytest.mark.parametrize("name", ["x?y", "p%20q", "a#b", "blüte"])
def test_the_default_store_and_its_artifacts_lie_in_the_working_folder_whatever_its_name(
    name: str, tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpm.config import TrackingConfig
    from ddpm.outbox import Run
    from ddpm.tracking import open_store

    folder = tmp_path / name
    copy_store(empty_store, folder)
    (folder / "eval.json").write_text("{}\n")
    monkeypatch.chdir(folder)
    store = open_store(TrackingConfig())  # the default: sqlite:///<working folder>/mlflow.db
    run = Run(store.outbox, store.operations.new_run("scores", {}))
    run.log_artifacts([folder / "eval.json"])
    [uploaded] = (folder / "mlartifacts").rglob("eval.json")
    assert uploaded.relative_to(folder / "mlartifacts").parts == (run.id, "artifacts", "eval.json")
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no database cut short at `?`, no percent-encoded folder
    with sqlite3.connect(folder / "mlflow.db") as db:
        assert db.execute(
            "select name from experiments where experiment_id = ?", (store.experiment_id,)
        ).fetchall() == [("ddpm-flowers",)]


def test_a_working_folder_that_an_sqlite_uri_cannot_name_is_refused_in_one_line_before_any_work(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy.engine.url

    monkeypatch.setattr(sqlalchemy.engine.url, "unquote", lambda text: text)  # an SQLAlchemy that does not decode
    folder = project / "x?y"
    folder.mkdir()
    for entry in [p for p in project.iterdir() if p != folder]:
        entry.rename(folder / entry.name)
    result = invoke("sample", cwd=folder)
    one_line_error(
        result, f"the default MLflow store {folder / 'mlflow.db'} cannot be named by an SQLite URI", "tracking.uri"
    )
    assert not (folder / "runs" / "linear" / "seed0" / "samples").exists()
    assert [p.name for p in project.iterdir()] == ["x?y"] and not (folder / "mlflow.db").exists()


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.socket.accept()[0])
            except OSError:
                return


@pytest.mark.slow
@pytest.mark.parametrize("server", ["refusing", "silent"])
def test_an_unreachable_tracking_server_fails_in_one_line_within_15_seconds(project: Path, server: str) -> None:
    if server == "silent":
        url = SilentServer().url
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    result = invoke("sample", "--set", f"tracking.uri={url}", cwd=project)
    assert time.monotonic() - start < 15
    one_line_error(result, f"cannot use the MLflow tracking store {url}")
    assert f"checking the MLflow server at {url}" in result.stderr  # it said what it was waiting for
    assert not (project / "runs" / "linear" / "seed0" / "samples").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("store")
def test_samples_and_scores_follow_the_checkpoint_not_the_params_schedule(project: Path) -> None:
    # params.yaml says linear; the model given is another run's
    shutil.move(project / "runs" / "linear" / "seed0", project / "runs" / "mine")
    sampled = invoke("sample", "--checkpoint", "runs/mine/model.pt", cwd=project)
    assert sampled.exit_code == 0, sampled.stderr
    assert (project / "runs" / "mine" / "samples" / "samples.npy").is_file()
    assert not (project / "runs" / "linear" / "seed0").exists()
    scored = invoke("evaluate", "--samples", "runs/mine/samples/samples.npy", cwd=project)
    assert scored.exit_code == 0, scored.stderr
    assert (project / "runs" / "mine" / "eval.json").is_file() and not (project / "runs" / "linear" / "seed0").exists()
    runs = {r.info.run_id: r for r in mlflow_runs(project)}
    [child] = [r for r in runs.values() if r.data.tags.get("ddpm.kind") == "evaluation"]
    parent = runs[child.data.tags["mlflow.parentRunId"]]
    assert parent.info.run_name == "mine/model.pt" and parent.data.tags["beta_schedule"] == "linear"
    assert "fid_randconv" in child.data.metrics


# --- two processes, one run --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_process_on_the_same_folder_stops_at_once_naming_the_first(project: Path) -> None:
    from ddpm.files import folder_lock

    with folder_lock(project / "runs" / "linear" / "seed0"):  # this process is the first
        second = run("train", "--device", "cpu", cwd=project, timeout=120)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"ddpm: error: {Path('runs/linear/seed0')} is in use by another ddpm process "
        f"(PID {__import__('os').getpid()}); wait for it to end, or use --out for another folder"
    )


@pytest.mark.slow
def test_two_processes_creating_one_new_store_both_succeed(tmp_path: Path) -> None:
    code = (
        "from ddpm.config import TrackingConfig; from ddpm.tracking import open_store; "
        f"open_store(TrackingConfig(uri='sqlite:///{tmp_path / 'new.db'}')); print('ok')"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs


# --- full disks and odd files ------------------------------------------------------------------------


# What a write that finds the disk full raises, given the whole size and the part that fitted: the
# errno, numpy's short write (ndarray.tofile: no errno), torch.save's C++ stream (torch 2.14) and its
# zip writer (torch 2.14, and the message of earlier versions).
FULL_DISK_SHAPES = {
    "ENOSPC": lambda total, written: OSError(errno.ENOSPC, "No space left on device"),
    "numpy short write": lambda total, written: OSError(f"{total} requested and {written} written"),
    "torch stream": lambda total, written: RuntimeError("basic_ios::clear: iostream error"),
    "torch zip writer": lambda total, written: RuntimeError(
        f"[enforce fail at inline_container.cc:672] . unexpected pos {written} vs {total}"
    ),
    "torch zip writer before 2.14": lambda total, written: RuntimeError(
        "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed"
    ),
}


def full_disk_on(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, shape: str, when: "callable" = lambda n: True
) -> None:
    """`target.name` (np.save or torch.save) fails as on a full disk: it writes the first half of the
    file, then raises what FULL_DISK_SHAPES[shape] raises."""
    real, calls = getattr(target, name), [0]

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        if not when(calls[0]):
            return real(*args, **kwargs)
        file, value = args[:2] if target is np else reversed(args[:2])  # np.save(file, array), torch.save(obj, f)
        whole = io.BytesIO()
        real(*((whole, value) if target is np else (value, whole)), *args[2:], **kwargs)
        written = len(whole.getvalue()) // 2
        Path(file).write_bytes(whole.getvalue()[:written])
        raise FULL_DISK_SHAPES[shape](len(whole.getvalue()), written)

    monkeypatch.setattr(target, name, full)


def disk_full_line(path: str, folder: Path, needed: str) -> str:
    """The one line (a regular expression) of a write to `path` in `folder` that needs `needed`."""
    return (
        rf"ddpm: error: {re.escape(path)}: cannot write it, the disk is full \([0-9.]+ (bytes|KiB|MiB|GiB) free in "
        rf"{re.escape(str(folder.resolve()))}, about {re.escape(needed)} needed\); free some space and run the same "
        r"command again"
    )


def one_full_disk_line(result: object, pattern: str) -> None:
    """The command ended with exit status 2 and one line that matches `pattern`, without a traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert re.fullmatch(pattern, result.stderr.strip().splitlines()[-1]), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("shape", FULL_DISK_SHAPES)
def test_every_way_a_write_reports_a_full_disk_is_one_line_with_the_whole_size(tmp_path: Path, shape: str) -> None:
    from ddpm.files import atomic_output

    path = tmp_path / "out" / "weights.bin"
    path.parent.mkdir()
    path.write_bytes(b"the previous file")
    with pytest.raises(UserError) as error, atomic_output(path, needed=3 * 2**20) as tmp:
        tmp.write_bytes(b"x" * 2**20)  # the part that fitted: a third
        raise FULL_DISK_SHAPES[shape](3 * 2**20, 2**20)
    assert re.fullmatch(disk_full_line(str(path), path.parent, "3.0 MiB"), f"ddpm: error: {error.value}")
    assert [p.name for p in path.parent.iterdir()] == ["weights.bin"] and path.read_bytes() == b"the previous file"


@pytest.mark.parametrize(
    "error", [OSError(errno.EACCES, "Permission denied"), OSError("a message"), RuntimeError("another failure")]
)
def test_a_failed_write_that_is_not_a_full_disk_is_not_called_one(tmp_path: Path, error: Exception) -> None:
    from ddpm.files import atomic_output

    with pytest.raises(type(error)) as raised, atomic_output(tmp_path / "file.bin") as tmp:
        tmp.write_bytes(b"x")
        raise error
    assert raised.value is error and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_during_training_keeps_the_previous_checkpoint_and_says_so_in_one_line(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpm.files import _size

    full_disk_on(monkeypatch, torch, "save", "torch stream", lambda n: n >= 2)  # the first checkpoint fits
    result = invoke("train", "--beta-schedule", "cosine", "--set", "tracking.enabled=false", cwd=project)
    folder = project / "runs" / "cosine" / "seed0" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["step-00000010.pt"]  # whole, and nothing half-written beside it
    first = torch.load(folder / "step-00000010.pt", weights_only=True)
    assert first["step"] == 10
    tensors = sum(t.nbytes for t in _tensors(first))  # the second's tensors are as large: that is the size needed
    path = Path("runs/cosine/seed0/checkpoints/step-00000020.pt")
    one_full_disk_line(result, disk_full_line(str(path), folder, _size(tensors)))


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else []
    return [t for item in items for t in _tensors(item)]


def _feature_cache(project: Path) -> Path:
    from ddpm.files import sha256_hex
    from ddpm.layout import feature_cache

    return feature_cache(Path("data/features"), sha256_hex(project / "data/prepared/images.npy"), "randconv", "none")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "file", "needed"),
    [
        ("sample", lambda _: Path("runs/linear/seed0/samples/samples.npy"), "3.1 KiB"),  # 4 × 3 × 16 × 16, header
        ("evaluate", _feature_cache, "14.1 KiB"),  # 8 × 224 float64 features and the header
        ("prepare", lambda _: Path("data/prepared/holdout.npy"), "6.2 KiB"),  # 2 held-out, 6 training images, headers
    ],
)
def test_a_full_disk_in_the_other_stages_is_one_line_and_keeps_their_previous_outputs(
    project: Path, monkeypatch: pytest.MonkeyPatch, command: str, file: "callable", needed: str
) -> None:
    if command != "prepare":
        assert invoke("sample", "--set", "tracking.enabled=false", cwd=project).exit_code == 0
    if command == "evaluate":
        assert invoke("evaluate", "--set", "tracking.enabled=false", cwd=project).exit_code == 0
        shutil.rmtree(project / "data" / "features")  # so that the next evaluate writes the features again
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    args = {"prepare": ["--source", "synthetic", "--set", "data.synthetic_count=8", "--set", "data.holdout=2"]}
    full_disk_on(monkeypatch, np, "save", "numpy short write")
    result = invoke(command, *args.get(command, []), "--set", "tracking.enabled=false", cwd=project)
    path = file(project)
    one_full_disk_line(result, disk_full_line(str(path), project / path.parent, needed))
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before  # whole, nothing half-written


def test_a_disk_too_full_for_the_folder_lock_is_one_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)  # what writing the PID into the lock does with 0 bytes free
    result = invoke("sample", "--set", "tracking.enabled=false", cwd=project)
    folder = project / "runs" / "linear" / "seed0" / "samples"
    one_full_disk_line(
        result,
        r"ddpm: error: runs/linear/seed0/samples: cannot lock it for this command, the disk is full \([0-9.]+ "
        rf"(bytes|KiB|MiB|GiB) free in {re.escape(str(folder.parent))}\); free some space and run the same command "
        "again",
    )
    assert not folder.exists()  # the folder made for the lock is gone again


# Run in a small tmpfs of its own: outputs written, the disk filled to 64 KiB free, a checkpoint and
# images twice that size written over them, then the disk filled to 0 bytes and a run folder locked.
ON_A_FULL_DISK = """
import os, sys
from pathlib import Path
import numpy as np, torch
from ddpm.checkpoint import ModelCheckpoint, save_checkpoint
from ddpm.data import load_images, save_images
from ddpm.errors import UserError
from ddpm.files import folder_lock

disk = Path(sys.argv[1])
def fill(leave):
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        os.close(fd)
    os.truncate(disk / "filler", max(os.path.getsize(disk / "filler") - leave, 0))
def attempt(write):
    try:
        write()
    except UserError as e:
        print(e)
def checkpoint(values):
    return ModelCheckpoint(arch={}, arch_version=0, diffusion={}, model={"w": torch.full((32768,), values)}, step=0)
save_images(disk / "prepared" / "images.npy", np.full((4, 3, 16, 16), 7, np.uint8))
save_checkpoint(disk / "run" / "model.pt", checkpoint(1.0))
fill(64 * 1024)
attempt(lambda: save_images(disk / "prepared" / "images.npy", np.zeros((200, 3, 16, 16), np.uint8)))
attempt(lambda: save_checkpoint(disk / "run" / "model.pt", checkpoint(2.0)))
fill(0)
attempt(lambda: folder_lock(disk / "run2").__enter__())
weights = torch.load(disk / "run" / "model.pt")["model"]["w"]
print(load_images(disk / "prepared" / "images.npy").max(), float(weights[0]))
print(sorted(str(p.relative_to(disk)) for p in disk.rglob("*")))
"""


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_for_numpy_torch_and_the_lock(tmp_path: Path) -> None:
    """What numpy and torch really raise on a full file system (a tmpfs mounted in a user namespace,
    where the system allows one without root), not what a test imitates."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = f"mount -t tmpfs -o size=1m none {disk}"
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "sh", "-c", mount]).returncode:
        pytest.skip("no user namespaces here to mount a small file system in")
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" -c "$1" {disk}', sys.executable, ON_A_FULL_DISK],
        capture_output=True, text=True, timeout=120, env=clean_environment(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    free = r"\([0-9.]+ (bytes|KiB) free in "
    again = "; free some space and run the same command again"
    patterns = [
        rf"{disk}/prepared/images.npy: cannot write it, the disk is full {free}{disk}/prepared, about 150.1 KiB "
        rf"needed\){again}",  # 200 × 3 × 16 × 16 bytes and the header, not the part that fitted
        rf"{disk}/run/model.pt: cannot write it, the disk is full {free}{disk}/run, about 128.0 KiB needed\){again}",
        rf"{disk}/run2: cannot lock it for this command, the disk is full \(0 bytes free in {disk}\){again}",
        r"7 1.0",  # the previous images and checkpoint, whole
        r"\['filler', 'prepared', 'prepared/images.npy', 'run', 'run/model.pt'\]",  # nothing half-written
    ]
    lines = result.stdout.splitlines()
    assert len(lines) == len(patterns), result.stdout
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_a_download_that_fills_the_disk_is_not_told_it_may_be_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ddpm.download

    def full(url: str, part: Path, *args: object) -> None:
        error = OSError(errno.ENOSPC, "No space left on device")
        error.received = 0
        raise error

    monkeypatch.setattr(ddpm.download, "_fetch_from", full)
    result = invoke("download", "--set", "data.url=http://127.0.0.1:9/", cwd=tmp_path)
    line = one_line_error(result, "102flowers.tgz.part: cannot write it, the disk is full (")
    assert "offline" not in line


@pytest.mark.slow
def test_an_unreadable_newest_checkpoint_is_passed_over_for_the_one_before(
    flowers16: Path, tmp_path: Path, capsys
) -> None:
    train(tiny_config(train={"checkpoint_every": 5}), flowers16, tmp_path, CPU, progress=False)
    newest = tmp_path / "checkpoints" / "step-00000020.pt"
    newest.write_bytes(newest.read_bytes()[:5000])  # a truncated file, as a failing disk leaves one
    result = train(tiny_config(train={"steps": 25, "checkpoint_every": 5}), flowers16, tmp_path, CPU, progress=False)
    assert result.resumed_from == 15
    note = capsys.readouterr().err
    assert (
        f"{newest} cannot be read (truncated or damaged); resuming from {newest.with_name('step-00000015.pt')}" in note
    )


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["a missing weight", "a bad RNG state", "an empty optimizer state"])
def test_a_checkpoint_with_inconsistent_contents_is_one_line_before_mlflow(project: Path, damage: str) -> None:
    folder = project / "runs" / "linear" / "seed0" / "checkpoints"
    checkpoint = sorted(folder.glob("step-*.pt"))[-1]
    state = torch.load(checkpoint, weights_only=True)
    if damage == "a missing weight":
        state["model"].pop(next(iter(state["model"])))
    elif damage == "a bad RNG state":
        state["rng"]["cpu"] = torch.zeros(3, dtype=torch.uint8)
    else:
        state["optimizer"] = {}
    torch.save(state, checkpoint)
    result = invoke("train", "--steps", "30", cwd=project)
    one_line_error(result, f"{checkpoint.relative_to(project)}: inconsistent checkpoint (", "--no-resume")
    assert not (project / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("store")
def test_a_signal_during_the_final_save_says_so_and_the_mlflow_run_ends_killed(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ddpm.train

    real = ddpm.train.save_checkpoint

    def save(path: Path, state: dict) -> None:
        if path.name == "model.pt":
            signal.raise_signal(signal.SIGTERM)  # after the last step, while the final weights are written
        real(path, state)

    monkeypatch.setattr(ddpm.train, "save_checkpoint", save)
    result = invoke("train", "--beta-schedule", "cosine", cwd=project)
    assert result.exit_code == 128 + signal.SIGTERM, result.stderr
    last = Path("runs/cosine/seed0/checkpoints/step-00000020.pt")
    assert f"ddpm: stopped by SIGTERM at step 20; saved {last}; run the same command to resume" in result.stderr
    [model] = [r for r in mlflow_runs(project) if r.info.run_name == "cosine, seed 0"]
    assert model.info.status == "KILLED"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"train:\n  lr: \xff\xfe\n", "params.yaml: not UTF-8 text (byte 13); expected a YAML file of params"),
        (
            b"",
            "params.yaml: the file holds no params; expected sections (data, model, ...), or no file for the built-in",
        ),
        (
            b"train:\n  batch_size: 4\ntrain:\n  lr: 0.001\n",  # YAML alone would drop batch_size: 4 in silence
            "params.yaml: train: set twice, at lines 1 and 3; the second would silently replace the first; keep one",
        ),
        (
            b"data:\n  url: example.com/flowers/\n",
            'data.url: expected an http:// or https:// URL, or null, got "example.com/flowers/"',
        ),
    ],
)
def test_odd_params_files_are_one_line(tmp_path: Path, text: bytes, message: str) -> None:
    (tmp_path / "params.yaml").write_bytes(text)
    one_line_error(invoke("train", cwd=tmp_path), message)


@pytest.mark.slow
def test_compare_given_results_of_the_wrong_shape_is_one_line(project: Path) -> None:
    (project / "runs" / "linear" / "seed0" / "eval.json").write_text("{}\n")
    (project / "runs" / "linear" / "seed0" / "samples").mkdir()
    (project / "runs" / "linear" / "seed0" / "samples" / "grid.png").write_bytes(b"")
    result = invoke("compare", "linear", "--set", "tracking.enabled=false", cwd=project)
    one_line_error(result, f"{Path('runs/linear/seed0/eval.json')}: not the scores `ddpm evaluate` writes", "evaluate")


@pytest.mark.parametrize(
    "args",
    [
        ["download", "--source", "cifar10", "--set", "data.url=http://127.0.0.1:9/"],
        ["prepare", "--source", "synthetic", "--set", "data.synthetic_count=4", "--set", "data.holdout=0"],
        ["train"],
        ["sample"],
        ["evaluate", "--samples", "data/prepared/images.npy"],
        ["sweep"],
        ["compare", "linear"],
        pytest.param(["schedules"], marks=pytest.mark.slow),  # draws its pictures first: 3 s
    ],
    ids=lambda args: args[0],
)
def test_an_output_folder_under_a_regular_file_is_one_line(project: Path, args: list[str]) -> None:
    (project / "afile").write_text("in the way\n")
    out = "afile/sub/out.json" if args[0] in ("evaluate", "sweep") else "afile/sub"  # a file for these two
    result = invoke(*args, "--out", out, "--set", "tracking.enabled=false", cwd=project)
    assert one_line_error(result) == (  # was NotADirectoryError or FileExistsError, unhandled
        f"ddpm: error: {Path('afile/sub')}: cannot create the folder: afile is a file, not a folder"
    )
    assert (project / "afile").read_text() == "in the way\n"


EXPECTED_IMAGES = "expected a .npy file of uint8 images shaped (N, 3, H, W)"


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("empty", f"empty (0 bytes); {EXPECTED_IMAGES}"),  # numpy's EOFError was click's "Aborted!"
        ("pickled", f"not a .npy file; {EXPECTED_IMAGES}"),  # numpy said to unpickle it "if you trust the file"
        ("object array", f"holds Python objects, never loaded (unpickling them could run code); {EXPECTED_IMAGES}"),
    ],
)
def test_a_npy_file_that_is_empty_or_holds_objects_is_one_line_naming_it(project: Path, kind: str, said: str) -> None:
    bad = project / "bad.npy"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "pickled":
        bad.write_bytes(pickle.dumps([1, 2]))
    else:
        np.save(bad, np.array([1, "a"], dtype=object), allow_pickle=True)
    likelihood = ["--samples", "data/prepared/images.npy", "--checkpoint", "runs/linear/seed0/model.pt"]
    for args in (
        ["train", "--data", "bad.npy"],
        ["evaluate", "--samples", "bad.npy"],
        ["evaluate", *likelihood, "--holdout", "bad.npy", "--set", "evaluate.nll_images=2"],
    ):
        result = invoke(*args, "--set", "tracking.enabled=false", cwd=project)
        assert one_line_error(result) == f"ddpm: error: bad.npy: {said}", args
        assert "allow_pickle" not in result.stderr and "trust" not in result.stderr  # never advise unpickling
    assert not (project / "runs" / "linear" / "seed0" / "eval.json").exists()


def test_prepare_scales_16_bit_images_and_skips_bombs_unopened(tmp_path: Path) -> None:
    from ddpm.config import DataConfig
    from ddpm.data import prepare

    (tmp_path / "images").mkdir()
    wide = np.zeros((32, 64), np.uint16)
    wide[:16], wide[16:] = 65535, 32896  # white over the middle grey, in 16 bits
    Image.fromarray(wide).save(tmp_path / "images" / "sixteen.png")
    Image.new("RGB", (300, 200)).save(tmp_path / "images" / "huge.png")
    cfg = DataConfig(source="folder", folder=str(tmp_path / "images"), image_size=16, max_pixels=50_000, holdout=0)
    manifest = prepare(cfg, tmp_path, tmp_path / "out", workers=1, progress=False)
    assert manifest["skipped"] == [{"file": "huge.png", "reason": "300×200 pixels, over data.max_pixels (50000): "
                                                                  "a decompression bomb?"}]  # fmt: skip
    [image] = np.load(tmp_path / "out" / "images.npy")
    assert image[:, 0].min() == 255 and abs(int(image[0, 14, 8]) - 128) <= 1  # scaled, not clipped to 255


def test_training_refuses_images_that_no_longer_match_their_manifest(tmp_path: Path) -> None:
    assert invoke("prepare", "--source", "synthetic", "--image-size", "16", "--set", "data.synthetic_count=8",
                  "--set", "data.holdout=0", cwd=tmp_path).exit_code == 0  # fmt: skip
    images = tmp_path / "data" / "prepared" / "images.npy"
    save_images(images, synthetic_flowers(8, 16, seed=9))  # replaced behind the manifest's back
    write_params(tmp_path, tracking={"enabled": False})
    one_line_error(invoke("train", cwd=tmp_path), "images.npy does not match", "run `ddpm prepare` again")
    assert json.loads((tmp_path / "data" / "prepared" / "manifest.json").read_text())["count"] == 8


# --- where scores go, and outputs that belong together -----------------------------------------------


def sampled(project: Path, **settings: object) -> Path:
    """`sample` of the project's model into its samples folder (in this process, no MLflow): that folder."""
    from ddpm.sample import sample

    folder = project / "runs" / "linear" / "seed0"
    sample(tiny_config(sample=settings).sample, folder / "model.pt", folder / "samples", CPU, progress=False)
    return folder / "samples"


def rewrite_json(path: Path, change: "callable") -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def test_evaluate_writes_where_its_arguments_say_never_where_samples_json_points(project: Path) -> None:
    samples = sampled(project)
    cosine = project / "runs" / "cosine" / "seed0"
    cosine.mkdir(parents=True)
    shutil.copy(project / "runs" / "linear" / "seed0" / "model.pt", cosine / "model.pt")
    (cosine / "eval.json").write_text('{"fid_randconv": 1.0}\n')
    elsewhere = {"run_dir": str(cosine), "checkpoint": str(cosine / "model.pt")}
    rewrite_json(samples / "samples.json", lambda o: o | elsewhere)
    result = invoke("evaluate", "--beta-schedule", "linear", "--set", "tracking.enabled=false", cwd=project)
    linear = Path("runs/linear/seed0")
    assert one_line_error(result) == (
        f"ddpm: error: {linear / 'samples' / 'samples.json'}: says {cosine / 'model.pt'} drew these samples, but "
        f"their scores would go to {linear / 'eval.json'}, beside another model ({linear / 'model.pt'}); draw that "
        f"model's samples (`ddpm sample --checkpoint {linear / 'model.pt'}`), or give --out"
    )
    assert (cosine / "eval.json").read_text() == '{"fid_randconv": 1.0}\n'  # cosine's scores, untouched
    assert not (project / linear / "eval.json").exists()
    # the model named on the command line must be the one samples.json names, too
    own = {"run_dir": str(project / linear), "checkpoint": str(project / linear / "model.pt")}
    rewrite_json(samples / "samples.json", lambda o: o | own)
    other = invoke("evaluate", "--checkpoint", str(cosine / "model.pt"), "--set", "tracking.enabled=false", cwd=project)
    assert one_line_error(other) == (
        f"ddpm: error: --checkpoint {cosine / 'model.pt'}: {linear / 'samples' / 'samples.json'} says "
        f"{project / linear / 'model.pt'} drew these samples; give that checkpoint, or leave --checkpoint out"
    )
    assert (cosine / "eval.json").read_text() == '{"fid_randconv": 1.0}\n'


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda o: {k: v for k, v in o.items() if k != "run_dir"}, "missing run_dir"),
        (lambda o: o | {"checkpoint": 7}, "checkpoint is 7, expected a string"),
        (lambda o: o | {"sample": "ddpm"}, 'sample is "ddpm", expected a mapping'),
        (lambda o: [o], "expected a mapping"),
    ],
)
def test_a_samples_json_not_as_sample_writes_it_is_one_line(project: Path, change: "callable", expected: str) -> None:
    samples = sampled(project)
    rewrite_json(samples / "samples.json", change)
    result = invoke("evaluate", "--set", "tracking.enabled=false", cwd=project)
    line = one_line_error(result, f"{Path('runs/linear/seed0/samples/samples.json')}: not what `ddpm sample` writes (")
    assert line.endswith(f"{expected}); run `ddpm sample` again")
    assert not (project / "runs" / "linear" / "seed0" / "eval.json").exists()


def test_samples_interrupted_between_two_renames_are_refused(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = sampled(project)  # 4 DDIM samples
    real, renamed = os.replace, []

    def replace(source: object, target: object) -> None:  # the process dies after the first rename of a set
        if renamed:
            raise KeyboardInterrupt
        renamed.append(target)
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        sampled(project, num_samples=8, batch_size=8, seed=1)
    monkeypatch.undo()
    result = invoke("evaluate", "--set", "tracking.enabled=false", cwd=project)
    model = Path(json.loads((samples / "samples.json").read_text())["checkpoint"])
    assert one_line_error(result) == (
        f"ddpm: error: {Path('runs/linear/seed0/samples/samples.npy')}: not the samples "
        f"{Path('runs/linear/seed0/samples/samples.json')} describes (another sha256: an interrupted `ddpm sample`); "
        f"run `ddpm sample --checkpoint {model} --out {Path('runs/linear/seed0/samples')}` again"
    )
    assert not (project / "runs" / "linear" / "seed0" / "eval.json").exists()


def no_space_for(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Writing the content of an output called `name` (its temporary file) finds the disk full."""
    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if self.name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_a_full_disk_while_sampling_keeps_the_previous_set_whole(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = sampled(project)
    files = lambda: {p.name: (p.stat().st_ino, p.read_bytes()) for p in samples.glob("[!.]*")}  # noqa: E731
    before = files()
    no_space_for(monkeypatch, "grid.png")  # a picture, written after samples.npy
    result = invoke("sample", "--set", "sample.seed=1", "--set", "tracking.enabled=false", cwd=project)
    one_line_error(result, "grid.png: cannot write it, the disk is full (")
    assert files() == before and len(before) == 5


def test_a_full_disk_while_evaluating_keeps_the_terms_and_scores_together(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampled(project)
    folder = project / "runs" / "linear" / "seed0"
    before = {"eval.json": b'{"fid_randconv": 1.0}\n', "nll_terms.csv": b"t,bpd\n"}  # scores without a likelihood
    for name, content in before.items():
        (folder / name).write_bytes(content)
    save_images(project / "held.npy", synthetic_flowers(2, 16, seed=3))
    no_space_for(monkeypatch, "eval.json")  # written after nll_terms.csv
    args = ["--set", "evaluate.nll_images=2", "--holdout", "held.npy", "--set", "tracking.enabled=false"]
    one_line_error(invoke("evaluate", *args, cwd=project), "eval.json: cannot write it, the disk is full (")
    assert {name: (folder / name).read_bytes() for name in before} == before  # not the new terms
    assert not (folder / "resamples.npz").exists()  # nor each image's bound


def test_samples_from_before_their_digests_are_checked_by_count_and_noted(project: Path) -> None:
    samples = sampled(project)
    rewrite_json(samples / "samples.json", lambda o: {k: v for k, v in o.items() if k != "sha256"})
    accepted = invoke("evaluate", "--set", "tracking.enabled=false", cwd=project)
    assert accepted.exit_code == 0, accepted.stderr
    origin = Path("runs/linear/seed0/samples/samples.json")
    assert (
        f"ddpm: note: {origin} records no sha256 of samples.npy (written before ddpm did); the samples are checked "
        "by their count and size only" in accepted.stderr
    )
    rewrite_json(samples / "samples.json", lambda o: o | {"sample": o["sample"] | {"num_samples": 256}})
    assert one_line_error(invoke("evaluate", "--set", "tracking.enabled=false", cwd=project)) == (
        f"ddpm: error: {Path('runs/linear/seed0/samples/samples.npy')}: not the samples {origin} describes "
        f"(4 images of 16×16, not 256 of 16×16: an interrupted `ddpm sample`); run `ddpm sample --checkpoint "
        f"{json.loads((samples / 'samples.json').read_text())['checkpoint']} --out {origin.parent}` again"
    )


# --- sweep's inputs ----------------------------------------------------------------------------------


def test_sweep_refuses_counts_without_a_covariance_and_bad_real_images_before_mlflow(project: Path) -> None:
    missing = invoke("sweep", "--data", "nope.npy", cwd=project)
    assert one_line_error(missing) == (
        "ddpm: error: nope.npy: not found; expected a .npy file of uint8 images shaped (N, 3, H, W)"
    )
    save_images(project / "big.npy", synthetic_flowers(4, 32))
    assert one_line_error(invoke("sweep", "--data", "big.npy", cwd=project)) == (
        f"ddpm: error: big.npy: real images are 32×32, but the model ({Path('runs/linear/seed0/model.pt')}) makes "
        "16×16; give the images it was trained on (--data)"
    )
    one = invoke("sweep", "--set", "sweep.num_samples=1", "--set", "sweep.steps=[5]", cwd=project)
    assert one_line_error(one) == (
        "ddpm: error: sweep.num_samples: 1 image per step count gives FID no covariance; expected at least 2"
    )
    assert not (project / "mlflow.db").exists() and not (project / "runs" / "linear" / "seed0" / "sweep.json").exists()
