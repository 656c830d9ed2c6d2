from pathlib import Path

import numpy as np
from conftest import invoke
from PIL import Image

from ddpm.config import Config
from ddpm.data import synthetic_flowers
from ddpm.plots import STRIP_STEPS, noised_strip, process_specs
from ddpm.report import legend, markdown_table, timing_table, verdicts_section
from ddpm.results import RunResult
from ddpm.verdicts import ONE_SEED, judge


def test_the_strip_goes_from_the_image_to_noise_and_rows_differ_only_by_schedule() -> None:
    image = synthetic_flowers(1, 16)[0]
    strip, steps = noised_strip(process_specs(["linear", "cosine"], Config()), image)
    assert strip.shape == (2 * 16, STRIP_STEPS * 16, 3) and strip.dtype == np.uint8
    assert steps[0] == 0 and steps[-1] == 999
    first = strip[:16, :16].astype(int)  # linear at t = 0: alphā = 1 − 1e-4, almost the image
    assert np.abs(first - image.transpose(1, 2, 0)).mean() < 2
    last_linear, last_cosine = strip[:16, -16:].astype(int), strip[16:, -16:].astype(int)
    assert np.abs(last_linear - last_cosine).mean() < 2  # both are (nearly) the same pure noise
    middle = STRIP_STEPS // 2 * 16
    assert np.abs(strip[:16, middle : middle + 16].astype(int) - strip[16:, middle : middle + 16]).mean() > 10


def test_schedules_command_draws_both_pictures(tmp_path: Path) -> None:
    result = invoke("schedules", "linear", "sigmoid", "--out", "pics", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "pics" / "schedules.png") as picture:
        assert picture.size == (1000, 400)
    with Image.open(tmp_path / "pics" / "forward.png") as picture:
        assert picture.size == (1250, 320)
    bad = invoke("schedules", "cosin", cwd=tmp_path)
    assert bad.exit_code == 2
    assert bad.stderr.strip() == (
        "ddpm: error: unknown beta schedule 'cosin'; expected one of: linear, cosine, quadratic, sigmoid"
    )


def fake(name: str, seed: int, draws: dict, **evaluation: float) -> RunResult:
    scores = {"num_samples": 50, "bootstrap": 4, "nll_images": 3, **evaluation}
    return RunResult(name, seed, {}, {}, scores, None, None, np.zeros((1, 2)), Path("g"), None, draws)


def test_with_one_seed_nothing_is_called_a_real_difference_without_saying_it_is_sampling_noise_only() -> None:
    a = {"fid": np.array([10.0, 10.4, 9.8, 10.1]), "nll_bpd": np.array([3.0, 3.2, 2.9])}
    b = {"fid": np.array([12.0, 12.1, 12.0, 12.2]), "nll_bpd": np.array([3.0, 3.3, 2.9])}
    runs = [fake("linear", 0, a, fid=10.0, kid_mean=0.01, nll_bpd=3.1),
            fake("cosine", 0, b, fid=12.0, kid_mean=0.02, nll_bpd=3.2)]  # fmt: skip
    verdicts = judge(runs, "nll")
    text = "\n".join(verdicts_section(verdicts, "nll", "fid"))
    assert "The 2 tests are one family, corrected by Holm–Bonferroni at a family-wise error rate α = 0.05" in text
    assert "(compare.primary: nll, the metric nll_bpd), is listed first" in text
    assert f"**One training seed**: a real difference below is {ONE_SEED}." in text
    table = [line for line in text.splitlines() if line.startswith("| linear − cosine")]
    fid = next(v for v in verdicts if v.metric == "fid")
    assert table == [
        "| linear − cosine | **nll_bpd** (primary) | -0.0333 | 0.0333 | 0.423 | 0.423 | paired t over 3 held-out "
        "images | within noise |",
        f"| linear − cosine | fid | -2 | {fid.se:.3g} | {fid.p:.3g} | {fid.p_holm:.3g} | paired bootstrap over 4 "
        f"resamples | linear lower, {ONE_SEED} |",
        "| linear − cosine | kid_mean | -0.01 | – | – | – | – | not judged: one seed and no kid_mean in resamples.npz "
        "for linear (run `ddpm evaluate` again, or add seeds) |",
    ]
    for line in text.splitlines():  # "a real difference" only ever with the one-seed wording
        assert "a real difference" not in line or ONE_SEED in line, line
    assert verdicts_section([], "fid", "fid") == ["One schedule: nothing to compare."]


