"""The training loop over days: EMA, warm-up, checkpoints, resume, non-finite losses, kills and signals."""

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import CPU, DDPM, clean_environment, invoke, tiny_config, write_params

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import Interrupted, UserError
from ddpm.state import EMA
from ddpm.train import train


def weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    state = torch.load(path, weights_only=True)
    return {"model": state["model"], "ema": state["ema"]}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for kind in ("model", "ema"):
        assert wa[kind].keys() == wb[kind].keys()
        for name in wa[kind]:
            assert torch.equal(wa[kind][name], wb[kind][name]), f"{kind}.{name}"


def test_ema_update_is_exactly_the_weighted_average() -> None:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        model.bias.copy_(torch.tensor([1.0, -1.0]))
    ema = EMA(model, decay=0.75, warmup=False)
    old = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(4.0)
        model.bias.mul_(-3.0)
    ema.update(model, skipped=torch.tensor(1.0))  # a skipped step: nothing moves, nothing is counted
    assert all(torch.equal(v, old[k]) for k, v in ema.model.state_dict().items()) and ema.updates == 0
    ema.update(model, skipped=torch.tensor(0.0))
    for name, value in ema.model.state_dict().items():
        torch.testing.assert_close(value, 0.75 * old[name] + 0.25 * model.state_dict()[name], rtol=0, atol=1e-6)
    assert ema.updates == 1 and not any(p.requires_grad for p in ema.model.parameters())


def test_ema_warmup_forgets_the_initialisation_early() -> None:
    ema = EMA(torch.nn.Linear(1, 1), decay=0.9999, warmup=True)
    assert float(ema.current_decay()) == pytest.approx(0.1)
    ema.updates.fill_(990)
    assert float(ema.current_decay()) == pytest.approx(991 / 1000)
    ema.updates.fill_(10**6)
    assert float(ema.current_decay()) == 0.9999


@pytest.mark.slow
def test_checkpoints_describe_their_run_and_only_the_last_k_are_kept(flowers16: Path, tmp_path: Path) -> None:
    from ddpm.unet import UNet

    config = tiny_config(train={"steps": 30, "checkpoint_every": 5, "keep_checkpoints": 2, "warmup_steps": 40})
    train(config, flowers16, tmp_path, CPU, progress=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000025.pt", "step-00000030.pt"]
    state = torch.load(tmp_path / "checkpoints" / names[-1], weights_only=True)  # plain data only
    assert {"model", "ema", "optimizer", "generator", "step", "rng", "config", "record"} <= state.keys()
    assert state["step"] == 30 and state["config"] == config.model_dump(mode="json")
    assert state["diffusion"] == {
        "schedule": "linear",
        "timesteps": 50,
        "prediction": "eps",
        "zero_terminal_snr": False,
        "input_scale": 1.0,
        "variance": "fixed",
    }
    arch = {"image_size": 16, "channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
            "attention_resolutions": [8], "dropout": 0.0}  # fmt: skip
    assert state["arch"] == arch
    UNet(**state["arch"]).load_state_dict(state["ema"])  # the model rebuilds from the description alone
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 30 / 40)  # linear warm-up
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_losses_and_weights(
    flowers16: Path, tmp_path: Path, monkeypatch
) -> None:
    config = tiny_config(train={"steps": 20, "checkpoint_every": 5})
    full = train(config, flowers16, tmp_path / "a", CPU, progress=False)
    real, calls = GaussianDiffusion.training_loss, [0]

    def interrupted_at_13(self, *args, **kwargs):  # noqa: ANN001, ANN202
        calls[0] += 1
        if calls[0] == 13:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C was pressed during step 13
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, "training_loss", interrupted_at_13)
    with pytest.raises(Interrupted, match="SIGINT at step 13; saved .*step-00000013.pt") as stopped:
        train(config, flowers16, tmp_path / "b", CPU, progress=False)
    assert stopped.value.signum == signal.SIGINT
    monkeypatch.undo()
    rest = train(config, flowers16, tmp_path / "b", CPU, progress=False)
    assert rest.resumed_from == 13
    assert rest.losses == full.losses  # the window 11-20 spans the interruption
    assert_same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")


