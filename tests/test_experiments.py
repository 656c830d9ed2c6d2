"""`python pipeline/experiments.py`: `dvc exp show --json` as a table that fits 100 columns (issue 27).
The JSON is in the shape DVC 3.67 writes (captured from `dvc exp show --json` on a repository with a
matrix stage and two experiments; test_pipeline runs it on the offline preset's)."""

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ddpm.errors import UserError

_spec = importlib.util.spec_from_file_location("experiments", Path(__file__).parents[1] / "pipeline" / "experiments.py")
experiments = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(experiments)
WIDTH, exp_show, main, table = experiments.WIDTH, experiments.exp_show, experiments.main, experiments.table


def revision(rev: str, name: str | None, params: dict, metrics: dict) -> dict[str, Any]:
    """A revision as DVC shows it: each metric file's numbers under "data", or an "error" if absent."""
    files = {path: {"data": numbers} if numbers else {"error": {"type": "FileNotFoundError", "msg": "..."}}
             for path, numbers in metrics.items()}  # fmt: skip
    data = {"rev": rev, "timestamp": None, "params": {"params.yaml": {"data": params}}, "metrics": files, "deps": {}}
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": None}


RANDCONV = {"schedules": ["linear", "cosine"], "seeds": [0], "sample": {"sampler": "ddim", "steps": 20}}
SCORES = {"fid_randconv": 12.3456, "fid_randconv_sd": 0.512, "kid_randconv_mean": 0.01234, "nll_bpd": 3.21049,
          "num_samples": 200}  # fmt: skip
SHA = "7f8175acc1c129b47a4bc1c3d6bc1cad33b7df20"


def shown() -> list[dict[str, Any]]:
    workspace = revision("workspace", None, RANDCONV, {
        "runs/linear/seed0/train.json": {"final_loss": 0.1, "steps": 250},
        "runs/linear/seed0/eval.json": SCORES,
        "runs/cosine/seed0/train.json": {"final_loss": 0.1, "steps": 250},
        "runs/cosine/seed0/eval.json": {**SCORES, "fid_randconv": 10.0, "fid_randconv_sd": 0.25},
    })  # fmt: skip
    baseline = revision(SHA.replace("7", "8"), "main", RANDCONV, {
        "runs/linear/seed0/eval.json": None, "runs/linear/seed0/train.json": None,  # nothing run in the commit
    })  # fmt: skip
    inception = {"schedules": ["cosine"], "seeds": [0, 1], "sample": {"sampler": "ddpm"}}
    experiment = revision(SHA, "an-experiment-named-at-length", inception, {
        "runs/cosine/seed0/train.json": {"steps": 800000},
        "runs/cosine/seed0/eval.json": {"fid": 5.4321, "kid_mean": 0.0042, "num_samples": 10000},
        "runs/cosine/seed1/train.json": {"steps": 800000},  # evaluated in no file: its scores are missing
        "runs/cosine/seed1/eval.json": None,
    })  # fmt: skip
    baseline["experiments"] = [{"revs": [experiment]}]
    return [workspace, baseline]


def test_the_experiments_print_a_row_per_schedule_and_seed_under_each_metric_s_own_name() -> None:
    text = table(shown())
    assert text.split("\n") == [
        "experiment  schedule  seed  sampling          fid_randconv ± sd  kid_randconv_mean  bits/dim  steps",
        "workspace   linear    0     DDIM 20 linspace       12.35 ± 0.51             0.0123     3.210    250",
        "workspace   cosine    0     DDIM 20 linspace       10.00 ± 0.25             0.0123     3.210    250",
        "",  # a table per metric name: no column mixes extractors; each as wide as its cells
        "experiment      schedule  seed  sampling  fid ± sd  kid_mean  bits/dim   steps",
        "an-experiment…  cosine    0     DDPM          5.43    0.0042         –  800000",
        "an-experiment…  cosine    1     DDPM             –         –         –  800000",
    ]
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert table([revision("workspace", None, RANDCONV, {})]).startswith("no experiment has run yet")


def test_a_failing_dvc_is_one_line_and_exit_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    said = "ERROR: you are not inside of a DVC repository (checked up to mount point '/')\n"

    def failing(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, 255, "", said)

    monkeypatch.setattr(experiments.subprocess, "run", failing)
    with pytest.raises(UserError, match=r"^dvc exp show failed: you are not inside of a DVC repository \("):
        exp_show()
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "ddpm: error: dvc exp show failed: you are not inside of a DVC repository (checked up to mount point '/')\n"
    )
