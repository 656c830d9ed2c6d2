"""ddpm.outbox with a client of the test's own and a clock that only moves when told: the order of the
writes, what is kept and what is dropped, the retry timing, the pending file and its replay, and runs
made while the store is away."""

import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_store

import ddpm.outbox
from ddpm.outbox import RETRY_KEPT_AFTER, WRITE_ATTEMPTS, Outbox


class StoreError(Exception):
    """What an MLflow store raises, with its error code."""

    def __init__(self, code: str) -> None:
        super().__init__(f"the store says {code}\nand more")
        self.error_code = code


AWAY = StoreError("TEMPORARILY_UNAVAILABLE")
REFUSED = StoreError("INVALID_PARAMETER_VALUE")
RUN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # an MLflow run id


class Client:
    """Records each call it answers, whatever its name; raises `error` while it is set (and `refuse` for
    the operations named there). `new_run`, `checkpoint_run` and `child_run` make runs: run-1, run-2 ..."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.tries = 0
        self.error: Exception | None = None
        self.refuse: set[str] = set()
        self.runs = 0

    def _answer(self, operation: str, *args: object) -> str | None:
        self.tries += 1
        if operation in self.refuse:
            raise REFUSED
        if self.error:
            raise self.error
        self.calls.append((operation, *args))
        if operation in ("new_run", "checkpoint_run", "child_run"):
            self.runs += 1
            return f"run-{self.runs}"
        return None

    def __getattr__(self, operation: str):  # noqa: ANN204
        return lambda *args: self._answer(operation, *args)


class Clock:
    """time.monotonic, time.sleep and time.time of a clock that moves only when slept or told to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ddpm.outbox, "time", clock)
    return clock


@pytest.fixture
def client() -> Client:
    return Client()


def test_writes_go_out_in_order_and_wait_behind_one_that_failed(client: Client, clock: Clock) -> None:
    outbox = Outbox(client)
    outbox.send("write", 1)
    client.error = AWAY
    outbox.send("write", 2)
    client.error = None
    outbox.send("write", 3)  # the store is back, but 2 is not due for another try yet: 3 waits behind it
    assert client.calls == [("write", 1)] and len(outbox.kept) == 2
    clock.now += RETRY_KEPT_AFTER
    outbox.send("write", 4)
    assert client.calls == [("write", 1), ("write", 2), ("write", 3), ("write", 4)] and not outbox.kept


def test_a_write_is_tried_three_times_with_backoff_then_kept_and_retried_once_a_minute(
    client: Client, clock: Clock, capsys: pytest.CaptureFixture
) -> None:
    outbox = Outbox(client)
    client.error = OSError("connection refused")  # a network error passes too
    outbox.send("write", 1)
    assert client.tries == WRITE_ATTEMPTS and clock.slept == [1.0, 2.0]
    assert capsys.readouterr().err == (
        "ddpm: warning: MLflow write failed (connection refused); the work goes on, and what cannot be logged is "
        "kept and sent later\n"
    )
    outbox.send("write", 2)
    clock.now += RETRY_KEPT_AFTER - 1
    outbox.send("write", 3)
    assert client.tries == WRITE_ATTEMPTS  # no try before the minute is up: an absent store costs the work nothing
    clock.now += 1
    outbox.send("write", 4)
    assert client.tries == WRITE_ATTEMPTS + 1 and clock.slept == [1.0, 2.0]  # the kept ones: one try each time
    assert len(outbox.kept) == 4 and capsys.readouterr().err == ""  # warned once


def test_a_refused_write_is_dropped_with_one_warning_and_the_rest_go_on(
    client: Client, clock: Clock, capsys: pytest.CaptureFixture
) -> None:
    outbox = Outbox(client)
    client.error = REFUSED
    outbox.send("write", 1)
    outbox.send("write", 2)
    assert client.tries == 2 and clock.slept == []  # refused at once: no retry
    client.error = None
    outbox.send("write", 3)
    assert client.calls == [("write", 3)] and outbox.dropped == 2 and not outbox.kept
    outbox.close(None)
    assert capsys.readouterr().err.splitlines() == [
        "ddpm: warning: MLflow refused a write (the store says INVALID_PARAMETER_VALUE); it is lost, the work goes on",
        "ddpm: warning: all MLflow writes made it after a retry; 2 writes the store refused are lost",
    ]


