import pytest
import torch

from ddpm.unet import PRESETS, UNet


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_ddpm_cifar10_has_the_papers_35_7m_parameters() -> None:
    assert n_params(UNet.from_preset("ddpm-cifar10", image_size=32)) / 1e6 == pytest.approx(35.7, abs=0.1)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("image_size", [16, 32])
def test_every_preset_maps_images_to_images(name: str, image_size: int) -> None:
    model = UNet.from_preset(name, image_size=image_size)
    x, t = torch.randn(2, 3, image_size, image_size), torch.tensor([0, 999])
    with torch.no_grad():
        assert model(x, t).shape == (2, 3, image_size, image_size)


def test_output_starts_at_zero_and_depends_on_t_once_trained() -> None:
    # The output layer starts at zero (as in Ho et al.'s code), so the first prediction is 0.
    model = UNet.from_preset("tiny", image_size=16)
    x = torch.randn(2, 3, 16, 16)
    assert model(x, torch.tensor([1, 2])).abs().max() == 0
    for weight in model.parameters():  # leave the zero start, as training would
        if weight.dim() > 1 and (weight == 0).all():
            torch.nn.init.normal_(weight, std=0.05)
    out = model(x[:1].expand(2, -1, -1, -1), torch.tensor([1, 500]))
    assert not torch.allclose(out[0], out[1])  # the timestep embedding reaches the output


def test_attention_resolutions_place_attention_blocks() -> None:
    from ddpm.unet import AttentionBlock

    count = lambda m: sum(isinstance(b, AttentionBlock) for b in m.modules())
    # cifar10 at 32×32: 2 encoder + 3 decoder blocks at 16×16, plus the middle one.
    assert count(UNet.from_preset("ddpm-cifar10", image_size=32)) == 6
    assert count(UNet.from_preset("ddpm-cifar10", image_size=32, attention_resolutions=())) == 1


def test_preset_overrides_and_bad_architectures() -> None:
    model = UNet.from_preset("tiny", image_size=16, channels=64)
    assert model.conv_in.out_channels == 64
    with pytest.raises(
        ValueError, match="unknown model preset 'huge'; expected one of: ddpm-cifar10, learnopencv, tiny"
    ):
        UNet.from_preset("huge", image_size=32)
    with pytest.raises(ValueError, match=r"attention resolutions \[7\] are not among"):
        UNet.from_preset("tiny", image_size=16, attention_resolutions=(7,))
    with pytest.raises(ValueError, match="cannot be halved 3 times"):
        UNet.from_preset("ddpm-cifar10", image_size=36)
    with pytest.raises(ValueError, match="multiples of 32"):
        UNet.from_preset("tiny", image_size=16, channels=40)
