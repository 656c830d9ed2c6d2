"""bench/samplers.py's figures: the solver's overhead and NFE/s from the chains' times, the verdict
against issue 24's 5 %, and the NFE of each loop counted by the free stand-in network."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import samplers  # noqa: E402

from ddpm.spacing import timesteps  # noqa: E402


def test_overhead_is_the_free_chain_over_the_real_one_and_nfe_s_the_steps_a_second() -> None:
    assert samplers.figures(20, 2.0, 0.05) == pytest.approx({"s": 2.0, "nfe_s": 10.0, "overhead": 0.025})
    assert samplers.figures(50, 0.5, 0.5) == pytest.approx({"s": 0.5, "nfe_s": 100.0, "overhead": 1.0})


def test_verdict_judges_the_worst_row_against_five_percent() -> None:
    assert samplers.verdict([0.01, 0.05]) == "at most 5.0 % of a step: met"
    assert samplers.verdict([0.051, 0.01]) == "at most 5.1 % of a step: not met"


@pytest.mark.parametrize("loop", ["ddpm", "diffusers"])
@pytest.mark.parametrize(("sampler", "nfe"), samplers.CHAINS)
def test_each_loop_evaluates_the_network_once_at_each_of_our_timesteps(loop: str, sampler: str, nfe: int) -> None:
    """The two loops do the same work: NFE calls, at the timesteps of ddpm.spacing (linspace)."""
    if loop == "diffusers":
        pytest.importorskip("diffusers")
    kind = samplers.tp.OurSampler if loop == "ddpm" else samplers.tp.DiffusersSampler
    chain = kind(samplers.FreeNetwork((2, 3, 8, 8)), 8, 2, samplers.T, False, torch.device("cpu"))
    chain.seconds(nfe, 1, sampler=sampler)
    assert samplers.stand_in(chain).timesteps == timesteps(sampler, "linspace", nfe, samplers.T)


@pytest.mark.parametrize("sampler", [sampler for sampler, _ in samplers.CHAINS])
def test_diffusers_loop_runs_the_issues_scheduler(sampler: str) -> None:
    pytest.importorskip("diffusers")
    scheduler = samplers.tp.diffusers_scheduler(sampler, samplers.T)
    expected = {
        "ddim": ("DDIMScheduler", {}),
        "dpmsolver++": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
    }
    name, settings = expected[sampler]
    assert type(scheduler).__name__ == name
    assert {key: scheduler.config[key] for key in settings} == settings
    assert (scheduler.config["num_train_timesteps"], scheduler.config["beta_schedule"]) == (samplers.T, "linear")
