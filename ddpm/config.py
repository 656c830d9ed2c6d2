"""The experiment's configuration: pydantic models of params.yaml, loading, overrides and validation.

The defaults here are the real experiment and equal params.yaml (a test keeps them in step), so
`ddpm train` run where there is no params.yaml trains the same thing. Errors name their source
and key path, e.g. `params.yaml: train.batch_size: expected a positive integer, got "abc"`.
"""

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError

from ddpm.config_checks import check_spacing, check_zero_terminal_snr
from ddpm.config_errors import Override, describe_error
from ddpm.errors import UserError
from ddpm.schedules import SCHEDULES, beta_schedule
from ddpm.unet import PRESETS, check_architecture, preset_architecture
from ddpm.variants import VARIANTS, RunName, Variant, expand_variant, recipe, variant_overrides
from ddpm.yamlfile import read_params

DEFAULT_CONFIG = Path("params.yaml")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


# Integers must be integers (strict: no "3", no true); numbers also accept strings such as "1e-4",
# which is how YAML 1.1 reads an exponent without a decimal point.
Int = Annotated[int, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
# Every float param is finite: inf or nan makes no sense for any of them (pydantic would take "inf").
Number = Annotated[float, Strict(False), BeforeValidator(_not_bool), AllowInfNan(False)]
# What torch's and numpy's generators both take (numpy no negative seed, torch none from 2^64 up)
Seed = Annotated[int, Strict(), Field(ge=0, lt=2**64, description="a seed, an integer from 0 to 2^64 - 1")]
ScheduleName = Literal[tuple(SCHEDULES)]  # type: ignore[valid-type]
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _checksum(value: str) -> str:
    algorithm, _, digest = value.partition(":")
    if algorithm not in hashlib.algorithms_guaranteed or not digest:
        raise ValueError("unknown algorithm")
    if len(digest) != 2 * hashlib.new(algorithm).digest_size or set(digest) - set("0123456789abcdef"):
        raise ValueError("wrong digest")
    return value


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("no scheme")
    return value


Url = Annotated[str, AfterValidator(_url), Field(description="an http:// or https:// URL")]
Checksum = Annotated[
    str, AfterValidator(_checksum), Field(description='"algorithm:hex" with a hashlib algorithm, e.g. "md5:5280…"')
]


class DataConfig(Section):
    source: Literal["flowers102", "cifar10", "folder", "synthetic"] = "flowers102"
    # the folder holding the source's archive (a mirror), and the archive's checksum; null: the official
    # ones (ddpm.download.ARCHIVES)
    url: Url | None = Field(None, description="an http:// or https:// URL, or null")
    checksum: Checksum | None = Field(None, description='"algorithm:hex" with a hashlib algorithm, or null')
    folder: str | None = None  # source folder: a folder of images, searched recursively
    synthetic_count: PositiveInt = 8189  # source synthetic: as many images as Flowers-102 has
    synthetic_seed: Seed = 0
    image_size: PositiveInt = 64
    max_pixels: PositiveInt = 50_000_000  # prepare skips larger images (decompression bombs) before decoding them
    holdout: Annotated[Int, Field(ge=0)] = 500  # images kept out of training (holdout.npy), for bits/dim; 0: none
    holdout_seed: Seed = 0  # which are held out: a seeded draw, the same on every machine


class ModelConfig(Section):
    """A named UNet preset; any key set here (not null) overrides the preset's value."""

    preset: PresetName = "learnopencv"
    channels: PositiveInt | None = None
    channel_mult: list[PositiveInt] | None = Field(default=None, min_length=1)
    num_res_blocks: PositiveInt | None = None
    attention_resolutions: list[PositiveInt] | None = None
    dropout: Annotated[Number, Field(ge=0, lt=1)] | None = None

    def architecture(self, image_size: int) -> dict[str, Any]:
        """The UNet keyword arguments: the preset's, with the keys set here replacing them."""
        overrides = self.model_dump(exclude={"preset"}, exclude_none=True)
        return {**preset_architecture(self.preset, image_size), **overrides}


class DiffusionConfig(Section):
    schedule: ScheduleName = "linear"
    timesteps: PositiveInt = 1000
    prediction: Literal["eps", "x0", "v"] = "eps"
    zero_terminal_snr: bool = False  # x_T holds no signal (Lin et al. 2023): with v or x0, from t = T − 1
    # b: log-SNR shifted by 2·log b (Chen 2023; ddpm.schedules.shift_log_snr); b < 1 for larger images
    input_scale: Annotated[Number, Field(gt=0)] = 1.0
    # fixed: sample.variance and evaluate.nll_variance; learned_range: the UNet learns it between beta~_t
    # and beta_t, trained by L_hybrid (Nichol & Dhariwal 2021, section 3.1)
    variance: Literal["fixed", "learned_range"] = "fixed"


class TrainConfig(Section):
    steps: PositiveInt = 80_000
    batch_size: PositiveInt = 128
    lr: Annotated[Number, Field(gt=0)] = 2e-4
    warmup_steps: Annotated[Int, Field(ge=0)] = 5000  # linear learning-rate warm-up, as in Ho et al.
    grad_clip: Annotated[Number, Field(gt=0)] = 1.0  # max gradient norm
    adam_betas: Annotated[list[Annotated[Number, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = [0.9, 0.999]
    adam_eps: Annotated[Number, Field(gt=0)] = 1e-8
    weight_decay: Annotated[Number, Field(ge=0)] = 0.0
    ema_decay: Annotated[Number, Field(ge=0, lt=1)] = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n)/(10 + n)) after n updates, so early EMA weights are usable
    # flip each training image left-right with probability ½, as Ho et al.; false for data with a
    # handedness (digits, text), whose mirrors are not images of it
    hflip: bool = True
    checkpoint_every: PositiveInt = 5000
    keep_checkpoints: PositiveInt = 3
    max_nonfinite: PositiveInt = 20  # stop after this many non-finite losses in a row
    # each sample's squared error weighted by Min-SNR-γ (Hang et al. 2023; ddpm.diffusion's
    # min_snr_weight), which they found to converge about 3.4× faster; none: L_simple, as Ho et al.
    loss_weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: Annotated[Number, Field(gt=0)] = 5.0  # γ, where SNR_t is capped: the paper's default
    seed: Seed = 0
    log_every: PositiveInt = 100
    sample_every: PositiveInt = 5000  # a grid of EMA samples (DDIM) to MLflow every N steps and at the end
    # quality during training (ddpm.quality): FID_N and KID of eval_samples EMA samples (DDIM, eval_steps
    # steps, η = 0) every eval_every steps and at the end, to quality.csv and MLflow; 0: off
    eval_every: Annotated[Int, Field(ge=0)] = 10_000
    eval_samples: Annotated[Int, Field(ge=2)] = 2000  # FID's covariance and KID's U-statistic need 2
    eval_steps: PositiveInt = 50
    # the fast path; "auto": on for a GPU, off for the CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16: autocast the UNet to bfloat16
    channels_last: Literal["auto"] | bool = "auto"  # NHWC memory format
    compile: Literal["auto"] | bool = "auto"  # torch.compile the UNet


# The train keys that change how a run is watched or stored, not the weights it ends with; a resume
# may change them. channels_last and compile lay out and schedule the same arithmetic.
BOOKKEEPING = {"steps", "log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite", "sample_every"}
BOOKKEEPING |= {"channels_last", "compile", "eval_every", "eval_samples", "eval_steps"}


class SampleConfig(Section):
    # ddpm: ancestral, every timestep (Algorithm 2); ddim and dpmsolver++: `steps` network evaluations
    sampler: Literal["ddpm", "ddim", "dpmsolver++"] = "ddpm"
    steps: PositiveInt = 50
    # which timesteps those are (ddpm.spacing); linspace: from T − 1 to 0, what DDIM has always used here
    spacing: Literal["linspace", "leading", "trailing", "quadratic"] = "linspace"
    eta: Annotated[Number, Field(ge=0)] = 0.0  # DDIM's
    variance: Literal["fixed_large", "fixed_small"] = "fixed_large"
    # how x_0 is kept in [-1, 1] at each step (ddpm.diffusion.GaussianDiffusion.denoise); x0: chosen by
    # measurement (bench/clip_modes.py), recompute paints colour casts on grey data
    clip_mode: Literal["recompute", "x0", "dynamic", "none"] = "x0"
    num_samples: PositiveInt = 10_000
    batch_size: PositiveInt = 256
    seed: Seed = 0
    # the fast path, as in train; "auto": on for a GPU, off for the CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16: autocast the UNet to bfloat16
    channels_last: Literal["auto"] | bool = "auto"  # NHWC memory format
    compile: Literal["auto"] | bool = "auto"  # torch.compile the UNet, with CUDA graphs on a GPU


def _unique_steps(steps: list[int]) -> list[int]:
    if len(set(steps)) != len(steps):
        raise ValueError("duplicate step counts")
    return sorted(steps)


# The resamples give SDs and standard errors, each itself uncertain by about 1/√(2B): 11 % at 40
# resamples, which is as loose as a reported error bar should be. Their indices are held at once
# (resamples × samples), so a count past MAX_BOOTSTRAP asks for memory the SDs no longer need.
MIN_BOOTSTRAP, MAX_BOOTSTRAP = 40, 10_000
BOOTSTRAP_COUNT = (f"0 (no SDs) or from {MIN_BOOTSTRAP} to {MAX_BOOTSTRAP} resamples: an SD from fewer is itself "
                   f"uncertain by more than 11 %; past {MAX_BOOTSTRAP} the resamples' indices cost memory, "
                   "not precision")  # fmt: skip


def _enough_resamples(count: int) -> int:
    if 0 < count < MIN_BOOTSTRAP or count > MAX_BOOTSTRAP:
        raise ValueError("a resample count outside the range")
    return count


class EvaluateConfig(Section):
    # inception: the standard FID network (pt_inception-2015-12-05, 2048-d pool features);
    # randconv: a small fixed random network for offline smoke runs, its metrics named fid_randconv etc.
    feature_extractor: Literal["inception", "randconv"] = "inception"
    inception_weights: str | None = None  # a local copy of the weights file, for machines without internet
    inception_checksum: Checksum = "sha256:6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
    # to 299×299: legacy = TensorFlow 1's bilinear resize, that of published FIDs; antialias = bilinear
    # with antialiasing (clean-fid's argument). Only FIDs with the same resize can be compared.
    resize: Literal["legacy", "antialias"] = "legacy"
    batch_size: PositiveInt = 200  # images per forward pass of the extractor
    # bootstrap resamples of the samples' features, for the SDs of FID and FID_∞ and the SE of KID; 0: none
    bootstrap: Annotated[Int, Field(ge=0, description=BOOTSTRAP_COUNT), AfterValidator(_enough_resamples)] = 200
    # the negative log-likelihood bound (bits/dim) on all the held-out images (data.holdout) or this many; 0: none
    nll_images: Literal["all"] | Annotated[Int, Field(ge=0)] = "all"
    nll_variance: Literal["fixed_small", "fixed_large"] = "fixed_small"  # the reverse variance of the bound


def _unique_samplers(samplers: list[str]) -> list[str]:
    if len(set(samplers)) != len(samplers):
        raise ValueError("duplicate samplers")
    return samplers


class SweepConfig(Section):
    """FID against the number of network evaluations (NFE): each of `samplers` at each of `steps`, and
    DDPM at full length; the samplers' other settings (spacing, eta, variance, clipping, seed, batch
    size) are sample.*."""

    samplers: Annotated[
        list[Literal["ddim", "dpmsolver++"]],
        AfterValidator(_unique_samplers),
        Field(min_length=1, description="a list of distinct samplers: ddim, dpmsolver++"),
    ] = ["ddim", "dpmsolver++"]
    steps: Annotated[
        list[PositiveInt],
        AfterValidator(_unique_steps),
        Field(min_length=1, description="a list of distinct positive integers"),
    ] = [10, 20, 50, 100, 250]
    num_samples: PositiveInt | None = None  # null: sample.num_samples, the main evaluation's N


class CompareConfig(Section):
    """`ddpm compare`'s verdicts: every pair of schedules on every judged metric, Holm-adjusted as one family."""

    # the pre-declared test, reported first: FID_N, FID_∞, KID (training or held-out images) or NLL
    primary: Literal["fid", "fid_inf", "kid", "kid_holdout", "nll"] = "fid"


class TrackingConfig(Section):
    enabled: bool = True  # false: no MLflow at all (it need not even be installed)
    uri: str | None = None  # MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db
    experiment: str = "ddpm-flowers"


DISTINCT_SCHEDULES = f"a list of distinct schedule names ({', '.join(SCHEDULES)}) or names of `variants`"
DISTINCT_SEEDS = "a list of distinct seeds, integers from 0 to 2^64 - 1"


def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError("duplicates")
    return values


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    sweep: SweepConfig = SweepConfig()
    compare: CompareConfig = CompareConfig()
    tracking: TrackingConfig = TrackingConfig()
    # what the pipeline trains and compares, one run folder each: beta schedules, or variants (below)
    schedules: Annotated[
        list[RunName], AfterValidator(_unique), Field(min_length=1, description=DISTINCT_SCHEDULES)
    ] = ["linear", "cosine"]
    # named runs that set model.*, diffusion.* and train.* keys over the rest of the file (ddpm.variants)
    variants: Annotated[dict[RunName, Variant], Field(default_factory=recipe, description=VARIANTS)]
    _variant: str | None = pydantic.PrivateAttr(None)  # the variant this config was resolved for, if any

    @property
    def run_name(self) -> str:
        """What the run is called: its folder under runs/ and its MLflow run's name. A variant's name, or
        the schedule's."""
        return self._variant or self.diffusion.schedule

    def for_run(self, name: str) -> "Config":
        """This config as `--beta-schedule name` resolves it: the variant's keys applied, or the schedule set."""
        if name not in self.variants:
            return self.model_copy(update={"diffusion": self.diffusion.model_copy(update={"schedule": name})})
        pairs = variant_overrides(name, self.variants[name].model_dump(), "variants")
        resolved = _resolve(self.model_dump(mode="json"), "variants", pairs, sampling=False)  # checked when loaded
        resolved._variant = name
        return resolved

    # train.seed of each repeat: the pipeline trains every schedule once per seed
    seeds: Annotated[list[Seed], AfterValidator(_unique), Field(min_length=1, description=DISTINCT_SEEDS)] = [0]

    def arch(self) -> dict[str, Any]:
        """The UNet's keyword arguments, image size included: `UNet(**config.arch())`."""
        size = self.data.image_size
        arch = self.model.architecture(size)
        arch = {"image_size": size, **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}}
        # only where learned, so that every other model's arch (and its checkpoints') stays as it was
        return arch | {"learned_variance": True} if self.diffusion.variance == "learned_range" else arch


TOP_LEVEL_KEYS = {"schedules", "seeds", "variants"}  # params outside any section


def parse_value(text: str) -> Any:
    """A command-line value read as YAML, as it would be in params.yaml ("64" → 64, "true" → True)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: Path | None = None, overrides: Sequence[Override] = ()) -> Config:
    """The validated config from `path` (default: ./params.yaml, or the built-in defaults where
    there is none) with `overrides` applied. Raises UserError naming the source and key of each problem."""
    if path is None and not DEFAULT_CONFIG.exists():
        raw, label = {}, "defaults"
    else:
        path = path or DEFAULT_CONFIG
        raw, label = read_params(path), str(path)
    overrides, variant = expand_variant(raw, overrides, label)
    others = [o for o in overrides if not o[0].startswith(f"{label}: variants.{variant}.")]  # without this run's
    config = _resolve(copy.deepcopy(raw), label, overrides)
    config._variant = variant  # the variants are checked over the file and the command line, not over this one
    _check_variants(_resolve(raw, label, others, sampling=False) if variant else config, label, overrides)
    return config


def _resolve(raw: dict[str, Any], label: str, overrides: Sequence[Override], sampling: bool = True) -> Config:
    """The config `raw` (params.yaml's contents) with `overrides` applied, validated and checked (how it
    samples too, unless not `sampling`: a variant not being run must not fail a command for another run)."""
    made: list[Override] = []  # sections only an override names: an error there is the override's
    for source, key, value in overrides:
        section, dot, name = key.partition(".")
        if key in TOP_LEVEL_KEYS:
            raw[key] = value
            continue
        if not dot or not section or not name:
            raise UserError(f"{source}: expected section.key=value, got {key!r}")
        if section not in raw:
            made.append((source, section, None))
        if not isinstance(raw.setdefault(section, {}), dict):
            raise UserError(f"{source}: {label} has no mapping at {section!r} to set {key} in")
        raw[section][name] = value
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        lines = [describe_error(err, label, [*overrides, *made], Config) for err in e.errors()]
        raise UserError("\n".join(dict.fromkeys(lines))) from None  # a union's branches give the same line
    _check_combinations(config, label, overrides, sampling)
    return config


def _check_variants(config: Config, label: str, overrides: Sequence[Override]) -> None:
    """Every variant must set keys that exist, to values that validate and combine, over this config; its
    name must be no schedule's; and `schedules` may name only schedules and variants."""
    for name, variant in config.variants.items():
        if name in SCHEDULES:
            raise UserError(f"{label}: variants.{name}: a schedule's name; expected a name of its own")
        pairs = variant_overrides(name, variant.model_dump(), label)
        if any(key == "train.seed" for _, key, _ in pairs):
            raise UserError(f"{label}: variants.{name}.train.seed: a variant is trained once per seed of `seeds`; "
                            "expected no train.seed")  # fmt: skip
        _resolve(config.model_dump(mode="json"), label, pairs, sampling=False)
    given = [source for source, key, _ in overrides if key in ("schedules", "variants")]
    for i, name in enumerate(config.schedules):
        if name not in SCHEDULES and name not in config.variants:
            where = f"{given[-1]} (schedules[{i}])" if given else f"{label}: schedules[{i}]"
            raise UserError(f'{where}: expected {DISTINCT_SCHEDULES}, got "{name}"')


def _check_combinations(config: Config, label: str, overrides: Sequence[Override], sampling: bool) -> None:
    """The checks that involve more than one key."""
    try:
        check_architecture(config.data.image_size, **_arch_subset(config))
    except ValueError as e:
        raise UserError(f"{label}: model (at data.image_size {config.data.image_size}): {e}") from None
    if config.data.source == "folder" and not config.data.folder:
        raise UserError(f"{label}: data.folder: expected a folder of images when data.source is folder, got null")
    check_spacing(config.sample.sampler, config.sample.spacing, label, overrides)
    if config.diffusion.zero_terminal_snr:
        samplers = list(dict.fromkeys([config.sample.sampler, *config.sweep.samplers])) if sampling else []
        check_zero_terminal_snr(config.diffusion.prediction, samplers, config.sample.spacing, config.sample.steps,
                                config.diffusion.timesteps, label, overrides)  # fmt: skip
    for name in dict.fromkeys([config.diffusion.schedule, *(s for s in config.schedules if s in SCHEDULES)]):
        try:
            beta_schedule(name, config.diffusion.timesteps)
        except ValueError as e:
            given = [s for s, key, _ in overrides if key == "diffusion.timesteps"]
            source = f"{given[-1]} (diffusion.timesteps)" if given else f"{label}: diffusion.timesteps"
            raise UserError(f"{source}: {e}") from None


def _arch_subset(config: Config) -> dict[str, Any]:
    arch = config.model.architecture(config.data.image_size)
    return {k: arch[k] for k in ("channels", "channel_mult", "attention_resolutions")}
