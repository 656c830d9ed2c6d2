"""`ddpm sweep` in-process on the session's tiny model: each of sweep.samplers at each NFE with
sample.spacing, its N (the main evaluation's count by default), each point's bootstrap SD, its DDPM point
scoring the sample stage's samples where they were drawn exactly as it would draw them, and drawing
anew where not; the step counts a sampler cannot take, refused before any work."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CPU, invoke, write_params

import ddpm.sweep
from ddpm.config import EvaluateConfig, load_config
from ddpm.features import extract_features, load_extractor
from ddpm.metrics import bootstrap_indices, frechet_distance
from ddpm.sweep import reusable_samples

SETTINGS = {
    "diffusion": {"timesteps": 25},  # DDPM draws T steps: a short chain keeps these tests fast
    "train": {"steps": 1, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 1},
    "sample": {"sampler": "ddpm", "num_samples": 4, "batch_size": 4},
    "sweep": {"steps": [2], "num_samples": None},  # null: sample.num_samples
    "tracking": {"enabled": False},
}
RUN = Path("runs", "linear", "seed0")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, flowers16: Path) -> Path:
    """params.yaml (T = 25, DDPM samples, a sweep of DDIM 2 steps) and runs/linear/seed0 as `ddpm
    train`, `ddpm sample` and `ddpm evaluate` leave it."""
    root = tmp_path_factory.mktemp("sweep")
    write_params(root, **SETTINGS)
    (root / "data" / "prepared").mkdir(parents=True)
    shutil.copy(flowers16, root / "data" / "prepared" / "images.npy")
    for stage in ("train", "sample", "evaluate"):
        done = invoke(stage, "--device", "cpu", cwd=root)
        assert done.exit_code == 0, done.output
    return root


def swept(project: Path, monkeypatch: pytest.MonkeyPatch, *settings: str) -> tuple[dict, list, str]:
    """sweep.json of `ddpm sweep` with `settings`, the samplers it drew with (with their NFE and spacing
    where not DDPM), and what it printed."""
    drawn, generate = [], ddpm.sweep.generate

    def recording(model: object, diffusion: object, cfg: object, *args: object) -> object:  # noqa: ANN001
        drawn.append(cfg.sampler if cfg.sampler == "ddpm" else (cfg.sampler, cfg.steps, cfg.spacing))
        return generate(model, diffusion, cfg, *args)

    monkeypatch.setattr(ddpm.sweep, "generate", recording)
    done = invoke("sweep", "--device", "cpu", *[a for s in settings for a in ("--set", s)], cwd=project)
    assert done.exit_code == 0, done.output
    return json.loads((project / RUN / "sweep.json").read_text()), drawn, done.stdout


def test_the_ddpm_point_scores_the_sample_stages_samples_when_drawn_alike(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results, drawn, said = swept(project, monkeypatch)
    scores = json.loads((project / RUN / "eval.json").read_text())
    assert drawn == [("ddim", 2, "linspace"), ("dpmsolver++", 2, "linspace")] and results["ddpm_reused"] is True
    assert (results["samplers"], results["spacing"]) == (["ddim", "dpmsolver++"], "linspace")
    assert results["num_samples"] == 4 == scores["num_samples"]  # N: sample.num_samples
    assert results["ddpm"]["25"] == scores["fid_randconv"]  # the same images, the same score
    assert "fid_randconv (N = 4, linspace spacing) by NFE: DDIM 2: " in said and "; DPM-Solver++ 2: " in said
    assert "; DDPM 25: " in said and "(the sample stage's samples)" in said
    # the SD: the standard deviation (ddof 1) of FID over bootstrap_indices' resamples, each scored by
    # the plain FID here rather than by fid_bootstrap's eigenvalues of the Gram matrix
    extractor = load_extractor(EvaluateConfig(feature_extractor="randconv"), CPU)
    images, real = np.load(project / RUN / "samples" / "samples.npy"), np.load(project / "data/prepared/images.npy")
    fake_f, real_f = (extract_features(extractor, x, 200, CPU, "", False) for x in (images, real))
    fids = [frechet_distance(real_f, fake_f[row]) for row in bootstrap_indices(4, 40)]
    assert results["bootstrap"] == 40 and results["ddpm_sd"]["25"] == pytest.approx(np.std(fids, ddof=1), rel=1e-6)
    assert set(results["ddim_sd"]) == {"2"} == set(results["dpmsolver++_sd"]) and results["dpmsolver++_sd"]["2"] > 0


def test_another_models_samples_are_drawn_anew_and_score_the_same(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With samples.json naming another model (sha256), the sweep draws DDPM itself, and gets the
    sample stage's score: the same settings draw the same images, so the reuse changes no number."""
    origin = project / RUN / "samples" / "samples.json"
    kept = origin.read_text()
    origin.write_text(json.dumps(json.loads(kept) | {"checkpoint_sha256": "0" * 64}))
    try:
        results, drawn, said = swept(
            project,
            monkeypatch,
            "evaluate.bootstrap=0",
            "sweep.samplers=[dpmsolver++]",
            "sample.spacing=trailing",
            "sweep.steps=[2,3]",
        )
    finally:
        origin.write_text(kept)
    scores = json.loads((project / RUN / "eval.json").read_text())
    assert drawn == [("dpmsolver++", 2, "trailing"), ("dpmsolver++", 3, "trailing"), "ddpm"]
    assert results["samplers"] == ["dpmsolver++"] and list(results["dpmsolver++"]) == ["2", "3"]
    assert "ddim" not in results and results["ddpm_reused"] is False and "sample stage" not in said
    assert results["ddpm"]["25"] == pytest.approx(scores["fid_randconv"], rel=1e-9)
    assert "dpmsolver++_sd" not in results and "ddpm_sd" not in results and "bootstrap" not in results  # 0: none


