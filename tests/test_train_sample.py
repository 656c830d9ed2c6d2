import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.checkpoint import build_diffusion, load_checkpoint
from ddpm.data import save_images, synthetic_flowers
from ddpm.errors import UserError
from ddpm.sample import generate, sample
from ddpm.train import train

CPU = torch.device("cpu")


@pytest.mark.slow
def test_training_the_tiny_model_lowers_the_loss(flowers16: Path, tmp_path: Path, tiny_config) -> None:
    config = tiny_config(train={"steps": 300, "log_every": 50, "lr": 2e-3})
    result = train(config, flowers16, tmp_path, CPU, progress=False)
    first, last = result.losses[0][1], result.losses[-1][1]
    assert [step for step, _ in result.losses] == [50, 100, 150, 200, 250, 300]
    assert last < 0.5 * first, result.losses
    model, saved, step = load_checkpoint(result.checkpoint, CPU)
    assert saved == config and step == 300


def test_training_is_deterministic_for_a_seed(flowers16: Path, tmp_path: Path, tiny_config) -> None:
    runs = [train(tiny_config(), flowers16, tmp_path / str(i), CPU, progress=False).losses for i in range(2)]
    other = train(tiny_config(train={"seed": 1}), flowers16, tmp_path / "other", CPU, progress=False).losses
    assert runs[0] == runs[1] and runs[0] != other


def test_training_writes_its_numbers_and_loss_curve_and_counts_time_across_resumes(
    flowers16: Path, tmp_path: Path, tiny_config
) -> None:
    first = train(tiny_config(train={"steps": 10, "checkpoint_every": 10}), flowers16, tmp_path, CPU, progress=False)
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


def test_image_size_mismatch_is_a_clear_error(flowers16: Path, tmp_path: Path, tiny_config) -> None:
    with pytest.raises(UserError, match="images are 16×16, but data.image_size is 32"):
        train(tiny_config(data={"image_size": 32}), flowers16, tmp_path, CPU, progress=False)
    assert not (tmp_path / "model.pt").exists()


@pytest.fixture(scope="module")
def checkpoint(flowers16: Path, tmp_path_factory: pytest.TempPathFactory, tiny_config) -> Path:
    return train(tiny_config(), flowers16, tmp_path_factory.mktemp("run"), CPU, progress=False).checkpoint


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samples_have_the_right_shape_and_repeat_for_a_seed(checkpoint: Path, sampler: str, tiny_config) -> None:
    model, config, _ = load_checkpoint(checkpoint, CPU)
    diffusion = build_diffusion(config)
    cfg = tiny_config(sample={"sampler": sampler, "ddim_steps": 10, "num_samples": 5, "batch_size": 2}).sample
    images, frames = generate(model, diffusion, cfg, 16, CPU, progress=False)
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 16, 16)
    assert torch.equal(images, generate(model, diffusion, cfg, 16, CPU, progress=False)[0])
    other, _ = generate(model, diffusion, cfg.model_copy(update={"seed": 1}), 16, CPU, progress=False)
    assert not torch.equal(images, other)
    # the progression follows the first batch's samples from x_T to x_0, which is the final sample
    assert len(frames) == (40 if sampler == "ddpm" else 11) and frames[0].shape == (2, 3, 16, 16)
    assert torch.equal(frames[-1], images[:2])


def test_sample_writes_the_array_and_a_grid(checkpoint: Path, tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(sample={"sampler": "ddim", "ddim_steps": 5, "num_samples": 6}).sample
    images = sample(cfg, checkpoint, tmp_path, CPU, progress=False)
    assert np.array_equal(np.load(tmp_path / "samples.npy"), images.numpy())
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (2 + 3 * 18, 2 + 2 * 18)  # 3 columns × 2 rows of 16 px, 2 px padding
    # x_T ... x_0 (5 DDIM steps: 6 columns), a row for each of the first batch's 4 samples
    with Image.open(tmp_path / "progression.png") as picture:
        assert picture.size == (2 + 6 * 18, 2 + 4 * 18)
    with Image.open(tmp_path / "progression.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (2 + 4 * 18, 2 + 18)


def test_tampered_or_missing_checkpoints_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated.pt: not a valid ddpm checkpoint"):
        load_checkpoint(truncated, CPU)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt", CPU)

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "step": 0, "x": Payload()}, evil)
    with pytest.raises(UserError, match="evil.pt: not a valid ddpm checkpoint"):
        load_checkpoint(evil, CPU)
    assert not (tmp_path / "pwned").exists()


def test_more_ddim_steps_than_timesteps_is_a_clear_error(checkpoint: Path, tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(sample={"sampler": "ddim", "ddim_steps": 101}).sample
    with pytest.raises(UserError, match="sample.ddim_steps: expected at most diffusion.timesteps = 100, got 101"):
        sample(cfg, checkpoint, tmp_path, CPU, progress=False)
    assert list(tmp_path.iterdir()) == []


class FakeTracker:
    """Records what the loop tells its tracker."""

    def __init__(self) -> None:
        self.started: list[str | None] = []
        self.logs: list[tuple[int, list[str]]] = []
        self.images: list[tuple[int, tuple, np.dtype]] = []

    def start(self, run_id: str | None) -> str:
        self.started.append(run_id)
        return run_id or "run-1"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.logs.append((step, sorted(metrics)))

    def log_images(self, step: int, grid: np.ndarray) -> None:
        self.images.append((step, grid.shape, grid.dtype))


def test_the_tracker_hears_the_log_and_sample_grids_and_the_run_is_unchanged(
    flowers16: Path, tmp_path: Path, tiny_config
) -> None:
    plain = train(tiny_config(), flowers16, tmp_path / "plain", CPU, progress=False)
    tracker = FakeTracker()
    config = tiny_config(train={"sample_every": 7, "checkpoint_every": 10})  # grids between read-backs too
    tracked = train(config, flowers16, tmp_path / "tracked", CPU, progress=False, tracker=tracker)
    assert tracked.losses == plain.losses  # the previews draw on their own generator
    assert tracker.started == [None]
    keys = ["train/images_per_second", "train/loss", "train/lr"]
    assert tracker.logs == [(10, keys), (20, keys)]
    assert tracker.images == [(step, (74, 74, 3), np.uint8) for step in (7, 14, 20)]  # 4×4 grids of 16×16

    resumed = FakeTracker()  # the checkpoint hands its run back, so a resumed run logs to the same one
    longer = tiny_config(train={"steps": 30, "sample_every": 10})
    train(longer, flowers16, tmp_path / "tracked", CPU, progress=False, tracker=resumed)
    assert resumed.started == ["run-1"] and [s for s, _ in resumed.logs] == [30]


def test_restart_if_changed_starts_over_only_when_the_run_would_differ(
    flowers16: Path, tmp_path: Path, tiny_config, capsys
) -> None:
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
    with pytest.raises(UserError, match="cannot resume"):  # without the flag, another schedule is refused
        train(tiny_config(train={"steps": 20, "lr": 5e-4}, diffusion={"schedule": "cosine"}), other, tmp_path, CPU)
