"""ddpm.outbox with a client of the test's own and a clock that only moves when told: the order of the
writes, what is kept and what is dropped, the retry timing, the pending file and its replay, and runs
made while the store is away."""

import json
from pathlib import Path

import numpy as np
import pytest

import ddpm.outbox
from ddpm.outbox import RETRY_KEPT_AFTER, WRITE_ATTEMPTS, Outbox


class StoreError(Exception):
    """What an MLflow store raises, with its error code."""

    def __init__(self, code: str) -> None:
        super().__init__(f"the store says {code}\nand more")
        self.error_code = code


AWAY = StoreError("TEMPORARILY_UNAVAILABLE")
REFUSED = StoreError("INVALID_PARAMETER_VALUE")


class Client:
    """Records each call it answers; raises `error` while it is set (and `refuse` for the operations named there)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.tries = 0
        self.error: Exception | None = None
        self.refuse: set[str] = set()
        self.runs = 0

    def _answer(self, operation: str, *args: object) -> None:
        self.tries += 1
        if operation in self.refuse:
            raise REFUSED
        if self.error:
            raise self.error
        self.calls.append((operation, *args))

    def write(self, *args: object) -> None:
        self._answer("write", *args)

    def new_run(self, name: str) -> str:
        self._answer("new_run", name)
        self.runs += 1
        return f"run-{self.runs}"


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
    outbox.send("write", "first")
    client.error = AWAY
    values = {"fid": 1.5, "nan": float("nan"), "counts": [1, 2], "none": None, "nested": {"a": "b"}}
    outbox.send("write", "second", values, 3, None)
    outbox.send("write", "third")
    outbox.close(tmp_path)
    pending = tmp_path / "mlflow-pending.jsonl"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ddpm: warning: 2 MLflow writes could not be made; kept in {pending}, for the next ddpm command there to send"
    )
    assert len(pending.read_text().splitlines()) == 2 and list(tmp_path.iterdir()) == [pending]  # no temporary file

    later = Client()
    outbox = Outbox(later)
    outbox.replay(tmp_path)
    outbox.send("write", "fourth")  # this command's own writes go after the kept ones
    [(_, _, sent, *rest), third, fourth] = later.calls
    assert rest == [3, None] and third == ("write", "third") and fourth == ("write", "fourth")
    assert np.isnan(sent.pop("nan")) and sent == {k: v for k, v in values.items() if k != "nan"}
    assert not pending.exists()
    assert capsys.readouterr().err == f"ddpm: note: sent 2 MLflow writes an earlier command had kept in {pending}\n"
    outbox.close(tmp_path)
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().err == ""


def test_a_replay_that_cannot_send_leaves_one_copy_of_each_write(client: Client, clock: Clock, tmp_path: Path) -> None:
    outbox = Outbox(client)
    client.error = AWAY
    outbox.send("write", 1)
    outbox.close(tmp_path)
    again = Outbox(client)
    again.replay(tmp_path)  # still away
    again.send("write", 2)
    again.close(tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "mlflow-pending.jsonl").read_text().splitlines()]
    assert [line["args"] for line in lines] == [[1], [2]]


def test_pictures_wait_beside_the_pending_file_and_go_once_sent(client: Client, clock: Clock, tmp_path: Path) -> None:
    picture = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    outbox = Outbox(client)
    client.error = AWAY
    outbox.send("write", picture, "samples", 10)
    outbox.close(tmp_path)
    [saved] = [p for p in tmp_path.iterdir() if p.suffix == ".npy"]
    client.error = None
    later = Outbox(client)
    later.replay(tmp_path)
    [(_, sent, key, step)] = client.calls
    assert sent.dtype == np.uint8 and np.array_equal(sent, picture) and (key, step) == ("samples", 10)
    assert not saved.exists() and list(tmp_path.iterdir()) == []


def test_a_run_made_while_the_store_is_away_is_made_by_the_next_command_and_its_writes_follow(
    client: Client, clock: Clock, tmp_path: Path
) -> None:
    outbox = Outbox(client)
    client.error = AWAY
    run = outbox.run_from("new_run", "evaluation")
    run.send("write", "scores")
    assert run.id.startswith("pending:")
    outbox.close(tmp_path)
    client.error = None
    client.runs = 41
    later = Outbox(client)
    later.replay(tmp_path)
    assert client.calls == [("new_run", "evaluation"), ("write", "run-42", "scores")]


def test_a_run_made_in_this_command_is_named_by_its_id_in_the_pending_file(
    client: Client, clock: Clock, tmp_path: Path
) -> None:
    outbox = Outbox(client)
    run = outbox.run_from("new_run", "evaluation")
    assert run.id == "run-1"
    client.error = AWAY
    run.send("write", "scores")
    outbox.close(tmp_path)
    client.error = None
    Outbox(client).replay(tmp_path)
    assert client.calls[-1] == ("write", "run-1", "scores")


def test_the_writes_of_a_run_the_store_refused_to_make_are_dropped_unsent(client: Client, clock: Clock) -> None:
    outbox = Outbox(client)
    client.refuse = {"new_run"}
    run = outbox.run_from("new_run", "evaluation")
    run.send("write", "scores")
    outbox.send("write", "other")
    assert client.calls == [("write", "other")] and outbox.dropped == 2
