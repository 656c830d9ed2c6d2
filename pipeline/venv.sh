# Sourced by pipeline/offline.sh and tests/run.sh: makes (or reuses) the project's virtual environment
# .venv, with PyTorch's CPU build where no GPU is visible, and the project installed in it with its
# test tools (pip install -e ".[dev]"); then activates it. Python ≥ 3.11 is all it needs.
# Set DDPM_VENV to use another folder. An active virtual environment that already has ddpm and its
# test tools (the `pip install -e ".[dev]"` route) is used as it is.
if [ -n "${VIRTUAL_ENV:-}" ] && [ -z "${DDPM_VENV:-}" ] && python -c 'import ddpm, pytest' 2>/dev/null; then
    return 0
fi
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${DDPM_VENV:-$_root/.venv}"
_python="${PYTHON:-python3}"
if ! "$_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "ddpm: error: Python 3.11 or newer is needed ($_python: $("$_python" --version 2>&1 || echo 'not found')); set PYTHON=..." >&2
    exit 2
fi
if [ ! -x "$_venv/bin/python" ]; then
    echo "ddpm: making the virtual environment $_venv (once)" >&2
    "$_python" -m venv "$_venv"
fi
# the stamp holds the sha256 of pyproject.toml the venv was installed from: a change reinstalls
_stamp="$_venv/.ddpm-installed"
_want="$("$_python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$_root/pyproject.toml")"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    if ! "$_venv/bin/python" -c 'import torch' 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            echo "ddpm: installing PyTorch (a GPU is visible: the default CUDA build)" >&2
            "$_venv/bin/pip" install "torch>=2.4"
        else
            # the CPU build: the default wheel brings several GB of CUDA libraries a CPU never uses
            echo "ddpm: installing PyTorch's CPU build (no GPU visible)" >&2
            # torch alone: torchvision then comes with ddpm's dependencies and matches the torch it finds
            "$_venv/bin/pip" install "torch>=2.4" --retries 1 --index-url https://download.pytorch.org/whl/cpu
        fi
    fi
    echo "ddpm: installing ddpm and its test tools into $_venv (pip install -e \".[dev]\")" >&2
    "$_venv/bin/pip" install -e "$_root[dev]"
    echo "$_want" > "$_stamp"
fi
# shellcheck disable=SC1091
. "$_venv/bin/activate"
unset _root _venv _python _stamp _want
