"""DVC's plots of the pipeline as `dvc plots show` fills them from dvc.yaml and .dvc/plots (issue 27):
the bar chart named after the metric as it is, the bits/dim per timestep on a log axis, every loss
curve in one panel. The files are in the format `ddpm compare` and `ddpm evaluate` write
(test_compare checks compare's)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import clean_environment

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")  # the environment's own, as the pipeline's
SCORES, LOSSES, TERMS = "reports/compare/scores.csv", "reports/compare/losses.csv", "runs/linear/seed0/nll_terms.csv"


def test_dvc_draws_the_metric_by_its_name_the_bound_on_a_log_axis_and_the_losses_in_one_panel(tmp_path: Path) -> None:
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    files = {
        SCORES: "schedule,fid_randconv\nlinear,12.5\ncosine,10.25\n",
        LOSSES: "run,step,loss\nlinear seed 0,5,0.5\nlinear seed 0,10,0.4\ncosine seed 0,5,0.6\n",
        TERMS: "t,bpd\n1,2.5\n2,0.01\n3,0.001\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    shown = subprocess.run([DVC, "plots", "show", "--json", *files], cwd=tmp_path, capture_output=True, text=True,
                           env=clean_environment(), timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    [[bars], [losses], [terms]] = [json.loads(shown.stdout)["data"][name] for name in (SCORES, LOSSES, TERMS)]

    bars = bars["content"]
    assert bars["title"]["text"] == "fid_randconv per schedule (lower is better)"  # was "FID per schedule"
    assert bars["encoding"]["x"] == {"field": "fid_randconv", "type": "quantitative", "title": "fid_randconv"}
    assert bars["encoding"]["y"]["field"] == "schedule" and bars["mark"]["type"] == "bar"
    assert [(p["schedule"], p["fid_randconv"]) for p in bars["data"]["values"]] == [
        ("linear", "12.5"),
        ("cosine", "10.25"),
    ]

    terms = terms["content"]["encoding"]["y"]
    assert terms["field"] == "bpd" and terms["scale"] == {"type": "log"}

    losses = losses["content"]
    assert losses["encoding"]["color"]["field"] == "run" and losses["mark"]["type"] == "line"  # a line per run
    runs = {p["run"] for p in losses["data"]["values"]}
    assert runs == {"linear seed 0", "cosine seed 0"}  # both in this one panel
    assert losses["title"]["text"] == "training loss (mean over each log interval), every schedule and seed"
