from pathlib import Path

import numpy as np
from conftest import invoke
from PIL import Image

from ddpm.data import synthetic_flowers
from ddpm.plots import STRIP_STEPS, noised_strip
from ddpm.verdicts import differences, standard_error


def test_the_strip_goes_from_the_image_to_noise_and_rows_differ_only_by_schedule() -> None:
    image = synthetic_flowers(1, 16)[0]
    strip, steps = noised_strip(["linear", "cosine"], 1000, image)
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


def row(schedule: str, seeds: str = "0", **numbers: float) -> dict:
    return {"schedule": schedule, "seeds": seeds, "kid_mean": 0.01, "kid_std": 0.002, **numbers}


def test_a_difference_beyond_twice_the_combined_standard_error_is_called_real_and_one_within_it_noise() -> None:
    # one seed: FID judged by its bootstrap intervals, the half-width of each 1.96 standard errors
    a = row("linear", fid=10.0, fid_ci_low=10.0 - 1.959964, fid_ci_high=10.0 + 1.959964, final_loss=0.05)
    b = row(
        "cosine", fid=13.0, fid_ci_low=13.0 - 1.959964, fid_ci_high=13.0 + 1.959964, final_loss=0.04, kid_mean=0.012
    )
    said = differences([a, b])
    assert said[0] == (
        "- fid: linear is lower than cosine by 3, 2.1 combined standard errors: a real difference "
        "(judged by FID's bootstrap interval, sampling noise only)"
    )
    assert said[1] == (  # KID: judged by the spread of KID's subsets
        "- kid_mean: linear is lower than cosine by 0.002, within noise (0.7 combined standard errors) "
        "(judged by the spread over KID's subsets)"
    )
    assert len(said) == 2  # the loss is not judged: each schedule sets it another task
    b["fid"] = b["fid_ci_low"] + 1.959964 - 0.2  # 2.8: under 2 · √2
    assert "within noise (2.0 combined standard errors)" in differences([a, b])[0]


def test_over_seeds_the_standard_error_is_the_seeds_spread_over_the_root_of_their_number() -> None:
    a = row("linear", "0 1 2 3", nll_bpd=3.0, nll_bpd_std_seeds=0.2, nll_bpd_sem=0.001)
    assert standard_error(a, "nll_bpd") == (0.1, "the spread over 4 seeds")  # not the held-out images' 0.001
    del a["nll_bpd_std_seeds"]
    assert standard_error(a, "nll_bpd") == (0.001, "the spread over the held-out images")
    assert standard_error(a, "final_loss") is None


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
    results = [RunResult(n, seed, {}, {}, {}, None, None, np.zeros((1, 2)), Path("g"), None, q) for n, seed, q in runs]
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.update(fig=fig))
    plots.plot_quality(results, tmp_path / "quality.png")
    fid_axes, kid_axes = drawn["fig"].axes
    assert fid_axes.get_ylabel() == "fid_randconv" and kid_axes.get_ylabel() == "kid_randconv"
    lines = {line.get_label(): line.get_ydata().tolist() for line in fid_axes.lines}
    assert lines == {"linear": [40.0, 30.0], "cosine": [35, 20]}  # a run without points: no line
    assert [line.get_ydata().tolist() for line in kid_axes.lines] == [[0.5, 0.25], [0.4, 0.2]]
