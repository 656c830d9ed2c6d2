"""Training's numbers and files, and sampling from the session's trained model."""

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU, tiny_config
from PIL import Image

from ddpm.checkpoint import load_trained
from ddpm.errors import UserError
from ddpm.sample import generate, sample
from ddpm.train import train

pytestmark = pytest.mark.slow  # every test trains, or samples the session's trained model


def test_training_the_tiny_model_lowers_the_loss(flowers16: Path, tmp_path: Path) -> None:
    config = tiny_config(train={"steps": 120, "log_every": 20, "checkpoint_every": 120, "lr": 3e-3})
    result = train(config, flowers16, tmp_path, CPU, progress=False)
    first, last = result.losses[0][1], result.losses[-1][1]
    assert [step for step, _ in result.losses] == [20, 40, 60, 80, 100, 120]
    assert last < 0.5 * first, result.losses


def test_training_is_deterministic_for_a_seed(flowers16: Path, tmp_path: Path, trained: Path) -> None:
    again = train(tiny_config(), flowers16, tmp_path / "again", CPU, progress=False).losses
    other = train(tiny_config(train={"seed": 1}), flowers16, tmp_path / "other", CPU, progress=False).losses
    losses = json.loads((trained / "train.json").read_text())["final_loss"]
    assert again[-1][1] == losses and again != other


def test_training_writes_its_numbers_and_loss_curve_and_counts_time_across_resumes(
    flowers16: Path, tmp_path: Path
) -> None:
    first = train(tiny_config(train={"steps": 10}), flowers16, tmp_path, CPU, progress=False)
    result = train(tiny_config(), flowers16, tmp_path, CPU, progress=False)  # resumes at 10, goes on to 20
    assert result.resumed_from == 10
    assert result.seconds < result.total_seconds <= first.total_seconds + result.seconds  # 10 steps' time carried over
    assert json.loads((tmp_path / "train.json").read_text()) == result.metrics()
    assert result.metrics()["steps"] == 20 and result.metrics()["final_loss"] == result.losses[-1][1]
    lines = (tmp_path / "losses.csv").read_text().splitlines()
    assert lines[0] == "step,loss"
    assert [(int(s), round(float(v), 6)) for s, v in (line.split(",") for line in lines[1:])] == [
        (step, round(loss, 6)) for step, loss in result.losses
    ]
    assert [step for step, _ in result.losses] == [10, 20]


def test_image_size_mismatch_is_a_clear_error(flowers16: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="images are 16×16, but data.image_size is 32"):
        train(tiny_config(data={"image_size": 32}), flowers16, tmp_path, CPU, progress=False)
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_samples_have_the_right_shape_and_repeat_for_a_seed(trained: Path, sampler: str) -> None:
    model = load_trained(trained / "model.pt", CPU)
    cfg = tiny_config(sample={"sampler": sampler, "steps": 10, "num_samples": 5, "batch_size": 2}).sample
    images, frames = generate(model.model, model.diffusion, cfg, 16, CPU, progress=False)
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 16, 16)
    assert torch.equal(images, generate(model.model, model.diffusion, cfg, 16, CPU, progress=False)[0])
    other, _ = generate(model.model, model.diffusion, cfg.model_copy(update={"seed": 1}), 16, CPU, progress=False)
    assert not torch.equal(images, other)
    # the progression follows the first batch's samples from x_T to x_0, which is the final sample
    assert len(frames) == (40 if sampler == "ddpm" else 11) and frames[0].shape == (2, 3, 16, 16)
    assert torch.equal(frames[-1], images[:2])


