"""train.hflip: batches flipped left-right with probability ½ or never, the same draws either way (paired),
the choice threaded into the loop, stored in the checkpoint, compared on resume and logged to MLflow."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU, tiny_config

import ddpm.tracking
from ddpm.checkpoint import describe
from ddpm.config import TrainConfig
from ddpm.data import InMemoryImages, synthetic_flowers, to_uint8
from ddpm.errors import UserError
from ddpm.evaluate import _flipped
from ddpm.train import train

IMAGES = synthetic_flowers(8, 16, seed=2)  # none is its own mirror, nor another's
DRAWS = 4000


def identify(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Which stored image each batch image is, and whether it is that image mirrored, by exact match."""
    views = {IMAGES[j].tobytes(): (j, False) for j in range(len(IMAGES))}
    views |= {np.ascontiguousarray(IMAGES[j, ..., ::-1]).tobytes(): (j, True) for j in range(len(IMAGES))}
    found = [views[image.tobytes()] for image in to_uint8(batch).numpy()]  # a KeyError: neither
    return np.array([j for j, _ in found]), np.array([m for _, m in found])


def test_flips_off_never_flip_on_flip_about_half_and_both_draw_the_same_images() -> None:
    dataset = InMemoryImages(IMAGES, CPU)
    off, on = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    index_off, mirrored_off = identify(dataset.batch(DRAWS, off, hflip=False))
    index_on, mirrored_on = identify(dataset.batch(DRAWS, on, hflip=True))
    assert not mirrored_off.any()
    # flips ~ Binomial(4000, ½): mean 2000, SD 31.6; ±150 is 4.7 SDs, a false failure 1 time in 370,000
    assert abs(mirrored_on.sum() - DRAWS / 2) < 150
    np.testing.assert_array_equal(index_off, index_on)  # paired: the same images ...
    assert torch.equal(off.get_state(), on.get_state())  # ... and the same stream after, so the same t and ε


def test_a_run_without_flips_trains_on_stored_images_keeps_the_choice_and_refuses_a_resume_with_flips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "images.npy"
    np.save(data, IMAGES)
    seen = []
    batch = InMemoryImages.batch

    def recording(self: InMemoryImages, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        drawn = batch(self, *args, **kwargs)
        seen.append(identify(drawn)[1])
        return drawn

    monkeypatch.setattr(InMemoryImages, "batch", recording)
    run = tmp_path / "run"
    train(tiny_config(train={"steps": 3, "hflip": False}), data, run, CPU, progress=False)
    assert len(seen) == 3 and not np.concatenate(seen).any()  # 24 images, none mirrored
    assert describe(run / "model.pt")["config"]["train"]["hflip"] is False
    assert _flipped(run / "model.pt") is False  # so evaluate counts no mirror as a training image
    with pytest.raises(UserError, match=r"cannot resume with other settings \(train.hflip \(False → True\)\)"):
        train(tiny_config(train={"steps": 5}), data, run, CPU, progress=False)


def test_every_train_key_goes_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeRun:
        id = "run-1"

        def log_params(self, params: dict[str, str]) -> None:
            logged.update(params)

        def set_tags(self, tags: dict[str, str]) -> None:
            logged.update(tags)

    logged: dict[str, str] = {}
    monkeypatch.setattr(ddpm.tracking, "open_store", lambda cfg, folder: None)
    monkeypatch.setattr(ddpm.tracking, "model_run", lambda *args: FakeRun())
    ddpm.tracking.ModelTracker(tiny_config(train={"hflip": False}), tmp_path).start(None)
    assert {f"train.{key}" for key in TrainConfig.model_fields} <= set(logged)
    assert logged["train.hflip"] == "false"
