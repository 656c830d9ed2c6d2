"""The sweep in the comparison (`ddpm compare`): each schedule's FID against the number of network
evaluations (NFE) per sampler, the mean over the seeds ± the bootstrap SD of that mean; which sampler
is best for each schedule at each NFE; and the sweep's conditions in a sentence.
"""

import numpy as np

from ddpm.results import RunResult, by_schedule
from ddpm.spacing import SAMPLER_NAMES


def sweep_point(runs: list[RunResult], sampler: str) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """`sampler`'s NFE (sweep.json's keys), its FIDs' mean over the seeds' `runs`, and the bootstrap
    SD of that mean where every run measured one: sampling noise only, √(Σ SD²)/k for k independent
    seeds; None without."""
    steps = list(runs[0].sweep[sampler])
    fids = np.mean([[r.sweep[sampler][k] for k in steps] for r in runs], axis=0)
    if not all(f"{sampler}_sd" in r.sweep for r in runs):
        return steps, fids, None
    variances = [[r.sweep[f"{sampler}_sd"][k] ** 2 for k in steps] for r in runs]
    return steps, fids, np.sqrt(np.sum(variances, axis=0)) / len(runs)


def swept(results: list[RunResult]) -> dict[str, list[RunResult]]:
    """The runs of each schedule whose every seed was swept."""
    return {name: runs for name, runs in by_schedule(results).items() if all(r.sweep for r in runs)}


def within_noise(best: float, best_sd: float | None, other: float, other_sd: float | None) -> bool:
    """Whether two samplers' FIDs differ by less than the SD of their difference, √(SD₁² + SD₂²) (the
    two are drawn independently): a gap two equal samplers show 68 % of the time. False without SDs."""
    if best_sd is None or other_sd is None:
        return False
    return abs(other - best) < float(np.hypot(best_sd, other_sd))


def best_samplers(results: list[RunResult]) -> dict[int, dict[str, tuple[str, float, bool]]]:
    """NFE → schedule → (the sampler of the lowest mean FID, that FID, whether the runner-up is
    `within_noise` of it), over the swept schedules of two or more samplers."""
    table: dict[int, dict[str, tuple[str, float, bool]]] = {}
    for name, runs in swept(results).items():
        samplers = runs[0].sweep["samplers"]
        if len(samplers) < 2:
            continue
        points = {s: _by_nfe(runs, s) for s in samplers}
        for nfe in points[samplers[0]]:
            ranked = sorted(samplers, key=lambda s: points[s][nfe][0])
            (fid, sd), (other, other_sd) = points[ranked[0]][nfe], points[ranked[1]][nfe]
            table.setdefault(nfe, {})[name] = (ranked[0], fid, within_noise(fid, sd, other, other_sd))
    return dict(sorted(table.items()))


def _by_nfe(runs: list[RunResult], sampler: str) -> dict[int, tuple[float, float | None]]:
    """`sweep_point` as NFE → (mean FID, its SD or None)."""
    steps, fids, sd = sweep_point(runs, sampler)
    return {int(k): (float(fids[i]), None if sd is None else float(sd[i])) for i, k in enumerate(steps)}


def best_sampler_table(results: list[RunResult]) -> list[str]:
    """The markdown table of `best_samplers`: a row per NFE, a column per schedule; none where no
    schedule was swept with two samplers."""
    best = best_samplers(results)
    if not best:
        return []
    names = list(dict.fromkeys(name for row in best.values() for name in row))
    lines = [
        "The best sampler for each schedule at each NFE (lowest mean FID_N; *within noise*: the runner-up is "
        "less than the SD of the two samplers' difference, √(SD₁² + SD₂²), behind, a gap two equal samplers "
        "show 68 % of the time):",
        "",
        "| NFE | " + " | ".join(names) + " |",
        "|---:|" + "---|" * len(names),
    ]
    for nfe, row in best.items():
        cells = [_best(*row[name]) if name in row else "–" for name in names]
        lines.append(f"| {nfe} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _best(sampler: str, fid: float, noise: bool) -> str:
    return f"{SAMPLER_NAMES[sampler]} {fid:.2f}" + (" (within noise)" if noise else "")


def sweep_conditions(sweep: dict) -> str:
    """sweep.json's settings in a sentence (compare has checked that every run's are the same)."""
    spread = f", ± its bootstrap SD over {sweep['bootstrap']} resamples" if "bootstrap" in sweep else ""
    samplers = " and ".join(SAMPLER_NAMES[s] + (f" (η = {sweep['eta']})" if s == "ddim" else "")
                            for s in sweep["samplers"])  # fmt: skip
    said = (f"Sweep: N = {sweep['num_samples']:,} samples at each number of network evaluations (NFE){spread}, "
            f"{samplers} with {sweep['spacing']} spacing, and DDPM at full length ({sweep['variance']} variance), "
            f"x_0 kept in [-1, 1] by {sweep['clip_mode']}, seed {sweep['seed']}.")  # fmt: skip
    if "dpmsolver++" in sweep["samplers"] and sweep["clip_mode"] in CLIPPED:
        said += CLIPPED_SOLVER
    return said


# DPM-Solver++ steps with x̂_0 alone, so clipping it acts as DDIM's recompute does (measured: README, Samplers)
CLIPPED = ("x0", "recompute")
CLIPPED_SOLVER = (" DPM-Solver++ steps with x_0 alone, so clipping it makes the solver act as DDIM with recompute "
                  "does, which saturates an unconverged model's samples: compare it with "
                  "sample.clip_mode=dynamic too (README, Samplers).")  # fmt: skip
