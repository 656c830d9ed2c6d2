from pathlib import Path

import pytest
import torch

from ddpm.config import Config
from ddpm.data import save_images, synthetic_flowers


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def flowers16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic 16×16 flowers as a prepared-images file."""
    path = tmp_path_factory.mktemp("data") / "images.npy"
    save_images(path, synthetic_flowers(8, 16, seed=0))
    return path


def make_tiny_config(**sections: dict) -> Config:
    """The tiny model on 16×16 images with a short schedule; `sections` update the defaults."""
    raw = {
        "data": {"image_size": 16},
        "model": {"preset": "tiny"},
        "diffusion": {"timesteps": 100},
        "train": {"steps": 20, "batch_size": 8, "lr": 1e-3, "warmup_steps": 10, "log_every": 10},
        "sample": {"num_samples": 4, "batch_size": 4},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return Config.model_validate(raw)


@pytest.fixture(scope="session")
def tiny_config():
    """A factory: tiny_config(train={"steps": 5}) → Config."""
    return make_tiny_config
