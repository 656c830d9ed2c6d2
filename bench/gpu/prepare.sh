#!/usr/bin/env bash
# Here, where PyPI is reachable: everything bench/gpu/run.sh needs on a GPU machine without network,
# into bench/gpu/carry/ (ignored by git, sent along as a carried path):
#   wheels/              the packages of wheels.txt, for that machine's Python 3.12 on x86-64
#   inception-fp16.pt    the FID Inception with float16 weights (inception.py), checked against float32
# then the size of what a call sends (the working tree and the carry: at most 64 MiB), the carry list
# and the command to run there.
#
#   bash bench/gpu/prepare.sh           # download, make, check
#   bash bench/gpu/prepare.sh --check   # only check what is there, without network
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARRY=${GPU_PROOF_CARRY:-$ROOT/bench/gpu/carry}
PY=${PYTHON:-python3}
LIMIT_MIB=64 # what one call of the device tool sends: the working tree and the carried paths

die() {
    echo "prepare.sh: error: $*" >&2
    exit 1
}

# The wheels of wheels.txt, each for CPython 3.12 on manylinux x86-64 (pip matches the platform tags
# exactly, so the usual ones are all named).
download_wheels() {
    local platforms=() tag
    for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
        platforms+=(--platform "$tag")
    done
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" --dest "$CARRY/wheels" -r "$ROOT/bench/gpu/wheels.txt" ||
        die "pip could not download the wheels of bench/gpu/wheels.txt (its message is above)"
}

make_inception() {
    local target=$CARRY/inception-fp16.pt
    if [[ ! -f $target ]]; then
        "$PY" "$ROOT/bench/gpu/inception.py" shrink "$target"
    fi
    "$PY" "$ROOT/bench/gpu/inception.py" check "$target"
}

# Every pinned wheel is in the folder, and only one version of each (two would stop pip there).
check_wheels() {
    local line name version found
    [[ -d $CARRY/wheels ]] || die "no $CARRY/wheels: run bash bench/gpu/prepare.sh (it downloads them)"
    while read -r line; do
        line=${line%%#*}
        [[ -n ${line// /} ]] || continue
        name=${line%%==*}
        version=${line##*==}
        name=${name// /}
        version=${version// /}
        # wheel file names spell a project's name with underscores
        found=$(find "$CARRY/wheels" -maxdepth 1 -iname "${name//-/_}-*.whl" | wc -l)
        [[ $found == 1 ]] || die "$CARRY/wheels holds $found wheels of $name, expected one (${name}==$version)"
        [[ -n $(find "$CARRY/wheels" -maxdepth 1 -iname "${name//-/_}-${version}-*.whl") ]] ||
            die "$CARRY/wheels has $name, but not version $version: run bash bench/gpu/prepare.sh again"
    done <"$ROOT/bench/gpu/wheels.txt"
}

# Bytes of the files a call sends besides the carry: tracked, and untracked but not ignored.
tree_bytes() {
    local total=0 file size
    while IFS= read -r -d '' file; do
        if [[ -f $ROOT/$file && ! -L $ROOT/$file ]]; then
            size=$(stat -c %s "$ROOT/$file")
            total=$((total + size))
        fi
    done < <(git -C "$ROOT" ls-files -z --cached --others --exclude-standard)
    echo "$total"
}

mib() {
    awk -v bytes="$1" 'BEGIN { printf "%.1f", bytes / 1048576 }'
}

check_size() {
    local tree carry total
    tree=$(tree_bytes)
    carry=$(find "$CARRY" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    total=$((tree + carry))
    echo "sent: working tree $(mib "$tree") MiB + bench/gpu/carry $(mib "$carry") MiB = $(mib "$total") MiB" \
        "of the $LIMIT_MIB MiB a call carries"
    if ((total > LIMIT_MIB * 1048576)); then
        echo "prepare.sh: error: $(mib $((total - LIMIT_MIB * 1048576))) MiB too much; the largest files:" >&2
        find "$CARRY" -type f -printf '%s\t%P\n' | sort -rn | head -5 |
            awk -F'\t' '{ printf "  %.1f MiB  bench/gpu/carry/%s\n", $1 / 1048576, $2 }' >&2
        echo "drop inception-fp16.pt (ddpm evaluate then scores with randconv) or untracked files of the tree" >&2
        exit 1
    fi
}

case "${1:-}" in
    --check) ;;
    "")
        mkdir -p "$CARRY/wheels"
        download_wheels
        make_inception
        ;;
    *) die "unknown argument '$1'; usage: bash bench/gpu/prepare.sh [--check]" ;;
esac
[[ -d $CARRY ]] || die "no $CARRY: run bash bench/gpu/prepare.sh (with network) first"
check_wheels
[[ -f $CARRY/inception-fp16.pt ]] || echo "note: no inception-fp16.pt: ddpm evaluate will score with randconv there"
check_size
echo "carry: [\"bench/gpu/carry\"]"
echo "command: bash bench/gpu/run.sh"
