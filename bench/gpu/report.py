"""The GPU proof's report (bench/gpu/run.sh ends with it): figures.json completed with every key
(null where nothing was measured), each step's outcome and the targets, and results.md, a section
in the shape of bench/RESULTS.md with each target marked met or not met. Standard library only, so
that it runs whatever the steps before it did.

    python bench/gpu/report.py --figures OUT/figures.json --steps WORK/steps.tsv --out OUT
"""

import argparse
import json
from pathlib import Path

NETS = ("ddpm", "diffusers")
METRICS = ("img_s", "tflop_s", "peak_mib")
SETTINGS32 = ("fp32", "bf16", "bf16-cl", "bf16-cl-compile")
SETTINGS64 = ("bf16", "bf16-cl", "bf16-cl-compile")
KNOBS = {"learned_range": "learned variances (L_hybrid)", "min_snr": "Min-SNR-γ weighting"}  # issue 25, ours only
STEPS = ("train32", "sample", "compiled32", "train64", "cli")
CLI_KEYS = (
    "cli.download.s", "cli.prepare.s", "cli.train.s", "cli.train.steps", "cli.train.img_s", "cli.train.wall_img_s",
    "cli.sample.s", "cli.sample.img_s", "cli.evaluate.s", "cli.evaluate.img_s", "cli.fid", "cli.kid_mean",
    "cli.quality.s", "cli.compare.s",
)  # fmt: skip
DPM = "dpmsolverpp"  # DPM-Solver++ in a key (MLflow's keys take no "+")
STOPPED = {124: "stopped at its time limit", 137: "killed at its time limit"}


def expected_keys() -> list[str]:
    """Every figure the proof measures, in the order the report shows them."""
    keys = [f"train32.{s}.{n}.{m}" for s in SETTINGS32 for n in NETS for m in METRICS]
    keys += [f"train32.bf16.{knob}.{m}" for knob in KNOBS for m in METRICS]
    keys += [f"sample.{chain}.{n}.s" for chain in ("ddpm", "ddim") for n in NETS] + ["sample.ddim.dynamic.s"]
    keys += [f"sample.{DPM}.{n}.s" for n in NETS]  # issue 24: both loops drive our UNet
    keys += [
        f"train64.{s}.{n}.{m}"
        for s in SETTINGS64
        for n in NETS
        for m in METRICS
        if not (n == "diffusers" and "compile" in s)
    ]  # not compiled at 64² (bench/gpu/measure.py)
    return keys + list(CLI_KEYS)


def read_processes(path: Path) -> list[dict]:
    """run.sh's record of its processes: name, the steps each ran, exit status ("skipped": not run), seconds."""
    if not path.is_file():
        return []
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return [{"name": r[0], "steps": r[1].split(","), "status": r[2], "seconds": float(r[3])} for r in rows]


def step_outcomes(recorded: dict, processes: list[dict]) -> dict[str, dict]:
    """Each step's outcome: measure.py's own record, or, where it never wrote one (stopped, not run),
    what happened to the process that was to run it."""
    outcomes = {}
    for step in STEPS:
        if step in recorded:
            outcomes[step] = recorded[step]
            continue
        process = next((p for p in processes if step in p["steps"]), None)
        if process is None:
            outcomes[step] = {"status": "not run", "seconds": 0}
        elif process["status"] == "skipped":
            outcomes[step] = {"status": "skipped: no time left", "seconds": 0}
        else:
            code = int(process["status"])
            outcomes[step] = {"status": STOPPED.get(code, f"not finished (exit status {code})"),
                              "seconds": process["seconds"]}  # fmt: skip
    return outcomes


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def verdict(value: float | None, met: bool | None) -> str:
    return "not measured" if value is None or met is None else "met" if met else "not met"