def test_close_keeps_what_could_not_be_sent_and_the_next_replay_sends_it_in_order(
    client: Client, clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    outbox = Outbox(client)
    outbox.send("set_tags", RUN, {"stage": "first"})
    client.error = AWAY
    metrics = {"fid": 1.5, "nan": float("nan"), "inf": float("inf")}
    outbox.send("log_metrics", RUN, metrics, 3, 1_700_000_000_000)
    outbox.send("set_terminated", RUN, "FINISHED")
    outbox.close(tmp_path)
    pending = tmp_path / "mlflow-pending.jsonl"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ddpm: warning: 2 MLflow writes could not be made; kept in {pending}, for the next ddpm command there to send"
    )
    assert len(pending.read_text().splitlines()) == 2 and list(tmp_path.iterdir()) == [pending]  # no temporary file

    later = Client()
    outbox = Outbox(later)
    outbox.replay(tmp_path)
    outbox.send("set_tags", RUN, {"stage": "fourth"})  # this command's own writes go after the kept ones
    [(_, _, sent, *rest), third, fourth] = later.calls
    assert rest == [3, 1_700_000_000_000] and third == ("set_terminated", RUN, "FINISHED")
    assert fourth == ("set_tags", RUN, {"stage": "fourth"})
    assert np.isnan(sent.pop("nan")) and sent == {"fid": 1.5, "inf": float("inf")}
    assert not pending.exists()
    assert capsys.readouterr().err == f"ddpm: note: sent 2 MLflow writes an earlier command had kept in {pending}\n"
    outbox.close(tmp_path)
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().err == ""


def test_a_replay_that_cannot_send_leaves_one_copy_of_each_write(client: Client, clock: Clock, tmp_path: Path) -> None:
    outbox = Outbox(client)
    client.error = AWAY
    outbox.send("set_tags", RUN, {"n": "1"})
    outbox.close(tmp_path)
    again = Outbox(client)
    again.replay(tmp_path)  # still away
    again.send("set_tags", RUN, {"n": "2"})
    again.close(tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "mlflow-pending.jsonl").read_text().splitlines()]
    assert [line["args"] for line in lines] == [[RUN, {"n": "1"}], [RUN, {"n": "2"}]]


def test_pictures_wait_beside_the_pending_file_and_go_once_sent(client: Client, clock: Clock, tmp_path: Path) -> None:
    picture = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    outbox = Outbox(client)
    client.error = AWAY
    outbox.send("log_image", RUN, picture, "samples", 10)
    outbox.close(tmp_path)
    [saved] = [p for p in tmp_path.iterdir() if p.suffix == ".npy"]
    client.error = None
    later = Outbox(client)
    later.replay(tmp_path)
    [(_, run, sent, key, step)] = client.calls
    assert sent.dtype == np.uint8 and np.array_equal(sent, picture) and (run, key, step) == (RUN, "samples", 10)
    assert not saved.exists() and list(tmp_path.iterdir()) == []


def test_a_run_made_while_the_store_is_away_is_made_by_the_next_command_and_its_writes_follow(
    client: Client, clock: Clock, tmp_path: Path
) -> None:
    outbox = Outbox(client)
    client.error = AWAY
    run = outbox.run_from("new_run", "evaluation", {"kind": "compare"})
    run.send("set_tags", {"fid": "1.5"})
    assert run.id.startswith("pending:")
    outbox.close(tmp_path)
    client.error = None
    client.runs = 41
    later = Outbox(client)
    later.replay(tmp_path)
    assert client.calls == [("new_run", "evaluation", {"kind": "compare"}), ("set_tags", "run-42", {"fid": "1.5"})]


def test_a_run_made_in_this_command_is_named_by_its_id_in_the_pending_file(
    client: Client, clock: Clock, tmp_path: Path
) -> None:
    outbox = Outbox(client)
    run = outbox.run_from("new_run", "evaluation", {})
    assert run.id == "run-1"
    client.error = AWAY
    run.send("set_tags", {"fid": "1.5"})
    outbox.close(tmp_path)
    client.error = None
    Outbox(client).replay(tmp_path)
    assert client.calls[-1] == ("set_tags", "run-1", {"fid": "1.5"})


