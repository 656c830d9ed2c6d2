"""The whole pipeline through real DVC, as the README runs it: the offline preset (shortened to tens
of steps) in a fresh copy of the repository, then MLflow read back through a real `mlflow server`,
and a second experiment, run in a temporary copy, that differs only in sampling and lands in the same store."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import clean_environment

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCHEDULES = ["cosine"]  # one schedule (and seed): each costs a train, sample, evaluate and sweep stage
PER_RUN = ("train", "sample", "evaluate", "sweep")
STAGES = ["download", "prepare", *(f"{s}@{x}-0" for s in PER_RUN for x in SCHEDULES), "compare"]
# The README's offline preset, shortened: the same stages and settings but for the lengths and one schedule.
SHORT = " ".join(
    [
        "-S 'schedules=[cosine]' -S train.steps=20 -S train.log_every=10 -S train.checkpoint_every=20",
        "-S train.sample_every=20 -S data.synthetic_count=200 -S data.holdout=20 -S sample.num_samples=40",
        "-S sample.sampler=ddim -S sample.steps=10 -S evaluate.nll_images=8",
        "-S sweep.num_samples=20 -S train.eval_samples=20",
    ]
)

pytestmark = pytest.mark.slow


def environment(root: Path) -> dict[str, str]:
    identity = {"GIT_AUTHOR_NAME": "ddpm tests", "GIT_AUTHOR_EMAIL": "tests@ddpm.invalid"}
    identity |= {"GIT_COMMITTER_NAME": "ddpm tests", "GIT_COMMITTER_EMAIL": "tests@ddpm.invalid"}
    return clean_environment(**identity, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HOME=str(root.parent / "home"))


def sh(command: str, root: Path, timeout: float = 900) -> str:
    """Run a shell command in `root`; its output, or a failure that shows it."""
    done = subprocess.run(
        command, shell=True, cwd=root, env=environment(root), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def json_of(command: str, root: Path) -> object:
    """What a command that prints JSON printed, its warnings on stderr aside."""
    sh(f"{command} > {root.parent / 'printed.json'}", root)
    return json.loads((root.parent / "printed.json").read_text())


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh git repository holding this one's files, with the shortened offline preset run in it."""
    root = tmp_path_factory.mktemp("pipeline") / "ddpm"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and name != "dvc.lock":  # the record of a run here, not part of the project
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes((ROOT / name).read_bytes())
    (root.parent / "home").mkdir()
    sh("git init -q && git add -A && git commit -qm 'the project'", root)
    readme = (ROOT / "README.md").read_text()
    command = "bash pipeline/offline.sh"
    assert f"\n{command}" in readme  # the README's command is the one run here
    return root, sh(f"{command} --name first {SHORT}", root)


