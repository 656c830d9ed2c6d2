"""How long the README's offline preset takes: `bash pipeline/offline.sh` in a fresh copy of this
repository (its tracked and untracked, not ignored, files, committed to a new git repository),
timed per DVC stage and in all. Nothing else should run on the machine meanwhile.

    python bench/offline_preset.py                # the preset as the README runs it
    python bench/offline_preset.py -S train.steps=100   # extra arguments go to offline.sh
    python bench/offline_preset.py --keep /tmp/preset   # keep the copy (the README's pictures come from it)
    python bench/offline_preset.py --script pipeline/offline-variants.sh   # the three-variant preset

Each stage's time runs from DVC's "Running stage" line to the next one (the last stage's to the end),
so it includes the stage command's start-up (importing torch, opening the MLflow store).
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


COPY_OF = "the project at commit "  # the copy's commit message, then the source's commit


def git(arguments: list[str]) -> str:
    """What a git command in this repository prints, stripped."""
    return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def fresh_copy(folder: Path) -> Path:
    """This repository's files, as a clone would have them plus what is not committed yet."""
    names = git(["ls-files", "--cached", "--others", "--exclude-standard"]).split()
    root = folder / "ddpm"
    for name in names:
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@ddpm.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    # the source's commit, which docs/screenshots.sh prints under the pictures it takes in the copy
    source = git(["rev-parse", "--short", "HEAD"]) + ("+uncommitted changes" if git(["status", "--porcelain"]) else "")
    subprocess.run(["git", *identity, "commit", "-qm", f"{COPY_OF}{source}"], cwd=root, check=True)
    return root


def timed_stages(root: Path, script: str, extra: list[str]) -> tuple[list[tuple[str, float]], float]:
    """Run the preset; each stage's seconds and the total."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(
        ["bash", script, *extra], cwd=root, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as process:  # fmt: skip
        for line in process.stdout:
            if line.startswith("Running stage '"):
                marks.append((line.split("'")[1], time.perf_counter()))
    total = time.perf_counter() - start
    if process.returncode:
        sys.exit(f"{script} failed with status {process.returncode}")
    ends = [t for _, t in marks[1:]] + [start + total]
    return [(name, end - t) for (name, t), end in zip(marks, ends, strict=True)], total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="run in this new folder and keep it, not in a temporary one")
    parser.add_argument("--script", default="pipeline/offline.sh", help="the preset to time")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as folder:
        if args.keep:
            args.keep.mkdir(parents=True)
        root = fresh_copy(args.keep or Path(folder))
        stages, total = timed_stages(root, args.script, extra)
    print(f"# {date.today()}, {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"# bash {args.script} {' '.join(extra)}".rstrip())
    print("| stage | seconds |\n|---|---:|")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **all** (DVC included) | **{total:.1f}** ({total / 60:.1f} min) |")


if __name__ == "__main__":
    main()