@pytest.mark.slow
def test_a_finished_run_can_be_extended(flowers16: Path, tmp_path: Path, trained_result) -> None:
    full = trained_result  # the tiny config's 20 steps, as trained for the session
    first = train(tiny_config(train={"steps": 13}), flowers16, tmp_path / "b", CPU, progress=False)
    assert first.resumed_from == 0
    longer = train(tiny_config(train={"steps": 20}), flowers16, tmp_path / "b", CPU, progress=False)
    assert longer.resumed_from == 13 and longer.losses[0] == full.losses[0]
    assert_same_weights(full.checkpoint, tmp_path / "b" / "model.pt")


@pytest.mark.slow
def test_no_resume_starts_over(flowers16: Path, tmp_path: Path) -> None:
    config = tiny_config(train={"steps": 10, "checkpoint_every": 5})
    train(config, flowers16, tmp_path, CPU, progress=False)
    again = train(config.model_copy(update={"train": config.train.model_copy(update={"checkpoint_every": 3})}),
                  flowers16, tmp_path, CPU, resume=False, progress=False)  # fmt: skip
    assert again.resumed_from == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000006.pt", "step-00000009.pt",
                                                                            "step-00000010.pt"]  # fmt: skip


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused_and_says_what_differs(flowers16: Path, tmp_path: Path) -> None:
    train(tiny_config(train={"steps": 10}), flowers16, tmp_path, CPU, progress=False)
    changed = tiny_config(model={"channels": 64}, diffusion={"schedule": "cosine"}, train={"steps": 20})
    with pytest.raises(UserError, match=r"step-00000010.pt: cannot resume with other settings \(model.channels "
                                        r"\(32 → 64\), diffusion.schedule \(linear → cosine\)\); nothing was "
                                        r"trained or recorded. Use --no-resume"):  # fmt: skip
        train(changed, flowers16, tmp_path, CPU, progress=False)
    with pytest.raises(UserError, match=r"the run there finished with other settings \(train.steps \(10 done, 5"):
        train(tiny_config(train={"steps": 5}), flowers16, tmp_path, CPU, progress=False)
    # a seed or a learning rate that a resume could not honour is a change like any other
    with pytest.raises(UserError, match=r"train.lr \(0.001 → 0.0005\), train.seed \(0 → 3\)"):
        train(tiny_config(train={"steps": 20, "seed": 3, "lr": 5e-4}), flowers16, tmp_path, CPU, progress=False)


@pytest.mark.slow
def test_a_planted_pickle_in_a_checkpoint_is_never_run(flowers16: Path, tmp_path: Path, capsys) -> None:
    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model": Payload()}, tmp_path / "run" / "checkpoints" / "step-00000005.pt")
    assert train(tiny_config(), flowers16, tmp_path / "run", CPU, progress=False).resumed_from == 0
    assert "step-00000005.pt cannot be read (truncated or damaged), nor any older checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def nan_at(monkeypatch: pytest.MonkeyPatch, bad: "callable") -> None:
    """Make GaussianDiffusion.training_loss return NaN on the calls (1-based) where bad(call) holds."""
    real, calls = GaussianDiffusion.training_loss, [0]

    def training_loss(self, *args, **kwargs):  # noqa: ANN001, ANN202
        calls[0] += 1
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if bad(calls[0]) else loss

    monkeypatch.setattr(GaussianDiffusion, "training_loss", training_loss)


