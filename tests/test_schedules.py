import math

import pytest
import torch

from ddpm.schedules import SCHEDULES, beta_schedule

T_VALUES = [1000, 250]


def linear_closed_form(i: int, T: int) -> float:
    s = 1000 / T
    return s * 1e-4 + i * (s * 0.02 - s * 1e-4) / (T - 1)


def quadratic_closed_form(i: int, T: int) -> float:
    s = 1000 / T
    lo, hi = math.sqrt(s * 1e-4), math.sqrt(s * 0.02)
    return (lo + i * (hi - lo) / (T - 1)) ** 2


def cosine_closed_form(i: int, T: int) -> float:
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    return min(1 - f(i + 1) / f(i), 0.999)


def sigmoid_closed_form(i: int, T: int) -> float:
    sig = lambda z: 1 / (1 + math.exp(-z))
    g = lambda t: (sig(3) - sig(t / T * 6 - 3)) / (sig(3) - sig(-3))
    return min(1 - g(i + 1) / g(i), 0.999)


CLOSED_FORMS = {
    "linear": linear_closed_form,
    "quadratic": quadratic_closed_form,
    "cosine": cosine_closed_form,
    "sigmoid": sigmoid_closed_form,
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", T_VALUES)
def test_each_schedule_matches_its_closed_form(name: str, T: int) -> None:
    betas = beta_schedule(name, T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    for i in [0, 1, T // 4, T // 2, T - 2, T - 1]:
        assert betas[i].item() == pytest.approx(CLOSED_FORMS[name](i, T), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [*T_VALUES, 50])
def test_betas_in_unit_interval_and_alphas_cumprod_strictly_decreasing(name: str, T: int) -> None:
    betas = beta_schedule(name, T)
    assert ((betas > 0) & (betas < 1)).all()
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    assert (alphas_cumprod[1:] < alphas_cumprod[:-1]).all()


def test_fixed_numbers() -> None:
    # Pinned so that a silent change to a schedule fails loudly (Ho et al.'s alphā_T ≈ 4.04e-5).
    assert torch.cumprod(1 - beta_schedule("linear", 1000), 0)[-1].item() == pytest.approx(
        4.0358297653756754e-05, rel=1e-12
    )
    assert beta_schedule("cosine", 1000)[0].item() == pytest.approx(4.128422482196914e-05, rel=1e-12)
    assert torch.cumprod(1 - beta_schedule("sigmoid", 1000), 0)[499].item() == pytest.approx(0.5, rel=1e-12)


def test_linear_keeps_its_curve_when_T_changes() -> None:
    # Scaling by 1000/T keeps alphā at the same fraction of the chain close to the T = 1000 curve.
    ab_1000 = torch.cumprod(1 - beta_schedule("linear", 1000), 0)
    ab_250 = torch.cumprod(1 - beta_schedule("linear", 250), 0)
    assert ab_250[124].item() == pytest.approx(ab_1000[499].item(), rel=0.05)


@pytest.mark.parametrize("name", ["cosine", "sigmoid"])
def test_alpha_space_schedules_clip_betas_at_0_999(name: str) -> None:
    betas = beta_schedule(name, 1000)
    assert betas[-1].item() == 0.999  # unclipped, the last beta would be 1: alphā(T) = 0
    assert (betas[:-1] < 0.999).all()


def test_sigmoid_is_the_alphas_cumprod_space_curve() -> None:
    # alphā is the (shifted, rescaled) sigmoid itself: ½ at t = T/2, symmetric about it.
    ab = torch.cumprod(1 - beta_schedule("sigmoid", 1000), 0)
    assert ab[499].item() == pytest.approx(0.5)
    assert (ab[249] + ab[749]).item() == pytest.approx(1.0)


def test_unknown_schedule_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown beta schedule 'cosin'; expected one of: linear, cosine, quadratic, sigmoid"
    ):
        beta_schedule("cosin", 1000)


def test_too_few_steps_for_the_linear_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="outside \\(0, 1\\).*use more timesteps"):
        beta_schedule("linear", 10)


def test_two_steps_are_the_fewest() -> None:
    assert beta_schedule("cosine", 2).shape == (2,)
    with pytest.raises(ValueError, match="^timesteps must be at least 2, got 1$"):
        beta_schedule("cosine", 1)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_betas_must_lie_strictly_between_0_and_1(value: float, monkeypatch: pytest.MonkeyPatch) -> None:
    import ddpm.schedules

    monkeypatch.setitem(ddpm.schedules.SCHEDULES, "flat", lambda T: torch.full((T,), value, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"the flat schedule with timesteps=10 gives betas outside \(0, 1\)"):
        beta_schedule("flat", 10)
