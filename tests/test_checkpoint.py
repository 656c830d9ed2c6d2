"""The one checkpoint format (ddpm.checkpoint): the keys the files hold, which are those they held
before the format was one schema, so that files written then load as they did; and the one-line
error of a file that lacks a key or comes from an earlier UNet."""

from pathlib import Path

import pytest
import torch
from conftest import CPU, tiny_config

from ddpm.checkpoint import ModelCheckpoint, describe, load_trained
from ddpm.errors import UserError
from ddpm.layout import checkpoint_path, step_checkpoints
from ddpm.schedules import beta_schedule
from ddpm.train import train
from ddpm.unet import ARCH_VERSION, UNet

pytestmark = pytest.mark.slow  # most of them train or resume the tiny model

# the keys of each kind of file, as train.py (FINAL_KEYS, **extra), state.py and convert.py wrote them
MODEL_KEYS = {"arch", "arch_version", "diffusion", "config", "model", "ema", "step", "data_sha256", "run_id"}
RESUMABLE_KEYS = MODEL_KEYS | {"ema_updates", "optimizer", "generator", "rng", "record"}
IMPORTED_KEYS = {"arch", "arch_version", "diffusion", "model", "step", "run_id", "imported"}

ARCH = {"image_size": 16, "channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
        "dropout": 0.0}  # fmt: skip
DIFFUSION = {"schedule": "linear", "timesteps": 50, "prediction": "eps"}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_trained_files_hold_the_keys_they_always_held(trained: Path) -> None:
    assert torch.load(trained / "model.pt", weights_only=True).keys() == MODEL_KEYS
    for path in step_checkpoints(trained / "checkpoints"):
        assert torch.load(path, weights_only=True).keys() == RESUMABLE_KEYS
        assert load_trained(path, CPU).step == int(path.stem.split("-")[1])  # a resumable state is a model too


def test_an_imported_model_holds_the_keys_it_always_held_and_describes_itself_without_weights() -> None:
    made = ModelCheckpoint(arch=ARCH, arch_version=ARCH_VERSION, diffusion=DIFFUSION, model=UNet(**ARCH).state_dict(),
                           step=0, imported={"format": "diffusers"})  # fmt: skip
    assert made.to_dict().keys() == IMPORTED_KEYS and made.to_dict()["run_id"] is None
    assert made.description() == {"arch": ARCH, "arch_version": ARCH_VERSION, "diffusion": DIFFUSION, "step": 0,
                                  "run_id": None, "imported": {"format": "diffusers"}}  # fmt: skip


def test_a_model_saved_the_old_way_loads_with_its_ema_weights(tmp_path: Path) -> None:
    ema = UNet(**ARCH).state_dict()
    old = {"arch": ARCH, "arch_version": ARCH_VERSION, "diffusion": DIFFUSION, "step": 7, "run_id": "r1",
           "config": tiny_config().model_dump(mode="json"), "data_sha256": "0" * 64,
           "model": {name: torch.zeros_like(value) for name, value in ema.items()}, "ema": ema}  # fmt: skip
    torch.save(old, tmp_path / "model.pt")
    loaded = load_trained(tmp_path / "model.pt", CPU)
    assert same_weights(loaded.model.state_dict(), ema) and not loaded.model.training
    assert (loaded.step, loaded.run_id, loaded.image_size, loaded.spec) == (7, "r1", 16, DIFFUSION)
    torch.testing.assert_close(loaded.diffusion.betas, beta_schedule("linear", 50), rtol=0, atol=0)
    assert describe(tmp_path / "model.pt") == {key: old[key] for key in MODEL_KEYS - {"model", "ema"}}


def test_an_imported_model_saved_the_old_way_loads_with_its_only_weights(tmp_path: Path) -> None:
    weights = UNet(**ARCH).state_dict()
    torch.save({"arch": ARCH, "arch_version": ARCH_VERSION, "diffusion": DIFFUSION, "step": 0, "run_id": None,
                "imported": {"format": "diffusers"}, "model": weights}, tmp_path / "model.pt")  # fmt: skip
    loaded = load_trained(tmp_path / "model.pt", CPU)
    assert same_weights(loaded.model.state_dict(), weights) and (loaded.step, loaded.run_id) == (0, None)


def test_a_resumable_state_saved_the_old_way_resumes_bit_for_bit(
    flowers16: Path, trained: Path, tmp_path: Path
) -> None:
    train(tiny_config(train={"steps": 10}), flowers16, tmp_path / "a", CPU, progress=False)
    saved = torch.load(checkpoint_path(tmp_path / "a" / "checkpoints", 10), weights_only=True)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    torch.save({key: saved[key] for key in RESUMABLE_KEYS}, checkpoint_path(tmp_path / "b" / "checkpoints", 10))
    assert train(tiny_config(), flowers16, tmp_path / "b", CPU, progress=False).resumed_from == 10
    final, reference = (torch.load(path / "model.pt", weights_only=True) for path in (tmp_path / "b", trained))
    for kind in ("model", "ema"):  # the weights of the uninterrupted run of 20 steps
        assert same_weights(final[kind], reference[kind]), kind


def test_a_model_lacking_a_key_is_one_line(trained: Path, tmp_path: Path) -> None:
    saved = torch.load(trained / "model.pt", weights_only=True)
    del saved["diffusion"]
    torch.save(saved, tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"model.pt: not a ddpm checkpoint of this version \(expected the keys arch, "
                                        r"arch_version, diffusion, model, step\)$"):  # fmt: skip
        load_trained(tmp_path / "model.pt", CPU)


def test_a_resumable_state_lacking_a_key_is_one_line_and_trains_nothing(flowers16: Path, trained: Path,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    newest = step_checkpoints(trained / "checkpoints")[-1]
    saved = torch.load(newest, weights_only=True)
    del saved["record"]
    (tmp_path / "checkpoints").mkdir()
    torch.save(saved, tmp_path / "checkpoints" / newest.name)
    with pytest.raises(UserError, match=rf"{newest.name}: inconsistent checkpoint \(no 'record'\); delete it, or "
                                        r"--no-resume$"):  # fmt: skip
        train(tiny_config(train={"steps": 30}), flowers16, tmp_path, CPU, progress=False)
    assert not (tmp_path / "model.pt").exists()


def test_a_resumable_state_of_an_earlier_unet_is_a_change_of_settings(flowers16: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "checkpoints").mkdir()
    earlier = checkpoint_path(tmp_path / "checkpoints", 5)
    torch.save({"model": {}, "ema": {}, "optimizer": {}, "step": 5, "config": {}}, earlier)  # an earlier ddpm's keys
    change = rf"\(the UNet's architecture version \(none → {ARCH_VERSION}\)\)"
    with pytest.raises(UserError, match=rf"step-00000005.pt: cannot resume with other settings {change}; nothing"):
        train(tiny_config(), flowers16, tmp_path, CPU, progress=False)
    with pytest.raises(UserError, match=rf"step-00000005.pt: the run there finished with other settings {change}"):
        train(tiny_config(train={"steps": 5}), flowers16, tmp_path, CPU, progress=False)
    assert train(tiny_config(), flowers16, tmp_path, CPU, progress=False, restart_if_changed=True).resumed_from == 0
    assert f"{earlier} was made with other settings (the UNet's architecture version (none →" in capsys.readouterr().err