def targets(f: dict[str, float | None]) -> list[dict]:
    """Issue 7's targets, each with the figure it is judged on and whether it is met (None: not measured)."""
    fast, eager = f["train32.bf16-cl-compile.ddpm.img_s"], f["train32.bf16.diffusers.img_s"]
    compiled = f["train32.bf16-cl-compile.diffusers.img_s"]
    ddpm_speedup = ratio(f["sample.ddpm.diffusers.s"], f["sample.ddpm.ddpm.s"])
    ddim = f["sample.ddim.ddpm.s"]
    memory = {s: (f[f"train32.{s}.ddpm.peak_mib"], f[f"train32.{s}.diffusers.peak_mib"]) for s in SETTINGS32}
    measured = {s: pair for s, pair in memory.items() if None not in pair}
    rows = [
        ("training ≥ 1.6× diffusers' bf16 eager img/s (32², batch 128; ours: bf16, channels_last, compiled)",
         ratio(fast, eager), lambda r: r >= 1.6, "{:.2f}×"),
        ("training ahead of compiled diffusers (both bf16, channels_last, compiled)",
         ratio(fast, compiled), lambda r: r > 1, "{:.2f}×"),
        ("1000-step DDPM sampling of 256 images ≥ 3× faster than diffusers' loop",
         ddpm_speedup, lambda r: r >= 3, "{:.2f}× faster"),
        ("DDIM-50 of 256 images under 1 s", ddim, lambda s: s < 1, "{:.3f} s"),
        ("training peak memory no more than diffusers' (each setting measured)",
         max((ours / theirs for ours, theirs in measured.values()), default=None), lambda r: r <= 1,
         "at most {:.2f}× diffusers'"),
    ]  # fmt: skip
    return [{"target": name, "value": value, "shown": shown.format(value) if value is not None else "",
             "met": None if value is None else bool(test(value))} for name, value, test, shown in rows]  # fmt: skip