@pytest.mark.parametrize(
    ("key", "value"),
    [("sampler", "ddim"), ("variance", "fixed_small"), ("seed", 1), ("batch_size", 2), ("precision", "bf16"),
     ("clip_mode", "recompute"), ("num_samples", 6)],
)  # fmt: skip
def test_samples_drawn_otherwise_are_not_reused(project: Path, key: str, value: object) -> None:
    config, checkpoint = load_config(project / "params.yaml"), project / RUN / "model.pt"
    origin = project / RUN / "samples" / "samples.json"
    kept = json.loads(origin.read_text())
    assert reusable_samples(checkpoint, config.sample, 4) is not None  # as drawn: reused
    origin.write_text(json.dumps(kept | {"sample": kept["sample"] | {key: value}}))
    try:
        assert reusable_samples(checkpoint, config.sample, 4) is None
    finally:
        origin.write_text(json.dumps(kept))


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        # T = 25: linspace over 26 points, the last dropped, rounds two of DPM-Solver++'s 25 timesteps together
        (["sweep.steps=[2,25]"],
         f"sweep.steps: DPM-Solver++ at 25 NFE with sample.spacing linspace ({RUN / 'model.pt'}): linspace repeats "
         "timesteps at 25 steps of T = 25; take fewer steps"),
        # DPM-Solver++'s leading spacing is i·(T // (n + 1)), i = 1..n: at n = 25 of T = 25 every one is t = 0
        (["sweep.samplers=[dpmsolver++]", "sample.spacing=leading", "sweep.steps=[3,25]"],
         f"sweep.steps: DPM-Solver++ at 25 NFE with sample.spacing leading ({RUN / 'model.pt'}): leading repeats "
         "timesteps at 25 steps of T = 25; take fewer steps"),
        (["sweep.steps=[2,26]"], f"sweep.steps: [26] exceed the model's 25 timesteps ({RUN / 'model.pt'})"),
        # quadratic is DDIM's alone: `ddpm sample --spacing quadratic` loads fine, the sweep refuses
        (["sample.spacing=quadratic"],
         "sweep.samplers: DPM-Solver++ has no quadratic spacing (sample.spacing); expected one of: linspace, "
         "leading, trailing, or sweep only the samplers that have it (--set 'sweep.samplers=[ddim]')"),
    ],
)  # fmt: skip
def test_a_step_count_a_sampler_cannot_take_is_refused_in_one_line_before_any_work(
    project: Path, monkeypatch: pytest.MonkeyPatch, settings: list[str], said: str
) -> None:
    monkeypatch.setattr(ddpm.sweep, "load_extractor", lambda *a: pytest.fail("the extractor was loaded"))
    before = (project / RUN / "sweep.json").stat().st_mtime_ns if (project / RUN / "sweep.json").exists() else None
    refused = invoke("sweep", "--device", "cpu", *[a for s in settings for a in ("--set", s)], cwd=project)
    assert refused.exit_code != 0 and refused.stderr.strip() == f"ddpm: error: {said}", refused.output
    after = (project / RUN / "sweep.json").stat().st_mtime_ns if (project / RUN / "sweep.json").exists() else None
    assert before == after  # nothing written
