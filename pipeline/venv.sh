# Sourced by pipeline/offline.sh and tests/run.sh: makes (or reuses) the project's virtual environment
# .venv, with PyTorch's CPU build where no GPU is visible, and the project installed in it with its
# test tools (pip install -e ".[dev]"); then activates it. Python ≥ 3.11 is all it needs.
# The CPU build comes from DDPM_TORCH_CPU_INDEX (PyTorch's CPU index by default); where that cannot be
# reached, a note says so and PyTorch comes from the usual package index (its default build).
# Set DDPM_VENV to use another folder. An active virtual environment that already has ddpm and its
# test tools (the `pip install -e ".[dev]"` route) is used as it is.
if [ -n "${VIRTUAL_ENV:-}" ] && [ -z "${DDPM_VENV:-}" ] && python -c 'import ddpm, pytest' 2>/dev/null; then
    return 0
fi
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${DDPM_VENV:-$_root/.venv}"
_python="${PYTHON:-python3}"
DDPM_TORCH_CPU_INDEX="${DDPM_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
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
    _cpu=""
    if ! "$_venv/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
        # torch and torchvision in one command, from one index, so that they are built for each other
        # (torchvision comes with ddpm's dependencies; one built for CUDA does not load beside a CPU torch)
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            echo "ddpm: installing PyTorch (a GPU is visible: the default CUDA build)" >&2
            "$_venv/bin/pip" install "torch>=2.4" torchvision
        elif "$_venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)' \
                "$DDPM_TORCH_CPU_INDEX/torch/" 2>/dev/null; then
            # the CPU build: the default wheels bring several GB of CUDA libraries a CPU never uses
            echo "ddpm: installing PyTorch's CPU build (no GPU visible)" >&2
            "$_venv/bin/pip" install "torch>=2.4" torchvision --index-url "$DDPM_TORCH_CPU_INDEX"
            _cpu=1
        else
            echo "ddpm: note: $DDPM_TORCH_CPU_INDEX cannot be reached, so PyTorch comes from your package index:" \
                 "its default build, with CUDA libraries (several GB) that run on a CPU as well" >&2
            "$_venv/bin/pip" install "torch>=2.4" torchvision
        fi
    fi
    echo "ddpm: installing ddpm and its test tools into $_venv (pip install -e \".[dev]\")" >&2
    "$_venv/bin/pip" install -e "$_root[dev]"
    if ! "$_venv/bin/python" -c 'import torch, torchvision' >/dev/null 2>&1; then
        echo "ddpm: error: torch and torchvision in $_venv do not load together; remove $_venv and run again" >&2
        exit 1
    fi
    if [ -n "$_cpu" ] && "$_venv/bin/pip" list 2>/dev/null | grep -qi '^nvidia-'; then
        echo "ddpm: error: the install replaced PyTorch's CPU build by a CUDA one (nvidia-* packages in $_venv)" >&2
        exit 1
    fi
    echo "$_want" > "$_stamp"
fi
# shellcheck disable=SC1091
. "$_venv/bin/activate"
unset _root _venv _python _stamp _want _cpu