def number(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table_rows(f: dict[str, float | None], meta: dict) -> list[str]:
    """The RESULTS.md table: task | precision | ddpm | diffusers | ddpm / diffusers."""
    sizes, dry = meta.get("sizes", {}), meta.get("dry_run", False)

    def precision(setting: str) -> str:
        return "bf16" if "bf16" in setting and not dry else "fp32"

    def described(setting: str, size: int, batch: int, preset: str) -> str:
        parts = setting.split("-")
        extra = "".join(x for word, x in (("cl", ", channels_last"), ("compile", ", compiled")) if word in parts)
        return f"{size}², batch {batch}, {preset}{extra}"

    rows = []
    for prefix, settings, size, batch, preset in (
        ("train32", SETTINGS32, sizes.get("size32"), sizes.get("batch32"), sizes.get("preset32")),
        ("train64", SETTINGS64, sizes.get("size64"), sizes.get("batch64"), sizes.get("preset64")),
    ):
        for metric, task, fmt in (("img_s", "train img/s", ",.1f"), ("tflop_s", "train TFLOP/s", ".1f"),
                                  ("peak_mib", "train peak memory, MiB", ",.0f")):  # fmt: skip
            for setting in settings:
                ours, theirs = (f.get(f"{prefix}.{setting}.{n}.{metric}") for n in NETS)
                if ours is None and theirs is None:
                    continue
                times = ratio(ours, theirs) if metric != "tflop_s" else None
                shown = [number(ours, fmt), number(theirs, fmt), number(times, ".2f") + "×" * bool(times)]
                rows.append(f"| {task}, {described(setting, size, batch, preset)} | {precision(setting)} | "
                            f"{' | '.join(shown)} |")  # fmt: skip
        if prefix == "train32":
            rows += knob_rows(f, described("bf16", size, batch, preset), precision("bf16"))
            rows += sampling_rows(f, sizes, "bf16" if not dry else "fp32")
    return rows + cli_rows(f, sizes)


def knob_rows(f: dict[str, float | None], described: str, precision: str) -> list[str]:
    """Issue 25: our training step with each knob, its img/s against plain ε's at the same setting."""
    plain = f.get("train32.bf16.ddpm.img_s")
    rows = []
    for knob, name in KNOBS.items():
        speed = f.get(f"train32.bf16.{knob}.img_s")
        share = ratio(speed, plain)
        versus = f"{share:.2f}× plain ε's img/s" if share else ""
        rows.append(f"| train img/s, {described}, {name} | {precision} | {number(speed, ',.1f')} | | {versus} |")
    return rows


def sampling_rows(f: dict[str, float | None], sizes: dict, precision: str) -> list[str]:
    """Ours against diffusers' loop: DDPM and DDIM with diffusers' UNet2DModel there, DPM-Solver++ (issue
    24) with our UNet in both loops, so that the loops alone differ; and dynamic thresholding's cost."""
    rows = []
    for chain, steps, name in (("ddpm", sizes.get("sample_steps"), "DDPM"), ("ddim", sizes.get("ddim_steps"), "DDIM"),
                               (DPM, sizes.get("dpm_steps"), "DPM-Solver++")):  # fmt: skip
        ours, theirs = f[f"sample.{chain}.ddpm.s"], f[f"sample.{chain}.diffusers.s"]
        speedup = ratio(theirs, ours)
        faster = f"{speedup:.2f}× faster" if speedup else ""
        note = " (our UNet in both loops; diffusers': DPMSolverMultistepScheduler, eager)" if chain == DPM else ""
        task = f"sample {sizes.get('sample_images')} images, {steps} {name} steps, s{note}"
        rows.append(f"| {task} | {precision} | {number(ours, '.3f')} | {number(theirs, '.3f')} | {faster} |")
    dynamic, default = f["sample.ddim.dynamic.s"], f["sample.ddim.ddpm.s"]
    cost = ratio(dynamic, default)
    task = f"sample {sizes.get('sample_images')} images, {sizes.get('ddim_steps')} DDIM steps, dynamic thresholding, s"
    versus = f"{cost:.2f}× the default clip mode" if cost else ""
    rows.append(f"| {task} | {precision} | {number(dynamic, '.3f')} | | {versus} |")
    return rows


def cli_rows(f: dict[str, float | None], sizes: dict) -> list[str]:
    """The real commands, with their own speed; the fast path is the commands' own "auto"."""
    run = f"{sizes.get('cli_preset')}, {sizes.get('cli_size')}², batch {sizes.get('cli_batch')}"
    train = f"`ddpm train` img/s ({run}, {number(f['cli.train.steps'], '.0f')} steps, compile included)"
    sample = f"`ddpm sample` img/s (DDIM {sizes.get('ddim_steps')}, {sizes.get('cli_samples')} images, start included)"
    points = f"{sizes.get('quality_samples')} DDIM-{sizes.get('quality_steps')} samples"
    quality = f"one point of quality during training, s ({points}, their features, FID and KID: train.eval_*)"
    rows = [
        (train, f["cli.train.img_s"], ",.0f"),
        (sample, f["cli.sample.img_s"], ",.0f"),
        ("`ddpm evaluate` img/s (features of the samples and the real images)", f["cli.evaluate.img_s"], ",.0f"),
        ("FID of that short run, randconv's in a dry run (proves the command, not the model)", f["cli.fid"], ".2f"),
        (quality, f["cli.quality.s"], ".1f"),
    ]
    return [f"| {task} | auto | {number(value, fmt)} | | |" for task, value, fmt in rows]


def markdown(data: dict) -> str:
    f = data["figures"]
    meta = {"device": "no step got as far as naming the machine", **data["meta"]}
    dry = meta.get("dry_run", False)
    title = "dry run on the CPU (tiny sizes, float32, nothing compiled: not GPU figures)" if dry else meta["device"]
    lines = [
        f"## {str(meta.get('date', ''))[:10]} — {title}", "",
        "```", "bash bench/gpu/run.sh" + (" --dry-run" if dry else ""), "```", "",
        f"{meta['device']}; torch {meta.get('torch')} (CUDA {meta.get('cuda')}), "
        f"diffusers {meta.get('diffusers')}, Python {meta.get('python')}; the sizes are meta.sizes of figures.json, "
        "which holds every figure. "
        f"Profile: {meta.get('profile', 'none')} (profile.txt). Inception: {meta.get('inception', 'none')}.", "",
        "| task | precision | ddpm | diffusers | ddpm / diffusers |", "|---|---|---:|---:|---:|",
        *table_rows(f, meta), "",
        "| target (issue 7) | measured | |", "|---|---|---|",
    ]  # fmt: skip
    for target in data["targets"]:
        mark = verdict(target["value"], target["met"]) + (" (dry run)" if dry else "")
        lines.append(f"| {target['target']} | {target['shown']} | {mark} |")
    lines += ["", "| step | outcome | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {o['status']} | {o['seconds']:.0f} |" for name, o in data["steps"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", type=Path, required=True)
    parser.add_argument("--steps", type=Path, required=True, help="run.sh's steps.tsv")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = json.loads(args.figures.read_text()) if args.figures.is_file() else {}
    data.setdefault("meta", {})
    measured = data.get("figures", {})
    data["figures"] = {key: measured.get(key) for key in expected_keys()} | measured
    processes = read_processes(args.steps)
    data["steps"] = step_outcomes(data.get("steps", {}), processes)
    data["processes"] = processes
    data["targets"] = targets(data["figures"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
