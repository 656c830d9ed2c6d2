"""The DVC experiments' key numbers, readable in a terminal: `python pipeline/experiments.py`. Here, not in
ddpm/, because it runs DVC, which the library knows nothing of.

`dvc exp show` has a column for every param and metric file's key (hundreds here: each one "…" at 80
columns). This reads its JSON (`dvc exp show --json`: a list of the workspace and each baseline
commit, every one with `data.params["params.yaml"].data` and `data.metrics[<file>].data`, a commit's
experiments under `experiments[].revs[]`) and prints a row per experiment, schedule and seed: the
sampling, FID ± its bootstrap sd and KID (under the extractor's names: fid_randconv is not FID),
bits/dim and training steps, in at most WIDTH columns. A table per FID name, so that no column
mixes extractors. DVC's own view is untouched.
"""

import json
import subprocess
import sys
from typing import Any

from ddpm.errors import UserError
from ddpm.layout import RunFolder
from ddpm.result_keys import fid_name

WIDTH = 100  # columns the table fits in
NAME_WIDTH = 14  # an experiment's name is cut to this ("…" last): DVC's own are two words, 10-16 letters
MISSING = "–"


def exp_show() -> list[dict[str, Any]]:
    """`dvc exp show --json` of the repository in the working directory."""
    try:
        shown = subprocess.run(["dvc", "exp", "show", "--no-pager", "--json"], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("dvc not found: activate the environment ddpm is installed in") from None
    if shown.returncode != 0:
        lines = shown.stderr.strip().splitlines() or [f"exit status {shown.returncode}"]
        raise UserError(f"dvc exp show failed: {lines[-1].removeprefix('ERROR: ')}")
    return json.loads(shown.stdout)


def revisions(shown: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of the workspace, each baseline commit, and each experiment after its baseline."""
    found = []
    for commit in shown:
        for revision in [commit] + [rev for exp in commit.get("experiments") or [] for rev in exp["revs"]]:
            rev = revision["rev"]  # "workspace", or a commit's sha1, shown as git does, 7 digits
            found.append((revision.get("name") or (rev[:7] if len(rev) == 40 else rev), revision.get("data") or {}))
    return found


def _numbers(metrics: dict[str, Any], path: Any) -> dict[str, Any]:
    return (metrics.get(path.as_posix()) or {}).get("data") or {}  # an "error" entry (no file) holds no data


def _sampling(sample: dict[str, Any]) -> str:
    if not sample:
        return MISSING
    if sample.get("sampler", "ddpm") == "ddpm":
        return "DDPM"
    name = {"dpmsolver++": "DPM++"}.get(sample["sampler"], sample["sampler"].upper())  # the table fits 100 columns
    return f"{name} {sample.get('steps', sample.get('ddim_steps', '?'))} {sample.get('spacing', 'linspace')}"


def rows(shown: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A row of cells per revision, schedule and seed whose eval.json or train.json DVC read; with
    `fid`, the FID's name, which the table heads its column with."""
    found = []
    for name, data in revisions(shown):
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        metrics = data.get("metrics") or {}
        for schedule in params.get("schedules") or []:
            for seed in params.get("seeds") or []:
                folder = RunFolder.of(schedule, seed)
                scores, train = _numbers(metrics, folder.eval_metrics), _numbers(metrics, folder.train_metrics)
                if not scores and not train:
                    continue  # not run in this revision
                fid = fid_name(scores) or "fid"
                kid = f"{fid.replace('fid', 'kid', 1)}_mean"
                value = scores.get(fid)
                spread = f" ± {scores[f'{fid}_sd']:.2f}" if f"{fid}_sd" in scores and value is not None else ""
                found.append({
                    "experiment": name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…",
                    "schedule": schedule, "seed": str(seed), "sampling": _sampling(params.get("sample") or {}),
                    "fid": fid, f"{fid} ± sd": MISSING if value is None else f"{value:.2f}{spread}",
                    kid: _cell(scores.get(kid), ".4f"), "bits/dim": _cell(scores.get("nll_bpd"), ".3f"),
                    "steps": _cell(train.get("steps"), ".0f"),
                })  # fmt: skip
    return found


def _cell(value: Any, digits: str) -> str:
    return MISSING if value is None else f"{value:{digits}}"


def table(shown: list[dict[str, Any]]) -> str:
    """The rows as aligned text tables, one per FID name, numbers right-aligned."""
    found = rows(shown)
    if not found:
        return "no experiment has run yet: `dvc exp run` (or bash pipeline/offline.sh) makes one"
    texts = []
    for fid in dict.fromkeys(row["fid"] for row in found):
        group = [{k: v for k, v in row.items() if k != "fid"} for row in found if row["fid"] == fid]
        columns = list(group[0])
        widths = {c: max(len(c), *(len(row[c]) for row in group)) for c in columns}
        text = ["  ".join(c.ljust(widths[c]) if i < 4 else c.rjust(widths[c]) for i, c in enumerate(columns))]
        for row in group:
            cells = [row[c].ljust(widths[c]) if i < 4 else row[c].rjust(widths[c]) for i, c in enumerate(columns)]
            text.append("  ".join(cells))
        texts.append("\n".join(line.rstrip() for line in text))
    return "\n\n".join(texts)


def main() -> None:
    try:
        print(table(exp_show()))
    except UserError as e:  # as the ddpm commands say it: one line, exit status 2
        print(f"ddpm: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
