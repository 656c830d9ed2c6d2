#!/usr/bin/env bash
# The GPU proof: every GPU figure the issues ask for, in one command that stops itself inside
# eight minutes on a machine without network (bench/gpu/README.md says how to send it there).
#
#   bash bench/gpu/run.sh              # there: the figures to $OUT
#   bash bench/gpu/run.sh --dry-run    # here: the same steps on the CPU, tiny sizes, nothing compiled
#
# $OUT gets figures.json (every figure, null where none was measured), results.md (a section for
# bench/RESULTS.md, each target met or not), run.log, profile.txt and cli-grid.png. Each step runs
# in a process of its own under a time limit inside the budget, and one that fails or is stopped
# costs only its own figures: the report is written in every case.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARRY=${GPU_PROOF_CARRY:-$ROOT/bench/gpu/carry}
PY=${PYTHON:-python3}
# What ddpm and the comparison import that the GPU machine's image lacks (bench/gpu/wheels.txt).
MODULES="pydantic pydantic_core annotated_types typing_inspection diffusers importlib_metadata"

die() {
    echo "run.sh: error: $*" >&2
    exit 2
}

DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) die "unknown argument '$1'; usage: bash bench/gpu/run.sh [--dry-run]" ;;
esac
if [[ $DRY == 1 ]]; then
    OUT=${OUT:-$(mktemp -d)}
    BUDGET=${GPU_PROOF_SECONDS:-240}
    MIN_STEP=5
    MODE=(--dry-run)
else
    [[ -n ${OUT:-} ]] || die "OUT is not set: name the folder the figures go to (OUT=/tmp/figures bash $0)"
    BUDGET=${GPU_PROOF_SECONDS:-450} # of the eight minutes: the rest is the install, the report and spare
    MIN_STEP=20
    MODE=()
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ddpm-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FIGURES=$OUT/figures.json
DEADLINE=$((SECONDS + BUDGET))
export PYTHONUNBUFFERED=1 # the log in the order things happen
export HF_HUB_OFFLINE=1   # diffusers never reaches for the network that is not there

# pydantic and diffusers from the carried wheels, offline, into the machine's own Python (torch stays
# its own); nothing to do where they already import.
install_wheels() {
    if "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in '$MODULES'.split()))"; then
        echo "# $MODULES: all import, nothing to install"
        return
    fi
    [[ -d $CARRY/wheels ]] || die "no $CARRY/wheels: run bench/gpu/prepare.sh here and carry bench/gpu/carry"
    local pip=("$PY" -m pip install --no-index --find-links "$CARRY/wheels" --no-cache-dir --disable-pip-version-check)
    # the resolver keeps what the machine has where it is new enough; failing that, the wheels as they are
    timeout 120 "${pip[@]}" --quiet pydantic diffusers ||
        timeout 120 "${pip[@]}" --no-deps "$CARRY"/wheels/*.whl ||
        die "the carried wheels do not install (pip's message is above)"
}

# Tracking is off: MLflow and DVC, absent on the GPU machine, are made unimportable here too, so
# that the dry run proves that no step needs them.
block_tracking() {
    local name
    for name in mlflow dvc; do
        mkdir -p "$WORK/blocked/$name"
        echo "raise ImportError('$name is blocked by bench/gpu/run.sh: with tracking off, nothing may import it')" \
            >"$WORK/blocked/$name/__init__.py"
    done
    export PYTHONPATH="$WORK/blocked:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

# step NAME LIMIT STEP...: measure.py's STEPs in one process, stopped after LIMIT seconds or at the
# deadline, whichever comes first; its exit status goes to steps.tsv and never stops this script.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    local limit=$((cap < left ? cap : left))
    local steps
    steps=$(IFS=,; echo "$*")
    if ((limit < MIN_STEP)); then
        echo "## $name: skipped, ${left} s of the budget left"
        printf '%s\t%s\tskipped\t0\n' "$name" "$steps" >>"$WORK/steps.tsv"
        return
    fi
    echo "## $name: $*, at most ${limit} s"
    local begin=$SECONDS status=0
    timeout --kill-after=15 "$limit" "$PY" "$ROOT/bench/gpu/measure.py" "${MODE[@]}" --figures "$FIGURES" \
        --out "$OUT" --work "$WORK" --time-left "$limit" "$@" || status=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$steps" "$status" $((SECONDS - begin)) >>"$WORK/steps.tsv"
}

describe_machine() {
    echo "# the GPU proof, $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET} s$([[ $DRY == 1 ]] && echo ', dry run')"
    echo "# $(uname -srm); $("$PY" -c 'import sys; print("Python", sys.version.split()[0])')"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    fi
}

main() {
    describe_machine
    install_wheels
    block_tracking
    if [[ $DRY == 0 ]]; then
        "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
            die "PyTorch sees no CUDA device; on a machine without one: bash bench/gpu/run.sh --dry-run"
        # the targets' steps first (a compile costs about a minute); train64 before cli, whose `ddpm train`
        # then finds the compiled step in the compile cache and sizes its run by the speed train64 measured
        step train32 120 train32  # 90 s before issue 25 added the learned_range and min_snr rows (~+33 %)
        step sample 120 sample
        step compiled32 180 compiled32
        step train64 100 train64
        step cli 200 cli
    else
        # one process: torch and diffusers start once, which is most of a dry run's time
        step measure "$BUDGET" train32 sample compiled32 train64 cli
    fi
    "$PY" "$ROOT/bench/gpu/report.py" --figures "$FIGURES" --steps "$WORK/steps.tsv" --out "$OUT"
    echo "# done in ${SECONDS} s: $OUT"
}

main 2>&1 | tee "$OUT/run.log"