def test_the_offline_preset_runs_every_stage_and_writes_every_output(project: tuple[Path, str]) -> None:
    root, output = project
    assert ran(output) == set(STAGES)
    report = ["report.md", "samples.png", "nll_terms.png", "sweep.png", "comparison.json"]
    outputs = ["data/prepared/images.npy", "data/prepared/holdout.npy", "dvc.lock"]
    outputs += [f"reports/compare/{name}" for name in report]
    for schedule in SCHEDULES:
        files = ("model.pt", "train.json", "losses.csv", "eval.json", "nll_terms.csv", "sweep.json")
        outputs += [f"runs/{schedule}/seed0/{name}" for name in files]
        outputs += [f"runs/{schedule}/seed0/samples/{name}" for name in ("samples.npy", "grid.png", "progression.gif")]
    assert [name for name in outputs if not (root / name).is_file()] == []
    metrics = json.loads((root / "runs" / "cosine" / "seed0" / "eval.json").read_text())
    assert metrics["feature_extractor"] == "randconv" and "fid" not in metrics and metrics["num_samples"] == 40
    assert metrics["nll_images"] == 8 and metrics["nll_bpd"] > 0 and metrics["bootstrap"] == 200
    assert metrics["fid_randconv_ci_low"] < metrics["fid_randconv_ci_high"]
    text = (root / "reports" / "compare" / "report.md").read_text()
    for shown in ("fid_randconv (N = ", "NLL (bits/dim)", "@ DDIM 5", "@ DPM-Solver++ 20", "| NFE | cosine |",
                  "](nll_terms.png)", "](sweep.png)", "on 8 held-out images", "Bootstrap: 200 resamples",
                  "## Which differences are real", "One schedule: nothing to compare."):  # fmt: skip
        assert shown in text, shown
    # the workspace: the preset's outputs and DVC's record of them, and params.yaml as it was, so that
    # what runs next reads the real experiment; the preset's values are the experiment's, in DVC
    assert sh("git status --porcelain", root).splitlines() == ["?? dvc.lock"]
    assert "train@cosine-0:\n\tchanged deps:\n\t\tparams.yaml:" in sh("dvc status", root)
    experiments = json_of("dvc exp show --no-pager --json", root)
    values = {run["name"]: run["revs"][0]["data"]["params"]["params.yaml"]["data"]
              for commit in experiments for run in commit.get("experiments") or []}  # fmt: skip
    assert values["first"]["data"]["source"] == "synthetic" and values["first"]["model"]["preset"] == "tiny"
    readable = sh("python pipeline/experiments.py", root).splitlines()  # on the preset's own DVC experiments
    assert readable[0].split() == ["experiment", "schedule", "seed", "sampling", "fid_randconv", "±", "sd",
                                   "kid_randconv_mean", "bits/dim", "steps"]  # fmt: skip
    assert [line.split()[:4] for line in readable if line.startswith("first ")] == [
        ["first", schedule, "0", "DDIM"] for schedule in SCHEDULES
    ]
    assert max(map(len, readable)) <= 100
    assert "No file hash info found" not in output and "Running stage 'train@cosine-0'" in output
    shown = json_of("dvc metrics show --json", root)  # the workspace's (its stderr: linear's, not made here)
    numbers = json.dumps(shown)
    for key in (
        "fid_randconv",
        "fid_randconv_ci_low",
        "nll_bpd",
        "nll_prior_bpd",
        "final_loss",
        '"ddim"',
        '"dpmsolver++"',
        '"ddpm"',
    ):
        assert key in numbers, key
    # `dvc plots show`'s page draws offline: the chart libraries are in the page, not behind a CDN
    sh("dvc plots show", root)
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "vegaEmbed(" in page and "<script src=" not in page and "cdn.jsdelivr" not in page
    assert "bits/dim of each timestep's term of the bound, cosine, seed 0" in page and "compare_sweep.png" in page
    assert sh("git status --porcelain", root).splitlines() == ["?? dvc.lock"]


def test_dvc_runs_every_schedule_once_per_seed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"schedules": ["linear", "cosine"], "seeds": [0, 3]}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    listed = sh("dvc init --no-scm -q && dvc stage list --name-only", root).split()
    expected = [f"{stage}@{s}-{seed}" for stage in PER_RUN for s in ("linear", "cosine") for seed in (0, 3)]
    assert [name for name in listed if "@" in name] == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, path: str, body: dict | None = None) -> dict:
    """One call of MLflow's REST API: GET with query parameters, or POST with a JSON body."""
    if body is None:
        request = urllib.request.Request(base + path)
    else:
        request = urllib.request.Request(
            base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(project: tuple[Path, str]) -> str:
    """A real `mlflow server` on the project's store (started now: it takes seconds to come up, while
    the next experiment runs); the base URL of its REST API."""
    root, _ = project
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=root, env=environment(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    yield f"http://127.0.0.1:{port}/api/2.0/mlflow/"
    os.killpg(process.pid, signal.SIGKILL)  # thrown away with its folder: no graceful shutdown to wait for
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def sampled_twice(project: tuple[Path, str], server: str) -> str:
    """A second experiment that differs from the first only in the sampling, run in a temporary copy
    of the repository (`--temp`: DVC's queued experiments run the same way); its output."""
    root, _ = project
    return sh(f"bash pipeline/offline.sh --temp --name second {SHORT} -S sample.steps=5", root)


def test_a_sampling_change_resamples_and_reevaluates_without_retraining(
    project: tuple[Path, str], sampled_twice: str
) -> None:
    root, _ = project
    # the sweep too: its DDPM point reuses the sample stage's samples where their settings match, so it depends on them
    resampled = {f"{s}@{x}-0" for s in ("sample", "evaluate", "sweep") for x in SCHEDULES} | {"compare"}
    assert ran(sampled_twice) - {"download"} == resampled  # download: DVC reruns a persistent output's stage
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))  # it logged into the repository's store


