"""Faults that would waste or kill a long GPU run, each reproduced: non-finite models, MLflow
outages and read-only or unreachable stores, two processes in one folder, full disks, damaged
checkpoints, signals at the end, and files that are not what they claim."""

import errno
import json
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
    assert f"ddpm: warning: 9 MLflow writes could not be made; kept in {pending.relative_to(project)}" in result.stderr
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


def full_disk_on(monkeypatch: pytest.MonkeyPatch, target: object, name: str, when: "callable" = lambda n: True) -> None:
    """`target.name` raises what a full disk raises (torch.save: its zip writer's RuntimeError)."""
    real, calls = getattr(target, name), [0]

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        if when(calls[0]):
            if target is torch:
                raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                                   "file data/0: file write failed")  # fmt: skip
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, full)


@pytest.mark.slow
def test_a_full_disk_during_training_keeps_the_previous_checkpoint_and_says_so_in_one_line(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_disk_on(monkeypatch, torch, "save", lambda n: n >= 2)  # the first checkpoint fits, the second does not
    result = invoke("train", "--beta-schedule", "cosine", "--set", "tracking.enabled=false", cwd=project)
    one_line_error(result, "step-00000020.pt: cannot write it, the disk is full (", "free in", "needed)")
    folder = project / "runs" / "cosine" / "seed0" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["step-00000010.pt"]  # whole, and nothing half-written beside it
    assert torch.load(folder / "step-00000010.pt", weights_only=True)["step"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sample", "evaluate", "prepare"])
def test_a_full_disk_in_the_other_stages_is_one_line(
    project: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    if command == "evaluate":
        assert invoke("sample", "--set", "tracking.enabled=false", cwd=project).exit_code == 0
    args = {"prepare": ["--source", "synthetic", "--set", "data.synthetic_count=8", "--set", "data.holdout=2"]}
    args = args.get(command, [])
    full_disk_on(monkeypatch, np, "save")  # the samples, the real images' features, the prepared images
    result = invoke(command, *args, "--set", "tracking.enabled=false", cwd=project)
    one_line_error(result, "cannot write it, the disk is full (")
    assert not list(project.rglob(".*.tmp*"))  # no half-written file left


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
