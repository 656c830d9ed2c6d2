"""pipeline/venv.sh's CPU route, run against a stand-in virtual environment whose pip and python only record
what they are asked: torch and torchvision come in one command from the CPU index, and an install that brought
nvidia-* packages (a CUDA build replacing the CPU one) stops with one line instead of passing as a CPU setup."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://cpu-index.invalid/whl/cpu"


def stand_in(folder: Path, listed: str) -> Path:
    """A virtual environment whose pip logs its arguments and lists `listed`; its python imports torch only
    after pip installed it, and reaches every URL; and an nvidia-smi that sees no GPU."""
    bin_ = folder / "venv" / "bin"
    bin_.mkdir(parents=True)
    scripts = {
        bin_ / "python": 'case "$*" in *urlopen*) exit 0 ;; *) [ -e "$(dirname "$0")/../torch" ] ;; esac',
        bin_ / "pip": 'echo "$*" >> "$(dirname "$0")/../pip.log"\n'
        'case "$1" in list) cat "$(dirname "$0")/../listed" ;; install) touch "$(dirname "$0")/../torch" ;; esac',
        folder / "path" / "nvidia-smi": "exit 9",
    }
    for path, body in scripts.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    (bin_ / "activate").write_text("")
    (folder / "venv" / "listed").write_text(listed)
    return folder / "venv"


def source_venv_sh(venv: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(
        DDPM_VENV=str(venv),
        DDPM_TORCH_CPU_INDEX=CPU_INDEX,
        PYTHON=sys.executable,
        PATH=f"{venv.parent / 'path'}{os.pathsep}{env['PATH']}",
    )
    return subprocess.run(["bash", "-c", ". pipeline/venv.sh"], cwd=ROOT, env=env, capture_output=True, text=True)


def test_cpu_route_installs_torch_and_torchvision_together_from_the_cpu_index(tmp_path):
    venv = stand_in(tmp_path, "numpy 2.0\ntorch 2.14.1+cpu\ntorchvision 0.29.1+cpu\n")
    done = source_venv_sh(venv)
    assert done.returncode == 0, done.stderr
    installs = [line for line in (venv / "pip.log").read_text().splitlines() if line.startswith("install")]
    # one command for both, so that pip never pairs a CPU torch with a torchvision built for CUDA
    assert installs == [f"install torch>=2.4 torchvision --index-url {CPU_INDEX}", f"install -e {ROOT}[dev]"]
    assert (venv / ".ddpm-installed").is_file()


@pytest.mark.parametrize("package", ["nvidia-cublas", "NVIDIA-cudnn-cu13"])
def test_cpu_route_refuses_an_install_that_brought_nvidia_packages(tmp_path, package):
    venv = stand_in(tmp_path, f"numpy 2.0\n{package} 9.1\ntorch 2.14.1\n")
    done = source_venv_sh(venv)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"ddpm: error: the install replaced PyTorch's CPU build by a CUDA one (nvidia-* packages in {venv})"
    )
    assert not (venv / ".ddpm-installed").exists()  # the next run tries again instead of trusting this one