def test_mlflow_shows_a_model_run_per_schedule_with_one_child_per_sampling_configuration(
    project: tuple[Path, str], sampled_twice: str, server: str
) -> None:
    root, _ = project
    base = server
    for _ in range(240):  # the server takes a few seconds to come up
        try:
            experiment = rest(base, "experiments/get-by-name?experiment_name=ddpm-flowers")["experiment"]
            break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not answer within 2 minutes")
    tags = {t["key"]: t["value"] for t in experiment["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    runs = rest(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    tags_of = {run["info"]["run_id"]: {t["key"]: t["value"] for t in run["data"]["tags"]} for run in runs}
    models = {run["info"]["run_name"]: run for run in runs if tags_of[run["info"]["run_id"]]["ddpm.kind"] == "model"}
    assert set(models) == {f"{schedule}, seed 0" for schedule in SCHEDULES}
    for name, model in models.items():
        schedule = name.split(",")[0]
        folder = root / "runs" / schedule / "seed0"
        run_id = model["info"]["run_id"]
        assert json.loads((folder / "mlflow_run.json").read_text())["run_id"] == run_id
        params = {p["key"]: p["value"] for p in model["data"]["params"]}
        assert params["diffusion.schedule"] == schedule and params["model.preset"] == "tiny"
        assert not any(key.startswith("sample.") for key in params)  # sampling is the children's
        tags = tags_of[run_id]
        assert tags["train.steps"] == "20" and tags["stage.train"] == f"train@{schedule}-0"
        assert tags["dvc_experiment"] == "first" and len(tags["git_commit"]) == 40  # it was trained there
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "train/loss"})
        assert [m["step"] for m in rest(base, f"metrics/get-history?{query}")["metrics"]] == [10, 20]
        children = [run for run in runs if tags_of[run["info"]["run_id"]].get("mlflow.parentRunId") == run_id]
        sweeps = [run for run in children if tags_of[run["info"]["run_id"]]["ddpm.kind"] == "sweep"]
        children = [run for run in children if tags_of[run["info"]["run_id"]]["ddpm.kind"] == "evaluation"]
        assert len(sweeps) == 1  # the second experiment changed only what the sweep sets itself
        for sweep in sweeps:
            query = urllib.parse.urlencode({"run_id": sweep["info"]["run_id"], "metric_key": "fid_randconv_ddim"})
            # the second experiment reran the sweep (its samples changed) with the same settings, into the same
            # child: each point is logged once per run of the stage, with the same value
            history = rest(base, f"metrics/get-history?{query}")["metrics"]
            assert sorted((m["step"], m["value"]) for m in history)[::2] == sorted(
                (m["step"], m["value"]) for m in history
            )[1::2] and {m["step"] for m in history} == {5, 20}
            query = urllib.parse.urlencode({"run_id": sweep["info"]["run_id"], "metric_key": "fid_randconv_ddpm"})
            assert {m["step"] for m in rest(base, f"metrics/get-history?{query}")["metrics"]} == {50}
            query = urllib.parse.urlencode(
                {"run_id": sweep["info"]["run_id"], "metric_key": "fid_randconv_dpmsolverpp"}
            )
            assert {m["step"] for m in rest(base, f"metrics/get-history?{query}")["metrics"]} == {5, 20}
        by_steps = {}
        for child in children:  # each child's params are the settings its scores were measured with
            params = {p["key"]: p["value"] for p in child["data"]["params"]}
            by_steps[params["sample.steps"]] = child
            assert params["evaluate.feature_extractor"] == "randconv"
            assert (
                tags_of[child["info"]["run_id"]]["dvc_experiment"]
                == {"10": "first", "5": "second"}[params["sample.steps"]]
            )
            metrics = {m["key"]: m for m in child["data"]["metrics"]}
            scores = {"fid_randconv", "fid_randconv_ci_low", "fid_randconv_ci_high", "kid_randconv_mean", "nll_bpd"}
            assert scores <= metrics.keys() and "num_samples" not in metrics
            listed = rest(base, "artifacts/list?" + urllib.parse.urlencode({"run_id": child["info"]["run_id"],
                                                                              "path": "samples"}))  # fmt: skip
            assert "samples/grid.png" in {f["path"] for f in listed["files"]}
        assert set(by_steps) == {"10", "5"}
        first = json.loads((folder / "eval.json").read_text())  # the workspace: the first's
        assert {m["key"]: m["value"] for m in by_steps["10"]["data"]["metrics"]}["fid_randconv"] == pytest.approx(
            first["fid_randconv"]
        )
    compares = [run for run in runs if tags_of[run["info"]["run_id"]]["ddpm.kind"] == "compare"]
    assert sorted(run["info"]["run_name"] for run in compares) == ["compare (first)", "compare (second)"]
    for run in compares:  # the report's numbers, the likelihood and the sweep's among them
        logged = {m["key"] for m in run["data"]["metrics"]}
        assert {
            "fid_randconv.cosine",
            "nll_bpd.cosine",
            "fid_randconv_ddim5.cosine",
            "fid_randconv_dpmsolverpp5.cosine",  # MLflow refuses "+" in a key
            "fid_randconv_ci_low.cosine",
        } <= logged