def test_the_table_labels_fid_with_its_n_and_each_estimate_with_its_spread() -> None:
    one = {"schedule": "linear", "seeds": "0", "num_samples": 10000, "fid": 12.345, "fid_sd": 0.2,
           "fid_inf": 10.0, "fid_inf_sd": 0.5, "fid_inf_ci_low": 9.02, "fid_inf_ci_high": 10.98, "kid_mean": 0.01234,
           "kid_se": 0.00051, "nll_bpd": 3.4567, "nll_bpd_sem": 0.0123, "final_loss": 0.031, "steps": 100.0,
           "train_seconds": 3725.0, "images_per_second": 99.6}  # fmt: skip
    lines = markdown_table([one]).splitlines()
    assert lines[0] == (
        "| schedule | seeds | fid (N = 10,000) ± sd | fid_inf [95 %] | kid_mean ± SE | NLL (bits/dim) ± SE "
        "| final loss |"
    )
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|"
    assert lines[2] == (
        "| linear | 0 | 12.35 ± 0.20 | 10.00 [9.02, 10.98] | 0.0123 ± 0.0005 | 3.457 ± 0.012 | 0.0310 |"
    )
    # the wall clock apart, as this machine's: 3725 s = 1 h 02 min 05 s, 99.6 img/s
    assert timing_table([one, one | {"schedule": "cosine", "train_seconds": 59.0, "images_per_second": 20.4}]) == (
        "This machine's timing, not a property of the schedule (other jobs on the machine change it; not compared):\n"
        "\n"
        "| schedule | seeds | steps | training time | img/s |\n"
        "|---|---|---:|---:|---:|\n"
        "| linear | 0 | 100 | 1 h 02 min | 100 |\n"
        "| cosine | 0 | 100 | 0 min 59 s | 20 |"
    )
    seeds = one | {"seeds": "0 1", "fid_std_seeds": 1.5, "fid_inf_std_seeds": 2.0}  # several seeds: their spread
    table = markdown_table([seeds]).splitlines()
    assert table[0].startswith("| schedule | seeds | fid (N = 10,000) ± sd over seeds | fid_inf ± sd over seeds |")
    assert table[2].startswith("| linear | 0 1 | 12.35 ± 1.50 | 10.00 ± 2.00 |")
    words = legend([one])
    assert "**fid (N)**: the Fréchet distance" in words and "FID_∞ (Chong & Forsyth 2020)" in words
    assert "With several seeds, ± is the standard deviation over the seeds." in words


def test_quality_is_read_from_each_run_where_measured_and_drawn_a_line_per_schedule_and_seed(
    tmp_path: Path, monkeypatch
) -> None:
    import ddpm.plots as plots
    from ddpm.errors import UserError
    from ddpm.layout import RunFolder
    from ddpm.results import RunFiles, RunResult

    def read(text: str | None) -> dict | None:
        folder = RunFolder(tmp_path / "run")
        folder.path.mkdir(exist_ok=True)
        folder.quality.unlink(missing_ok=True)
        if text is not None:
            folder.quality.write_text(text)
        return RunFiles(folder, "linear", 0).quality()

    assert read(None) is None  # an earlier ddpm's run
    assert read("step,kid_randconv,fid_randconv\n") is None  # train.eval_every: 0
    linear = read("step,kid_randconv,fid_randconv\n5,0.5,40.0\n10,0.25,30.0\n")
    assert list(linear) == ["step", "kid_randconv", "fid_randconv"]
    assert linear["step"].tolist() == [5, 10] and linear["fid_randconv"].tolist() == [40.0, 30.0]
    for bad in ("step,kid,fid\n5,0.5\n", "epoch,kid,fid\n5,0.5,40\n", "step,kid,fid\n5,x,40\n"):
        try:
            read(bad)
        except UserError as e:
            assert str(e).endswith("expected rows of step,kid,fid; run `ddpm train --beta-schedule linear` again")
        else:
            raise AssertionError(bad)

    cosine = {"step": np.array([5.0, 10.0]), "kid_randconv": np.array([0.4, 0.2]), "fid_randconv": np.array([35, 20])}
    runs = (("linear", 0, linear), ("cosine", 0, cosine), ("cosine", 1, None))
    results = [
        RunResult(n, seed, {}, {}, {}, None, None, np.zeros((1, 2)), Path("g"), None, quality=q) for n, seed, q in runs
    ]
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.update(fig=fig))
    plots.plot_quality(results, tmp_path / "quality.png")
    fid_axes, kid_axes = drawn["fig"].axes
    assert fid_axes.get_ylabel() == "fid_randconv" and kid_axes.get_ylabel() == "kid_randconv"
    lines = {line.get_label(): line.get_ydata().tolist() for line in fid_axes.lines}
    assert lines == {"linear": [40.0, 30.0], "cosine": [35, 20]}  # a run without points: no line
    assert [line.get_ydata().tolist() for line in kid_axes.lines] == [[0.5, 0.25], [0.4, 0.2]]
