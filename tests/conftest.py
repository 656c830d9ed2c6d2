"""What the tests share: one tiny config, one model trained once per test session, an empty MLflow
store made once per session, and `run`, the `ddpm` command as a real subprocess in a folder of the
test's own, with an MLflow store of its own."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, before torch starts its pool
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml

from ddpm.config import Config  # noqa: E402
from ddpm.data import save_images, synthetic_flowers  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

CPU = torch.device("cpu")
DDPM = str(Path(sys.executable).parent / "ddpm")

# The tiny model on 16×16 images, T = 50; training, sampling and evaluation that take seconds, no
# held-out images and so no likelihood (tests/test_compare.py measures it).
TINY = {
    "data": {"image_size": 16, "holdout": 0},
    "model": {"preset": "tiny"},
    "diffusion": {"timesteps": 50},
    "train": {
        "steps": 20,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup_steps": 10,
        "log_every": 10,
        "checkpoint_every": 10,
        "eval_every": 0,  # quality during training: tests/test_quality.py turns it on
    },
    "sample": {"num_samples": 4, "batch_size": 4, "sampler": "ddim", "steps": 5},
    "evaluate": {
        "feature_extractor": "randconv",
        "bootstrap": 40,  # the fewest for a 95 % interval
        "nll_images": 0,
    },
    "sweep": {"steps": [2, 5], "num_samples": 8},
}


def tiny_params(**sections: dict) -> dict:
    """TINY with `sections` updating its sections (or adding keys such as `schedules`)."""
    raw = {name: dict(values) for name, values in TINY.items()}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values} if isinstance(values, dict) else values
    return raw


def tiny_config(**sections: dict) -> Config:
    return Config.model_validate(tiny_params(**sections))


def write_params(folder: Path, **sections: dict) -> Path:
    """params.yaml of the tiny config in `folder`."""
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(**sections)))
    return path


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment without the caller's MLflow and DVC settings, so that nothing a test runs
    logs into the caller's store or believes DVC runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return env | extra


def run(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`ddpm *args` in `cwd` (its MLflow store: cwd/mlflow.db, the default), with `env` added."""
    return subprocess.run(
        [DDPM, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_environment(**env)
    )


def invoke(*args: str, cwd: Path):  # noqa: ANN201
    """`ddpm *args` run in this process (typer's CliRunner) with `cwd` as the working directory: the
    same command without the seconds a new process spends importing torch and MLflow."""
    from typer.testing import CliRunner

    from ddpm.cli import app

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(previous)


# The modules that take longest on 2 cores, longest first, ahead of the others (in their collected
# order). A worker takes the next module when it has at most two tests of its last left, so the long
# ones start at once and the short ones fill in at the end, and neither worker waits long for the
# other at the end. pyproject.toml's --no-loadscope-reorder keeps this order: xdist's own would put
# the modules with the most tests first and leave the DVC pipeline for last.
LONGEST_FIRST = ("test_pipeline.py", "test_faults.py", "test_training_loop.py", "test_train_sample.py",
                 "test_fast_path.py", "test_evaluate.py", "test_tracking_faults.py", "test_cli.py", "test_compare.py",
                 "test_gpu_script.py", "test_data_stages.py", "test_convert.py", "test_checkpoint.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's tests keep their order


@pytest.fixture(autouse=True)
def _seeded_and_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the same global seed, and without the caller's MLflow and DVC settings,
    so that nothing it runs in this process logs into the caller's store either."""
    torch.manual_seed(0)
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "DVC_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def flowers16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic 16×16 flowers as a prepared-images file."""
    path = tmp_path_factory.mktemp("data") / "images.npy"
    save_images(path, synthetic_flowers(8, 16, seed=0))
    return path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made and no experiment in it: MLflow's table migrations
    take seconds for every new store, so tests whose subject is not the store's creation copy this
    one in as their mlflow.db (`copy_store`). ddpm adds its experiment, artifacts beside the copy."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def copy_store(empty_store: Path, folder: Path) -> None:
    """`empty_store` as folder/mlflow.db, the store a command run in `folder` uses."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, folder / "mlflow.db")


@pytest.fixture(scope="session")
def trained_result(flowers16: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The tiny model trained once for the session (20 steps, no tracking): what `train` returned."""
    from ddpm.train import train

    folder = tmp_path_factory.mktemp("trained") / "linear"
    return train(tiny_config(), flowers16, folder, CPU, progress=False)


@pytest.fixture(scope="session")
def trained(trained_result) -> Path:  # noqa: ANN001
    """The session's tiny model's run folder, holding model.pt, checkpoints/, train.json and
    losses.csv. Tests read it; none may write into it."""
    return trained_result.checkpoint.parent
