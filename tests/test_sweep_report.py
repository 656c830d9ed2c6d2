"""The sweep in the comparison, from hand-made results: each point's mean over the seeds and the
bootstrap SD of that mean, the best sampler per schedule at each NFE (and "within noise", whose rate
for two equal samplers is checked by simulation), and sweep.png's line per schedule × sampler."""

import math
from pathlib import Path

import numpy as np
import pytest

from ddpm import plots
from ddpm.results import RunResult
from ddpm.sweep_report import best_sampler_table, best_samplers, sweep_conditions, sweep_point, within_noise


def swept(name: str, seed: int, ddim: dict, dpm: dict, ddpm: float, sd: bool = True) -> RunResult:
    """A run whose sweep.json holds `ddim` and `dpm` ({NFE: FID}) and DDPM at 50, each point's SD a tenth of it."""
    tables = {"ddim": ddim, "dpmsolver++": dpm, "ddpm": {"50": ddpm}}
    sweep = {"metric": "fid_randconv", "samplers": ["ddim", "dpmsolver++"], "spacing": "trailing", **tables,
             "num_samples": 20}  # fmt: skip
    if sd:
        sweep |= {f"{s}_sd": {k: v / 10 for k, v in t.items()} for s, t in tables.items()}
    return RunResult(name, seed, {}, {}, {}, sweep, None, np.zeros((1, 2)), Path("g"), None)


RESULTS = [
    swept("linear", 0, {"10": 30.0, "20": 20.0}, {"10": 20.0, "20": 19.0}, 15.0),
    swept("linear", 1, {"10": 34.0, "20": 22.0}, {"10": 24.0, "20": 21.0}, 17.0),
    swept("cosine", 0, {"10": 40.0, "20": 24.0}, {"10": 41.0, "20": 30.0}, 25.0),
    swept("cosine", 1, {"10": 44.0, "20": 26.0}, {"10": 43.0, "20": 34.0}, 27.0),
]


def test_a_point_is_the_mean_over_the_seeds_with_the_bootstrap_sd_of_that_mean() -> None:
    steps, fids, sd = sweep_point(RESULTS[:2], "ddim")
    assert steps == ["10", "20"] and fids.tolist() == [32.0, 21.0]
    # two independent seeds: Var(mean) = (SD₀² + SD₁²)/4, each SD a tenth of the point
    assert sd.tolist() == pytest.approx([math.sqrt(3.0**2 + 3.4**2) / 2, math.sqrt(2.0**2 + 2.2**2) / 2], rel=1e-12)
    assert sweep_point([swept("linear", 0, {"10": 3.0}, {"10": 2.0}, 1.0, sd=False)], "ddim")[2] is None


def test_the_best_sampler_per_schedule_and_nfe_and_when_it_is_within_noise() -> None:
    best = best_samplers(RESULTS)
    # linear 20 NFE: DPM-Solver++ 20.0 against DDIM 21.0; SDs of the means √(1.9² + 2.1²)/2 = 1.416 and
    # √(2.0² + 2.2²)/2 = 1.487, of the gap √(1.416² + 1.487²) = 2.05 > 1.0: within noise.
    # cosine 10 NFE: DPM-Solver++ 42.0 = DDIM 42.0, a tie goes to the first of sweep.samplers (a stable sort);
    # cosine 20: DDIM 25.0, 7 below DPM-Solver++, the SD of the gap √(1.769² + 2.267²) = 2.88
    assert best == {
        10: {"linear": ("dpmsolver++", 22.0, False), "cosine": ("ddim", 42.0, True)},
        20: {"linear": ("dpmsolver++", 20.0, True), "cosine": ("ddim", 25.0, False)},
    }
    assert best_sampler_table(RESULTS)[2:6] == [
        "| NFE | linear | cosine |",
        "|---:|---|---|",
        "| 10 | DPM-Solver++ 22.00 | DDIM 42.00 (within noise) |",
        "| 20 | DPM-Solver++ 20.00 (within noise) | DDIM 25.00 |",
    ]
    # without SDs nothing is called within noise; with one sampler there is nothing to choose
    bare = [swept("linear", 0, {"10": 3.0}, {"10": 3.1}, 1.0, sd=False)]
    assert best_samplers(bare) == {10: {"linear": ("ddim", 3.0, False)}}
    bare[0].sweep["samplers"] = ["ddim"]
    assert best_samplers(bare) == {} and best_sampler_table(bare) == []