def test_the_progress_bar_moves_with_every_denoising_step(trained: Path, capsys) -> None:
    model = load_trained(trained / "model.pt", CPU)
    cfg = tiny_config(sample={"sampler": "ddim", "steps": 7, "num_samples": 5, "batch_size": 3}).sample

    def slow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # slower than tqdm's 0.1 s between redraws
        time.sleep(0.15)
        return model.model(x, t)

    generate(slow, model.diffusion, cfg, 16, CPU, progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "0/14 [" in bar and "14/14 [" in bar and "images=5/5" in bar  # 7 steps × 2 batches, not images
    assert len({line.split("|")[0] for line in bar.splitlines() if "/14 [" in line}) > 3  # it moved in between


def test_sample_writes_the_array_a_legible_grid_and_where_the_samples_came_from(trained: Path, tmp_path: Path) -> None:
    cfg = tiny_config(sample={"num_samples": 6}).sample
    images, model = sample(cfg, trained / "model.pt", tmp_path, CPU, progress=False)
    assert np.array_equal(np.load(tmp_path / "samples.npy"), images.numpy())
    # 3 columns × 2 rows of 16 px with 2 px gaps is 56 px wide, enlarged ×10 (nearest) to reach 512 px
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (560, 380)
        pixels = np.asarray(grid)
    assert np.array_equal(pixels[20:30, 20:30], np.broadcast_to(pixels[20, 20], (10, 10, 3)))  # one source pixel
    # x_T ... x_0 (5 DDIM steps: 6 columns), a row for each of the first batch's 4 samples
    with Image.open(tmp_path / "progression.png") as picture:
        assert picture.size == (5 * (2 + 6 * 18), 5 * (2 + 4 * 18))  # enlarged ×5 to reach 512 px
    with Image.open(tmp_path / "progression.gif") as gif:
        assert gif.n_frames == 6 and gif.size[0] >= 512
    origin = json.loads((tmp_path / "samples.json").read_text())
    assert origin["checkpoint"] == str(trained / "model.pt") and origin["run_dir"] == str(trained)
    assert origin["checkpoint_sha256"] == hashlib.sha256((trained / "model.pt").read_bytes()).hexdigest()  # the sweep's
    assert (origin["schedule"], origin["timesteps"], origin["step"]) == ("linear", 50, 20)
    assert origin["sample"] == cfg.model_dump(mode="json") and model.step == 20


def test_tampered_or_missing_checkpoints_are_refused(trained: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "model.pt").read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated.pt: not a valid ddpm checkpoint"):
        load_trained(truncated, CPU)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_trained(tmp_path / "none.pt", CPU)

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "step": 0, "x": Payload()}, evil)
    with pytest.raises(UserError) as error:
        load_trained(evil, CPU)
    assert "evil.pt: not a valid ddpm checkpoint" in str(error.value) and "weights_only" not in str(error.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"sampler": "ddim", "steps": 51},
            "sample.steps: expected at most the model's 50 timesteps \\(.*model.pt\\), got 51",
        ),
        ({"sampler": "dpmsolver++", "steps": 51}, "sample.steps: expected at most the model's 50 timesteps"),
        # 50 steps of T = 50 would put two of DPM-Solver++'s linspace points on one timestep
        (
            {"sampler": "dpmsolver++", "steps": 50},
            "sample.spacing .dpmsolver.., .*model.pt.: linspace repeats timesteps "
            "at 50 steps of T = 50; take fewer steps",
        ),
        (
            {"sampler": "dpmsolver++", "steps": 50, "spacing": "leading"},
            "leading repeats timesteps at 50 steps of T = 50",
        ),
    ],
)
def test_steps_a_model_cannot_take_are_a_clear_error(
    trained: Path, tmp_path: Path, settings: dict, message: str
) -> None:
    cfg = tiny_config(sample=settings).sample
    with pytest.raises(UserError, match=message):
        sample(cfg, trained / "model.pt", tmp_path, CPU, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_spacing_decides_the_timesteps_the_model_sees(trained: Path) -> None:
    model = load_trained(trained / "model.pt", CPU)
    seen: list[int] = []

    def watched(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(int(t[0]))
        return model.model(x, t)

    shown = {("ddim", "trailing"): [49, 39, 29, 19, 9], ("dpmsolver++", "leading"): [40, 32, 24, 16, 8],
             ("ddim", "quadratic"): [40, 22, 10, 2, 0]}  # fmt: skip
    for (sampler, spacing), expected in shown.items():
        seen.clear()
        cfg = tiny_config(sample={"sampler": sampler, "steps": 5, "spacing": spacing, "num_samples": 1}).sample
        generate(watched, model.diffusion, cfg, 16, CPU, progress=False)
        assert seen == expected, (sampler, spacing)


class FakeTracker:
    """Records what the loop tells its tracker."""

    def __init__(self) -> None:
        self.started: list[str | None] = []
        self.logs: list[tuple[int, list[str]]] = []
        self.images: list[tuple[int, tuple, np.dtype]] = []
        self.finished: list[list[str]] = []

    def start(self, run_id: str | None) -> str:
        self.started.append(run_id)
        return run_id or "run-1"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.logs.append((step, sorted(metrics)))

    def log_images(self, step: int, grid: np.ndarray) -> None:
        self.images.append((step, grid.shape, grid.dtype))

    def finish(self, result: object, files: list[Path]) -> None:
        self.finished.append([f.name for f in files])


def test_the_tracker_hears_the_log_and_sample_grids_and_the_run_is_unchanged(
    flowers16: Path, tmp_path: Path, trained: Path
) -> None:
    tracker = FakeTracker()
    config = tiny_config(train={"sample_every": 7})  # grids between read-backs too
    tracked = train(config, flowers16, tmp_path, CPU, progress=False, tracker=tracker)
    plain = json.loads((trained / "train.json").read_text())
    assert tracked.losses[-1][1] == plain["final_loss"]  # the previews draw on their own generator
    assert tracker.started == [None]
    keys = ["train/images_per_second", "train/loss", "train/lr"]
    assert tracker.logs == [(10, keys), (20, keys)]
    assert tracker.images == [(step, (518, 518, 3), np.uint8) for step in (7, 14, 20)]  # 4×4 grids of 16×16, ×7
    assert tracker.finished == [["model.pt", "train.json", "losses.csv", "quality.csv"]]

    resumed = FakeTracker()  # the checkpoint hands its run back, so a resumed run logs to the same one
    longer = tiny_config(train={"steps": 30, "sample_every": 10})
    train(longer, flowers16, tmp_path, CPU, progress=False, tracker=resumed)
    assert resumed.started == ["run-1"] and [s for s, _ in resumed.logs] == [30]


def test_restart_if_changed_starts_over_only_when_the_run_would_differ(flowers16: Path, tmp_path: Path, capsys) -> None:
    from ddpm.data import save_images, synthetic_flowers

    def run(config, data=flowers16):  # noqa: ANN001, ANN202
        return train(config, data, tmp_path, CPU, progress=False, restart_if_changed=True)

    train(tiny_config(train={"steps": 10}), flowers16, tmp_path, CPU, progress=False)
    assert run(tiny_config(train={"log_every": 5})).resumed_from == 10  # more steps, other bookkeeping: resume
    assert run(tiny_config(train={"lr": 5e-4})).resumed_from == 0
    assert "was made with other settings (train.lr (0.001 → 0.0005)); starting over" in capsys.readouterr().err
    other = tmp_path / "other.npy"
    save_images(other, synthetic_flowers(8, 16, seed=5))
    assert run(tiny_config(train={"lr": 5e-4}), other).resumed_from == 0
    assert "(the prepared images)" in capsys.readouterr().err
    assert run(tiny_config(train={"steps": 10, "lr": 5e-4}), other).resumed_from == 0  # fewer steps than done
    assert "train.steps (20 done, 10 asked for)" in capsys.readouterr().err