@pytest.mark.slow
def test_non_finite_losses_are_skipped_and_counted(flowers16: Path, tmp_path: Path, monkeypatch) -> None:
    nan_at(monkeypatch, lambda call: call in (3, 4, 11))
    result = train(tiny_config(train={"steps": 20, "max_nonfinite": 3}), flowers16, tmp_path, CPU, progress=False)
    assert result.nonfinite == 3
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    assert all(torch.isfinite(w).all() for w in weights(result.checkpoint)["model"].values())


@pytest.mark.slow
def test_a_persistent_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
    flowers16: Path, tmp_path: Path, monkeypatch
) -> None:
    nan_at(monkeypatch, lambda call: call >= 12)
    config = tiny_config(train={"steps": 40, "checkpoint_every": 5, "max_nonfinite": 4})
    with pytest.raises(UserError, match=r"not finite for 4 steps in a row \(steps 12-15\); stopped\. "
                                        r"Last good checkpoint: .*step-00000010\.pt"):  # fmt: skip
        train(config, flowers16, tmp_path, CPU, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == "step-00000010.pt"
    assert torch.load(tmp_path / "checkpoints" / "step-00000010.pt", weights_only=True)["step"] == 10
    assert not (tmp_path / "model.pt").exists()


# --- real processes, killed ----------------------------------------------------------------------


KILL_PARAMS = {"train": {"checkpoint_every": 10, "keep_checkpoints": 2}, "tracking": {"enabled": False}}


def start(params: Path, data: Path, out: Path) -> subprocess.Popen:
    """`ddpm train` in the background, in the test's folder, without MLflow (what is tested is the files)."""
    return subprocess.Popen(
        [DDPM, "train", "--config", str(params), "--data", str(data), "--out", str(out), "--device", "cpu"],
        cwd=params.parent, env=clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(condition: "callable", process: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll until `condition()` or the process ends; True if the condition came first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(flowers16: Path, tmp_path: Path) -> None:
    settings = KILL_PARAMS | {"train": {**KILL_PARAMS["train"], "steps": 60}}
    params = write_params(tmp_path, **settings)
    train(tiny_config(**settings), flowers16, tmp_path / "reference", CPU, progress=False)  # never stopped

    out, rng = tmp_path / "killed", random.Random(0)
    checkpoints = out / "checkpoints"
    has_checkpoint = lambda: checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir())
    writing = lambda: checkpoints.is_dir() and any(p.name.startswith(".step-") for p in checkpoints.iterdir())
    kills = 0
    # one kill in the middle of a checkpoint write, then kills at random moments
    for moment in ["during-write", 0.3 * rng.random(), 0.6 * rng.random()]:
        process = start(params, flowers16, out)
        if moment == "during-write":
            caught = wait_for(writing, process)
        else:
            caught = wait_for(has_checkpoint, process)
            time.sleep(moment)
        if caught and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=300)
    assert kills >= 2
    finish = start(params, flowers16, out)
    assert finish.wait(timeout=300) == 0, finish.stderr.read()
    assert_same_weights(tmp_path / "reference" / "model.pt", out / "model.pt")
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(flowers16: Path, tmp_path: Path) -> None:
    params = write_params(tmp_path, **KILL_PARAMS | {"train": {**KILL_PARAMS["train"], "steps": 2000}})
    process = start(params, flowers16, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert wait_for(
        lambda: checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()), process
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    stderr = process.stderr.read()
    assert "Traceback" not in stderr
    last = sorted(checkpoints.glob("step-*.pt"))[-1]
    step = torch.load(last, weights_only=True)["step"]
    assert f"ddpm: stopped by SIGTERM at step {step}; saved {last}; run the same command to resume" in stderr
    resumed = invoke("train", "--config", str(params), "--data", str(flowers16), "--out", str(tmp_path / "run"),
                     "--steps", str(step + 5), "--device", "cpu", cwd=tmp_path)  # fmt: skip
    assert resumed.exit_code == 0, resumed.stderr
    assert f"trained {step + 5} steps (resumed at step {step})" in resumed.stdout