def test_two_equal_samplers_are_called_within_noise_68_percent_of_the_time() -> None:
    """The report's words: a gap below the SD of the difference, which two samplers of the same true FID
    show with probability P(|Z| < 1) = erf(1/√2) = 0.6827, whatever their SDs."""
    rng = np.random.default_rng(0)
    draws, sd_a, sd_b = 20_000, 1.5, 0.5
    a, b = 30 + rng.normal(0, sd_a, draws), 30 + rng.normal(0, sd_b, draws)
    called = np.mean([within_noise(min(x, y), sd_a, max(x, y), sd_b) for x, y in zip(a, b, strict=True)])
    assert abs(called - math.erf(1 / math.sqrt(2))) < 4 * math.sqrt(0.683 * 0.317 / draws)


def test_the_sweep_picture_has_a_line_per_schedule_and_sampler_with_its_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.update(fig=fig))
    plots.plot_sweep(RESULTS, tmp_path / "sweep.png")
    [ax] = drawn["fig"].axes
    lines = {c.get_label(): c for c in ax.containers}  # each errorbar: its line, caps and bars
    assert list(lines) == ["linear, DDIM", "linear, DPM-Solver++", "linear, DDPM (50 steps)", "cosine, DDIM",
                           "cosine, DPM-Solver++", "cosine, DDPM (50 steps)"]  # fmt: skip
    line = lines["cosine, DPM-Solver++"].lines[0]
    assert line.get_xdata().tolist() == [10, 20] and line.get_ydata().tolist() == [42.0, 32.0]
    assert line.get_linestyle() == "--" and lines["cosine, DDIM"].lines[0].get_linestyle() == "-"
    colours = {name: c.lines[0].get_color() for name, c in lines.items()}
    assert colours["linear, DDIM"] == colours["linear, DPM-Solver++"] == colours["linear, DDPM (50 steps)"]
    assert colours["linear, DDIM"] != colours["cosine, DDIM"]  # colour: the schedule; line style: the sampler
    [bars] = lines["cosine, DPM-Solver++"].lines[2]  # the error bars: ± √(4.1² + 4.3²)/2 and √(3.0² + 3.4²)/2
    spans = [segment[1, 1] - segment[0, 1] for segment in bars.get_segments()]
    assert spans == pytest.approx([math.sqrt(4.1**2 + 4.3**2), math.sqrt(3.0**2 + 3.4**2)], rel=1e-12)
    assert ax.get_xlabel() == "network evaluations (NFE; trailing spacing)"


@pytest.mark.parametrize(
    ("samplers", "clip_mode", "warned"),
    [(["ddim", "dpmsolver++"], "x0", True), (["ddim", "dpmsolver++"], "recompute", True),
     (["ddim", "dpmsolver++"], "dynamic", False), (["ddim", "dpmsolver++"], "none", False), (["ddim"], "x0", False)],
)  # fmt: skip
def test_the_sweep_sentence_says_how_clipping_treats_dpm_solver(samplers: list, clip_mode: str, warned: bool) -> None:
    sweep = {"num_samples": 100, "samplers": samplers, "eta": 0.0, "spacing": "trailing", "variance": "fixed_large",
             "clip_mode": clip_mode, "seed": 0}  # fmt: skip
    said = sweep_conditions(sweep)
    assert said.startswith("Sweep: N = 100 samples at each number of network evaluations (NFE), DDIM (η = 0.0)")
    kept = f"trailing spacing, and DDPM at full length (fixed_large variance), x_0 kept in [-1, 1] by {clip_mode}, "
    assert kept in said
    assert ("compare it with sample.clip_mode=dynamic too" in said) == warned
