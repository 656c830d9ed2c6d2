"""The MLflow server going away while a command works: a real `mlflow server`, killed with SIGKILL
once the command has opened and checked the store and begun its work. The command still ends well,
its outputs complete; what it could not log waits in the run folder, and the next command there, with
the server back on the same store, sends it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import DDPM, clean_environment, invoke, write_params

pytestmark = pytest.mark.slow

# A dead server is told at once (connection refused, no retries); a live but busy one is given time.
DEAD_AT_ONCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
KEPT = "MLflow writes could not be made; kept in"


class Server:
    """`mlflow server` on the SQLite store and artifact folder of `root`, on a port of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(Path(DDPM).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "mlartifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"],
            cwd=self.root, env=clean_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its group holds the uvicorn worker too, which SIGKILL must reach
        )  # fmt: skip

    def wait(self, timeout: float = 300) -> None:
        """Until the server answers (seconds on an idle machine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5):
                    return
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"mlflow server did not answer within {timeout} s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def servers(tmp_path: Path):  # noqa: ANN201
    """Two servers on one store: the second takes over when the first is killed."""
    servers = Server(tmp_path), Server(tmp_path)
    yield servers
    for server in servers:
        if server.running:
            server.kill()


@pytest.fixture
def project(tmp_path: Path, flowers16: Path, trained: Path) -> Path:
    """The tiny params, the prepared flowers and a copy of the session's model in runs/linear/seed0."""
    write_params(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    shutil.copy(flowers16, tmp_path / "data" / "prepared" / "images.npy")
    shutil.copytree(trained, tmp_path / "runs" / "linear" / "seed0")
    return tmp_path


def killing_the_server(server: Server, working: bytes, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`ddpm *args` against `server`, which is killed as soon as the command's stderr shows `working`
    (a progress bar of its work: the store was opened and checked before it)."""
    process = subprocess.Popen(
        [DDPM, *args, "--set", f"tracking.uri={server.url}"], cwd=cwd, env=clean_environment(**DEAD_AT_ONCE),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    stuck = threading.Timer(300, process.kill)
    stuck.start()
    stderr = b""
    while chunk := os.read(process.stderr.fileno(), 65536):
        stderr += chunk
        if working in stderr and server.running:
            server.kill()
    stdout = process.stdout.read()
    process.wait()
    stuck.cancel()
    assert working in stderr and not server.running, stderr.decode()  # killed during the work
    return subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(), stderr.decode())


def said_once_that_writes_wait(result: subprocess.CompletedProcess, folder: Path) -> None:
    """The command ended well, and one line of its stderr says where its MLflow writes wait."""
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if KEPT in line]
    assert len(lines) == 1 and str(folder / "mlflow-pending.jsonl") in lines[0], result.stderr


def test_a_server_killed_during_evaluate_and_sample_loses_neither_work_nor_metrics(
    project: Path, servers: tuple[Server, Server]
) -> None:
    import mlflow

    first, second = servers
    first.start()  # seconds: the samples are drawn meanwhile
    assert invoke("sample", "--set", "tracking.enabled=false", cwd=project).exit_code == 0
    first.wait()
    second.start()  # meanwhile too, for the command after the first is killed
    folder = Path("runs/linear/seed0")
    pending = project / folder / "mlflow-pending.jsonl"

    # bootstrap resamples that take a second or two after the progress bars, while the server is dead
    scored = killing_the_server(first, b"features", "evaluate", "--set", "evaluate.bootstrap=2000", cwd=project)
    said_once_that_writes_wait(scored, folder)
    assert {"eval.json", "nll_terms.csv"} <= {p.name for p in (project / folder).iterdir()}
    assert "fid_randconv" in json.loads((project / folder / "eval.json").read_text())
    assert "fid_randconv" in pending.read_text()  # the scores wait in the run folder
    eval_run = project / folder / "mlflow_eval_run.json"
    assert json.loads(eval_run.read_text()) == {"run_id": None}  # a DVC output, there, but with no id that is not one

    second.wait()  # the same store: the next command in the folder sends what evaluate kept
    sampled = killing_the_server(
        second, b"sample ddim", "sample", "--set", "sample.num_samples=32", "--set", "sample.steps=10",
        cwd=project,
    )  # fmt: skip
    assert "sent" in sampled.stderr and "an earlier command had kept" in sampled.stderr, sampled.stderr
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    recorded = json.loads(eval_run.read_text())["run_id"]  # written once the run was made
    assert "fid_randconv" in client.get_run(recorded).data.metrics
    said_once_that_writes_wait(sampled, folder)
    assert {"samples.npy", "grid.png"} <= {p.name for p in (project / folder / "samples").iterdir()}
    assert "grid.png" in pending.read_text()  # the new samples' pictures wait now