def test_the_writes_of_a_run_the_store_refused_to_make_are_dropped_unsent(client: Client, clock: Clock) -> None:
    outbox = Outbox(client)
    client.refuse = {"new_run"}
    run = outbox.run_from("new_run", "evaluation")
    run.send("write", "scores")
    outbox.send("write", "other")
    assert client.calls == [("write", "other")] and outbox.dropped == 2


# --- a pending file someone else wrote: only ddpm's own writes, with arguments of their kinds, are sent ----

GOOD = json.dumps({"operation": "set_tags", "args": [RUN, {"a": "b"}]})
UNMADE = "pending:" + "0" * 32
WRITES = 'an object of "operation", "args" and, where needed, "gives" and "pictures"'
UPLOAD = "a file that ddpm uploads, inside {folder}"
PICTURE = "a picture saved beside the pending file"
BLACK = np.zeros((2, 3, 3), np.uint8)
SAVED = f".mlflow-pending-{hashlib.sha256(BLACK.tobytes()).hexdigest()[:12]}.npy"  # BLACK, as the outbox saves it


def line(operation: object, *args: object, **more: object) -> str:
    return json.dumps({"operation": operation, "args": list(args), **more})


HOSTILE = {  # a line → why it is skipped ({folder}: the run folder, {outside}: a folder beside it)
    "delete everything": "not JSON (Expecting value)",
    '["set_tags", "x"]': f"not a write: expected {WRITES}",
    line("set_tags", RUN, {}, run="x"): f"not a write: expected {WRITES}",
    json.dumps({"operation": "set_tags", "args": RUN}): f"not a write: expected {WRITES}",
    line("delete_experiment", "1"): "'delete_experiment' is not an MLflow write that ddpm makes",
    line("__setattr__", "experiment_id", "0"): "'__setattr__' is not an MLflow write that ddpm makes",
    line("log_artifacts", RUN, "/", None): "'log_artifacts' is not an MLflow write that ddpm makes",
    line("set_tags", RUN): "set_tags takes 2 arguments, not 1",
    line("set_tags", "../../x", {}): "set_tags: argument 1 is not a run id or a run made by an earlier line: '../../x'",
    line("set_tags", UNMADE, {}): f"set_tags: argument 1 is not a run id or a run made by an earlier line: '{UNMADE}'",
    line("set_tags", RUN, {"a": 1}): "set_tags: argument 2 is not an object of strings: {'a': 1}",
    line("log_metrics", RUN, {"fid": "1"}, 0, 0): "log_metrics: argument 2 is not an object of numbers: {'fid': '1'}",
    line("log_metrics", RUN, {"fid": 1.0}, True, 0): "log_metrics: argument 3 is not an integer: True",
    line("set_terminated", RUN, "DELETED"): "set_terminated: argument 2 is not FINISHED, KILLED or FAILED: 'DELETED'",
    line("set_tags", RUN, {}, gives=UNMADE): 'set_tags makes no run: "gives" must be null',
    line("new_run", "x", {}, gives=RUN): f"new_run: \"gives\" is not a new placeholder: '{RUN}'",
    line("log_artifact", RUN, "/etc/passwd", None): f"log_artifact: argument 2 is not {UPLOAD}: '/etc/passwd'",
    line("log_artifact", RUN, "../outside/grid.png", None): f"log_artifact: argument 2 is not {UPLOAD}: "
    "'../outside/grid.png'",
    line("log_artifact", RUN, "secret.txt", None): f"log_artifact: argument 2 is not {UPLOAD}: 'secret.txt'",
    line("log_artifact", RUN, "link/grid.png", None): f"log_artifact: argument 2 is not {UPLOAD}: 'link/grid.png'",
    line("log_artifact", RUN, "grid.png", "../../x"): "log_artifact: argument 3 is not a plain name or null: '../../x'",
    line("record_run", "{outside}/params.yaml", RUN): "record_run: argument 1 is not an mlflow_eval_run.json "
    "waiting for its run's id: '{outside}/params.yaml'",
    line("record_run", "{outside}/mlflow_eval_run.json", RUN): "record_run: argument 1 is not an mlflow_eval_run.json "
    "waiting for its run's id: '{outside}/mlflow_eval_run.json'",
    line("record_run", "mlflow_eval_run.json", RUN): "record_run: argument 1 is not an mlflow_eval_run.json "
    "waiting for its run's id: 'mlflow_eval_run.json'",
    line("record_run", "{outside}/fifo/mlflow_eval_run.json", RUN): "record_run: argument 1 is not an "
    "mlflow_eval_run.json waiting for its run's id: '{outside}/fifo/mlflow_eval_run.json'",
    line("log_image", RUN, None, "samples", 1): f"log_image: argument 2 is not {PICTURE}: None",
    line("log_image", RUN, None, "samples", 1, pictures={"1": "../images.npy"}): f"log_image: argument 2 is not "
    f"{PICTURE}: '../images.npy'",
    line("log_image", RUN, None, "samples", 1, pictures={"1": ".mlflow-pending-000000000000.npy"}): "log_image: "
    f"argument 2 is not {PICTURE}: '.mlflow-pending-000000000000.npy'",
    line("log_image", RUN, None, "../x", 1, pictures={"1": SAVED}): "log_image: argument 3 is not a plain name: '../x'",
    line("log_image", RUN, None, "samples", 1, pictures={"1": ".mlflow-pending-111111111111.npy"}): "log_image: "
    f"argument 2 is not {PICTURE}: '.mlflow-pending-111111111111.npy'",
}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder and a folder beside it, with the files hostile lines aim at."""
    folder, outside = tmp_path / "run", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    for name in ("grid.png", "params.yaml", "secret.txt"):
        (outside / name).write_text(f"the user's {name}")
    (folder / "mlflow_eval_run.json").write_text('{"run_id": "abc"}')  # a record that has its run already
    (folder / "secret.txt").write_text("not an artifact of ddpm's")
    (folder / "grid.png").write_text("a picture ddpm drew")
    (folder / "link").symlink_to(outside)
    np.save(tmp_path / "images.npy", np.zeros((2, 3, 3), np.uint8))
    np.save(folder / ".mlflow-pending-000000000000.npy", np.zeros((2, 3, 3), np.uint8))  # not that digest
    np.save(folder / SAVED, BLACK)
    os.mkfifo(folder / ".mlflow-pending-111111111111.npy")  # reading it would wait for ever
    (outside / "fifo").mkdir()
    os.mkfifo(outside / "fifo" / "mlflow_eval_run.json")
    return folder, outside


@pytest.mark.parametrize("hostile", HOSTILE, ids=[reason.split(" (")[0][:40] for reason in HOSTILE.values()])
def test_a_line_that_is_not_a_write_ddpm_makes_is_skipped_with_one_warning_and_the_rest_are_sent(
    hostile: str, planted: tuple[Path, Path], client: Client, clock: Clock, capsys: pytest.CaptureFixture
) -> None:
    folder, outside = planted
    before = {p: p.read_bytes() for p in folder.parent.rglob("*") if p.is_file()}
    other = json.dumps({"operation": "set_tags", "args": [RUN, {"a": "c"}]})
    pending = folder / "mlflow-pending.jsonl"
    pending.write_text(f"{GOOD}\n{hostile.replace('{outside}', str(outside))}\n\n{other}\n")
    Outbox(client).replay(folder)
    reason = HOSTILE[hostile].replace("{folder}", str(folder)).replace("{outside}", str(outside))
    assert capsys.readouterr().err.splitlines() == [
        f"ddpm: warning: {pending}:2: {reason}; the line is skipped",
        f"ddpm: note: sent 2 MLflow writes an earlier command had kept in {pending}",
    ]
    assert client.calls == [("set_tags", RUN, {"a": "b"}), ("set_tags", RUN, {"a": "c"})]
    assert not pending.exists() and {p: p.read_bytes() for p in before} == before  # nothing else deleted or changed


def test_a_line_cut_short_at_the_end_is_skipped_with_one_warning(
    client: Client, clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pending = tmp_path / "mlflow-pending.jsonl"
    pending.write_text(f"{GOOD}\n{GOOD[:30]}")
    Outbox(client).replay(tmp_path)
    assert capsys.readouterr().err.splitlines() == [
        f"ddpm: warning: {pending}:2: not JSON (Unterminated string starting at); the line is skipped",
        f"ddpm: note: sent 1 MLflow writes an earlier command had kept in {pending}",
    ]
    assert client.calls == [("set_tags", RUN, {"a": "b"})] and not pending.exists()


def test_a_pending_file_of_hostile_lines_alone_is_removed_after_one_warning_each(
    client: Client, clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pending = tmp_path / "mlflow-pending.jsonl"
    pending.write_text(line("delete_experiment", "1") + "\n" + line("delete_experiment", "0") + "\n")
    Outbox(client).replay(tmp_path)
    Outbox(client).replay(tmp_path)  # the next command says nothing more
    assert capsys.readouterr().err.splitlines() == [
        f"ddpm: warning: {pending}:{n}: 'delete_experiment' is not an MLflow write that ddpm makes; the line is skipped"
        for n in (1, 2)
    ]
    assert client.calls == [] and not pending.exists()


def test_uploads_wait_as_paths_inside_the_run_folder_and_files_from_outside_as_copies(
    client: Client, clock: Clock, planted: tuple[Path, Path]
) -> None:
    folder, outside = planted
    copied = (outside / "grid.png").read_bytes()
    outbox = Outbox(client)
    run = ddpm.outbox.Run(outbox, RUN)
    client.error = AWAY
    run.log_artifacts([outside / "grid.png", folder / "grid.png"], "samples")
    outbox.close(folder)
    (outside / "grid.png").unlink()  # the --out folder of `ddpm sample` goes before the store is back
    pending = folder / "mlflow-pending.jsonl"
    assert [json.loads(kept)["args"][1] for kept in pending.read_text().splitlines()] == [
        f".mlflow-pending-{hashlib.sha256(copied).hexdigest()[:12]}/grid.png",
        "grid.png",
    ]
    client.error = None
    Outbox(client).replay(folder)
    [(_, _, copy, into), (_, _, inside, _)] = client.calls
    assert Path(copy).name == "grid.png" and Path(copy).parent.parent == folder and into == "samples"
    assert inside == str(folder / "grid.png")
    planted_names = {".mlflow-pending-000000000000.npy", ".mlflow-pending-111111111111.npy", SAVED, "grid.png", "link",
                     "mlflow_eval_run.json", "secret.txt"}  # fmt: skip
    assert {p.name for p in folder.iterdir()} == planted_names  # the copy went once sent


def test_an_eval_run_record_waiting_for_its_run_may_lie_outside_the_run_folder(
    client: Client, clock: Clock, planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, outside = planted
    monkeypatch.chdir(folder.parent)  # the project: `ddpm evaluate --out outside/eval.json` ran here
    record = outside / "mlflow_eval_run.json"
    record.write_text('{"run_id": null}\n')  # what `ddpm evaluate --out` writes before its run is made
    outbox = Outbox(client)
    client.error = AWAY
    outbox.send("record_run", str(record), RUN)
    outbox.close(folder)
    client.error = None
    Outbox(client).replay(folder)
    assert client.calls == [("record_run", str(record), RUN)]


@pytest.mark.parametrize("named", ["absolute", "relative"])
def test_a_waiting_record_outside_the_working_folder_is_never_written(
    client: Client,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    named: str,
) -> None:
    """Found by the hostile re-campaign: a planted record_run line filled a waiting record anywhere."""
    project, victim = tmp_path / "project", tmp_path / "elsewhere" / "mlflow_eval_run.json"
    folder = project / "runs" / "linear" / "seed0"
    folder.mkdir(parents=True)
    victim.parent.mkdir()
    victim.write_text('{"run_id": null}\n')
    monkeypatch.chdir(project)
    value = str(victim) if named == "absolute" else "../../../../elsewhere/mlflow_eval_run.json"
    pending = folder / "mlflow-pending.jsonl"
    pending.write_text(json.dumps({"operation": "record_run", "args": [value, RUN]}) + "\n")
    Outbox(client).replay(folder)
    assert capsys.readouterr().err.splitlines() == [
        f"ddpm: warning: {pending}:1: record_run: argument 1 is not an mlflow_eval_run.json waiting for its run's "
        f"id: {value!r}; the line is skipped"
    ]
    assert client.calls == [] and victim.read_text() == '{"run_id": null}\n'


def test_a_kill_while_the_pending_file_is_rewritten_leaves_the_old_one_and_its_pictures_whole(
    client: Client, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    outbox = Outbox(client)
    client.error = AWAY
    outbox.send("log_image", RUN, picture, "samples", 10)
    outbox.close(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    again = Outbox(client)
    again.replay(tmp_path)  # still away: the same picture is saved again at close

    def killed(file, array, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        (file if hasattr(file, "write") else open(file, "wb")).write(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", killed)
    with pytest.raises(KeyboardInterrupt):
        again.close(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # no half file, no temporary one


def test_the_writes_a_pending_file_may_hold_are_the_operations_ddpm_sends() -> None:
    from ddpm.outbox import Operations
    from ddpm.pending import OPERATIONS

    sent = {name for name in vars(Operations) if not name.startswith("_")} - {"model_run"}  # that one is direct
    assert sent == OPERATIONS.keys()
    for name, (kinds, _) in OPERATIONS.items():
        parameters = list(inspect.signature(getattr(Operations, name)).parameters)[1:]
        assert len(parameters) == len(kinds), name


def test_an_upload_an_older_ddpm_kept_by_its_absolute_path_inside_the_run_folder_is_sent(
    client: Client, clock: Clock, planted: tuple[Path, Path]
) -> None:
    folder, _ = planted
    (folder / "mlflow-pending.jsonl").write_text(line("log_artifact", RUN, str(folder / "grid.png"), "samples") + "\n")
    Outbox(client).replay(folder)
    assert client.calls == [("log_artifact", RUN, str(folder / "grid.png"), "samples")]


# --- a real store -----------------------------------------------------------------------------------


def test_a_planted_pending_file_deletes_overwrites_and_uploads_nothing_in_a_real_store(
    tmp_path: Path, empty_store: Path, capsys: pytest.CaptureFixture
) -> None:
    import mlflow

    from ddpm.config import TrackingConfig
    from ddpm.tracking import open_store

    copy_store(empty_store, tmp_path)
    uri = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient(uri.uri)
    experiment = open_store(uri).experiment_id
    run = client.create_run(experiment).info.run_id
    folder = tmp_path / "runs" / "linear" / "seed0"
    folder.mkdir(parents=True)
    np.save(tmp_path / "images.npy", np.zeros((2, 3, 3), np.uint8))  # the training images, say
    (tmp_path / "params.yaml").write_text("train: {}\n")
    (tmp_path / "secret").write_text("a secret")
    victims = {path: path.read_bytes() for path in tmp_path.iterdir() if path.name != "mlflow.db" and path.is_file()}
    planted = [
        line("delete_experiment", experiment),
        line("__setattr__", "experiment_id", "0"),
        line("record_run", str(tmp_path / "params.yaml"), run),
        line("log_artifact", run, str(tmp_path / "secret"), None),
        line("log_image", run, None, "samples", 1, pictures={"1": "../../../images.npy"}),
        line("set_terminated", run, "FINISHED"),  # one of ddpm's own: sent
    ]
    pending = folder / "mlflow-pending.jsonl"
    pending.write_text("\n".join(planted) + "\n")
    capsys.readouterr()

    store = open_store(uri, folder)  # what `ddpm sample` and every stage do first
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("ddpm: warning:")]
    assert [w.removeprefix(f"ddpm: warning: {pending}:").split(":")[0] for w in warnings] == ["1", "2", "3", "4", "5"]
    assert client.get_experiment(experiment).lifecycle_stage == "active"
    assert store.operations.experiment_id == experiment  # this command's runs still go into its own experiment
    assert {path: path.read_bytes() for path in victims} == victims
    assert client.list_artifacts(run) == [] and client.get_run(run).info.status == "FINISHED"
    assert not pending.exists()
